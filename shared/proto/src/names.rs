//! The names the services' enums have in text (Entra's: `PendingApproval`, `selfActivate`,
//! `eligible`; an approval's `Pending`, a decision's `approve`), one table each: what the
//! databases keep, what audit records say and what the events' deprecated text fields carry.
//! And the events' typed fields read either way, so an entry published before those fields
//! existed reads the same.

use crate::alerting::v1::{AlertStatus, Severity};
use crate::approval::v1::{ApprovalStatus, Decision};
use crate::assignment::v1::{AssignmentKind, RequestAction, RequestStatus};
use crate::events::v1 as ev;

/// Gives a wire enum its names in text, one table: `text()` (`unspecified` for Unspecified)
/// and `from_text()` (Unspecified for any name not in the table).
macro_rules! names {
    ($table:ident: $enum:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        const $table: &[($enum, &str)] = &[$(($enum::$variant, $name)),+];

        impl $enum {
            #[doc = concat!("Its name in text: ", $("`", $name, "` "),+, "(`unspecified` for Unspecified).")]
            pub fn text(self) -> &'static str {
                $table.iter().find(|(v, _)| *v == self).map_or("unspecified", |(_, name)| name)
            }

            /// The value of that name; Unspecified for any other text.
            pub fn from_text(name: &str) -> Self {
                $table.iter().find(|(_, n)| *n == name).map_or(Self::Unspecified, |(v, _)| *v)
            }
        }
    };
}

names!(STATUSES: RequestStatus {
    PendingApproval => "PendingApproval",
    Granted => "Granted",
    Denied => "Denied",
    Provisioned => "Provisioned",
    ScheduleCreated => "ScheduleCreated",
    Revoked => "Revoked",
    Canceled => "Canceled",
    Failed => "Failed",
    Expired => "Expired",
});

names!(ACTIONS: RequestAction {
    AdminAssign => "adminAssign",
    AdminUpdate => "adminUpdate",
    AdminRemove => "adminRemove",
    AdminExtend => "adminExtend",
    AdminRenew => "adminRenew",
    SelfActivate => "selfActivate",
    SelfDeactivate => "selfDeactivate",
    SelfExtend => "selfExtend",
    SelfRenew => "selfRenew",
});

names!(KINDS: AssignmentKind { Eligible => "eligible", Active => "active" });

names!(APPROVAL_STATUSES: ApprovalStatus {
    Pending => "Pending",
    Approved => "Approved",
    Denied => "Denied",
    Expired => "Expired",
    Canceled => "Canceled",
});

names!(DECISIONS: Decision { Approve => "approve", Deny => "deny" });

names!(SEVERITIES: Severity { Low => "low", Medium => "medium", High => "high", Critical => "critical" });

names!(ALERT_STATUSES: AlertStatus {
    Open => "open",
    Acknowledged => "acknowledged",
    Dismissed => "dismissed",
    Resolved => "resolved",
});

/// Declares a service's domain enum over a wire enum of these tables: the enum itself (no
/// Unspecified), `ALL`, one conversion each way to the wire (`to_pb`, `from_pb`: none for
/// Unspecified) and to the text its tables keep (`as_str`, `parse`: none for a name not in the
/// table), and `Display` as that text.
///
/// ```
/// pim_proto::domain_enum! {
///     /// What an approver said.
///     pub enum Decision => pim_proto::approval::v1::Decision { Approve, Deny }
/// }
/// assert_eq!(Decision::parse("deny"), Some(Decision::Deny));
/// assert_eq!(Decision::Approve.to_string(), "approve");
/// ```
#[macro_export]
macro_rules! domain_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident => $wire:path { $($(#[$variant_meta:meta])* $variant:ident),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        $vis enum $name {
            $($(#[$variant_meta])* $variant),+
        }

        impl $name {
            pub const ALL: [Self; [$(stringify!($variant)),+].len()] = [$(Self::$variant),+];

            pub const fn to_pb(self) -> $wire {
                use $wire as Wire;
                match self {
                    $(Self::$variant => Wire::$variant),+
                }
            }

            /// None for Unspecified.
            pub fn from_pb(wire: $wire) -> Option<Self> {
                Self::ALL.into_iter().find(|v| v.to_pb() == wire)
            }

            /// Its name in the tables, the records and the events' text fields.
            pub fn as_str(self) -> &'static str {
                self.to_pb().text()
            }

            pub fn parse(text: &str) -> Option<Self> {
                use $wire as Wire;
                Self::from_pb(Wire::from_text(text))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// Reads an event's typed field: its value when it is set, else the value its deprecated
/// text field names (an entry published before the typed field existed).
macro_rules! typed {
    ($event:ty { $($method:ident: $enum:ident from $field:ident or $text:ident),+ $(,)? }) => {
        impl $event {
            $(
                pub fn $method(&self) -> $enum {
                    $enum::try_from(self.$field)
                        .ok()
                        .filter(|v| *v != $enum::Unspecified)
                        .unwrap_or_else(|| $enum::from_text(&self.$text))
                }
            )+
        }
    };
}

typed!(ev::RequestCreated {
    typed_status: RequestStatus from request_status or status,
    typed_action: RequestAction from request_action or action,
    typed_kind: AssignmentKind from assignment_kind or kind,
});

typed!(ev::RequestStatusChanged {
    typed_status: RequestStatus from request_status or status,
    typed_previous_status: RequestStatus from previous_request_status or previous_status,
});

typed!(ev::AssignmentChanged { typed_kind: AssignmentKind from assignment_kind or kind });

typed!(ev::RequestRefused { typed_action: RequestAction from request_action or action });

typed!(ev::ApprovalDecisionRecorded { typed_decision: Decision from approval_decision or decision });

typed!(ev::ApprovalDecisionRefused { typed_decision: Decision from approval_decision or decision });

typed!(ev::AlertEvent {
    typed_severity: Severity from alert_severity or severity,
    typed_status: AlertStatus from alert_status or status,
});

impl ev::ApprovalCompleted {
    /// The approval's status: its outcome when it ended, Pending while it still asks (an
    /// outcome that names no status: StageStarted, Reminder, Escalated).
    pub fn typed_status(&self) -> ApprovalStatus {
        ApprovalStatus::try_from(self.approval_status)
            .ok()
            .filter(|v| *v != ApprovalStatus::Unspecified)
            .unwrap_or_else(|| match ApprovalStatus::from_text(&self.outcome) {
                ApprovalStatus::Unspecified if !self.outcome.is_empty() => ApprovalStatus::Pending,
                status => status,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_has_one_name_that_reads_back() {
        for &(status, _) in STATUSES {
            assert_eq!(RequestStatus::from_text(status.text()), status);
        }
        for &(action, _) in ACTIONS {
            assert_eq!(RequestAction::from_text(action.text()), action);
        }
        for &(kind, _) in KINDS {
            assert_eq!(AssignmentKind::from_text(kind.text()), kind);
        }
        for &(status, _) in APPROVAL_STATUSES {
            assert_eq!(ApprovalStatus::from_text(status.text()), status);
        }
        for &(decision, _) in DECISIONS {
            assert_eq!(Decision::from_text(decision.text()), decision);
        }
        for &(severity, _) in SEVERITIES {
            assert_eq!(Severity::from_text(severity.text()), severity);
        }
        for &(status, _) in ALERT_STATUSES {
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
