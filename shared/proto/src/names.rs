//! The names the services' enums have in text (Entra's: `PendingApproval`, `selfActivate`,
//! `eligible`; an approval's `Pending`, a decision's `approve`), one table each: what the
//! databases keep, what audit records say and what the events' deprecated text fields carry.
//! And the events' typed fields read either way, so an entry published before those fields
//! existed reads the same.

use crate::alerting::v1::{AlertStatus, Severity};
use crate::approval::v1::{ApprovalStatus, Decision};
use crate::assignment::v1::{AssignmentKind, RequestAction, RequestStatus};
use crate::events::v1 as ev;

const STATUSES: [(RequestStatus, &str); 9] = [
    (RequestStatus::PendingApproval, "PendingApproval"),
    (RequestStatus::Granted, "Granted"),
    (RequestStatus::Denied, "Denied"),
    (RequestStatus::Provisioned, "Provisioned"),
    (RequestStatus::ScheduleCreated, "ScheduleCreated"),
    (RequestStatus::Revoked, "Revoked"),
    (RequestStatus::Canceled, "Canceled"),
    (RequestStatus::Failed, "Failed"),
    (RequestStatus::Expired, "Expired"),
];

const ACTIONS: [(RequestAction, &str); 9] = [
    (RequestAction::AdminAssign, "adminAssign"),
    (RequestAction::AdminUpdate, "adminUpdate"),
    (RequestAction::AdminRemove, "adminRemove"),
    (RequestAction::AdminExtend, "adminExtend"),
    (RequestAction::AdminRenew, "adminRenew"),
    (RequestAction::SelfActivate, "selfActivate"),
    (RequestAction::SelfDeactivate, "selfDeactivate"),
    (RequestAction::SelfExtend, "selfExtend"),
    (RequestAction::SelfRenew, "selfRenew"),
];

const KINDS: [(AssignmentKind, &str); 2] = [
    (AssignmentKind::Eligible, "eligible"),
    (AssignmentKind::Active, "active"),
];

const APPROVAL_STATUSES: [(ApprovalStatus, &str); 5] = [
    (ApprovalStatus::Pending, "Pending"),
    (ApprovalStatus::Approved, "Approved"),
    (ApprovalStatus::Denied, "Denied"),
    (ApprovalStatus::Expired, "Expired"),
    (ApprovalStatus::Canceled, "Canceled"),
];

const DECISIONS: [(Decision, &str); 2] = [(Decision::Approve, "approve"), (Decision::Deny, "deny")];

const SEVERITIES: [(Severity, &str); 4] = [
    (Severity::Low, "low"),
    (Severity::Medium, "medium"),
    (Severity::High, "high"),
    (Severity::Critical, "critical"),
];

const ALERT_STATUSES: [(AlertStatus, &str); 4] = [
    (AlertStatus::Open, "open"),
    (AlertStatus::Acknowledged, "acknowledged"),
    (AlertStatus::Dismissed, "dismissed"),
    (AlertStatus::Resolved, "resolved"),
];

