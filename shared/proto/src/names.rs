//! The names the assignment service's enums have in text (Entra's: `PendingApproval`,
//! `selfActivate`, `eligible`), one table each: what its database keeps, what audit records
//! say and what the events' deprecated text fields carry. And the events' typed fields read
//! either way, so an entry published before those fields existed reads the same.

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
    }
}
