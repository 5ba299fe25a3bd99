//! The store on both databases: each test body runs against a migrated SQLite file and a
//! migrated PostgreSQL database, so a dialect difference fails here, not by luck in an
//! end-to-end test. Concurrency cases race real connections.

use std::future::Future;

use sea_orm_migration::MigratorTrait;

use pim_runtime::db::{Db, is_unique_violation};
use pim_runtime::events::{EventType, OutboxRows, Source, envelope, streams};
use pim_runtime::testing::steps_before;

use crate::domain::{Action, Kind, RequestStatus};
use crate::roles::GLOBAL_ADMINISTRATOR;
use crate::store::{self, AssignmentRow, RequestRow};

mod roles;

const EXCHANGE_ADMINISTRATOR: &str = "29232cdf-9323-42fd-ade2-1d097af3e4de";
const NOW: i64 = 1_800_000_000_000;
const HOUR: i64 = 3_600_000;

/// Runs `test` on a fresh SQLite database, then on a fresh PostgreSQL one.
async fn on_both<F, Fut>(test: F) -> anyhow::Result<()>
where
    F: Fn(Db) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    migrated_then(None, test).await
}

/// The same, each migrated only through its first `steps` migrations (all with `None`).
async fn migrated_then<F, Fut>(steps: Option<u32>, test: F) -> anyhow::Result<()>
where
    F: Fn(Db) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    pim_runtime::testing::on_both_databases::<store::Migrator, _, _>("assignment", steps, test).await
}

fn id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn request(action: Action, status: RequestStatus) -> RequestRow {
    RequestRow {
        id: id(),
        action,
        kind: Kind::Active,
        principal_id: "lee".into(),
        role_id: EXCHANGE_ADMINISTRATOR.into(),
        scope: "/".into(),
        status,
        start_at: NOW,
        end_at: Some(NOW + HOUR),
        justification: "incident 42".into(),
        ticket_system: String::new(),
        ticket_number: String::new(),
        requested_by: "lee".into(),
        created_at: NOW,
        assignment_id: None,
        duration_ms: Some(HOUR),
        policy: String::new(),
        outcome_reason: String::new(),
    }
}

fn assignment(origin: &str, kind: Kind, end_at: Option<i64>) -> AssignmentRow {
    AssignmentRow {
        id: id(),
        kind,
        principal_id: "lee".into(),
        principal_kind: "user".into(),
        principal_name: "lee".into(),
        role_id: EXCHANGE_ADMINISTRATOR.into(),
        scope: "/".into(),
        start_at: NOW,
        end_at,
        status: "active".into(),
        origin: origin.into(),
        request_id: id(),
        created_by: "admin".into(),
        version: 1,
    }
}

