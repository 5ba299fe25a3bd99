//! Identity's word on a role-assignable group's members (or its deletion), given directly
//! once committed, so the access it ends does not wait for Redis: the event itself, signed as
//! identity's relay signs it, applied by the same consumer as the stream's copy (whichever
//! comes second finds it applied).

use std::sync::Arc;

use prost::Message;

use pim_runtime::events::{Envelope, EventType, Inbox, event_type, streams};

use super::Assignments;
use crate::error::{Error, Result};
use crate::identity_events::IdentityEvents;

impl Assignments {
    /// Applies identity's event `encoded` (an [`Envelope`]) now; whether it was new here.
    pub async fn apply_directory_event(&self, encoded: &[u8]) -> Result<bool> {
        let envelope = Envelope::decode(encoded)
            .map_err(|_| Error::invalid("envelope", "not an encoded pim.events.v1.Envelope"))?;
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
