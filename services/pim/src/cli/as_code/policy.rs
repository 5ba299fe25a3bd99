//! A policy as a file writes it and as the API carries it (RolePolicy), and each setting as
//! a plan shows it: two policies agree on a setting when they show it alike.

use std::time::Duration;

use pim_proto::assignment::v1 as apb;
use pim_proto::common::v1::{ApprovalStageSettings, NotificationEvent, NotificationParty, NotificationRule};
use serde_saphyr::Spanned;

use super::file::{NotificationSpec, PolicySpec, StageSpec, made};
use super::state::Directory;
use crate::cli::notifications::{RULES, name as wire_name};

/// An error and the line it is on (None: the policy's own line).
pub(crate) type Located = (Option<u64>, String);

/// How long a stage waits when it does not say (the API's default).
const STAGE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The RolePolicy fields the file's settings name, as an update mask lists them.
pub(crate) fn named(spec: &PolicySpec) -> Vec<&'static str> {
    let mut paths = Vec::new();
    let mut name = |set: bool, path: &'static str| {
        if set {
            paths.push(path);
        }
    };
    name(spec.activation_max_duration.is_some(), "activation_max_duration");
    name(spec.activation_requires_mfa.is_some(), "activation_requires_mfa");
    name(
        spec.activation_requires_phishing_resistant_mfa.is_some(),
        "activation_requires_phishing_resistant_mfa",
    );
    name(spec.mfa_freshness.is_some(), "mfa_freshness");
    name(
        spec.activation_requires_justification.is_some(),
        "activation_requires_justification",
    );
    name(spec.activation_requires_ticket.is_some(), "activation_requires_ticket");
    name(
        spec.min_activation_before_deactivate.is_some(),
        "min_activation_before_deactivate",
    );
    name(spec.approval_required.is_some(), "approval_required");
    name(spec.approvers.is_some(), "approver_ids");
    name(spec.approval_timeout.is_some(), "approval_timeout");
    name(spec.approval_stages.is_some(), "approval_stages");
    name(spec.eligible_allow_permanent.is_some(), "eligible_allow_permanent");
    name(spec.eligible_max_duration.is_some(), "eligible_max_duration");
    name(spec.active_allow_permanent.is_some(), "active_allow_permanent");
    name(spec.active_max_duration.is_some(), "active_max_duration");
    name(
        spec.active_requires_justification.is_some(),
        "active_requires_justification",
    );
    name(spec.active_requires_mfa.is_some(), "active_requires_mfa");
    name(spec.notifications.is_some(), "notification_rules");
    paths
}

fn event_name(event: NotificationEvent) -> String {
    wire_name(event.as_str_name(), "NOTIFICATION_EVENT_")
}

fn party_name(party: NotificationParty) -> String {
    wire_name(party.as_str_name(), "NOTIFICATION_PARTY_")
}

/// The rules of `p` that differ from the defaults, in the order `pim notifications show`
/// lists them (a rule set to the defaults is the same as none).
fn set_rules(p: &apb::RolePolicy) -> Vec<NotificationRule> {
    RULES
        .iter()
        .map(|(event, party)| p.notification_rule(*event, *party))
        .filter(|r| !r.default_recipients || !r.additional_recipients.is_empty() || r.critical_only)
        .collect()
}

/// A file's notification rule as the API carries it.
fn rule_to_pb(spec: &NotificationSpec) -> Result<NotificationRule, String> {
    let wanted = |text: &str| text.trim().replace('-', "_").to_lowercase();
    let (event, party) = RULES
        .iter()
        .find(|(event, party)| event_name(*event) == wanted(&spec.event) && party_name(*party) == wanted(&spec.party))
        .ok_or_else(|| {
            format!(
                "notifications: no rule for event {:?} and party {:?} (events: eligible_assignment, active_assignment, activation; parties: admin, assignee, and approver for activation)",
                spec.event, spec.party
            )
        })?;
    Ok(NotificationRule {
        event: *event as i32,
        party: *party as i32,
        default_recipients: spec.default_recipients,
        additional_recipients: spec.recipients.iter().map(|a| a.trim().to_owned()).collect(),
        critical_only: spec.critical_only,
    })
}

