//! Audit's consumer: one record per event of every followed stream, and a failure record
//! (and an `EventRejected` event) for every entry refused at the trust boundary.

use sea_orm::DatabaseTransaction;

use pim_runtime::db::now_ms;
use pim_runtime::events::{Envelope, EventHandler, EventType, Outbox, Rejected, Source, streams};

use crate::{records, store};

/// Stores each event of the followed streams once.
pub(crate) struct Ingest {
    pub(crate) correlator: records::Correlator,
    /// For the `EventRejected` events audit publishes (alerting raises forged_event on them).
    pub(crate) outbox: Outbox,
    /// Woken once records are kept, so their webhook deliveries leave at once.
    pub(crate) webhooks: std::sync::Arc<tokio::sync::Notify>,
    /// Queues (and wakes the sender of) notification mail, when PIM_SMTP_URL is set.
    pub(crate) mail: Option<crate::mail::Mailer>,
}

/// Keeps records: named the same way and appended to the chain (`append_all`), and queued for
/// every webhook subscription and Shared Signals stream that wants them; the streams of a
/// receiver they cut off are disabled, each with a record of its own. All in the caller's
/// transaction.
pub(crate) async fn keep(txn: &DatabaseTransaction, records: &mut Vec<store::Record>) -> anyhow::Result<()> {
    let now = now_ms();
    store::append_all(txn, records, now).await?;
    // Queued before the batch's addresses and memberships are learnt: Shared Signals name each
    // record's subjects as they were then (a deleted user by the address it had).
    crate::webhooks::store::enqueue(txn, records, now).await?;
    // Before the batch's memberships are learnt: a group's members as they were.
    let mut disabled = crate::receivers::end_receivers(txn, records, now).await?;
    crate::mail::learn_addresses(txn, records).await?;
    if !disabled.is_empty() {
        store::append_all(txn, &mut disabled, now).await?;
        crate::webhooks::store::enqueue(txn, &disabled, now).await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl EventHandler for Ingest {
    fn consumer(&self) -> &str {
        "audit"
    }

    fn streams(&self) -> Vec<&'static str> {
        vec![
            streams::IDENTITY,
            streams::ASSIGNMENT,
            streams::APPROVAL,
            streams::ALERTING,
        ]
    }

    /// A record's event id is unique, and `append_all` skips ids already stored.
    fn deduplicates_itself(&self) -> bool {
        true
    }

    async fn handle(&self, txn: &DatabaseTransaction, envelope: &Envelope) -> anyhow::Result<()> {
        self.handle_all(txn, &[envelope]).await
    }

    /// One lock of the chain head and one insert for the whole batch.
    async fn handle_all(&self, txn: &DatabaseTransaction, envelopes: &[&Envelope]) -> anyhow::Result<()> {
        let mut records = envelopes
            .iter()
            .map(|e| records::record(e, &self.correlator))
            .collect::<anyhow::Result<Vec<_>>>()?;
        keep(txn, &mut records).await?;
        if let Some(mail) = &self.mail {
            crate::mail::enqueue(txn, &records, now_ms(), mail.public_url.as_deref()).await?;
        }
        Ok(())
    }

    fn records_rejections(&self) -> bool {
        true
    }

    /// Every refused entry of a followed stream is a failure record (`EventRejected`), and an
    /// `EventRejected` event on audit's stream for alerting. The record's id is the refusal's,
    /// so a redelivery adds nothing.
    async fn rejected(&self, txn: &DatabaseTransaction, rejected: &Rejected) -> anyhow::Result<()> {
        let mut records = vec![records::rejected(rejected)];
        keep(txn, &mut records).await?;
        if records.is_empty() {
            return Ok(());
        }
        let event = records::rejected_event(rejected);
        let envelope = pim_runtime::events::envelope(Source::Audit, EventType::EventRejected, &rejected.stream, &event);
        self.outbox.enqueue(txn, streams::AUDIT, &envelope).await?;
        Ok(())
    }

    /// After a refusal committed (its marker holds only an id), the relay sends its event.
    async fn after_commit(&self, envelope: &Envelope) {
        if envelope.r#type.is_empty() {
            self.outbox.wake();
        }
        self.webhooks.notify_one();
        if let Some(mail) = &self.mail {
            mail.wake.notify_one();
        }
    }
}
