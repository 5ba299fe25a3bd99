//! *Role settings → Approval*: the stages an activation waiting for approval goes through, in
//! order (Entra's multi-stage approval). Each stage names its approvers (users by name,
//! groups or service principals by id; none: the default approvers), how many approvals pass
//! it, how long it waits, whom it escalates to and when, and whether a decision needs a
//! reason. One plain stage is written as the policy's simple `approver_ids` and
//! `approval_timeout`, so the CLI and older clients read it as they always did.

use maud::{Markup, html};

use pim_proto::assignment::v1 as apb;
use pim_proto::common::v1::ApprovalStageSettings;
use pim_proto::common::v1::PrincipalKind;
use pim_proto::identity::v1 as ipb;

use super::{approver_id, duration_text, parse_duration};
use crate::lookup::directory;
use crate::web::{Caller, Failure, Fields};

/// As many as assignment allows.
const MAX_STAGES: usize = 5;

/// The stages in force: those set, or the one plain stage the simple settings describe.
fn in_force(p: &apb::RolePolicy) -> Vec<ApprovalStageSettings> {
    if !p.approval_stages.is_empty() {
        return p.approval_stages.clone();
    }
    vec![ApprovalStageSettings {
        approver_ids: p.approver_ids.clone(),
        approvals_required: 1,
        timeout: p.approval_timeout,
        ..Default::default()
    }]
}

/// Approvers as the form shows them: a user by user name, anyone else by id (what the form
/// reads back).
async fn references(caller: &Caller, ids: &[String]) -> String {
    let mut shown = Vec::with_capacity(ids.len());
    for id in ids {
        let principal = directory(caller)
            .get_principal(caller.request(ipb::GetPrincipalRequest {
                principal_id: id.clone(),
            }))
            .await
            .map(tonic::Response::into_inner);
        shown.push(match principal {
            Ok(p) if p.kind == PrincipalKind::User as i32 && !p.user_name.is_empty() => p.user_name,
            _ => id.clone(),
        });
    }
    shown.join(", ")
}

/// The stages' fields: those in force, and one more to add (up to the most allowed).
pub async fn fields(caller: &Caller, p: &apb::RolePolicy) -> Markup {
    let stages = in_force(p);
    let mut shown = Vec::new();
    for (i, stage) in stages.iter().enumerate() {
        shown.push((
            i + 1,
            stage.clone(),
            references(caller, &stage.approver_ids).await,
            references(caller, &stage.escalation_approver_ids).await,
        ));
    }
    if stages.len() < MAX_STAGES {
        let timeout = Some(prost_types::Duration {
            seconds: 24 * 3600,
            nanos: 0,
        });
        let blank = ApprovalStageSettings {
            approvals_required: 1,
            timeout,
            ..Default::default()
        };
        shown.push((stages.len() + 1, blank, String::new(), String::new()));
    }
    html! {
        p { small { "With approval on, a request passes each stage in order. The first stage with no approvers named goes to the default approvers (the active Privileged Role and Global Administrators). A later stage counts only when it names approvers: clear them to drop it." } }
        @for (n, stage, approvers, escalation) in &shown {
            @let id = |name: &str| format!("stage{n}.{name}");
            fieldset.stage {
                legend { "Approval stage " (n) }
                label for=(id("approvers")) { "Approvers (user names, or ids of groups and service principals, comma-separated)" }
                input type="text" id=(id("approvers")) name=(id("approvers")) value=(approvers);
                label for=(id("required")) { "Approvals that pass the stage" }
                input type="number" min="1" max="10" id=(id("required")) name=(id("required")) value=(stage.approvals_required.max(1));
                label for=(id("timeout")) { "The stage waits at most" }
                input type="text" id=(id("timeout")) name=(id("timeout")) value=(duration_text(&stage.timeout));
                label for=(id("escalation")) { "Escalate to (optional)" }
                input type="text" id=(id("escalation")) name=(id("escalation")) value=(escalation);
                label for=(id("escalate_after")) { "Escalate after (shorter than the wait)" }
                input type="text" id=(id("escalate_after")) name=(id("escalate_after")) value=(duration_text(&stage.escalate_after));
                div.check {
                    input type="checkbox" id=(id("justification")) name=(id("justification")) value="on" checked[stage.justification_required];
                    label for=(id("justification")) { "A decision needs a reason" }
                }
            }
        }
    }
}

