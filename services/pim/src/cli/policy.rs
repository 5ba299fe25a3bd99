//! `pim policy show|set`: a role's (or a group's) policy at a scope, changed setting by
//! setting, with the approvers by name.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use pim_proto::assignment::v1 as apb;
use pim_proto::assignment::v1::policy_service_client::PolicyServiceClient;
use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;

use super::requests::show_duration;
use super::{Cell, ClientArgs, Names, RoleRef, Session, explain, print_table};

#[derive(Subcommand)]
pub(crate) enum PolicyCommand {
    /// Show the policy in force for a role at a scope.
    Show {
        #[command(flatten)]
        role: RoleRef,
        /// The scope to read the policy in force at (set there or above).
        #[arg(long, default_value = "/")]
        scope: String,
        #[command(flatten)]
        group: GroupTarget,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a role's policy at a scope (only the settings given change).
    Set(PolicySetArgs),
}

/// Access to a group instead of a role (PIM for Groups): its membership or its ownership.
#[derive(Args)]
pub(crate) struct GroupTarget {
    /// Access to this group (name or id) instead of a role.
    #[arg(long, conflicts_with_all = ["role_arg", "role_flag", "scope"])]
    group: Option<String>,
    /// Which access to the group.
    #[arg(long, value_enum, default_value = "member", requires = "group")]
    access: super::groups::Access,
}

impl GroupTarget {
    /// The role and scope meant: the role at the scope, or the group access at its group's.
    pub(crate) async fn target(
        &self,
        session: &Session,
        role: Option<&str>,
        scope: &str,
    ) -> anyhow::Result<(String, String)> {
        match (&self.group, role) {
            (Some(group), _) => {
                let (_, role, scope) = super::groups::access_target(session, group, self.access).await?;
                Ok((role.to_owned(), scope))
            }
            (None, Some(role)) => Ok((session.role_id(role).await?, scope.to_owned())),
            (None, None) => anyhow::bail!("name a role, or a group with --group"),
        }
    }
}

#[derive(Args)]
pub(crate) struct PolicySetArgs {
    #[command(flatten)]
    role: RoleRef,
    /// Scope the policy is set at (it applies there and below).
    #[arg(long, default_value = "/")]
    scope: String,
    #[command(flatten)]
    group: GroupTarget,
    /// Longest activation, 1m to 24h.
    #[arg(long, value_parser = super::parse_duration, allow_hyphen_values = true)]
    activation_max: Option<Duration>,
    /// Whether activating needs a recent MFA (true or false).
    #[arg(long)]
    require_mfa: Option<bool>,
    /// Whether activating needs a justification (true or false).
    #[arg(long)]
    require_justification: Option<bool>,
    /// Whether activating needs a ticket (true or false).
    #[arg(long)]
    require_ticket: Option<bool>,
    /// Whether an administrator giving, extending or changing an active assignment must have
    /// verified a code within the MFA freshness window, as Entra's "require MFA on active
    /// assignment" (true or false; off by default).
    #[arg(long)]
    require_mfa_on_active_assignment: Option<bool>,
    /// Whether an activation waits for an approver (true or false).
    #[arg(long)]
    require_approval: Option<bool>,
    /// Approvers, comma-separated: user, group or service principal names (`group:NAME` where a
    /// name alone is ambiguous) or principal ids (empty: the default approvers).
    #[arg(long, value_delimiter = ',')]
    approvers: Option<Vec<String>>,
    /// How long an approval may wait before it expires, denied (e.g. 24h).
    #[arg(long, value_parser = super::parse_duration, allow_hyphen_values = true)]
    approval_timeout: Option<Duration>,
    /// How recent an MFA must be to activate, e.g. 10m (1s to 24h).
    #[arg(long, value_parser = super::parse_duration, allow_hyphen_values = true)]
    mfa_freshness: Option<Duration>,
    /// Whether that MFA must be a passkey: phishing-resistant, a code does not do (true or false).
    #[arg(long)]
    require_passkey: Option<bool>,
    /// Whether active assignments may be permanent (true or false).
    #[arg(long)]
    allow_permanent_active: Option<bool>,
    /// Whether eligible assignments may be permanent (true or false).
    #[arg(long)]
    allow_permanent_eligible: Option<bool>,
    /// Longest an eligible assignment may last when it ends, e.g. 365d (1m to 5 years).
    #[arg(long, value_parser = super::parse_duration, allow_hyphen_values = true)]
    eligible_max: Option<Duration>,
    /// Longest an active assignment may last when it ends, e.g. 180d (1m to 5 years).
    #[arg(long, value_parser = super::parse_duration, allow_hyphen_values = true)]
    active_max: Option<Duration>,
    /// How long an activation must have run before its holder may end it early, e.g. 5m
    /// (0s to 24h; Entra: 5 minutes, here 0 by default).
    #[arg(long, value_parser = super::parse_duration_or_zero, allow_hyphen_values = true)]
    min_before_deactivate: Option<Duration>,
    /// Apply only if the policy is still the version `pim policy show` printed (its etag);
    /// a policy changed meanwhile is refused, nothing applied.
    #[arg(long)]
    etag: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

/// Warns (on stderr) when approval is required and a stage's approvers are all service
/// principals: a request the bot leaves undecided then waits, undecidable, until it expires.
pub(crate) async fn warn_without_people(session: &Session, p: &apb::RolePolicy) {
    use pim_proto::common::v1::PrincipalKind;
    if !p.approval_required {
        // Approvers named while approval is off are kept, and asked nothing until it is on.
        let named = !p.approver_ids.is_empty() || p.approval_stages.iter().any(|s| !s.approver_ids.is_empty());
        if named {
            eprintln!(
                "note: approval is off: the approvers named are kept but asked nothing until approval is required"
            );
        }
        return;
    }
    let stages: Vec<&[String]> = if p.approval_stages.is_empty() {
        vec![&p.approver_ids]
    } else {
        p.approval_stages.iter().map(|s| s.approver_ids.as_slice()).collect()
    };
    let directory = DirectoryServiceClient::new(session.channel.clone());
    for (n, approvers) in stages.iter().enumerate() {
        // No approvers named: the default approvers, people.
        if approvers.is_empty() {
            continue;
        }
        let mut bots = 0;
        for id in approvers.iter() {
            let Ok(request) = session.request(ipb::GetPrincipalRequest {
                principal_id: id.clone(),
            }) else {
                return;
            };
            match directory.clone().get_principal(request).await {
                Ok(found) if found.get_ref().kind == PrincipalKind::ServicePrincipal as i32 => bots += 1,
                Ok(_) => {}
                Err(_) => return,
            }
        }
        if bots == approvers.len() {
            eprintln!(
                "warning: stage {} has no person among its approvers: a request its bot leaves undecided waits until it expires; add a person or a group",
                n + 1
            );
        }
    }
}

/// A policy as a table, the role and approvers by name.
async fn print_policy(session: &Session, p: &apb::RolePolicy) {
    let mut names = Names::new(session);
    let role = names.role(&p.role_id).await;
    let mut approvers = Vec::new();
    for id in &p.approver_ids {
        approvers.push(names.principal(id).await);
    }
    let approvers: Vec<String> = approvers.into_iter().map(|a| Cell::Named(a).shown()).collect();
    let mut stages = Vec::new();
    for (n, stage) in p.approval_stages.iter().enumerate() {
        stages.push(vec![
            format!("approval stage {}", n + 1),
            stage_text(&mut names, stage).await,
        ]);
    }
    let mut rows: Vec<Vec<Cell>> = vec![vec!["role".into(), role.into()]];
    let set_at = match p.set_at.as_str() {
        "" => "nowhere: the defaults".to_owned(),
        at if at == p.scope => at.to_owned(),
        at => format!("{at} (inherited)"),
    };
    let mut settings: Vec<Vec<String>> = vec![
        vec!["scope".into(), p.scope.clone()],
        vec!["set at".into(), set_at],
        vec![
            "activation max duration".into(),
            show_duration(&p.activation_max_duration),
        ],
        vec!["activation requires MFA".into(), p.activation_requires_mfa.to_string()],
        vec![
            "MFA must be a passkey".into(),
            p.activation_requires_phishing_resistant_mfa.to_string(),
        ],
        vec!["MFA freshness".into(), show_duration(&p.mfa_freshness)],
        vec![
            "activation requires justification".into(),
            p.activation_requires_justification.to_string(),
        ],
        vec![
            "activation requires ticket".into(),
            p.activation_requires_ticket.to_string(),
        ],
        vec!["approval required".into(), p.approval_required.to_string()],
        vec![
            "approvers".into(),
            if p.approver_ids.is_empty() && pim_proto::catalogue::group_of_scope(&p.scope).is_some() {
                "default (the group's owners, and active Privileged Role and Global Administrators)".into()
            } else if p.approver_ids.is_empty() {
                "default (active Privileged Role and Global Administrators)".into()
            } else {
                approvers.join(", ")
            },
        ],
        vec!["approval timeout".into(), show_duration(&p.approval_timeout)],
    ];
    settings.insert(
        settings.len() - 3,
        vec![
            "deactivation allowed after".into(),
            show_duration(&p.min_activation_before_deactivate),
        ],
    );
    if !stages.is_empty() {
        // The stages, where set, are what requests go through: the simple pair is not shown.
        settings.truncate(settings.len() - 2);
        settings.extend(stages);
    }
    settings.extend([
        vec![
            "eligible: permanent allowed".into(),
            p.eligible_allow_permanent.to_string(),
        ],
        vec!["eligible: max duration".into(), show_duration(&p.eligible_max_duration)],
        vec!["active: permanent allowed".into(), p.active_allow_permanent.to_string()],
        vec!["active: max duration".into(), show_duration(&p.active_max_duration)],
        vec![
            "active: requires justification".into(),
            p.active_requires_justification.to_string(),
        ],
        vec![
            "active: requires the administrator's MFA".into(),
            p.active_requires_mfa.to_string(),
        ],
        vec!["etag".into(), p.etag.clone()],
    ]);
    rows.extend(
        settings
            .into_iter()
            .map(|row| row.into_iter().map(Cell::from).collect()),
    );
    print_table(&["SETTING", "VALUE"], rows);
}

/// A stage as a line: `2 of ann, bob within 4h; escalates to cio after 2h; a reason required`.
async fn stage_text(names: &mut Names<'_>, stage: &pim_proto::common::v1::ApprovalStageSettings) -> String {
    let mut who = Vec::new();
    for id in &stage.approver_ids {
        who.push(Cell::Named(names.principal(id).await).shown());
    }
    let who = if who.is_empty() {
        "the default approvers".to_owned()
    } else {
        who.join(", ")
    };
    let mut text = format!(
        "{} of {who} within {}",
        stage.approvals_required.max(1),
        show_duration(&stage.timeout)
    );
    if !stage.escalation_approver_ids.is_empty() {
        let mut to = Vec::new();
        for id in &stage.escalation_approver_ids {
            to.push(Cell::Named(names.principal(id).await).shown());
        }
        text.push_str(&format!(
            "; escalates to {} after {}",
            to.join(", "),
            show_duration(&stage.escalate_after)
        ));
    }
    if stage.justification_required {
        text.push_str("; a reason required");
    }
    text
}

/// The policy in force for a role at a scope.
pub(crate) async fn fetch(session: &Session, role_id: String, scope: String) -> anyhow::Result<apb::RolePolicy> {
    Ok(PolicyServiceClient::new(session.channel.clone())
        .get_role_policy(session.request(apb::GetRolePolicyRequest { role_id, scope })?)
        .await
        .map_err(explain)?
        .into_inner())
}

pub(crate) async fn policy(cmd: PolicyCommand) -> anyhow::Result<i32> {
    match cmd {
        PolicyCommand::Show {
            role,
            scope,
            group,
            client,
        } => {
            let session = Session::open(&client, true)?;
            let (role_id, scope) = group.target(&session, role.given(), &scope).await?;
            let p = fetch(&session, role_id, scope).await?;
            print_policy(&session, &p).await;
        }
        PolicyCommand::Set(a) => {
            let session = Session::open(&a.client, true)?;
            let (role_id, scope) = a.group.target(&session, a.role.given(), &a.scope).await?;
            // Only what was named is sent, with a mask naming it: the server merges it onto
            // the policy in force, so nothing else changes (and no concurrent change is lost).
            let mut p = apb::RolePolicy {
                role_id,
                scope,
                etag: a.etag.clone().unwrap_or_default(),
                ..Default::default()
            };
            let mut mask = Vec::new();
            if let Some(d) = a.activation_max {
                p.activation_max_duration = Some(pim_runtime::db::duration_pb(d));
                mask.push("activation_max_duration");
            }
            if let Some(v) = a.require_mfa {
                p.activation_requires_mfa = v;
                mask.push("activation_requires_mfa");
            }
            if let Some(v) = a.require_passkey {
                p.activation_requires_phishing_resistant_mfa = v;
                mask.push("activation_requires_phishing_resistant_mfa");
            }
            if let Some(v) = a.require_justification {
                p.activation_requires_justification = v;
                mask.push("activation_requires_justification");
            }
            if let Some(v) = a.require_ticket {
                p.activation_requires_ticket = v;
                mask.push("activation_requires_ticket");
            }
            if let Some(v) = a.require_approval {
                p.approval_required = v;
                mask.push("approval_required");
            }
            if let Some(v) = a.approvers {
                let mut ids = Vec::new();
                for approver in v.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
                    ids.push(
                        session
                            .principal_id(approver)
                            .await
                            .with_context(|| format!("approver {approver}"))?,
                    );
                }
                p.approver_ids = ids;
                mask.push("approver_ids");
            }
            if let Some(d) = a.approval_timeout {
                p.approval_timeout = Some(pim_runtime::db::duration_pb(d));
                mask.push("approval_timeout");
            }
            if let Some(d) = a.mfa_freshness {
                p.mfa_freshness = Some(pim_runtime::db::duration_pb(d));
                mask.push("mfa_freshness");
            }
            if let Some(v) = a.require_mfa_on_active_assignment {
                p.active_requires_mfa = v;
                mask.push("active_requires_mfa");
            }
            if let Some(v) = a.allow_permanent_active {
                p.active_allow_permanent = v;
                mask.push("active_allow_permanent");
            }
            if let Some(d) = a.eligible_max {
                p.eligible_max_duration = Some(pim_runtime::db::duration_pb(d));
                mask.push("eligible_max_duration");
            }
            if let Some(d) = a.active_max {
                p.active_max_duration = Some(pim_runtime::db::duration_pb(d));
                mask.push("active_max_duration");
            }
            if let Some(d) = a.min_before_deactivate {
                p.min_activation_before_deactivate = Some(pim_runtime::db::duration_pb(d));
                mask.push("min_activation_before_deactivate");
            }
            if let Some(v) = a.allow_permanent_eligible {
                p.eligible_allow_permanent = v;
                mask.push("eligible_allow_permanent");
            }
            if mask.is_empty() {
                bail!("nothing to change: pass at least one setting (see pim policy set --help)");
            }
            let updated = PolicyServiceClient::new(session.channel.clone())
                .update_role_policy(session.request(apb::UpdateRolePolicyRequest {
                    policy: Some(p),
                    update_mask: Some(prost_types::FieldMask {
                        paths: mask.into_iter().map(str::to_owned).collect(),
                    }),
                    validate_only: false,
                })?)
                .await
                .map_err(explain)?
                .into_inner();
            print_policy(&session, &updated).await;
            warn_without_people(&session, &updated).await;
        }
    }
    Ok(0)
}
