//! Who hears of assignments and activations by email: a role policy's notification rules,
//! one per (event, party) as Entra's role settings have them, each defaulting to the party's
//! own members, no one else, every mail.

use super::*;

/// Which change a rule is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationEvent {
    EligibleAssignment,
    ActiveAssignment,
    Activation,
}

/// Who hears of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationParty {
    /// The role assignment alert: the active Global and Privileged Role Administrators at `/`.
    Admin,
    /// The assigned principal, or whoever activated.
    Assignee,
    /// The approvers of an activation waiting for approval.
    Approver,
}

impl NotificationEvent {
    pub const ALL: [NotificationEvent; 3] = [
        NotificationEvent::EligibleAssignment,
        NotificationEvent::ActiveAssignment,
        NotificationEvent::Activation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotificationEvent::EligibleAssignment => "eligible_assignment",
            NotificationEvent::ActiveAssignment => "active_assignment",
            NotificationEvent::Activation => "activation",
        }
    }

    /// The parties a rule may name for this event: approvers only for activations.
    pub fn parties(self) -> &'static [NotificationParty] {
        match self {
            NotificationEvent::Activation => &[
                NotificationParty::Admin,
                NotificationParty::Assignee,
                NotificationParty::Approver,
            ],
            _ => &[NotificationParty::Admin, NotificationParty::Assignee],
        }
    }
}

impl NotificationParty {
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationParty::Admin => "admin",
            NotificationParty::Assignee => "assignee",
            NotificationParty::Approver => "approver",
        }
    }
}

/// Who of a party hears of one kind of change.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NotificationRule {
    pub event: NotificationEvent,
    pub party: NotificationParty,
    /// Whether the party's own members hear of it (off: only the additional recipients).
    pub default_recipients: bool,
    /// Email addresses that hear of it too.
    #[serde(default)]
    pub additional_recipients: Vec<String>,
    /// Only mails that ask for action (an approval waiting) go to this party.
    #[serde(default)]
    pub critical_only: bool,
}

impl NotificationRule {
    /// The rule a policy that does not list one has.
    pub fn default_for(event: NotificationEvent, party: NotificationParty) -> Self {
        Self {
            event,
            party,
            default_recipients: true,
            additional_recipients: Vec::new(),
            critical_only: false,
        }
    }

    /// Whether a mail reaches this party at all: a non-critical one does not when only
    /// critical mail is asked for, and none does when no one would receive it.
    pub fn sends(&self, critical: bool) -> bool {
        (critical || !self.critical_only) && (self.default_recipients || !self.additional_recipients.is_empty())
    }
}

impl NotificationEvent {
    pub fn to_pb(self) -> pim_proto::common::v1::NotificationEvent {
        use pim_proto::common::v1::NotificationEvent as E;
        match self {
            NotificationEvent::EligibleAssignment => E::EligibleAssignment,
            NotificationEvent::ActiveAssignment => E::ActiveAssignment,
            NotificationEvent::Activation => E::Activation,
        }
    }

    pub fn from_pb(event: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.to_pb() as i32 == event)
    }
}

impl NotificationParty {
    const ALL: [NotificationParty; 3] = [
        NotificationParty::Admin,
        NotificationParty::Assignee,
        NotificationParty::Approver,
    ];

    pub fn to_pb(self) -> pim_proto::common::v1::NotificationParty {
        use pim_proto::common::v1::NotificationParty as P;
        match self {
            NotificationParty::Admin => P::Admin,
            NotificationParty::Assignee => P::Assignee,
            NotificationParty::Approver => P::Approver,
        }
    }

    pub fn from_pb(party: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.to_pb() as i32 == party)
    }
}

impl NotificationRule {
    pub fn to_pb(&self) -> pim_proto::common::v1::NotificationRule {
        pim_proto::common::v1::NotificationRule {
            event: self.event.to_pb() as i32,
            party: self.party.to_pb() as i32,
            default_recipients: self.default_recipients,
            additional_recipients: self.additional_recipients.clone(),
            critical_only: self.critical_only,
        }
    }

    pub fn from_pb(r: pim_proto::common::v1::NotificationRule) -> Result<Self> {
        Ok(Self {
            event: NotificationEvent::from_pb(r.event).ok_or_else(|| {
                Error::invalid(
                    "notification_rules.event",
                    "must be eligible_assignment, active_assignment or activation",
                )
            })?,
            party: NotificationParty::from_pb(r.party)
                .ok_or_else(|| Error::invalid("notification_rules.party", "must be admin, assignee or approver"))?,
            default_recipients: r.default_recipients,
            additional_recipients: r
                .additional_recipients
                .into_iter()
                .map(|a| a.trim().to_owned())
                .collect(),
            critical_only: r.critical_only,
        })
    }
}

