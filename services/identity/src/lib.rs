//! Identity and MFA: the directory (users, service principals), password and client-secret
//! sign-in, and the signing keys behind every access token.

mod clients;
mod codes;
mod credentials;
mod directory;
mod error;
mod factor;
mod groups;
mod grpc;
mod limiter;
mod mfa;
mod names;
mod passkeys;
mod protection;
mod rotation;
mod sessions;
mod store;
#[cfg(test)]
mod store_tests;
mod tokens;

use sea_orm_migration::MigratorTrait;
use tonic::service::RoutesBuilder;

use pim_proto::identity::v1::auth_service_server::AuthServiceServer;
use pim_proto::identity::v1::directory_service_server::DirectoryServiceServer;
use pim_proto::identity::v1::mfa_service_server::MfaServiceServer;
use pim_runtime::db::Db;
use pim_runtime::events::{Outbox, Source};
use pim_runtime::host::{Deps, Service};

pub use directory::Directory;
pub use error::Error;
pub use sessions::MAX_LIVE_SESSIONS;
pub use tokens::{Keystore, TokenSubject};

pub use pim_runtime::sealing::Sealer;

/// A strong random password (32 bytes from the OS generator, base64url), for initial passwords.
pub fn generate_password() -> String {
    credentials::random_secret()
}

/// The identity service, built from its dependencies and ready to be hosted.
#[derive(Clone)]
pub struct Identity {
    directory: Directory,
    rotation: std::time::Duration,
}

impl Identity {
    /// Migrates the database and loads (or creates) the signing keys.
    pub async fn build(deps: Deps) -> anyhow::Result<Self> {
        store::Migrator::up(&deps.db, None).await?;
        let sealer = Sealer::from_base64(
            deps.config
                .secrets_key
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("PIM_SECRETS_KEY is required by identity (32 random bytes, base64)"))?
                .expose(),
        )?
        .with_previous(
            deps.config
                .secrets_key_previous
                .as_ref()
                .map(|k| k.expose().as_str())
                .unwrap_or_default(),
        )?;
        let keys = Keystore::open(deps.db.clone(), sealer.clone()).await?;
        let seeds = rotation::reseal_seeds(&deps.db, &sealer).await?;
        if seeds.resealed > 0 {
            tracing::info!(
                seeds = seeds.resealed,
                "TOTP seeds sealed under an earlier PIM_SECRETS_KEY are sealed under the current one"
            );
        }
        if seeds.unopened > 0 {
            tracing::warn!(
                seeds = seeds.unopened,
                "TOTP seeds no key given opens (neither PIM_SECRETS_KEY nor PIM_SECRETS_KEY_PREVIOUS): their users cannot verify codes"
            );
        }
        let directory = Directory {
            db: deps.db,
            outbox: Outbox::default(),
            access: deps.access,
            keys,
            token_ttl: deps.config.access_token_ttl,
            max_role_assignable_groups: deps.config.max_role_assignable_groups,
            forwarders: pim_runtime::grpc::Forwarders::from_config(&deps.config),
            assignment: clients::AssignmentClients::new(deps.assignment),
            approval: clients::ApprovalClient::new(deps.approval.ok_or_else(|| {
                anyhow::anyhow!("identity needs the approval service's address (PIM_APPROVAL_URL) when approval is not hosted with it")
            })?),
            clock: deps.clock.clone(),
            signin_mfa: deps.config.signin_mfa,
            enrollment_window: deps.config.mfa_enrollment_window,
            step_up: deps.config.mfa_step_up,
            webauthn: deps
                .config
                .public_url
                .as_deref()
                .map(passkeys::relying_party)
                .transpose()?,
            sealer,
            event_keys: std::sync::Arc::new(deps.config.event_keys()?),
            refused_sign_ins: Default::default(),
        };
        let announced = directory.announce_addresses_once().await?;
        if announced > 0 {
            tracing::info!(users = announced, "users' addresses announced to audit (once)");
        }
        let announced = directory.announce_disabled_once().await?;
        if announced > 0 {
            tracing::info!(
                principals = announced,
                "disabled users and service principals announced to assignment (once)"
            );
        }
        Ok(Self {
            directory,
            rotation: deps.config.signing_key_rotation,
        })
    }

    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// The keys access tokens are verified with, for hosts that run identity in-process.
    pub fn keystore(&self) -> Keystore {
        self.directory.keys.clone()
    }
}

impl Service for Identity {
    fn name(&self) -> &'static str {
        "identity"
    }

    fn source(&self) -> Source {
        Source::Identity
    }

    fn stream(&self) -> &'static str {
        pim_runtime::events::streams::IDENTITY
    }

    fn grpc_services(&self) -> &'static [&'static str] {
        pim_proto::service_names::IDENTITY
    }

    fn add_routes(&self, routes: &mut RoutesBuilder) {
        routes
            .add_service(DirectoryServiceServer::new(self.directory.clone()))
            .add_service(AuthServiceServer::new(self.directory.clone()))
            .add_service(MfaServiceServer::new(self.directory.clone()));
    }

    fn db(&self) -> &Db {
        &self.directory.db
    }

    fn outbox(&self) -> &Outbox {
        &self.directory.outbox
    }

    /// Ends the client secrets kept past a rotation when their time is over (every 2 s), and
    /// keeps the signing keys fresh: reloads them (another replica may have rotated) and
    /// rotates the active one when it is older than `PIM_SIGNING_KEY_ROTATION_DAYS`.
    fn background(&self, mut stop: tokio::sync::watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
        let (keys, every) = (self.directory.keys.clone(), self.rotation);
        let (db, clock) = (self.directory.db.clone(), self.directory.clock.clone());
        let grace = self.directory.token_ttl + std::time::Duration::from_secs(300);
        let (directory, mut stopped) = (self.directory.clone(), stop.clone());
        let overlaps = tokio::spawn(async move {
            // A client secret kept past its rotation stops, with its earlier tokens, within
            // seconds of its end (at once at start, for one that ended while down).
            loop {
                if let Err(err) = directory.end_secret_overlaps().await {
                    tracing::warn!(error = %err, "ending kept client secrets failed");
                }
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                    _ = stopped.changed() => return,
                }
            }
        });
        vec![
            overlaps,
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => {
                            if let Err(err) = keys.maintain(every, grace).await {
                                tracing::warn!(error = %format!("{err:#}"), "signing key maintenance failed");
                            }
                            let ended = clock.now_ms() - limiter::WINDOW_MS;
                            if let Err(err) = store::prune_sign_in_failures(&db, ended).await {
                                tracing::warn!(error = %err, "pruning failed sign-in counts failed");
                            }
                            let unfamiliar = clock.now_ms() - limiter::FAMILIAR_MS;
                            if let Err(err) = store::prune_familiar_sources(&db, unfamiliar).await {
                                tracing::warn!(error = %err, "pruning familiar sources failed");
                            }
                            // Sessions and revocations older than any token can live.
                            let lifetime = pim_runtime::auth::REMEMBER_MS;
                            if let Err(err) = store::prune_sessions(&db, clock.now_ms() - lifetime).await {
                                tracing::warn!(error = %err, "pruning ended sessions failed");
                            }
                        }
                        _ = stop.changed() => return,
                    }
                }
            }),
        ]
    }
}
