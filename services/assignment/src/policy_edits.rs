//! Changing a role policy safely: which settings an update names (its field mask, AIP-134),
//! the version it was based on (its etag, AIP-154), and what the change did, setting by
//! setting, with the ones that lower protection marked.

use sha2::Digest;

use crate::domain::Policy;
use crate::error::{Error, Result};

/// Declares the settings once: the enum, every setting in the API's order, and each one's
/// field name in the API's `RolePolicy` message.
macro_rules! settings {
    ($($setting:ident = $name:literal,)*) => {
        /// One setting of a role policy.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
        pub enum Setting {
            $($setting,)*
        }

        impl Setting {
            pub const ALL: &'static [Setting] = &[$(Setting::$setting,)*];

            pub fn name(self) -> &'static str {
                match self {
                    $(Setting::$setting => $name,)*
                }
            }
        }
    };
}

settings! {
    ActivationMaxDuration = "activation_max_duration",
    ActivationRequiresMfa = "activation_requires_mfa",
    ActivationRequiresPhishingResistantMfa = "activation_requires_phishing_resistant_mfa",
    ActivationRequiresJustification = "activation_requires_justification",
    ActivationRequiresTicket = "activation_requires_ticket",
    ApprovalRequired = "approval_required",
    ApproverIds = "approver_ids",
    ApprovalTimeout = "approval_timeout",
    EligibleAllowPermanent = "eligible_allow_permanent",
    EligibleMaxDuration = "eligible_max_duration",
    ActiveAllowPermanent = "active_allow_permanent",
    ActiveMaxDuration = "active_max_duration",
    ActiveRequiresJustification = "active_requires_justification",
    ActiveRequiresMfa = "active_requires_mfa",
    MfaFreshness = "mfa_freshness",
    MinActivationBeforeDeactivate = "min_activation_before_deactivate",
    ApprovalStages = "approval_stages",
    NotificationRules = "notification_rules",
}

use Setting::*;

impl Setting {
    /// Groups of settings a mask may name as one, as Entra's role settings group them.
    pub const GROUPS: [(&'static str, &'static [Setting]); 5] = [
        (
            "activation",
            &[
                ActivationMaxDuration,
                ActivationRequiresMfa,
                ActivationRequiresPhishingResistantMfa,
                ActivationRequiresJustification,
                ActivationRequiresTicket,
                MfaFreshness,
                MinActivationBeforeDeactivate,
            ],
        ),
        (
            "approval",
            &[ApprovalRequired, ApproverIds, ApprovalTimeout, ApprovalStages],
        ),
        ("eligible", &[EligibleAllowPermanent, EligibleMaxDuration]),
        (
            "active",
            &[
                ActiveAllowPermanent,
                ActiveMaxDuration,
                ActiveRequiresJustification,
                ActiveRequiresMfa,
            ],
        ),
        ("notifications", &[NotificationRules]),
    ];

    /// The settings an update mask names. No paths, or `*`, is the whole policy (AIP-134);
    /// an unknown path is INVALID_ARGUMENT listing what may be named.
    pub fn from_mask(paths: &[String]) -> Result<Vec<Setting>> {
        if paths.is_empty() || paths.iter().any(|p| p.trim() == "*") {
            return Ok(Self::ALL.to_vec());
        }
        let mut named = Vec::new();
        let mut unknown = Vec::new();
        for path in paths {
            // A path may name the field inside the resource (`policy.approval_required`).
            let path = path.trim();
            let path = path.strip_prefix("policy.").unwrap_or(path);
            if let Some(setting) = Self::ALL.iter().find(|s| s.name() == path) {
                named.push(*setting);
            } else if let Some((_, group)) = Self::GROUPS.iter().find(|(g, _)| *g == path) {
                named.extend_from_slice(group);
            } else {
                unknown.push(path.to_owned());
            }
        }
        if !unknown.is_empty() {
            let fields: Vec<&str> = Self::ALL.iter().map(|s| s.name()).collect();
            let groups: Vec<&str> = Self::GROUPS.iter().map(|(g, _)| *g).collect();
            return Err(Error::invalid(
                "update_mask",
                format!(
                    "names no policy setting: {}; name one of {}, a group ({}) or *",
                    unknown.join(", "),
                    fields.join(", "),
                    groups.join(", ")
                ),
            ));
        }
        named.sort();
        named.dedup();
        Ok(named)
    }
}