/// One event for the outbox rows an activation writes with it.
fn events() -> OutboxRows {
    let event = envelope(Source::Assignment, EventType::RequestCreated, "lee", &());
    OutboxRows::new(streams::ASSIGNMENT, &[event])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_activations_leave_one_and_a_waiting_request_blocks_the_rest() -> anyhow::Result<()> {
    on_both(|db| async move {
        let mut eligibility = assignment("admin", Kind::Eligible, None);
        eligibility.start_at = NOW - HOUR;
        store::insert_assignment(&db, &eligibility, true, NOW).await?;
        let mut racers = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let (db, eligibility_id) = (db.clone(), eligibility.id.clone());
            racers.spawn(async move {
                let r = request(Action::SelfActivate, RequestStatus::Provisioned);
                let mut a = assignment("activation", Kind::Active, Some(NOW + HOUR));
                a.request_id = r.id.clone();
                let rests = store::RestsOn {
                    eligibility_id: &eligibility_id,
                    via_group: None,
                    until: None,
                };
                store::insert_activation(&db, &r, rests, Some((&a, true)), events(), NOW).await
            });
        }
        let mut made = 0;
        while let Some(inserted) = racers.join_next().await {
            made += usize::from(inserted??);
        }
        assert_eq!(made, 1, "one live activation");
        assert!(
            store::live_activation(&db, "lee", EXCHANGE_ADMINISTRATOR, "/")
                .await?
                .is_some()
        );

        // One request to keep the assignment (extend, renew) waits at a time, and one
        // activation beside it: asking for more time does not keep anyone from activating.
        let waiting = request(Action::SelfExtend, RequestStatus::PendingApproval);
        store::insert_request(&db, &waiting).await?;
        let second = store::insert_request(&db, &request(Action::SelfRenew, RequestStatus::PendingApproval))
            .await
            .expect_err("a second waiting request");
        assert!(is_unique_violation(&second), "{second}");
        let rests = store::RestsOn {
            eligibility_id: &eligibility.id,
            via_group: None,
            until: None,
        };
        let asked = request(Action::SelfActivate, RequestStatus::PendingApproval);
        assert!(store::insert_activation(&db, &asked, rests, None, events(), NOW).await?);
        let blocked = request(Action::SelfActivate, RequestStatus::PendingApproval);
        assert!(!store::insert_activation(&db, &blocked, rests, None, events(), NOW).await?);
        for (sort, expected) in [
            (store::Waiting::Keep, &waiting.id),
            (store::Waiting::Activation, &asked.id),
        ] {
            let found = store::pending_request(&db, "lee", EXCHANGE_ADMINISTRATOR, "/", sort).await?;
            assert_eq!(found.map(|r| r.id).as_ref(), Some(expected), "{sort:?}");
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_admin_assignment_of_each_kind_and_ends_move_by_compare_and_set() -> anyhow::Result<()> {
    on_both(|db| async move {
        let eligible = assignment("admin", Kind::Eligible, Some(NOW + 10 * 24 * HOUR));
        store::insert_assignment(&db, &eligible, true, NOW).await?;
        let twice = store::insert_assignment(&db, &assignment("admin", Kind::Eligible, None), true, NOW)
            .await
            .expect_err("a second eligible assignment");
        assert!(is_unique_violation(&twice), "{twice}");
        // Another kind is another assignment.
        store::insert_assignment(&db, &assignment("admin", Kind::Active, None), true, NOW).await?;

        // An end moves only from the version read.
        let moved = store::set_assignment_end(&db, &eligible.id, 1, Some(NOW + 20 * 24 * HOUR), NOW).await?;
        assert_eq!(moved, Some(2));
        assert_eq!(
            store::set_assignment_end(&db, &eligible.id, 1, Some(NOW), NOW).await?,
            None,
            "stale version"
        );
        // Ended once, by one caller.
        assert!(store::end_assignment(&db, &eligible.id, "removed", NOW).await?);
        assert!(!store::end_assignment(&db, &eligible.id, "removed", NOW).await?);
        assert_eq!(
            store::set_assignment_end(&db, &eligible.id, 2, None, NOW).await?,
            None,
            "ended"
        );
        // Once it has ended, a new one may be made.
        store::insert_assignment(&db, &assignment("admin", Kind::Eligible, None), true, NOW).await?;
        Ok(())
    })
    .await
}

/// What a replica reads to follow the others without their events: the active assignments
/// made, moved or ended since a moment, by whichever replica, and not eligibility.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_assignments_changed_since_a_moment_are_those_made_moved_or_ended() -> anyhow::Result<()> {
    on_both(|db| async move {
        let changed = |since: i64| {
            let db = db.clone();
            async move {
                let mut ids: Vec<String> = store::assignments_changed_since(&db, since)
                    .await?
                    .into_iter()
                    .map(|a| a.id)
                    .collect();
                ids.sort();
                anyhow::Ok(ids)
            }
        };
        let (made, moved, ended) = (
            assignment("admin", Kind::Active, None),
            assignment("activation", Kind::Active, Some(NOW + HOUR)),
            assignment("admin", Kind::Active, Some(NOW + HOUR)),
        );
        let (mut moved, mut ended) = (moved, ended);
        moved.role_id = GLOBAL_ADMINISTRATOR.into();
        ended.principal_id = "kim".into();
        store::insert_assignment(&db, &made, true, NOW).await?;
        store::insert_assignment(&db, &moved, true, NOW).await?;
        store::insert_assignment(&db, &ended, true, NOW).await?;
        store::insert_assignment(&db, &assignment("admin", Kind::Eligible, None), true, NOW + HOUR).await?;
        assert_eq!(changed(NOW + 1).await?, Vec::<String>::new(), "nothing active since");
        store::set_assignment_end(&db, &moved.id, 1, Some(NOW + 30 * 60_000), NOW + 2).await?;
        store::end_assignment(&db, &ended.id, "removed", NOW + 3).await?;
        let mut expected = vec![moved.id.clone(), ended.id.clone()];
        expected.sort();
        assert_eq!(changed(NOW + 1).await?, expected);
        assert_eq!(changed(NOW + 3).await?, vec![ended.id.clone()]);
        assert_eq!(changed(NOW).await?.len(), 3, "the one made at NOW too");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_move_only_from_the_status_they_are_in() -> anyhow::Result<()> {
    on_both(|db| async move {
        let mut r = request(Action::SelfActivate, RequestStatus::PendingApproval);
        store::insert_request(&db, &r).await?;
        r.status = RequestStatus::Granted;
        assert!(store::transition_request(&db, &r, RequestStatus::PendingApproval, NOW).await?);
        r.status = RequestStatus::Canceled;
        assert!(
            !store::transition_request(&db, &r, RequestStatus::PendingApproval, NOW).await?,
            "no longer waiting"
        );
        let stored = store::find_request(&db, &r.id).await?.expect("stored");
        assert_eq!(stored.status, RequestStatus::Granted);
        let granted = store::list_requests(&db, Some("lee"), None, Some(RequestStatus::Granted), "", 10).await?;
        assert_eq!(
            granted.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            [r.id.as_str()]
        );
        assert!(
            store::list_requests(&db, None, None, Some(RequestStatus::PendingApproval), "", 10)
                .await?
                .is_empty()
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_permanent_global_administrators_are_those_in_force_at_the_root() -> anyhow::Result<()> {
    on_both(|db| async move {
        let mut permanent = assignment("admin", Kind::Active, None);
        permanent.role_id = GLOBAL_ADMINISTRATOR.into();
        let mut temporary = assignment("admin", Kind::Active, Some(NOW + HOUR));
        temporary.role_id = GLOBAL_ADMINISTRATOR.into();
        temporary.principal_id = "kim".into();
        let mut scoped = assignment("admin", Kind::Active, None);
        scoped.role_id = GLOBAL_ADMINISTRATOR.into();
        scoped.principal_id = "ann".into();
        scoped.scope = "/subscriptions/s1".into();
        for a in [&permanent, &temporary, &scoped] {
            store::insert_assignment(&db, a, true, NOW).await?;
        }
        let found = store::lock_permanent_global_admins(&db, GLOBAL_ADMINISTRATOR, NOW).await?;
        assert_eq!(
            found.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
            [permanent.id.as_str()]
        );

        // A disabled user's does not count; identity's later word wins, an earlier one told
        // late changes nothing.
        let permanent_ids = |db: Db| async move {
            let found = store::lock_permanent_global_admins(&db, GLOBAL_ADMINISTRATOR, NOW).await?;
            anyhow::Ok(found.into_iter().map(|a| a.id).collect::<Vec<_>>())
        };
        assert!(store::set_user_enabled(&db, "lee", false, NOW).await?);
        assert!(permanent_ids(db.clone()).await?.is_empty(), "Lee is disabled");
        assert!(!store::set_user_enabled(&db, "lee", true, NOW - 1).await?, "told late");
        assert!(permanent_ids(db.clone()).await?.is_empty(), "still disabled");
        assert!(store::set_user_enabled(&db, "lee", true, NOW + 1).await?);
        assert_eq!(
            permanent_ids(db.clone()).await?,
            [permanent.id.clone()],
            "enabled again"
        );
        // Counted out before identity's word (PrepareUserDisable): the protection weighs it,
        // but only a disable identity told makes a user hold nothing.
        assert!(store::count_out_user(&db, "lee", NOW + 2).await?);
        assert!(permanent_ids(db.clone()).await?.is_empty(), "counted out");
        assert_eq!(store::user_state(&db, "lee").await?, Some((true, NOW + 2)));
        assert!(store::disabled_users(&db).await?.is_empty());
        assert!(store::set_user_enabled(&db, "lee", false, NOW + 3).await?);
        assert_eq!(store::user_state(&db, "lee").await?, Some((false, NOW + 3)));
        assert_eq!(store::disabled_users(&db).await?, ["lee"]);
        Ok(())
    })
    .await
}

/// A disable identity is about to make (`PrepareUserDisable`) and a removal at the same
/// moment take turns on the permanent Global Administrators' rows, and the one that waited
/// counts what the other recorded: two holders cannot each be taken away while the other still
/// counts. On SQLite the one connection makes them take turns whatever the statements; the
/// PostgreSQL half is the one a single locking statement fails (it would count x).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_waits_for_a_disable_and_counts_it() -> anyhow::Result<()> {
    use sea_orm::TransactionTrait;
    on_both(|db| async move {
        let mut x = assignment("admin", Kind::Active, None);
        x.role_id = GLOBAL_ADMINISTRATOR.into();
        x.principal_id = "x".into();
        let mut y = x.clone();
        y.id = id();
        y.principal_id = "y".into();
        store::insert_assignment(&db, &x, true, NOW).await?;
        store::insert_assignment(&db, &y, true, NOW).await?;
        let disable = db.begin().await?;
        assert_eq!(
            store::lock_permanent_global_admins(&disable, GLOBAL_ADMINISTRATOR, NOW)
                .await?
                .len(),
            2
        );
        let removal = tokio::spawn({
            let db = db.clone();
            async move {
                let txn = db.begin().await?;
                let counted = store::lock_permanent_global_admins(&txn, GLOBAL_ADMINISTRATOR, NOW).await?;
                txn.commit().await?;
                anyhow::Ok(counted.into_iter().map(|a| a.id).collect::<Vec<_>>())
            }
        });
        pim_runtime::testing::a_transaction_waits_for_a_lock(&db).await?;
        store::set_user_enabled(&disable, "x", false, NOW).await?;
        disable.commit().await?;
        assert_eq!(removal.await??, [y.id.clone()], "the removal counts x as disabled");
        Ok(())
    })
    .await
}

/// Upgrading a database where earlier races left two administrators' assignments of one
/// kind: the one that grants most stays (in force, permanent), the others are removed, and
/// the unique index holds from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_keeps_the_duplicate_that_grants_most() -> anyhow::Result<()> {
    let before_one_admin = steps_before::<store::Migrator>("m0006_one_admin_assignment");
    migrated_then(Some(before_one_admin), |db| async move {
        let now = pim_runtime::db::now_ms();
        let mut lapsed = assignment("admin", Kind::Active, Some(now - HOUR));
        lapsed.role_id = GLOBAL_ADMINISTRATOR.into();
        lapsed.start_at = now - 2 * HOUR;
        let mut permanent = assignment("admin", Kind::Active, None);
        permanent.role_id = GLOBAL_ADMINISTRATOR.into();
        permanent.start_at = now - HOUR;
        let mut scheduled = assignment("admin", Kind::Active, None);
        scheduled.role_id = GLOBAL_ADMINISTRATOR.into();
        scheduled.start_at = now + HOUR;
        // The lapsed one is the oldest: keeping the oldest would keep the wrong one.
        for a in [&lapsed, &permanent, &scheduled] {
            store::insert_assignment_before_changes(&db, a, now).await?;
        }
        store::Migrator::up(&db, None).await?;
        let status = |id: String| {
            let db = db.clone();
            async move { anyhow::Ok(store::find_assignment(&db, &id).await?.map(|a| a.status)) }
        };
        assert_eq!(status(permanent.id.clone()).await?.as_deref(), Some("active"));
        assert_eq!(status(lapsed.id.clone()).await?.as_deref(), Some("removed"));
        assert_eq!(status(scheduled.id.clone()).await?.as_deref(), Some("removed"));
        let again = store::insert_assignment(&db, &assignment("admin", Kind::Active, None), true, now).await;
        let mut twice = assignment("admin", Kind::Active, None);
        twice.role_id = GLOBAL_ADMINISTRATOR.into();
        let refused = store::insert_assignment(&db, &twice, true, now)
            .await
            .expect_err("held by the index");
        assert!(is_unique_violation(&refused), "{refused}");
        again?;
        Ok(())
    })
    .await
}

/// An activation is stored only while what it rests on holds, checked by the statement that
/// stores it: the eligibility in force, and for a group's, Lee's membership (identity's, or
/// a just-in-time one); and, given the activation's end, only if they last until then (an
/// end moved earlier meanwhile refuses it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activation_is_stored_only_while_its_eligibility_and_membership_hold() -> anyhow::Result<()> {
    use crate::roles::{GROUP_MEMBER, group_scope};
    on_both(|db| async move {
        let activate = || {
            let r = request(Action::SelfActivate, RequestStatus::Provisioned);
            let mut a = assignment("activation", Kind::Active, Some(NOW + HOUR));
            a.request_id = r.id.clone();
            (r, a)
        };
        // The group's eligibility: Lee rests on it while a member.
        let mut held = assignment("admin", Kind::Eligible, None);
        (held.principal_id, held.principal_kind, held.start_at) = ("ops".into(), "group".into(), NOW - HOUR);
        store::insert_assignment(&db, &held, true, NOW).await?;
        let through_ops = store::RestsOn {
            eligibility_id: &held.id,
            via_group: Some("ops"),
            until: None,
        };
        let (r, a) = activate();
        assert!(
            !store::insert_activation(&db, &r, through_ops, Some((&a, true)), events(), NOW).await?,
            "not a member"
        );
        // A member through PIM (a live Group Member assignment): stored.
        let mut member = assignment("activation", Kind::Active, Some(NOW + HOUR));
        (member.role_id, member.scope) = (GROUP_MEMBER.into(), group_scope("ops"));
        store::insert_assignment(&db, &member, true, NOW).await?;
        assert!(store::lock_resting(&db, through_ops, "lee", NOW).await?);
        let (r, a) = activate();
        assert!(store::insert_activation(&db, &r, through_ops, Some((&a, true)), events(), NOW).await?);
        store::end_assignment(&db, &a.id, "deactivated", NOW).await?;
        // The membership ended: no more; a member in identity's directory: again.
        store::end_assignment(&db, &member.id, "deactivated", NOW).await?;
        assert!(!store::lock_resting(&db, through_ops, "lee", NOW).await?);
        store::set_group_membership(&db, "ops", "lee", true, 0).await?;
        let (r, a) = activate();
        assert!(store::insert_activation(&db, &r, through_ops, Some((&a, true)), events(), NOW).await?);
        store::end_assignment(&db, &a.id, "deactivated", NOW).await?;
        // Lee's own eligibility, until two hours from now: an hour's activation is stored; once
        // its end is moved to before that hour's, no more.
        let own = assignment("admin", Kind::Eligible, Some(NOW + 2 * HOUR));
        store::insert_assignment(&db, &own, true, NOW).await?;
        let own_for_an_hour = store::RestsOn {
            eligibility_id: &own.id,
            via_group: None,
            until: Some(NOW + HOUR),
        };
        let (r, a) = activate();
        assert!(store::insert_activation(&db, &r, own_for_an_hour, Some((&a, true)), events(), NOW).await?);
        store::end_assignment(&db, &a.id, "deactivated", NOW).await?;
        store::set_assignment_end(&db, &own.id, own.version, Some(NOW + HOUR - 1), NOW).await?;
        let (r, a) = activate();
        assert!(
            !store::insert_activation(&db, &r, own_for_an_hour, Some((&a, true)), events(), NOW).await?,
            "it would outlast the eligibility"
        );
        assert!(!store::lock_resting(&db, own_for_an_hour, "lee", NOW).await?);
        let own_now = store::RestsOn {
            until: None,
            ..own_for_an_hour
        };
        assert!(store::lock_resting(&db, own_now, "lee", NOW).await?, "in force now");
        // The eligibility ended: nothing rests on it any more.
        store::end_assignment(&db, &held.id, "removed", NOW).await?;
        let (r, a) = activate();
        assert!(!store::insert_activation(&db, &r, through_ops, Some((&a, true)), events(), NOW).await?);
        assert!(!store::lock_resting(&db, through_ops, "lee", NOW).await?);
        Ok(())
    })
    .await
}

/// A holder is told an active role ends soon once: when it ends within the lead, if it lasts
/// longer than the lead, and never for an eligibility, a permanent role or an ended one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_are_told_once_that_an_active_role_ends_soon() -> anyhow::Result<()> {
    on_both(|db| async move {
        let lead = 15 * 60_000;
        let soon = assignment("activation", Kind::Active, Some(NOW + HOUR));
        let short = AssignmentRow {
            principal_id: "ann".into(),
            end_at: Some(NOW + 10 * 60_000),
            ..assignment("activation", Kind::Active, None)
        };
        let eligible = assignment("admin", Kind::Eligible, Some(NOW + HOUR));
        let permanent = AssignmentRow {
            principal_id: "bob".into(),
            ..assignment("admin", Kind::Active, None)
        };
        for a in [&soon, &short, &eligible, &permanent] {
            store::insert_assignment(&db, a, true, NOW).await?;
        }
        let due = |at: i64| {
            let db = db.clone();
            async move {
                anyhow::Ok(
                    store::due_expiry_notices(&db, at, lead, 10)
                        .await?
                        .into_iter()
                        .map(|a| a.id)
                        .collect::<Vec<_>>(),
                )
            }
        };
        assert!(
            due(NOW).await?.is_empty(),
            "an hour ahead: not yet; ten minutes long: never"
        );
        let near = NOW + HOUR - lead;
        assert_eq!(due(near).await?, std::slice::from_ref(&soon.id));
        assert!(store::mark_expiry_noticed(&db, &soon.id).await?);
        assert!(!store::mark_expiry_noticed(&db, &soon.id).await?, "once");
        assert!(due(near).await?.is_empty());
        // Extended, its holder is told again before the new end.
        assert_eq!(
            store::set_assignment_end(&db, &soon.id, 1, Some(NOW + 3 * HOUR), NOW).await?,
            Some(2)
        );
        assert_eq!(due(NOW + 3 * HOUR - lead).await?, std::slice::from_ref(&soon.id));
        assert!(store::mark_expiry_noticed(&db, &soon.id).await?);
        let later = assignment("activation", Kind::Active, Some(NOW + 2 * HOUR));
        store::end_assignment(&db, &soon.id, "expired", NOW).await?;
        store::insert_assignment(&db, &later, true, NOW).await?;
        store::end_assignment(&db, &later.id, "deactivated", NOW).await?;
        assert!(due(NOW + 2 * HOUR - lead).await?.is_empty(), "ended already");
        Ok(())
    })
    .await
}

/// Identity's membership changes, applied out of order: the one with the later version stands
/// whichever came last, and the projection reads back each membership with its version,
/// ended ones included; an unversioned change (from before versions) still applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_change_told_late_changes_nothing() -> anyhow::Result<()> {
    on_both(|db| async move {
        let state = |member: bool, version: u64| store::MembershipState {
            group_id: "ops".into(),
            principal_id: "lee".into(),
            member,
            version,
        };
        assert!(store::set_group_membership(&db, "ops", "lee", true, 1).await?);
        assert!(store::set_group_membership(&db, "ops", "lee", false, 3).await?);
        assert!(
            !store::set_group_membership(&db, "ops", "lee", true, 2).await?,
            "the add (2) came after the removal (3)"
        );
        assert!(
            !store::set_group_membership(&db, "ops", "lee", false, 3).await?,
            "the same again"
        );
        assert_eq!(store::group_membership(&db, "ops", "lee").await?, state(false, 3));
        assert!(store::set_group_membership(&db, "ops", "lee", true, 4).await?);
        assert_eq!(store::group_membership(&db, "ops", "lee").await?, state(true, 4));
        assert!(store::set_group_membership(&db, "ops", "kim", false, 2).await?);
        assert!(!store::set_group_membership(&db, "ops", "kim", true, 1).await?);
        assert!(
            !store::set_group_membership(&db, "ops", "kim", true, 0).await?,
            "unversioned: older than any versioned change"
        );
        assert!(store::set_group_membership(&db, "dev", "joe", false, 0).await?);
        assert!(
            store::set_group_membership(&db, "dev", "joe", true, 0).await?,
            "unversioned changes among themselves apply in turn"
        );
        let mut all = store::group_memberships(&db).await?;
        all.sort_by(|a, b| a.principal_id.cmp(&b.principal_id));
        let all: Vec<_> = all
            .iter()
            .map(|m| (m.principal_id.as_str(), m.member, m.version))
            .collect();
        assert_eq!(all, [("joe", true, 0), ("kim", false, 2), ("lee", true, 4)]);
        Ok(())
    })
    .await
}

/// Records `system` ldap's report `id`, listing `principal`'s unmanaged grant, in a
/// transaction left open: what it forgot of the report before.
async fn report(
    db: Db,
    id: &'static str,
    principal: &'static str,
) -> anyhow::Result<(sea_orm::DatabaseTransaction, Vec<store::ObservedGrant>)> {
    use sea_orm::TransactionTrait;
    let txn = db.begin().await?;
    store::begin_report(&txn, "ldap", id, NOW).await?;
    let grant = store::ObservedGrant {
        system: "ldap".into(),
        principal_id: principal.into(),
        role_id: EXCHANGE_ADMINISTRATOR.into(),
        scope: "/".into(),
        managed: false,
    };
    store::upsert_observed(&txn, &grant, id, NOW).await?;
    let forgotten = store::forget_unreported(&txn, "ldap", id).await?;
    Ok((txn, forgotten))
}

/// A system's reports take turns: a second report while the first is being recorded waits
/// for it, then replaces it whole; neither forgets what the other listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_reports_of_one_system_at_once_end_as_the_later_one() -> anyhow::Result<()> {
    on_both(|db| async move {
        let (first, _) = report(db.clone(), "a", "mallory").await?;
        let second = tokio::spawn({
            let db = db.clone();
            async move {
                let (txn, forgotten) = report(db, "b", "eve").await?;
                txn.commit().await?;
                anyhow::Ok(forgotten)
            }
        });
        // The second waits on the system's row the first holds (SQLite: on its one connection).
        pim_runtime::testing::a_transaction_waits_for_a_lock(&db).await?;
        first.commit().await?;
        let forgotten = second.await??;
        assert_eq!(
            forgotten.iter().map(|g| g.principal_id.as_str()).collect::<Vec<_>>(),
            ["mallory"],
            "the later report forgets what the earlier listed"
        );
        let held = store::unmanaged_grants(&db).await?;
        assert_eq!(
            held.iter().map(|g| g.principal_id.as_str()).collect::<Vec<_>>(),
            ["eve"]
        );
        Ok(())
    })
    .await
}

/// A database conflict met by an event handler stays one on its way out of the service's
/// error (`Error::into_anyhow`), so the consumer applies the event again at once rather than
/// leaving it to redelivery 30 s later (PostgreSQL: SQLite does not give transactions up so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_stays_a_conflict_through_the_services_error() -> anyhow::Result<()> {
    on_both(|db| async move {
        use sea_orm::ConnectionTrait;
        if db.get_database_backend() != sea_orm::DbBackend::Postgres {
            return Ok(());
        }
        let given_up = db
            .execute_unprepared("DO $$ BEGIN RAISE EXCEPTION 'given up' USING ERRCODE = '40P01'; END $$")
            .await
            .expect_err("raised");
        let handed_on = crate::error::Error::from(given_up).into_anyhow();
        assert!(pim_runtime::db::conflict_in(&handed_on).is_some(), "{handed_on:#}");
        let flattened = anyhow::anyhow!("{}", crate::error::Error::invalid("x", "y"));
        assert!(pim_runtime::db::conflict_in(&flattened).is_none());
        Ok(())
    })
    .await
}
