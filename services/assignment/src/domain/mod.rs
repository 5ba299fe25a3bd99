//! The rules of assignment as plain Rust: scopes and their inheritance, schedules, role
//! policies with Entra's shipped defaults, and the checks a request must pass.

use std::time::Duration;

use pim_proto::assignment::v1 as pb;
use pim_runtime::grpc::RuleViolation;

use crate::error::{Error, Result};

mod approvers;
mod notifications;
mod policy;

pub use approvers::*;
pub use notifications::*;
pub use policy::*;

pub const HOUR: Duration = Duration::from_secs(3600);
pub const DAY: Duration = Duration::from_secs(24 * 3600);
/// How long before its end a principal may ask to extend an assignment (the contracts'
/// [`pim_proto::EXTENSION_WINDOW_MS`], which clients read too).
pub const EXTENSION_WINDOW: Duration = Duration::from_millis(pim_proto::EXTENSION_WINDOW_MS as u64);

/// A scope path: `/` (the whole directory) or `/segment/...`; an assignment at a scope
/// applies to every scope below it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope(String);

impl Scope {
    pub fn root() -> Self {
        Self("/".to_owned())
    }

    /// Parses a scope; empty means `/`. Segments are compared case-insensitively (as Azure
    /// resource ids are), so they are stored lower-cased.
    pub fn parse(raw: &str) -> Result<Self> {
        let raw = raw.trim();
        if raw.is_empty() || raw == "/" {
            return Ok(Self::root());
        }
        if !raw.starts_with('/') {
            return Err(Error::invalid(
                "scope",
                "must start with / (e.g. / or /subscriptions/s1)",
            ));
        }
        if raw.len() > 1024 {
            return Err(Error::invalid("scope", "must be at most 1024 characters"));
        }
        // A trailing / is allowed; what remains must still start with one ("//" does not).
        let path = raw.trim_end_matches('/').strip_prefix('/').unwrap_or_default();
        let mut out = String::with_capacity(path.len() + 1);
        for segment in path.split('/') {
            if segment.is_empty() || segment == "." || segment == ".." {
                return Err(Error::invalid("scope", "has an empty, . or .. segment"));
            }
            if !segment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:@".contains(c))
            {
                return Err(Error::invalid(
                    "scope",
                    "segments may hold only letters, digits and - _ . : @",
                ));
            }
            out.push('/');
            out.push_str(&segment.to_ascii_lowercase());
        }
        Ok(Self(out))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `ancestor` (a normalised scope, as grants hold) is this scope or one above it,
    /// so that a grant there applies here: [`Self::with_ancestors`] without building them.
    pub fn is_within(&self, ancestor: &str) -> bool {
        ancestor == "/"
            || self
                .0
                .strip_prefix(ancestor)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// This scope and every scope above it, from `/` down.
    pub fn with_ancestors(&self) -> Vec<String> {
        let mut out = vec!["/".to_owned()];
        if self.0 == "/" {
            return out;
        }
        let mut acc = String::new();
        for segment in self.0[1..].split('/') {
            acc.push('/');
            acc.push_str(segment);
            out.push(acc.clone());
        }
        out
    }
}

pim_proto::domain_enum! {
    /// An assignment's kind: eligible (activated on request) or active.
    pub enum Kind => pb::AssignmentKind { Eligible, Active }
}

pim_proto::domain_enum! {
    /// What a request asks for: an administrator's change, or a principal's own.
    pub enum Action => pb::RequestAction {
        AdminAssign,
        AdminUpdate,
        AdminRemove,
        AdminExtend,
        AdminRenew,
        SelfActivate,
        SelfDeactivate,
        SelfExtend,
        SelfRenew,
    }
}

impl Action {
    /// A principal's own request to keep an assignment (selfExtend, selfRenew): what an
    /// approver then gives.
    pub const fn is_self_keep(self) -> bool {
        matches!(self, Self::SelfExtend | Self::SelfRenew)
    }
}

pim_proto::domain_enum! {
    /// Where a request is in its lifecycle (Entra's names, which the database and the events
    /// keep as text).
    pub enum RequestStatus => pb::RequestStatus {
        /// Waiting for approvers.
        PendingApproval,
        /// Approved; being applied.
        Granted,
        /// Applied; its assignment holds (or was ended, for a removal).
        Provisioned,
        /// Applied; its assignment starts later.
        ScheduleCreated,
        Denied,
        Canceled,
        /// Approved, but it could no longer be applied.
        Failed,
        /// Not decided in time.
        Expired,
        /// A removal or deactivation: the assignment was ended.
        Revoked,
    }
}

impl RequestStatus {
    /// Nothing more happens to a request in a final status (a scheduled one still starts).
    pub const fn is_final(self) -> bool {
        !matches!(self, Self::PendingApproval | Self::Granted | Self::ScheduleCreated)
    }

    /// The lifecycle, in one place: the moves a request may make. Waiting ends in an
    /// approval (Granted), a denial, an expiry or a cancel; a grant is applied now, later, or
    /// not at all; a scheduled one is applied when it starts, canceled when what it made
    /// ends before then, or fails when its whole window passed unstarted.
    pub const fn may_become(self, next: Self) -> bool {
        use RequestStatus as S;
        matches!(
            (self, next),
            (S::PendingApproval, S::Granted | S::Denied | S::Expired | S::Canceled)
                | (S::Granted, S::Provisioned | S::ScheduleCreated | S::Failed)
                | (S::ScheduleCreated, S::Provisioned | S::Canceled | S::Failed)
        )
    }

    /// The status a request is made in: waiting for approval, or applied at once (now or
    /// from a later start).
    pub const fn applied(starts_later: bool) -> Self {
        if starts_later {
            Self::ScheduleCreated
        } else {
            Self::Provisioned
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_and_kinds_round_trip() {
        for action in Action::ALL {
            assert_eq!(Action::parse(action.as_str()), Some(action));
            assert_eq!(Action::from_pb(action.to_pb()), Some(action));
        }
        for kind in [Kind::Eligible, Kind::Active] {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(Action::parse("SelfActivate"), None);
    }

    #[test]
    fn request_statuses_round_trip_and_move_only_forward() {
        use RequestStatus as S;
        for status in S::ALL {
            assert_eq!(S::parse(status.as_str()), Some(status));
            // Nothing leaves a final status; nothing returns to waiting.
            for next in S::ALL {
                if status.is_final() {
                    assert!(!status.may_become(next), "{status} -> {next}");
                }
                assert!(!status.may_become(S::PendingApproval), "{status} -> {next}");
            }
        }
        assert_eq!(S::parse("Approved"), None);
        assert!(S::PendingApproval.may_become(S::Granted));
        assert!(S::Granted.may_become(S::Failed));
        assert!(!S::PendingApproval.may_become(S::Provisioned), "approval comes first");
        assert!(!S::Granted.may_become(S::Canceled), "too late to cancel");
        assert!(S::ScheduleCreated.may_become(S::Canceled), "not yet started");
    }

    #[test]
    fn scopes_normalise_and_list_their_ancestors() {
        assert_eq!(Scope::parse("").unwrap(), Scope::root());
        let s = Scope::parse("/Subscriptions/S1/resourceGroups/rg/").unwrap();
        assert_eq!(s.as_str(), "/subscriptions/s1/resourcegroups/rg");
        assert_eq!(
            s.with_ancestors(),
            vec![
                "/",
                "/subscriptions",
                "/subscriptions/s1",
                "/subscriptions/s1/resourcegroups",
                "/subscriptions/s1/resourcegroups/rg"
            ]
        );
        for ancestor in s.with_ancestors() {
            assert!(s.is_within(&ancestor), "{ancestor}");
        }
        for other in [
            "/subscriptions/s",
            "/subscriptions/s1/resourcegroups/rg2",
            "/subscriptions/s1/resourcegroups/rg/x",
            "/other",
        ] {
            assert!(!s.is_within(other), "{other}");
        }
        assert!(Scope::root().is_within("/") && !Scope::root().is_within("/a"));
        for bad in ["subscriptions", "/a//b", "/a/../b", "/a b", "//", "///", "//a"] {
            assert!(Scope::parse(bad).is_err(), "{bad}");
        }
    }
}
