//! Sessions after sign-in: refreshing one (its refresh token rotated), signing out, and
//! ending them: all of a principal's (disabled, deleted, a secret rotated), a user's but the
//! caller's own (an administrator's reset), the caller's others (their own credentials
//! changed), one whose spent refresh token came back. Each ends with its `SessionRevoked`,
//! which every process's verifier applies.

use sea_orm::TransactionTrait;

use pim_proto::common::v1::{Actor, PrincipalKind};
use pim_proto::events::v1 as ev;
use pim_runtime::auth::Caller;
use pim_runtime::db::now_ms;
use pim_runtime::events::EventType;

use pim_runtime::config::SigninMfa;

use crate::directory::{ClientInfo, Directory, PENDING_SESSION_MS, REFRESH_RETRY_MS, Session, actor, refresh_hash};
use crate::error::{Error, Result};
use crate::tokens::TokenSubject;
use crate::{credentials, limiter, store};

/// The most live sessions one user has: a sign-in past them ends the oldest.
pub const MAX_LIVE_SESSIONS: u32 = 100;

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

    /// Refuses a principal's tokens issued up to `at` (ms), from now on: those a client secret
    /// got before it was rotated, when the overlap that kept it ends.
    pub(crate) async fn revoke_tokens_up_to<C: sea_orm::ConnectionTrait>(
        &self,
        txn: &C,
        by: Actor,
        principal_id: &str,
        at: i64,
        reason: &str,
    ) -> Result<()> {
        let event = ev::SessionRevoked {
            actor: Some(by),
            principal_id: principal_id.to_owned(),
            session_id: String::new(),
            reason: reason.into(),
            issued_up_to: Some(pim_runtime::db::to_timestamp(at)),
        };
        self.emit(txn, EventType::SessionRevoked, principal_id, &event).await?;
        store::revoke_principal(txn, principal_id, at).await?;
        Ok(())
    }

    /// Ends the session the tokens a kept client secret got share (a second rotation ends the
    /// kept secret early), each with its `SessionRevoked`; none is spared, the caller's own
    /// included.
    pub(crate) async fn end_kept_secret_sessions<C: sea_orm::ConnectionTrait>(
        &self,
        txn: &C,
        caller: &Caller,
        principal_id: &str,
    ) -> Result<()> {
        for session_id in store::revoke_other_sessions(txn, principal_id, "", now_ms()).await? {
            self.session_revoked(txn, caller.actor(), principal_id, session_id, "client_secret_rotated")
                .await?;
        }
        Ok(())
    }

    /// Ends the client secrets kept past a rotation whose time is over, with the tokens they
    /// got before it (those got during the overlap end with it by themselves).
    pub async fn end_secret_overlaps(&self) -> Result<usize> {
        // Most sweeps find none: asked first, so they take no write lock (SQLite's is the
        // whole database's). The end itself is the one statement below.
        if !store::secret_overlap_ended(&self.db, self.clock.now_ms()).await? {
            return Ok(0);
        }
        let txn = self.db.begin().await?;
        let ended = store::end_secret_overlaps(&txn, self.clock.now_ms()).await?;
        for (principal_id, since) in &ended {
            let by = pim_runtime::auth::system_actor("PIM identity");
            self.revoke_tokens_up_to(&txn, by, principal_id, *since, "client_secret_overlap_ended")
                .await?;
        }
        txn.commit().await?;
        if !ended.is_empty() {
            self.outbox.wake();
        }
        Ok(ended.len())
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

    /// Ends `user`'s oldest live sessions past the newest [`MAX_LIVE_SESSIONS`] (a sign-in
    /// just completed one more), each with its `SessionRevoked` (reason `session_limit`):
    /// someone signing in in a loop fills no table. Sessions waiting for MFA neither count nor
    /// end: a password alone signs nobody out.
    pub(crate) async fn end_sessions_past_limit<C: sea_orm::ConnectionTrait>(
        &self,
        txn: &C,
        user: &Actor,
        now: i64,
    ) -> Result<()> {
        let sessions = store::revoke_sessions_past(txn, &user.principal_id, MAX_LIVE_SESSIONS, PENDING_SESSION_MS, now);
        for session_id in sessions.await? {
            self.session_revoked(txn, user.clone(), &user.principal_id, session_id, "session_limit")
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
            issued_up_to: None,
        };
        self.emit(txn, EventType::SessionRevoked, principal_id, &event).await
    }

    /// A new access token for a live session; the refresh token is replaced (a reused one fails).
    /// A refusal for the session's own reason (signed out or revoked, its user disabled, MFA
    /// required now) is recorded as a failed sign-in of its user, a few times a window per
    /// session; a session that merely ran out, or a token matching none, is not (it names
    /// nobody, and anyone could flood the record).
    pub async fn refresh(&self, refresh_token: &str, client: &ClientInfo) -> Result<Session> {
        let old = refresh_hash(refresh_token.trim());
        let now = now_ms();
        let found = store::session_by_refresh(&self.db, &old).await?;
        if let Some(ended) = found.as_ref().filter(|s| s.revoked_at.is_some() || s.expires_at <= now) {
            if ended.revoked_at.is_some() {
                self.refresh_refused(&ended.id, &ended.principal_id, "refresh_session_ended", client)
                    .await?;
            }
            return Err(Error::BadRefresh);
        }
        let Some(session) = found else {
            // A refresh token spent already, shown again: someone kept a copy (the client
            // keeps only the newest). Whoever holds the session now may be the thief: it ends.
            // Within seconds of its use it is the client's own retry (an answer lost, two
            // calls at once): refused, and nothing more.
            if let Some(spent) = store::spent_refresh(&self.db, &old).await?
                && self.clock.now_ms() - spent.spent_at > REFRESH_RETRY_MS
            {
                self.end_session_of_reused_refresh(&spent.session_id, &spent.principal_id)
                    .await?;
            }
            return Err(Error::BadRefresh);
        };
        let Some(user) = store::find_user(&self.db, &session.principal_id)
            .await?
            .filter(|u| u.enabled)
        else {
            self.refresh_refused(&session.id, &session.principal_id, "refresh_user_disabled", client)
                .await?;
            return Err(Error::BadRefresh);
        };
        // A session from before every user had to enrol MFA goes on only as a sign-in would:
        // a user with no method signs in again, and enrols.
        if self.signin_mfa == SigninMfa::Required && self.confirmed_methods(&user.id).await?.is_empty() {
            self.refresh_refused(&session.id, &user.id, "refresh_mfa_required", client)
                .await?;
            return Err(Error::Unauthenticated(
                "every user must enrol MFA now (PIM_SIGNIN_MFA=required): sign in again, and enrol an authenticator"
                    .into(),
            ));
        }
        let next = credentials::random_secret();
        let txn = self.db.begin().await?;
        if !store::rotate_refresh(&txn, &session.id, &old, &refresh_hash(&next), self.clock.now_ms()).await? {
            return Err(Error::BadRefresh);
        }
        txn.commit().await?;
        let amr = vec!["pwd".to_owned()];
        let subject = TokenSubject {
            principal_id: user.id.clone(),
            kind: PrincipalKind::User,
            name: user.user_name.clone(),
            amr: amr.clone(),
            session_id: session.id.clone(),
            mfa_at: None,
            pending: None,
        };
        let issued = self.keys.issue(&subject, self.token_ttl)?;
        Ok(Session::new(user.id, issued, amr, next))
    }

    /// A refresh of `principal_id`'s session refused for `reason`: a failed sign-in of theirs,
    /// recorded the first three times in the sign-in window for the session.
    async fn refresh_refused(
        &self,
        session_id: &str,
        principal_id: &str,
        reason: &str,
        client: &ClientInfo,
    ) -> Result<()> {
        let now = self.clock.now_ms();
        let key = format!("refresh:{session_id}");
        let (counted, _) = store::count_sign_in_attempt(&self.db, &key, now, now - limiter::WINDOW_MS).await?;
        if counted > 3 {
            return Ok(());
        }
        let name = store::find_user(&self.db, principal_id)
            .await?
            .map(|u| u.user_name)
            .unwrap_or_default();
        self.sign_in_failed(&name, principal_id, reason, client).await
    }

    /// Ends the caller's session (or the one `refresh_token` names, if it is theirs): its
    /// tokens stop verifying everywhere once the event is out. With `everywhere`, every other
    /// session of the caller's ends in the same transaction.
    pub async fn sign_out(&self, caller: &Caller, refresh_token: &str, everywhere: bool) -> Result<()> {
        let session_id = if refresh_token.trim().is_empty() {
            caller.session_id.clone()
        } else {
            match store::session_by_refresh(&self.db, &refresh_hash(refresh_token.trim())).await? {
                Some(s) if s.principal_id == caller.principal_id => s.id,
                _ => return Err(Error::BadRefresh),
            }
        };
        let event = ev::SessionRevoked {
            actor: Some(caller.actor()),
            principal_id: caller.principal_id.clone(),
            session_id: session_id.clone(),
            reason: "signed_out".into(),
            issued_up_to: None,
        };
        let txn = self.db.begin().await?;
        if everywhere {
            self.end_sessions_of(&txn, caller, &caller.principal_id, "signed_out_everywhere")
                .await?;
        }
        store::revoke_session(&txn, &session_id, now_ms()).await?;
        self.emit(&txn, EventType::SessionRevoked, &caller.principal_id, &event)
            .await?;
        txn.commit().await?;
        self.outbox.wake();
        Ok(())
    }
}
