//! The wire and the domain: protobuf messages to and from the domain's types, and the checks
//! a request's fields pass at the edge (times, text, schedules) before any rule runs.

use std::time::Duration;

use pim_proto::assignment::v1 as pb;
use pim_proto::common::v1::{ApprovalStageSettings, PrincipalKind};
use pim_runtime::consistency;
use pim_runtime::db::to_timestamp;

use crate::assignments::{ActivateRequest, AdminAssignRequest, EndRequest, PolicyAt};
use crate::domain::{
    ActivationAsk, AdminAssignment, ApprovalStage, Expiration, Kind, NotificationRule, Policy, duration_to_pb,
};
use crate::error::Error;
use crate::store::{AssignmentRow, RequestRow, RoleRow};

pub(super) fn role_to_pb(r: RoleRow) -> pb::RoleDefinition {
    pb::RoleDefinition {
        id: r.id,
        name: r.name,
        description: r.description,
        permissions: r.permissions,
        built_in: r.built_in,
        privileged: r.privileged,
    }
}

pub(super) fn request_to_pb(r: RequestRow) -> pb::AssignmentRequest {
    pb::AssignmentRequest {
        id: r.id,
        action: r.action.to_pb() as i32,
        kind: r.kind.to_pb() as i32,
        principal_id: r.principal_id,
        role_id: r.role_id,
        scope: r.scope,
        status: r.status.to_pb() as i32,
        start_time: Some(to_timestamp(r.start_at)),
        end_time: r.end_at.map(to_timestamp),
        justification: r.justification,
        ticket: Some(pim_proto::common::v1::Ticket {
            system: r.ticket_system,
            number: r.ticket_number,
        }),
        requested_by: r.requested_by,
        created_at: Some(to_timestamp(r.created_at)),
        assignment_id: r.assignment_id.unwrap_or_default(),
        outcome_reason: r.outcome_reason,
        ..Default::default()
    }
}

/// An assignment as listed for a principal; `via_group` when it comes through a group.
pub(super) fn assignment_to_pb(
    a: AssignmentRow,
    role_name: String,
    member: Option<&str>,
    via_group: Option<String>,
) -> pb::Assignment {
    let principal_kind = match a.principal_kind.as_str() {
        "service_principal" => PrincipalKind::ServicePrincipal,
        "group" => PrincipalKind::Group,
        _ => PrincipalKind::User,
    };
    pb::Assignment {
        activated: a.origin == "activation",
        id: a.id,
        kind: a.kind.to_pb() as i32,
        principal_id: member.map(str::to_owned).unwrap_or(a.principal_id),
        principal_kind: principal_kind as i32,
        role_id: a.role_id,
        role_name,
        scope: a.scope,
        start_time: Some(to_timestamp(a.start_at)),
        end_time: a.end_at.map(to_timestamp),
        member_type: if via_group.is_some() {
            pb::MemberType::Group
        } else {
            pb::MemberType::Direct
        } as i32,
        via_group_id: via_group.unwrap_or_default(),
        created_by: a.created_by,
    }
}

pub(super) fn duration_from_pb(field: &'static str, d: &prost_types::Duration) -> Result<Duration, Error> {
    pim_runtime::db::checked_duration(d).map_err(|why| Error::invalid(field, why))
}

pub(super) fn policy_to_pb(at: PolicyAt) -> pb::RolePolicy {
    let PolicyAt {
        role_id,
        scope,
        policy: p,
        etag,
        set_at,
    } = at;
    pb::RolePolicy {
        role_id,
        scope,
        etag,
        set_at,
        activation_max_duration: Some(duration_to_pb(p.activation_max_duration)),
        activation_requires_mfa: p.activation_requires_mfa,
        activation_requires_phishing_resistant_mfa: p.activation_requires_phishing_resistant_mfa,
        activation_requires_justification: p.activation_requires_justification,
        activation_requires_ticket: p.activation_requires_ticket,
        approval_required: p.approval_required,
        approver_ids: p.approver_ids,
        approval_timeout: Some(duration_to_pb(p.approval_timeout)),
        eligible_allow_permanent: p.eligible_allow_permanent,
        eligible_max_duration: Some(duration_to_pb(p.eligible_max_duration)),
        active_allow_permanent: p.active_allow_permanent,
        active_max_duration: Some(duration_to_pb(p.active_max_duration)),
        active_requires_justification: p.active_requires_justification,
        active_requires_mfa: p.active_requires_mfa,
        mfa_freshness: Some(duration_to_pb(p.mfa_freshness)),
        min_activation_before_deactivate: Some(duration_to_pb(p.min_activation_before_deactivate)),
        approval_stages: p.approval_stages.iter().map(ApprovalStage::to_pb).collect(),
        notification_rules: p.notification_rules.iter().map(NotificationRule::to_pb).collect(),
    }
}

