//! Alerting's vocabulary: how severe an alert is and where it stands. Each has one
//! conversion to the wire and one to the text the tables keep (pim-proto's names).

use pim_proto::alerting::v1 as pb;

pim_proto::domain_enum! {
    /// How severe an alert is; ordered, least first.
    #[derive(PartialOrd, Ord)]
    pub enum Severity => pb::Severity { Low, Medium, High, Critical }
}

pim_proto::domain_enum! {
    /// Where an alert stands: open until someone acknowledges, dismisses or resolves it.
    pub enum AlertStatus => pb::AlertStatus { Open, Acknowledged, Dismissed, Resolved }
}

impl AlertStatus {
    /// Dismissed or resolved: the alert is closed (the same finding raises a new one).
    pub const fn is_closed(self) -> bool {
        matches!(self, Self::Dismissed | Self::Resolved)
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
