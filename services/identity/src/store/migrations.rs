//! The identity database's schema, migration by migration.

use super::*;

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        let mut migrations = backbone_migrations();
        migrations.extend(vec![
            SqlMigration::boxed("m0001_directory", |d| {
                format!(
                    "CREATE TABLE users (
                        id TEXT PRIMARY KEY,
                        user_name TEXT NOT NULL UNIQUE,
                        display_name TEXT NOT NULL,
                        email TEXT NOT NULL,
                        password_hash TEXT NOT NULL,
                        enabled BOOLEAN NOT NULL,
                        created_at BIGINT NOT NULL,
                        last_sign_in_at BIGINT
                    );
                    CREATE TABLE service_principals (
                        id TEXT PRIMARY KEY,
                        display_name TEXT NOT NULL,
                        secret_hash TEXT NOT NULL,
                        enabled BOOLEAN NOT NULL,
                        created_at BIGINT NOT NULL,
                        last_sign_in_at BIGINT
                    );
                    CREATE TABLE signing_keys (
                        kid TEXT PRIMARY KEY,
                        private_key {blob} NOT NULL,
                        public_key TEXT NOT NULL,
                        created_at BIGINT NOT NULL,
                                            retire_after BIGINT
                )",
                    blob = d.blob()
                )
            }),
            SqlMigration::boxed("m0002_mfa", |d| {
                format!(
                    "CREATE TABLE mfa_methods (
                        id TEXT PRIMARY KEY,
                        user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
                        kind TEXT NOT NULL,
                        secret {blob} NOT NULL,
                        confirmed BOOLEAN NOT NULL,
                        last_step BIGINT NOT NULL,
                        created_at BIGINT NOT NULL
                    );
                    CREATE INDEX mfa_methods_user ON mfa_methods (user_id);
                    CREATE TABLE recovery_codes (
                        user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
                        code_hash TEXT NOT NULL,
                        used_at BIGINT,
                        PRIMARY KEY (user_id, code_hash)
                    );
                                        CREATE TABLE groups (
                        id TEXT PRIMARY KEY,
                        display_name TEXT NOT NULL,
                        description TEXT NOT NULL,
                        is_assignable_to_role BOOLEAN NOT NULL,
                        created_at BIGINT NOT NULL,
                        created_by TEXT NOT NULL
                    );
                    CREATE TABLE group_members (
                        group_id TEXT NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
                        principal_id TEXT NOT NULL,
                        added_at BIGINT NOT NULL,
                        PRIMARY KEY (group_id, principal_id)
                    );
                    CREATE INDEX group_members_principal ON group_members (principal_id);
                    CREATE TABLE group_owners (
                        group_id TEXT NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
                        principal_id TEXT NOT NULL,
                        PRIMARY KEY (group_id, principal_id)
                    );
                                        CREATE TABLE sessions (
                        id TEXT PRIMARY KEY,
                        principal_id TEXT NOT NULL,
                        refresh_hash TEXT NOT NULL UNIQUE,
                        created_at BIGINT NOT NULL,
                        expires_at BIGINT NOT NULL,
                        revoked_at BIGINT
                    );
                    CREATE INDEX sessions_principal ON sessions (principal_id);
                    CREATE TABLE mfa_failures (
                        user_id TEXT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
                        failures INTEGER NOT NULL,
                        window_start BIGINT NOT NULL,
                        locked_until BIGINT
                    )",
                    blob = d.blob()
                )
            }),
            // The MFA lifecycle: when a first method may be enrolled with the password alone,
            // and administrators' one-time enrolment passes (only their hashes).
            SqlMigration::boxed("m0003_mfa_lifecycle", |_| {
                "ALTER TABLE users ADD COLUMN mfa_enroll_until BIGINT;
                CREATE TABLE enrollment_passes (
                    id TEXT PRIMARY KEY,
                    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
                    code_hash TEXT NOT NULL UNIQUE,
                    created_by TEXT NOT NULL,
                    created_at BIGINT NOT NULL,
                    expires_at BIGINT NOT NULL,
                    uses_left INTEGER NOT NULL
                );
                CREATE INDEX enrollment_passes_user ON enrollment_passes (user_id)"
                    .to_owned()
            }),
            // Failed sign-ins per principal and per source, shared by replicas, kept across
            // restarts (they were counted in each replica's memory).
            SqlMigration::boxed("m0004_sign_in_failures", |_| {
                "CREATE TABLE sign_in_failures (
                    key TEXT PRIMARY KEY,
                    failures BIGINT NOT NULL,
                    window_start BIGINT NOT NULL
                )"
                .to_owned()
            }),
            SqlMigration::boxed("m0005_revoked_principals", |_| {
                "CREATE TABLE revoked_principals (
                    principal_id TEXT PRIMARY KEY,
                    revoked_at BIGINT NOT NULL
                );
                CREATE INDEX sessions_revoked ON sessions (revoked_at)"
                    .to_owned()
            }),
            // One-time announcements (`claim_announcement`): users' addresses for audit.
            SqlMigration::boxed("m0006_announcements", |_| {
                "CREATE TABLE announcements (
                    name TEXT PRIMARY KEY,
                    announced_at BIGINT NOT NULL
                )"
                .to_owned()
            }),
            // Passkeys: a method's name, and the state of a WebAuthn ceremony between its
            // Begin and its Finish (taken once, by one DELETE … RETURNING).
            SqlMigration::boxed("m0007_passkeys", |_| {
                "ALTER TABLE mfa_methods ADD COLUMN name TEXT NOT NULL DEFAULT '';
                CREATE TABLE webauthn_ceremonies (
                    id TEXT PRIMARY KEY,
                    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
                    kind TEXT NOT NULL,
                    state TEXT NOT NULL,
                    expires_at BIGINT NOT NULL
                );
                CREATE INDEX webauthn_ceremonies_expiry ON webauthn_ceremonies (expires_at)"
                    .to_owned()
            }),
            // Each member or owner link's version, so consumers given its changes out of order
            // keep the last (`next_link_version`).
            SqlMigration::boxed("m0008_link_versions", |_| {
                "CREATE TABLE link_versions (
                    group_id TEXT NOT NULL,
                    principal_id TEXT NOT NULL,
                    link TEXT NOT NULL,
                    version BIGINT NOT NULL,
                    PRIMARY KEY (group_id, principal_id, link)
                )"
                .to_owned()
            }),
            // The refresh tokens a session has spent: one shown again was copied, and the
            // session it belongs to ends (refresh token reuse detection).
            SqlMigration::boxed("m0009_spent_refresh_tokens", |_| {
                "CREATE TABLE spent_refresh_tokens (
                    refresh_hash TEXT PRIMARY KEY,
                    session_id TEXT NOT NULL,
                    spent_at BIGINT NOT NULL
                );
                CREATE INDEX spent_refresh_tokens_session ON spent_refresh_tokens (session_id)"
                    .to_owned()
            }),
            // Where each user last signed in from (a digest of the address): failures from a
            // familiar source count apart, so guesses from elsewhere cannot lock them out.
            SqlMigration::boxed("m0010_familiar_sources", |_| {
                "CREATE TABLE familiar_sources (
                    user_id TEXT NOT NULL,
                    source TEXT NOT NULL,
                    last_at BIGINT NOT NULL,
                    PRIMARY KEY (user_id, source)
                )"
                .to_owned()
            }),
            // A group's and a service principal's name is held once, as a user name is, in any
            // case (`ops` and `OPS` would read as one): the CLI, the portal and config files
            // name them by it. Names held twice before are told apart by the id of each but
            // the first (made then, no event: the id itself is unchanged, and every record
            // names it).
            SqlMigration::boxed("m0011_unique_names", |_| {
                "UPDATE groups SET display_name = display_name || ' (' || id || ')'
                    WHERE id NOT IN (SELECT MIN(id) FROM groups GROUP BY LOWER(display_name));
                 CREATE UNIQUE INDEX groups_display_name ON groups (LOWER(display_name));
                 UPDATE service_principals SET display_name = display_name || ' (' || id || ')'
                    WHERE id NOT IN (SELECT MIN(id) FROM service_principals GROUP BY LOWER(display_name));
                 CREATE UNIQUE INDEX service_principals_display_name ON service_principals (LOWER(display_name))"
                    .to_owned()
            }),
            // A rotated client secret may keep working beside the new one for a while.
            SqlMigration::boxed("m0012_previous_client_secret", |_| {
                "ALTER TABLE service_principals ADD COLUMN previous_secret_hash TEXT;
                 ALTER TABLE service_principals ADD COLUMN previous_secret_until BIGINT"
                    .to_owned()
            }),
            // When the kept secret was rotated: the tokens issued up to then stop with it. An
            // overlap running at the upgrade has no such instant on record: its creation time
            // stands in, so its end stops the secret but not the tokens from before it (they
            // expire within a token's lifetime).
            SqlMigration::boxed("m0013_kept_secret_since", |_| {
                "ALTER TABLE service_principals ADD COLUMN previous_secret_since BIGINT;
                 UPDATE service_principals SET previous_secret_since = created_at
                    WHERE previous_secret_hash IS NOT NULL"
                    .to_owned()
            }),
            // An email address is one user's: mail and Shared Signals name a user by it. Its
            // key (lowercase) is held once. Users already sharing one keep it, nothing cleared:
            // one of them holds the key, so no one else takes it; the others hold none until
            // their address changes.
            SqlMigration::boxed("m0014_users_email_unique", |_| {
                "ALTER TABLE users ADD COLUMN email_key TEXT;
                 UPDATE users SET email_key = LOWER(email) WHERE email <> '' AND id IN
                    (SELECT MIN(id) FROM users WHERE email <> '' GROUP BY LOWER(email));
                 CREATE UNIQUE INDEX users_email ON users (email_key)"
                    .to_owned()
            }),
            // A group's and an app's name is told apart from the others' by how it reads, not
            // only by its letters (`орѕ`, Cyrillic, beside `ops`).
            NameKeysMigration::boxed(
                "m0015_lookalike_names",
                &[
                    NamedRows {
                        table: "groups",
                        column: "display_name",
                        rows: "TRUE",
                    },
                    NamedRows {
                        table: "service_principals",
                        column: "display_name",
                        rows: "TRUE",
                    },
                ],
            ),
        ]);
        migrations
    }
}