/// A rule as a plan shows it: `[activation/admin: not the party itself, also soc@example.com]`.
fn rule_text(r: &NotificationRule) -> String {
    let mut said = Vec::new();
    if !r.default_recipients {
        said.push("not the party itself".to_owned());
    }
    if !r.additional_recipients.is_empty() {
        let mut also = r.additional_recipients.clone();
        also.sort();
        said.push(format!("also {}", also.join(", ")));
    }
    if r.critical_only {
        said.push("critical only".to_owned());
    }
    let event = NotificationEvent::try_from(r.event).map(event_name).unwrap_or_default();
    let party = NotificationParty::try_from(r.party).map(party_name).unwrap_or_default();
    format!("[{event}/{party}: {}]", said.join(", "))
}

/// The settings the file names, as the API carries them; `resolve` turns a principal's name
/// into its id. Every error is returned, each with its line.
pub(crate) fn to_pb(
    spec: &PolicySpec,
    resolve: impl Fn(&str) -> Result<String, String>,
) -> Result<apb::RolePolicy, Vec<Located>> {
    let mut errors = Vec::new();
    let mut duration = |key: &str, text: &Option<String>| -> Option<prost_types::Duration> {
        parsed(text.as_deref()?)
            .map_err(|e| errors.push((None, format!("{key}: {e}"))))
            .ok()
    };
    let mut p = apb::RolePolicy {
        scope: spec.scope.clone(),
        activation_max_duration: duration("activation_max_duration", &spec.activation_max_duration),
        mfa_freshness: duration("mfa_freshness", &spec.mfa_freshness),
        min_activation_before_deactivate: duration(
            "min_activation_before_deactivate",
            &spec.min_activation_before_deactivate,
        ),
        approval_timeout: duration("approval_timeout", &spec.approval_timeout),
        eligible_max_duration: duration("eligible_max_duration", &spec.eligible_max_duration),
        active_max_duration: duration("active_max_duration", &spec.active_max_duration),
        activation_requires_mfa: spec.activation_requires_mfa.unwrap_or_default(),
        activation_requires_phishing_resistant_mfa: spec.activation_requires_phishing_resistant_mfa.unwrap_or_default(),
        activation_requires_justification: spec.activation_requires_justification.unwrap_or_default(),
        activation_requires_ticket: spec.activation_requires_ticket.unwrap_or_default(),
        approval_required: spec.approval_required.unwrap_or_default(),
        eligible_allow_permanent: spec.eligible_allow_permanent.unwrap_or_default(),
        active_allow_permanent: spec.active_allow_permanent.unwrap_or_default(),
        active_requires_justification: spec.active_requires_justification.unwrap_or_default(),
        active_requires_mfa: spec.active_requires_mfa.unwrap_or_default(),
        ..Default::default()
    };
    let ids = |names: &[Spanned<String>], errors: &mut Vec<Located>| -> Vec<String> {
        let mut ids = Vec::new();
        for name in names {
            match resolve(&name.value) {
                Ok(id) => ids.push(id),
                Err(e) => errors.push((line(name), format!("approver: {e}"))),
            }
        }
        ids
    };
    p.approver_ids = ids(spec.approvers.as_deref().unwrap_or_default(), &mut errors);
    for stage in spec.approval_stages.as_deref().unwrap_or_default() {
        let s = &stage.value;
        let mut stage_duration = |key: &str, text: &Option<String>| {
            parsed(text.as_deref()?)
                .map_err(|e| errors.push((line(stage), format!("{key}: {e}"))))
                .ok()
        };
        let timeout = stage_duration("timeout", &s.timeout);
        let escalate_after = stage_duration("escalate_after", &s.escalate_after);
        if s.approvals_required < 1 {
            errors.push((line(stage), "approvals_required must be at least 1".into()));
        }
        p.approval_stages.push(ApprovalStageSettings {
            approver_ids: ids(&s.approvers, &mut errors),
            approvals_required: s.approvals_required,
            timeout,
            escalation_approver_ids: ids(&s.escalation_approvers, &mut errors),
            escalate_after,
            justification_required: s.justification_required,
        });
    }
    let mut rules_seen = std::collections::BTreeSet::new();
    for rule in spec.notifications.as_deref().unwrap_or_default() {
        match rule_to_pb(&rule.value) {
            Ok(r) if !rules_seen.insert((r.event, r.party)) => {
                errors.push((line(rule), format!("notifications: {} is given twice", rule_text(&r))));
            }
            Ok(r) => p.notification_rules.push(r),
            Err(e) => errors.push((line(rule), e)),
        }
    }
    if errors.is_empty() { Ok(p) } else { Err(errors) }
}