pub(super) fn stage_from_pb(s: ApprovalStageSettings) -> Result<ApprovalStage, Error> {
    let d = ApprovalStage::default();
    let trim = |ids: Vec<String>| ids.into_iter().map(|a| a.trim().to_owned()).collect();
    Ok(ApprovalStage {
        approver_ids: trim(s.approver_ids),
        approvals_required: match s.approvals_required {
            0 => 1,
            n if n < 0 => return Err(Error::invalid("approval_stages.approvals_required", "must be 1 to 10")),
            n => n as u32,
        },
        timeout: match &s.timeout {
            Some(t) => duration_from_pb("approval_stages.timeout", t)?,
            None => d.timeout,
        },
        escalation_approver_ids: trim(s.escalation_approver_ids),
        escalate_after: match &s.escalate_after {
            Some(t) => duration_from_pb("approval_stages.escalate_after", t)?,
            None => Duration::ZERO,
        },
        justification_required: s.justification_required,
    })
}

pub(super) fn policy_from_pb(p: pb::RolePolicy) -> Result<Policy, Error> {
    let d = Policy::default();
    let dur = |field: &'static str, v: &Option<prost_types::Duration>, default: Duration| match v {
        Some(v) => duration_from_pb(field, v),
        None => Ok(default),
    };
    Ok(Policy {
        activation_max_duration: dur(
            "activation_max_duration",
            &p.activation_max_duration,
            d.activation_max_duration,
        )?,
        activation_requires_mfa: p.activation_requires_mfa,
        activation_requires_phishing_resistant_mfa: p.activation_requires_phishing_resistant_mfa,
        activation_requires_justification: p.activation_requires_justification,
        activation_requires_ticket: p.activation_requires_ticket,
        approval_required: p.approval_required,
        approver_ids: p.approver_ids.into_iter().map(|a| a.trim().to_owned()).collect(),
        approval_timeout: dur("approval_timeout", &p.approval_timeout, d.approval_timeout)?,
        eligible_allow_permanent: p.eligible_allow_permanent,
        eligible_max_duration: dur(
            "eligible_max_duration",
            &p.eligible_max_duration,
            d.eligible_max_duration,
        )?,
        active_allow_permanent: p.active_allow_permanent,
        active_max_duration: dur("active_max_duration", &p.active_max_duration, d.active_max_duration)?,
        active_requires_justification: p.active_requires_justification,
        active_requires_mfa: p.active_requires_mfa,
        mfa_freshness: dur("mfa_freshness", &p.mfa_freshness, d.mfa_freshness)?,
        min_activation_before_deactivate: dur(
            "min_activation_before_deactivate",
            &p.min_activation_before_deactivate,
            d.min_activation_before_deactivate,
        )?,
        approval_stages: p
            .approval_stages
            .into_iter()
            .map(stage_from_pb)
            .collect::<Result<_, _>>()?,
        notification_rules: p
            .notification_rules
            .into_iter()
            .map(NotificationRule::from_pb)
            .collect::<Result<_, _>>()?,
    })
}

pub(super) fn kind_from_pb(kind: i32) -> Result<Kind, Error> {
    match pb::AssignmentKind::try_from(kind) {
        Ok(pb::AssignmentKind::Eligible) => Ok(Kind::Eligible),
        Ok(pb::AssignmentKind::Active) => Ok(Kind::Active),
        _ => Err(Error::invalid("kind", "must be eligible or active")),
    }
}

/// How far in the past a requested start may lie (clocks of callers drift): such a start
/// means now; an earlier one is INVALID_ARGUMENT.
pub const START_SKEW_MS: i64 = 5 * 60_000;

/// A time a client sent, as epoch milliseconds; INVALID_ARGUMENT naming `field` when it is
/// not a valid protobuf `Timestamp` (outside 0001-01-01…9999-12-31).
pub(super) fn input_time(field: &'static str, t: &prost_types::Timestamp) -> Result<i64, Error> {
    pim_runtime::db::checked_timestamp(t).ok_or_else(|| Error::invalid(field, pim_runtime::db::TIMESTAMP_RULE))
}

pub(super) fn start_time(schedule: &pb::Schedule) -> Result<Option<i64>, Error> {
    schedule
        .start_time
        .as_ref()
        .map(|t| input_time("schedule.start_time", t))
        .transpose()
}

/// Text fields must be text a database can keep: no NUL characters.
pub(super) fn no_nul(field: &'static str, text: &str) -> Result<(), Error> {
    if text.contains('\0') {
        return Err(Error::invalid(field, "must not contain NUL characters"));
    }
    Ok(())
}

