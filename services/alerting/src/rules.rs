//! The rules: what each detects, its default severity and settings, and how settings are
//! checked when a Security Administrator changes them.

use std::collections::BTreeMap;

use crate::domain::Severity;

pub struct RuleDef {
    pub id: &'static str,
    pub description: &'static str,
    pub severity: Severity,
    /// Setting name, default value (whole numbers).
    pub settings: &'static [(&'static str, i64)],
}

pub const TOO_MANY_GLOBAL_ADMINS: &str = "too_many_global_admins";
pub const UNMANAGED_GRANT: &str = "unmanaged_grant";
pub const GROUP_MEMBER_OUTSIDE_PIM: &str = "group_member_outside_pim";
pub const ACTIVATION_WITHOUT_MFA: &str = "activation_without_mfa";
pub const FREQUENT_ACTIVATION: &str = "frequent_activation";
pub const PERMANENT_PRIVILEGED: &str = "permanent_privileged";
pub const SELF_APPROVAL: &str = "self_approval";
pub const SELF_ASSIGNMENT: &str = "self_assignment";
pub const RUBBER_STAMP: &str = "rubber_stamp";
pub const MFA_FAILURES: &str = "mfa_failures";
pub const SIGN_IN_LOCKOUT: &str = "sign_in_lockout";
pub const STALE_ACCOUNTS: &str = "stale_accounts";
pub const UNUSED_ROLES: &str = "unused_roles";
pub const BREAK_GLASS_USED: &str = "break_glass_used";
pub const DEAD_LETTERED: &str = "dead_lettered";
pub const FORGED_EVENT: &str = "forged_event";
pub const WEBHOOK_DEAD_LETTERED: &str = "webhook_dead_lettered";
pub const RECOVERY_CODE_USED: &str = "recovery_code_used";
pub const MFA_METHOD_REMOVED: &str = "mfa_method_removed";
pub const POLICY_WEAKENED: &str = "policy_weakened";
pub const DETECTION_WEAKENED: &str = "detection_weakened";
pub const WEBHOOK_SUBSCRIBED: &str = "webhook_subscribed";

pub const RULES: &[RuleDef] = &[
    RuleDef {
        id: TOO_MANY_GLOBAL_ADMINS,
        description: "Too many Global Administrators (users and apps assigned it, eligible or active, directly or with access through PIM to a group assigned it): at least min_count, and at least min_percent of all privileged assignments",
        severity: Severity::Medium,
        settings: &[("min_count", 3), ("min_percent", 10)],
    },
    RuleDef {
        id: UNMANAGED_GRANT,
        description: "Roles assigned outside PIM (a connector reported a grant PIM did not make)",
        severity: Severity::High,
        settings: &[],
    },
    RuleDef {
        id: GROUP_MEMBER_OUTSIDE_PIM,
        description: "A member or owner added directly (not just in time through PIM) to a role-assignable group holding a privileged role: a member holds it for good, an owner may add any member",
        severity: Severity::High,
        settings: &[],
    },
    RuleDef {
        id: ACTIVATION_WITHOUT_MFA,
        description: "Privileged roles that don't require MFA for activation",
        severity: Severity::Medium,
        settings: &[],
    },
    RuleDef {
        id: FREQUENT_ACTIVATION,
        description: "Roles activated too frequently: the same principal and role count times within window_hours",
        severity: Severity::Medium,
        settings: &[("count", 3), ("window_hours", 24)],
    },
    RuleDef {
        id: PERMANENT_PRIVILEGED,
        description: "Permanent active assignments of privileged roles",
        severity: Severity::Low,
        settings: &[],
    },
    RuleDef {
        id: SELF_APPROVAL,
        description: "A requester tried to approve their own request",
        severity: Severity::High,
        settings: &[],
    },
    RuleDef {
        id: SELF_ASSIGNMENT,
        description: "An administrator assigned a privileged role to themselves directly (eligible or active): no one else decided it, whatever the role's approval policy",
        severity: Severity::High,
        settings: &[],
    },
    RuleDef {
        id: RUBBER_STAMP,
        description: "An approval decided within seconds of the request (rubber-stamping); a service principal's (an approval bot's) decisions are not counted",
        severity: Severity::Medium,
        settings: &[("seconds", 5)],
    },
    RuleDef {
        id: MFA_FAILURES,
        description: "MFA failure burst (count within window_minutes) or lockout on a privileged account",
        severity: Severity::High,
        settings: &[("count", 3), ("window_minutes", 10)],
    },
    RuleDef {
        id: SIGN_IN_LOCKOUT,
        description: "Password sign-ins of a privileged account locked out: too many wrong passwords within 15 minutes (someone guessing, or keeping the account out)",
        severity: Severity::High,
        settings: &[],
    },
    RuleDef {
        id: STALE_ACCOUNTS,
        description: "Potential stale accounts in a privileged role: no sign-in for days",
        severity: Severity::Medium,
        settings: &[("days", 30)],
    },
    RuleDef {
        id: UNUSED_ROLES,
        description: "Administrators not using their privileged roles: eligible, but no activation for days",
        severity: Severity::Low,
        settings: &[("days", 30)],
    },
    RuleDef {
        id: BREAK_GLASS_USED,
        description: "The break-glass (bootstrap) Global Administrator signed in",
        severity: Severity::High,
        settings: &[],
    },
    RuleDef {
        id: RECOVERY_CODE_USED,
        description: "A recovery code was used to sign in or step up (a lost phone, or someone else); high for privileged accounts",
        severity: Severity::Medium,
        settings: &[],
    },
    RuleDef {
        id: MFA_METHOD_REMOVED,
        description: "An MFA method of a privileged account was removed by its user or reset by an administrator",
        severity: Severity::High,
        settings: &[],
    },
    RuleDef {
        id: POLICY_WEAKENED,
        description: "A role policy change lowered protection (MFA, approval, justification or a ticket switched off, a longer maximum or MFA window, permanence allowed, approvers changed, stages removed or fewer approvals needed), or a privileged custom role gained permissions or stopped being privileged; its figures give each setting before and after; high for privileged roles",
        severity: Severity::Medium,
        settings: &[],
    },
    RuleDef {
        id: DETECTION_WEAKENED,
        description: "An alert rule was switched off, its severity lowered or a setting moved the way that sees less (a higher count or age, a shorter window: this rule's own switch included, once): detection weakened; its figures give the rule and what changed",
        severity: Severity::High,
        settings: &[],
    },
    RuleDef {
        id: DEAD_LETTERED,
        description: "An event could not be processed and went to the dead-letter stream (with Redis)",
        severity: Severity::High,
        settings: &[],
    },
    RuleDef {
        id: FORGED_EVENT,
        description: "An entry on a PIM stream was not signed by the service that owns the stream (written to Redis by someone else, altered, or copied from another stream); it was refused",
        severity: Severity::High,
        settings: &[],
    },
    RuleDef {
        id: WEBHOOK_DEAD_LETTERED,
        description: "A webhook receiver failed every delivery attempt for 24 hours: the delivery and those behind it were given up and the subscription suspended until resumed (one live alert per subscription)",
        severity: Severity::Medium,
        settings: &[],
    },
    RuleDef {
        id: WEBHOOK_SUBSCRIBED,
        description: "A webhook subscription was made: PIM's events (audit records, alerts) now go to a new receiver, a way to carry the audit log out; check the receiver is yours",
        severity: Severity::Medium,
        settings: &[],
    },
];

