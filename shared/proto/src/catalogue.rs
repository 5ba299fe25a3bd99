//! The vocabulary every service shares: permission names and the built-in role catalogue
//! (Entra's role template ids, names, privileged flags). Services share contracts, never
//! each other's crates.

/// Permission names, as held by role definitions.
pub mod permissions {
    pub const ALL: &str = "*";
    pub const USERS_MANAGE: &str = "pim.directory.users.manage";
    pub const USERS_READ: &str = "pim.directory.users.read";
    pub const GROUPS_MANAGE: &str = "pim.directory.groups.manage";
    /// Create role-assignable groups and change their membership (Privileged Role Administrators).
    pub const ROLE_ASSIGNABLE_GROUPS_MANAGE: &str = "pim.directory.roleAssignableGroups.manage";
    pub const CREDENTIALS_RESET: &str = "pim.directory.credentials.reset";
    pub const PRIVILEGED_CREDENTIALS_RESET: &str = "pim.directory.privilegedCredentials.reset";
    pub const SERVICE_PRINCIPALS_MANAGE: &str = "pim.directory.servicePrincipals.manage";
    pub const ROLES_MANAGE: &str = "pim.roles.manage";
    pub const ASSIGNMENTS_MANAGE: &str = "pim.assignments.manage";
    pub const ASSIGNMENTS_READ: &str = "pim.assignments.read";
    pub const POLICIES_MANAGE: &str = "pim.policies.manage";
    pub const APPROVALS_MANAGE: &str = "pim.approvals.manage";
    pub const REVIEWS_MANAGE: &str = "pim.reviews.manage";
    pub const AUDIT_READ: &str = "pim.audit.read";
    /// Managing webhook subscriptions (they send what audit records to a URL).
    pub const WEBHOOKS_MANAGE: &str = "pim.webhooks.manage";
    /// Receiving Shared Signals: making one's own SSF streams, which tell when principals'
    /// sessions and roles end or change.
    pub const SSF_RECEIVE: &str = "pim.ssf.receive";
    pub const ALERTS_READ: &str = "pim.alerts.read";
    pub const ALERTS_MANAGE: &str = "pim.alerts.manage";
    pub const RECONCILE_REPORT: &str = "pim.reconcile.report";
    /// Rotate identity's token signing keys (Global Administrators).
    pub const SIGNING_KEYS_MANAGE: &str = "pim.directory.signingKeys.manage";
    pub const EXCHANGE_MANAGE: &str = "exchange.organization.manage";
}

use permissions as p;

pub struct BuiltInRole {
    pub id: &'static str,
    pub name: &'static str,
    pub description: &'static str,
    pub permissions: &'static [&'static str],
    pub privileged: bool,
}

pub const GLOBAL_ADMINISTRATOR: &str = "62e90394-69f5-4237-9190-012177145e10";
pub const PRIVILEGED_ROLE_ADMINISTRATOR: &str = "e8611ab8-c189-46e8-94e1-60213ab1f814";
/// The role apps hold to receive Shared Signals (pim.ssf.receive).
pub const SHARED_SIGNALS_RECEIVER: &str = "8c6f4a2e-5b1d-4f3a-9e7c-2d0b6a1f3c58";