pub(super) fn check_text(r: &pb::CreateRequestRequest) -> Result<(), Error> {
    use pim_runtime::text::{MAX_FREE_TEXT, free_text, one_line};
    free_text(&r.justification, MAX_FREE_TEXT).map_err(|why| Error::invalid("justification", why))?;
    no_nul("principal_id", &r.principal_id)?;
    no_nul("role_id", &r.role_id)?;
    no_nul("scope", &r.scope)?;
    if let Some(t) = &r.ticket {
        one_line(&t.system, 100).map_err(|why| Error::invalid("ticket.system", why))?;
        one_line(&t.number, 100).map_err(|why| Error::invalid("ticket.number", why))?;
        // A ticket names a ticket; a link in it would be one every mail program and page
        // offers to follow, written by the requester.
        if format!("{}:{}", t.system.trim(), t.number.trim()).contains("://") {
            return Err(Error::invalid(
                "ticket.number",
                "must be a ticket's number, not a link (system:number, e.g. ServiceNow:INC0012345)",
            ));
        }
    }
    // Ids and names, not essays: bounded before anything (a refusal's record included) keeps them.
    for (field, value, max) in [
        ("principal_id", &r.principal_id, 256),
        ("role_id", &r.role_id, 256),
        ("scope", &r.scope, 1024),
    ] {
        if value.chars().count() > max {
            return Err(Error::invalid(field, format!("must be at most {max} characters")));
        }
    }
    Ok(())
}

impl TryFrom<pb::CreateRequestRequest> for ActivateRequest {
    type Error = Error;

    fn try_from(r: pb::CreateRequestRequest) -> Result<Self, Error> {
        check_text(&r)?;
        if !matches!(
            pb::AssignmentKind::try_from(r.kind),
            Ok(pb::AssignmentKind::Active | pb::AssignmentKind::Unspecified)
        ) {
            return Err(Error::invalid("kind", "activation makes an active assignment"));
        }
        let schedule = r.schedule.unwrap_or_default();
        use pb::schedule::Expiration as E;
        let (duration, end) = match &schedule.expiration {
            None | Some(E::Permanent(false)) => (None, None),
            Some(E::Permanent(true)) => return Err(Error::invalid("schedule.permanent", "activations always end")),
            Some(E::Duration(d)) => (Some(duration_from_pb("schedule.duration", d)?), None),
            Some(E::EndTime(t)) => (None, Some(input_time("schedule.end_time", t)?)),
        };
        let ticket = r.ticket.unwrap_or_default();
        Ok(Self {
            role: r.role_id,
            scope: r.scope,
            ask: ActivationAsk {
                start: start_time(&schedule)?,
                duration,
                end,
                justification: r.justification,
                ticket_system: ticket.system,
                ticket_number: ticket.number,
            },
            validate_only: r.validate_only,
        })
    }
}

impl TryFrom<pb::CreateRequestRequest> for EndRequest {
    type Error = Error;

    fn try_from(r: pb::CreateRequestRequest) -> Result<Self, Error> {
        check_text(&r)?;
        let ticket = r.ticket.unwrap_or_default();
        Ok(Self {
            kind: kind_from_pb(r.kind)?,
            principal_id: r.principal_id,
            role: r.role_id,
            scope: r.scope,
            justification: r.justification,
            ticket: (ticket.system, ticket.number),
            validate_only: r.validate_only,
        })
    }
}

/// How long a read given `at_least_as_fresh` may wait: until shortly before the call's
/// deadline (so the caller hears UNAVAILABLE rather than its own timeout), else
/// [`consistency::DEFAULT_WAIT`], never longer than a minute.
pub(super) fn freshness_wait(metadata: &tonic::metadata::MetadataMap) -> Duration {
    match consistency::deadline(metadata) {
        Some(left) => left.saturating_sub((left / 10).max(Duration::from_millis(20))),
        None => consistency::DEFAULT_WAIT,
    }
    .min(Duration::from_secs(60))
}

/// Optional string filter: empty means "any".
pub(super) fn filter(s: &str) -> Option<&str> {
    let s = s.trim();
    (!s.is_empty()).then_some(s)
}

impl TryFrom<pb::CreateRequestRequest> for AdminAssignRequest {
    type Error = Error;

    fn try_from(r: pb::CreateRequestRequest) -> Result<Self, Error> {
        check_text(&r)?;
        let kind = kind_from_pb(r.kind)?;
        let schedule = r.schedule.unwrap_or_default();
        use pb::schedule::Expiration as E;
        let expiration = match &schedule.expiration {
            None => Expiration::Unspecified,
            Some(E::Permanent(true)) => Expiration::Permanent,
            Some(E::Permanent(false)) => Expiration::Unspecified,
            Some(E::EndTime(t)) => Expiration::At(input_time("schedule.end_time", t)?),
            Some(E::Duration(d)) => Expiration::After(duration_from_pb("schedule.duration", d)?),
        };
        if filter(&r.role_id).is_none() {
            return Err(Error::invalid("role_id", "required"));
        }
        Ok(Self {
            principal_id: r.principal_id,
            role: r.role_id,
            scope: r.scope,
            assignment: AdminAssignment {
                kind,
                start: start_time(&schedule)?,
                expiration,
                justification: r.justification,
            },
            ticket: r.ticket,
            validate_only: r.validate_only,
        })
    }
}
