//! The protections no request may get past, each written once and called by every path that
//! could break it.

use sea_orm::{DatabaseTransaction, TransactionTrait};

use pim_proto::events::v1 as ev;
use pim_runtime::access::permissions;
use pim_runtime::auth::Caller;

use super::Assignments;
use crate::domain::{Kind, Scope};
use crate::error::{Error, Result};
use crate::roles::GLOBAL_ADMINISTRATOR;
use crate::roles::group_of_scope;
use crate::store::{self, AssignmentRow, Slice, Started};
use pim_runtime::events::EventType;

/// Why a review's removal was not applied by the last-Global-Administrator protection.
pub const LAST_GLOBAL_ADMIN_KEPT: &str =
    "kept: the last permanent Global Administrator is never removed (last-Global-Administrator protection)";

/// The answer to a change the last-Global-Administrator protection refuses.
pub fn last_global_admin_refused() -> Error {
    Error::PolicyViolation(vec![pim_runtime::grpc::RuleViolation {
        kind: pim_runtime::grpc::LAST_GLOBAL_ADMINISTRATOR_RULE,
        message:
            "refused: this is the last permanent active Global Administrator; first make another enabled user one \
                  (a permanent active assignment, which the role's policy must allow: --allow-permanent-active true)"
                .into(),
    }])
}

/// The last-Global-Administrator rule: a change that takes `losing` (ids of assignments it
/// ends or gives an end) away from the `permanent` active Global Administrators at `/` breaks
/// it when it takes at least one of them and leaves none.
pub fn takes_the_last(permanent: &[&str], losing: &[&str]) -> bool {
    permanent.iter().any(|p| losing.contains(p)) && permanent.iter().all(|p| losing.contains(p))
}

