//! Credential protection: the password, MFA, sign-in and profile of anyone who is a member or
//! owner of a role-assignable group (whether or not the group holds a role yet), eligible
//! for or holding a privileged role (directly or through a group), or named to approve or
//! review privileged access, are changed only by
//! Privileged Authentication Administrators and Global Administrators; Authentication and
//! User Administrators manage everyone else. Group links are identity's own; who holds which
//! role is asked of assignment, on the caller's behalf.

use sea_orm::TransactionTrait;

use pim_proto::catalogue;
use pim_proto::events::v1 as ev;
use pim_runtime::access::{permissions, require};
use pim_runtime::auth::Caller;

use crate::credentials;
use crate::directory::Directory;
use crate::error::{Error, Result};
use crate::store::{self, UserRow};
use pim_runtime::events::EventType;

/// The longest a rotated client secret keeps working beside the new one.
pub const MAX_SECRET_OVERLAP: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

impl Directory {
    /// Whether `principal_id` is eligible for or holds a privileged role, directly or through a group.
    pub async fn is_privileged(&self, caller: &Caller, principal_id: &str) -> Result<bool> {
        let privileged = self.assignment.privileged_roles(caller).await?;
        Ok(self
            .roles_of(caller, principal_id)
            .await?
            .iter()
            .any(|(role, _)| privileged.contains(role)))
    }

    /// The role-assignable group `principal_id` is eligible for or holds access to through
    /// PIM for Groups, if any: (group, "membership" or "ownership").
    async fn role_assignable_access(
        &self,
        caller: &Caller,
        principal_id: &str,
    ) -> Result<Option<(String, &'static str)>> {
        for (role, scope) in self.roles_of(caller, principal_id).await? {
            let Some(group) = catalogue::group_of_scope(&scope).filter(|_| catalogue::is_group_access(&role)) else {
                continue;
            };
            if store::find_group(&self.db, group)
                .await?
                .is_some_and(|g| g.is_assignable_to_role)
            {
                let access = if role == catalogue::GROUP_OWNER {
                    "ownership"
                } else {
                    "membership"
                };
                return Ok(Some((group.to_owned(), access)));
            }
        }
        Ok(None)
    }

    /// The roles a principal is eligible for or holds, directly or through a group, each with
    /// its scope.
    async fn roles_of(&self, caller: &Caller, principal_id: &str) -> Result<Vec<(String, String)>> {
        self.assignment.roles_of(caller, principal_id).await
    }

    /// Why the credentials of `principal` (a user or a service principal: its id and name) are
    /// protected, if they are: a link to a role-assignable group (read here), or a privileged
    /// role (asked of assignment).
    async fn protected_because(&self, caller: &Caller, principal: (&str, &str)) -> Result<Option<String>> {
        let (id, name) = principal;
        if let Some((group, owner)) = store::role_assignable_links(&self.db, id).await?.into_iter().next() {
            let link = if owner { "an owner" } else { "a member" };
            return Ok(Some(format!("{name} is {link} of the role-assignable group {group}")));
        }
        if let Some((group, access)) = self.role_assignable_access(caller, id).await? {
            return Ok(Some(format!(
                "{name} is eligible for or holds {access} of the role-assignable group {group}"
            )));
        }
        if self.is_privileged(caller, id).await? {
            return Ok(Some(format!("{name} is eligible for or holds a privileged role")));
        }
        // Whoever approves privileged access holds its keys too: their credentials in other
        // hands would approve it.
        if let Some((role, scope)) = self.assignment.approves(caller, id).await?.into_iter().next() {
            return Ok(Some(format!(
                "{name} approves {role} at {scope}, which is privileged access"
            )));
        }
        // So does whoever is named to decide it while that is open: a pending approval keeps
        // the approvers its policy named when asked, and a review's decisions keep or remove it.
        if let Some(decision) = self
            .approval
            .privileged_decisions_of(caller, id)
            .await?
            .into_iter()
            .next()
        {
            return Ok(Some(format!("{name} decides privileged access in {decision}")));
        }
        Ok(None)
    }

