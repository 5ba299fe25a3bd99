//! A principal disabled (or enabled again), as the directory tells it: by its events, or, for
//! a disable, by identity's call once the disable is committed, so it holds even while the
//! events wait for Redis. Both ways apply it here, once: the later told changes nothing.

use sea_orm::{DatabaseTransaction, TransactionTrait};

use pim_proto::common::v1::PrincipalKind;
use pim_runtime::access::permissions;
use pim_runtime::auth::Caller;

use super::Assignments;
use crate::domain::Scope;
use crate::error::{Error, Result};
use crate::groups::UserStateChange;
use crate::store;

impl Assignments {
    /// Records a principal's state as the directory told it (a state older than the one
    /// recorded changes nothing). A principal disabled holds nothing, and what they asked for
    /// waits for nobody any more: it is canceled.
    /// Returns the requests it canceled.
    pub(crate) async fn apply_user_state(
        &self,
        txn: &DatabaseTransaction,
        change: UserStateChange,
    ) -> Result<Vec<String>> {
        let applied = store::set_user_enabled(txn, &change.user, change.enabled, change.as_of).await?;
        if !applied || change.enabled {
            return Ok(Vec::new());
        }
        self.cancel_waiting_requests(
            txn,
            &change.user,
            "canceled: the requester was disabled or deleted",
            change.actor,
        )
        .await
    }

    /// After [`Self::apply_user_state`] committed: memory takes the database's word.
    pub(crate) async fn follow_user_state(&self, change: UserStateChange) {
        let told = std::collections::HashMap::from([(change.user, change.as_of)]);
        self.memberships.follow_user_states(&self.db, &told).await;
    }

    /// A disable identity committed, applied now rather than when its event arrives (see the
    /// module): only where the directory holds the principal disabled, and as of no later
    /// than the moment it was asked, so an enable the directory makes after that outranks it
    /// (a time the caller gives may only be earlier: the disable's own).
    pub async fn apply_principal_disabled(
        &self,
        caller: &Caller,
        principal_id: &str,
        as_of: Option<i64>,
    ) -> Result<()> {
        if uuid::Uuid::parse_str(principal_id).is_err() {
            return Err(Error::invalid("principal_id", "a principal id (UUID)"));
        }
        let may_users = self.authorize(caller, permissions::USERS_MANAGE, &Scope::root()).await;
        let may_apps = self
            .authorize(caller, permissions::SERVICE_PRINCIPALS_MANAGE, &Scope::root())
            .await;
        for refused in [&may_users, &may_apps] {
            if let Err(fault) = refused
                && !matches!(fault, Error::PermissionDenied(_))
            {
                tracing::warn!(error = %fault, "a permission check for a disable told directly failed");
                return Err(Error::Unavailable(
                    "cannot tell yet whether you may do this; try again".into(),
                ));
            }
        }
        if may_users.is_err() && may_apps.is_err() {
            return Err(Error::PermissionDenied(format!(
                "requires permission {} or {} at scope /",
                permissions::USERS_MANAGE,
                permissions::SERVICE_PRINCIPALS_MANAGE
            )));
        }
        let asked_at = pim_runtime::db::now_ms();
        let (principal, enabled) = self.identity.any_principal(caller, principal_id).await?;
        if enabled {
            return Err(Error::FailedPrecondition(format!(
                "the directory holds principal {principal_id} enabled"
            )));
        }
        match principal.kind {
            PrincipalKind::ServicePrincipal => may_apps?,
            _ => may_users?,
        }
        let change = UserStateChange {
            user: principal_id.to_owned(),
            actor: Some(caller.actor()),
            enabled: false,
            as_of: as_of.unwrap_or(asked_at).min(asked_at),
        };
        let txn = self.db.begin().await?;
        let canceled = self.apply_user_state(&txn, change.clone()).await?;
        txn.commit().await?;
        self.committed(&canceled.iter().map(String::as_str).collect::<Vec<_>>());
        self.follow_user_state(change).await;
        Ok(())
    }
}
