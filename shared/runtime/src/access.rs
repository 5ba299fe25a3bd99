//! Authorization for every service: "may this caller do that here?", answered by assignment's
//! `AccessService.CheckAccess` through one cached client. Answers are reused briefly (the
//! configured TTL) and never past the expiry of the assignment that granted them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::Status;
use tonic::transport::Channel;

use pim_proto::assignment::v1::access_service_client::AccessServiceClient;
use pim_proto::assignment::v1::assignment_service_client::AssignmentServiceClient;
use pim_proto::assignment::v1::{Assignment, CheckAccessRequest, ListAssignmentsRequest, check_access_request};
use pim_proto::identity::v1::ListGroupMembersRequest;
use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;

use crate::auth::Caller;
use crate::db::now_ms;
use crate::events::EventType;

/// Permission names, as held by role definitions (the contracts crate owns them).
pub use pim_proto::catalogue::permissions;

/// What access is asked about: a role, or a permission any held role carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Role(String),
    Permission(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// When the granting access ends (ms since the epoch); `None` when permanent.
    pub expires_at: Option<i64>,
}

/// Answers access questions; each service gets one.
#[async_trait::async_trait]
pub trait AccessCheck: Send + Sync {
    async fn check(&self, caller: &Caller, principal: &str, target: &Target, scope: &str) -> Result<Decision, Status>;

    /// Told, at once, when access may have been lost in this process (a change the
    /// assignment service hosted here applied): answers held from before may no longer be true.
    fn access_lost(&self) {}
}

/// Whether the caller holds `permission` at `scope`; a check that could not be made is an
/// error, never a "no".
pub async fn holds(access: &dyn AccessCheck, caller: &Caller, permission: &str, scope: &str) -> Result<bool, Status> {
    let decision = access
        .check(
            caller,
            &caller.principal_id,
            &Target::Permission(permission.to_owned()),
            scope,
        )
        .await?;
    Ok(decision.allowed)
}

/// Refuses with PERMISSION_DENIED unless the caller holds `permission` at `scope`.
pub async fn require(access: &dyn AccessCheck, caller: &Caller, permission: &str, scope: &str) -> Result<(), Status> {
    if holds(access, caller, permission, scope).await? {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "requires permission {permission} at scope {scope}"
        )))
    }
}

/// A request to another service made on the caller's behalf: with their own token (so every
/// rule and audit record there sees them), the current trace, and a 3 s deadline.
pub fn on_behalf_of<T>(caller: &Caller, message: T) -> Result<tonic::Request<T>, Status> {
    let mut request = tonic::Request::new(message);
    crate::telemetry::inject(&mut request);
    let bearer = format!("Bearer {}", caller.token())
        .parse()
        .map_err(|_| Status::unauthenticated("access token is not valid"))?;
    request.metadata_mut().insert("authorization", bearer);
    request.set_timeout(Duration::from_secs(3));
    Ok(request)
}

/// Every assignment `ask` lists (each page), eligible ones or (`active`) active ones, asked
/// of assignment on the caller's behalf.
pub async fn assignments_listed(
    assignment: &AssignmentServiceClient<Channel>,
    caller: &Caller,
    active: bool,
    ask: &ListAssignmentsRequest,
) -> Result<Vec<Assignment>, Status> {
    crate::grpc::all_pages(|page_token| {
        let mut client = assignment.clone();
        let asked = on_behalf_of(
            caller,
            ListAssignmentsRequest {
                page_token,
                ..ask.clone()
            },
        );
        async move {
            let page = if active {
                client.list_active_assignments(asked?).await
            } else {
                client.list_eligible_assignments(asked?).await
            }?
            .into_inner();
            Ok((page.assignments, page.next_page_token))
        }
    })
    .await
}

/// Whether the caller was added to the group as an owner (identity shows a group's owners to
/// them; `direct_only`, so identity does not ask assignment back). Ownership held through an
/// active Group Owner assignment is `CheckAccess`'s to answer.
pub async fn directly_owns(
    identity: &DirectoryServiceClient<Channel>,
    caller: &Caller,
    group_id: &str,
) -> Result<bool, Status> {
    let request = on_behalf_of(
        caller,
        ListGroupMembersRequest {
            group_id: group_id.to_owned(),
            page_size: 0,
            page_token: String::new(),
            direct_only: true,
        },
    )?;
    match identity.clone().list_group_owners(request).await {
        Ok(owners) => Ok(owners
            .into_inner()
            .principals
            .iter()
            .any(|p| p.id == caller.principal_id)),
        Err(s) if matches!(s.code(), tonic::Code::PermissionDenied | tonic::Code::NotFound) => Ok(false),
        Err(s) => {
            tracing::warn!(code = ?s.code(), "owner lookup failed");
            Err(Status::unavailable("group ownership is unavailable; try again"))
        }
    }
}

