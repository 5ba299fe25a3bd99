//! What the server holds, read once for a plan or an export: principals by name, roles,
//! groups, and the administrators' direct assignments (never activations).

use std::collections::BTreeMap;

use pim_proto::assignment::v1 as apb;
use pim_proto::assignment::v1::role_service_client::RoleServiceClient;
use pim_proto::identity::v1 as ipb;
use pim_proto::identity::v1::directory_service_client::DirectoryServiceClient;

use super::super::{Session, all_pages, explain, listings};

/// How a principal is written in a file: its name (a user's user name, a group's or service
/// principal's display name), prefixed by its kind where the name alone is ambiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    User,
    Group,
    ServicePrincipal,
}

impl Kind {
    /// `user:lee`, `group:ops`, `service-principal:checker` → the kind named and the name; a
    /// reference without a known prefix is a name of any kind.
    pub(crate) fn split(reference: &str) -> (Option<Kind>, &str) {
        match reference.split_once(':') {
            Some(("user", name)) => (Some(Kind::User), name),
            Some(("group", name)) => (Some(Kind::Group), name),
            Some(("service-principal", name)) => (Some(Kind::ServicePrincipal), name),
            _ => (None, reference),
        }
    }

    pub(crate) fn prefix(self) -> &'static str {
        match self {
            Kind::User => "user",
            Kind::Group => "group",
            Kind::ServicePrincipal => "service-principal",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Known {
    pub id: String,
    pub kind: Kind,
    pub name: String,
}

/// Every principal, to turn names into ids and back.
#[derive(Debug, Default)]
pub(crate) struct Directory {
    principals: Vec<Known>,
}

impl Directory {
    /// `lee`, `group:ops`, `user:lee`, `service-principal:checker`, or an id.
    pub(crate) fn resolve(&self, reference: &str) -> Result<&Known, String> {
        let reference = reference.trim();
        if let Some(known) = self.principals.iter().find(|p| p.id == reference) {
            return Ok(known);
        }
        let (kind, name) = Kind::split(reference);
        let found: Vec<&Known> = self
            .principals
            .iter()
            .filter(|p| kind.is_none_or(|k| p.kind == k) && p.name == name)
            .collect();
        match found.as_slice() {
            [one] => Ok(one),
            [] => Err(format!("no user, group or service principal is named {reference:?}")),
            _ => Err(format!(
                "{reference:?} names several principals; write user:{name}, group:{name} or service-principal:{name}"
            )),
        }
    }

    /// How `id` is written in a file.
    pub(crate) fn name_of(&self, id: &str) -> String {
        let Some(known) = self.principals.iter().find(|p| p.id == id) else {
            return id.to_owned();
        };
        let namesakes = || self.principals.iter().filter(|p| p.name == known.name);
        if known.name.is_empty() || namesakes().filter(|p| p.kind == known.kind).count() > 1 {
            id.to_owned()
        } else if namesakes().count() > 1 {
            format!("{}:{}", known.kind.prefix(), known.name)
        } else {
            known.name.clone()
        }
    }
}

/// The server's state, as a plan compares it with a file.
pub(crate) struct Snapshot {
    pub directory: Directory,
    pub roles: Vec<apb::RoleDefinition>,
    pub groups: Vec<ipb::Group>,
    /// Administrators' direct assignments, eligible and active.
    pub assignments: Vec<apb::Assignment>,
    /// Live activations (which a file never manages, and a prune must not end).
    pub activations: Vec<apb::Assignment>,
}

impl Snapshot {
    pub(crate) async fn read(session: &Session) -> anyhow::Result<Self> {
        let users = listings::users(session, "").await?;
        let groups = listings::groups(session).await?;
        let service_principals = listings::service_principals(session, "").await?;
        let mut principals: Vec<Known> = users
            .into_iter()
            .map(|u| Known {
                id: u.id,
                kind: Kind::User,
                name: u.user_name,
            })
            .collect();
        principals.extend(groups.iter().map(|g| Known {
            id: g.id.clone(),
            kind: Kind::Group,
            name: g.display_name.clone(),
        }));
        principals.extend(service_principals.into_iter().map(|s| Known {
            id: s.id,
            kind: Kind::ServicePrincipal,
            name: s.display_name,
        }));

        let roles = RoleServiceClient::new(session.channel.clone())
            .list_role_definitions(session.request(apb::ListRoleDefinitionsRequest {})?)
            .await
            .map_err(explain)?
            .into_inner()
            .roles;
        let everyone = apb::ListAssignmentsRequest::default();
        let mut assignments = listings::assignments(session, false, &everyone).await?;
        assignments.extend(listings::assignments(session, true, &everyone).await?);
        assignments.retain(|a| a.member_type != apb::MemberType::Group as i32);
        let (activations, assignments) = assignments.into_iter().partition(|a| a.activated);
        Ok(Self {
            directory: Directory { principals },
            roles,
            groups,
            assignments,
            activations,
        })
    }

    /// The name of the one group a scope of group access (`/groups/{id}`) names, if known and
    /// not shared with another group.
    pub(crate) fn group_of_scope(&self, scope: &str) -> Option<String> {
        let id = pim_proto::catalogue::group_of_scope(scope)?;
        let group = self.groups.iter().find(|g| g.id.eq_ignore_ascii_case(id))?;
        (self.groups_named(&group.display_name).len() == 1).then(|| group.display_name.clone())
    }

    /// A role by name (any case) or id.
    pub(crate) fn role(&self, name_or_id: &str) -> Option<&apb::RoleDefinition> {
        self.roles
            .iter()
            .find(|r| r.id == name_or_id || r.name.eq_ignore_ascii_case(name_or_id))
    }

    /// The groups of one display name.
    pub(crate) fn groups_named(&self, name: &str) -> Vec<&ipb::Group> {
        self.groups.iter().filter(|g| g.display_name == name).collect()
    }

    /// The ids of a group's members (`owners`: its owners), those added to it: access held
    /// through PIM for Groups is an assignment, not a member the file lists.
    pub(crate) async fn members(&self, session: &Session, group_id: &str, owners: bool) -> anyhow::Result<Vec<String>> {
        let directory = DirectoryServiceClient::new(session.channel.clone());
        let listed = all_pages(|page_token| {
            let mut directory = directory.clone();
            let request = session.request(ipb::ListGroupMembersRequest {
                group_id: group_id.to_owned(),
                page_size: 500,
                page_token,
                direct_only: true,
            });
            async move {
                let request = request?;
                let page = if owners {
                    directory.list_group_owners(request).await
                } else {
                    directory.list_group_members(request).await
                }
                .map_err(explain)?
                .into_inner();
                Ok((page.principals, page.next_page_token))
            }
        })
        .await?;
        Ok(listed.into_iter().map(|p| p.id).collect())
    }
}

/// The assignments of each role, by role id (export groups them so).
pub(crate) fn by_role(assignments: &[apb::Assignment]) -> BTreeMap<&str, Vec<&apb::Assignment>> {
    let mut map: BTreeMap<&str, Vec<&apb::Assignment>> = BTreeMap::new();
    for a in assignments {
        map.entry(a.role_id.as_str()).or_default().push(a);
    }
    map
}