/// `base` with the `settings` taken from `asked`: what an update with that mask stores. The
/// single stage's approvers and wait (`approver_ids`, `approval_timeout`) say nothing once
/// approval runs in stages, which name their own: changing them while the stages stay as they
/// are is refused rather than stored and ignored, as an administrator replacing an approver
/// would believe it done (whatever the mask names, a file applied whole included).
pub fn merged(base: &Policy, asked: &Policy, settings: &[Setting]) -> Result<Policy> {
    let out = taken(base, asked, settings);
    let ignored = [
        (ApproverIds, out.approver_ids != base.approver_ids),
        (ApprovalTimeout, out.approval_timeout != base.approval_timeout),
    ];
    if let Some((setting, _)) = ignored.iter().find(|(_, changed)| *changed)
        && !out.approval_stages.is_empty()
        && out.approval_stages == base.approval_stages
    {
        return Err(Error::FailedPrecondition(format!(
            "{} does not apply to this policy: its approval runs in {} stage(s) (approval_stages), which name their own approvers and wait; change the stages instead (approval_stages in pim apply's file, or the portal's policy page)",
            setting.name(),
            out.approval_stages.len()
        )));
    }
    Ok(out)
}

fn taken(base: &Policy, asked: &Policy, settings: &[Setting]) -> Policy {
    let mut out = base.clone();
    for setting in settings {
        match setting {
            ActivationMaxDuration => out.activation_max_duration = asked.activation_max_duration,
            ActivationRequiresMfa => out.activation_requires_mfa = asked.activation_requires_mfa,
            ActivationRequiresPhishingResistantMfa => {
                out.activation_requires_phishing_resistant_mfa = asked.activation_requires_phishing_resistant_mfa
            }
            ActivationRequiresJustification => {
                out.activation_requires_justification = asked.activation_requires_justification
            }
            ActivationRequiresTicket => out.activation_requires_ticket = asked.activation_requires_ticket,
            ApprovalRequired => out.approval_required = asked.approval_required,
            ApproverIds => out.approver_ids = asked.approver_ids.clone(),
            ApprovalTimeout => out.approval_timeout = asked.approval_timeout,
            EligibleAllowPermanent => out.eligible_allow_permanent = asked.eligible_allow_permanent,
            EligibleMaxDuration => out.eligible_max_duration = asked.eligible_max_duration,
            ActiveAllowPermanent => out.active_allow_permanent = asked.active_allow_permanent,
            ActiveMaxDuration => out.active_max_duration = asked.active_max_duration,
            ActiveRequiresJustification => out.active_requires_justification = asked.active_requires_justification,
            ActiveRequiresMfa => out.active_requires_mfa = asked.active_requires_mfa,
            MfaFreshness => out.mfa_freshness = asked.mfa_freshness,
            MinActivationBeforeDeactivate => {
                out.min_activation_before_deactivate = asked.min_activation_before_deactivate
            }
            ApprovalStages => out.approval_stages = asked.approval_stages.clone(),
            NotificationRules => out.notification_rules = asked.notification_rules.clone(),
        }
    }
    out
}

/// The version of the policy in force at a scope, as clients see it (`RolePolicy.etag`): a
/// digest of its settings and of where it is set, so it changes with either.
pub fn etag(policy: &Policy, set_at: Option<&str>) -> String {
    let json = serde_json::to_string(policy).unwrap_or_default();
    let digest = sha2::Sha256::new()
        .chain_update(set_at.unwrap_or("(defaults)"))
        .chain_update([0])
        .chain_update(json)
        .finalize();
    format!("\"{}\"", hex(&digest[..12]))
}

