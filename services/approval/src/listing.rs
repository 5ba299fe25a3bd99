//! Reading approvals as lists: the caller's, page by page, and those a watcher may decide
//! since a revision.

use pim_runtime::access::{permissions, require};
use pim_runtime::auth::Caller;
use pim_runtime::error::Result;

use crate::approvals::{Approvals, Asked};
use crate::domain::ApprovalStatus;
use crate::store::{self, ApprovalRow};

impl Approvals {
    /// Lists approvals: the caller's (requested, decided, or pending ones they may decide),
    /// or all of them for approval managers.
    pub async fn list(
        &self,
        caller: &Caller,
        status: Option<ApprovalStatus>,
        all: bool,
        before_rev: Option<i64>,
        page_size: usize,
    ) -> Result<(Vec<ApprovalRow>, Option<i64>)> {
        if all {
            require(self.access.as_ref(), caller, permissions::APPROVALS_MANAGE, "/").await?;
        }
        let mut out = Vec::new();
        let mut before = before_rev;
        let mut asked = Asked::default();
        loop {
            let filter = store::ListFilter {
                status,
                involving: (!all).then_some(caller.principal_id.as_str()),
                before_rev: before,
                limit: page_size as u64,
            };
            let rows = store::list(&self.db, &filter).await?;
            let exhausted = rows.len() < page_size;
            for row in rows {
                before = Some(row.rev);
                let mine = all
                    || row.is_own(&caller.principal_id)
                    || row.status != ApprovalStatus::Pending
                    || self.may_decide(caller, &row, &mut asked).await?;
                if mine && out.len() < page_size {
                    out.push(row);
                }
            }
            if exhausted {
                return Ok((out, None));
            }
            if out.len() >= page_size {
                return Ok((out, before));
            }
        }
    }

    /// Pending approvals `caller` may decide (and has not yet) with a revision after `after`,
    /// oldest first, and the highest revision looked at.
    pub async fn decidable_after(
        &self,
        caller: &Caller,
        after: i64,
        asked: &mut Asked,
    ) -> Result<(Vec<ApprovalRow>, Option<i64>)> {
        let rows = store::pending_after(&self.db, after, 500).await?;
        let high = rows.last().map(|r| r.rev);
        let mut out = Vec::new();
        for row in rows {
            if self.may_decide(caller, &row, asked).await?
                && !store::decisions(&self.db, &row.id)
                    .await?
                    .iter()
                    .any(|d| d.approver_id == caller.principal_id)
            {
                out.push(row);
            }
        }
        Ok((out, high))
    }
}
