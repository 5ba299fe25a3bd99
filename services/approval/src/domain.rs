//! Approval's vocabulary: where an approval is, and what an approver said. Each has one
//! conversion to the wire and one to text (pim-proto's names, which the database keeps).

use std::fmt;

use pim_proto::approval::v1 as pb;

/// Where an approval is: waiting for its stages' approvers, or ended one way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Denied,
    /// Not decided in time.
    Expired,
    /// Withdrawn with its request.
    Canceled,
}

impl ApprovalStatus {
    pub const ALL: [Self; 5] = [
        Self::Pending,
        Self::Approved,
        Self::Denied,
        Self::Expired,
        Self::Canceled,
    ];

    pub const fn to_pb(self) -> pb::ApprovalStatus {
        use pb::ApprovalStatus as S;
        match self {
            Self::Pending => S::Pending,
            Self::Approved => S::Approved,
            Self::Denied => S::Denied,
            Self::Expired => S::Expired,
            Self::Canceled => S::Canceled,
        }
    }

    /// None for Unspecified.
    pub fn from_pb(status: pb::ApprovalStatus) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.to_pb() == status)
    }

    /// Its name in the database, the records and the events' text (`Pending`, …).
    pub fn as_str(self) -> &'static str {
        self.to_pb().text()
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::from_pb(pb::ApprovalStatus::from_text(text))
    }

    /// The event that says an approval ended this way (ApprovalGranted, …); none while it
    /// waits.
    pub const fn completion_event(self) -> Option<&'static str> {
        match self {
            Self::Pending => None,
            Self::Approved => Some("ApprovalGranted"),
            Self::Denied => Some("ApprovalDenied"),
            Self::Expired => Some("ApprovalExpired"),
            Self::Canceled => Some("ApprovalCanceled"),
        }
    }
}

impl fmt::Display for ApprovalStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an approver said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Deny,
}

impl Decision {
    pub const fn of(approve: bool) -> Self {
        if approve { Self::Approve } else { Self::Deny }
    }

    pub const fn to_pb(self) -> pb::Decision {
        match self {
            Self::Approve => pb::Decision::Approve,
            Self::Deny => pb::Decision::Deny,
        }
    }

    /// None for Unspecified.
    pub fn from_pb(decision: pb::Decision) -> Option<Self> {
        [Self::Approve, Self::Deny].into_iter().find(|d| d.to_pb() == decision)
    }

    /// `approve` or `deny`.
    pub fn as_str(self) -> &'static str {
        self.to_pb().text()
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::from_pb(pb::Decision::from_text(text))
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
        assert_eq!(ApprovalStatus::parse("pending"), None);
        assert_eq!(Decision::parse(""), None);
    }
}
