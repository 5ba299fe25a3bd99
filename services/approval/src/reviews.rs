//! Access reviews: a role's eligible and/or active assignments at a scope, snapshotted when
//! each instance starts, decided by named reviewers (users, or the members of named groups)
//! or by the holders themselves; at the end
//! unanswered items take the default decision and, with auto-apply, denied assignments are
//! removed through assignment (a ReviewRemovalRequested event it consumes).

use std::time::Duration;

use sea_orm::{DatabaseTransaction, TransactionTrait};

use pim_proto::catalogue;
use pim_proto::common::v1::NotificationParty;
use pim_proto::common::v1::PrincipalKind;
use pim_proto::events::v1::{self as ev, Happening, ReviewEvent};
use pim_runtime::access::{holds, permissions, require};
use pim_runtime::auth::Caller;

use crate::approvals::{Approvals, Asked};
use crate::domain::{Decision, ReviewStatus};
use crate::store::{self, ItemRow, ItemsPage, ReviewRow};
use pim_runtime::error::{Error, Result};
use pim_runtime::events::{EventType, Source};
use pim_runtime::text::{MAX_FREE_TEXT, free_text};

const DAY_MS: i64 = 24 * 3_600_000;
/// An assignment not activated for this long is recommended for removal.
const UNUSED_MS: i64 = 30 * DAY_MS;

/// How often a recurring review starts again.
pub fn recurrence_period(recurrence: &str) -> Option<Option<i64>> {
    Some(match recurrence {
        "" | "none" => None,
        "weekly" => Some(7 * DAY_MS),
        "monthly" => Some(30 * DAY_MS),
        "quarterly" => Some(91 * DAY_MS),
        "semiannually" => Some(182 * DAY_MS),
        "annually" => Some(365 * DAY_MS),
        _ => return None,
    })
}

/// Whether `item` reviews `caller`'s own access.
fn is_own(item: &ItemRow, caller: &Caller) -> bool {
    item.principal_id == caller.principal_id
}

/// What an administrator asks for; checked here, stored as a [`ReviewRow`].
pub struct NewReview {
    pub name: String,
    pub role_id: String,
    pub scope: String,
    pub review_scope: String,
    pub reviewer_ids: Vec<String>,
    pub self_review: bool,
    pub start_at: Option<i64>,
    pub duration: Option<Duration>,
    pub recurrence: String,
    pub default_decision: String,
    pub auto_apply: bool,
    pub mail_off: bool,
    pub reminders_off: bool,
}

/// Normalizes a scope path as assignment does (segments compared case-insensitively).
fn scope(raw: &str) -> Result<String> {
    let raw = raw.trim();
    if raw.is_empty() || raw == "/" {
        return Ok("/".into());
    }
    if !raw.starts_with('/') || raw.contains("//") || raw.len() > 1024 {
        return Err(Error::invalid("review.scope", "a path such as / or /subscriptions/s1"));
    }
    Ok(raw.trim_end_matches('/').to_lowercase())
}

impl Approvals {
    fn review_event(
        &self,
        review: &ReviewRow,
        item: Option<&ItemRow>,
        decision: &str,
        caller: Option<&Caller>,
    ) -> ReviewEvent {
        ReviewEvent {
            actor: caller.map(Caller::actor),
            review_id: review.id.clone(),
            item_id: item.map(|i| i.id.clone()).unwrap_or_default(),
            decision: decision.into(),
            principal_id: item.map(|i| i.principal_id.clone()).unwrap_or_default(),
            role_id: review.role_id.clone(),
            scope: item.map(|i| i.scope.clone()).unwrap_or_else(|| review.scope.clone()),
            kind: item.map(|i| i.kind.clone()).unwrap_or_default(),
            assignment_id: item.map(|i| i.assignment_id.clone()).unwrap_or_default(),
            justification: item.map(|i| i.justification.clone()).unwrap_or_default(),
            review_created_by: review.created_by.clone(),
        }
    }

    async fn emit_review(&self, txn: &DatabaseTransaction, event_type: EventType, event: &ReviewEvent) -> Result<()> {
        self.outbox
            .enqueue(
                txn,
                pim_runtime::events::streams::APPROVAL,
                &pim_runtime::events::envelope(Source::Approval, event_type, &event.review_id, event),
            )
            .await?;
        Ok(())
    }

