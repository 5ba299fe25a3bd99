//! `pim service-principals`: apps and bots, their client secrets and sign-ins.

use clap::Subcommand;

use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;
use pim_runtime::db::from_timestamp;

use super::{ClientArgs, Session, explain, listings, print_table, time};

#[derive(Subcommand)]
pub(crate) enum SpCommand {
    /// Create a service principal; its client secret is shown once.
    Create {
        /// Its display name (unique; commands name it by it).
        #[arg(long)]
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A new client secret (shown once; the old one stops with its tokens, at once or after
    /// --keep-old-for).
    Rotate {
        /// The service principal's name or id (see `pim sp list`).
        id: String,
        /// Keep the old secret signing in beside the new one this long (at most 7d), for the
        /// apps using it to move over without an outage. Without it, the old secret and its
        /// tokens stop at once (as a leaked secret needs).
        #[arg(long, value_parser = super::parse_duration)]
        keep_old_for: Option<std::time::Duration>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Disable: no more sign-ins, and its tokens stop working.
    Disable {
        /// The service principal's name or id (see `pim sp list`).
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List service principals (with their client ids and whether they may sign in).
    List {
        /// Only those whose name contains this text.
        #[arg(long, default_value = "")]
        filter: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub(crate) async fn service_principals(cmd: SpCommand) -> anyhow::Result<i32> {
    match cmd {
        SpCommand::Create { name, client } => {
            let session = Session::open(&client, true)?;
            let r = DirectoryServiceClient::new(session.channel.clone())
                .create_service_principal(session.request(ipb::CreateServicePrincipalRequest { display_name: name })?)
                .await
                .map_err(explain)?
                .into_inner();
            let sp = r.service_principal.unwrap_or_default();
            super::print_made(
                &format!(
                    "Created service principal {} ({})\n  client id:     {}\n  client secret: {} (shown once)",
                    sp.display_name, sp.id, sp.client_id, r.client_secret
                ),
                serde_json::json!({
                    "id": sp.id,
                    "name": sp.display_name,
                    "client_id": sp.client_id,
                    "client_secret": r.client_secret,
                }),
            );
        }
        SpCommand::List { filter, client } => {
            let session = Session::open(&client, true)?;
            let found = listings::service_principals(&session, &filter).await?;
            let rows = found
                .into_iter()
                .map(|sp| {
                    vec![
                        sp.id,
                        sp.display_name,
                        if sp.enabled { "enabled" } else { "disabled" }.to_owned(),
                        time(sp.created_at.as_ref().map(from_timestamp)),
                    ]
                })
                .collect();
            print_table(&["CLIENT ID", "NAME", "STATE", "CREATED"], rows);
        }
        SpCommand::Rotate {
            id,
            keep_old_for,
            client,
        } => {
            let session = Session::open(&client, true)?;
            let id = sp_id(&session, &id).await?;
            let r = DirectoryServiceClient::new(session.channel.clone())
                .rotate_service_principal_secret(session.request(ipb::RotateServicePrincipalSecretRequest {
                    service_principal_id: id.clone(),
                    keep_previous_for: keep_old_for.map(pim_runtime::db::duration_pb),
                })?)
                .await
                .map_err(explain)?
                .into_inner();
            let name = r
                .service_principal
                .as_ref()
                .map_or(id.as_str(), |sp| sp.display_name.as_str());
            super::print_made(
                &format!(
                    "New client secret for {name}: {} (shown once); {}",
                    r.client_secret,
                    match keep_old_for {
                        Some(d) => format!(
                            "the old one keeps working for {}, then stops with every token it got",
                            pim_runtime::format::duration(d)
                        ),
                        None => "the old one, and every token it got, no longer works".to_owned(),
                    }
                ),
                // As `create` gives it: what a script signs in with, whole.
                serde_json::json!({
                    "id": id,
                    "name": r.service_principal.as_ref().map(|sp| sp.display_name.as_str()),
                    "client_id": r.service_principal.as_ref().map(|sp| sp.client_id.as_str()),
                    "client_secret": r.client_secret,
                }),
            );
        }
        SpCommand::Disable { id, client } => {
            let session = Session::open(&client, true)?;
            let id = sp_id(&session, &id).await?;
            // Its next `pim check` sees the service principal's access gone.
            let sp = session.remember(
                DirectoryServiceClient::new(session.channel.clone())
                    .disable_service_principal(session.request(ipb::GetServicePrincipalRequest {
                        service_principal_id: id.clone(),
                    })?)
                    .await
                    .map_err(explain)?,
            );
            println!(
                "Service principal {} disabled: no sign-ins, and every token it got no longer works",
                sp.display_name
            );
        }
    }
    Ok(0)
}

/// The service principal `reference` names: its id, or its display name (as every command
/// takes a principal).
async fn sp_id(session: &Session, reference: &str) -> anyhow::Result<String> {
    let reference = reference.trim();
    if uuid::Uuid::parse_str(reference).is_ok() || reference.starts_with("service-principal:") {
        return session.principal_id(reference).await;
    }
    session.principal_id(&format!("service-principal:{reference}")).await
}
