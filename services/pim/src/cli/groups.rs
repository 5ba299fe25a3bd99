//! `pim groups`: create groups (role-assignable ones carry roles to their members), manage
//! their members and owners, and PIM for Groups: eligible and time-bound membership and
//! ownership, activated like roles.

use clap::{Args, Subcommand, ValueEnum};

use pim_proto::assignment::v1 as apb;
use pim_proto::catalogue;
use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;
use pim_runtime::db::from_timestamp;

use super::assignments::{AssignHow, assign_as};
use super::requests::{
    ActivateHow, DeactivateHow, ExtendHow, UnassignHow, activate_as, deactivate_as, extend_as, unassign_as,
};
use super::{Cell, ClientArgs, Names, Session, explain, print_table, time};

/// Which access to a group: membership or ownership.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Access {
    Member,
    Owner,
}

impl Access {
    /// The built-in role that stands for this access.
    pub(crate) fn role_id(self) -> &'static str {
        match self {
            Access::Member => catalogue::GROUP_MEMBER,
            Access::Owner => catalogue::GROUP_OWNER,
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Access::Member => "membership",
            Access::Owner => "ownership",
        }
    }
}

/// Someone's access to a group, as an administrator or owner names it.
#[derive(Args)]
pub(crate) struct WhoseAccess {
    /// User name, group or service principal name (`user:`, `group:` or `service-principal:NAME`
    /// where a name alone is ambiguous), or principal id.
    #[arg(long)]
    principal: String,
    /// Group name or id; or give it with --group (as `pim groups activate GROUP` takes it).
    #[arg(
        value_name = "GROUP",
        conflicts_with = "group_flag",
        required_unless_present = "group_flag"
    )]
    group: Option<String>,
    /// Group name or id (the same as the first argument).
    #[arg(long = "group", value_name = "GROUP")]
    group_flag: Option<String>,
    /// Which access to the group: member or owner.
    #[arg(long, value_enum, default_value = "member")]
    access: Access,
}

impl WhoseAccess {
    /// The group named, as the first argument or with --group (clap requires one).
    fn group(&self) -> &str {
        self.group.as_deref().or(self.group_flag.as_deref()).unwrap_or_default()
    }
}

