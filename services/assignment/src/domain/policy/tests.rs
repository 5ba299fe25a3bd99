//! The policy's checks, rule by rule.

use super::*;

fn active(expiration: Expiration, justification: &str) -> AdminAssignment {
    AdminAssignment {
        kind: Kind::Active,
        start: None,
        expiration,
        justification: justification.into(),
    }
}

#[test]
fn active_assignments_follow_entra_defaults() {
    let p = Policy::default();
    let now = 1_000_000;
    let s = p
        .check_admin_assignment(&active(Expiration::After(HOUR), "on call"), MfaState::default(), now)
        .unwrap();
    assert_eq!(
        s,
        Schedule {
            start: now,
            end: Some(now + 3_600_000)
        }
    );
    let v = p
        .check_admin_assignment(&active(Expiration::Permanent, ""), MfaState::default(), now)
        .unwrap_err();
    let kinds: Vec<_> = v.iter().map(|v| v.kind).collect();
    assert_eq!(kinds, vec!["ExpirationRule", "JustificationRule"]);
    let v = p
        .check_admin_assignment(&active(Expiration::After(181 * DAY), "x"), MfaState::default(), now)
        .unwrap_err();
    assert_eq!(v[0].kind, "ExpirationRule");
    assert_eq!(
        p.check_admin_assignment(&active(Expiration::Unspecified, "x"), MfaState::default(), now)
            .unwrap()
            .end,
        Some(now + (180 * DAY).as_millis() as i64)
    );
}

#[test]
fn an_active_assignment_may_need_the_administrators_recent_mfa() {
    let now = 10_000_000;
    let p = Policy {
        active_requires_mfa: true,
        ..Policy::default()
    };
    let stale = MfaState {
        mfa_at: Some(now - 11 * 60_000),
        ..fresh_mfa(now)
    };
    for mfa in [MfaState::default(), stale] {
        let refused = p
            .check_admin_assignment(&active(Expiration::After(HOUR), ""), mfa, now)
            .unwrap_err();
        let kinds: Vec<_> = refused.iter().map(|v| v.kind).collect();
        assert_eq!(kinds, vec!["MfaRule", "JustificationRule"], "every rule is reported");
        assert!(p.unverified_administrator(Kind::Active, mfa, now).is_some());
    }
    let eligible = AdminAssignment {
        kind: Kind::Eligible,
        ..active(Expiration::After(HOUR), "")
    };
    assert!(
        p.check_admin_assignment(&eligible, MfaState::default(), now).is_ok(),
        "eligible: no MFA asked"
    );
    assert!(
        p.check_admin_assignment(&active(Expiration::After(HOUR), "on call"), fresh_mfa(now), now)
            .is_ok()
    );
    assert!(
        Policy::default()
            .unverified_administrator(Kind::Active, MfaState::default(), now)
            .is_none(),
        "Entra's default: off"
    );
}

fn fresh_mfa(now: i64) -> MfaState {
    MfaState {
        has_otp: true,
        mfa_at: Some(now - 60_000),
        phishing_resistant: false,
    }
}

#[test]
fn a_role_that_wants_a_phishing_resistant_mfa_takes_a_fresh_passkey_not_a_code() {
    let now = 10_000_000_000;
    let ask = ActivationAsk {
        justification: "incident 42".into(),
        ..Default::default()
    };
    let p = Policy {
        activation_requires_phishing_resistant_mfa: true,
        ..Policy::default()
    };
    let refused = p.check_activation(&ask, fresh_mfa(now), None, now).unwrap_err();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].kind, "MfaRule");
    assert!(refused[0].message.contains("passkey"), "{}", refused[0].message);
    let passkey = MfaState {
        phishing_resistant: true,
        ..fresh_mfa(now)
    };
    assert!(p.check_activation(&ask, passkey, None, now).is_ok());
    let stale_code = MfaState {
        mfa_at: Some(now - 11 * 60_000),
        ..fresh_mfa(now)
    };
    let refused = p.check_activation(&ask, stale_code, None, now).unwrap_err();
    assert!(
        refused[0].message.contains("passkey"),
        "a stale code: still a passkey is what is asked for: {}",
        refused[0].message
    );
    let stale = MfaState {
        mfa_at: Some(now - 11 * 60_000),
        ..passkey
    };
    assert!(
        p.check_activation(&ask, stale, None, now).is_err(),
        "a passkey, but not recent"
    );
    let without_mfa = Policy {
        activation_requires_mfa: false,
        ..p
    };
    assert!(
        without_mfa
            .check_activation(&ask, MfaState::default(), None, now)
            .is_ok(),
        "only with activation_requires_mfa"
    );
}

