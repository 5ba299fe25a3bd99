//! The approval database's schema, migration by migration.

use super::*;

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        let mut migrations = backbone_migrations();
        migrations.extend(vec![
            SqlMigration::boxed("m0001_approvals", |_| {
                "CREATE TABLE approvals (
                    id TEXT PRIMARY KEY,
                    request_id TEXT NOT NULL UNIQUE,
                    requester_id TEXT NOT NULL,
                    role_id TEXT NOT NULL,
                    role_name TEXT NOT NULL,
                    scope TEXT NOT NULL,
                    duration_ms BIGINT NOT NULL,
                    justification TEXT NOT NULL,
                    ticket_system TEXT NOT NULL,
                    ticket_number TEXT NOT NULL,
                    status TEXT NOT NULL CHECK (status IN ('Pending', 'Approved', 'Denied', 'Expired', 'Canceled')),
                    stages TEXT NOT NULL,
                    stage INTEGER NOT NULL,
                    stage_started_at BIGINT NOT NULL,
                    expires_at BIGINT NOT NULL,
                    escalated BOOLEAN NOT NULL,
                    created_at BIGINT NOT NULL,
                    completed_at BIGINT,
                    rev BIGINT NOT NULL UNIQUE
                );
                CREATE INDEX approvals_pending ON approvals (status, expires_at);
                CREATE INDEX approvals_requester ON approvals (requester_id, rev);
                CREATE TABLE approval_decisions (
                    approval_id TEXT NOT NULL REFERENCES approvals (id),
                    approver_id TEXT NOT NULL,
                    requester_id TEXT NOT NULL,
                    stage INTEGER NOT NULL,
                    decision TEXT NOT NULL CHECK (decision IN ('approve', 'deny')),
                    justification TEXT NOT NULL,
                    decided_at BIGINT NOT NULL,
                    PRIMARY KEY (approval_id, approver_id),
                    CHECK (approver_id <> requester_id)
                );
                CREATE INDEX approval_decisions_approver ON approval_decisions (approver_id);
                CREATE TABLE approval_revision (
                    id INTEGER PRIMARY KEY,
                    rev BIGINT NOT NULL
                );
                INSERT INTO approval_revision (id, rev) VALUES (1, 0);
                CREATE TABLE activations (
                    assignment_id TEXT PRIMARY KEY,
                    principal_id TEXT NOT NULL,
                    role_id TEXT NOT NULL,
                    role_name TEXT NOT NULL,
                    scope TEXT NOT NULL,
                    start_at BIGINT NOT NULL,
                    end_at BIGINT
                );
                CREATE INDEX activations_principal ON activations (principal_id, start_at)"
                    .to_owned()
            }),
            SqlMigration::boxed("m0003_approval_trace", |_| {
                "ALTER TABLE approvals ADD COLUMN traceparent TEXT NOT NULL DEFAULT ''".to_owned()
            }),
            SqlMigration::boxed("m0002_access_reviews", |_| {
                "CREATE TABLE assignments_seen (
                    assignment_id TEXT PRIMARY KEY,
                    kind TEXT NOT NULL,
                    principal_id TEXT NOT NULL,
                    role_id TEXT NOT NULL,
                    scope TEXT NOT NULL,
                    start_at BIGINT NOT NULL,
                    end_at BIGINT
                );
                CREATE INDEX assignments_seen_role ON assignments_seen (role_id);
                CREATE TABLE access_reviews (
                    id TEXT PRIMARY KEY,
                    name TEXT NOT NULL,
                    role_id TEXT NOT NULL,
                    scope TEXT NOT NULL,
                    review_scope TEXT NOT NULL CHECK (review_scope IN ('eligible', 'active', 'both')),
                    reviewer_ids TEXT NOT NULL,
                    self_review BOOLEAN NOT NULL,
                    start_at BIGINT NOT NULL,
                    duration_ms BIGINT NOT NULL,
                    recurrence TEXT NOT NULL,
                    default_decision TEXT NOT NULL,
                    auto_apply BOOLEAN NOT NULL,
                    status TEXT NOT NULL CHECK (status IN ('NotStarted', 'InProgress', 'Completed', 'Stopped')),
                    instance INTEGER NOT NULL,
                    instance_start BIGINT,
                    instance_end BIGINT,
                    created_by TEXT NOT NULL,
                    created_at BIGINT NOT NULL
                );
                CREATE INDEX access_reviews_status ON access_reviews (status);
                CREATE TABLE review_items (
                    id TEXT PRIMARY KEY,
                    review_id TEXT NOT NULL REFERENCES access_reviews (id),
                    instance INTEGER NOT NULL,
                    assignment_id TEXT NOT NULL,
                    kind TEXT NOT NULL,
                    principal_id TEXT NOT NULL,
                    role_id TEXT NOT NULL,
                    scope TEXT NOT NULL,
                    recommendation TEXT NOT NULL,
                    decision TEXT NOT NULL CHECK (decision IN ('', 'approve', 'deny')),
                    justification TEXT NOT NULL,
                    reviewer_id TEXT NOT NULL,
                    decided_at BIGINT,
                    outcome TEXT NOT NULL,
                    UNIQUE (review_id, instance, assignment_id)
                );
                CREATE INDEX review_items_review ON review_items (review_id, instance)"
                    .to_owned()
            }),
            // A reminder once per approval stage and per access review instance, and the next moment each approval's timers are due
            // (expiry, escalation, reminder) as a column the timers read by index. Every
            // pending approval is looked at once on the first pass, which sets it right.
            SqlMigration::boxed("m0004_approval_reminders", |_| {
                "ALTER TABLE approvals ADD COLUMN reminded BOOLEAN NOT NULL DEFAULT FALSE;
                ALTER TABLE approvals ADD COLUMN timer_at BIGINT NOT NULL DEFAULT 0;
                UPDATE approvals SET timer_at = stage_started_at;
                CREATE INDEX approvals_timer ON approvals (status, timer_at);
                ALTER TABLE access_reviews ADD COLUMN remind_at BIGINT"
                    .to_owned()
            }),
            // A review's own mail switches (Entra's "Mail notifications" and "Reminders").
            SqlMigration::boxed("m0005_review_mail_switches", |_| {
                "ALTER TABLE access_reviews ADD COLUMN mail_off BOOLEAN NOT NULL DEFAULT FALSE;
                ALTER TABLE access_reviews ADD COLUMN reminders_off BOOLEAN NOT NULL DEFAULT FALSE"
                    .to_owned()
            }),
            // What the request asks for, so an approver tells an activation from an extension
            // (an approval opened before says nothing more than it did: '' is unspecified).
            SqlMigration::boxed("m0006_approval_request_kind", |_| {
                "ALTER TABLE approvals ADD COLUMN action TEXT NOT NULL DEFAULT '';
                ALTER TABLE approvals ADD COLUMN kind TEXT NOT NULL DEFAULT '';
                ALTER TABLE approvals ADD COLUMN end_at BIGINT"
                    .to_owned()
            }),
            // Who opened each approval's current stage, recorded rather than told from the time
            // (two decisions of one stage may share a millisecond). Pending approvals past their
            // first stage take the approver whose decision was made as the stage started.
            SqlMigration::boxed("m0007_stage_opened_by", |_| {
                "ALTER TABLE approvals ADD COLUMN stage_opened_by TEXT NOT NULL DEFAULT '';
                UPDATE approvals SET stage_opened_by = COALESCE((SELECT MAX(d.approver_id) FROM approval_decisions d \
                 WHERE d.approval_id = approvals.id AND d.stage = approvals.stage - 1 \
                 AND d.decided_at = approvals.stage_started_at), '') WHERE stage > 0"
                    .to_owned()
            }),
            // The group whose eligibility an activation rested on: a review weighs a group's
            // eligibility by its members' activations through it.
            SqlMigration::boxed("m0008_activation_via_group", |_| {
                "ALTER TABLE activations ADD COLUMN via_group_id TEXT NOT NULL DEFAULT '';
                CREATE INDEX activations_via_group ON activations (via_group_id, role_id)"
                    .to_owned()
            }),
            // The later start a scheduled request asks for, for approvers to weigh.
            SqlMigration::boxed("m0009_approval_start", |_| {
                "ALTER TABLE approvals ADD COLUMN start_at BIGINT".to_owned()
            }),
        ]);
        migrations
    }
}
