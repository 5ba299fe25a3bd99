//! AlertService over gRPC: readers of alerts list, get and stream them; Security
//! Administrators and above change their status and the rules' settings.

use std::collections::BTreeMap;
use std::time::Duration;

use tonic::{Request, Response, Status};

use pim_proto::alerting::v1 as pb;
use pim_proto::alerting::v1::alert_service_server::AlertService;
use pim_runtime::access::{permissions, require};
use pim_runtime::auth::{Caller, caller};
use pim_runtime::db::to_timestamp;
use pim_runtime::grpc::{BoxStream, cursor, internal, invalid_argument};

use crate::alerts::Alerts;
use crate::domain::{AlertStatus, Severity};
use crate::rules::{self, Settings};
use crate::store::{self, AlertRow};

const DEFAULT_PAGE: u64 = 50;
const MAX_PAGE: u64 = 500;

/// The least severity a reader asks for; none for Unspecified.
fn severity_from_pb(v: i32) -> Result<Option<Severity>, Status> {
    pb::Severity::try_from(v)
        .map(Severity::from_pb)
        .map_err(|_| invalid_argument("severity", "low, medium, high or critical"))
}

/// The status a reader asks for; none for Unspecified.
fn status_from_pb(v: i32) -> Result<Option<AlertStatus>, Status> {
    pb::AlertStatus::try_from(v)
        .map(AlertStatus::from_pb)
        .map_err(|_| invalid_argument("status", "open, acknowledged, dismissed or resolved"))
}

pub(crate) fn alert_pb(a: AlertRow) -> pb::Alert {
    pb::Alert {
        id: a.id,
        rule_id: a.rule_id,
        severity: a.severity.to_pb() as i32,
        principal_id: a.principal_id,
        role_id: a.role_id,
        scope: a.scope,
        evidence_event_ids: a.evidence,
        figures: a.figures.into_iter().collect(),
        first_seen: Some(to_timestamp(a.first_seen)),
        last_seen: Some(to_timestamp(a.last_seen)),
        count: a.count,
        status: a.status.to_pb() as i32,
        status_changed_by: a.status_changed_by,
        status_reason: a.status_reason,
        dedup_key: a.dedup_key,
    }
}

fn rule_pb(id: &str, s: Settings) -> pb::Rule {
    pb::Rule {
        id: id.into(),
        description: rules::rule(id).map(|r| r.description).unwrap_or_default().into(),
        enabled: s.enabled,
        severity: s.severity.to_pb() as i32,
        settings: s.values.into_iter().map(|(k, v)| (k, v.to_string())).collect(),
    }
}

fn alert_id(raw: &str) -> Result<&str, Status> {
    pim_runtime::grpc::id_field("alert_id", raw, "an alert id")
}

impl Alerts {
    async fn reader(&self, caller: &Caller) -> Result<(), Status> {
        require(self.access.as_ref(), caller, permissions::ALERTS_READ, "/").await
    }

    async fn change(
        &self,
        request: Request<pb::AlertStatusRequest>,
        status: AlertStatus,
    ) -> Result<Response<pb::Alert>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.get_ref();
        let id = alert_id(&r.alert_id)?;
        Ok(Response::new(alert_pb(
            self.set_status(&caller, id, status, &r.reason).await?,
        )))
    }
}

#[tonic::async_trait]
impl AlertService for Alerts {
    async fn list_alerts(
        &self,
        request: Request<pb::ListAlertsRequest>,
    ) -> Result<Response<pb::ListAlertsResponse>, Status> {
        let caller = caller(&request)?.clone();
        self.reader(&caller).await?;
        let r = request.into_inner();
        let min = severity_from_pb(r.min_severity)?;
        let status = status_from_pb(r.status)?;
        let limit = pim_runtime::grpc::page_size(r.page_size, DEFAULT_PAGE, MAX_PAGE)?;
        let mut before = cursor(&r.page_token, "page_token")?;
        let mut alerts = Vec::new();
        loop {
            let page = store::list(&self.db, status, before, limit).await.map_err(internal)?;
            let exhausted = (page.len() as u64) < limit;
            for a in page {
                before = Some(a.rev);
                if min.is_none_or(|min| a.severity >= min) && (alerts.len() as u64) < limit {
                    alerts.push(alert_pb(a));
                }
            }
            if exhausted || alerts.len() as u64 >= limit {
                let next = if exhausted {
                    String::new()
                } else {
                    before.map(|b| b.to_string()).unwrap_or_default()
                };
                return Ok(Response::new(pb::ListAlertsResponse {
                    alerts,
                    next_page_token: next,
                }));
            }
        }
    }