    /// Refuses unless the caller may manage `user`'s credentials (and sign-in, and profile).
    pub async fn require_credential_admin(&self, caller: &Caller, user: &UserRow) -> Result<()> {
        require(self.access.as_ref(), caller, permissions::CREDENTIALS_RESET, "/").await?;
        self.guards_credentials_of(
            caller,
            (&user.id, &user.user_name),
            "changing a user's credentials",
            "only Privileged Authentication Administrators and Global Administrators may change their credentials",
        )
        .await
    }

    /// Refuses unless the caller, who may manage service principals, may also manage this
    /// one's secret and sign-in: an app that holds or may activate a privileged role (or
    /// approves privileged access) is as protected as a person who does, or whoever manages
    /// apps would rotate its secret, sign in as it and use its role.
    async fn require_service_principal_admin(&self, caller: &Caller, sp: &store::ServicePrincipalRow) -> Result<()> {
        self.guards_credentials_of(
            caller,
            (&sp.id, &sp.display_name),
            "changing a service principal's credentials",
            "only Global Administrators (and whoever may also change privileged credentials) may change its secret or sign-in",
        )
        .await
    }

    /// The protection of privileged credentials, once the caller holds the permission for
    /// the change itself: a recent MFA from a caller who has a method, and for a protected
    /// principal the permission to change privileged credentials (refused saying `who` may).
    async fn guards_credentials_of(
        &self,
        caller: &Caller,
        principal: (&str, &str),
        change: &str,
        who: &str,
    ) -> Result<()> {
        // Changing credentials is managing MFA too: an administrator who has a method uses
        // it, so their password alone (or a refreshed session) cannot reset anyone's MFA,
        // their own included, and enrol an authenticator of the attacker's.
        if !self.confirmed_methods(&caller.principal_id).await?.is_empty() {
            self.require_recent_mfa(caller, change)?;
        }
        // A caller who may change anyone's credentials needs no reason weighed (nor assignment
        // asked for one).
        if require(
            self.access.as_ref(),
            caller,
            permissions::PRIVILEGED_CREDENTIALS_RESET,
            "/",
        )
        .await
        .is_ok()
        {
            return Ok(());
        }
        // Whether the principal is privileged is asked of assignment as the caller, who reads
        // others' assignments for it: a caller who may not is told what is missing.
        let because = self.protected_because(caller, principal).await.map_err(|e| match e {
            Error::PermissionDenied(why) => Error::PermissionDenied(format!(
                "{change} needs pim.assignments.read too, to tell whether {} is privileged ({why})",
                principal.1
            )),
            other => other,
        })?;
        match because {
            Some(reason) => Err(Error::PermissionDenied(format!("{reason}: {who}"))),
            None => Ok(()),
        }
    }

    /// The user a change by the caller is about, once the caller holds `permission`: whoever
    /// may not change users learns nothing of who exists (and the refusal is audited).
    pub(crate) async fn target_user(&self, caller: &Caller, user: &str, permission: &str) -> Result<UserRow> {
        require(self.access.as_ref(), caller, permission, "/").await?;
        store::find_user(&self.db, user.trim())
            .await?
            .ok_or_else(|| Error::NotFound(format!("user {}", user.trim())))
    }

    /// Sets a new password for a user (an administrator's reset).
    pub async fn reset_password(&self, caller: &Caller, user: &str, new_password: &str) -> Result<()> {
        let target = self.target_user(caller, user, permissions::CREDENTIALS_RESET).await?;
        self.require_credential_admin(caller, &target).await?;
        credentials::check_password_rules(new_password)?;
        let hash = credentials::hash(new_password).await?;
        let event = ev::CredentialsReset {
            actor: Some(caller.actor()),
            user_id: target.id.clone(),
            what: "password".into(),
        };
        let txn = self.db.begin().await?;
        store::set_password(&txn, &target.id, &hash).await?;
        self.emit(&txn, EventType::CredentialsReset, &target.id, &event).await?;
        // Whoever signed in with the old password is signed out.
        self.end_sessions_of(&txn, caller, &target.id, "password_reset").await?;
        txn.commit().await?;
        self.outbox.wake();
        Ok(())
    }