/// A duration as the file writes it (`8h`, `30m`, `1d 12h`).
fn parsed(text: &str) -> Result<prost_types::Duration, String> {
    let d = pim_runtime::format::parse_duration(text)
        .map_err(|why| format!("{why}: write a duration such as 8h or 30m"))?;
    Ok(pim_runtime::db::duration_pb(d))
}

fn line<T>(item: &Spanned<T>) -> Option<u64> {
    Some(item.referenced.line()).filter(|l| *l > 0)
}

fn duration_text(d: Option<&prost_types::Duration>) -> Option<String> {
    d.map(|d| pim_runtime::format::duration(Duration::from_secs(d.seconds.max(0) as u64)))
}

fn names(ids: &[String], directory: &Directory) -> String {
    let mut names: Vec<String> = ids.iter().map(|id| directory.name_of(id)).collect();
    names.sort();
    names.join(", ")
}

/// One setting of `p` (by its RolePolicy field name) as a plan shows it.
pub(crate) fn shown(p: &apb::RolePolicy, path: &str, directory: &Directory) -> String {
    let on = |b: bool| if b { "on" } else { "off" }.to_owned();
    let duration = |d: &Option<prost_types::Duration>| duration_text(d.as_ref()).unwrap_or_else(|| "(unset)".into());
    match path {
        "activation_max_duration" => duration(&p.activation_max_duration),
        "activation_requires_mfa" => on(p.activation_requires_mfa),
        "activation_requires_phishing_resistant_mfa" => on(p.activation_requires_phishing_resistant_mfa),
        "mfa_freshness" => duration(&p.mfa_freshness),
        "activation_requires_justification" => on(p.activation_requires_justification),
        "activation_requires_ticket" => on(p.activation_requires_ticket),
        "min_activation_before_deactivate" => duration(&p.min_activation_before_deactivate),
        "approval_required" => on(p.approval_required),
        "approver_ids" if p.approver_ids.is_empty() => "(the default approvers)".into(),
        "approver_ids" => names(&p.approver_ids, directory),
        "approval_timeout" => duration(&p.approval_timeout),
        "approval_stages" if p.approval_stages.is_empty() => "(none)".into(),
        "approval_stages" => p
            .approval_stages
            .iter()
            .map(|s| {
                let mut text = format!(
                    "[{} by {}, within {}",
                    s.approvals_required.max(1),
                    if s.approver_ids.is_empty() {
                        "the default approvers".into()
                    } else {
                        names(&s.approver_ids, directory)
                    },
                    duration_text(s.timeout.as_ref()).unwrap_or_else(|| pim_runtime::format::duration(STAGE_TIMEOUT))
                );
                // The API gives no escalation delay for zero: both read as none.
                let escalate_after = s.escalate_after.as_ref().filter(|d| d.seconds > 0);
                if !s.escalation_approver_ids.is_empty() || escalate_after.is_some() {
                    text.push_str(&format!(
                        "; escalated to {} after {}",
                        names(&s.escalation_approver_ids, directory),
                        duration_text(escalate_after).unwrap_or_default()
                    ));
                }
                if s.justification_required {
                    text.push_str("; with a justification");
                }
                text + "]"
            })
            .collect::<Vec<_>>()
            .join(" "),
        "eligible_allow_permanent" => on(p.eligible_allow_permanent),
        "eligible_max_duration" => duration(&p.eligible_max_duration),
        "active_allow_permanent" => on(p.active_allow_permanent),
        "active_max_duration" => duration(&p.active_max_duration),
        "active_requires_justification" => on(p.active_requires_justification),
        "active_requires_mfa" => on(p.active_requires_mfa),
        "notification_rules" => {
            let rules = set_rules(p);
            if rules.is_empty() {
                "(the defaults)".into()
            } else {
                rules.iter().map(rule_text).collect::<Vec<_>>().join(" ")
            }
        }
        _ => String::new(),
    }
}