/// Access to a group as the assignment service holds it: (what people call it, role, scope).
pub(crate) async fn access_target(
    session: &Session,
    group: &str,
    access: Access,
) -> anyhow::Result<(String, &'static str, String)> {
    let id = group_id(session, group).await?;
    Ok((
        format!("{} of {group}", capitalized(access.noun())),
        access.role_id(),
        catalogue::group_scope(&id),
    ))
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

#[derive(Subcommand)]
pub(crate) enum GroupsCommand {
    /// Create a group; --role-assignable lets it hold roles (Privileged Role and Global Administrators only).
    Create {
        /// The group's name (unique; commands name the group by it).
        #[arg(long)]
        name: String,
        /// What the group is for.
        #[arg(long, default_value = "")]
        description: String,
        /// The group may hold roles (set at creation only; its membership is then guarded).
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
    /// Add a member (user name or principal id). To a role-assignable group, this gives its
    /// roles now: an administrator with an MFA method steps up for it.
    AddMember {
        /// Group name or id.
        group: String,
        /// The member: a user name, service principal name, or principal id.
        member: String,
        /// Your authenticator code, sent only if the server asks for a recent MFA (adding to a
        /// role-assignable group); otherwise asked for on a terminal.
        #[arg(long, env = "PIM_MFA_CODE")]
        code: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a member.
    RemoveMember {
        /// Group name or id.
        group: String,
        /// The member: a user name, service principal name, or principal id.
        member: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a group: its members and owners leave it, and every role it holds and every
    /// access to it through PIM ends, live activations included.
    Delete {
        /// Group name or id.
        group: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List a group's members.
    Members {
        /// Group name or id.
        group: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Add a permanent owner (owners manage the group's members and access to it).
    AddOwner {
        /// Group name or id.
        group: String,
        /// The owner: a user name, service principal name, or principal id.
        owner: String,
        /// Your authenticator code, sent only if the server asks for a recent MFA (adding to a
        /// role-assignable group); otherwise asked for on a terminal.
        #[arg(long, env = "PIM_MFA_CODE")]
        code: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove an owner.
    RemoveOwner {
        /// Group name or id.
        group: String,
        /// The owner: a user name, service principal name, or principal id.
        owner: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List a group's owners (permanent, and through PIM for Groups).
    Owners {
        /// Group name or id.
        group: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Rename a group or change its description (whether it is role-assignable cannot change).
    Update {
        /// Group name or id.
        group: String,
        /// The new name.
        #[arg(long)]
        name: Option<String>,
        /// The new description.
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make someone eligible for (or give them, --kind active) membership or ownership of a
    /// group, time-bound or permanent as the group's policy allows (PIM for Groups).
    Assign {
        #[command(flatten)]
        whose: WhoseAccess,
        #[command(flatten)]
        how: AssignHow,
    },
    /// Remove someone's eligible (or, --kind active, active) access to a group.
    Unassign {
        #[command(flatten)]
        whose: WhoseAccess,
        #[command(flatten)]
        how: UnassignHow,
    },
    /// Activate your eligible membership or ownership of a group, then follow the request
    /// until it is active or refused (with the MFA step-up the policy asks for).
    Activate {
        /// Group name or id.
        group: String,
        /// Which access to the group: member or owner.
        #[arg(long, value_enum, default_value = "member")]
        access: Access,
        #[command(flatten)]
        how: ActivateHow,
    },
    /// End your activated membership or ownership of a group now.
    Deactivate {
        /// Group name or id.
        group: String,
        /// Which access to the group: member or owner.
        #[arg(long, value_enum, default_value = "member")]
        access: Access,
        #[command(flatten)]
        how: DeactivateHow,
    },
    /// Give access to a group a new end: --principal for an administrator's or owner's
    /// change of someone's (adminExtend, --update, --renew); without it, ask for your own
    /// (selfExtend / selfRenew, approved by others).
    Extend {
        /// Group name or id.
        group: String,
        /// Which access to the group: member or owner.
        #[arg(long, value_enum, default_value = "member")]
        access: Access,
        #[command(flatten)]
        how: ExtendHow,
    },
    /// Your eligible and active access to groups.
    Mine {
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
            super::print_made(
                &format!(
                    "Created group {} ({}){}",
                    g.display_name,
                    g.id,
                    if g.is_assignable_to_role {
                        ", role-assignable"
                    } else {
                        ""
                    }
                ),
                serde_json::json!({
                    "id": g.id,
                    "name": g.display_name,
                    "role_assignable": g.is_assignable_to_role,
                }),
            );
        }
        GroupsCommand::List { client } => {
            let session = Session::open(&client, true)?;
            let groups = super::listings::groups(&session).await?;
            let rows = groups
                .into_iter()
                .map(|g| {
                    vec![
                        Cell::from(g.id),
                        g.display_name.into(),
                        Cell::Flag(g.is_assignable_to_role),
                    ]
                })
                .collect();
            print_table(&["ID", "NAME", "ROLE-ASSIGNABLE"], rows);
        }
        GroupsCommand::AddMember {
            group,
            member,
            code,
            client,
        } => change_link(&group, &member, &client, Link::Member, Some(code)).await?,
        GroupsCommand::RemoveMember { group, member, client } => {
            change_link(&group, &member, &client, Link::Member, None).await?
        }
        GroupsCommand::AddOwner {
            group,
            owner,
            code,
            client,
        } => change_link(&group, &owner, &client, Link::Owner, Some(code)).await?,
        GroupsCommand::RemoveOwner { group, owner, client } => {
            change_link(&group, &owner, &client, Link::Owner, None).await?
        }
        GroupsCommand::Owners { group, client } => list_links(&group, &client, Link::Owner).await?,
        GroupsCommand::Update {
            group,
            name,
            description,
            client,
        } => {
            if name.is_none() && description.is_none() {
                anyhow::bail!("nothing to change: pass --name, --description or both");
            }
            let session = Session::open(&client, true)?;
            let id = group_id(&session, &group).await?;
            let mut directory = DirectoryServiceClient::new(session.channel.clone());
            let current = directory
                .get_group(session.request(ipb::GetGroupRequest { group_id: id.clone() })?)
                .await
                .map_err(explain)?
                .into_inner();
            let updated = directory
                .update_group(session.request(ipb::UpdateGroupRequest {
                    group_id: id,
                    display_name: name.unwrap_or(current.display_name),
                    description: description.unwrap_or(current.description),
                    is_assignable_to_role: None,
                })?)
                .await
                .map_err(explain)?;
            let g = session.remember(updated);
            println!("Updated group {} ({})", g.display_name, g.id);
        }
        GroupsCommand::Delete { group, client } => {
            let session = Session::open(&client, true)?;
            let id = group_id(&session, &group).await?;
            let deleted = DirectoryServiceClient::new(session.channel.clone())
                .delete_group(session.request(ipb::GetGroupRequest { group_id: id })?)
                .await
                .map_err(explain)?;
            session.remember(deleted);
            println!("Deleted group {group}");
        }
        GroupsCommand::Members { group, client } => list_links(&group, &client, Link::Member).await?,
        GroupsCommand::Assign { whose, how } => {
            let session = Session::open(&how.client, true)?;
            let (what, role, scope) = access_target(&session, whose.group(), whose.access).await?;
            return assign_as(&whose.principal, role, &scope, how)
                .await
                .map(|code| announce(code, &what));
        }
        GroupsCommand::Unassign { whose, how } => {
            let session = Session::open(&how.client, true)?;
            let (what, role, scope) = access_target(&session, whose.group(), whose.access).await?;
            return unassign_as(&whose.principal, &what, role, &scope, how).await;
        }
        GroupsCommand::Activate { group, access, how } => {
            let (what, role, scope) = access_target(&Session::open(&how.client, true)?, &group, access).await?;
            return activate_as(&what, role, &scope, how).await;
        }
        GroupsCommand::Deactivate { group, access, how } => {
            let (what, role, scope) = access_target(&Session::open(&how.client, true)?, &group, access).await?;
            return deactivate_as(&what, role, &scope, how).await;
        }
        GroupsCommand::Extend { group, access, how } => {
            let (what, role, scope) = access_target(&Session::open(&how.client, true)?, &group, access).await?;
            return extend_as(&what, role, &scope, how).await;
        }
        GroupsCommand::Mine { client } => mine(&client).await?,
    }
    Ok(0)
}

/// `assign_as` printed the request; say what it was for.
fn announce(code: i32, what: &str) -> i32 {
    if code == 0 {
        println!("({what})");
    }
    code
}

/// The caller's eligible and active group access, by group name.
async fn mine(client: &ClientArgs) -> anyhow::Result<()> {
    let session = Session::open(client, true)?;
    let mut names = Names::new(&session);
    let mut rows = Vec::new();
    for (label, a) in own_access(&session).await? {
        let access = match a.role_id.as_str() {
            catalogue::GROUP_MEMBER => "member",
            _ => "owner",
        };
        let how = match (label, a.activated) {
            ("active", true) => "activated",
            ("active", false) => "assigned",
            _ => "",
        };
        let group = catalogue::group_of_scope(&a.scope).unwrap_or_default();
        rows.push(vec![
            names.principal(group).await.into(),
            Cell::from(access),
            label.into(),
            how.into(),
            time(a.end_time.as_ref().map(from_timestamp)).into(),
        ]);
    }
    print_table(&["GROUP", "ACCESS", "KIND", "HOW", "UNTIL"], rows);
    Ok(())
}

/// The caller's own eligible and active group access, each with its kind.
async fn own_access(session: &Session) -> anyhow::Result<Vec<(&'static str, apb::Assignment)>> {
    let mine = apb::ListAssignmentsRequest {
        mine: true,
        ..Default::default()
    };
    let mut out = Vec::new();
    for label in ["eligible", "active"] {
        let listed = super::listings::assignments(session, label == "active", &mine).await?;
        out.extend(
            listed
                .into_iter()
                .filter(|a| catalogue::is_group_access(&a.role_id) && catalogue::group_of_scope(&a.scope).is_some())
                .map(|a| (label, a)),
        );
    }
    Ok(out)
}

/// The groups the caller has eligible or active access to: (id, name).
async fn own_groups(session: &Session) -> anyhow::Result<Vec<(String, String)>> {
    let mut names = Names::new(session);
    let mut out: Vec<(String, String)> = Vec::new();
    for (_, a) in own_access(session).await? {
        let id = catalogue::group_of_scope(&a.scope).unwrap_or_default().to_owned();
        if !out.iter().any(|(known, _)| *known == id) {
            let name = names.principal(&id).await.name;
            out.push((id, name));
        }
    }
    Ok(out)
}

/// A group's members, or its owners.
#[derive(Clone, Copy, PartialEq)]
enum Link {
    Member,
    Owner,
}

/// Adds (`adding`: with the code to step up with, if given) or removes a member or an owner
/// of a group.
async fn change_link(
    group: &str,
    who: &str,
    client: &ClientArgs,
    link: Link,
    adding: Option<Option<String>>,
) -> anyhow::Result<()> {
    let add = adding.is_some();
    let session = Session::open(client, true)?;
    let asked = ipb::GroupMembershipRequest {
        group_id: group_id(&session, group).await?,
        principal_id: session.principal_id(who).await?,
    };
    let what = match add {
        true => format!("Adding {who} to {group}"),
        false => format!("Removing {who} from {group}"),
    };
    super::mfa::stepping_up(client, &what, adding.flatten(), |session| {
        let asked = asked.clone();
        async move {
            let request = session.request(asked).map_err(super::mfa::status_of)?;
            let mut directory = DirectoryServiceClient::new(session.channel.clone());
            let answered = match (link, add) {
                (Link::Member, true) => directory.add_group_member(request).await,
                (Link::Member, false) => directory.remove_group_member(request).await,
                (Link::Owner, true) => directory.add_group_owner(request).await,
                (Link::Owner, false) => directory.remove_group_owner(request).await,
            }?;
            session.remember(answered);
            Ok(())
        }
    })
    .await?;
    let as_what = if link == Link::Owner { " as an owner" } else { "" };
    if add {
        println!("Added {who} to {group}{as_what}");
    } else {
        println!("Removed {who} from {group}{as_what}");
    }
    Ok(())
}

/// Prints a group's members or owners: who, how (added, assigned or activated through PIM)
/// and until when.
async fn list_links(group: &str, client: &ClientArgs, link: Link) -> anyhow::Result<()> {
    let session = Session::open(client, true)?;
    let links = super::listings::members(&session, &group_id(&session, group).await?, link == Link::Owner).await?;
    let rows = links
        .into_iter()
        .map(|link| {
            let how = match ipb::GroupLinkKind::try_from(link.kind) {
                Ok(ipb::GroupLinkKind::Assigned) => "assigned",
                Ok(ipb::GroupLinkKind::Activated) => "activated",
                _ => "direct",
            };
            let until = time(link.end_time.as_ref().map(from_timestamp));
            let p = link.principal.unwrap_or_default();
            vec![p.id, p.user_name, p.display_name, how.into(), until]
        })
        .collect();
    print_table(&["ID", "USER NAME", "NAME", "HOW", "UNTIL"], rows);
    Ok(())
}

/// A group's id from its display name (or its id).
async fn group_id(session: &Session, name_or_id: &str) -> anyhow::Result<String> {
    if uuid::Uuid::parse_str(name_or_id).is_ok() {
        return Ok(name_or_id.to_owned());
    }
    // Directory readers see every group; anyone else finds the groups they have access to.
    let groups: Vec<(String, String)> = match super::listings::groups(session).await {
        Ok(groups) => groups.into_iter().map(|g| (g.id, g.display_name)).collect(),
        Err(_) => {
            let own = own_groups(session).await?;
            if !own.iter().any(|(_, name)| name == name_or_id) {
                anyhow::bail!(
                    "none of the groups you have access to is named {name_or_id:?} (you may not list the directory's groups; give the group's id)"
                );
            }
            own
        }
    };
    let named: Vec<_> = groups.into_iter().filter(|(_, name)| name == name_or_id).collect();
    match named.as_slice() {
        [(id, _)] => Ok(id.clone()),
        [] => Err(super::answers::not_found(format!(
            "no group is named {name_or_id:?} (pim groups list shows them)"
        ))),
        _ => anyhow::bail!("several groups are named {name_or_id:?}; give the group's id (pim groups list)"),
    }
}