    async fn get_alert(&self, request: Request<pb::GetAlertRequest>) -> Result<Response<pb::Alert>, Status> {
        let caller = caller(&request)?.clone();
        self.reader(&caller).await?;
        let id = alert_id(&request.get_ref().alert_id)?;
        let alert = store::get(&self.db, id, false)
            .await
            .map_err(internal)?
            .ok_or_else(|| pim_runtime::grpc::not_found(&format!("alert {id} not found")))?;
        Ok(Response::new(alert_pb(alert)))
    }

    async fn acknowledge_alert(&self, request: Request<pb::AlertStatusRequest>) -> Result<Response<pb::Alert>, Status> {
        self.change(request, AlertStatus::Acknowledged).await
    }

    async fn dismiss_alert(&self, request: Request<pb::AlertStatusRequest>) -> Result<Response<pb::Alert>, Status> {
        self.change(request, AlertStatus::Dismissed).await
    }

    async fn resolve_alert(&self, request: Request<pb::AlertStatusRequest>) -> Result<Response<pb::Alert>, Status> {
        self.change(request, AlertStatus::Resolved).await
    }

    /// Every change to an alert (of at least the given severity) after the cursor, then each
    /// new one as it happens. Revisions are assigned in commit order, so resuming from the
    /// last cursor received delivers each change exactly once.
    async fn stream_alerts(
        &self,
        request: Request<pb::StreamAlertsRequest>,
    ) -> Result<Response<BoxStream<pb::AlertUpdate>>, Status> {
        let caller = caller(&request)?.clone();
        self.reader(&caller).await?;
        let guard = pim_runtime::streams::Guard::of(&request);
        let r = request.into_inner();
        let min = severity_from_pb(r.min_severity)?;
        let latest = store::latest_rev(&self.db).await.map_err(internal)?;
        let mut after = pim_runtime::grpc::resume_after(&r.cursor, latest, "cursor")?;
        let mut changed = self.changed.subscribe();
        let db = self.db.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let page = match store::changed_after(&db, after, 500).await {
                    Ok(page) => page,
                    Err(err) => {
                        let _ = tx.send(Err(internal(err))).await;
                        return;
                    }
                };
                let more = !page.is_empty();
                for a in page {
                    after = a.rev;
                    if min.is_some_and(|min| a.severity < min) {
                        continue;
                    }
                    let update = pb::AlertUpdate {
                        cursor: a.rev.to_string(),
                        alert: Some(alert_pb(a)),
                    };
                    if tx.send(Ok(update)).await.is_err() {
                        return;
                    }
                }
                if more {
                    continue;
                }
                tokio::select! {
                    r = changed.changed() => if r.is_err() { return },
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        let stream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
        let this = self.clone();
        Ok(Response::new(guard.wrap(stream, move || {
            let (this, caller) = (this.clone(), caller.clone());
            async move { this.reader(&caller).await }
        })))
    }

    async fn list_rules(
        &self,
        request: Request<pb::ListRulesRequest>,
    ) -> Result<Response<pb::ListRulesResponse>, Status> {
        let caller = caller(&request)?.clone();
        self.reader(&caller).await?;
        let mut out = Vec::new();
        for def in rules::RULES {
            out.push(rule_pb(def.id, self.stored_settings(&self.db, def.id).await?));
        }
        Ok(Response::new(pb::ListRulesResponse { rules: out }))
    }

    async fn update_rule_settings(
        &self,
        request: Request<pb::UpdateRuleSettingsRequest>,
    ) -> Result<Response<pb::Rule>, Status> {
        let caller = caller(&request)?.clone();
        let r = request.into_inner();
        let id = r.rule_id.trim();
        if id.is_empty() {
            return Err(invalid_argument("rule_id", "required"));
        }
        let severity = severity_from_pb(r.severity)?;
        let changes: BTreeMap<String, String> = r.settings.into_iter().collect();
        let s = self.update_rule(&caller, id, r.enabled, severity, &changes).await?;
        Ok(Response::new(rule_pb(id, s)))
    }
}