    pub async fn create_review(&self, caller: &Caller, r: NewReview) -> Result<ReviewRow> {
        let name = pim_runtime::text::one_line(&r.name, 200).map_err(|why| Error::invalid("review.name", why))?;
        if name.is_empty() {
            return Err(Error::invalid("review.name", "1 to 200 characters"));
        }
        let role_id = r.role_id.trim();
        if role_id.is_empty() {
            return Err(Error::invalid("review.role_id", "required"));
        }
        let scope = scope(&r.scope)?;
        let reviewer_ids: Vec<String> = r
            .reviewer_ids
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        if reviewer_ids.is_empty() && !r.self_review {
            return Err(Error::invalid(
                "review.reviewer_ids",
                "name reviewers, or make it a self-review",
            ));
        }
        if reviewer_ids.len() > 100 || reviewer_ids.iter().any(|id| uuid::Uuid::parse_str(id).is_err()) {
            return Err(Error::invalid(
                "review.reviewer_ids",
                "at most 100 principal ids (UUIDs; look a name up with identity's GetPrincipal)",
            ));
        }
        let Some(period) = recurrence_period(r.recurrence.trim()) else {
            return Err(Error::invalid(
                "review.recurrence",
                "none, weekly, monthly, quarterly, semiannually or annually",
            ));
        };
        let duration_ms = r.duration.map(|d| d.as_millis() as i64).unwrap_or(14 * DAY_MS);
        if !(3_600_000..=180 * DAY_MS).contains(&duration_ms) {
            return Err(Error::invalid("review.duration", "between 1 hour and 180 days"));
        }
        if period.is_some_and(|p| duration_ms > p) {
            return Err(Error::invalid(
                "review.duration",
                "must not be longer than the recurrence period",
            ));
        }
        require(self.access.as_ref(), caller, permissions::REVIEWS_MANAGE, &scope).await?;
        // Auto-apply removes what reviewers deny: only for whoever may remove it themselves.
        if r.auto_apply && !holds(self.access.as_ref(), caller, permissions::ASSIGNMENTS_MANAGE, &scope).await? {
            return Err(Error::PermissionDenied(format!(
                "a review that removes what is denied (auto-apply) needs {} at {scope}, as removing it directly does",
                permissions::ASSIGNMENTS_MANAGE
            )));
        }
        let (role_id, mut privileged) = self.services.role(caller, role_id).await?;
        if catalogue::is_group_access(&role_id) {
            // Membership and ownership are reviewed one group at a time, a group that exists.
            let Some(group) = catalogue::group_of_scope(&scope) else {
                return Err(Error::invalid(
                    "review.scope",
                    "a review of group membership or ownership names its group: /groups/{group id}",
                ));
            };
            let found = self.services.principal(caller, group).await?;
            let Some(group) = found.filter(|g| g.kind() == PrincipalKind::Group) else {
                return Err(Error::NotFound(format!("group {group}")));
            };
            privileged |= group.is_assignable_to_role;
        }
        // A reviewer the directory does not hold (or holds disabled) would never decide; one
        // deciding on privileged access is a group only if role-assignable.
        let (mut unknown, mut open) = (Vec::new(), Vec::new());
        for id in &reviewer_ids {
            match self.services.enabled_principal(caller, id).await? {
                None => unknown.push(id.as_str()),
                Some(p) if privileged && p.kind() == PrincipalKind::Group && !p.is_assignable_to_role => {
                    open.push(format!("{:?}", p.display_name))
                }
                Some(_) => {}
            }
        }
        if !unknown.is_empty() {
            return Err(Error::invalid(
                "review.reviewer_ids",
                format!("no enabled principal has the id {}", unknown.join(", ")),
            ));
        }
        if let Some(why) = catalogue::groups_unfit_to_decide_privilege("reviewers", &open) {
            return Err(Error::invalid("review.reviewer_ids", why));
        }
        let now = self.now();
        let start_at = r.start_at.unwrap_or(now).max(now);
        // As every schedule: no end past the last moment a time is told.
        if start_at.saturating_add(duration_ms) > pim_runtime::db::LATEST_MS {
            return Err(Error::invalid(
                "review.start_time",
                "the review must end by 9999-12-31T23:59:59Z",
            ));
        }
        let mut review = ReviewRow {
            id: uuid::Uuid::now_v7().to_string(),
            name: name.into(),
            role_id,
            scope,
            review_scope: r.review_scope,
            reviewer_ids,
            self_review: r.self_review,
            start_at,
            duration_ms,
            recurrence: r.recurrence.trim().trim_start_matches("none").into(),
            default_decision: r.default_decision,
            auto_apply: r.auto_apply,
            status: ReviewStatus::NotStarted,
            instance: 0,
            instance_start: None,
            instance_end: None,
            remind_at: None,
            mail_off: r.mail_off,
            reminders_off: r.reminders_off,
            created_by: caller.principal_id.clone(),
            created_at: now,
        };
        let txn = self.db.begin().await?;
        store::insert_review(&txn, &review).await?;
        self.emit_review(
            &txn,
            EventType::ReviewCreated,
            &self.review_event(&review, None, "", Some(caller)),
        )
        .await?;
        // A review starting now starts at once, in this transaction: a timer pass started
        // afterwards could otherwise hold the new row while this call reads it back.
        if review.start_at <= now {
            self.start_instance(&txn, &mut review).await?;
        }
        txn.commit().await?;
        self.outbox.wake();
        self.review_for(caller, &review.id).await
    }

