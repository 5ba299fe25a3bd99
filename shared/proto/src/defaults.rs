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
