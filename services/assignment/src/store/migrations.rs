//! The assignment database's schema, migration by migration (with the built-in role
//! definitions).

use super::*;

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        let mut migrations = backbone_migrations();
        migrations.extend(vec![
            SqlMigration::boxed("m0001_assignments", |_| {
                "CREATE TABLE role_definitions (
                    id TEXT PRIMARY KEY,
                    name TEXT NOT NULL UNIQUE,
                    description TEXT NOT NULL,
                    permissions TEXT NOT NULL,
                    built_in BOOLEAN NOT NULL,
                    privileged BOOLEAN NOT NULL,
                    created_at BIGINT NOT NULL
                );
                CREATE TABLE requests (
                    id TEXT PRIMARY KEY,
                    action TEXT NOT NULL,
                    kind TEXT NOT NULL,
                    principal_id TEXT NOT NULL,
                    role_id TEXT NOT NULL REFERENCES role_definitions (id),
                    scope TEXT NOT NULL,
                    status TEXT NOT NULL,
                    start_at BIGINT NOT NULL,
                    end_at BIGINT,
                    justification TEXT NOT NULL,
                    ticket_system TEXT NOT NULL,
                    ticket_number TEXT NOT NULL,
                    requested_by TEXT NOT NULL,
                    created_at BIGINT NOT NULL,
                    updated_at BIGINT NOT NULL,
                    assignment_id TEXT,
                    duration_ms BIGINT,
                    policy TEXT NOT NULL
                );
                CREATE INDEX requests_principal ON requests (principal_id, created_at);
                CREATE INDEX requests_status ON requests (status, created_at);
                                                CREATE TABLE group_memberships (
                    group_id TEXT NOT NULL,
                    principal_id TEXT NOT NULL,
                    PRIMARY KEY (group_id, principal_id)
                );
                CREATE INDEX group_memberships_principal ON group_memberships (principal_id);
                CREATE TABLE observed_grants (
                    system TEXT NOT NULL,
                    principal_id TEXT NOT NULL,
                    role_id TEXT NOT NULL,
                    scope TEXT NOT NULL,
                    managed BOOLEAN NOT NULL,
                    first_seen BIGINT NOT NULL,
                                        last_seen BIGINT NOT NULL,
                    report_id TEXT NOT NULL,
                    PRIMARY KEY (system, principal_id, role_id, scope)
                );
                CREATE TABLE role_policies (
                    role_id TEXT NOT NULL REFERENCES role_definitions (id),
                    scope TEXT NOT NULL,
                    policy TEXT NOT NULL,
                    updated_at BIGINT NOT NULL,
                    updated_by TEXT NOT NULL,
                    PRIMARY KEY (role_id, scope)
                );
                CREATE TABLE assignments (
                    id TEXT PRIMARY KEY,
                    kind TEXT NOT NULL,
                    principal_id TEXT NOT NULL,
                    principal_kind TEXT NOT NULL,
                    principal_name TEXT NOT NULL,
                    role_id TEXT NOT NULL REFERENCES role_definitions (id),
                    scope TEXT NOT NULL,
                    start_at BIGINT NOT NULL,
                    end_at BIGINT,
                    status TEXT NOT NULL,
                    origin TEXT NOT NULL,
                    announced BOOLEAN NOT NULL,
                    request_id TEXT NOT NULL,
                    created_by TEXT NOT NULL,
                    created_at BIGINT NOT NULL,
                    ended_at BIGINT
                );
                CREATE INDEX assignments_principal ON assignments (principal_id, status);
                CREATE INDEX assignments_role ON assignments (role_id, status);
                CREATE INDEX assignments_ends ON assignments (status, end_at);
                CREATE INDEX assignments_starts ON assignments (status, announced, start_at)"
                    .to_owned()
            }),
            SqlMigration::boxed("m0002_built_in_roles", |_| {
                BUILT_IN_ROLES
                    .iter()
                    .map(|r| {
                        format!(
                            "INSERT INTO role_definitions (id, name, description, permissions, built_in, privileged, created_at) \
                             VALUES ('{}', '{}', '{}', '{}', TRUE, {}, 0)",
                            r.id,
                            r.name,
                            r.description.replace('\'', "''"),
                            r.permissions.join(" "),
                            if r.privileged { "TRUE" } else { "FALSE" },
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(";\n")
            }),
            SqlMigration::boxed("m0003_assignments_principal_role", |_| {
                // Activation looks up one principal's assignments of one role: an index on
                // both keeps that a point lookup even when thousands share the role.
                "CREATE INDEX assignments_principal_role ON assignments (principal_id, role_id, status);
                 DROP INDEX assignments_principal"
                    .to_owned()
            }),
            SqlMigration::boxed("m0004_assignment_versions", |_| {
                // Which of two states of an assignment is newer, for the access indexes that
                // learn them both from this replica's commits and from the stream.
                "ALTER TABLE assignments ADD COLUMN version BIGINT NOT NULL DEFAULT 1".to_owned()
            }),
            SqlMigration::boxed("m0005_one_activation", |d| {
                // At most one live activation, and one activation waiting for approval, per
                // principal, role and scope: the database refuses the second, however the
                // requests race. Duplicates a race left before are ended first (the oldest
                // stays), so the indexes can be made.
                let now = sql_now_ms(d.backend());
                format!(
                    "UPDATE assignments SET status = 'deactivated', ended_at = {now}, end_at = {now}
                     WHERE status = 'active' AND origin = 'activation' AND id NOT IN
                       (SELECT MIN(id) FROM assignments WHERE status = 'active' AND origin = 'activation'
                        GROUP BY principal_id, role_id, scope);
                     UPDATE requests SET status = 'Canceled', updated_at = {now}
                     WHERE status = 'PendingApproval' AND action = 'selfActivate' AND id NOT IN
                       (SELECT MIN(id) FROM requests WHERE status = 'PendingApproval' AND action = 'selfActivate'
                        GROUP BY principal_id, role_id, scope);
                     CREATE UNIQUE INDEX assignments_one_activation ON assignments (principal_id, role_id, scope)
                       WHERE status = 'active' AND origin = 'activation';
                     CREATE UNIQUE INDEX requests_one_pending_activation ON requests (principal_id, role_id, scope)
                       WHERE status = 'PendingApproval' AND action = 'selfActivate'"
                )
            }),
            SqlMigration::boxed("m0006_one_admin_assignment", |d| {
                // At most one administrator's assignment of each kind (eligible, active) per
                // principal, role and scope in force or scheduled: the database refuses the
                // second, however the calls race. Duplicates made before are removed first;
                // the one kept is the one that grants most: in force before scheduled,
                // permanent before time-bound, the latest end first (so a permanent Global
                // Administrator is never the one removed). No events are written for the
                // removed ones (a migration cannot sign them): a known limit.
                let now = sql_now_ms(d.backend());
                format!(
                    "UPDATE assignments SET status = 'removed', ended_at = {now}, end_at = {now}
                     WHERE status = 'active' AND origin = 'admin' AND id NOT IN
                       (SELECT id FROM
                          (SELECT id, ROW_NUMBER() OVER (
                             PARTITION BY kind, principal_id, role_id, scope
                             ORDER BY CASE WHEN start_at <= {now} THEN 0 ELSE 1 END,
                                      CASE WHEN end_at IS NULL THEN 0 ELSE 1 END,
                                      end_at DESC, id) AS n
                           FROM assignments WHERE status = 'active' AND origin = 'admin') AS ranked
                        WHERE n = 1);
                     CREATE UNIQUE INDEX assignments_one_admin ON assignments (kind, principal_id, role_id, scope)
                       WHERE status = 'active' AND origin = 'admin'"
                )
            }),
            SqlMigration::boxed("m0007_one_pending_request", |d| {
                // One request waiting for approval per principal, role and scope, whatever it
                // asks (activate, extend, renew), as m0005 holds it for activations: later
                // duplicates are canceled first.
                let now = sql_now_ms(d.backend());
                format!(
                    "UPDATE requests SET status = 'Canceled', updated_at = {now}
                     WHERE status = 'PendingApproval' AND id NOT IN
                       (SELECT MIN(id) FROM requests WHERE status = 'PendingApproval'
                        GROUP BY principal_id, role_id, scope);
                     DROP INDEX requests_one_pending_activation;
                     CREATE UNIQUE INDEX requests_one_pending ON requests (principal_id, role_id, scope)
                       WHERE status = 'PendingApproval'"
                )
            }),
            SqlMigration::boxed("m0008_request_outcome_reason", |_| {
                // Why a request ended as it did, for its requester (an approver's words).
                "ALTER TABLE requests ADD COLUMN outcome_reason TEXT NOT NULL DEFAULT ''".to_owned()
            }),
            SqlMigration::boxed("m0009_custom_roles", |_| {
                // A deleted custom role is kept (requests and ended assignments name it) but
                // leaves the catalogue and frees its name; names are unique whatever their case.
                "ALTER TABLE role_definitions ADD COLUMN deleted_at BIGINT;
                 CREATE UNIQUE INDEX role_definitions_name_ci ON role_definitions (lower(name))"
                    .to_owned()
            }),
            SqlMigration::boxed("m0010_group_access_roles", |_| group_access_roles_sql()),
            // Again, for a database whose m0010 (as first written) left the roles out because a
            // custom role had taken one of the names.
            SqlMigration::boxed("m0011_group_access_roles_reclaimed", |_| group_access_roles_sql()),
            SqlMigration::boxed("m0012_expiry_notice", |_| {
                // Whether the holder of an active assignment was told it ends soon (once).
                "ALTER TABLE assignments ADD COLUMN expiry_noticed BOOLEAN NOT NULL DEFAULT FALSE".to_owned()
            }),
            // The version of each membership identity last told of (`set_group_membership`):
            // a change older than it, delivered late, changes nothing.
            SqlMigration::boxed("m0013_membership_versions", |_| {
                "CREATE TABLE group_membership_versions (
                    group_id TEXT NOT NULL,
                    principal_id TEXT NOT NULL,
                    version BIGINT NOT NULL,
                    PRIMARY KEY (group_id, principal_id)
                )"
                .to_owned()
            }),
            // Whether each user identity told of (disabled, enabled, deleted) may sign in, as of
            // the event's time (`set_user_enabled`): a disabled user's permanent Global
            // Administrator assignment keeps no one able to administer.
            SqlMigration::boxed("m0014_user_states", |_| {
                "CREATE TABLE user_states (
                    principal_id TEXT PRIMARY KEY,
                    enabled BOOLEAN NOT NULL,
                    as_of BIGINT NOT NULL
                )"
                .to_owned()
            }),
            // Whether identity told the state (false: a Global Administrator counted out by
            // `PrepareUserDisable` before the directory's word): only a told disable makes a
            // user hold nothing, so a disable that failed after it locks no one out.
            SqlMigration::boxed("m0015_user_states_told", |_| {
                "ALTER TABLE user_states ADD COLUMN told BOOLEAN NOT NULL DEFAULT TRUE".to_owned()
            }),
            // A system's reports take turns on its row: two at once (a connector's retry)
            // would each forget what the other listed.
            SqlMigration::boxed("m0016_observed_reports", |_| {
                "CREATE TABLE observed_reports (
                    system TEXT PRIMARY KEY,
                    report_id TEXT NOT NULL,
                    reported_at BIGINT NOT NULL
                )"
                .to_owned()
            }),
            // One activation and one request to keep an assignment (extend, renew) may wait
            // at once for each principal, role and scope: asking for more time no longer
            // keeps a principal from activating the role meanwhile.
            SqlMigration::boxed("m0017_pending_activation_apart", |_| {
                "DROP INDEX requests_one_pending;
                CREATE UNIQUE INDEX requests_one_pending ON requests (principal_id, role_id, scope, (action = 'selfActivate'))
                  WHERE status = 'PendingApproval';
                CREATE INDEX requests_pending_of_assignment ON requests (assignment_id) WHERE status = 'PendingApproval'"
                    .to_owned()
            }),
            // When each assignment last changed (made, its end moved, ended), by the clock of
            // the replica that changed it: every replica reads what changed lately from the
            // database, so a change whose event never reached it (Redis lost it) still does.
            SqlMigration::boxed("m0018_assignment_changes", |_| {
                "ALTER TABLE assignments ADD COLUMN changed_at BIGINT;
                UPDATE assignments SET changed_at = COALESCE(ended_at, created_at);
                CREATE INDEX assignments_changed ON assignments (changed_at)"
                    .to_owned()
            }),
            // A custom role's name is told apart from the others' by how it reads, not only by
            // its letters (`Payrnents Approver` beside `Payments Approver`). A deleted role's
            // name holds nothing, as a built-in one's: none may look like a built-in role's.
            NameKeysMigration::boxed("m0019_lookalike_role_names", &[NamedRows {
                table: "role_definitions",
                column: "name",
                rows: "built_in = FALSE AND deleted_at IS NULL",
            }]),
        ]);
        migrations
    }
}