fn name_of<T: PartialEq + Copy>(table: &[(T, &'static str)], value: T) -> &'static str {
    table
        .iter()
        .find(|(v, _)| *v == value)
        .map_or("unspecified", |(_, name)| name)
}

fn named<T: Copy>(table: &[(T, &'static str)], name: &str, unspecified: T) -> T {
    table.iter().find(|(_, n)| *n == name).map_or(unspecified, |(v, _)| *v)
}

impl RequestStatus {
    /// Its name in text, e.g. `PendingApproval` (`unspecified` for Unspecified).
    pub fn text(self) -> &'static str {
        name_of(&STATUSES, self)
    }

    /// The status of that name; Unspecified for any other text.
    pub fn from_text(name: &str) -> Self {
        named(&STATUSES, name, Self::Unspecified)
    }
}

impl RequestAction {
    /// Its name in text, e.g. `selfActivate` (`unspecified` for Unspecified).
    pub fn text(self) -> &'static str {
        name_of(&ACTIONS, self)
    }

    /// The action of that name; Unspecified for any other text.
    pub fn from_text(name: &str) -> Self {
        named(&ACTIONS, name, Self::Unspecified)
    }
}

impl AssignmentKind {
    /// Its name in text: `eligible` or `active` (`unspecified` for Unspecified).
    pub fn text(self) -> &'static str {
        name_of(&KINDS, self)
    }

    /// The kind of that name; Unspecified for any other text.
    pub fn from_text(name: &str) -> Self {
        named(&KINDS, name, Self::Unspecified)
    }
}

impl ApprovalStatus {
    /// Its name in text, e.g. `Pending` (`unspecified` for Unspecified).
    pub fn text(self) -> &'static str {
        name_of(&APPROVAL_STATUSES, self)
    }

    /// The status of that name; Unspecified for any other text.
    pub fn from_text(name: &str) -> Self {
        named(&APPROVAL_STATUSES, name, Self::Unspecified)
    }
}

impl Decision {
    /// Its name in text: `approve` or `deny` (`unspecified` for Unspecified).
    pub fn text(self) -> &'static str {
        name_of(&DECISIONS, self)
    }

    /// The decision of that name; Unspecified for any other text.
    pub fn from_text(name: &str) -> Self {
        named(&DECISIONS, name, Self::Unspecified)
    }
}

impl Severity {
    /// Its name in text, e.g. `high` (`unspecified` for Unspecified).
    pub fn text(self) -> &'static str {
        name_of(&SEVERITIES, self)
    }

    /// The severity of that name; Unspecified for any other text.
    pub fn from_text(name: &str) -> Self {
        named(&SEVERITIES, name, Self::Unspecified)
    }
}

impl AlertStatus {
    /// Its name in text, e.g. `open` (`unspecified` for Unspecified).
    pub fn text(self) -> &'static str {
        name_of(&ALERT_STATUSES, self)
    }

    /// The status of that name; Unspecified for any other text.
    pub fn from_text(name: &str) -> Self {
        named(&ALERT_STATUSES, name, Self::Unspecified)
    }
}

/// The typed field when it is set, else the value the deprecated text field names.
fn typed<T: Copy + PartialEq>(field: Option<T>, unspecified: T, text: &str, from_text: fn(&str) -> T) -> T {
    field.filter(|v| *v != unspecified).unwrap_or_else(|| from_text(text))
}

impl ev::RequestCreated {
    pub fn typed_status(&self) -> RequestStatus {
        let field = RequestStatus::try_from(self.request_status).ok();
        typed(
            field,
            RequestStatus::Unspecified,
            &self.status,
            RequestStatus::from_text,
        )
    }

    pub fn typed_action(&self) -> RequestAction {
        let field = RequestAction::try_from(self.request_action).ok();
        typed(
            field,
            RequestAction::Unspecified,
            &self.action,
            RequestAction::from_text,
        )
    }

    pub fn typed_kind(&self) -> AssignmentKind {
        let field = AssignmentKind::try_from(self.assignment_kind).ok();
        typed(
            field,
            AssignmentKind::Unspecified,
            &self.kind,
            AssignmentKind::from_text,
        )
    }
}

impl ev::RequestStatusChanged {
    pub fn typed_status(&self) -> RequestStatus {
        let field = RequestStatus::try_from(self.request_status).ok();
        typed(
            field,
            RequestStatus::Unspecified,
            &self.status,
            RequestStatus::from_text,
        )
    }

    pub fn typed_previous_status(&self) -> RequestStatus {
        let field = RequestStatus::try_from(self.previous_request_status).ok();
        typed(
            field,
            RequestStatus::Unspecified,
            &self.previous_status,
            RequestStatus::from_text,
        )
    }
}

impl ev::AssignmentChanged {
    pub fn typed_kind(&self) -> AssignmentKind {
        let field = AssignmentKind::try_from(self.assignment_kind).ok();
        typed(
            field,
            AssignmentKind::Unspecified,
            &self.kind,
            AssignmentKind::from_text,
        )
    }
}

impl ev::RequestRefused {
    pub fn typed_action(&self) -> RequestAction {
        let field = RequestAction::try_from(self.request_action).ok();
        typed(
            field,
            RequestAction::Unspecified,
            &self.action,
            RequestAction::from_text,
        )
    }
}