/// Whether an etag a client sent names `current`: quotes (which a shell strips) and a weak
/// `W/` prefix do not matter.
pub fn etag_matches(sent: &str, current: &str) -> bool {
    let bare = |e: &str| e.trim().trim_start_matches("W/").trim_matches('"').to_owned();
    bare(sent) == bare(current)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One setting an update changed: its value before and after, as text, and whether the
/// change lowers protection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub setting: Setting,
    pub before: String,
    pub after: String,
    pub weakens: bool,
}

/// Every setting that differs between `before` and `after`, in the API's order.
pub fn changes(before: &Policy, after: &Policy) -> Vec<Change> {
    Setting::ALL
        .iter()
        .filter_map(|&setting| {
            let (b, a) = (shown(before, setting), shown(after, setting));
            (b != a).then(|| Change {
                setting,
                weakens: weakens(setting, before, after),
                before: b,
                after: a,
            })
        })
        .collect()
}

/// Whether changing `setting` from `before` to `after` lowers protection: a requirement
/// switched off, a longer limit or window, permanence allowed, fewer approvers or stages, or
/// fewer approvals needed.
fn weakens(setting: Setting, before: &Policy, after: &Policy) -> bool {
    let off = |b: bool, a: bool| b && !a;
    let on = |b: bool, a: bool| !b && a;
    match setting {
        ActivationRequiresMfa => off(before.activation_requires_mfa, after.activation_requires_mfa),
        ActivationRequiresPhishingResistantMfa => off(
            before.activation_requires_phishing_resistant_mfa,
            after.activation_requires_phishing_resistant_mfa,
        ),
        ActivationRequiresJustification => off(
            before.activation_requires_justification,
            after.activation_requires_justification,
        ),
        ActivationRequiresTicket => off(before.activation_requires_ticket, after.activation_requires_ticket),
        ApprovalRequired => off(before.approval_required, after.approval_required),
        ActiveRequiresJustification => off(
            before.active_requires_justification,
            after.active_requires_justification,
        ),
        ActiveRequiresMfa => off(before.active_requires_mfa, after.active_requires_mfa),
        EligibleAllowPermanent => on(before.eligible_allow_permanent, after.eligible_allow_permanent),
        ActiveAllowPermanent => on(before.active_allow_permanent, after.active_allow_permanent),
        ActivationMaxDuration => after.activation_max_duration > before.activation_max_duration,
        EligibleMaxDuration => after.eligible_max_duration > before.eligible_max_duration,
        ActiveMaxDuration => after.active_max_duration > before.active_max_duration,
        MfaFreshness => after.mfa_freshness > before.mfa_freshness,
        // Deactivating sooner is the safe direction; a floor on it protects nothing.
        MinActivationBeforeDeactivate => false,
        // Longer to wait is not weaker: a request nobody decides expires denied.
        ApprovalTimeout => false,
        // Someone added may approve what they should not (an accomplice); someone removed
        // leaves the decision to fewer, or to the defaults. Without approval in force before,
        // whoever approves now adds a check: no weakening.
        ApproverIds => before.approval_required && set(&before.approver_ids) != set(&after.approver_ids),
        ApprovalStages if !before.approval_required => false,
        // Weighed stage by stage (approvers moved between stages let two of one stage decide
        // both): one dropped, or one whose approvers or escalation approvers changed, that
        // needs fewer approvals, or no longer asks its approvers for a reason. A stage added
        // after the others adds a check.
        ApprovalStages => {
            let approvers = |s: &crate::domain::ApprovalStage| -> std::collections::BTreeSet<String> {
                s.approver_ids
                    .iter()
                    .chain(&s.escalation_approver_ids)
                    .cloned()
                    .collect()
            };
            after.approval_stages.len() < before.approval_stages.len()
                || (before.approval_stages.iter().zip(&after.approval_stages)).any(|(b, a)| {
                    approvers(b) != approvers(a)
                        || a.approvals_required < b.approvals_required
                        || (b.justification_required && !a.justification_required)
                })
        }
        // The role assignment alert turned down, or whoever else heard of it no longer told:
        // administrators (a SOC mailbox) no longer hear of every assignment or activation,
        // nor does the holder of what was done in their name.
        NotificationRules => crate::domain::NotificationEvent::ALL.iter().any(|event| {
            use crate::domain::NotificationParty::{Admin, Assignee};
            [Admin, Assignee].into_iter().any(|party| {
                let (b, a) = (
                    before.notification_rule(*event, party),
                    after.notification_rule(*event, party),
                );
                let dropped = (b.additional_recipients.iter()).any(|r| !a.additional_recipients.contains(r));
                (b.default_recipients && !a.default_recipients) || (!b.critical_only && a.critical_only) || dropped
            })
        }),
    }
}