/// Asks a (possibly in-process) assignment service over gRPC, on the caller's behalf.
pub struct RemoteAccess {
    client: AccessServiceClient<Channel>,
}

impl RemoteAccess {
    pub fn new(channel: Channel) -> Self {
        Self {
            client: AccessServiceClient::new(channel),
        }
    }
}

#[async_trait::async_trait]
impl AccessCheck for RemoteAccess {
    async fn check(&self, caller: &Caller, principal: &str, target: &Target, scope: &str) -> Result<Decision, Status> {
        let request = on_behalf_of(
            caller,
            CheckAccessRequest {
                principal_id: principal.to_owned(),
                target: Some(match target {
                    Target::Role(r) => check_access_request::Target::RoleId(r.clone()),
                    Target::Permission(p) => check_access_request::Target::Permission(p.clone()),
                }),
                scope: scope.to_owned(),
                ..Default::default()
            },
        )?;
        let response = self.client.clone().check_access(request).await.map_err(|status| {
            // With the cause (a certificate that does not verify, say), not only the code.
            let cause = std::error::Error::source(&status).map(|cause| format!("{cause:#}"));
            tracing::warn!(code = ?status.code(), message = status.message(), cause, "access check failed");
            match status.code() {
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied | tonic::Code::InvalidArgument => status,
                _ => Status::unavailable("access decisions are unavailable; try again"),
            }
        })?;
        let r = response.into_inner();
        Ok(Decision {
            allowed: r.allowed,
            expires_at: r.expires_at.as_ref().map(crate::db::from_timestamp),
        })
    }
}

type CacheKey = (String, Target, String);

/// Reuses allowed answers of an inner [`AccessCheck`] for a short time. A refusal is never
/// reused: access just granted or activated is honoured on the next call, even before the
/// event that says so has reached this process. Every answer is dropped when access may have
/// been lost: at once when assignment, hosted in this process, applies the loss
/// ([`AccessCheck::access_lost`]); when its event arrives otherwise.
pub struct CachedAccess {
    inner: Arc<dyn AccessCheck>,
    ttl: Duration,
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    answers: HashMap<CacheKey, (Decision, Instant)>,
    /// Counts the clears: an answer asked for before a clear and received after it may
    /// predate the change, so it is not kept.
    generation: u64,
}

