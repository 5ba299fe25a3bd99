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
    pub(crate) async fn apply_user_state(&self, txn: &DatabaseTransaction, change: UserStateChange) -> Result<()> {
        let applied = store::set_user_enabled(txn, &change.user, change.enabled, change.as_of).await?;
        if applied && !change.enabled {
            self.cancel_waiting_requests(
                txn,
                &change.user,
                "canceled: the requester was disabled or deleted",
                change.actor,
            )
            .await?;
        }
        Ok(())
    }

    /// After [`Self::apply_user_state`] committed: memory takes the database's word.
    pub(crate) async fn follow_user_state(&self, change: UserStateChange) {
        let told = std::collections::HashMap::from([(change.user, change.as_of)]);
        self.memberships.follow_user_states(&self.db, &told).await;
    }

    /// A disable identity committed, applied now rather than when its event arrives (see the
    /// module): only where the directory holds the principal disabled or holds it no more.
    pub async fn apply_principal_disabled(
        &self,
        caller: &Caller,
        principal_id: &str,
        as_of: Option<i64>,
    ) -> Result<()> {
        let kind = match self.identity.any_principal(caller, principal_id).await {
            Ok((_, true)) => {
                return Err(Error::FailedPrecondition(format!(
                    "the directory holds principal {principal_id} enabled"
                )));
            }
            Ok((p, false)) => p.kind,
            Err(Error::NotFound(_)) => PrincipalKind::User,
            Err(err) => return Err(err),
        };
        let permission = match kind {
            PrincipalKind::ServicePrincipal => permissions::SERVICE_PRINCIPALS_MANAGE,
            _ => permissions::USERS_MANAGE,
        };
        self.authorize(caller, permission, &Scope::root()).await?;
        // Ordered by the directory's clock, as its events are; a stamp far ahead would
        // outrank whatever it told next.
        let wall = pim_runtime::db::now_ms();
        let change = UserStateChange {
            user: principal_id.to_owned(),
            actor: Some(caller.actor()),
            enabled: false,
            as_of: as_of.unwrap_or(wall).min(wall + 60_000),
        };
        let txn = self.db.begin().await?;
        self.apply_user_state(&txn, change.clone()).await?;
        txn.commit().await?;
        self.committed(&[]);
        self.follow_user_state(change).await;
        Ok(())
    }
}
