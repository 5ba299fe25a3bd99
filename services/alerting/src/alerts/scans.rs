//! The time-driven rules: an hourly scan for stale accounts and unused eligibilities.

use super::*;

impl Alerts {
    /// The rules time triggers: privileged holders who have not signed in for `days`, and
    /// eligibilities not activated for `days`. Alerts whose condition cleared are resolved.
    /// Returns how many alerts it raised or updated.
    pub async fn scan_once(&self) -> Result<usize> {
        let now = self.now();
        let txn = self.db.begin().await?;
        let mut raised = 0;
        let stale = self.settings(&txn, rules::STALE_ACCOUNTS).await?;
        for (principal, quiet_since) in store::privileged_holders_quiet_since(&txn, now).await? {
            let key = format!("stale:{principal}");
            let days = (now - quiet_since) / 86_400_000;
            if days >= stale.get("days") {
                let figures = BTreeMap::from([("days_without_sign_in".to_owned(), days.to_string())]);
                let subject = Subject {
                    principal_id: principal,
                    ..Subject::default()
                };
                self.raise(&txn, rules::STALE_ACCOUNTS, &key, subject, &[], figures)
                    .await?;
                raised += 1;
            } else {
                self.clear(&txn, &key, "signed in within the rule's days").await?;
            }
        }
        let unused = self.settings(&txn, rules::UNUSED_ROLES).await?;
        for (principal, role, unused_since) in store::eligibilities_unused_since(&txn, now).await? {
            let key = format!("unused:{principal}:{role}");
            let days = (now - unused_since) / 86_400_000;
            if days >= unused.get("days") {
                let figures = BTreeMap::from([("days_without_activation".to_owned(), days.to_string())]);
                let subject = Subject {
                    principal_id: principal,
                    role_id: role,
                    scope: String::new(),
                };
                self.raise(&txn, rules::UNUSED_ROLES, &key, subject, &[], figures)
                    .await?;
                raised += 1;
            } else {
                self.clear(&txn, &key, "the role was activated").await?;
            }
        }
        txn.commit().await?;
        if raised > 0 {
            self.committed();
        }
        Ok(raised)
    }

    /// Runs the scan every hour until `stop`.
    pub fn spawn_scans(&self, mut stop: tokio::sync::watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                if let Err(err) = this.scan_once().await {
                    tracing::warn!(error = %err.message(), "alert scan failed");
                }
            }
        })
    }
}
