//! `pim roles create|update|delete`: custom role definitions (built-in roles are read-only).

use clap::Subcommand;

use pim_proto::assignment::v1 as apb;
use pim_proto::assignment::v1::role_service_client::RoleServiceClient;

use super::{Cell, ClientArgs, Session, explain, print_table};

#[derive(Subcommand)]
pub(crate) enum RolesCommand {
    /// Create a custom role with permissions of your apps (`app.payments/refunds/approve`;
    /// `*` matches one segment, a last `*` any rest).
    Create {
        /// The role's name, unique whatever its case.
        #[arg(long)]
        name: String,
        /// What the role is for.
        #[arg(long, default_value = "")]
        description: String,
        /// A permission the role grants; repeat for several.
        #[arg(long = "permission", required = true, value_name = "PERMISSION")]
        permissions: Vec<String>,
        /// Mark the role privileged (stricter alerting), even if no permission makes it so.
        #[arg(long)]
        privileged: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a custom role: only what is given changes.
    Update {
        /// Role name or id.
        role: String,
        /// A new description.
        #[arg(long)]
        description: Option<String>,
        /// The whole new set of permissions; repeat for several.
        #[arg(long = "permission", value_name = "PERMISSION")]
        permissions: Vec<String>,
        /// Mark or unmark the role privileged (true or false).
        #[arg(long)]
        privileged: Option<bool>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a custom role nobody holds (remove its assignments first).
    Delete {
        /// Role name or id.
        role: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn print_role(r: apb::RoleDefinition) {
    let rows = vec![
        vec!["id".into(), r.id],
        vec!["name".into(), r.name],
        vec!["description".into(), r.description],
        vec!["permissions".into(), r.permissions.join(" ")],
        vec!["built in".into(), r.built_in.to_string()],
        vec!["privileged".into(), r.privileged.to_string()],
    ];
    print_table(&["FIELD", "VALUE"], rows);
}

pub(crate) async fn manage(cmd: RolesCommand) -> anyhow::Result<i32> {
    match cmd {
        RolesCommand::Create {
            name,
            description,
            permissions,
            privileged,
            client,
        } => {
            let session = Session::open(&client, true)?;
            let role = RoleServiceClient::new(session.channel.clone())
                .create_role_definition(session.request(apb::CreateRoleDefinitionRequest {
                    name,
                    description,
                    permissions,
                    privileged,
                })?)
                .await
                .map_err(explain)?
                .into_inner();
            print_role(role);
        }
        RolesCommand::Update {
            role,
            description,
            permissions,
            privileged,
            client,
        } => {
            if description.is_none() && permissions.is_empty() && privileged.is_none() {
                anyhow::bail!("nothing to change: pass --description, --permission or --privileged");
            }
            let session = Session::open(&client, true)?;
            let role = RoleServiceClient::new(session.channel.clone())
                .update_role_definition(session.request(apb::UpdateRoleDefinitionRequest {
                    role,
                    description,
                    permissions,
                    privileged,
                })?)
                .await
                .map_err(explain)?
                .into_inner();
            print_role(role);
        }
        RolesCommand::Delete { role, client } => {
            let session = Session::open(&client, true)?;
            RoleServiceClient::new(session.channel.clone())
                .delete_role_definition(session.request(apb::GetRoleDefinitionRequest { role: role.clone() })?)
                .await
                .map_err(explain)?;
            println!("Deleted role {role}.");
        }
    }
    Ok(0)
}

/// Every role definition, built-in and custom.
pub(crate) async fn definitions(client: ClientArgs) -> anyhow::Result<i32> {
    let session = Session::open(&client, true)?;
    let roles = RoleServiceClient::new(session.channel.clone())
        .list_role_definitions(session.request(apb::ListRoleDefinitionsRequest {})?)
        .await
        .map_err(explain)?
        .into_inner()
        .roles;
    let rows = roles
        .into_iter()
        .map(|r| {
            vec![
                Cell::from(r.id),
                r.name.into(),
                Cell::Flag(r.privileged),
                r.permissions.join(" ").into(),
            ]
        })
        .collect();
    print_table(&["ID", "NAME", "PRIVILEGED", "PERMISSIONS"], rows);
    Ok(0)
}
