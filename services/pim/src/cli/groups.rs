//! `pim groups`: create groups (role-assignable ones carry roles to their members), and
//! manage their members and owners.

use clap::Subcommand;

use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;

use super::{ClientArgs, Session, explain, print_table};

#[derive(Subcommand)]
pub(crate) enum GroupsCommand {
    /// Create a group; --role-assignable lets it hold roles (Privileged Role and Global Administrators only).
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long)]
        role_assignable: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List groups.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Add a member (user name or principal id).
    AddMember {
        group: String,
        member: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a member.
    RemoveMember {
        group: String,
        member: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List a group's members.
    Members {
        group: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub(crate) async fn run(cmd: GroupsCommand) -> anyhow::Result<i32> {
    match cmd {
        GroupsCommand::Create {
            name,
            description,
            role_assignable,
            client,
        } => {
            let session = Session::open(&client, true)?;
            let g = DirectoryServiceClient::new(session.channel.clone())
                .create_group(session.request(ipb::CreateGroupRequest {
                    display_name: name,
                    description,
                    is_assignable_to_role: role_assignable,
                    owner_ids: vec![],
                })?)
                .await
                .map_err(explain)?
                .into_inner();
            println!(
                "Created group {} ({}){}",
                g.display_name,
                g.id,
                if g.is_assignable_to_role {
                    ", role-assignable"
                } else {
                    ""
                }
            );
        }
        GroupsCommand::List { client } => {
            let session = Session::open(&client, true)?;
            let groups = super::listings::groups(&session).await?;
            let rows = groups
                .into_iter()
                .map(|g| {
                    vec![
                        g.id,
                        g.display_name,
                        if g.is_assignable_to_role { "yes" } else { "" }.into(),
                    ]
                })
                .collect();
            print_table(&["ID", "NAME", "ROLE-ASSIGNABLE"], rows);
        }
        GroupsCommand::AddMember { group, member, client } => change_member(&group, &member, &client, true).await?,
        GroupsCommand::RemoveMember { group, member, client } => change_member(&group, &member, &client, false).await?,
        GroupsCommand::Members { group, client } => {
            let session = Session::open(&client, true)?;
            let members = super::listings::members(&session, &group_id(&session, &group).await?).await?;
            let rows = members
                .into_iter()
                .map(|p| vec![p.id, p.user_name, p.display_name])
                .collect();
            print_table(&["ID", "USER NAME", "NAME"], rows);
        }
    }
    Ok(0)
}

async fn change_member(group: &str, member: &str, client: &ClientArgs, add: bool) -> anyhow::Result<()> {
    let session = Session::open(client, true)?;
    let member_id = session.principal_id(member).await?;
    let request = session.request(ipb::GroupMembershipRequest {
        group_id: group_id(&session, group).await?,
        principal_id: member_id,
    })?;
    let mut directory = DirectoryServiceClient::new(session.channel.clone());
    if add {
        session.remember(directory.add_group_member(request).await.map_err(explain)?);
        println!("Added {member} to {group}");
    } else {
        session.remember(directory.remove_group_member(request).await.map_err(explain)?);
        println!("Removed {member} from {group}");
    }
    Ok(())
}

/// A group's id from its display name (or its id).
async fn group_id(session: &Session, name_or_id: &str) -> anyhow::Result<String> {
    if uuid::Uuid::parse_str(name_or_id).is_ok() {
        return Ok(name_or_id.to_owned());
    }
    let groups = super::listings::groups(session).await?;
    let named: Vec<_> = groups.into_iter().filter(|g| g.display_name == name_or_id).collect();
    match named.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => anyhow::bail!("no group is named {name_or_id:?} (pim groups list shows them)"),
        _ => anyhow::bail!("several groups are named {name_or_id:?}; give the group's id (pim groups list)"),
    }
}
