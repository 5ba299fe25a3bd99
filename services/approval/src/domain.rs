//! Approval's vocabulary: where an approval is, and what an approver said. Each has one
//! conversion to the wire and one to the text the tables keep (pim-proto's names).

use pim_proto::approval::v1 as pb;
use pim_proto::event_types::EventType;

pim_proto::domain_enum! {
    /// Where an approval is: waiting for its stages' approvers, or ended one way.
    pub enum ApprovalStatus => pb::ApprovalStatus {
        Pending,
        Approved,
        Denied,
        /// Not decided in time.
        Expired,
        /// Withdrawn with its request.
        Canceled,
    }
}

impl ApprovalStatus {
    /// The event that says an approval ended this way (ApprovalGranted, …); none while it
    /// waits.
    pub const fn completion_event(self) -> Option<EventType> {
        match self {
            Self::Pending => None,
            Self::Approved => Some(EventType::ApprovalGranted),
            Self::Denied => Some(EventType::ApprovalDenied),
            Self::Expired => Some(EventType::ApprovalExpired),
            Self::Canceled => Some(EventType::ApprovalCanceled),
        }
    }
}

pim_proto::domain_enum! {
    /// What an approver said.
    pub enum Decision => pb::Decision { Approve, Deny }
}

impl Decision {
    pub const fn of(approve: bool) -> Self {
        if approve { Self::Approve } else { Self::Deny }
    }
}

/// Where an access review is: waiting for its (next) instance, in one, or over. Text only in
/// its table (whose CHECK takes no other) and the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReviewStatus {
    NotStarted,
    InProgress,
    Completed,
    Stopped,
}

impl ReviewStatus {
    pub const ALL: [Self; 4] = [Self::NotStarted, Self::InProgress, Self::Completed, Self::Stopped];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NotStarted => "NotStarted",
            Self::InProgress => "InProgress",
            Self::Completed => "Completed",
            Self::Stopped => "Stopped",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for ReviewStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_decisions_round_trip_and_only_endings_have_an_event() {
        for status in ApprovalStatus::ALL {
            assert_eq!(ApprovalStatus::parse(status.as_str()), Some(status));
            assert_eq!(ApprovalStatus::from_pb(status.to_pb()), Some(status));
            assert_eq!(status.completion_event().is_none(), status == ApprovalStatus::Pending);
        }
        for decision in [Decision::Approve, Decision::Deny] {
            assert_eq!(Decision::parse(decision.as_str()), Some(decision));
        }
        for status in ReviewStatus::ALL {
            assert_eq!(ReviewStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(ApprovalStatus::parse("pending"), None);
        assert_eq!(Decision::parse(""), None);
    }
}
