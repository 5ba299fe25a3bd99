//! Alerting on PostgreSQL + Redis, driven by real actions through the other services: each
//! rule raises its alert (and a threshold setting changes the outcome), a cleared condition
//! resolves itself, and StreamAlerts resumes from a cursor with every change exactly once.

use std::collections::HashMap;
use std::time::Duration;

use prost::Message;

use tonic::Code;

use pim_e2e::{authed, eventually};
use pim_proto::alerting::v1 as pb;
use pim_proto::alerting::v1::alert_service_client::AlertServiceClient;
use pim_proto::assignment::v1 as apb;
use pim_proto::assignment::v1::policy_service_client::PolicyServiceClient;
use pim_proto::assignment::v1::reconcile_service_client::ReconcileServiceClient;
use pim_proto::audit::v1::audit_service_client::AuditServiceClient;

use crate::activation::{
    EXCHANGE_ADMINISTRATOR, GLOBAL_ADMINISTRATOR, HOUR_MS, World, activation, request, run, run_on_both,
};

const PRIVILEGED_ROLE_ADMINISTRATOR: &str = "e8611ab8-c189-46e8-94e1-60213ab1f814";

impl World {
    fn alerts(&self) -> AlertServiceClient<tonic::transport::Channel> {
        AlertServiceClient::new(self.ts.channel.clone())
    }

    /// Every alert so far.
    pub(crate) async fn all_alerts(&self) -> anyhow::Result<Vec<pb::Alert>> {
        Ok(self
            .alerts()
            .list_alerts(authed(
                &self.admin,
                pb::ListAlertsRequest {
                    page_size: 500,
                    ..Default::default()
                },
            ))
            .await?
            .into_inner()
            .alerts)
    }

    /// Waits for an alert of `rule` that `matches`.
    pub(crate) async fn alert(&self, rule: &str, matches: impl Fn(&pb::Alert) -> bool) -> anyhow::Result<pb::Alert> {
        eventually(Duration::from_secs(10), rule, || async {
            Ok(self
                .all_alerts()
                .await?
                .into_iter()
                .find(|a| a.rule_id == rule && matches(a)))
        })
        .await
    }

    /// A connector reports that `principal` holds Exchange Administrator in `system`.
    async fn report_unmanaged(&self, system: &str, principal: &str) -> anyhow::Result<()> {
        ReconcileServiceClient::new(self.ts.channel.clone())
            .report_observed_grants(authed(
                &self.admin,
                apb::ReportObservedGrantsRequest {
                    system: system.into(),
                    grants: vec![apb::ObservedGrant {
                        principal_id: principal.into(),
                        role_id: EXCHANGE_ADMINISTRATOR.into(),
                        scope: "/".into(),
                        system: String::new(),
                    }],
                },
            ))
            .await?;
        Ok(())
    }

    /// Waits until alerting has seen `principal`'s privileged assignment (identity's and
    /// assignment's streams are read independently).
    async fn alerting_sees_privileged(&self, principal: &str) -> anyhow::Result<()> {
        let db = self
            .ts
            .suite
            .alerting()
            .expect("alerting runs here")
            .alerting_db()
            .clone();
        eventually(
            Duration::from_secs(10),
            "the privileged assignment reach alerting",
            || async {
                let row = pim_runtime::db::query_one(
                    &db,
                    "SELECT COUNT(*) AS n FROM privileged_assignments WHERE principal_id = $1",
                    vec![principal.into()],
                )
                .await?
                .expect("a count");
                Ok((pim_runtime::db::col::<i64>(&row, "n")? > 0).then_some(()))
            },
        )
        .await
    }

