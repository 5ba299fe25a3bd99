//! Drift: what a target system actually grants, compared with what PIM intends. A grant no
//! assignment in force explains is unmanaged: it becomes an `UnmanagedGrantDetected` event
//! (once, when first seen unmanaged) for alerting ("roles assigned outside PIM") and audit,
//! and an `UnmanagedGrantCleared` once a report no longer lists it or an assignment explains
//! it (alerting resolves its alert).

use sea_orm::TransactionTrait;

use pim_proto::events::v1 as ev;
use pim_runtime::access::permissions;
use pim_runtime::auth::Caller;
use pim_runtime::events::EventType;

use crate::assignments::Assignments;
use crate::domain::Scope;
use crate::error::{Error, Result};
use crate::store::{self, ObservedGrant};

pub const MAX_REPORTED: usize = 100_000;

/// One grant as a connector reports it.
pub struct Reported {
    pub principal_id: String,
    pub role: String,
    pub scope: String,
}

impl Assignments {
    /// Replaces `system`'s observed grants with `grants`; returns the unmanaged ones.
    pub async fn report_observed(
        &self,
        caller: &Caller,
        system: &str,
        grants: Vec<Reported>,
    ) -> Result<Vec<ObservedGrant>> {
        self.authorize(caller, permissions::RECONCILE_REPORT, &Scope::root())
            .await?;
        let system = system.trim();
        if system.is_empty() || system.chars().count() > 100 {
            return Err(Error::invalid("system", "1 to 100 characters"));
        }
        if grants.len() > MAX_REPORTED {
            return Err(Error::invalid("grants", format!("at most {MAX_REPORTED} per report")));
        }
        let now = self.now();
        let mut observed = Vec::with_capacity(grants.len());
        for (i, g) in grants.into_iter().enumerate() {
            let principal_id = g.principal_id.trim();
            if principal_id.is_empty() {
                return Err(Error::invalid("grants.principal_id", format!("grant {i}: required")));
            }
            let role = self
                .roles
                .find(g.role.trim())
                .ok_or_else(|| Error::NotFound(format!("role {} (grant {i})", g.role.trim())))?;
            let scope = Scope::parse(&g.scope)?;
            let scopes = scope.with_ancestors();
            let managed = self
                .index
                .current(principal_id, now)
                .iter()
                .any(|(_, grant)| grant.role_id == role.id && scopes.contains(&grant.scope));
            observed.push(ObservedGrant {
                system: system.into(),
                principal_id: principal_id.into(),
                role_id: role.id,
                scope: scope.as_str().into(),
                managed,
            });
        }
        let report_id = uuid::Uuid::now_v7().to_string();
        let txn = self.db.begin().await?;
        store::begin_report(&txn, system, &report_id, now).await?;
        for g in &observed {
            let known_unmanaged = store::upsert_observed(&txn, g, &report_id, now).await?;
            if !g.managed && !known_unmanaged {
                let event = ev::UnmanagedGrantDetected {
                    system: g.system.clone(),
                    principal_id: g.principal_id.clone(),
                    role_id: g.role_id.clone(),
                    scope: g.scope.clone(),
                };
                self.emit(&txn, EventType::UnmanagedGrantDetected, &g.principal_id, &event)
                    .await?;
            } else if g.managed && known_unmanaged {
                self.cleared(&txn, g, "managed").await?;
            }
        }
        for g in store::forget_unreported(&txn, system, &report_id).await? {
            self.cleared(&txn, &g, "unreported").await?;
        }
        txn.commit().await?;
        self.outbox.wake();
        Ok(observed.into_iter().filter(|g| !g.managed).collect())
    }

    /// Tells that `g`, once unmanaged, no longer is: `unreported` or `managed`.
    async fn cleared(&self, txn: &sea_orm::DatabaseTransaction, g: &ObservedGrant, reason: &str) -> Result<()> {
        let event = ev::UnmanagedGrantCleared {
            system: g.system.clone(),
            principal_id: g.principal_id.clone(),
            role_id: g.role_id.clone(),
            scope: g.scope.clone(),
            reason: reason.into(),
        };
        self.emit(txn, EventType::UnmanagedGrantCleared, &g.principal_id, &event)
            .await
    }

    pub async fn unmanaged(&self, caller: &Caller) -> Result<Vec<ObservedGrant>> {
        self.authorize(caller, permissions::ASSIGNMENTS_READ, &Scope::root())
            .await?;
        Ok(store::unmanaged_grants(&self.db).await?)
    }
}
