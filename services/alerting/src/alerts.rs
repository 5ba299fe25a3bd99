//! Raising alerts from events: each rule looks at the events it cares about (and the
//! projections they feed), a continuing condition updates its one live alert (dedup key),
//! a cleared condition resolves it. Every change goes out twice in the same transaction:
//! as an `AlertEvent` on `pim.alerting.events` (audit keeps it) and as an OCSF Detection
//! Finding in JSON on `pim.alerts` (for SOC tooling with nothing but a Redis client).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use sea_orm::{DatabaseTransaction, TransactionTrait};
use serde_json::json;

use pim_proto::common::v1::Actor;
use pim_proto::events::v1 as ev;
use pim_runtime::access::{AccessCheck, permissions, require};
use pim_runtime::auth::Caller;
use pim_runtime::clock::Clock;
use pim_runtime::db::{Db, from_timestamp};
use pim_runtime::error::{Error, Result};
use pim_runtime::events::{Envelope, Outbox, decode, envelope, short_type, streams};

use crate::rules::{self, Settings};
use crate::store::{self, AlertRow};

/// Evidence kept per alert (the newest event ids).
const MAX_EVIDENCE: usize = 20;

#[derive(Clone)]
pub struct Alerts {
    pub(crate) db: Db,
    pub(crate) outbox: Outbox,
    pub(crate) access: Arc<dyn AccessCheck>,
    pub(crate) clock: Arc<dyn Clock>,
    /// Bumped after every committed change, so streams look again at once.
    pub(crate) changed: Arc<tokio::sync::watch::Sender<u64>>,
    pub(crate) settings: Arc<SettingsCache>,
    /// Alert events written so far (committed or not): how the event handler knows whether
    /// an event changed an alert.
    pub(crate) published: Arc<AtomicU64>,
}

/// How long rule settings read to evaluate events are reused.
const SETTINGS_KEPT: Duration = Duration::from_secs(1);

/// Rule settings recently read to evaluate events: nearly every event reads some rule's
/// settings, and they change rarely. A change made through this replica applies at once; one
/// made through another replica within [`SETTINGS_KEPT`].
#[derive(Default)]
pub struct SettingsCache {
    read: std::sync::Mutex<HashMap<&'static str, (Instant, Settings)>>,
    /// Bumped by every change, so a read that started before it is not kept.
    generation: AtomicU64,
}

impl SettingsCache {
    fn get(&self, rule_id: &str) -> Option<Settings> {
        let read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        read.get(rule_id)
            .filter(|(at, _)| at.elapsed() < SETTINGS_KEPT)
            .map(|(_, s)| s.clone())
    }

    fn keep(&self, rule_id: &'static str, generation: u64, settings: &Settings) {
        let mut read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        if self.generation.load(SeqCst) == generation {
            read.insert(rule_id, (Instant::now(), settings.clone()));
        }
    }

    fn forget(&self, rule_id: &str) {
        let mut read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, SeqCst);
        read.remove(rule_id);
    }
}

/// What an alert is about.
#[derive(Default)]
pub struct Subject {
    pub principal_id: String,
    pub role_id: String,
    pub scope: String,
}

/// Whether a role at a scope is privileged: a built-in one so marked, a custom one assignment
/// said is, or access to a group that holds a privileged role (PIM for Groups: its members
/// hold that role whenever they activate).
async fn privileged<C: sea_orm::ConnectionTrait>(c: &C, role_id: &str, scope: &str, now: i64) -> Result<bool> {
    use pim_proto::catalogue::{group_of_scope, is_group_access};
    if let Some(group) = group_of_scope(scope).filter(|_| is_group_access(role_id)) {
        return Ok(store::is_privileged(c, group, now).await?);
    }
    if pim_proto::catalogue::BUILT_IN_ROLES
        .iter()
        .any(|r| r.privileged && r.id == role_id)
    {
        return Ok(true);
    }
    Ok(store::custom_role_privileged(c, role_id).await?)
}

fn event_time(envelope: &Envelope) -> i64 {
    envelope.time.as_ref().map(from_timestamp).unwrap_or_default()
}