    /// `user` activates Exchange Administrator for an hour, then ends it.
    async fn activate_and_end(&self, user: &crate::activation::User) -> anyhow::Result<()> {
        let token = self.stepped_up(user)?;
        self.assignments()
            .create_request(authed(&token, activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, "triage")))
            .await?;
        self.assignments()
            .create_request(authed(
                &token,
                request(
                    apb::RequestAction::SelfDeactivate,
                    apb::AssignmentKind::Active,
                    "",
                    EXCHANGE_ADMINISTRATOR,
                ),
            ))
            .await?;
        Ok(())
    }

    /// Waits for alert `id` of `rule` to be resolved.
    async fn resolved(&self, rule: &str, id: &str) -> anyhow::Result<pb::Alert> {
        self.alert(rule, |a| a.id == id && a.status == pb::AlertStatus::Resolved as i32)
            .await
    }

    async fn set_rule(&self, rule: &str, settings: &[(&str, &str)]) -> anyhow::Result<pb::Rule> {
        Ok(self
            .alerts()
            .update_rule_settings(authed(
                &self.admin,
                pb::UpdateRuleSettingsRequest {
                    rule_id: rule.into(),
                    settings: settings.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
                    ..Default::default()
                },
            ))
            .await?
            .into_inner())
    }

    /// Makes `principal` an active `role` holder for a day.
    async fn make_active(&self, principal: &str, role: &str) -> anyhow::Result<()> {
        self.assignments()
            .create_request(authed(
                &self.admin,
                apb::CreateRequestRequest {
                    schedule: crate::activation::lasting(24 * HOUR_MS),
                    justification: "on call".into(),
                    ..request(
                        apb::RequestAction::AdminAssign,
                        apb::AssignmentKind::Active,
                        principal,
                        role,
                    )
                },
            ))
            .await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rule_raises_its_alert_and_settings_change_the_outcome() -> anyhow::Result<()> {
    run(|w| async move {
        // The break-glass administrator is a permanent active Global Administrator.
        let permanent = w
            .alert("permanent_privileged", |a| a.role_id == GLOBAL_ADMINISTRATOR)
            .await?;
        assert_eq!(permanent.severity, pb::Severity::Low as i32);

        // Roles assigned outside PIM: high severity, with the system as a figure.
        w.report_unmanaged("exchange-online", "mallory").await?;
        let unmanaged = w.alert("unmanaged_grant", |a| a.principal_id == "mallory").await?;
        assert_eq!(unmanaged.severity, pb::Severity::High as i32);
        assert_eq!(
            unmanaged.figures.get("system").map(String::as_str),
            Some("exchange-online")
        );
        assert_eq!(unmanaged.evidence_event_ids.len(), 1);
        // Fixed at the source: the next report no longer lists it, and the alert resolves.
        ReconcileServiceClient::new(w.ts.channel.clone())
            .report_observed_grants(authed(
                &w.admin,
                apb::ReportObservedGrantsRequest {
                    system: "exchange-online".into(),
                    grants: Vec::new(),
                },
            ))
            .await?;
        let resolved = w
            .alert("unmanaged_grant", |a| {
                a.principal_id == "mallory" && a.status == pb::AlertStatus::Resolved as i32
            })
            .await?;
        assert_eq!(resolved.id, unmanaged.id);

        // A privileged role's policy stops asking for MFA: alert; asking again resolves it.
        w.set_policy(PRIVILEGED_ROLE_ADMINISTRATOR, |p| p.activation_requires_mfa = false)
            .await?;
        let no_mfa = w
            .alert("activation_without_mfa", |a| a.status == pb::AlertStatus::Open as i32)
            .await?;
        w.set_policy(PRIVILEGED_ROLE_ADMINISTRATOR, |p| p.activation_requires_mfa = true)
            .await?;
        w.resolved("activation_without_mfa", &no_mfa.id).await?;

        // Activated too frequently: three activations of one role in a day; one alert,
        // updated rather than repeated on the fourth.
        let lee = w.user("lee").await?;
        w.make_eligible(&lee, EXCHANGE_ADMINISTRATOR).await?;
        for i in 0..4 {
            w.activate_and_end(&lee).await?;
            if i == 2 {
                w.alert("frequent_activation", |a| a.principal_id == lee.id).await?;
            }
        }
        let frequent = w
            .alert("frequent_activation", |a| a.principal_id == lee.id && a.count == 2)
            .await?;
        assert_eq!(frequent.figures.get("activations").map(String::as_str), Some("4"));
        // With a threshold of five, Kim's three activations raise nothing.
        let rule = w.set_rule("frequent_activation", &[("count", "5")]).await?;
        assert_eq!(rule.settings.get("count").map(String::as_str), Some("5"));
        let kim = w.user("kim").await?;
        w.make_eligible(&kim, EXCHANGE_ADMINISTRATOR).await?;
        for _ in 0..3 {
            w.activate_and_end(&kim).await?;
        }
        // Kim's events and this report share the assignment stream, which alerting reads in
        // order: once the report's alert is there, Kim's activations have been judged.
        w.report_unmanaged("marker", "marker").await?;
        w.alert("unmanaged_grant", |a| a.principal_id == "marker").await?;
        assert!(
            !w.all_alerts()
                .await?
                .iter()
                .any(|a| a.rule_id == "frequent_activation" && a.principal_id == kim.id),
            "below the raised threshold"
        );

        // Too many Global Administrators: three of them raise it; back to two resolves it; one
        // eligible makes three again (an eligible administrator is one activation away).
        let (ann, bob) = (w.user("ann").await?, w.user("bob").await?);
        w.make_active(&ann.id, GLOBAL_ADMINISTRATOR).await?;
        w.make_active(&bob.id, GLOBAL_ADMINISTRATOR).await?;
        let many = w
            .alert("too_many_global_admins", |a| a.status == pb::AlertStatus::Open as i32)
            .await?;
        assert_eq!(many.figures.get("global_admins").map(String::as_str), Some("3"));
        // Four is the bar now: three no longer alert, at once; three again, and it is back.
        w.set_rule("too_many_global_admins", &[("min_count", "4")]).await?;
        w.resolved("too_many_global_admins", &many.id).await?;
        w.set_rule("too_many_global_admins", &[("min_count", "3")]).await?;
        let many = w
            .alert("too_many_global_admins", |a| a.status == pb::AlertStatus::Open as i32)
            .await?;
        w.assignments()
            .create_request(authed(
                &w.admin,
                apb::CreateRequestRequest {
                    justification: "left the team".into(),
                    ..request(
                        apb::RequestAction::AdminRemove,
                        apb::AssignmentKind::Active,
                        &bob.id,
                        GLOBAL_ADMINISTRATOR,
                    )
                },
            ))
            .await?;
        w.resolved("too_many_global_admins", &many.id).await?;
        w.make_eligible(&kim, GLOBAL_ADMINISTRATOR).await?;
        let again = w
            .alert("too_many_global_admins", |a| a.status == pb::AlertStatus::Open as i32)
            .await?;
        assert_eq!(again.figures.get("global_admins").map(String::as_str), Some("3"));
        Ok(w)
    })
    .await
}

/// Frequent activation on both backends: its count is read and written in one statement on
/// PostgreSQL, in two on SQLite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frequent_activation_counts_on_both_backends() -> anyhow::Result<()> {
    run_on_both(|w| async move {
        w.set_rule("frequent_activation", &[("count", "2")]).await?;
        let lee = w.user("lee").await?;
        w.make_eligible(&lee, EXCHANGE_ADMINISTRATOR).await?;
        w.activate_and_end(&lee).await?;
        w.activate_and_end(&lee).await?;
        let frequent = w.alert("frequent_activation", |a| a.principal_id == lee.id).await?;
        assert_eq!(frequent.figures.get("activations").map(String::as_str), Some("2"));
        assert_eq!(frequent.evidence_event_ids.len(), 2, "both activations' events");
        w.activate_and_end(&lee).await?;
        let again = w
            .alert("frequent_activation", |a| a.principal_id == lee.id && a.count == 2)
            .await?;
        assert_eq!(again.id, frequent.id, "one alert, updated");
        assert_eq!(again.figures.get("activations").map(String::as_str), Some("3"));
        Ok(w)
    })
    .await
}