impl CachedAccess {
    pub fn new(inner: Arc<dyn AccessCheck>, ttl: Duration) -> Self {
        Self {
            inner,
            ttl,
            entries: Mutex::default(),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.entries().answers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every cached answer (e.g. when an assignment event says access changed).
    pub fn clear(&self) {
        let mut entries = self.entries();
        entries.answers.clear();
        entries.generation += 1;
    }

    /// Drops cached answers when an event says access may have been lost: a removal, a
    /// deactivation, a shortening, a member leaving a group, a user disabled, a role's
    /// permissions changed. Gained access needs nothing: refusals are never cached.
    pub fn invalidate_on(&self, envelope: &crate::events::Envelope) {
        if Self::invalidated_by(crate::events::event_type(envelope)) {
            self.clear();
        }
    }

    /// Whether events of this short type (access changed) clear the cached answers.
    pub fn invalidated_by(event_type: Option<EventType>) -> bool {
        matches!(
            event_type,
            Some(
                EventType::RoleDeactivated
                    | EventType::ActivationShortened
                    | EventType::ActiveAssignmentRemoved
                    | EventType::ActiveAssignmentUpdated
                    | EventType::GroupMemberRemoved
                    | EventType::UserDisabled
                    | EventType::UserDisabledAnnounced
                    | EventType::UserDeleted
                    | EventType::ServicePrincipalDisabled
                    | EventType::GroupDeleted
                    | EventType::RoleDefinitionUpdated
                    | EventType::RoleDefinitionDeleted
            )
        )
    }
}

#[async_trait::async_trait]
impl AccessCheck for CachedAccess {
    async fn check(&self, caller: &Caller, principal: &str, target: &Target, scope: &str) -> Result<Decision, Status> {
        let key = (principal.to_owned(), target.clone(), scope.to_owned());
        let now = Instant::now();
        let (cached, generation) = {
            let entries = self.entries();
            (entries.answers.get(&key).copied(), entries.generation)
        };
        if let Some((decision, until)) = cached
            && until > now
        {
            return Ok(decision);
        }
        let decision = self.inner.check(caller, principal, target, scope).await?;
        if !decision.allowed {
            return Ok(decision);
        }
        let mut valid_for = self.ttl;
        if let Some(expires_at) = decision.expires_at {
            let left = Duration::from_millis(u64::try_from(expires_at - now_ms()).unwrap_or(0));
            valid_for = valid_for.min(left);
        }
        let mut entries = self.entries();
        if entries.generation != generation {
            return Ok(decision);
        }
        if entries.answers.len() > 100_000 {
            entries.answers.retain(|_, (_, until)| *until > now);
        }
        entries.answers.insert(key, (decision, now + valid_for));
        crate::metrics::metrics()
            .access_cache_entries
            .set(entries.answers.len() as i64);
        Ok(decision)
    }

    fn access_lost(&self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    /// An inner check that answers what it is told and counts the questions.
    #[derive(Default)]
    struct Told {
        allowed: AtomicBool,
        asked: AtomicUsize,
        /// A cache told that access changed while the next question is being answered.
        meanwhile: Mutex<Option<Arc<CachedAccess>>>,
    }

    #[async_trait::async_trait]
    impl AccessCheck for Told {
        async fn check(&self, _: &Caller, _: &str, _: &Target, _: &str) -> Result<Decision, Status> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            if let Some(cache) = self.meanwhile.lock().unwrap().take() {
                cache.access_lost();
            }
            Ok(Decision {
                allowed: self.allowed.load(Ordering::SeqCst),
                expires_at: None,
            })
        }
    }

    /// A refusal is asked again (an owner who just activated is let in at once); an allowed
    /// answer is reused until the TTL or an invalidating event.
    #[tokio::test]
    async fn refusals_are_never_reused_and_allowed_answers_are() {
        let told = Arc::new(Told::default());
        let cache = CachedAccess::new(told.clone(), Duration::from_secs(60));
        let caller = Caller::for_test("ola");
        let owner = Target::Role("group-owner".into());
        let ask = || cache.check(&caller, "ola", &owner, "/groups/ops");
        assert!(!ask().await.unwrap().allowed);
        told.allowed.store(true, Ordering::SeqCst);
        assert!(ask().await.unwrap().allowed, "the refusal was not reused");
        assert!(ask().await.unwrap().allowed);
        assert_eq!(told.asked.load(Ordering::SeqCst), 2, "the allowed answer was reused");
    }

    /// Access that changed in this process is not answered from before the change: every
    /// held answer is dropped at once, and an answer asked for before the change and received
    /// after it is given but not kept.
    #[tokio::test]
    async fn answers_from_before_access_changed_are_not_kept() {
        let told = Arc::new(Told::default());
        told.allowed.store(true, Ordering::SeqCst);
        let cache = Arc::new(CachedAccess::new(told.clone(), Duration::from_secs(60)));
        let caller = Caller::for_test("ola");
        let owner = Target::Role("group-owner".into());
        let ask = || cache.check(&caller, "ola", &owner, "/groups/ops");
        let asked = || told.asked.load(Ordering::SeqCst);
        ask().await.unwrap();
        ask().await.unwrap();
        assert_eq!(asked(), 1, "reused");
        cache.access_lost();
        ask().await.unwrap();
        assert_eq!(asked(), 2, "dropped when access changed");
        cache.access_lost();
        *told.meanwhile.lock().unwrap() = Some(cache.clone());
        assert!(ask().await.unwrap().allowed, "the answer is given");
        assert_eq!(asked(), 3);
        ask().await.unwrap();
        assert_eq!(asked(), 4, "an answer from before the change was not kept");
        ask().await.unwrap();
        assert_eq!(asked(), 4, "one from after it is");
    }
}