    /// A review the caller may see: reviews managers see all, reviewers theirs, and anyone
    /// a self-review.
    pub async fn review_for(&self, caller: &Caller, id: &str) -> Result<ReviewRow> {
        let review = store::review(&self.db, id, false)
            .await?
            .ok_or_else(|| Error::NotFound(format!("access review {id}")))?;
        if review.self_review || review.reviewer_ids.contains(&caller.principal_id) {
            return Ok(review);
        }
        match require(self.access.as_ref(), caller, permissions::REVIEWS_MANAGE, &review.scope).await {
            Err(refused) if !self.is_reviewer(caller, &review, &mut Asked::default()).await? => Err(refused.into()),
            _ => Ok(review),
        }
    }

    /// Whether `caller` reviews for `review`: named, or a user in a named group (`asked`
    /// holds the caller's groups, and whether access is privileged, once asked, so a call asks
    /// identity at most once for each).
    async fn is_reviewer(&self, caller: &Caller, review: &ReviewRow, asked: &mut Asked) -> Result<bool> {
        if review.reviewer_ids.contains(&caller.principal_id) {
            return Ok(true);
        }
        if caller.kind != PrincipalKind::User {
            return Ok(false);
        }
        let named: Vec<&String> = review.reviewer_ids.iter().collect();
        self.decides_through_a_group(caller, &named, &review.role_id, &review.scope, asked)
            .await
    }

    /// What privileged access `principal_id` is named to decide while it is open: pending
    /// approvals (a stage's approvers, escalation included, as the request fixed them) and
    /// reviews not over (as a reviewer). Whoever holds their credentials would decide it, so
    /// identity asks before a credential administrator changes them (or whoever manages apps
    /// an app's secret, and only of an app). A group named decides privileged access only if
    /// role-assignable, and its members are protected as such.
    pub async fn privileged_decisions_of(&self, caller: &Caller, principal_id: &str) -> Result<Vec<String>> {
        let may = |permission| holds(self.access.as_ref(), caller, permission, "/");
        if !may(permissions::CREDENTIALS_RESET).await? && !may(permissions::REVIEWS_MANAGE).await? {
            require(
                self.access.as_ref(),
                caller,
                permissions::SERVICE_PRINCIPALS_MANAGE,
                "/",
            )
            .await?;
            let asked = self.services.principal(caller, principal_id).await?;
            if asked.is_none_or(|p| p.kind != PrincipalKind::ServicePrincipal as i32) {
                return Err(Error::PermissionDenied(
                    "whoever manages apps (pim.directory.servicePrincipals.manage) may ask only about a service principal"
                        .into(),
                ));
            }
        }
        const PAGE: u64 = 200;
        let (mut decisions, mut asked) = (Vec::new(), Asked::default());
        let mut after_rev = i64::MIN;
        loop {
            let rows = store::pending_after(&self.db, after_rev, PAGE).await?;
            let exhausted = (rows.len() as u64) < PAGE;
            for a in rows {
                after_rev = a.rev;
                let named = a
                    .stages
                    .iter()
                    .flat_map(|s| s.approver_ids.iter().chain(&s.escalation_approver_ids))
                    .any(|id| id == principal_id);
                if named && self.privileged_access(caller, &a.role_id, &a.scope, &mut asked).await? {
                    decisions.push(format!("the approval {} of {} at {}", a.id, a.role_name, a.scope));
                }
            }
            if exhausted {
                break;
            }
        }
        let mut after = String::new();
        loop {
            let rows = store::reviews(&self.db, &after, PAGE).await?;
            let exhausted = (rows.len() as u64) < PAGE;
            for r in rows {
                after = r.id.clone();
                let open = matches!(r.status, ReviewStatus::NotStarted | ReviewStatus::InProgress);
                if open
                    && r.reviewer_ids.iter().any(|id| id == principal_id)
                    && self.privileged_access(caller, &r.role_id, &r.scope, &mut asked).await?
                {
                    decisions.push(format!("the access review '{}'", r.name));
                }
            }
            if exhausted {
                return Ok(decisions);
            }
        }
    }