#[test]
fn an_activation_may_name_its_end_needs_a_whole_ticket_and_no_mfa_from_the_future() {
    let now = 10_000_000_000;
    let ask = ActivationAsk {
        end: Some(now + 3_600_000),
        justification: "incident 42".into(),
        ticket_system: "ServiceNow".into(),
        ..Default::default()
    };
    let p = Policy::default();
    assert_eq!(
        p.check_activation(&ask, fresh_mfa(now), None, now).unwrap(),
        Schedule {
            start: now,
            end: Some(now + 3_600_000)
        },
        "it lasts until the end asked for"
    );
    let ticketed = Policy {
        activation_requires_ticket: true,
        ..Policy::default()
    };
    let kinds = |r: std::result::Result<Schedule, Vec<RuleViolation>>| {
        r.unwrap_err().into_iter().map(|v| v.kind).collect::<Vec<_>>()
    };
    assert_eq!(
        kinds(ticketed.check_activation(&ask, fresh_mfa(now), None, now)),
        vec!["TicketingRule"],
        "a system without a number is no ticket"
    );
    let ahead = MfaState {
        has_otp: true,
        mfa_at: Some(now + 3_600_000),
        phishing_resistant: false,
    };
    assert_eq!(kinds(p.check_activation(&ask, ahead, None, now)), vec!["MfaRule"]);
}

/// A start at the edge of time with a length that runs past 9999-12-31 is refused by
/// every schedule: no time past it can be told (audit, the CLI and clients read them).
#[test]
fn no_schedule_ends_past_the_last_moment_a_time_is_told() {
    let now = 10_000_000_000;
    let late = pim_runtime::db::LATEST_MS - 1_000;
    let p = Policy::default();
    let kinds = |r: std::result::Result<Schedule, Vec<RuleViolation>>| {
        r.unwrap_err()
            .into_iter()
            .map(|v| (v.kind, v.message))
            .collect::<Vec<_>>()
    };
    let ask = ActivationAsk {
        start: Some(late),
        duration: Some(HOUR),
        justification: "far ahead".into(),
        ..Default::default()
    };
    let last = vec![("ExpirationRule", LAST_MOMENT.to_owned())];
    assert_eq!(kinds(p.check_activation(&ask, fresh_mfa(now), None, now)), last);
    // An eligibility ending before that ends the activation in time.
    assert!(p.check_activation(&ask, fresh_mfa(now), Some(late + 500), now).is_ok());
    for expiration in [Expiration::After(HOUR), Expiration::Unspecified] {
        let assignment = AdminAssignment {
            start: Some(late),
            ..active(expiration, "far ahead")
        };
        assert_eq!(
            kinds(p.check_admin_assignment(&assignment, MfaState::default(), now)),
            last
        );
    }
    let new_end = p.check_new_end(Kind::Eligible, late, Some(late + HOUR.as_millis() as i64), "", late);
    assert_eq!(kinds(new_end.map(|()| Schedule { start: late, end: None })), last);
}

#[test]
fn an_active_assignment_given_a_new_end_is_justified_as_when_it_was_given() {
    let p = Policy::default();
    assert!(p.active_requires_justification);
    let now = 10_000_000_000;
    let end = Some(now + HOUR.as_millis() as i64);
    let rules = |r: std::result::Result<(), Vec<RuleViolation>>| {
        r.err()
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.kind)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        rules(p.check_new_end(Kind::Active, now, end, " ", now)),
        ["JustificationRule"]
    );
    assert_eq!(
        rules(p.check_new_end(Kind::Active, now, Some(now), "", now)),
        ["ExpirationRule", "JustificationRule"],
        "every rule broken is told"
    );
    assert!(p.check_new_end(Kind::Active, now, end, "incident 42", now).is_ok());
    assert!(p.check_new_end(Kind::Eligible, now, end, "", now).is_ok());
}