const MAX_RECIPIENTS: usize = 20;

impl Policy {
    /// The rule in force for an event and a party (the default when none is listed).
    pub fn notification_rule(&self, event: NotificationEvent, party: NotificationParty) -> NotificationRule {
        self.notification_rules
            .iter()
            .find(|r| r.event == event && r.party == party)
            .cloned()
            .unwrap_or_else(|| NotificationRule::default_for(event, party))
    }

    /// Every (event, party) rule in force, in order, listed or not.
    pub fn notification_rules_in_force(&self) -> Vec<NotificationRule> {
        NotificationEvent::ALL
            .iter()
            .flat_map(|event| {
                event
                    .parties()
                    .iter()
                    .map(|party| self.notification_rule(*event, *party))
            })
            .collect()
    }

    /// Checks the notification rules: each (event, party) once and allowed, and at most 20
    /// plausible email addresses per rule.
    pub(super) fn validate_notifications(&self) -> Result<()> {
        let mut seen = std::collections::BTreeSet::new();
        for rule in &self.notification_rules {
            if !rule.event.parties().contains(&rule.party) {
                return Err(Error::invalid(
                    "notification_rules.party",
                    format!(
                        "{} has no {} party (approvers hear only of activations)",
                        rule.event.as_str(),
                        rule.party.as_str()
                    ),
                ));
            }
            if !seen.insert((rule.event, rule.party)) {
                return Err(Error::invalid(
                    "notification_rules",
                    format!("names {} / {} twice", rule.event.as_str(), rule.party.as_str()),
                ));
            }
            if rule.additional_recipients.len() > MAX_RECIPIENTS {
                return Err(Error::invalid(
                    "notification_rules.additional_recipients",
                    "at most 20 addresses a rule",
                ));
            }
            if let Some(bad) = rule.additional_recipients.iter().find(|a| !is_email(a)) {
                return Err(Error::invalid(
                    "notification_rules.additional_recipients",
                    format!("{bad:?} is not an email address"),
                ));
            }
        }
        Ok(())
    }
}

/// An address a mail can go to: one `@` between a local part and a domain with a dot, no
/// spaces, controls or angle brackets, at most 254 characters.
pub fn is_email(address: &str) -> bool {
    let Some((local, domain)) = address.split_once('@') else {
        return false;
    };
    address.len() <= 254
        && !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && address
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '<' | '>' | ',' | ';' | '"' | '\\'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlisted_rules_default_to_the_party_itself_and_every_mail() {
        let mut p = Policy::default();
        assert_eq!(p.notification_rules_in_force().len(), 7);
        let rule = p.notification_rule(NotificationEvent::Activation, NotificationParty::Approver);
        assert!(rule.default_recipients && rule.sends(false));
        p.notification_rules.push(NotificationRule {
            critical_only: true,
            ..NotificationRule::default_for(NotificationEvent::Activation, NotificationParty::Admin)
        });
        let admin = p.notification_rule(NotificationEvent::Activation, NotificationParty::Admin);
        assert!(admin.sends(true) && !admin.sends(false), "critical only");
        let none = NotificationRule {
            default_recipients: false,
            ..NotificationRule::default_for(NotificationEvent::Activation, NotificationParty::Assignee)
        };
        assert!(!none.sends(true), "nobody to send to");
    }

    #[test]
    fn rules_name_each_party_once_with_real_addresses() {
        let with = |rule: NotificationRule| Policy {
            notification_rules: vec![rule],
            ..Policy::default()
        };
        let rule = |event, party| NotificationRule::default_for(event, party);
        let bad = with(rule(NotificationEvent::EligibleAssignment, NotificationParty::Approver));
        assert!(matches!(
            bad.validate(),
            Err(Error::InvalidArgument {
                field: "notification_rules.party",
                ..
            })
        ));
        let mut twice = with(rule(NotificationEvent::Activation, NotificationParty::Admin));
        twice
            .notification_rules
            .push(rule(NotificationEvent::Activation, NotificationParty::Admin));
        assert!(twice.validate().is_err());
        let addressed = |address: &str| {
            with(NotificationRule {
                additional_recipients: vec![address.into()],
                ..rule(NotificationEvent::Activation, NotificationParty::Admin)
            })
            .validate()
        };
        assert!(addressed("soc@example.com").is_ok());
        for not_one in [
            "soc",
            "soc@example",
            "a b@example.com",
            "<soc@example.com>",
            "x@y.com,z@w.com",
        ] {
            assert!(addressed(not_one).is_err(), "{not_one}");
        }
    }
}
