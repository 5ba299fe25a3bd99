//! Ending sessions: all of a principal's (disabled, deleted, a secret rotated), a user's but
//! the caller's own (an administrator's reset), the caller's others (their own credentials
//! changed), one whose spent refresh token came back. Each ends with its `SessionRevoked`,
//! which every process's verifier applies.

use sea_orm::TransactionTrait;

use pim_proto::common::v1::{Actor, PrincipalKind};
use pim_proto::events::v1 as ev;
use pim_runtime::auth::Caller;
use pim_runtime::db::now_ms;
use pim_runtime::events::EventType;

use crate::directory::{Directory, actor};
use crate::error::Result;
use crate::store;

impl Directory {
    /// Ends every session of a principal (disabled, deleted): their tokens stop verifying everywhere.
    pub(crate) async fn revoke_all_sessions<C: sea_orm::ConnectionTrait>(
        &self,
        txn: &C,
        caller: &Caller,
        principal_id: &str,
        reason: &str,
    ) -> Result<()> {
        // No session named: the principal's tokens issued up to the event's time. The mark
        // kept here is that same instant, so every verifier refuses the same tokens (those
        // issued up to its second), and an enable waits for the same second to end.
        let at = self
            .session_revoked(txn, caller.actor(), principal_id, String::new(), reason)
            .await?;
        store::revoke_sessions_of(txn, principal_id, at).await?;
        store::revoke_principal(txn, principal_id, at).await?;
        Ok(())
    }

    /// Ends the caller's other live sessions, each with its `SessionRevoked`.
    pub(crate) async fn revoke_other_sessions<C: sea_orm::ConnectionTrait>(
        &self,
        txn: &C,
        caller: &Caller,
        reason: &str,
    ) -> Result<()> {
        self.end_sessions_of(txn, caller, &caller.principal_id, reason).await
    }

    /// Ends every live session of user `principal_id` but the caller's own (an administrator
    /// resetting their own credentials stays signed in): each session's tokens stop verifying
    /// everywhere and its refresh token stops working; a new sign-in is not affected.
    pub(crate) async fn end_sessions_of<C: sea_orm::ConnectionTrait>(
        &self,
        txn: &C,
        caller: &Caller,
        principal_id: &str,
        reason: &str,
    ) -> Result<()> {
        for session_id in store::revoke_other_sessions(txn, principal_id, &caller.session_id, now_ms()).await? {
            self.session_revoked(txn, caller.actor(), principal_id, session_id, reason)
                .await?;
        }
        Ok(())
    }

    /// Ends the session a spent refresh token came back for (reuse detection), with its
    /// `SessionRevoked` (reason `refresh_token_reused`) in the audit log; once only.
    pub(crate) async fn end_session_of_reused_refresh(&self, session_id: &str, principal_id: &str) -> Result<()> {
        let txn = self.db.begin().await?;
        if store::revoke_session(&txn, session_id, now_ms()).await? {
            let system = actor("system", PrincipalKind::Unspecified, "PIM (reuse detection)");
            self.session_revoked(
                &txn,
                system,
                principal_id,
                session_id.to_owned(),
                "refresh_token_reused",
            )
            .await?;
        }
        txn.commit().await?;
        self.outbox.wake();
        Ok(())
    }

    async fn session_revoked<C: sea_orm::ConnectionTrait>(
        &self,
        txn: &C,
        by: Actor,
        principal_id: &str,
        session_id: String,
        reason: &str,
    ) -> Result<i64> {
        let event = ev::SessionRevoked {
            actor: Some(by),
            principal_id: principal_id.to_owned(),
            session_id,
            reason: reason.into(),
        };
        self.emit(txn, EventType::SessionRevoked, principal_id, &event).await
    }
}