    /// Disables or enables a user's sign-in. A user already so is left as they are, with no
    /// event: the record shows only changes that happened.
    pub async fn set_enabled(&self, caller: &Caller, user: &str, enabled: bool) -> Result<UserRow> {
        let mut target = self.target_user(caller, user, permissions::USERS_MANAGE).await?;
        self.require_credential_admin(caller, &target).await?;
        if target.id == caller.principal_id && !enabled {
            return Err(Error::FailedPrecondition("you cannot disable yourself".into()));
        }
        let event_type = if enabled {
            EventType::UserEnabled
        } else {
            EventType::UserDisabled
        };
        let event = ev::UserDisabled {
            actor: Some(caller.actor()),
            user_id: target.id.clone(),
            user_name: target.user_name.clone(),
        };
        if enabled {
            self.after_the_disables_second(&target.id).await?;
        }
        // Who holds a permanent Global Administrator assignment is assignment's to say, asked
        // before the transaction; whether they are enabled is read in it, locked.
        let holders = if enabled {
            Vec::new()
        } else {
            self.assignment.permanent_global_admins(caller).await?
        };
        let txn = self.db.begin().await?;
        if !enabled {
            self.keeps_an_enabled_global_admin(&txn, caller, &holders, &target)
                .await?;
        }
        if !store::set_user_enabled(&txn, &target.id, enabled).await? {
            target.enabled = enabled;
            return Ok(target);
        }
        let told_at = self.emit(&txn, event_type, &target.id, &event).await?;
        if !enabled {
            // Every session ends, and tokens already handed out stop verifying everywhere.
            self.revoke_all_sessions(&txn, caller, &target.id, "user_disabled")
                .await?;
        }
        txn.commit().await?;
        self.outbox.wake();
        if !enabled {
            self.tell_assignment_disabled(caller, &target.id, told_at).await;
        }
        target.enabled = enabled;
        Ok(target)
    }

    /// A token tells when it was issued to the second, and a disable refuses the tokens issued
    /// up to it: an enable in the disable's second waits until that second is over (a second
    /// at most), so no token a sign-in gets after the enable counts as issued before the
    /// disable.
    pub(crate) async fn after_the_disables_second(&self, user_id: &str) -> Result<()> {
        if let Some(revoked_at) = store::principal_revoked_at(&self.db, user_id).await? {
            after_the_second_of(revoked_at).await;
        }
        Ok(())
    }

    /// The last-Global-Administrator protection, on the directory's side: assignment counts
    /// only enabled users' permanent Global Administrator assignments, so disabling the last
    /// enabled user among `holders` (who hold one) would leave no one able to administer, and
    /// is refused. The holders' rows stay locked until `txn` ends, so two disables cannot both
    /// pass. Assignment then decides too, under the lock its removals take, so a disable and a
    /// removal at the same moment cannot both pass either; it counts the user as disabled
    /// before this commits, whatever the events' way to it (another process, Redis down).
    async fn keeps_an_enabled_global_admin(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        caller: &Caller,
        holders: &[String],
        target: &UserRow,
    ) -> Result<()> {
        // A disabled user disabled again changes nothing.
        if !target.enabled {
            return Ok(());
        }
        let refused = || {
            Error::Protected(format!(
                "refused: {} is the last enabled user with a permanent active Global Administrator assignment; \
                 first make another enabled user a permanent active Global Administrator (last-Global-Administrator protection)",
                target.user_name
            ))
        };
        if holders.contains(&target.id)
            && !store::lock_enabled_users(txn, holders)
                .await?
                .iter()
                .any(|id| *id != target.id)
        {
            return Err(refused());
        }
        if !self.assignment.prepare_user_disable(caller, &target.id).await? {
            return Err(refused());
        }
        Ok(())
    }
}

/// Waits until the second `at_ms` falls in is over (a second at most): a token tells when it
/// was issued only to the second, so one issued after this counts as issued after `at_ms`.
async fn after_the_second_of(at_ms: i64) {
    let next_second = (at_ms.div_euclid(1000) + 1) * 1000;
    let wait = (next_second - pim_runtime::db::now_ms()).clamp(0, 1000);
    tokio::time::sleep(std::time::Duration::from_millis(wait as u64)).await;
}

