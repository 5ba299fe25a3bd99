//! An app asks PIM whether a user may do something, as a service principal.
//!
//! It signs in with its client id and secret (`SignInServicePrincipal`), asks `CheckAccess`
//! by permission (or role) at a scope and prints the answer with the grants behind it, then,
//! with `--watch SECONDS`, prints the access changes PIM pushes (`WatchAccessChanges`) so a
//! cached answer can be dropped the moment access ends.
//!
//! The service principal needs `pim.assignments.read` to ask about others (e.g. an active
//! Global Reader or Security Reader assignment); anyone may ask about themselves.
//!
//! ```text
//! PIM_CLIENT_SECRET=… cargo run -p pim --example check_access -- \
//!     --server http://127.0.0.1:50051 --client-id ID --principal USER_ID \
//!     --permission app.payments/refunds/approve --scope /apps/payments --watch 30
//! ```
//!
//! Exit status: 0 allowed, 1 not allowed, 2 usage or a refused call.

use std::time::Duration;

use pim_proto::assignment::v1 as apb;
use pim_proto::assignment::v1::access_service_client::AccessServiceClient;
use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::auth_service_client::AuthServiceClient;
use tonic::Request;
use tonic::transport::Channel;

/// The command line, read by hand to keep the example short.
struct Args {
    server: String,
    client_id: String,
    principal: String,
    target: apb::check_access_request::Target,
    scope: String,
    watch: Option<Duration>,
}

fn args() -> anyhow::Result<Args> {
    let mut flags = std::collections::HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let name = flag
            .strip_prefix("--")
            .ok_or_else(|| anyhow::anyhow!("unexpected {flag:?}"))?;
        let value = it.next().ok_or_else(|| anyhow::anyhow!("--{name} needs a value"))?;
        flags.insert(name.to_owned(), value);
    }
    let mut take = |name: &str| flags.remove(name);
    let target = match (take("permission"), take("role")) {
        (Some(p), None) => apb::check_access_request::Target::Permission(p),
        (None, Some(r)) => apb::check_access_request::Target::RoleId(r),
        _ => anyhow::bail!("give --permission or --role"),
    };
    Ok(Args {
        server: take("server").unwrap_or_else(|| "http://127.0.0.1:50051".into()),
        client_id: take("client-id").ok_or_else(|| anyhow::anyhow!("--client-id is required"))?,
        principal: take("principal").ok_or_else(|| anyhow::anyhow!("--principal (a user's id) is required"))?,
        target,
        scope: take("scope").unwrap_or_else(|| "/".into()),
        watch: take("watch").map(|s| s.parse().map(Duration::from_secs)).transpose()?,
    })
}

fn rfc3339(t: &prost_types::Timestamp) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_secs(t.seconds.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// A request carrying the bearer token.
fn authed<T>(token: &str, message: T) -> anyhow::Result<Request<T>> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

async fn run() -> anyhow::Result<bool> {
    let args = args()?;
    // The secret comes from the environment, never from the command line (where `ps` shows it).
    let client_secret = std::env::var("PIM_CLIENT_SECRET")
        .map_err(|_| anyhow::anyhow!("set PIM_CLIENT_SECRET to the client secret"))?;
    let channel = Channel::from_shared(args.server.clone())?.connect().await?;

    let token = AuthServiceClient::new(channel.clone())
        .sign_in_service_principal(ipb::SignInServicePrincipalRequest {
            client_id: args.client_id.clone(),
            client_secret,
        })
        .await?
        .into_inner()
        .access_token;

    let mut access = AccessServiceClient::new(channel);
    let answer = access
        .check_access(authed(
            &token,
            apb::CheckAccessRequest {
                principal_id: args.principal.clone(),
                target: Some(args.target.clone()),
                scope: args.scope.clone(),
                at_least_as_fresh: String::new(),
            },
        )?)
        .await?
        .into_inner();
    if answer.allowed {
        println!("allowed");
        for grant in &answer.grants {
            let until = grant
                .end_time
                .as_ref()
                .map_or_else(|| "permanently".to_owned(), |t| format!("until {}", rfc3339(t)));
            let via = if grant.via_group_id.is_empty() {
                String::new()
            } else {
                format!(" through group {}", grant.via_group_id)
            };
            println!(
                "  by {} at {} (assignment {}), {until}{via}",
                grant.role_name, grant.scope, grant.assignment_id
            );
        }
    } else {
        println!("not allowed");
    }

    if let Some(watch) = args.watch {
        let mut changes = access
            .watch_access_changes(authed(&token, apb::WatchAccessChangesRequest::default())?)
            .await?
            .into_inner();
        println!("watching access changes for {}s", watch.as_secs());
        let deadline = tokio::time::Instant::now() + watch;
        while let Ok(next) = tokio::time::timeout_at(deadline, changes.message()).await {
            let Some(change) = next? else { break };
            if change.principal_id == args.principal {
                let what = if change.active { "granted" } else { "ended" };
                println!(
                    "{what}: role {} at {} (assignment {})",
                    change.role_id, change.scope, change.assignment_id
                );
            }
        }
    }
    Ok(answer.allowed)
}

#[tokio::main]
async fn main() {
    std::process::exit(match run().await {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    });
}
