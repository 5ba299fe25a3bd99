//! Identity's events, as assignment follows them: the membership projection kept, what a
//! former member activated through the group ended, a deleted group's assignments ended, and
//! which users may sign in (the last-Global-Administrator protection counts only those).
//! Identity's word on a role-assignable group's members (or its deletion) is also given
//! directly once committed, so the access it ends does not wait for Redis: the event itself,
//! signed as identity's relay signs it, applied by the same consumer as the stream's copy
//! (whichever comes second finds it applied).

use std::sync::Arc;

use sea_orm::DatabaseTransaction;

use pim_proto::events::v1::{GroupDeleted, GroupMembershipChanged};
use pim_runtime::events::{Envelope, EventHandler, EventType, Inbox, decode, event_type, streams};

use crate::assignments::Assignments;
use crate::error::{Error, Result};
use crate::groups::{MembershipChange, Memberships};
use crate::store;

/// Keeps the projection table from identity's events, and ends a deleted group's
/// assignments and every access to it.
pub struct IdentityEvents(pub Assignments);

#[async_trait::async_trait]
impl EventHandler for IdentityEvents {
    fn consumer(&self) -> &str {
        "assignment"
    }

    fn streams(&self) -> Vec<&'static str> {
        vec![streams::IDENTITY]
    }

    fn wants(&self, event_type: Option<EventType>) -> bool {
        matches!(
            event_type,
            Some(
                EventType::GroupMemberAdded
                    | EventType::GroupMemberRemoved
                    | EventType::GroupDeleted
                    | EventType::UserDisabled
                    | EventType::UserDisabledAnnounced
                    | EventType::UserEnabled
                    | EventType::UserDeleted
                    | EventType::ServicePrincipalDisabled
            )
        )
    }

    /// A membership that ends, or a deleted group, ends the access it gave.
    fn ends_access(&self) -> bool {
        true
    }

    async fn handle(&self, txn: &DatabaseTransaction, envelope: &Envelope) -> anyhow::Result<()> {
        if let Some(change) = Memberships::user_state_change(envelope)? {
            self.0
                .apply_user_state(txn, change)
                .await
                .map_err(crate::error::Error::into_anyhow)?;
            return Ok(());
        }
        if event_type(envelope) == Some(EventType::GroupDeleted) {
            let e: GroupDeleted = decode(envelope)?;
            return self
                .0
                .end_group(txn, &e.group_id, e.actor)
                .await
                .map_err(crate::error::Error::into_anyhow);
        }
        if let Some(change) = Memberships::change(envelope)? {
            // A change older than the one the projection reflects (told late, out of order)
            // changes nothing.
            let applied =
                store::set_group_membership(txn, &change.group, &change.member, change.is_member, change.version)
                    .await?;
            if applied && !change.is_member {
                // What the member activated from the group's eligibilities ends with the
                // membership (settled in `after_commit`).
                let actor = decode::<GroupMembershipChanged>(envelope)?.actor;
                let now = self.0.now();
                let _ = self
                    .0
                    .bound_to_eligibility(txn, vec![change.member], actor, now)
                    .await
                    .map_err(crate::error::Error::into_anyhow)?;
            }
        }
        Ok(())
    }

    async fn after_commit(&self, envelope: &Envelope) {
        if let Ok(Some(change)) = Memberships::user_state_change(envelope) {
            self.0.follow_user_state(change).await;
            return;
        }
        if event_type(envelope) == Some(EventType::GroupDeleted) {
            // The index follows what was committed, read back from the database.
            if let Ok(e) = decode::<GroupDeleted>(envelope)
                && let Err(err) = self.0.reindex_group(&e.group_id).await
            {
                tracing::warn!(event_id = %envelope.id, error = %err, "a deleted group's assignments could not be re-indexed");
            }
            return;
        }
        // What a former member activated through the group leaves the index first, so no
        // check sees it still active once the membership is gone.
        if let Ok(Some(MembershipChange {
            member,
            is_member: false,
            ..
        })) = Memberships::change(envelope)
            && let Err(err) = self.0.reindex_principals(&[member]).await
        {
            tracing::warn!(event_id = %envelope.id, error = %err, "a former member's activations could not be re-indexed");
        }
        // Memory takes the database's word, with its version: a change the database refused
        // (told late) does not reach memory either.
        let Ok(Some(change)) = Memberships::change(envelope) else {
            return;
        };
        match store::group_membership(&self.0.db, &change.group, &change.member).await {
            Ok(now) => self
                .0
                .memberships
                .set_as_of(&change.group, &change.member, now.member, now.version),
            // The database cannot say: a removal is taken from the event's word (failing
            // closed), an addition waits for the next change or the identity stream's tail.
            Err(err) if !change.is_member => {
                tracing::warn!(event_id = %envelope.id, error = %err, "reading a group membership failed; taking the removal as told");
                self.0
                    .memberships
                    .set_as_of(&change.group, &change.member, false, change.version);
            }
            Err(err) => {
                tracing::warn!(event_id = %envelope.id, error = %err, "reading a group membership failed; the addition waits");
            }
        }
    }
}

impl Assignments {
    /// Applies identity's event `envelope` now; whether it was new here.
    pub async fn apply_directory_event(&self, envelope: Envelope) -> Result<bool> {
        // The signature is the authority, not the caller: a replayed event changes nothing
        // (the inbox and membership versions), a forged one is refused.
        self.event_keys
            .verify(streams::IDENTITY, &envelope)
            .map_err(|refused| {
                Error::PermissionDenied(format!(
                    "not an event identity signed for its stream ({})",
                    refused.code()
                ))
            })?;
        if !matches!(
            event_type(&envelope),
            Some(EventType::GroupMemberAdded | EventType::GroupMemberRemoved | EventType::GroupDeleted)
        ) {
            return Err(Error::invalid(
                "envelope",
                "only a group's membership change or deletion is applied directly",
            ));
        }
        let inbox = Inbox::new(self.db.clone(), Arc::new(IdentityEvents(self.clone())));
        inbox.apply(&envelope).await.map_err(Error::Internal)
    }
}