/// An alert as an OCSF 1.1.0 Detection Finding (class 2004).
pub fn detection_finding(a: &AlertRow, description: &str) -> serde_json::Value {
    let (activity_id, activity) = match a.status.as_str() {
        "resolved" | "dismissed" => (3, "Close"),
        _ if a.count > 1 || a.status == "acknowledged" => (2, "Update"),
        _ => (1, "Create"),
    };
    let (status_id, status) = match a.status.as_str() {
        "acknowledged" => (2, "In Progress"),
        "dismissed" => (3, "Suppressed"),
        "resolved" => (4, "Resolved"),
        _ => (1, "New"),
    };
    let severity_id = match a.severity.as_str() {
        "low" => 2,
        "medium" => 3,
        "high" => 4,
        "critical" => 5,
        _ => 1,
    };
    let mut finding = json!({
        "class_uid": 2004,
        "class_name": "Detection Finding",
        "category_uid": 2,
        "category_name": "Findings",
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": 200400 + activity_id,
        "time": a.last_seen,
        "severity_id": severity_id,
        "severity": a.severity,
        "status_id": status_id,
        "status": status,
        "count": a.count,
        "message": description,
        "metadata": {
            "version": "1.1.0",
            "product": { "name": "PIM", "vendor_name": "PIM", "feature": { "name": "alerting" } },
            "uid": a.id,
            "sequence": a.rev,
        },
        "finding_info": {
            "uid": a.id,
            "title": description,
            "types": [a.rule_id],
            "first_seen_time": a.first_seen,
            "last_seen_time": a.last_seen,
            "related_events": a.evidence.iter().map(|id| json!({ "uid": id })).collect::<Vec<_>>(),
        },
        "unmapped": {
            "rule_id": a.rule_id,
            "dedup_key": a.dedup_key,
            "principal_id": a.principal_id,
            "role_id": a.role_id,
            "scope": a.scope,
            "figures": a.figures,
            "status_changed_by": a.status_changed_by,
            "status_reason": a.status_reason,
        },
    });
    if !a.principal_id.is_empty() {
        finding["resources"] = json!([{ "uid": a.principal_id, "type": "principal" }]);
    }
    finding
}

impl Alerts {
    pub fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// A rule's settings, to evaluate an event with (from [`SettingsCache`]).
    pub async fn settings<C: sea_orm::ConnectionTrait>(&self, c: &C, rule_id: &str) -> Result<Settings> {
        if let Some(s) = self.settings.get(rule_id) {
            return Ok(s);
        }
        let def = rules::rule(rule_id).ok_or_else(|| Error::NotFound(format!("rule {rule_id}")))?;
        let generation = self.settings.generation.load(SeqCst);
        let s = self.stored_settings(c, rule_id).await?;
        self.settings.keep(def.id, generation, &s);
        Ok(s)
    }

    /// A rule's settings as stored now (what an administrator reads and changes).
    pub async fn stored_settings<C: sea_orm::ConnectionTrait>(&self, c: &C, rule_id: &str) -> Result<Settings> {
        let def = rules::rule(rule_id).ok_or_else(|| Error::NotFound(format!("rule {rule_id}")))?;
        let mut s = Settings::defaults(def);
        if let Some((enabled, severity, values)) = store::rule_settings(c, rule_id).await? {
            s.enabled = enabled;
            s.severity = severity;
            let stored: BTreeMap<String, i64> = serde_json::from_str(&values).map_err(anyhow::Error::from)?;
            s.values.extend(stored);
        }
        Ok(s)
    }

    /// Tells both streams about a changed alert.
    async fn publish(
        &self,
        txn: &DatabaseTransaction,
        a: &AlertRow,
        event_type: &str,
        actor: Option<Actor>,
    ) -> Result<()> {
        let event = ev::AlertEvent {
            actor,
            alert_id: a.id.clone(),
            rule_id: a.rule_id.clone(),
            severity: a.severity.clone(),
            status: a.status.clone(),
            principal_id: a.principal_id.clone(),
            role_id: a.role_id.clone(),
        };
        self.outbox
            .enqueue(
                txn,
                streams::ALERTING,
                &envelope("pim.alerting", event_type, &a.id, &event),
            )
            .await?;
        self.published.fetch_add(1, SeqCst);
        let description = rules::rule(&a.rule_id).map(|r| r.description).unwrap_or_default();
        let mut finding = envelope("pim.alerting", "DetectionFinding", &a.id, &event);
        finding.data = detection_finding(a, description).to_string().into_bytes();
        finding.datacontenttype = "application/json".into();
        self.outbox.enqueue(txn, streams::ALERTS, &finding).await?;
        Ok(())
    }

    /// Raises an alert for `rule_id`, or updates the live one with the same key.
    async fn raise(
        &self,
        txn: &DatabaseTransaction,
        rule_id: &str,
        dedup_key: &str,
        subject: Subject,
        evidence: &[String],
        figures: BTreeMap<String, String>,
    ) -> Result<()> {
        self.raise_as(txn, rule_id, dedup_key, subject, evidence, figures, None)
            .await
    }