    pub async fn list_reviews(&self, caller: &Caller, after_id: &str, limit: usize) -> Result<Vec<ReviewRow>> {
        let manager = require(self.access.as_ref(), caller, permissions::REVIEWS_MANAGE, "/")
            .await
            .is_ok();
        let (mut out, mut asked) = (Vec::new(), Asked::default());
        let mut after = after_id.to_owned();
        loop {
            let rows = store::reviews(&self.db, &after, limit as u64).await?;
            let exhausted = rows.len() < limit;
            for r in rows {
                after = r.id.clone();
                if out.len() < limit && (manager || r.self_review || self.is_reviewer(caller, &r, &mut asked).await?) {
                    out.push(r);
                }
            }
            if exhausted || out.len() >= limit {
                return Ok(out);
            }
        }
    }

    /// Whether the caller is in the group `group_id`, or may be through PIM (eligible for, or
    /// holding, its membership or ownership): its access is then the caller's own to weigh.
    async fn in_group(&self, caller: &Caller, group_id: &str, asked: &mut Asked) -> Result<bool> {
        if self.caller_groups(caller, asked).await?.contains_key(group_id) {
            return Ok(true);
        }
        let groups = match asked.pim_groups.take() {
            Some(groups) => groups,
            None => self.services.groups_through_pim(caller).await?,
        };
        Ok(asked.pim_groups.insert(groups).contains(group_id))
    }

    async fn may_review(&self, caller: &Caller, review: &ReviewRow, item: &ItemRow, asked: &mut Asked) -> Result<bool> {
        // One's own access is one's own to attest only in a self-review; in a review by named
        // reviewers, the others decide it (or the review's default decision does). A group's
        // access is its members' own too.
        if is_own(item, caller) {
            return Ok(review.self_review);
        }
        if !self.is_reviewer(caller, review, asked).await? {
            return Ok(false);
        }
        // An app reviewer (a bot) is weighed as a person is: apps may be group members too.
        Ok(!self.in_group(caller, &item.principal_id, asked).await?)
    }

    /// The current instance's items the caller reviews (of one review, or of every review in
    /// progress) listed after the item `after` names, in the order items are listed (by
    /// principal, then id).
    pub async fn my_items(
        &self,
        caller: &Caller,
        review_id: Option<&str>,
        after: Option<(&str, &str)>,
    ) -> Result<Vec<ItemRow>> {
        let reviews = match review_id {
            Some(id) => vec![self.review_for(caller, id).await?],
            None => self.list_reviews(caller, "", 1000).await?,
        };
        let (mut out, mut asked) = (Vec::new(), Asked::default());
        for review in reviews.into_iter().filter(|r| r.status == ReviewStatus::InProgress) {
            // Whom the caller reviews is weighed item by item, so a page is cut after.
            let after = ItemsPage { after, limit: None };
            for item in store::items_page(&self.db, &review.id, review.instance, after).await? {
                if self.may_review(caller, &review, &item, &mut asked).await? {
                    out.push(item);
                }
            }
        }
        out.sort_by(|a, b| (&a.principal_id, &a.id).cmp(&(&b.principal_id, &b.id)));
        Ok(out)
    }