impl Directory {
    /// Changes a user's display name and email (directory writers; privileged users only by
    /// credential administrators, as their name is what approvers see).
    pub async fn update_user(&self, caller: &Caller, user: &str, display_name: &str, email: &str) -> Result<UserRow> {
        let mut target = self.target_user(caller, user, permissions::USERS_MANAGE).await?;
        self.require_credential_admin(caller, &target).await?;
        // What stays as it was is not weighed again (a name from before a rule keeps working
        // while the other field changes).
        let display_name = match display_name.trim() {
            same if same == target.display_name => same,
            changed => crate::directory::checked_display_name(changed)?,
        };
        let email = match email.trim() {
            same if same == target.email => same,
            changed => crate::directory::checked_email(changed)?,
        };
        let event = ev::UserUpdated {
            actor: Some(caller.actor()),
            user_id: target.id.clone(),
            user_name: target.user_name.clone(),
            display_name: display_name.into(),
            email: email.into(),
        };
        let txn = self.db.begin().await?;
        store::update_user(&txn, &target.id, display_name, email)
            .await
            .map_err(|err| crate::directory::taken(err, "user", &target.user_name))?;
        self.emit(&txn, EventType::UserUpdated, &target.id, &event).await?;
        txn.commit().await?;
        self.outbox.wake();
        target.display_name = display_name.into();
        target.email = email.into();
        Ok(target)
    }

    /// Deletes a user who holds no role and may activate none (remove their assignments first:
    /// no assignment is left pointing at nobody, and the last Global Administrator stays).
    pub async fn delete_user(&self, caller: &Caller, user: &str) -> Result<()> {
        let target = self.target_user(caller, user, permissions::USERS_MANAGE).await?;
        if target.id == caller.principal_id {
            return Err(Error::FailedPrecondition("you cannot delete yourself".into()));
        }
        self.require_credential_admin(caller, &target).await?;
        if self.holds_any_role(caller, &target.id).await? {
            return Err(Error::FailedPrecondition(
                "the user still has role assignments: remove them first".into(),
            ));
        }
        let event = ev::UserDisabled {
            actor: Some(caller.actor()),
            user_id: target.id.clone(),
            user_name: target.user_name.clone(),
        };
        let txn = self.db.begin().await?;
        store::delete_user(&txn, &target.id).await?;
        self.emit(&txn, EventType::UserDeleted, &target.id, &event).await?;
        self.revoke_all_sessions(&txn, caller, &target.id, "user_deleted")
            .await?;
        txn.commit().await?;
        self.outbox.wake();
        Ok(())
    }

    async fn holds_any_role(&self, caller: &Caller, principal_id: &str) -> Result<bool> {
        Ok(!self.roles_of(caller, principal_id).await?.is_empty())
    }

