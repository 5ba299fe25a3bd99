//! What the wire form of a policy means where it leaves something out, for every client
//! (the CLI, policy as code, the portal) to read it one way.

use crate::assignment::v1::RolePolicy;
use crate::common::v1::{NotificationEvent, NotificationParty, NotificationRule};

impl RolePolicy {
    /// The notification rule for `event` and `party`: the one the policy sets, else the
    /// defaults (the party's own members hear of it, no one else, every mail).
    pub fn notification_rule(&self, event: NotificationEvent, party: NotificationParty) -> NotificationRule {
        self.notification_rules
            .iter()
            .find(|r| r.event == event as i32 && r.party == party as i32)
            .cloned()
            .unwrap_or(NotificationRule {
                event: event as i32,
                party: party as i32,
                default_recipients: true,
                additional_recipients: Vec::new(),
                critical_only: false,
            })
    }
}

/// How long before its end a principal may ask to extend an assignment (Entra's 14 days):
/// earlier, an extension would be asked for ahead of need. Assignment refuses one asked
/// earlier; clients offer it only then.
pub const EXTENSION_WINDOW_MS: i64 = 14 * 24 * 3_600_000;

/// Whether an assignment ending at `end_ms` may be asked to be extended at `now_ms`: in its
/// last [`EXTENSION_WINDOW_MS`]. The one rule, for the server and every client.
pub fn extension_window_open(end_ms: i64, now_ms: i64) -> bool {
    end_ms.saturating_sub(EXTENSION_WINDOW_MS) <= now_ms
}

impl crate::assignment::v1::Assignment {
    /// Whether its holder may ask to extend it at `now_ms`: it ends, within
    /// [`EXTENSION_WINDOW_MS`] of now.
    pub fn extendable_at(&self, now_ms: i64) -> bool {
        self.end_time.as_ref().is_some_and(|end| {
            let end_ms = end
                .seconds
                .saturating_mul(1000)
                .saturating_add(i64::from(end.nanos) / 1_000_000);
            extension_window_open(end_ms, now_ms)
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::assignment::v1::Assignment;

    #[test]
    fn an_assignment_is_extendable_in_its_last_fourteen_days_only() {
        const DAY_MS: i64 = 24 * 3_600_000;
        let now = 1_800_000_000_000;
        let ending = |in_days: i64| Assignment {
            end_time: Some(prost_types::Timestamp {
                seconds: (now + in_days * DAY_MS) / 1000,
                nanos: 0,
            }),
            ..Default::default()
        };
        assert!(ending(14).extendable_at(now));
        assert!(ending(1).extendable_at(now));
        assert!(!ending(15).extendable_at(now));
        assert!(
            !Assignment::default().extendable_at(now),
            "a permanent one has nothing to extend"
        );
    }
}