fn set(ids: &[String]) -> std::collections::BTreeSet<&String> {
    ids.iter().collect()
}

/// A setting's value as people read it (`8h`, `on`, approver ids joined).
fn shown(p: &Policy, setting: Setting) -> String {
    let flag = |b: bool| if b { "on" } else { "off" }.to_owned();
    match setting {
        ActivationMaxDuration => pim_runtime::format::duration(p.activation_max_duration),
        ActivationRequiresMfa => flag(p.activation_requires_mfa),
        ActivationRequiresPhishingResistantMfa => flag(p.activation_requires_phishing_resistant_mfa),
        ActivationRequiresJustification => flag(p.activation_requires_justification),
        ActivationRequiresTicket => flag(p.activation_requires_ticket),
        ApprovalRequired => flag(p.approval_required),
        ApproverIds => p.approver_ids.join(","),
        ApprovalTimeout => pim_runtime::format::duration(p.approval_timeout),
        EligibleAllowPermanent => flag(p.eligible_allow_permanent),
        EligibleMaxDuration => pim_runtime::format::duration(p.eligible_max_duration),
        ActiveAllowPermanent => flag(p.active_allow_permanent),
        ActiveMaxDuration => pim_runtime::format::duration(p.active_max_duration),
        ActiveRequiresJustification => flag(p.active_requires_justification),
        ActiveRequiresMfa => flag(p.active_requires_mfa),
        MfaFreshness => pim_runtime::format::duration(p.mfa_freshness),
        MinActivationBeforeDeactivate => pim_runtime::format::duration(p.min_activation_before_deactivate),
        ApprovalStages => p
            .approval_stages
            .iter()
            .map(|s| {
                let mut said = format!(
                    "{} of [{}] within {}",
                    s.approvals_required,
                    s.approver_ids.join(","),
                    pim_runtime::format::duration(s.timeout)
                );
                if !s.escalation_approver_ids.is_empty() {
                    said += &format!(
                        ", escalating to [{}] after {}",
                        s.escalation_approver_ids.join(","),
                        pim_runtime::format::duration(s.escalate_after)
                    );
                }
                if s.justification_required {
                    said += ", a reason required";
                }
                said
            })
            .collect::<Vec<_>>()
            .join("; "),
        // Each rule that differs from its default: `activation/admin: critical only, +soc@x`.
        NotificationRules => p
            .notification_rules_in_force()
            .iter()
            .filter(|r| **r != crate::domain::NotificationRule::default_for(r.event, r.party))
            .map(|r| {
                let mut said = Vec::new();
                if !r.default_recipients {
                    said.push("not the party itself".to_owned());
                }
                if r.critical_only {
                    said.push("critical only".to_owned());
                }
                said.extend(r.additional_recipients.iter().map(|a| format!("+{a}")));
                format!("{}/{}: {}", r.event.as_str(), r.party.as_str(), said.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ApprovalStage, HOUR};

    #[test]
    fn a_mask_names_settings_groups_or_everything() {
        let paths = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(Setting::from_mask(&[]).unwrap(), Setting::ALL.to_vec());
        assert_eq!(Setting::from_mask(&paths(&["*"])).unwrap(), Setting::ALL.to_vec());
        assert_eq!(
            Setting::from_mask(&paths(&["approval_required", "policy.approval_required"])).unwrap(),
            vec![ApprovalRequired]
        );
        assert_eq!(
            Setting::from_mask(&paths(&["approval"])).unwrap(),
            vec![ApprovalRequired, ApproverIds, ApprovalTimeout, ApprovalStages]
        );
        let err = Setting::from_mask(&paths(&["approval_required", "mfa", "x"])).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument { field: "update_mask", message } if message.contains("mfa, x")),
            "{err:?}"
        );
    }

    #[test]
    fn a_merge_takes_only_the_named_settings() {
        let base = Policy::default();
        let asked = Policy {
            approval_required: true,
            activation_requires_mfa: false,
            activation_max_duration: 2 * HOUR,
            ..Policy::default()
        };
        let out = merged(&base, &asked, &[ApprovalRequired]).expect("merged");
        assert!(out.approval_required);
        assert!(out.activation_requires_mfa, "MFA is not in the mask");
        assert_eq!(out.activation_max_duration, base.activation_max_duration);
        assert_eq!(merged(&base, &asked, Setting::ALL).expect("merged"), asked);
    }

    #[test]
    fn a_single_stages_approvers_are_not_changed_where_approval_runs_in_stages() {
        let staged = Policy {
            approval_required: true,
            approval_stages: vec![ApprovalStage {
                approver_ids: vec!["pat".into()],
                ..ApprovalStage::default()
            }],
            ..Policy::default()
        };
        let asked = Policy {
            approver_ids: vec!["rev".into()],
            approval_timeout: 2 * HOUR,
            ..Policy::default()
        };
        // Named with the stages as they are (a file applied whole) is no different.
        let same_stages = Policy {
            approval_stages: staged.approval_stages.clone(),
            ..asked.clone()
        };
        for (asked, mask) in [
            (&asked, &[ApproverIds][..]),
            (&asked, &[ApprovalTimeout]),
            (&asked, &[ApprovalRequired, ApproverIds]),
            (&same_stages, &[ApproverIds, ApprovalStages]),
            (&same_stages, Setting::ALL),
        ] {
            let refused = merged(&staged, asked, mask).expect_err("stored and ignored, else");
            assert!(matches!(refused, Error::FailedPrecondition(_)), "{mask:?}: {refused:?}");
        }
        // Named but unchanged, they are no change.
        assert!(merged(&staged, &staged, Setting::ALL).is_ok());
        // Named with the stages (the stages replaced, as the portal saves), or where there are
        // none, they apply.
        let single = merged(&staged, &asked, &[ApproverIds, ApprovalTimeout, ApprovalStages]).expect("no stages now");
        assert_eq!(
            (single.approver_ids, single.approval_stages.len()),
            (vec!["rev".to_owned()], 0)
        );
        assert!(merged(&Policy::default(), &asked, &[ApproverIds]).is_ok());
    }

    #[test]
    fn changes_say_which_lower_protection() {
        let before = Policy {
            approval_required: true,
            approver_ids: vec!["a".into(), "b".into()],
            approval_stages: vec![ApprovalStage {
                approver_ids: vec!["a".into()],
                approvals_required: 2,
                ..ApprovalStage::default()
            }],
            ..Policy::default()
        };
        let stronger = Policy {
            activation_max_duration: 2 * HOUR,
            activation_requires_ticket: true,
            ..before.clone()
        };
        assert!(changes(&before, &stronger).iter().all(|c| !c.weakens));
        assert_eq!(changes(&before, &stronger).len(), 2);
        let accomplice = Policy {
            approver_ids: vec!["a".into(), "b".into(), "c".into()],
            ..before.clone()
        };
        assert!(
            changes(&before, &accomplice)[0].weakens,
            "an approver added may approve"
        );
        let weaker = Policy {
            activation_requires_mfa: false,
            approval_required: false,
            activation_max_duration: 24 * HOUR,
            active_allow_permanent: true,
            approver_ids: vec!["a".into()],
            approval_stages: vec![ApprovalStage {
                approver_ids: vec!["a".into()],
                approvals_required: 1,
                ..ApprovalStage::default()
            }],
            ..before.clone()
        };
        let diff = changes(&before, &weaker);
        assert!(diff.iter().all(|c| c.weakens), "{diff:?}");
        let names: Vec<&str> = diff.iter().map(|c| c.setting.name()).collect();
        assert_eq!(
            names,
            [
                "activation_max_duration",
                "activation_requires_mfa",
                "approval_required",
                "approver_ids",
                "active_allow_permanent",
                "approval_stages"
            ]
        );
        // Approval turned on, with approvers and stages, weakens nothing.
        let without = Policy {
            approval_required: false,
            approver_ids: Vec::new(),
            approval_stages: Vec::new(),
            ..before.clone()
        };
        let turned_on = changes(&without, &before);
        assert_eq!(turned_on.len(), 3, "{turned_on:?}");
        assert!(turned_on.iter().all(|c| !c.weakens), "{turned_on:?}");
        let asking = Policy {
            active_requires_mfa: true,
            ..before.clone()
        };
        let asked = changes(&before, &asking);
        assert!(
            asked.len() == 1 && !asked[0].weakens,
            "MFA on active assignment turned on: {asked:?}"
        );
        let dropped = changes(&asking, &before);
        assert!(dropped.len() == 1 && dropped[0].weakens, "and off again: {dropped:?}");
        // Every setting of a stage is told: an escalation approver added, a reason no longer
        // asked, each weakens.
        let staged = |escalation: &[&str], reason: bool| Policy {
            approval_stages: vec![ApprovalStage {
                escalation_approver_ids: escalation.iter().map(|s| (*s).to_owned()).collect(),
                escalate_after: HOUR,
                justification_required: reason,
                ..before.approval_stages[0].clone()
            }],
            ..before.clone()
        };
        let two_stages = |first: &[&str], second: &[&str]| Policy {
            approval_stages: [first, second]
                .iter()
                .map(|ids| ApprovalStage {
                    approver_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
                    approvals_required: 1,
                    ..ApprovalStage::default()
                })
                .collect(),
            ..before.clone()
        };
        let moved = (
            two_stages(&["x", "y"], &["sec"]),
            two_stages(&["x", "sec"], &["y", "sec"]),
        );
        for (from, to) in [
            (staged(&[], false), staged(&["pol"], false)),
            (staged(&[], true), staged(&[], false)),
            moved,
        ] {
            let changed = changes(&from, &to);
            assert!(changed.len() == 1 && changed[0].weakens, "{changed:?}");
        }
        let escalation = &changes(&staged(&[], true), &staged(&["pol"], true))[0];
        assert!(
            escalation
                .after
                .contains("escalating to [pol] after 1h, a reason required"),
            "{escalation:?}"
        );
        // A recipient of the role assignment alert dropped weakens it; one added does not.
        let told = |recipients: &[&str]| Policy {
            notification_rules: vec![crate::domain::NotificationRule {
                additional_recipients: recipients.iter().map(|s| (*s).to_owned()).collect(),
                ..crate::domain::NotificationRule::default_for(
                    crate::domain::NotificationEvent::ALL[0],
                    crate::domain::NotificationParty::Admin,
                )
            }],
            ..before.clone()
        };
        assert!(changes(&told(&["soc@corp.example"]), &told(&[]))[0].weakens);
        assert!(!changes(&told(&[]), &told(&["soc@corp.example"]))[0].weakens);
        let mfa = diff.iter().find(|c| c.setting == ActivationRequiresMfa).unwrap();
        assert_eq!((mfa.before.as_str(), mfa.after.as_str()), ("on", "off"));
        assert_eq!(diff[0].before, "8h");
        assert_eq!(diff[0].after, "1d");
    }

    #[test]
    fn an_etag_follows_the_settings_and_where_they_are_set() {
        let p = Policy::default();
        let e = etag(&p, Some("/"));
        assert_eq!(e, etag(&p.clone(), Some("/")));
        assert!(etag_matches(&e, &e) && etag_matches(e.trim_matches('"'), &e) && etag_matches(&format!("W/{e}"), &e));
        assert!(!etag_matches("\"0\"", &e));
        assert_ne!(e, etag(&p, None));
        assert_ne!(
            e,
            etag(
                &Policy {
                    approval_required: true,
                    ..p
                },
                Some("/")
            )
        );
    }
}