/// An administrator who gives themselves a privileged role directly is alerted, however the
/// role's policy asks for approval (no one else decided it); one they give someone else is
/// not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_privileged_role_an_administrator_gives_themselves_is_alerted() -> anyhow::Result<()> {
    const SECURITY_ADMINISTRATOR: &str = "194ae4cb-b126-40b2-bd5b-6091b380977d";
    run(|w| async move {
        let lee = w.user("lee").await?;
        w.make_eligible(&lee, SECURITY_ADMINISTRATOR).await?;
        let admin_id = pim_e2e::token_subject(&w.admin)?;
        w.make_principal_eligible(&admin_id, SECURITY_ADMINISTRATOR).await?;
        let alert = w.alert("self_assignment", |a| a.principal_id == admin_id).await?;
        assert_eq!(alert.severity, pb::Severity::High as i32);
        assert_eq!(alert.role_id, SECURITY_ADMINISTRATOR);
        assert_eq!(alert.figures.get("kind").map(String::as_str), Some("eligible"));
        let alerted: Vec<String> = w
            .all_alerts()
            .await?
            .into_iter()
            .filter(|a| a.rule_id == "self_assignment")
            .map(|a| a.principal_id)
            .collect();
        assert_eq!(alerted, vec![admin_id], "lee's was given by the administrator");
        Ok(w)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_raise_self_approval_and_rubber_stamp_alerts() -> anyhow::Result<()> {
    use pim_proto::approval::v1 as appb;
    run(|w| async move {
        let lee = w.user("lee").await?;
        w.set_policy(EXCHANGE_ADMINISTRATOR, |p| p.approval_required = true)
            .await?;
        let request = w.ask(&lee, "mail flow").await?;
        let approval = w.approval_of(&request.id).await?;
        let refused = w
            .approvals()
            .decide(authed(
                &lee.token,
                appb::DecideRequest {
                    approval_id: approval.id.clone(),
                    decision: appb::Decision::Approve as i32,
                    justification: "me".into(),
                },
            ))
            .await
            .expect_err("self-approval");
        assert_eq!(refused.code(), Code::PermissionDenied);
        let selfish = w.alert("self_approval", |a| a.principal_id == lee.id).await?;
        assert_eq!(selfish.severity, pb::Severity::High as i32);

        // Approved at once: a rubber stamp (the default window is five seconds).
        w.approvals()
            .decide(authed(
                &w.admin,
                appb::DecideRequest {
                    approval_id: approval.id.clone(),
                    decision: appb::Decision::Approve as i32,
                    justification: "ok".into(),
                },
            ))
            .await?;
        let stamp = w.alert("rubber_stamp", |a| a.role_id == EXCHANGE_ADMINISTRATOR).await?;
        assert_eq!(stamp.figures.get("requester_id"), Some(&lee.id));

        // Two stages each approved at once: each approver is named in an alert of their own.
        let (kim, una) = (w.user("kim").await?, w.user("una").await?);
        w.require_approval(vec![
            crate::approval::stage(&[&kim], 1),
            crate::approval::stage(&[&una], 1),
        ])
        .await?;
        w.assignments()
            .create_request(authed(
                &lee.token,
                apb::CreateRequestRequest {
                    action: apb::RequestAction::SelfDeactivate as i32,
                    kind: apb::AssignmentKind::Active as i32,
                    role_id: EXCHANGE_ADMINISTRATOR.into(),
                    scope: "/".into(),
                    ..Default::default()
                },
            ))
            .await?;
        let staged = w.ask(&lee, "mail flow again").await?;
        let staged = w.approval_of(&staged.id).await?;
        for approver in [&kim, &una] {
            w.approvals()
                .decide(authed(
                    &approver.token,
                    appb::DecideRequest {
                        approval_id: staged.id.clone(),
                        decision: appb::Decision::Approve as i32,
                        justification: "ok".into(),
                    },
                ))
                .await?;
        }
        for approver in [&kim, &una] {
            w.alert("rubber_stamp", |a| a.principal_id == approver.id).await?;
        }

        // People triage: acknowledge, then dismiss with a reason; readers only read.
        let refused = w
            .alerts()
            .dismiss_alert(authed(
                &lee.token,
                pb::AlertStatusRequest {
                    alert_id: stamp.id.clone(),
                    reason: "no".into(),
                },
            ))
            .await
            .expect_err("not a security administrator");
        assert_eq!(refused.code(), Code::PermissionDenied);
        let missing = w
            .alerts()
            .dismiss_alert(authed(
                &w.admin,
                pb::AlertStatusRequest {
                    alert_id: stamp.id.clone(),
                    reason: String::new(),
                },
            ))
            .await
            .expect_err("a reason is required");
        assert_eq!(missing.code(), Code::InvalidArgument);
        // The approver it is about does not close it; another administrator does.
        let because = || pb::AlertStatusRequest {
            alert_id: stamp.id.clone(),
            reason: "the on-call lead approved with the ticket open".into(),
        };
        let own = w
            .alerts()
            .dismiss_alert(authed(&w.admin, because()))
            .await
            .expect_err("an alert about the admin");
        assert_eq!(own.code(), Code::PermissionDenied);
        // Nor does Lee, whose request it stamped, once he manages alerts.
        w.make_active(&lee.id, "Security Administrator").await?;
        let beneficiary = w
            .alerts()
            .dismiss_alert(authed(&lee.token, because()))
            .await
            .expect_err("an alert about Lee's own request");
        assert_eq!(beneficiary.code(), Code::PermissionDenied);
        assert!(beneficiary.message().contains("about you"), "{beneficiary:?}");
        let ann = w.user("ann").await?;
        w.make_active(&ann.id, GLOBAL_ADMINISTRATOR).await?;
        let dismissed = w
            .alerts()
            .dismiss_alert(authed(&ann.token, because()))
            .await?
            .into_inner();
        assert_eq!(dismissed.status, pb::AlertStatus::Dismissed as i32);
        Ok(w)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_alerts_resumes_from_its_cursor_with_every_change_once() -> anyhow::Result<()> {
    run(|w| async move {
        // Each from a system of its own: a system's next report replaces its last (and
        // resolves the alerts of what it no longer lists).
        for i in 0..3 {
            w.report_unmanaged(&format!("ldap-first-{i}"), &format!("first-{i}"))
                .await?;
        }
        let mut stream = w
            .alerts()
            .stream_alerts(authed(&w.admin, pb::StreamAlertsRequest::default()))
            .await?
            .into_inner();
        let mut seen: HashMap<String, u32> = HashMap::new();
        let mut cursor = String::new();
        // Read until the three first alerts are in, then drop the connection.
        while !(0..3).all(|i| seen.contains_key(&format!("first-{i}"))) {
            let update = tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await??
                .expect("more updates");
            cursor = update.cursor.clone();
            let alert = update.alert.expect("an alert");
            *seen.entry(alert.principal_id).or_default() += 1;
        }
        drop(stream);
        for i in 0..3 {
            w.report_unmanaged(&format!("ldap-second-{i}"), &format!("second-{i}"))
                .await?;
        }
        let mut resumed = w
            .alerts()
            .stream_alerts(authed(
                &w.admin,
                pb::StreamAlertsRequest {
                    cursor,
                    ..Default::default()
                },
            ))
            .await?
            .into_inner();
        while !(0..3).all(|i| seen.contains_key(&format!("second-{i}"))) {
            let update = tokio::time::timeout(Duration::from_secs(10), resumed.message())
                .await??
                .expect("more updates");
            let alert = update.alert.expect("an alert");
            *seen.entry(alert.principal_id).or_default() += 1;
        }
        for i in 0..3 {
            for batch in ["first", "second"] {
                assert_eq!(seen.get(&format!("{batch}-{i}")), Some(&1), "{batch}-{i} exactly once");
            }
        }
        // A cursor this service never issued (ahead of its latest) would skip what comes up
        // to it: refused.
        let ahead = w
            .alerts()
            .stream_alerts(authed(
                &w.admin,
                pb::StreamAlertsRequest {
                    cursor: "999999".into(),
                    ..Default::default()
                },
            ))
            .await
            .expect_err("a cursor from elsewhere");
        assert_eq!(ahead.code(), tonic::Code::InvalidArgument, "{ahead:?}");
        // Each alert's event says its severity and status as the API's enums (and in text).
        let alerts: HashMap<String, i32> = w.all_alerts().await?.into_iter().map(|a| (a.id, a.severity)).collect();
        let raised = w
            .events_on(pim_runtime::events::streams::ALERTING, "AlertRaised")
            .await?;
        assert!(raised.len() >= 6, "the six alerts were raised: {}", raised.len());
        for envelope in raised {
            let e = pim_proto::events::v1::AlertEvent::decode(envelope.data.as_slice())?;
            assert_eq!(Some(&e.alert_severity), alerts.get(&e.alert_id), "{e:?}");
            assert_eq!(e.alert_status(), pb::AlertStatus::Open, "{e:?}");
            assert_eq!(
                (e.alert_severity().text(), e.status.as_str()),
                (e.severity.as_str(), "open")
            );
        }
        Ok(w)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_and_time_rules_raise_and_clear() -> anyhow::Result<()> {
    use pim_proto::identity::v1 as ipb;
    use pim_proto::identity::v1::mfa_service_client::MfaServiceClient;
    run(|w| async move {
        // The suite signed in as the break-glass administrator.
        let admin_id = w.admin_id().await?;
        let glass = w.alert("break_glass_used", |a| a.principal_id == admin_id).await?;
        assert_eq!(glass.severity, pb::Severity::High as i32);

        // MFA failures: three wrong codes from a privileged account raise it; the same from
        // an account without privileges do not.
        let (lee, kim) = (w.user("lee").await?, w.user("kim").await?);
        w.make_eligible(&lee, GLOBAL_ADMINISTRATOR).await?;
        w.alerting_sees_privileged(&lee.id).await?;
        let mut lee_authenticator = None;
        for who in [&kim, &lee] {
            let mut mfa = MfaServiceClient::new(w.ts.channel.clone());
            let (authenticator, confirmed_at, _) = crate::mfa::enrol(&mut mfa, &who.token).await?;
            lee_authenticator = Some((authenticator, confirmed_at));
            for _ in 0..3 {
                let wrong = mfa
                    .verify(authed(&who.token, ipb::VerifyRequest { code: "000000".into() }))
                    .await
                    .expect_err("a wrong code");
                assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
            }
        }
        let burst = w.alert("mfa_failures", |a| a.principal_id == lee.id).await?;
        assert_eq!(burst.figures.get("failures").map(String::as_str), Some("3"));
        assert!(
            !w.all_alerts()
                .await?
                .iter()
                .any(|a| a.rule_id == "mfa_failures" && a.principal_id == kim.id)
        );
        // Disabled, a rule raises nothing: Ann's failures (privileged too) pass silently,
        // and Lee's next one (enabled again) updates Lee's alert — after Ann's were judged.
        let ann = w.user("ann").await?;
        w.make_eligible(&ann, GLOBAL_ADMINISTRATOR).await?;
        w.alerting_sees_privileged(&ann.id).await?;
        let switch = |enabled: bool| pb::UpdateRuleSettingsRequest {
            rule_id: "mfa_failures".into(),
            enabled: Some(enabled),
            ..Default::default()
        };
        let off = w
            .alerts()
            .update_rule_settings(authed(&w.admin, switch(false)))
            .await?
            .into_inner();
        assert!(!off.enabled);
        let mut mfa = MfaServiceClient::new(w.ts.channel.clone());
        crate::mfa::enrol(&mut mfa, &ann.token).await?;
        for _ in 0..3 {
            mfa.verify(authed(&ann.token, ipb::VerifyRequest { code: "000000".into() }))
                .await
                .expect_err("a wrong code");
        }
        // Ann's failures judged (while disabled) before the rule is enabled again.
        let db = w.ts.suite.alerting().expect("alerting runs here").alerting_db().clone();
        eventually(Duration::from_secs(10), "Ann's failures judged", || async {
            let row = pim_runtime::db::query_one(
                &db,
                "SELECT COUNT(*) AS n FROM mfa_failures WHERE principal_id = $1",
                vec![ann.id.clone().into()],
            )
            .await?
            .expect("a count");
            Ok((pim_runtime::db::col::<i64>(&row, "n")? == 3).then_some(()))
        })
        .await?;
        w.alerts().update_rule_settings(authed(&w.admin, switch(true))).await?;
        mfa.verify(authed(&lee.token, ipb::VerifyRequest { code: "000000".into() }))
            .await
            .expect_err("a wrong code");
        w.alert("mfa_failures", |a| a.id == burst.id && a.count == 2).await?;
        assert!(
            !w.all_alerts()
                .await?
                .iter()
                .any(|a| a.rule_id == "mfa_failures" && a.principal_id == ann.id)
        );
        // Lee's fifth wrong code locks MFA: five failures (the lockout is no attempt of its
        // own), locked out; an attempt refused while locked is a sixth, still locked out.
        let figures = |a: &pb::Alert| {
            let figure = |name: &str| a.figures.get(name).cloned().unwrap_or_default();
            (figure("failures"), figure("locked_out"))
        };
        for (failures, refused) in [("5", "a wrong code"), ("6", "locked")] {
            mfa.verify(authed(&lee.token, ipb::VerifyRequest { code: "000000".into() }))
                .await
                .expect_err(refused);
            w.alert("mfa_failures", |a| {
                a.id == burst.id && figures(a) == (failures.to_owned(), "true".to_owned())
            })
            .await?;
        }
        // Resolved, the burst is not raised again when Lee's account is judged again on the
        // same failures (a second privileged role reaching alerting).
        w.alerts()
            .resolve_alert(authed(
                &w.admin,
                pb::AlertStatusRequest {
                    alert_id: burst.id.clone(),
                    reason: "Lee mistyped; confirmed by phone".into(),
                },
            ))
            .await?;
        const SECURITY_ADMINISTRATOR: &str = "194ae4cb-b126-40b2-bd5b-6091b380977d";
        w.make_eligible(&lee, SECURITY_ADMINISTRATOR).await?;
        let db = w.ts.suite.alerting().expect("alerting runs here").alerting_db().clone();
        eventually(Duration::from_secs(10), "Lee's second role judged", || async {
            let row = pim_runtime::db::query_one(
                &db,
                "SELECT COUNT(*) AS n FROM privileged_assignments WHERE principal_id = $1",
                vec![lee.id.clone().into()],
            )
            .await?
            .expect("a count");
            Ok((pim_runtime::db::col::<i64>(&row, "n")? == 2).then_some(()))
        })
        .await?;
        assert!(
            !w.all_alerts().await?.iter().any(|a| a.rule_id == "mfa_failures"
                && a.principal_id == lee.id
                && a.status == pb::AlertStatus::Open as i32),
            "the same failures raised again"
        );

        // Wrong passwords until sign-ins are refused: a privileged account's lockout raises
        // one alert however many attempts it refuses; an unprivileged one's raises none.
        for who in ["kim", "lee"] {
            for _ in 0..12 {
                w.ts.sign_in(who, "not the password")
                    .await
                    .expect_err("a wrong password");
            }
        }
        // The failure that locked the account and the first attempt refused after it (those
        // refused within the minute after are counted by the next record), on one alert.
        let lockout = w
            .alert("sign_in_lockout", |a| a.principal_id == lee.id && a.count == 2)
            .await?;
        assert_eq!(lockout.severity, pb::Severity::High as i32);
        assert_eq!(lockout.figures.get("user_name").map(String::as_str), Some("lee"));
        assert!(
            !w.all_alerts()
                .await?
                .iter()
                .any(|a| a.rule_id == "sign_in_lockout" && a.principal_id == kim.id)
        );

        // A month later: Lee never activated the role nor signed in again.
        w.clock.advance(Duration::from_secs(31 * 86_400));
        let alerting = w.ts.suite.alerting().expect("alerting runs here").alerts().clone();
        alerting.scan_once().await?;
        let stale = w.alert("stale_accounts", |a| a.principal_id == lee.id).await?;
        assert!(stale.figures["days_without_sign_in"].parse::<i64>()? >= 30);
        let unused = w
            .alert("unused_roles", |a| {
                a.principal_id == lee.id && a.role_id == GLOBAL_ADMINISTRATOR
            })
            .await?;
        assert_eq!(unused.status, pb::AlertStatus::Open as i32);
        // Sixty days is the bar now: not yet, so the alert resolves.
        w.set_rule("unused_roles", &[("days", "60")]).await?;
        alerting.scan_once().await?;
        w.resolved("unused_roles", &unused.id).await?;
        // Likewise for stale accounts; back at thirty days it is raised anew, and Lee signing
        // in resolves it.
        w.set_rule("stale_accounts", &[("days", "60")]).await?;
        alerting.scan_once().await?;
        w.resolved("stale_accounts", &stale.id).await?;
        w.set_rule("stale_accounts", &[("days", "30")]).await?;
        alerting.scan_once().await?;
        let stale = w
            .alert("stale_accounts", |a| {
                a.principal_id == lee.id && a.status == pb::AlertStatus::Open as i32
            })
            .await?;
        // Lee has MFA: the sign-in counts once its code is verified.
        let held = w.ts.sign_in("lee", "lee's long passphrase").await?;
        let (authenticator, confirmed_at) = lee_authenticator.expect("Lee enrolled");
        MfaServiceClient::new(w.ts.channel.clone())
            .verify(authed(
                &held,
                ipb::VerifyRequest {
                    code: authenticator.generate(confirmed_at + 30),
                },
            ))
            .await?;
        w.resolved("stale_accounts", &stale.id).await?;
        Ok(w)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_event_raises_an_alert() -> anyhow::Result<()> {
    use prost::Message;
    use redis::AsyncCommands;
    run(|w| async move {
        // What a consumer does with an entry it could not process after its deliveries
        // (backbone::a_poison_entry_ends_in_the_dead_letter_stream shows it happening).
        let poison = pim_runtime::events::envelope(
            pim_runtime::events::Source::Identity,
            pim_runtime::events::EventType::UserCreated,
            "victim",
            &pim_proto::events::v1::UserCreated::default(),
        );
        let redis = redis::Client::open(pim_runtime::testing::redis_url())?
            .get_multiplexed_async_connection()
            .await?;
        let key = format!("{}{}", w.ts.stream_prefix, pim_runtime::events::streams::DEADLETTER);
        let dead_letter = |group: &'static str| {
            let (mut redis, key, poison) = (redis.clone(), key.clone(), poison.clone());
            async move {
                let entry: String = redis
                    .xadd(
                        &key,
                        "*",
                        &[
                            ("stream", b"pim.identity.events".to_vec()),
                            ("group", group.as_bytes().to_vec()),
                            ("event_id", poison.id.clone().into_bytes()),
                            ("ce", poison.encode_to_vec()),
                        ],
                    )
                    .await?;
                anyhow::Ok(entry)
            }
        };
        let entry = dead_letter("audit").await?;
        let alert = w.alert("dead_lettered", |a| a.principal_id == "victim").await?;
        assert_eq!(alert.severity, pb::Severity::High as i32);
        assert_eq!(alert.evidence_event_ids, vec![poison.id.clone()]);
        assert_eq!(
            alert.figures.get("event_type").map(String::as_str),
            Some("pim.identity.v1.UserCreated")
        );
        assert_eq!(alert.count, 1);

        // Every replica tails the stream: another one reading the same entry adds nothing.
        let alerts = w.ts.suite.alerting().expect("alerting runs here").alerts();
        alerts.dead_lettered(&entry, &poison).await?;
        let again = w.alert("dead_lettered", |a| a.principal_id == "victim").await?;
        assert_eq!((again.id.as_str(), again.count), (alert.id.as_str(), 1));
        // Another service failing on the same event is a second occurrence.
        dead_letter("alerting").await?;
        w.alert("dead_lettered", |a| a.principal_id == "victim" && a.count == 2)
            .await?;
        Ok(w)
    })
    .await
}

/// The policy at `/` of `role`, as read.
async fn read_policy(w: &World, role: &str) -> anyhow::Result<apb::RolePolicy> {
    Ok(PolicyServiceClient::new(w.ts.channel.clone())
        .get_role_policy(authed(
            &w.admin,
            apb::GetRolePolicyRequest {
                role_id: role.into(),
                scope: "/".into(),
            },
        ))
        .await?
        .into_inner())
}

/// An update of `role`'s policy at `/` naming `mask`, with `set` applied to an otherwise
/// empty policy (every unnamed setting at its zero value, as a careless client sends it).
fn masked(
    role: &str,
    mask: &[&str],
    etag: &str,
    set: impl FnOnce(&mut apb::RolePolicy),
) -> apb::UpdateRolePolicyRequest {
    let mut policy = apb::RolePolicy {
        role_id: role.into(),
        scope: "/".into(),
        etag: etag.into(),
        ..Default::default()
    };
    set(&mut policy);
    apb::UpdateRolePolicyRequest {
        policy: Some(policy),
        update_mask: Some(prost_types::FieldMask {
            paths: mask.iter().map(|p| (*p).to_owned()).collect(),
        }),
        validate_only: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_updates_change_what_they_name_refuse_stale_etags_and_weakening_is_an_alert() -> anyhow::Result<()> {
    run_on_both(|w| async move {
        let mut policies = PolicyServiceClient::new(w.ts.channel.clone());
        let read = read_policy(&w, GLOBAL_ADMINISTRATOR).await?;
        assert!(read.activation_requires_mfa && !read.approval_required);
        assert!(!read.etag.is_empty());

        // A mask naming approval changes approval only: MFA, justification and the maximum
        // stay as they were, although the request carries their zero values.
        let updated = policies
            .update_role_policy(authed(
                &w.admin,
                masked(GLOBAL_ADMINISTRATOR, &["approval_required"], "", |p| p.approval_required = true),
            ))
            .await?
            .into_inner();
        assert!(updated.approval_required);
        assert!(updated.activation_requires_mfa, "MFA stays on");
        assert!(updated.activation_requires_justification);
        assert_eq!(updated.activation_max_duration, read.activation_max_duration);
        assert_ne!(updated.etag, read.etag, "a new version, a new etag");
        assert_eq!(read_policy(&w, GLOBAL_ADMINISTRATOR).await?, updated);

        // An update based on the version read before is refused, and changes nothing.
        let stale = policies
            .update_role_policy(authed(
                &w.admin,
                masked(GLOBAL_ADMINISTRATOR, &["activation_requires_mfa"], &read.etag, |_| {}),
            ))
            .await
            .expect_err("stale etag");
        assert_eq!(stale.code(), Code::Aborted, "{stale:?}");
        assert_eq!(read_policy(&w, GLOBAL_ADMINISTRATOR).await?, updated);
        let unknown = policies
            .update_role_policy(authed(
                &w.admin,
                masked(GLOBAL_ADMINISTRATOR, &["mfa"], "", |_| {}),
            ))
            .await
            .expect_err("no such setting");
        assert_eq!(unknown.code(), Code::InvalidArgument);
        assert!(unknown.message().contains("update_mask"), "{unknown:?}");

        // Concurrent updates of different settings (each one stricter), without etags, all land.
        type Set = fn(&mut apb::RolePolicy);
        let settings: [(&str, Set); 4] = [
            ("activation_requires_ticket", |p| p.activation_requires_ticket = true),
            ("activation_max_duration", |p| {
                p.activation_max_duration = Some(prost_types::Duration { seconds: 4 * 3600, nanos: 0 })
            }),
            ("eligible_allow_permanent", |p| p.eligible_allow_permanent = false),
            ("mfa_freshness", |p| {
                p.mfa_freshness = Some(prost_types::Duration { seconds: 300, nanos: 0 })
            }),
        ];
        let mut racing = tokio::task::JoinSet::new();
        for (name, set) in settings {
            let mut client = policies.clone();
            let request = authed(&w.admin, masked(GLOBAL_ADMINISTRATOR, &[name], "", set));
            racing.spawn(async move { client.update_role_policy(request).await });
        }
        while let Some(answer) = racing.join_next().await {
            answer??;
        }
        let after = read_policy(&w, GLOBAL_ADMINISTRATOR).await?;
        assert!(after.activation_requires_ticket, "{after:?}");
        assert_eq!(after.activation_max_duration.as_ref().map(|d| d.seconds), Some(4 * 3600));
        assert!(!after.eligible_allow_permanent, "{after:?}");
        assert_eq!(after.mfa_freshness.as_ref().map(|d| d.seconds), Some(300));
        assert!(after.approval_required && after.activation_requires_mfa, "{after:?}");

        // With the current etag, MFA goes off: that lowers protection, so the event carries
        // the change and alerting raises policy_weakened (high: a privileged role).
        policies
            .update_role_policy(authed(
                &w.admin,
                masked(GLOBAL_ADMINISTRATOR, &["activation"], &after.etag, |p| {
                    p.activation_requires_justification = true;
                    p.activation_max_duration = Some(prost_types::Duration { seconds: 4 * 3600, nanos: 0 });
                    p.mfa_freshness = Some(prost_types::Duration { seconds: 300, nanos: 0 });
                    p.activation_requires_ticket = true;
                }),
            ))
            .await?;
        let alert = w
            .alert("policy_weakened", |a| a.role_id == GLOBAL_ADMINISTRATOR)
            .await?;
        assert_eq!(alert.severity, pb::Severity::High as i32);
        assert_eq!(alert.principal_id, w.admin_id().await?);
        let figures: std::collections::BTreeMap<&str, &str> =
            alert.figures.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            figures,
            [
                ("activation_requires_mfa", "on -> off (weaker)"),
                ("weakened", "activation_requires_mfa")
            ]
            .into()
        );
        // The audit record of the update carries the same diff.
        let record = eventually(Duration::from_secs(10), "audit of the weakening", || async {
            let records = AuditServiceClient::new(w.ts.channel.clone())
                .query_events(authed(
                    &w.admin,
                    pim_proto::audit::v1::QueryEventsRequest {
                        action: "PolicyUpdated".into(),
                        role_id: GLOBAL_ADMINISTRATOR.into(),
                        page_size: 50,
                        ..Default::default()
                    },
                ))
                .await?
                .into_inner()
                .records;
            Ok(records.into_iter().find(|r| r.payload_json.contains("\"weakened\":true")))
        })
        .await?;
        let payload: serde_json::Value = serde_json::from_str(&record.payload_json)?;
        assert_eq!(
            payload["changes"],
            serde_json::json!([{"setting": "activation_requires_mfa", "before": "on", "after": "off", "weakens": true}]),
            "{payload}"
        );

        // Strengthening raises nothing; weakening a role that is not privileged is medium.
        policies
            .update_role_policy(authed(
                &w.admin,
                masked(GLOBAL_ADMINISTRATOR, &["activation_requires_mfa"], "", |p| p.activation_requires_mfa = true),
            ))
            .await?;
        policies
            .update_role_policy(authed(
                &w.admin,
                masked(EXCHANGE_ADMINISTRATOR, &["activation_max_duration"], "", |p| {
                    p.activation_max_duration = Some(prost_types::Duration { seconds: 12 * 3600, nanos: 0 })
                }),
            ))
            .await?;
        let exchange = w
            .alert("policy_weakened", |a| a.role_id == EXCHANGE_ADMINISTRATOR)
            .await?;
        assert_eq!(exchange.severity, pb::Severity::Medium as i32);
        assert_eq!(
            exchange.figures.get("activation_max_duration").map(String::as_str),
            Some("8h -> 12h (weaker)")
        );
        // Alerting reads the stream in order: the strengthening came before, and raised none.
        let on_global = w
            .all_alerts()
            .await?
            .into_iter()
            .filter(|a| a.rule_id == "policy_weakened" && a.role_id == GLOBAL_ADMINISTRATOR)
            .count();
        assert_eq!(on_global, 1);
        Ok(w)
    })
    .await
}

/// Access to a group that holds a privileged role is privileged (PIM for Groups): its
/// membership policy without MFA raises the alert a privileged role's would; a group that
/// holds no such role raises none; eligible members of a group holding Global Administrator
/// count among its holders (on PostgreSQL + Redis and on the embedded default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_to_a_group_holding_a_privileged_role_is_privileged() -> anyhow::Result<()> {
    use pim_proto::catalogue::{GROUP_MEMBER, group_scope};
    use pim_proto::identity::v1 as ipb;
    use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;
    run_on_both(|w| async move {
        let directory = DirectoryServiceClient::new(w.ts.channel.clone());
        let (tier0, book_club) = (
            w.role_assignable_group("Tier 0").await?,
            w.role_assignable_group("Book club").await?,
        );
        w.assignments()
            .create_request(authed(
                &w.admin,
                apb::CreateRequestRequest {
                    justification: "tier 0 operators".into(),
                    ..request(
                        apb::RequestAction::AdminAssign,
                        apb::AssignmentKind::Eligible,
                        &tier0,
                        PRIVILEGED_ROLE_ADMINISTRATOR,
                    )
                },
            ))
            .await?;
        w.alerting_sees_privileged(&tier0).await?;
        let without_mfa = |group: &str| apb::UpdateRolePolicyRequest {
            policy: Some(apb::RolePolicy {
                role_id: GROUP_MEMBER.into(),
                scope: group_scope(group),
                activation_requires_mfa: false,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["activation_requires_mfa".into()],
            }),
            validate_only: false,
        };
        let mut policies = PolicyServiceClient::new(w.ts.channel.clone());
        policies
            .update_role_policy(authed(&w.admin, without_mfa(&book_club)))
            .await?;
        policies
            .update_role_policy(authed(&w.admin, without_mfa(&tier0)))
            .await?;
        let alert = w.alert("activation_without_mfa", |a| a.role_id == GROUP_MEMBER).await?;
        assert_eq!(alert.scope, group_scope(&tier0));
        // In stream order, the book club's change came first: weakened, but not privileged.
        let alerts = w.all_alerts().await?;
        assert!(
            !alerts
                .iter()
                .any(|a| a.rule_id == "activation_without_mfa" && a.scope == group_scope(&book_club)),
            "a group without privileged roles is not privileged"
        );
        let weakened = |scope: String| {
            alerts
                .iter()
                .find(|a| a.rule_id == "policy_weakened" && a.scope == scope)
                .map(|a| a.severity)
        };
        assert_eq!(weakened(group_scope(&tier0)), Some(pb::Severity::High as i32));
        assert_ne!(weakened(group_scope(&book_club)), Some(pb::Severity::High as i32));

        // Tier 0 holds Global Administrator: those who may activate its membership count among
        // the Global Administrators, the group itself not (the admin, Lee and Kim make three,
        // judged at once when the group's assignment arrives, after theirs on its stream).
        w.set_rule("too_many_global_admins", &[("min_count", "3")]).await?;
        for name in ["lee", "kim"] {
            let user = w.user(name).await?;
            w.assignments()
                .create_request(authed(
                    &w.admin,
                    apb::CreateRequestRequest {
                        scope: group_scope(&tier0),
                        justification: "tier 0 rota".into(),
                        ..request(
                            apb::RequestAction::AdminAssign,
                            apb::AssignmentKind::Eligible,
                            &user.id,
                            GROUP_MEMBER,
                        )
                    },
                ))
                .await?;
        }
        w.make_active(&tier0, GLOBAL_ADMINISTRATOR).await?;
        let many = w
            .alert("too_many_global_admins", |a| a.status == pb::AlertStatus::Open as i32)
            .await?;
        assert_eq!(many.figures.get("global_admins").map(String::as_str), Some("3"));

        // Added to Tier 0 directly, not just in time: Uma holds its roles for good. The alert
        // names her and the group, and resolves when she leaves; the book club raises none.
        let uma = w.user("uma").await?;
        let membership = |group: &str| ipb::GroupMembershipRequest {
            group_id: group.into(),
            principal_id: uma.id.clone(),
        };
        let mut directory = directory.clone();
        directory
            .add_group_member(authed(&w.admin, membership(&book_club)))
            .await?;
        directory.add_group_member(authed(&w.admin, membership(&tier0))).await?;
        let outside = w
            .alert("group_member_outside_pim", |a| a.principal_id == uma.id)
            .await?;
        assert_eq!(outside.scope, group_scope(&tier0));
        // As a member in the directory, she holds Global Administrator too: four now.
        w.alert("too_many_global_admins", |a| {
            a.figures.get("global_admins").map(String::as_str) == Some("4")
        })
        .await?;
        assert!(
            !w.all_alerts()
                .await?
                .iter()
                .any(|a| a.rule_id == "group_member_outside_pim" && a.scope == group_scope(&book_club)),
            "the book club holds nothing privileged"
        );
        directory
            .remove_group_member(authed(&w.admin, membership(&tier0)))
            .await?;
        w.resolved("group_member_outside_pim", &outside.id).await?;
        // An owner added directly may add any member, herself included: alerted as well.
        directory.add_group_owner(authed(&w.admin, membership(&tier0))).await?;
        let owner = w
            .alert("group_member_outside_pim", |a| {
                a.principal_id == uma.id && a.status == pb::AlertStatus::Open as i32
            })
            .await?;
        assert_eq!(
            (owner.scope.as_str(), owner.role_id.as_str()),
            (group_scope(&tier0).as_str(), "group-owner")
        );
        directory
            .remove_group_owner(authed(&w.admin, membership(&tier0)))
            .await?;
        w.resolved("group_member_outside_pim", &owner.id).await?;
        w.alert("too_many_global_admins", |a| {
            a.figures.get("global_admins").map(String::as_str) == Some("3")
        })
        .await?;

        // The book club, which Uma joined while it held nothing, is made privileged: she holds
        // its role for good from then on, and is alerted on.
        w.make_active(&book_club, GLOBAL_ADMINISTRATOR).await?;
        let joined_before = w
            .alert("group_member_outside_pim", |a| {
                a.principal_id == uma.id && a.scope == group_scope(&book_club)
            })
            .await?;
        assert_eq!(joined_before.status, pb::AlertStatus::Open as i32);

        if !w.ts.stream_prefix.is_empty() {
            // Her removal from the book club told late (older than the add alerting applied:
            // events of one group may be delivered out of order) neither clears the alert nor
            // lowers the count.
            use pim_runtime::events::{Source, envelope, streams};
            let joined = w
                .events_on(streams::IDENTITY, "GroupMemberAdded")
                .await?
                .iter()
                .map(pim_runtime::events::decode::<pim_proto::events::v1::GroupMembershipChanged>)
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .find(|m| m.group_id == book_club && m.principal_id == uma.id)
                .expect("uma's joining the book club");
            let late = envelope(
                Source::Identity,
                pim_runtime::events::EventType::GroupMemberRemoved,
                &uma.id,
                &pim_proto::events::v1::GroupMembershipChanged {
                    version: joined.version - 1,
                    ..joined
                },
            );
            let alerting = w.ts.suite.alerting().expect("alerting runs here").alerting_db().clone();
            w.tell(streams::IDENTITY, late, "alerting", &alerting).await?;
            let still = w.all_alerts().await?;
            let still = still.iter().find(|a| a.id == joined_before.id).expect("the alert");
            assert_eq!(still.status, pb::AlertStatus::Open as i32, "{still:?}");
        }
        Ok(w)
    })
    .await
}

/// Switching a rule off, or lowering its severity, is itself an alert, about whoever did it;
/// and nobody dismisses or resolves an alert about themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weakening_detection_is_an_alert_its_subject_cannot_close() -> anyhow::Result<()> {
    run(|w| async move {
        let update = |rule: &str, enabled: Option<bool>, severity: pb::Severity| pb::UpdateRuleSettingsRequest {
            rule_id: rule.into(),
            enabled,
            severity: severity as i32,
            ..Default::default()
        };
        let mut alerts = w.alerts();
        alerts
            .update_rule_settings(authed(
                &w.admin,
                update("self_approval", Some(false), pb::Severity::Unspecified),
            ))
            .await?;
        let about = |rule: &'static str| move |a: &pb::Alert| a.figures.get("rule").map(String::as_str) == Some(rule);
        let off = w.alert("detection_weakened", about("self_approval")).await?;
        assert_eq!(
            off.figures.get("enabled").map(String::as_str),
            Some("true -> false"),
            "{off:?}"
        );
        assert_eq!(off.severity, pb::Severity::High as i32);
        alerts
            .update_rule_settings(authed(&w.admin, update("mfa_failures", None, pb::Severity::Low)))
            .await?;
        let lowered = w.alert("detection_weakened", about("mfa_failures")).await?;
        assert_eq!(
            lowered.figures.get("severity").map(String::as_str),
            Some("high -> low"),
            "{lowered:?}"
        );
        // A threshold moved the way that sees less: a million activations a day, say.
        w.set_rule("frequent_activation", &[("count", "1000000")]).await?;
        let numb = w.alert("detection_weakened", about("frequent_activation")).await?;
        assert_eq!(
            numb.figures.get("count").map(String::as_str),
            Some("3 -> 1000000"),
            "{numb:?}"
        );
        w.set_rule("frequent_activation", &[("count", "2")]).await?;
        // Switched on again, made more severe or stricter: nothing weakened.
        alerts
            .update_rule_settings(authed(
                &w.admin,
                update("self_approval", Some(true), pb::Severity::Unspecified),
            ))
            .await?;
        alerts
            .update_rule_settings(authed(&w.admin, update("mfa_failures", None, pb::Severity::High)))
            .await?;

        let dismiss = |id: &str| pb::AlertStatusRequest {
            alert_id: id.into(),
            reason: "planned maintenance".into(),
        };
        // Acknowledged, it stays in sight; closing it is another's to do.
        let seen = alerts
            .acknowledge_alert(authed(&w.admin, dismiss(&off.id)))
            .await?
            .into_inner();
        assert_eq!(seen.status, pb::AlertStatus::Acknowledged as i32);
        for refused in [
            alerts.dismiss_alert(authed(&w.admin, dismiss(&off.id))).await,
            alerts.resolve_alert(authed(&w.admin, dismiss(&lowered.id))).await,
        ] {
            let refused = refused.expect_err("an alert about the caller");
            assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
            assert!(refused.message().contains("about you"), "{refused:?}");
        }
        let ann = w.user("ann").await?;
        w.make_active(&ann.id, GLOBAL_ADMINISTRATOR).await?;
        let closed = alerts
            .dismiss_alert(authed(&ann.token, dismiss(&off.id)))
            .await?
            .into_inner();
        assert_eq!(closed.status, pb::AlertStatus::Dismissed as i32);
        let weakened = w
            .all_alerts()
            .await?
            .into_iter()
            .filter(|a| a.rule_id == "detection_weakened")
            .count();
        assert_eq!(
            weakened, 3,
            "only the rule switched off, the severity lowered and the count raised"
        );
        Ok(w)
    })
    .await
}
