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

use pim_proto::approval::v1::Decision;
use pim_proto::assignment::v1::AssignmentKind;
use pim_proto::common::v1::Actor;
use pim_proto::events::v1 as ev;
use pim_runtime::access::{AccessCheck, permissions, require};
use pim_runtime::auth::Caller;
use pim_runtime::clock::Clock;
use pim_runtime::db::{Db, from_timestamp};
use pim_runtime::error::{Error, Result};
use pim_runtime::events::{Envelope, EventType, Outbox, Source, decode, envelope, short_type, streams};
use pim_runtime::text::{MAX_FREE_TEXT, free_text};

use crate::domain::{AlertStatus, Severity};
use crate::rules::{self, Settings};
use crate::store::{self, AlertRow};

mod evaluate;
mod finding;
mod scans;

pub use finding::detection_finding;

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
        event_type: EventType,
        actor: Option<Actor>,
    ) -> Result<()> {
        let event = ev::AlertEvent {
            actor,
            alert_id: a.id.clone(),
            rule_id: a.rule_id.clone(),
            severity: a.severity.as_str().into(),
            status: a.status.as_str().into(),
            principal_id: a.principal_id.clone(),
            role_id: a.role_id.clone(),
            alert_severity: a.severity.to_pb() as i32,
            alert_status: a.status.to_pb() as i32,
        };
        self.outbox
            .enqueue(
                txn,
                streams::ALERTING,
                &envelope(Source::Alerting, event_type, &a.id, &event),
            )
            .await?;
        self.published.fetch_add(1, SeqCst);
        let description = rules::rule(&a.rule_id).map(|r| r.description).unwrap_or_default();
        let mut finding = envelope(Source::Alerting, EventType::DetectionFinding, &a.id, &event);
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
        severity: Option<Severity>,
    ) -> Result<()> {
        let mut settings = self.settings(txn, rule_id).await?;
        if !settings.enabled {
            return Ok(());
        }
        if let Some(severity) = severity {
            settings.severity = severity;
        }
        let now = self.now();
        let rev = store::next_rev(txn).await?;
        let (mut alert, insert) = match store::live(txn, dedup_key).await? {
            Some(mut a) => {
                a.count += 1;
                a.last_seen = now;
                a.severity = settings.severity;
                (a, false)
            }
            None => (
                AlertRow {
                    id: uuid::Uuid::now_v7().to_string(),
                    rule_id: rule_id.into(),
                    severity: settings.severity,
                    principal_id: subject.principal_id,
                    role_id: subject.role_id,
                    scope: subject.scope,
                    dedup_key: dedup_key.into(),
                    evidence: Vec::new(),
                    figures: BTreeMap::new(),
                    first_seen: now,
                    last_seen: now,
                    count: 1,
                    status: AlertStatus::Open,
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
        self.publish(
            txn,
            &alert,
            if insert {
                EventType::AlertRaised
            } else {
                EventType::AlertUpdated
            },
            None,
        )
        .await
    }

    /// Whether `evidence` would tell nothing new of `dedup_key`: the live alert (or, with none,
    /// the one closed last) holds all of it. A rule judged again on the same facts (as when an
    /// account turns privileged) then neither counts an occurrence nor raises again what
    /// someone closed.
    async fn nothing_new(&self, txn: &DatabaseTransaction, dedup_key: &str, evidence: &[String]) -> Result<bool> {
        let last = match store::live(txn, dedup_key).await? {
            Some(live) => Some(live),
            None => store::last_closed(txn, dedup_key).await?,
        };
        Ok(last.is_some_and(|last| !evidence.is_empty() && evidence.iter().all(|id| last.evidence.contains(id))))
    }

    /// Resolves the live alert with this key: its condition cleared.
    async fn clear(&self, txn: &DatabaseTransaction, dedup_key: &str, why: &str) -> Result<()> {
        let Some(mut alert) = store::live(txn, dedup_key).await? else {
            return Ok(());
        };
        alert.status = AlertStatus::Resolved;
        alert.status_changed_by = "system".into();
        alert.status_reason = why.into();
        alert.last_seen = self.now();
        alert.rev = store::next_rev(txn).await?;
        store::save(txn, &alert, false).await?;
        self.publish(txn, &alert, EventType::AlertStatusChanged, None).await
    }

    /// Acknowledge, dismiss or resolve (Security Administrators and above); dismissing and
    /// resolving need a reason, and someone other than the principal the alert is about.
    pub async fn set_status(&self, caller: &Caller, id: &str, status: AlertStatus, reason: &str) -> Result<AlertRow> {
        require(self.access.as_ref(), caller, permissions::ALERTS_MANAGE, "/").await?;
        let reason = free_text(reason, MAX_FREE_TEXT).map_err(|why| Error::invalid("reason", why))?;
        if status != AlertStatus::Acknowledged && reason.is_empty() {
            return Err(Error::invalid("reason", "say why"));
        }
        let txn = self.db.begin().await?;
        let mut alert = store::get(&txn, id, true)
            .await?
            .ok_or_else(|| Error::NotFound(format!("alert {id}")))?;
        if !alert.principal_id.is_empty() {
            // A refusal below is recorded against whom the alert is about.
            pim_runtime::auth::aimed_at(&alert.principal_id);
        }
        if alert.status.is_closed() {
            return Err(Error::FailedPrecondition(format!("alert is already {}", alert.status)));
        }
        // Nobody closes the case against themselves (acknowledging it keeps it in sight): the
        // alert's principal, nor the requester a decision it flags was for (a rubber stamp).
        let about = [Some(&alert.principal_id), alert.figures.get("requester_id")];
        if status.is_closed()
            && about
                .into_iter()
                .flatten()
                .any(|id| !id.is_empty() && *id == caller.principal_id)
        {
            return Err(Error::PermissionDenied(
                "this alert is about you: another administrator dismisses or resolves it".into(),
            ));
        }
        alert.status = status;
        alert.status_changed_by = caller.principal_id.clone();
        alert.status_reason = reason.into();
        alert.rev = store::next_rev(&txn).await?;
        store::save(&txn, &alert, false).await?;
        self.publish(&txn, &alert, EventType::AlertStatusChanged, Some(caller.actor()))
            .await?;
        txn.commit().await?;
        self.committed();
        Ok(alert)
    }

    /// A rule switched off, its severity lowered or a setting moved the way that sees less
    /// weakens detection: an alert about the
    /// administrator who did it (whom [`Self::set_status`] then keeps from closing it).
    async fn detection_weakened(
        &self,
        txn: &DatabaseTransaction,
        caller: &Caller,
        rule_id: &str,
        before: &Settings,
        after: &Settings,
    ) -> Result<()> {
        let mut figures = BTreeMap::from([("rule".to_owned(), rule_id.to_owned())]);
        if before.enabled && !after.enabled {
            figures.insert("enabled".into(), "true -> false".into());
        }
        if after.severity < before.severity {
            figures.insert("severity".into(), format!("{} -> {}", before.severity, after.severity));
        }
        for (setting, now) in &after.values {
            let was = before.values.get(setting).copied().unwrap_or(*now);
            if rules::weakens(setting, was, *now) {
                figures.insert(setting.clone(), format!("{was} -> {now}"));
            }
        }
        if figures.len() == 1 {
            return Ok(());
        }
        let subject = Subject {
            principal_id: caller.principal_id.clone(),
            role_id: String::new(),
            scope: String::new(),
        };
        let key = format!("{}:{}", rules::DETECTION_WEAKENED, uuid::Uuid::now_v7());
        self.raise(txn, rules::DETECTION_WEAKENED, &key, subject, &[], figures)
            .await
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
        severity: Option<Severity>,
        changes: &BTreeMap<String, String>,
    ) -> Result<Settings> {
        let def = rules::rule(rule_id).ok_or_else(|| Error::NotFound(format!("rule {rule_id}")))?;
        let values = rules::check_values(def, changes).map_err(|m| Error::invalid("settings", &m))?;
        require(self.access.as_ref(), caller, permissions::ALERTS_MANAGE, "/").await?;
        let txn = self.db.begin().await?;
        let before = self.stored_settings(&txn, rule_id).await?;
        let mut s = before.clone();
        if let Some(enabled) = enabled {
            s.enabled = enabled;
        }
        if let Some(severity) = severity {
            s.severity = severity;
        }
        s.values.extend(values);
        // Raised before the change is saved, so switching this very rule off is told too.
        self.detection_weakened(&txn, caller, rule_id, &before, &s).await?;
        let stored = serde_json::to_string(&s.values).map_err(anyhow::Error::from)?;
        store::save_rule_settings(
            &txn,
            rule_id,
            s.enabled,
            s.severity,
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
                &envelope(Source::Alerting, EventType::RuleSettingsUpdated, rule_id, &event),
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