    /// As [`Self::raise`], with a severity other than the rule's (e.g. high for a privileged account).
    #[allow(clippy::too_many_arguments)]
    async fn raise_as(
        &self,
        txn: &DatabaseTransaction,
        rule_id: &str,
        dedup_key: &str,
        subject: Subject,
        evidence: &[String],
        figures: BTreeMap<String, String>,
        severity: Option<&str>,
    ) -> Result<()> {
        let mut settings = self.settings(txn, rule_id).await?;
        if !settings.enabled {
            return Ok(());
        }
        if let Some(severity) = severity {
            settings.severity = severity.to_owned();
        }
        let now = self.now();
        let rev = store::next_rev(txn).await?;
        let (mut alert, insert) = match store::live(txn, dedup_key).await? {
            Some(mut a) => {
                a.count += 1;
                a.last_seen = now;
                a.severity = settings.severity.clone();
                (a, false)
            }
            None => (
                AlertRow {
                    id: uuid::Uuid::now_v7().to_string(),
                    rule_id: rule_id.into(),
                    severity: settings.severity.clone(),
                    principal_id: subject.principal_id,
                    role_id: subject.role_id,
                    scope: subject.scope,
                    dedup_key: dedup_key.into(),
                    evidence: Vec::new(),
                    figures: BTreeMap::new(),
                    first_seen: now,
                    last_seen: now,
                    count: 1,
                    status: "open".into(),
                    status_changed_by: String::new(),
                    status_reason: String::new(),
                    rev,
                },
                true,
            ),
        };
        for id in evidence {
            if !alert.evidence.contains(id) {
                alert.evidence.push(id.clone());
            }
        }
        let excess = alert.evidence.len().saturating_sub(MAX_EVIDENCE);
        alert.evidence.drain(..excess);
        alert.figures = figures;
        alert.rev = rev;
        store::save(txn, &alert, insert).await?;
        self.publish(txn, &alert, if insert { "AlertRaised" } else { "AlertUpdated" }, None)
            .await
    }

    /// Resolves the live alert with this key: its condition cleared.
    async fn clear(&self, txn: &DatabaseTransaction, dedup_key: &str, why: &str) -> Result<()> {
        let Some(mut alert) = store::live(txn, dedup_key).await? else {
            return Ok(());
        };
        alert.status = "resolved".into();
        alert.status_changed_by = "system".into();
        alert.status_reason = why.into();
        alert.last_seen = self.now();
        alert.rev = store::next_rev(txn).await?;
        store::save(txn, &alert, false).await?;
        self.publish(txn, &alert, "AlertStatusChanged", None).await
    }

