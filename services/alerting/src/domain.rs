//! Alerting's vocabulary: how severe an alert is and where it stands. Each has one
//! conversion to the wire and one to the text the tables keep (pim-proto's names).

use std::fmt;

use pim_proto::alerting::v1 as pb;

/// How severe an alert is; ordered, least first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Self; 4] = [Self::Low, Self::Medium, Self::High, Self::Critical];

    pub const fn to_pb(self) -> pb::Severity {
        match self {
            Self::Low => pb::Severity::Low,
            Self::Medium => pb::Severity::Medium,
            Self::High => pb::Severity::High,
            Self::Critical => pb::Severity::Critical,
        }
    }

    /// None for Unspecified.
    pub fn from_pb(severity: pb::Severity) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.to_pb() == severity)
    }

    /// `low`, `medium`, `high` or `critical`.
    pub fn as_str(self) -> &'static str {
        self.to_pb().text()
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::from_pb(pb::Severity::from_text(text))
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an alert stands: open until someone acknowledges, dismisses or resolves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertStatus {
    Open,
    Acknowledged,
    Dismissed,
    Resolved,
}

impl AlertStatus {
    pub const ALL: [Self; 4] = [Self::Open, Self::Acknowledged, Self::Dismissed, Self::Resolved];

    pub const fn to_pb(self) -> pb::AlertStatus {
        match self {
            Self::Open => pb::AlertStatus::Open,
            Self::Acknowledged => pb::AlertStatus::Acknowledged,
            Self::Dismissed => pb::AlertStatus::Dismissed,
            Self::Resolved => pb::AlertStatus::Resolved,
        }
    }

    /// None for Unspecified.
    pub fn from_pb(status: pb::AlertStatus) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.to_pb() == status)
    }

    /// `open`, `acknowledged`, `dismissed` or `resolved`.
    pub fn as_str(self) -> &'static str {
        self.to_pb().text()
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::from_pb(pb::AlertStatus::from_text(text))
    }

    /// Dismissed or resolved: the alert is closed (the same finding raises a new one).
    pub const fn is_closed(self) -> bool {
        matches!(self, Self::Dismissed | Self::Resolved)
    }
}

impl fmt::Display for AlertStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severities_and_statuses_round_trip_and_severities_rank_as_the_wire_does() {
        for s in Severity::ALL {
            assert_eq!(Severity::parse(s.as_str()), Some(s));
            assert_eq!(Severity::from_pb(s.to_pb()), Some(s));
        }
        for (lower, higher) in Severity::ALL.iter().zip(Severity::ALL.iter().skip(1)) {
            assert!(lower < higher && (lower.to_pb() as i32) < (higher.to_pb() as i32));
        }
        for s in AlertStatus::ALL {
            assert_eq!(AlertStatus::parse(s.as_str()), Some(s));
            assert_eq!(AlertStatus::from_pb(s.to_pb()), Some(s));
        }
        assert_eq!(Severity::parse("High"), None);
        assert_eq!(AlertStatus::parse(""), None);
    }
}
