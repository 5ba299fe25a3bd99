//! `pim approvals`, `pim approve`, `pim deny`: what waits for your decision, and deciding it.

use anyhow::Context;
use clap::{Args, ValueEnum};

use pim_proto::approval::v1 as pb;
use pim_proto::approval::v1::approval_service_client::ApprovalServiceClient;
use pim_runtime::db::from_timestamp;

use super::{Cell, ClientArgs, Named, Session, explain, print_table, printable, time};

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum StatusArg {
    Pending,
    Approved,
    Denied,
    Expired,
    Canceled,
}

impl From<StatusArg> for pb::ApprovalStatus {
    fn from(s: StatusArg) -> Self {
        match s {
            StatusArg::Pending => Self::Pending,
            StatusArg::Approved => Self::Approved,
            StatusArg::Denied => Self::Denied,
            StatusArg::Expired => Self::Expired,
            StatusArg::Canceled => Self::Canceled,
        }
    }
}

#[derive(Args)]
pub(crate) struct ApprovalsArgs {
    /// Keep running and print each approval you may decide as it arrives.
    #[arg(long)]
    watch: bool,
    /// Every approval, not only yours (approval managers only).
    #[arg(long, conflicts_with = "watch")]
    all: bool,
    /// Only approvals in this status.
    #[arg(long, value_enum, conflicts_with = "watch")]
    status: Option<StatusArg>,
    /// Show one approval in full (requester's recent activations included).
    #[arg(long, conflicts_with_all = ["watch", "all", "status"])]
    id: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
pub(crate) struct DecideArgs {
    /// The approval id (from `pim approvals`).
    id: String,
    /// Why: a denial always says it (the requester reads it), an approval where the role's
    /// policy requires it.
    #[arg(long, short = 'j', default_value = "")]
    justification: String,
    /// Your authenticator code, sent only if approving needs your recent MFA (a request to
    /// keep an active assignment of a role that requires MFA on active assignment).
    #[arg(long, env = "PIM_MFA_CODE")]
    code: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

fn status_name(status: i32) -> String {
    pb::ApprovalStatus::try_from(status)
        .map(|s| s.as_str_name().trim_start_matches("APPROVAL_STATUS_").to_lowercase())
        .unwrap_or_default()
}

fn ticket(a: &pb::Approval) -> String {
    match &a.ticket {
        Some(t) if !t.number.is_empty() => format!("{}:{}", t.system, t.number),
        _ => String::new(),
    }
}

/// Where access is asked or held: a scope, or for PIM for Groups (held at the group's own
/// scope) the group, named as people know it.
async fn place(names: &mut super::Names<'_>, scope: &str) -> String {
    match pim_proto::catalogue::group_of_scope(scope) {
        Some(group) => format!("group {}", names.principal(group).await.name),
        None => scope.to_owned(),
    }
}

/// What the request asks for, as an approver weighs it: an activation and for how long, or
/// to keep an eligible or active assignment until when.
fn asks(a: &pb::Approval) -> String {
    use pim_proto::assignment::v1::{AssignmentKind, RequestAction};
    let kind = AssignmentKind::try_from(a.kind)
        .unwrap_or(AssignmentKind::Active)
        .text();
    let until = time(a.end_time.as_ref().map(from_timestamp));
    let lasting = super::requests::show_duration(&a.duration);
    match RequestAction::try_from(a.action).unwrap_or_default() {
        RequestAction::SelfExtend => format!("extend {kind} until {until}"),
        RequestAction::SelfRenew => format!("renew {kind} until {until}"),
        RequestAction::SelfActivate => match a.start_time.as_ref() {
            Some(start) => format!("activate for {lasting} from {}", time(Some(from_timestamp(start)))),
            None => format!("activate for {lasting}"),
        },
        // Opened before approvals said what they ask for.
        _ => format!("for {lasting}"),
    }
}

/// One approval as a table row, the requester by name.
async fn row(names: &mut super::Names<'_>, a: &pb::Approval) -> Vec<Cell> {
    let role = if a.role_name.is_empty() {
        names.role(&a.role_id).await
    } else {
        Named {
            name: a.role_name.clone(),
            id: a.role_id.clone(),
        }
    };
    let at = place(names, &a.scope).await;
    vec![
        a.id.clone().into(),
        status_name(a.status).into(),
        names.principal(&a.requester_id).await.into(),
        role.into(),
        at.into(),
        asks(a).into(),
        ticket(a).into(),
        a.justification.clone().into(),
        format!("{}/{}", a.current_stage + 1, a.stages.len()).into(),
        time(a.expires_at.as_ref().map(from_timestamp)).into(),
    ]
}

const HEADERS: [&str; 10] = [
    "ID",
    "STATUS",
    "REQUESTER",
    "ROLE",
    "SCOPE",
    "ASKS",
    "TICKET",
    "JUSTIFICATION",
    "STAGE",
    "EXPIRES",
];

pub(crate) async fn list(args: ApprovalsArgs) -> anyhow::Result<i32> {
    let session = Session::open(&args.client, true)?;
    let mut client = ApprovalServiceClient::new(session.channel.clone());
    if let Some(id) = &args.id {
        let a = client
            .get_approval(session.request(pb::GetApprovalRequest {
                approval_id: id.clone(),
            })?)
            .await
            .map_err(explain)?
            .into_inner();
        let mut names = super::Names::new(&session);
        print_table(&HEADERS, vec![row(&mut names, &a).await]);
        for d in &a.decisions {
            let decision = pb::Decision::try_from(d.decision)
                .map(|d| d.as_str_name().trim_start_matches("DECISION_").to_lowercase())
                .unwrap_or_default();
            println!(
                "stage {}: {} by {} at {}: {}",
                d.stage + 1,
                decision,
                printable(&names.principal(&d.approver_id).await.name),
                time(d.decided_at.as_ref().map(from_timestamp)),
                printable(&d.justification)
            );
        }
        println!("recent activations of the requester:");
        for h in &a.requester_history {
            let at = place(&mut names, &h.scope).await;
            println!(
                "  {} at {} from {} until {}",
                printable(&h.role_name),
                printable(&at),
                time(h.start_time.as_ref().map(from_timestamp)),
                time(h.end_time.as_ref().map(from_timestamp))
            );
        }
        return Ok(0);
    }
    if args.watch {
        return watch(&session).await;
    }
    let mut names = super::Names::new(&session);
    let mut rows = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_approvals(session.request(pb::ListApprovalsRequest {
                status: args.status.map(|s| pb::ApprovalStatus::from(s) as i32).unwrap_or(0),
                all: args.all,
                page_size: 500,
                page_token,
            })?)
            .await
            .map_err(explain)?
            .into_inner();
        for a in &page.approvals {
            rows.push(row(&mut names, a).await);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    print_table(&HEADERS, rows);
    Ok(0)
}

/// Prints approvals as they arrive, one line each; resumes from the last one after a
/// dropped connection.
async fn watch(session: &Session) -> anyhow::Result<i32> {
    let mut client = ApprovalServiceClient::new(session.channel.clone());
    let mut cursor = String::new();
    let mut names = super::Names::new(session);
    eprintln!("waiting for approvals you may decide (Ctrl-C to stop)");
    loop {
        let mut request = session.request(pb::WatchApprovalsRequest { cursor: cursor.clone() })?;
        // A watch runs for as long as the user wants.
        request.set_timeout(std::time::Duration::from_secs(365 * 24 * 3600));
        let Some(mut stream) = super::watch_opened(client.watch_approvals(request).await).await? else {
            continue;
        };
        loop {
            match stream.message().await {
                Ok(Some(a)) => {
                    cursor = a.cursor.clone();
                    let cells: Vec<String> = row(&mut names, &a).await.into_iter().map(Cell::shown).collect();
                    println!("{}", cells.join("\t"));
                }
                Ok(None) => break,
                Err(status) if status.code() == tonic::Code::Unavailable => break,
                Err(status) => return Err(explain(status)),
            }
        }
        eprintln!("connection lost; resuming");
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

pub(crate) async fn decide(args: DecideArgs, approve: bool) -> anyhow::Result<i32> {
    if !approve && args.justification.trim().is_empty() {
        anyhow::bail!("say why you deny it with --justification (-j): the requester reads it");
    }
    let ask = pb::DecideRequest {
        approval_id: args.id.trim().to_owned(),
        decision: if approve {
            pb::Decision::Approve
        } else {
            pb::Decision::Deny
        } as i32,
        justification: args.justification,
    };
    let what = if approve { "Approving" } else { "Denying" };
    let (_, a) = super::mfa::stepping_up(&args.client, &format!("{what} this request"), args.code, |session| {
        let ask = ask.clone();
        async move {
            let answer = ApprovalServiceClient::new(session.channel.clone())
                .decide(session.request(ask).map_err(super::mfa::status_of)?)
                .await?;
            Ok(answer.into_inner())
        }
    })
    .await
    .context(what.to_lowercase())?;
    println!(
        "approval {} is {} (stage {}/{})",
        a.id,
        status_name(a.status),
        a.current_stage + 1,
        a.stages.len()
    );
    Ok(0)
}