    /// Runs the rules an event concerns, inside the consumer's transaction.
    pub async fn evaluate(&self, txn: &DatabaseTransaction, e: &Envelope) -> anyhow::Result<()> {
        let at = event_time(e);
        match short_type(e) {
            "SignInMfaPending" | "SignInEnrollmentPending" => {
                // The break-glass password was used, whether or not a code follows.
                let s: ev::SignInSucceeded = decode(e)?;
                if let Some(actor) = s.actor
                    && store::is_break_glass(txn, &actor.principal_id).await?
                {
                    self.break_glass_used(txn, &actor.principal_id, &actor.display_name, &e.id)
                        .await?;
                }
            }
            "SignInSucceeded" => {
                let s: ev::SignInSucceeded = decode(e)?;
                let Some(actor) = s.actor else {
                    return Ok(());
                };
                store::signed_in(txn, &actor.principal_id, at).await?;
                if store::is_break_glass(txn, &actor.principal_id).await? {
                    self.break_glass_used(txn, &actor.principal_id, &actor.display_name, &e.id)
                        .await?;
                }
                // Signing in clears a stale-account alert.
                self.clear(txn, &format!("stale:{}", actor.principal_id), "signed in again")
                    .await?;
            }
            "MfaFailed" | "MfaLockedOut" => {
                let m: ev::MfaEvent = decode(e)?;
                // Every failure is kept for the window: the account may turn out privileged
                // by an event on another stream judged later.
                store::record_mfa_failure(txn, &e.id, &m.user_id, at).await?;
                let locked = short_type(e) == "MfaLockedOut";
                if store::is_privileged(txn, &m.user_id, self.now()).await? {
                    self.check_mfa_failures(txn, &m.user_id, at, locked).await?;
                }
            }
            "RecoveryCodeUsed" | "MfaMethodRemoved" | "MfaReset" => {
                let m: ev::MfaEvent = decode(e)?;
                let privileged = store::is_privileged(txn, &m.user_id, self.now()).await?;
                let by = m.actor.as_ref().map(|a| a.display_name.clone()).unwrap_or_default();
                // A recovery code is an emergency for anyone (high for a privileged account);
                // a lost method matters for privileged accounts.
                let (rule, key, severity) = match short_type(e) {
                    "RecoveryCodeUsed" => (rules::RECOVERY_CODE_USED, "recovery_code", privileged.then_some("high")),
                    _ if privileged => (rules::MFA_METHOD_REMOVED, "mfa_method_removed", None),
                    _ => return Ok(()),
                };
                let figures = BTreeMap::from([
                    ("change".to_owned(), short_type(e).to_owned()),
                    ("by".to_owned(), by),
                    ("privileged".to_owned(), privileged.to_string()),
                    ("detail".to_owned(), m.reason.clone()),
                ]);
                let subject = Subject {
                    principal_id: m.user_id.clone(),
                    ..Subject::default()
                };
                self.raise_as(
                    txn,
                    rule,
                    &format!("{key}:{}", m.user_id),
                    subject,
                    std::slice::from_ref(&e.id),
                    figures,
                    severity,
                )
                .await?;
            }
            "EligibilityGranted" | "EligibilityUpdated" | "ActiveAssignmentGranted" | "ActiveAssignmentUpdated" => {
                let a: ev::AssignmentChanged = decode(e)?;
                if !privileged(txn, &a.role_id, &a.scope, self.now()).await? {
                    return Ok(());
                }
                let end = a.end_time.as_ref().map(from_timestamp);
                let since = a.start_time.as_ref().map(from_timestamp).unwrap_or(at);
                store::upsert_privileged(
                    txn,
                    &store::Privileged {
                        assignment_id: &a.assignment_id,
                        kind: &a.kind,
                        principal_id: &a.principal_id,
                        role_id: &a.role_id,
                        scope: &a.scope,
                        end_at: end,
                        since,
                    },
                )
                .await?;
                self.check_mfa_failures(txn, &a.principal_id, self.now(), false).await?;
                if a.justification.starts_with("bootstrap:") {
                    store::add_break_glass(txn, &a.principal_id).await?;
                    // Identity's and assignment's streams are read independently: a sign-in
                    // judged before this grant counts once the grant arrives.
                    if store::last_sign_in(txn, &a.principal_id)
                        .await?
                        .is_some_and(|t| t >= since)
                    {
                        self.break_glass_used(txn, &a.principal_id, &a.principal_name, &e.id)
                            .await?;
                    }
                }
                let key = format!("permanent:{}", a.assignment_id);
                if a.kind == "active" && end.is_none() {
                    let figures = BTreeMap::from([("role_name".to_owned(), a.role_name.clone())]);
                    let subject = Subject {
                        principal_id: a.principal_id.clone(),
                        role_id: a.role_id.clone(),
                        scope: a.scope.clone(),
                    };
                    self.raise(
                        txn,
                        rules::PERMANENT_PRIVILEGED,
                        &key,
                        subject,
                        std::slice::from_ref(&e.id),
                        figures,
                    )
                    .await?;
                } else {
                    self.clear(txn, &key, "the assignment has an end now").await?;
                }
                self.check_global_admins(txn, &e.id).await?;
            }
            "EligibilityRemoved" | "ActiveAssignmentRemoved" => {
                let a: ev::AssignmentChanged = decode(e)?;
                store::forget_privileged(txn, &a.assignment_id).await?;
                self.clear(txn, &format!("permanent:{}", a.assignment_id), "the assignment ended")
                    .await?;
                self.check_global_admins(txn, &e.id).await?;
            }
            "RoleActivated" => {
                let a: ev::RoleActivated = decode(e)?;
                // Frequent activation is about any role; the counts only about privileged ones.
                if privileged(txn, &a.role_id, &a.scope, self.now()).await? {
                    store::upsert_privileged(
                        txn,
                        &store::Privileged {
                            assignment_id: &a.assignment_id,
                            kind: "activation",
                            principal_id: &a.principal_id,
                            role_id: &a.role_id,
                            scope: &a.scope,
                            end_at: a.end_time.as_ref().map(from_timestamp),
                            since: a.start_time.as_ref().map(from_timestamp).unwrap_or(at),
                        },
                    )
                    .await?;
                    self.check_global_admins(txn, &e.id).await?;
                }
                let s = self.settings(txn, rules::FREQUENT_ACTIVATION).await?;
                let recent = store::activations_since(
                    txn,
                    &a.assignment_id,
                    &a.principal_id,
                    &a.role_id,
                    at,
                    &e.id,
                    at - s.get("window_hours") * 3_600_000,
                )
                .await?;
                if recent.len() as i64 >= s.get("count") {
                    let figures = BTreeMap::from([
                        ("activations".to_owned(), recent.len().to_string()),
                        ("window_hours".to_owned(), s.get("window_hours").to_string()),
                    ]);
                    self.raise(
                        txn,
                        rules::FREQUENT_ACTIVATION,
                        &format!("frequent:{}:{}", a.principal_id, a.role_id),
                        Subject {
                            principal_id: a.principal_id,
                            role_id: a.role_id,
                            scope: a.scope,
                        },
                        &recent,
                        figures,
                    )
                    .await?;
                }
            }
            "RoleDeactivated" => {
                let a: ev::RoleDeactivated = decode(e)?;
                store::forget_privileged(txn, &a.assignment_id).await?;
                self.check_global_admins(txn, &e.id).await?;
            }
            "UnmanagedGrantDetected" => {
                let g: ev::UnmanagedGrantDetected = decode(e)?;
                let figures = BTreeMap::from([("system".to_owned(), g.system.clone())]);
                self.raise(
                    txn,
                    rules::UNMANAGED_GRANT,
                    &format!("unmanaged:{}:{}:{}:{}", g.system, g.principal_id, g.role_id, g.scope),
                    Subject {
                        principal_id: g.principal_id,
                        role_id: g.role_id,
                        scope: g.scope,
                    },
                    std::slice::from_ref(&e.id),
                    figures,
                )
                .await?;
            }
            "RoleDefinitionCreated" => {
                let r: ev::RoleDefinitionCreated = decode(e)?;
                store::upsert_custom_role(txn, &r.role_id, r.privileged).await?;
            }
            "RoleDefinitionUpdated" => {
                let r: ev::RoleDefinitionUpdated = decode(e)?;
                store::upsert_custom_role(txn, &r.role_id, r.privileged).await?;
                self.role_weakened(txn, e, &r).await?;
            }
            "RoleDefinitionDeleted" => {
                let r: ev::RoleDefinitionDeleted = decode(e)?;
                store::forget_custom_role(txn, &r.role_id).await?;
            }
            "PolicyUpdated" => {
                let p: ev::PolicyUpdated = decode(e)?;
                if p.weakened {
                    self.policy_weakened(txn, e, &p).await?;
                }
                let key = format!("no_mfa:{}:{}", p.role_id, p.scope);
                if !p.activation_requires_mfa && privileged(txn, &p.role_id, &p.scope, self.now()).await? {
                    let subject = Subject {
                        role_id: p.role_id,
                        scope: p.scope,
                        ..Subject::default()
                    };
                    self.raise(
                        txn,
                        rules::ACTIVATION_WITHOUT_MFA,
                        &key,
                        subject,
                        std::slice::from_ref(&e.id),
                        BTreeMap::new(),
                    )
                    .await?;
                } else {
                    self.clear(txn, &key, "activation requires MFA again").await?;
                }
            }
            "ApprovalCreated" => {
                let a: ev::ApprovalCreated = decode(e)?;
                store::approval_created(txn, &a.approval_id, at).await?;
            }
            "ApprovalDecisionRecorded" => {
                let d: ev::ApprovalDecisionRecorded = decode(e)?;
                let Some(created) = store::approval_created_at(txn, &d.approval_id).await? else {
                    return Ok(());
                };
                let s = self.settings(txn, rules::RUBBER_STAMP).await?;
                let took_ms = at - created;
                // A bot (a service principal the policy names as approver) decides in
                // milliseconds by design, by the rule it was given: not a rubber stamp.
                let by_bot = d
                    .actor
                    .as_ref()
                    .is_some_and(|a| a.kind == pim_proto::common::v1::PrincipalKind::ServicePrincipal as i32);
                if d.decision == "approve" && !by_bot && took_ms <= s.get("seconds") * 1000 {
                    let approver = d.actor.map(|a| a.principal_id).unwrap_or_default();
                    let figures = BTreeMap::from([
                        ("decided_after_ms".to_owned(), took_ms.to_string()),
                        ("requester_id".to_owned(), d.requester_id.clone()),
                    ]);
                    self.raise(
                        txn,
                        rules::RUBBER_STAMP,
                        &format!("rubber_stamp:{}", d.approval_id),
                        Subject {
                            principal_id: approver,
                            role_id: d.role_id,
                            scope: d.scope,
                        },
                        std::slice::from_ref(&e.id),
                        figures,
                    )
                    .await?;
                }
            }
            "EventRejected" => self.forged(txn, decode(e)?).await?,
            "SelfApprovalAttempted" => {
                let d: ev::ApprovalDecisionRecorded = decode(e)?;
                let figures = BTreeMap::from([("approval_id".to_owned(), d.approval_id.clone())]);
                self.raise(
                    txn,
                    rules::SELF_APPROVAL,
                    &format!("self_approval:{}", d.approval_id),
                    Subject {
                        principal_id: d.requester_id,
                        role_id: d.role_id,
                        scope: d.scope,
                    },
                    std::slice::from_ref(&e.id),
                    figures,
                )
                .await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// One alert per weakening update: who changed which settings of which role, each
    /// setting's value before and after (every change, the weakening ones marked).
    async fn policy_weakened(&self, txn: &DatabaseTransaction, e: &Envelope, p: &ev::PolicyUpdated) -> Result<()> {
        let mut figures: BTreeMap<String, String> = p
            .changes
            .iter()
            .map(|c| {
                let mark = if c.weakens { " (weaker)" } else { "" };
                (c.setting.clone(), format!("{} -> {}{mark}", c.before, c.after))
            })
            .collect();
        let weakened: Vec<&str> = p
            .changes
            .iter()
            .filter(|c| c.weakens)
            .map(|c| c.setting.as_str())
            .collect();
        figures.insert("weakened".into(), weakened.join(","));
        let subject = Subject {
            principal_id: p.actor.as_ref().map(|a| a.principal_id.clone()).unwrap_or_default(),
            role_id: p.role_id.clone(),
            scope: p.scope.clone(),
        };
        let severity = privileged(txn, &p.role_id, &p.scope, self.now())
            .await?
            .then_some("high");
        self.raise_weakened(txn, e, subject, figures, severity).await
    }

    /// One `policy_weakened` alert per change (keyed by its event).
    async fn raise_weakened(
        &self,
        txn: &DatabaseTransaction,
        e: &Envelope,
        subject: Subject,
        figures: BTreeMap<String, String>,
        severity: Option<&str>,
    ) -> Result<()> {
        let key = format!("policy_weakened:{}", e.id);
        self.raise_as(
            txn,
            rules::POLICY_WEAKENED,
            &key,
            subject,
            std::slice::from_ref(&e.id),
            figures,
            severity,
        )
        .await
    }

    /// A privileged custom role that gained permissions, or stopped being privileged, lowers
    /// protection as a weakened policy does: the same alert, with what changed.
    async fn role_weakened(
        &self,
        txn: &DatabaseTransaction,
        e: &Envelope,
        r: &ev::RoleDefinitionUpdated,
    ) -> Result<()> {
        let gained = (r.privileged || r.was_privileged) && !r.permissions_added.is_empty();
        let unmarked = r.was_privileged && !r.privileged;
        if !gained && !unmarked {
            return Ok(());
        }
        let mut figures = BTreeMap::new();
        let mut weakened = Vec::new();
        if gained {
            figures.insert("permissions_added".to_owned(), r.permissions_added.join(" "));
            weakened.push("permissions");
        }
        if unmarked {
            figures.insert("privileged".to_owned(), "on -> off (weaker)".to_owned());
            weakened.push("privileged");
        }
        figures.insert("weakened".to_owned(), weakened.join(","));
        let subject = Subject {
            principal_id: r.actor.as_ref().map(|a| a.principal_id.clone()).unwrap_or_default(),
            role_id: r.role_id.clone(),
            scope: "/".to_owned(),
        };
        self.raise_weakened(txn, e, subject, figures, Some("high")).await
    }

    /// MFA failures of a privileged account within the window, or a lockout.
    async fn check_mfa_failures(
        &self,
        txn: &DatabaseTransaction,
        principal_id: &str,
        at: i64,
        locked: bool,
    ) -> Result<()> {
        let s = self.settings(txn, rules::MFA_FAILURES).await?;
        let failures = store::mfa_failures_since(txn, principal_id, at - s.get("window_minutes") * 60_000).await?;
        if locked || failures.len() as i64 >= s.get("count") {
            let figures = BTreeMap::from([
                ("failures".to_owned(), failures.len().to_string()),
                ("locked_out".to_owned(), locked.to_string()),
            ]);
            let subject = Subject {
                principal_id: principal_id.into(),
                ..Subject::default()
            };
            self.raise(
                txn,
                rules::MFA_FAILURES,
                &format!("mfa_failures:{principal_id}"),
                subject,
                &failures,
                figures,
            )
            .await?;
        }
        Ok(())
    }

    async fn break_glass_used(
        &self,
        txn: &DatabaseTransaction,
        principal_id: &str,
        name: &str,
        event_id: &str,
    ) -> Result<()> {
        let figures = BTreeMap::from([("user_name".to_owned(), name.to_owned())]);
        self.raise(
            txn,
            rules::BREAK_GLASS_USED,
            &format!("break_glass:{principal_id}"),
            Subject {
                principal_id: principal_id.into(),
                role_id: pim_proto::catalogue::GLOBAL_ADMINISTRATOR.into(),
                scope: "/".into(),
            },
            &[event_id.to_owned()],
            figures,
        )
        .await
    }

    /// Entra's two-condition rule: at least N Global Administrators, and at least P % of the
    /// active privileged assignments. Resolves itself when either no longer holds.
    async fn check_global_admins(&self, txn: &DatabaseTransaction, event_id: &str) -> Result<()> {
        let s = self.settings(txn, rules::TOO_MANY_GLOBAL_ADMINS).await?;
        self.judge_global_admins(txn, event_id, &s).await
    }

    /// The Global Administrator count judged under settings `s`.
    async fn judge_global_admins(&self, txn: &DatabaseTransaction, event_id: &str, s: &Settings) -> Result<()> {
        let (admins, total) = store::active_counts(txn, pim_proto::catalogue::GLOBAL_ADMINISTRATOR, self.now()).await?;
        let key = "too_many_global_admins";
        // A re-judgement after a settings change has no event behind it.
        let evidence: Vec<String> = (!event_id.is_empty())
            .then(|| event_id.to_owned())
            .into_iter()
            .collect();
        if admins >= s.get("min_count") && admins * 100 >= s.get("min_percent") * total.max(1) {
            let figures = BTreeMap::from([
                ("global_admins".to_owned(), admins.to_string()),
                ("privileged_assignments".to_owned(), total.to_string()),
            ]);
            let subject = Subject {
                role_id: pim_proto::catalogue::GLOBAL_ADMINISTRATOR.into(),
                scope: "/".into(),
                ..Subject::default()
            };
            self.raise(txn, rules::TOO_MANY_GLOBAL_ADMINS, key, subject, &evidence, figures)
                .await
        } else {
            self.clear(txn, key, "the Global Administrator count is back under the threshold")
                .await
        }
    }

    /// Entry `entry_id` of `pim.deadletter`: some service could not process event `e`. Every
    /// replica reads the entry; the first to take it raises (or counts) the alert.
    pub async fn dead_lettered(&self, entry_id: &str, e: &Envelope) -> Result<()> {
        let txn = self.db.begin().await?;
        if !store::first_sight_of_dead_letter(&txn, entry_id, self.now()).await? {
            return Ok(());
        }
        let figures = BTreeMap::from([
            ("event_type".to_owned(), e.r#type.clone()),
            ("source".to_owned(), e.source.clone()),
        ]);
        let subject = Subject {
            principal_id: e.subject.clone(),
            ..Subject::default()
        };
        self.raise(
            &txn,
            rules::DEAD_LETTERED,
            &format!("dead_letter:{}", e.id),
            subject,
            std::slice::from_ref(&e.id),
            figures,
        )
        .await?;
        txn.commit().await?;
        self.committed();
        Ok(())
    }

    /// Audit recorded an entry of `stream` that its owner did not sign: one live alert per
    /// stream, counting the entries, with each refusal's id as evidence. The entry's claims
    /// (subject, type) are figures, never the alert's subject.
    async fn forged(&self, txn: &DatabaseTransaction, r: ev::EventRejected) -> Result<()> {
        let figures = BTreeMap::from([
            ("stream".to_owned(), r.stream.clone()),
            ("entry_id".to_owned(), r.entry_id),
            ("reason".to_owned(), r.reason),
            ("claimed_type".to_owned(), r.claimed_type),
            ("claimed_subject".to_owned(), r.claimed_subject),
        ]);
        self.raise(
            txn,
            rules::FORGED_EVENT,
            &format!("forged_event:{}", r.stream),
            Subject::default(),
            &[r.refusal_id],
            figures,
        )
        .await
    }

    /// The rules time triggers: privileged holders who have not signed in for `days`, and
    /// eligibilities not activated for `days`. Alerts whose condition cleared are resolved.
    /// Returns how many alerts it raised or updated.
    pub async fn scan_once(&self) -> Result<usize> {
        let now = self.now();
        let txn = self.db.begin().await?;
        let mut raised = 0;
        let stale = self.settings(&txn, rules::STALE_ACCOUNTS).await?;
        for (principal, quiet_since) in store::privileged_holders_quiet_since(&txn, now).await? {
            let key = format!("stale:{principal}");
            let days = (now - quiet_since) / 86_400_000;
            if days >= stale.get("days") {
                let figures = BTreeMap::from([("days_without_sign_in".to_owned(), days.to_string())]);
                let subject = Subject {
                    principal_id: principal,
                    ..Subject::default()
                };
                self.raise(&txn, rules::STALE_ACCOUNTS, &key, subject, &[], figures)
                    .await?;
                raised += 1;
            } else {
                self.clear(&txn, &key, "signed in within the rule's days").await?;
            }
        }
        let unused = self.settings(&txn, rules::UNUSED_ROLES).await?;
        for (principal, role, unused_since) in store::eligibilities_unused_since(&txn, now).await? {
            let key = format!("unused:{principal}:{role}");
            let days = (now - unused_since) / 86_400_000;
            if days >= unused.get("days") {
                let figures = BTreeMap::from([("days_without_activation".to_owned(), days.to_string())]);
                let subject = Subject {
                    principal_id: principal,
                    role_id: role,
                    scope: String::new(),
                };
                self.raise(&txn, rules::UNUSED_ROLES, &key, subject, &[], figures)
                    .await?;
                raised += 1;
            } else {
                self.clear(&txn, &key, "the role was activated").await?;
            }
        }
        txn.commit().await?;
        if raised > 0 {
            self.committed();
        }
        Ok(raised)
    }

    /// Runs the scan every hour until `stop`.
    pub fn spawn_scans(&self, mut stop: tokio::sync::watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                if let Err(err) = this.scan_once().await {
                    tracing::warn!(error = %err.message(), "alert scan failed");
                }
            }
        })
    }

    /// Acknowledge, dismiss or resolve (Security Administrators and above); dismissing and
    /// resolving need a reason.
    pub async fn set_status(&self, caller: &Caller, id: &str, status: &str, reason: &str) -> Result<AlertRow> {
        require(self.access.as_ref(), caller, permissions::ALERTS_MANAGE, "/").await?;
        let reason = reason.trim();
        if reason.len() > 1000 {
            return Err(Error::invalid("reason", "at most 1000 characters"));
        }
        if reason.contains('\0') {
            return Err(Error::invalid("reason", "must not contain NUL characters"));
        }
        if status != "acknowledged" && reason.is_empty() {
            return Err(Error::invalid("reason", "say why"));
        }
        let txn = self.db.begin().await?;
        let mut alert = store::get(&txn, id, true)
            .await?
            .ok_or_else(|| Error::NotFound(format!("alert {id}")))?;
        if matches!(alert.status.as_str(), "dismissed" | "resolved") {
            return Err(Error::FailedPrecondition(format!("alert is already {}", alert.status)));
        }
        alert.status = status.into();
        alert.status_changed_by = caller.principal_id.clone();
        alert.status_reason = reason.into();
        alert.rev = store::next_rev(&txn).await?;
        store::save(&txn, &alert, false).await?;
        self.publish(&txn, &alert, "AlertStatusChanged", Some(caller.actor()))
            .await?;
        txn.commit().await?;
        self.committed();
        Ok(alert)
    }

    pub fn committed(&self) {
        self.outbox.wake();
        self.changed.send_modify(|n| *n += 1);
    }

    /// Changes a rule's settings; the change is an event.
    pub async fn update_rule(
        &self,
        caller: &Caller,
        rule_id: &str,
        enabled: Option<bool>,
        severity: Option<&str>,
        changes: &BTreeMap<String, String>,
    ) -> Result<Settings> {
        let def = rules::rule(rule_id).ok_or_else(|| Error::NotFound(format!("rule {rule_id}")))?;
        let values = rules::check_values(def, changes).map_err(|m| Error::invalid("settings", &m))?;
        require(self.access.as_ref(), caller, permissions::ALERTS_MANAGE, "/").await?;
        let txn = self.db.begin().await?;
        let mut s = self.stored_settings(&txn, rule_id).await?;
        if let Some(enabled) = enabled {
            s.enabled = enabled;
        }
        if let Some(severity) = severity {
            s.severity = severity.into();
        }
        s.values.extend(values);
        let stored = serde_json::to_string(&s.values).map_err(anyhow::Error::from)?;
        store::save_rule_settings(
            &txn,
            rule_id,
            s.enabled,
            &s.severity,
            &stored,
            &caller.principal_id,
            self.now(),
        )
        .await?;
        let event = ev::RuleSettingsUpdated {
            actor: Some(caller.actor()),
            rule_id: rule_id.into(),
            enabled: s.enabled,
        };
        self.outbox
            .enqueue(
                &txn,
                streams::ALERTING,
                &envelope("pim.alerting", "RuleSettingsUpdated", rule_id, &event),
            )
            .await?;
        // A standing condition is judged again under the new thresholds at once.
        if rule_id == rules::TOO_MANY_GLOBAL_ADMINS {
            self.judge_global_admins(&txn, "", &s).await?;
        }
        txn.commit().await?;
        self.settings.forget(rule_id);
        self.committed();
        Ok(s)
    }
}
