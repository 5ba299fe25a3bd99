//! *Role settings → Notifications*: who hears by mail of an eligible assignment, an active
//! assignment and an activation (Entra's Notification tab): for each party (administrators,
//! the assignee or requester, the approvers of an activation), whether its own members do,
//! additional addresses, and "critical mails only". Assignment validates the addresses.

use maud::{Markup, html};

use pim_proto::assignment::v1 as apb;
use pim_proto::common::v1::{NotificationEvent, NotificationParty, NotificationRule};

use crate::web::Fields;

/// The rules the form shows, in Entra's order: (event, party, what it is about, who).
const RULES: &[(NotificationEvent, NotificationParty, &str, &str)] = &[
    (
        NotificationEvent::EligibleAssignment,
        NotificationParty::Admin,
        "An eligible assignment",
        "Administrators (role assignment alert)",
    ),
    (
        NotificationEvent::EligibleAssignment,
        NotificationParty::Assignee,
        "An eligible assignment",
        "The assignee",
    ),
    (
        NotificationEvent::ActiveAssignment,
        NotificationParty::Admin,
        "An active assignment",
        "Administrators (role assignment alert)",
    ),
    (
        NotificationEvent::ActiveAssignment,
        NotificationParty::Assignee,
        "An active assignment",
        "The assignee",
    ),
    (
        NotificationEvent::Activation,
        NotificationParty::Admin,
        "An activation",
        "Administrators (role activation alert)",
    ),
    (
        NotificationEvent::Activation,
        NotificationParty::Assignee,
        "An activation",
        "The requester",
    ),
    (
        NotificationEvent::Activation,
        NotificationParty::Approver,
        "An activation",
        "The approvers (request to approve)",
    ),
];

fn key(event: NotificationEvent, party: NotificationParty) -> String {
    format!(
        "notify.{}.{}",
        event
            .as_str_name()
            .trim_start_matches("NOTIFICATION_EVENT_")
            .to_lowercase(),
        party
            .as_str_name()
            .trim_start_matches("NOTIFICATION_PARTY_")
            .to_lowercase()
    )
}

pub fn fields(p: &apb::RolePolicy) -> Markup {
    html! {
        table.rules {
            caption { "Who hears of it by mail (where PIM_NOTIFICATIONS is on)" }
            thead { tr {
                th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "Its own members" }
                th scope="col" { "Also to (addresses, comma-separated)" } th scope="col" { "Critical mails only" }
            } }
            tbody {
                @for (event, party, when, who) in RULES {
                    @let rule = p.notification_rule(*event, *party);
                    @let key = key(*event, *party);
                    @let label = format!("{when}: {who}");
                    tr {
                        td { (when) }
                        td { (who) }
                        td { input type="checkbox" name=(format!("{key}.default")) value="on" checked[rule.default_recipients] aria-label=(format!("{label}: its own members")); }
                        td { input type="text" name=(format!("{key}.extra")) value=(rule.additional_recipients.join(", ")) aria-label=(format!("{label}: also to")); }
                        td { input type="checkbox" name=(format!("{key}.critical")) value="on" checked[rule.critical_only] aria-label=(format!("{label}: critical mails only")); }
                    }
                }
            }
        }
    }
}

/// The rules the form describes, into `p` (those at their defaults left out, as a policy
/// that never set them has them).
pub fn read(fields: &Fields, p: &mut apb::RolePolicy) {
    p.notification_rules = RULES
        .iter()
        .map(|(event, party, _, _)| {
            let key = key(*event, *party);
            NotificationRule {
                event: *event as i32,
                party: *party as i32,
                default_recipients: fields.get(&format!("{key}.default")) == "on",
                additional_recipients: fields
                    .get(&format!("{key}.extra"))
                    .split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .map(str::to_owned)
                    .collect(),
                critical_only: fields.get(&format!("{key}.critical")) == "on",
            }
        })
        .filter(|rule| {
            let (event, party) = (rule.event(), rule.party());
            *rule != apb::RolePolicy::default().notification_rule(event, party)
        })
        .collect();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_has_its_own_field_names() {
        let keys: std::collections::BTreeSet<String> = RULES.iter().map(|(e, p, _, _)| key(*e, *p)).collect();
        assert_eq!(keys.len(), RULES.len());
        assert!(keys.contains("notify.activation.approver"), "{keys:?}");
    }
}