pub const BUILT_IN_ROLES: &[BuiltInRole] = &[
    BuiltInRole {
        id: GLOBAL_ADMINISTRATOR,
        name: "Global Administrator",
        description: "Can manage every aspect of the directory and of PIM.",
        permissions: &[p::ALL],
        privileged: true,
    },
    BuiltInRole {
        id: PRIVILEGED_ROLE_ADMINISTRATOR,
        name: "Privileged Role Administrator",
        description: "Can manage role assignments, role policies and role-assignable groups.",
        permissions: &[
            p::ASSIGNMENTS_MANAGE,
            p::ASSIGNMENTS_READ,
            p::POLICIES_MANAGE,
            p::ROLES_MANAGE,
            p::APPROVALS_MANAGE,
            p::REVIEWS_MANAGE,
            p::GROUPS_MANAGE,
            p::ROLE_ASSIGNABLE_GROUPS_MANAGE,
            p::USERS_READ,
            p::AUDIT_READ,
            p::RECONCILE_REPORT,
        ],
        privileged: true,
    },
    BuiltInRole {
        id: "7be44c8a-adaf-4e2a-84d6-ab2649e08a13",
        name: "Privileged Authentication Administrator",
        description: "Can reset credentials and MFA of any user, privileged or not.",
        permissions: &[
            p::CREDENTIALS_RESET,
            p::PRIVILEGED_CREDENTIALS_RESET,
            p::USERS_READ,
            p::ASSIGNMENTS_READ,
        ],
        privileged: true,
    },
    BuiltInRole {
        id: "c4e39bd9-1100-46d3-8c65-fb160da0071f",
        name: "Authentication Administrator",
        description: "Can reset credentials and MFA of users who hold no privileged role.",
        permissions: &[p::CREDENTIALS_RESET, p::USERS_READ, p::ASSIGNMENTS_READ],
        privileged: true,
    },
    BuiltInRole {
        id: "fe930be7-5e62-47db-91af-98c3a49a38b1",
        name: "User Administrator",
        description: "Can create and manage users and groups (not role-assignable groups).",
        permissions: &[
            p::USERS_MANAGE,
            p::USERS_READ,
            p::GROUPS_MANAGE,
            p::CREDENTIALS_RESET,
            p::ASSIGNMENTS_READ,
        ],
        privileged: true,
    },
    BuiltInRole {
        id: "fdd7a751-b60b-444a-984c-02652fe8fa1c",
        name: "Groups Administrator",
        description: "Can create and manage groups (not role-assignable groups).",
        permissions: &[p::GROUPS_MANAGE, p::USERS_READ],
        privileged: false,
    },
    BuiltInRole {
        id: "194ae4cb-b126-40b2-bd5b-6091b380977d",
        name: "Security Administrator",
        description: "Can manage alerts and their rules, and read the audit log.",
        permissions: &[
            p::ALERTS_READ,
            p::ALERTS_MANAGE,
            p::AUDIT_READ,
            p::ASSIGNMENTS_READ,
            p::USERS_READ,
            p::RECONCILE_REPORT,
        ],
        privileged: true,
    },
    BuiltInRole {
        id: "5d6b6bb7-de71-4623-b4af-96380a352509",
        name: "Security Reader",
        description: "Can read alerts, assignments and the audit log.",
        permissions: &[p::ALERTS_READ, p::AUDIT_READ, p::ASSIGNMENTS_READ, p::USERS_READ],
        privileged: false,
    },
    BuiltInRole {
        id: "f2ef992c-3afb-46b9-b7cf-a126ee74c451",
        name: "Global Reader",
        description: "Can read everything a Global Administrator can, and change nothing.",
        permissions: &[p::USERS_READ, p::ASSIGNMENTS_READ, p::AUDIT_READ, p::ALERTS_READ],
        privileged: false,
    },
    BuiltInRole {
        id: "29232cdf-9323-42fd-ade2-1d097af3e4de",
        name: "Exchange Administrator",
        description: "Can manage the Exchange organisation.",
        permissions: &[p::EXCHANGE_MANAGE],
        privileged: false,
    },
    BuiltInRole {
        id: SHARED_SIGNALS_RECEIVER,
        name: "Shared Signals Receiver",
        description: "For apps: can make its own Shared Signals (SSF) streams, which tell it when principals' sessions and roles end or change.",
        permissions: &[p::SSF_RECEIVE],
        // It learns who holds which role, where and until when, across the directory.
        privileged: true,
    },
];

/// Group access (PIM for Groups): membership or ownership of one group, assigned, activated
/// and governed like a role, at the group's own scope [`group_scope`] and nowhere else.
/// While active, a member is a member for every purpose (a role-assignable group's roles
/// included) and an owner manages the group as owners do.
pub const GROUP_MEMBER: &str = "group-member";
pub const GROUP_OWNER: &str = "group-owner";

pub const GROUP_ACCESS_ROLES: &[BuiltInRole] = &[
    BuiltInRole {
        id: GROUP_MEMBER,
        name: "Group Member",
        description: "Membership of the group at the scope /groups/{group id}: while active, a member for every purpose, its roles included.",
        permissions: &[],
        privileged: false,
    },
    BuiltInRole {
        id: GROUP_OWNER,
        name: "Group Owner",
        description: "Ownership of the group at the scope /groups/{group id}: while active, manages the group's members as owners do.",
        permissions: &[],
        privileged: false,
    },
];

/// Where group access to `group_id` is assigned.
pub fn group_scope(group_id: &str) -> String {
    format!("/groups/{}", group_id.to_ascii_lowercase())
}

/// The group a scope of group access names: `/groups/{id}` → `id`.
pub fn group_of_scope(scope: &str) -> Option<&str> {
    scope
        .strip_prefix("/groups/")
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

/// Whether `role_id` is group access rather than a role.
pub fn is_group_access(role_id: &str) -> bool {
    role_id == GROUP_MEMBER || role_id == GROUP_OWNER
}

/// Who decides on privileged access (approves a privileged role's activation, or access to a
/// role-assignable group; reviews who keeps it) may be a group only if it is role-assignable:
/// any other group's members are managed by Groups and User Administrators, who could make
/// themselves deciders. Given the named groups that are not (`deciders`: "approvers" or
/// "reviewers"), the refusal's reason; `None` where there are none.
pub fn groups_unfit_to_decide_privilege(deciders: &str, groups: &[String]) -> Option<String> {
    let (first, rest) = groups.split_first()?;
    let (named, verb) = match rest {
        [] => (first.clone(), "is"),
        _ => (groups.join(", "), "are"),
    };
    Some(format!(
        "{named} {verb} not role-assignable: the {deciders} of privileged access may be groups only if \
         role-assignable, since Groups and User Administrators manage any other group's members and could make \
         themselves {deciders}"
    ))
}