#[test]
fn activation_needs_fresh_mfa_and_a_justification() {
    let p = Policy::default();
    let now = 10_000_000_000;
    let ask = ActivationAsk {
        duration: Some(2 * HOUR),
        justification: "incident 42".into(),
        ..Default::default()
    };
    let kinds = |r: std::result::Result<Schedule, Vec<RuleViolation>>| {
        r.unwrap_err().into_iter().map(|v| v.kind).collect::<Vec<_>>()
    };
    assert_eq!(
        kinds(p.check_activation(&ask, MfaState::default(), None, now)),
        vec!["MfaRule"]
    );
    let stale = MfaState {
        has_otp: true,
        mfa_at: Some(now - 11 * 60_000),
        phishing_resistant: false,
    };
    assert_eq!(kinds(p.check_activation(&ask, stale, None, now)), vec!["MfaRule"]);
    let s = p.check_activation(&ask, fresh_mfa(now), None, now).unwrap();
    assert_eq!(
        s,
        Schedule {
            start: now,
            end: Some(now + 7_200_000)
        }
    );
    let bare = ActivationAsk {
        duration: Some(9 * HOUR),
        ..Default::default()
    };
    assert_eq!(
        kinds(p.check_activation(&bare, fresh_mfa(now), None, now)),
        vec!["JustificationRule", "ExpirationRule"]
    );
    let ticketed = Policy {
        activation_requires_ticket: true,
        ..Policy::default()
    };
    assert_eq!(
        kinds(ticketed.check_activation(&ask, fresh_mfa(now), None, now)),
        vec!["TicketingRule"]
    );
}

#[test]
fn activation_defaults_to_the_maximum_and_stops_at_the_eligibility_end() {
    let p = Policy::default();
    let now = 10_000_000_000;
    let ask = ActivationAsk {
        justification: "x".into(),
        ..Default::default()
    };
    assert_eq!(
        p.check_activation(&ask, fresh_mfa(now), None, now).unwrap().end,
        Some(now + 8 * 3_600_000)
    );
    assert_eq!(
        p.check_activation(&ask, fresh_mfa(now), Some(now + 1000), now)
            .unwrap()
            .end,
        Some(now + 1000)
    );
    let later = ActivationAsk {
        start: Some(now + 60_000),
        duration: Some(HOUR),
        justification: "x".into(),
        ..Default::default()
    };
    assert_eq!(
        p.check_activation(&later, fresh_mfa(now), None, now).unwrap(),
        Schedule {
            start: now + 60_000,
            end: Some(now + 60_000 + 3_600_000)
        }
    );
}

#[test]
fn policies_outside_the_allowed_ranges_are_refused() {
    assert!(Policy::default().validate().is_ok());
    let short = Policy {
        activation_max_duration: Duration::from_secs(30),
        ..Policy::default()
    };
    assert!(matches!(
        short.validate(),
        Err(Error::InvalidArgument {
            field: "activation_max_duration",
            ..
        })
    ));
    let long = Policy {
        activation_max_duration: 25 * HOUR,
        ..Policy::default()
    };
    assert!(long.validate().is_err());
    let one_minute = Policy {
        activation_max_duration: MINUTE,
        ..Policy::default()
    };
    assert!(one_minute.validate().is_ok());
    // An MFA is told to the second: a freshness no code could meet is refused.
    for (seconds, valid) in [(0, false), (1, true), (60, true)] {
        let fresh = Policy {
            mfa_freshness: Duration::from_secs(seconds),
            ..Policy::default()
        };
        assert_eq!(fresh.validate().is_ok(), valid, "{seconds}s");
    }
    // A floor on deactivation as long as any activation lasts would forbid ending one early.
    for (floor, valid) in [(HOUR, true), (8 * HOUR, false), (9 * HOUR, false)] {
        let floored = Policy {
            min_activation_before_deactivate: floor,
            ..Policy::default()
        };
        assert_eq!(floored.validate().is_ok(), valid, "{floor:?} with 8 h activations");
    }
}

#[test]
fn eligible_assignments_may_be_permanent() {
    let p = Policy::default();
    let a = AdminAssignment {
        kind: Kind::Eligible,
        start: None,
        expiration: Expiration::Permanent,
        justification: String::new(),
    };
    assert_eq!(
        p.check_admin_assignment(&a, MfaState::default(), 5).unwrap(),
        Schedule { start: 5, end: None }
    );
}