    /// A new client secret for a service principal (shown once). The old one stops working,
    /// with every token it got, unless `keep_previous_for` keeps it signing in beside the new
    /// one for that long (at most [`MAX_SECRET_OVERLAP`]), for the apps using it to move over.
    pub async fn rotate_service_principal_secret(
        &self,
        caller: &Caller,
        id: &str,
        keep_previous_for: std::time::Duration,
    ) -> Result<(store::ServicePrincipalRow, String)> {
        if keep_previous_for > MAX_SECRET_OVERLAP {
            return Err(Error::invalid(
                "keep_previous_for",
                "at most 7 days: an old secret kept longer is a second secret",
            ));
        }
        require(
            self.access.as_ref(),
            caller,
            permissions::SERVICE_PRINCIPALS_MANAGE,
            "/",
        )
        .await?;
        let sp = store::find_service_principal(&self.db, id.trim())
            .await?
            .ok_or_else(|| Error::NotFound(format!("service principal {}", id.trim())))?;
        self.require_service_principal_admin(caller, &sp).await?;
        let secret = credentials::random_secret();
        let hash = credentials::hash(&secret).await?;
        let txn = self.db.begin().await?;
        // Held from here to the commit: a sign-in with the old secret committed before it
        // (its token issued by now), or waits and then finds it kept (a session of its own).
        let sp = store::lock_service_principal(&txn, &sp.id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("service principal {}", id.trim())))?;
        let now = self.clock.now_ms();
        // The tokens issued up to this instant stop when the kept secret does (a token's issue
        // time is read off the system clock).
        let kept = (!keep_previous_for.is_zero()).then(|| store::KeptSecret {
            hash: sp.secret_hash.clone(),
            since: pim_runtime::db::now_ms(),
            until: now + keep_previous_for.as_millis() as i64,
        });
        // One kept from a rotation before stops now, with every token it got (two old secrets
        // at once would be a second secret); one whose time is over but not yet swept, too.
        let before = sp.previous_secret.clone();
        let ended = before.clone().filter(|before| before.until > now);
        let event = ev::CredentialsReset {
            actor: Some(caller.actor()),
            user_id: sp.id.clone(),
            // The audit log says whether the old secret was kept, and until when.
            what: [
                Some("client_secret".to_owned()),
                kept.as_ref()
                    .map(|k| format!("the previous one kept until {}", pim_runtime::db::rfc3339(k.until))),
                ended
                    .as_ref()
                    .map(|e| format!("the one kept since {} stopped now", pim_runtime::db::rfc3339(e.since))),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; "),
        };
        store::set_service_principal_secret(&txn, &sp.id, &hash, kept.as_ref()).await?;
        self.emit(&txn, EventType::CredentialsReset, &sp.id, &event).await?;
        if kept.is_none() {
            // The tokens the old secret got stop working (a service principal's sign-ins keep
            // no session: its tokens issued up to now are refused).
            self.revoke_all_sessions(&txn, caller, &sp.id, "client_secret_rotated")
                .await?;
        } else if let Some(before) = before {
            // Those it got before its rotation, by issue time; those during its overlap, by
            // the session they share (the caller's own too: an app rotating itself).
            self.revoke_tokens_up_to(&txn, caller.actor(), &sp.id, before.since, "client_secret_rotated")
                .await?;
            self.end_kept_secret_sessions(&txn, caller, &sp.id).await?;
        }
        txn.commit().await?;
        self.outbox.wake();
        // A token tells when it was issued to the second: the new secret is told only once
        // this second is over, so no token it gets counts as issued before the rotation.
        after_the_second_of(pim_runtime::db::now_ms()).await;
        Ok((sp, secret))
    }

    /// Disables a service principal: it can no longer sign in, and its tokens stop working.
    pub async fn disable_service_principal(&self, caller: &Caller, id: &str) -> Result<store::ServicePrincipalRow> {
        require(
            self.access.as_ref(),
            caller,
            permissions::SERVICE_PRINCIPALS_MANAGE,
            "/",
        )
        .await?;
        let mut sp = store::find_service_principal(&self.db, id.trim())
            .await?
            .ok_or_else(|| Error::NotFound(format!("service principal {}", id.trim())))?;
        self.require_service_principal_admin(caller, &sp).await?;
        let txn = self.db.begin().await?;
        store::set_service_principal_enabled(&txn, &sp.id, false).await?;
        self.revoke_all_sessions(&txn, caller, &sp.id, "service_principal_disabled")
            .await?;
        // Assignment counts it out: an app disabled holds nothing, whatever stays assigned.
        let event = ev::ServicePrincipalCreated {
            actor: Some(caller.actor()),
            service_principal_id: sp.id.clone(),
            display_name: sp.display_name.clone(),
        };
        let told_at = self
            .emit(&txn, EventType::ServicePrincipalDisabled, &sp.id, &event)
            .await?;
        txn.commit().await?;
        self.outbox.wake();
        self.tell_assignment_disabled(caller, &sp.id, told_at).await;
        sp.enabled = false;
        Ok(sp)
    }

    /// Tells assignment of a committed disable at once, where its event is not applied before
    /// the answer (events cross Redis, which may be down): the principal holds nothing there
    /// and what they asked for is canceled before this answers. A failure only waits for the
    /// event, which tells the same.
    async fn tell_assignment_disabled(&self, caller: &Caller, principal_id: &str, told_at: i64) {
        let told = async {
            self.assignment
                .apply_principal_disabled(caller, principal_id, told_at)
                .await
                .map_err(anyhow::Error::from)
        };
        self.tell_assignment_now("a disable", told).await;
    }
}