    /// One page of the items of one instance of a review (0: the latest), for its managers.
    pub async fn all_items(
        &self,
        caller: &Caller,
        review_id: &str,
        instance: i32,
        page: ItemsPage<'_>,
    ) -> Result<Vec<ItemRow>> {
        let review = store::review(&self.db, review_id, false)
            .await?
            .ok_or_else(|| Error::NotFound(format!("access review {review_id}")))?;
        require(self.access.as_ref(), caller, permissions::REVIEWS_MANAGE, &review.scope).await?;
        let instance = if instance <= 0 { review.instance } else { instance };
        Ok(store::items_page(&self.db, &review.id, instance, page).await?)
    }

    /// Records (or changes) a reviewer's decision while the instance is in progress.
    pub async fn record_review_decision(
        &self,
        caller: &Caller,
        item_id: &str,
        approve: bool,
        justification: &str,
    ) -> Result<ItemRow> {
        let justification =
            free_text(justification, MAX_FREE_TEXT).map_err(|why| Error::invalid("justification", why))?;
        let mut item = store::item(&self.db, item_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("review item {item_id}")))?;
        // A refusal below is recorded against whose access the item is.
        pim_runtime::auth::aimed_at(&item.principal_id);
        // Who reviews does not change, so it is settled before the review's row is locked
        // (a group lookup is a call to identity).
        let review = store::review(&self.db, &item.review_id, false)
            .await?
            .ok_or_else(|| Error::NotFound("access review".into()))?;
        if !self.may_review(caller, &review, &item, &mut Asked::default()).await? {
            return Err(Error::PermissionDenied(
                "you are not a reviewer of this item (no one reviews their own access, nor a group's they are in or may join through PIM: the review's other reviewers decide it)".into(),
            ));
        }
        let txn = self.db.begin().await?;
        let review = store::review(&txn, &item.review_id, true)
            .await?
            .ok_or_else(|| Error::NotFound("access review".into()))?;
        if review.status != ReviewStatus::InProgress || review.instance != item.instance {
            return Err(Error::FailedPrecondition("this review is not in progress".into()));
        }
        item.decision = Some(Decision::of(approve));
        item.justification = justification.into();
        item.reviewer_id = caller.principal_id.clone();
        item.decided_at = Some(self.now());
        store::update_item(&txn, &item).await?;
        self.emit_review(
            &txn,
            EventType::ReviewItemDecided,
            &self.review_event(
                &review,
                Some(&item),
                item.decision.map_or("", Decision::as_str),
                Some(caller),
            ),
        )
        .await?;
        txn.commit().await?;
        self.outbox.wake();
        Ok(item)
    }

    /// Ends the review now: the current instance completes (defaults, auto-apply) and no
    /// further instance starts.
    pub async fn stop_review(&self, caller: &Caller, id: &str) -> Result<ReviewRow> {
        let review = self.review_for(caller, id).await?;
        require(self.access.as_ref(), caller, permissions::REVIEWS_MANAGE, &review.scope).await?;
        let txn = self.db.begin().await?;
        let mut review = store::review(&txn, id, true)
            .await?
            .ok_or_else(|| Error::NotFound(format!("access review {id}")))?;
        match review.status {
            ReviewStatus::InProgress => self.complete_instance(&txn, &mut review, Some(caller)).await?,
            ReviewStatus::NotStarted => {}
            ReviewStatus::Completed | ReviewStatus::Stopped => {
                return Err(Error::FailedPrecondition(format!(
                    "review is already {}",
                    review.status
                )));
            }
        }
        review.status = ReviewStatus::Stopped;
        store::update_review(&txn, &review).await?;
        txn.commit().await?;
        self.outbox.wake();
        Ok(review)
    }

    /// Starts the next instance: snapshots the assignments under review, with a
    /// recommendation for each.
    async fn start_instance(&self, txn: &DatabaseTransaction, review: &mut ReviewRow) -> Result<()> {
        let now = self.now();
        review.instance += 1;
        review.status = ReviewStatus::InProgress;
        review.instance_start = Some(now);
        review.instance_end = Some(now + review.duration_ms);
        review.remind_at = (review.duration_ms >= store::REMINDER_MIN_STAGE_MS).then(|| now + review.duration_ms / 2);
        let assignments = store::seen_in_scope(txn, &review.role_id, &review.scope, now).await?;
        for a in assignments {
            if review.review_scope == "both" || a.kind == review.review_scope {
                let item = self.item_for(txn, review, a, now).await?;
                store::insert_item(txn, &item).await?;
            }
        }
        store::update_review(txn, review).await?;
        self.emit_review(
            txn,
            EventType::ReviewStarted,
            &self.review_event(review, None, "", None),
        )
        .await?;
        self.tell_reviewers(txn, review, Happening::ReviewStarted).await
    }

    /// The current instance's item for assignment `a`, in force when it started (`start`),
    /// with its recommendation as of then.
    async fn item_for(
        &self,
        txn: &DatabaseTransaction,
        review: &ReviewRow,
        a: store::SeenAssignment,
        start: i64,
    ) -> Result<ItemRow> {
        let recommendation = if a.kind == "eligible" {
            let last = store::last_activation(txn, &a.principal_id, &a.role_id).await?;
            if last.is_some_and(|at| at > start - UNUSED_MS) {
                "approve"
            } else if a.start_at > start - UNUSED_MS {
                // Held for less time than is weighed: too new to tell, no recommendation.
                ""
            } else {
                "deny"
            }
        } else {
            // Activity of standing access is not visible to PIM: no recommendation.
            ""
        };
        Ok(ItemRow {
            id: uuid::Uuid::now_v7().to_string(),
            review_id: review.id.clone(),
            instance: review.instance,
            assignment_id: a.assignment_id,
            kind: a.kind,
            principal_id: a.principal_id,
            role_id: a.role_id,
            scope: a.scope,
            recommendation: recommendation.into(),
            decision: None,
            justification: String::new(),
            reviewer_id: String::new(),
            decided_at: None,
            outcome: String::new(),
        })
    }

    /// An assignment in force when an instance in progress started, whose event reached
    /// approval only after it started (its copy was behind, under a burst or a Redis outage):
    /// that instance reviews it too, so nothing in force at the start is left out unseen.
    /// (Its start is the service's own time: an assignment is never backdated.)
    pub async fn arrived_late(&self, txn: &DatabaseTransaction, a: &store::SeenAssignment) -> Result<()> {
        for review in store::reviews_in_progress_of(txn, &a.role_id).await? {
            let Some(start) = review.instance_start else {
                continue;
            };
            let in_force = a.start_at <= start && a.end_at.is_none_or(|end| end > start);
            let reviewed = review.review_scope == "both" || a.kind == review.review_scope;
            if in_force && reviewed && store::covers(&review.scope, &a.scope) {
                let item = self.item_for(txn, &review, a.clone(), start).await?;
                store::insert_item(txn, &item).await?;
            }
        }
        Ok(())
    }

    /// Tells the reviewers, where notifications are on, that an instance started or, half
    /// through it, that items still wait: a `NotificationsDue` on approval's stream, which
    /// audit mails. Named reviewers (groups through their members) hear while any item is
    /// undecided; in a self-review each holder with an undecided item hears.
    async fn tell_reviewers(&self, txn: &DatabaseTransaction, review: &ReviewRow, happening: Happening) -> Result<()> {
        let switched_off = match happening {
            Happening::ReviewReminder => review.reminders_off,
            _ => review.mail_off,
        };
        if !self.notify || switched_off {
            return Ok(());
        }
        let undecided: Vec<ItemRow> = store::items(txn, &review.id, review.instance)
            .await?
            .into_iter()
            .filter(|i| i.decision.is_none())
            .collect();
        if undecided.is_empty() {
            return Ok(());
        }
        let mut reviewers = review.reviewer_ids.clone();
        if review.self_review {
            reviewers.extend(undecided.iter().map(|i| i.principal_id.clone()));
        }
        reviewers.sort();
        reviewers.dedup();
        let due = ev::NotificationsDue {
            review_id: review.id.clone(),
            review_name: review.name.clone(),
            undecided_items: i32::try_from(undecided.len()).unwrap_or(i32::MAX),
            role_id: review.role_id.clone(),
            scope: review.scope.clone(),
            end_time: review.instance_end.map(pim_runtime::db::to_timestamp),
            happening: happening as i32,
            notices: vec![ev::Notice {
                party: NotificationParty::Reviewer as i32,
                principal_ids: reviewers,
                emails: Vec::new(),
                critical: true,
                owners_of: Vec::new(),
            }],
            ..Default::default()
        };
        self.outbox
            .enqueue(
                txn,
                pim_runtime::events::streams::APPROVAL,
                &pim_runtime::events::envelope(Source::Approval, EventType::NotificationsDue, &review.id, &due),
            )
            .await?;
        Ok(())
    }

    /// Completes the current instance: unanswered items take the default decision, and with
    /// auto-apply each denied assignment is removed through assignment.
    async fn complete_instance(
        &self,
        txn: &DatabaseTransaction,
        review: &mut ReviewRow,
        caller: Option<&Caller>,
    ) -> Result<()> {
        let items = store::items(txn, &review.id, review.instance).await?;
        for mut item in items {
            if item.decision.is_none() {
                let default = match review.default_decision.as_str() {
                    "remove" => Some(Decision::Deny),
                    "approve" => Some(Decision::Approve),
                    "recommendation" => Decision::parse(&item.recommendation),
                    _ => None,
                };
                if default.is_some() {
                    item.decision = default;
                    item.justification = format!("default decision ({})", review.default_decision);
                    item.reviewer_id = "system".into();
                    item.decided_at = Some(self.now());
                }
            }
            let remove = review.auto_apply && item.decision == Some(Decision::Deny);
            // A removal is asked of assignment, which answers with what it did (a protection
            // may keep the assignment): the item says "removal requested" until then.
            item.outcome = if remove { "removal requested" } else { "kept" }.into();
            store::update_item(txn, &item).await?;
            if remove {
                let mut event = self.review_event(review, Some(&item), "deny", caller);
                if event.actor.is_none() {
                    event.actor = Some(pim_proto::common::v1::Actor {
                        principal_id: if item.reviewer_id == "system" {
                            "system".into()
                        } else {
                            item.reviewer_id.clone()
                        },
                        kind: 0,
                        display_name: format!("access review {}", review.name),
                        session_id: String::new(),
                    });
                }
                if event.justification.is_empty() {
                    event.justification = format!("denied in access review {}", review.name);
                }
                self.emit_review(txn, EventType::ReviewRemovalRequested, &event).await?;
            }
        }
        self.emit_review(
            txn,
            EventType::ReviewCompleted,
            &self.review_event(review, None, "", caller),
        )
        .await?;
        let period = recurrence_period(&review.recurrence).flatten();
        match period {
            Some(p) => {
                review.status = ReviewStatus::NotStarted;
                review.start_at = review.instance_start.unwrap_or(review.start_at) + p;
            }
            None => review.status = ReviewStatus::Completed,
        }
        Ok(store::update_review(txn, review).await?)
    }

    /// Starts and completes the reviews that are due (SKIP LOCKED shares them between replicas).
    pub async fn run_review_timers_once(&self) -> Result<usize> {
        let now = self.now();
        let txn = self.db.begin().await?;
        let due = store::due_reviews(&txn, now, 100).await?;
        let fired = due.len();
        for mut review in due {
            let ends = review.instance_end.is_some_and(|at| at <= now);
            if review.status == ReviewStatus::InProgress && ends {
                self.complete_instance(&txn, &mut review, None).await?;
            } else if review.status == ReviewStatus::InProgress && review.remind_at.is_some_and(|at| at <= now) {
                review.remind_at = None;
                store::update_review(&txn, &review).await?;
                self.tell_reviewers(&txn, &review, Happening::ReviewReminder).await?;
            }
            if review.status == ReviewStatus::NotStarted && review.start_at <= now {
                self.start_instance(&txn, &mut review).await?;
            }
        }
        txn.commit().await?;
        if fired > 0 {
            self.outbox.wake();
        }
        Ok(fired)
    }
}
