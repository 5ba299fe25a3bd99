//! What webhook deliveries and notification mail share: each row is attempted by one process
//! at a time (a one-statement claim moves its next attempt to a lease), retried with the same
//! backoff for a day, and settled rows are history until they are forgotten.

use sea_orm::{ConnectionTrait, DbErr};

use pim_runtime::db;

/// How long a row is retried, from its first attempt, before it is given up.
pub const GIVE_UP_AFTER_MS: i64 = 24 * 3600 * 1000;

/// The wait before each retry (the last one repeats until the row is 24 hours old).
const BACKOFF_SECS: &[i64] = &[1, 5, 30, 120, 600, 1800, 3600, 7200, 14400];

/// When to try again after `attempts` failed attempts.
pub fn next_attempt(now: i64, attempts: i32) -> i64 {
    let step = (attempts.max(1) as usize - 1).min(BACKOFF_SECS.len() - 1);
    now + BACKOFF_SECS[step] * 1000
}

/// The queues (a closed set: their names go into SQL).
#[derive(Clone, Copy, Debug)]
pub enum Queue {
    WebhookDeliveries,
    MailOutbox,
}

impl Queue {
    fn table(self) -> &'static str {
        match self {
            Queue::WebhookDeliveries => "webhook_deliveries",
            Queue::MailOutbox => "mail_outbox",
        }
    }

    /// The status a taken row ends in, and the column saying when.
    fn done(self) -> (&'static str, &'static str) {
        match self {
            Queue::WebhookDeliveries => ("delivered", "delivered_at"),
            Queue::MailOutbox => ("sent", "sent_at"),
        }
    }

    /// Takes a due row for one attempt, in one statement: true for the one process that moved
    /// its next attempt (`next_attempt_at` as read) to `lease_until`; another replica finds it
    /// taken. Its first attempt is remembered (its retries are counted from then).
    pub async fn claim<C: ConnectionTrait>(
        self,
        c: &C,
        id: &str,
        next_attempt_at: i64,
        now: i64,
        lease_until: i64,
    ) -> Result<bool, DbErr> {
        Ok(db::exec(
            c,
            &format!(
                "UPDATE {} SET next_attempt_at = $3, first_attempt_at = COALESCE(first_attempt_at, $4)
                 WHERE id = $1 AND status = 'pending' AND next_attempt_at = $2",
                self.table()
            ),
            vec![id.into(), next_attempt_at.into(), lease_until.into(), now.into()],
        )
        .await?
            == 1)
    }

    /// Forgets rows taken or given up before `before` (a given-up row's next attempt is when
    /// it was given up); how many.
    pub async fn forget_settled<C: ConnectionTrait>(self, c: &C, before: i64) -> Result<u64, DbErr> {
        let (done, at) = self.done();
        db::exec(
            c,
            &format!(
                "DELETE FROM {} WHERE status IN ('{done}', 'dead') AND COALESCE({at}, next_attempt_at) < $1",
                self.table()
            ),
            vec![before.into()],
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::next_attempt;

    #[test]
    fn retries_back_off_and_keep_a_ceiling() {
        assert_eq!(next_attempt(0, 1), 1_000);
        assert_eq!(next_attempt(0, 2), 5_000);
        assert_eq!(next_attempt(0, 50), 14_400_000);
    }
}