/// Whether `stages` is one stage the simple settings say as well (approvers and a wait).
fn plain(stages: &[ApprovalStageSettings]) -> bool {
    match stages {
        [only] => {
            only.approvals_required <= 1
                && only.escalation_approver_ids.is_empty()
                && only.escalate_after.is_none_or(|d| d.seconds == 0)
                && !only.justification_required
        }
        _ => false,
    }
}

/// Ids of the principals a field names, comma-separated.
async fn ids(caller: &Caller, text: &str) -> Result<Vec<String>, Failure> {
    let mut ids = Vec::new();
    for reference in text.split(',').map(str::trim).filter(|r| !r.is_empty()) {
        ids.push(approver_id(caller, reference).await?);
    }
    Ok(ids)
}

/// The stages the form describes, into `p`; the settings written, for the update mask.
pub async fn read(caller: &Caller, fields: &Fields, p: &mut apb::RolePolicy) -> Result<Vec<String>, Failure> {
    let mut stages = Vec::new();
    for n in 1..=MAX_STAGES {
        let get = |name: &str| fields.get(&format!("stage{n}.{name}")).trim().to_owned();
        let approvers = get("approvers");
        if n > 1 && approvers.is_empty() {
            continue;
        }
        let required = match get("required").as_str() {
            "" => 1,
            text => text
                .parse::<i32>()
                .map_err(|_| Failure::bad_input(format!("Approval stage {n}: {text:?} approvals is not a number")))?,
        };
        let timeout = match get("timeout").as_str() {
            "" => None,
            text => Some(parse_duration(&format!("Approval stage {n}: the wait"), text)?),
        };
        let escalate_after = match get("escalate_after").as_str() {
            "" => None,
            text => Some(parse_duration(&format!("Approval stage {n}: escalate after"), text)?),
        };
        stages.push(ApprovalStageSettings {
            approver_ids: ids(caller, &approvers).await?,
            approvals_required: required,
            timeout,
            escalation_approver_ids: ids(caller, &get("escalation")).await?,
            escalate_after,
            justification_required: get("justification") == "on",
        });
    }
    if plain(&stages) {
        let only = stages.remove(0);
        p.approver_ids = only.approver_ids;
        p.approval_timeout = only.timeout;
        p.approval_stages = Vec::new();
        return Ok(vec![
            "approver_ids".into(),
            "approval_timeout".into(),
            "approval_stages".into(),
        ]);
    }
    p.approval_stages = stages;
    Ok(vec!["approval_stages".into()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_stage_of_approvers_and_a_wait_is_the_simple_settings_and_anything_more_is_stages() {
        let hour = Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        });
        let one = ApprovalStageSettings {
            approver_ids: vec!["a".into()],
            approvals_required: 1,
            timeout: hour,
            ..Default::default()
        };
        assert!(plain(std::slice::from_ref(&one)));
        assert!(!plain(&[one.clone(), one.clone()]), "two stages");
        for more in [
            ApprovalStageSettings {
                approvals_required: 2,
                ..one.clone()
            },
            ApprovalStageSettings {
                justification_required: true,
                ..one.clone()
            },
            ApprovalStageSettings {
                escalation_approver_ids: vec!["b".into()],
                ..one.clone()
            },
            ApprovalStageSettings {
                escalate_after: hour,
                ..one.clone()
            },
        ] {
            assert!(!plain(&[more]), "a stage the simple settings cannot say");
        }
        let policy = apb::RolePolicy {
            approver_ids: vec!["a".into()],
            approval_timeout: hour,
            ..Default::default()
        };
        assert_eq!(in_force(&policy), vec![one], "the simple settings read as one stage");
    }
}