impl ev::ApprovalDecisionRecorded {
    pub fn typed_decision(&self) -> Decision {
        let field = Decision::try_from(self.approval_decision).ok();
        typed(field, Decision::Unspecified, &self.decision, Decision::from_text)
    }
}

impl ev::ApprovalDecisionRefused {
    pub fn typed_decision(&self) -> Decision {
        let field = Decision::try_from(self.approval_decision).ok();
        typed(field, Decision::Unspecified, &self.decision, Decision::from_text)
    }
}

impl ev::ApprovalCompleted {
    /// The approval's status: its outcome when it ended, Pending while it still asks.
    pub fn typed_status(&self) -> ApprovalStatus {
        let field = ApprovalStatus::try_from(self.approval_status).ok();
        let from_outcome = |outcome: &str| match ApprovalStatus::from_text(outcome) {
            ApprovalStatus::Unspecified if !outcome.is_empty() => ApprovalStatus::Pending,
            status => status,
        };
        typed(field, ApprovalStatus::Unspecified, &self.outcome, from_outcome)
    }
}

impl ev::AlertEvent {
    pub fn typed_severity(&self) -> Severity {
        let field = Severity::try_from(self.alert_severity).ok();
        typed(field, Severity::Unspecified, &self.severity, Severity::from_text)
    }

    pub fn typed_status(&self) -> AlertStatus {
        let field = AlertStatus::try_from(self.alert_status).ok();
        typed(field, AlertStatus::Unspecified, &self.status, AlertStatus::from_text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_has_one_name_that_reads_back() {
        for (status, _) in STATUSES {
            assert_eq!(RequestStatus::from_text(status.text()), status);
        }
        for (action, _) in ACTIONS {
            assert_eq!(RequestAction::from_text(action.text()), action);
        }
        for (kind, _) in KINDS {
            assert_eq!(AssignmentKind::from_text(kind.text()), kind);
        }
        for (status, _) in APPROVAL_STATUSES {
            assert_eq!(ApprovalStatus::from_text(status.text()), status);
        }
        for (decision, _) in DECISIONS {
            assert_eq!(Decision::from_text(decision.text()), decision);
        }
        for (severity, _) in SEVERITIES {
            assert_eq!(Severity::from_text(severity.text()), severity);
        }
        for (status, _) in ALERT_STATUSES {
            assert_eq!(AlertStatus::from_text(status.text()), status);
        }
        assert_eq!(RequestStatus::from_text("pendingapproval"), RequestStatus::Unspecified);
        assert_eq!(RequestStatus::Unspecified.text(), "unspecified");
    }

    #[test]
    fn an_event_reads_its_typed_field_or_an_older_publishers_text() {
        let typed = ev::RequestCreated {
            request_status: RequestStatus::PendingApproval as i32,
            request_action: RequestAction::SelfActivate as i32,
            assignment_kind: AssignmentKind::Active as i32,
            ..Default::default()
        };
        assert_eq!(typed.typed_status(), RequestStatus::PendingApproval);
        assert_eq!(typed.typed_action(), RequestAction::SelfActivate);
        assert_eq!(typed.typed_kind(), AssignmentKind::Active);
        let older = ev::RequestStatusChanged {
            status: "Canceled".into(),
            previous_status: "PendingApproval".into(),
            ..Default::default()
        };
        assert_eq!(older.typed_status(), RequestStatus::Canceled);
        assert_eq!(older.typed_previous_status(), RequestStatus::PendingApproval);
        let neither = ev::AssignmentChanged::default();
        assert_eq!(neither.typed_kind(), AssignmentKind::Unspecified);
        let asking = ev::ApprovalCompleted {
            outcome: "StageStarted".into(),
            ..Default::default()
        };
        assert_eq!(asking.typed_status(), ApprovalStatus::Pending);
        let ended = ev::ApprovalCompleted {
            outcome: "Denied".into(),
            ..Default::default()
        };
        assert_eq!(ended.typed_status(), ApprovalStatus::Denied);
    }
}