/// PIM for Groups: membership and ownership of a group, governed like roles, are the
/// built-in roles Group Member and Group Owner. A custom role that took one of their names
/// gives it up (renamed "… (custom)", or "… (custom ID)" when that is taken too; its id,
/// assignments and policies stay). Idempotent.
pub(super) fn group_access_roles_sql() -> String {
    GROUP_ACCESS_ROLES
        .iter()
        .map(|r| {
            format!(
                "UPDATE role_definitions SET name = CASE \
                   WHEN EXISTS (SELECT 1 FROM role_definitions WHERE lower(name) = lower('{name} (custom)')) \
                   THEN name || ' (custom ' || id || ')' ELSE name || ' (custom)' END \
                 WHERE lower(name) = lower('{name}') AND id <> '{id}';
                 INSERT INTO role_definitions (id, name, description, permissions, built_in, privileged, created_at) \
                 SELECT '{id}', '{name}', '{description}', '', TRUE, FALSE, 0 \
                 WHERE NOT EXISTS (SELECT 1 FROM role_definitions WHERE id = '{id}')",
                id = r.id,
                name = r.name,
                description = r.description.replace('\'', "''"),
            )
        })
        .collect::<Vec<_>>()
        .join(";\n")
}

/// SQL for the current time in milliseconds since the epoch, for migrations.
pub(super) fn sql_now_ms(backend: DbBackend) -> &'static str {
    if backend == DbBackend::Postgres {
        "CAST(EXTRACT(EPOCH FROM now()) * 1000 AS BIGINT)"
    } else {
        "CAST(strftime('%s', 'now') AS INTEGER) * 1000"
    }
}