/// How a plan names a setting: as the file does.
pub(crate) fn file_key(path: &str) -> &str {
    match path {
        "approver_ids" => "approvers",
        "notification_rules" => "notifications",
        _ => path,
    }
}

/// A policy set at a scope, every setting written out (an export).
pub(crate) fn from_pb(role: &str, p: &apb::RolePolicy, directory: &Directory) -> PolicySpec {
    let people = |ids: &[String]| -> Vec<Spanned<String>> {
        let mut names: Vec<String> = ids.iter().map(|id| directory.name_of(id)).collect();
        names.sort();
        names.into_iter().map(made).collect()
    };
    PolicySpec {
        role: role.to_owned(),
        group: None,
        access: None,
        scope: p.scope.clone(),
        activation_max_duration: duration_text(p.activation_max_duration.as_ref()),
        activation_requires_mfa: Some(p.activation_requires_mfa),
        activation_requires_phishing_resistant_mfa: Some(p.activation_requires_phishing_resistant_mfa),
        mfa_freshness: duration_text(p.mfa_freshness.as_ref()),
        activation_requires_justification: Some(p.activation_requires_justification),
        activation_requires_ticket: Some(p.activation_requires_ticket),
        min_activation_before_deactivate: duration_text(p.min_activation_before_deactivate.as_ref()),
        approval_required: Some(p.approval_required),
        approvers: Some(people(&p.approver_ids)),
        approval_timeout: duration_text(p.approval_timeout.as_ref()),
        approval_stages: Some(
            p.approval_stages
                .iter()
                .map(|s| {
                    made(StageSpec {
                        approvers: people(&s.approver_ids),
                        approvals_required: s.approvals_required.max(1),
                        timeout: duration_text(s.timeout.as_ref()),
                        escalation_approvers: people(&s.escalation_approver_ids),
                        escalate_after: duration_text(s.escalate_after.as_ref()),
                        justification_required: s.justification_required,
                    })
                })
                .collect(),
        ),
        eligible_allow_permanent: Some(p.eligible_allow_permanent),
        eligible_max_duration: duration_text(p.eligible_max_duration.as_ref()),
        active_allow_permanent: Some(p.active_allow_permanent),
        active_max_duration: duration_text(p.active_max_duration.as_ref()),
        active_requires_justification: Some(p.active_requires_justification),
        active_requires_mfa: Some(p.active_requires_mfa),
        notifications: Some(
            set_rules(p)
                .iter()
                .map(|r| {
                    made(NotificationSpec {
                        event: NotificationEvent::try_from(r.event).map(event_name).unwrap_or_default(),
                        party: NotificationParty::try_from(r.party).map(party_name).unwrap_or_default(),
                        default_recipients: r.default_recipients,
                        recipients: r.additional_recipients.clone(),
                        critical_only: r.critical_only,
                    })
                })
                .collect(),
        ),
    }
}