pub fn rule(id: &str) -> Option<&'static RuleDef> {
    RULES.iter().find(|r| r.id == id)
}

/// Whether changing `setting` from `before` to `after` makes its rule see less: a higher
/// count, share or age to reach, or a shorter window or a quicker decision to count. A setting
/// this does not name is taken as weaker whichever way it moves.
pub fn weakens(setting: &str, before: i64, after: i64) -> bool {
    match setting {
        "count" | "min_count" | "min_percent" | "days" => after > before,
        "window_hours" | "window_minutes" | "seconds" => after < before,
        _ => after != before,
    }
}

/// A rule's settings in force: its defaults overlaid with what was stored.
#[derive(Clone, Debug)]
pub struct Settings {
    pub enabled: bool,
    pub severity: Severity,
    pub values: BTreeMap<String, i64>,
}

impl Settings {
    pub fn defaults(def: &RuleDef) -> Self {
        Self {
            enabled: true,
            severity: def.severity,
            values: def.settings.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        }
    }

    pub fn get(&self, name: &str) -> i64 {
        self.values.get(name).copied().unwrap_or_default()
    }
}

/// Checks changed settings of `def`: known names, whole numbers of at least 1.
pub fn check_values(def: &RuleDef, changes: &BTreeMap<String, String>) -> Result<BTreeMap<String, i64>, String> {
    let mut out = BTreeMap::new();
    for (name, value) in changes {
        if !def.settings.iter().any(|(k, _)| k == name) {
            let known: Vec<&str> = def.settings.iter().map(|(k, _)| *k).collect();
            return Err(format!(
                "{} has no setting {name:?} (it has: {})",
                def.id,
                known.join(", ")
            ));
        }
        // A share is of a whole: past 100 % it would never be reached.
        let most = if name.ends_with("_percent") { 100 } else { 1_000_000 };
        match value.trim().parse::<i64>() {
            Ok(n) if (1..=most).contains(&n) => {
                out.insert(name.clone(), n);
            }
            _ => return Err(format!("{name} must be a whole number from 1 to {most}")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_by_name_and_range() {
        let def = rule(FREQUENT_ACTIVATION).unwrap();
        let ok = check_values(def, &BTreeMap::from([("count".to_owned(), "4".to_owned())])).unwrap();
        assert_eq!(ok["count"], 4);
        assert!(check_values(def, &BTreeMap::from([("cnt".to_owned(), "4".to_owned())])).is_err());
        assert!(check_values(def, &BTreeMap::from([("count".to_owned(), "0".to_owned())])).is_err());
        assert!(check_values(def, &BTreeMap::from([("count".to_owned(), "x".to_owned())])).is_err());
        assert_eq!(Settings::defaults(def).get("window_hours"), 24);
        let share = |v: &str| {
            let def = rule(TOO_MANY_GLOBAL_ADMINS).unwrap();
            check_values(def, &BTreeMap::from([("min_percent".to_owned(), v.to_owned())]))
        };
        assert_eq!(share("100").unwrap()["min_percent"], 100);
        assert!(share("101").unwrap_err().contains("from 1 to 100"));
    }
}