impl Assignments {
    /// Whether `principal` may manage assignments at `scope` (pim.assignments.manage) now or
    /// once they activate: what a review's creator must still hold for its removals to apply
    /// (a just-in-time administrator is rarely active when the review ends). Eligible counts
    /// directly, through a group they are in, and through a group they may join through PIM
    /// (eligible for or holding its membership or ownership) that holds such a role.
    pub(crate) async fn may_manage_assignments<C: sea_orm::ConnectionTrait>(
        &self,
        c: &C,
        principal: &str,
        scope: &Scope,
        now: i64,
    ) -> Result<bool> {
        if principal.is_empty() || self.memberships.is_disabled(principal) {
            return Ok(false);
        }
        let granting = self.roles.roles_granting(permissions::ASSIGNMENTS_MANAGE);
        let grants = |a: &AssignmentRow| granting.iter().any(|r| **r == *a.role_id) && scope.is_within(&a.scope);
        // Whom they hold through, as the database holds it in this transaction (never this
        // replica's memory, which may not yet know of a loss): themselves, the groups they are
        // in (added in the directory, or through PIM now), and those they may join through PIM
        // (eligible for, or holding, its membership or ownership).
        let mut holders = vec![principal.to_owned()];
        holders.extend(self.memberships.groups_of(principal));
        holders.extend(self.groups_in(c, principal, now).await?.into_keys());
        for kind in [Kind::Eligible, Kind::Active] {
            for role in [crate::roles::GROUP_MEMBER, crate::roles::GROUP_OWNER] {
                let access = store::current_assignments(
                    c,
                    kind,
                    Some(principal),
                    Some(role),
                    now,
                    Started::Only,
                    Slice::default(),
                );
                holders.extend(
                    access
                        .await?
                        .iter()
                        .filter_map(|a| group_of_scope(&a.scope).map(str::to_owned)),
                );
            }
        }
        holders.sort();
        holders.dedup();
        let (eligible, _) = store::eligibilities_and_activations(c, principal, &holders, now).await?;
        if eligible.iter().any(grants) {
            return Ok(true);
        }
        for holder in &holders {
            let held = store::current_assignments(
                c,
                Kind::Active,
                Some(holder),
                None,
                now,
                Started::Only,
                Slice::default(),
            );
            let held = held.await?;
            if held.iter().any(grants) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether ending `losing`, or giving them an end, would leave no permanent active Global
    /// Administrator at `/`: admin removal, a review's removal and an end change all ask
    /// this. The permanent ones are locked (PostgreSQL) until `txn` ends, so two such
    /// changes cannot both pass; on SQLite writers take turns anyway.
    pub(crate) async fn takes_the_last_global_admin(
        &self,
        txn: &DatabaseTransaction,
        losing: &[&AssignmentRow],
        now: i64,
    ) -> Result<bool> {
        let losing: Vec<&str> = losing
            .iter()
            .filter(|a| a.role_id == GLOBAL_ADMINISTRATOR && a.kind == Kind::Active)
            .map(|a| a.id.as_str())
            .collect();
        if losing.is_empty() {
            return Ok(false);
        }
        let permanent = store::lock_permanent_global_admins(txn, GLOBAL_ADMINISTRATOR, now).await?;
        let permanent: Vec<&str> = permanent.iter().map(|a| a.id.as_str()).collect();
        Ok(takes_the_last(&permanent, &losing))
    }

    /// Identity asks this before it disables `user_id` (see the RPC's contract): the protection
    /// decides under the lock removals take, and counts a holder as disabled from `as_of` (the
    /// directory's time) on, so that a removal at the same moment, or before identity's
    /// `UserDisabled` arrives (another process, Redis down), sees it. Should identity then not
    /// disable the user after all, the protection counts one holder fewer than there is until
    /// identity next tells of them: stricter, never looser.
    pub async fn prepare_user_disable(&self, caller: &Caller, user_id: &str, as_of: Option<i64>) -> Result<()> {
        self.authorize(caller, permissions::USERS_MANAGE, &Scope::root())
            .await?;
        let now = self.now();
        // A user's states are ordered by the time the directory's events carry (the wall
        // clock's); a stamp far ahead would outrank whatever it told next.
        let wall = pim_runtime::db::now_ms();
        let as_of = as_of.unwrap_or(wall).min(wall + 60_000);
        let txn = self.db.begin().await?;
        let permanent = store::lock_permanent_global_admins(&txn, GLOBAL_ADMINISTRATOR, now).await?;
        let held: Vec<&AssignmentRow> = permanent.iter().filter(|a| a.principal_id == user_id).collect();
        let Some(holding) = held.first() else {
            // Not one the protection counts: nothing to weigh or record.
            return Ok(());
        };
        // Counting a Global Administrator out is what disabling one takes.
        self.authorize(caller, permissions::PRIVILEGED_CREDENTIALS_RESET, &Scope::root())
            .await?;
        let losing: Vec<&str> = held.iter().map(|a| a.id.as_str()).collect();
        let permanent: Vec<&str> = permanent.iter().map(|a| a.id.as_str()).collect();
        if takes_the_last(&permanent, &losing) {
            return Err(last_global_admin_refused());
        }
        if !store::count_out_user(&txn, user_id, as_of).await? {
            return Err(Error::Aborted(
                "the directory told of this user since; read the user again and retry".into(),
            ));
        }
        let event = ev::UserDisabled {
            actor: Some(caller.actor()),
            user_id: user_id.to_owned(),
            user_name: holding.principal_name.clone(),
        };
        self.emit(&txn, EventType::UserDisablePrepared, user_id, &event).await?;
        txn.commit().await?;
        self.committed(&[]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::takes_the_last;

    #[test]
    fn the_last_global_admin_rule() {
        // Ending one of two leaves one; ending both, or the only one, leaves none.
        assert!(!takes_the_last(&["a", "b"], &["a"]));
        assert!(takes_the_last(&["a", "b"], &["a", "b"]));
        assert!(takes_the_last(&["a"], &["a"]));
        // Ending one that is not a permanent Global Administrator takes nothing away, even
        // when there is none left to protect.
        assert!(!takes_the_last(&["a"], &["x"]));
        assert!(!takes_the_last(&[], &["x"]));
    }
}
