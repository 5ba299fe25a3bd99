//! The declarative file `pim plan|apply|export` read and write (`deploy/pim.schema.json`
//! documents it): custom roles, groups, role and group policies and assignments of roles and
//! of group access, by name. Every item
//! keeps the line it was read from, so an error names it.

use serde::{Deserialize, Serialize};
use serde_saphyr::{Location, Spanned};

/// A whole file. Each list is optional; what the file leaves out is left alone.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<Spanned<RoleSpec>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<Spanned<GroupSpec>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<Spanned<PolicySpec>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assignments: Vec<Spanned<RoleAssignments>>,
}

/// A custom role (built-in roles are read-only).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoleSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub permissions: Vec<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub privileged: bool,
}

/// A group. `owners` and `members`, when given, are the whole set: principals missing from
/// them are removed. Left out, they are left alone.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub role_assignable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owners: Option<Vec<Spanned<String>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<Spanned<String>>>,
}

/// A role's policy at a scope, or a group's access policy (`group`, and `access`: member or
/// owner). Only the settings named are managed (sent with a field mask, as `pim policy set`
/// does); the others keep the values in force there. The keys are RolePolicy's field names,
/// durations are written like `8h` or `30m`, approvers by name.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicySpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<GroupAccess>,
    #[serde(default = "root", skip_serializing_if = "is_root")]
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_max_duration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_requires_mfa: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_requires_phishing_resistant_mfa: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mfa_freshness: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_requires_justification: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_requires_ticket: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_activation_before_deactivate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_required: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvers: Option<Vec<Spanned<String>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_stages: Option<Vec<Spanned<StageSpec>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eligible_allow_permanent: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eligible_max_duration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_allow_permanent: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_max_duration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_requires_justification: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_requires_mfa: Option<bool>,
    /// Who hears of what by email. Given, it is the whole set: a rule left out has the
    /// defaults (the party itself hears of it, nobody else, every mail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notifications: Option<Vec<Spanned<NotificationSpec>>>,
}

/// One notification rule: who hears of one kind of change (`pim notifications set`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NotificationSpec {
    /// eligible_assignment, active_assignment or activation.
    pub event: String,
    /// admin, assignee or approver (approver: activation only).
    pub party: String,
    /// Whether the party itself hears of it.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub default_recipients: bool,
    /// Addresses that hear of it too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    /// Only mail that asks for action.
    #[serde(default, skip_serializing_if = "is_false")]
    pub critical_only: bool,
}

/// One approval stage.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StageSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<Spanned<String>>,
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub approvals_required: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub escalation_approvers: Vec<Spanned<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate_after: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub justification_required: bool,
}

/// Which access to a group (PIM for Groups): its membership or its ownership.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum GroupAccess {
    #[default]
    Member,
    Owner,
}

impl GroupAccess {
    /// The role that stands for it, at the group's scope.
    pub fn role_id(self) -> &'static str {
        match self {
            GroupAccess::Member => pim_proto::catalogue::GROUP_MEMBER,
            GroupAccess::Owner => pim_proto::catalogue::GROUP_OWNER,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GroupAccess::Member => "member",
            GroupAccess::Owner => "owner",
        }
    }

    pub fn of_role(role_id: &str) -> Option<Self> {
        [GroupAccess::Member, GroupAccess::Owner]
            .into_iter()
            .find(|a| a.role_id() == role_id)
    }
}

/// Who holds one role, eligible or active, by an administrator's assignment (activations are
/// never managed here), or one access to a group (`group`, and `access`: member or owner).
/// With `prune: true` the file owns the role (or that access to that group): its assignments
/// the file does not list are removed.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoleAssignments {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<GroupAccess>,
    /// For a group's access: its scope, which a prune stays within (set when planned).
    #[serde(skip)]
    pub within: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub prune: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub eligible: Vec<Spanned<AssignmentSpec>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active: Vec<Spanned<AssignmentSpec>>,
}

/// One principal holding the role at a scope, until a time (RFC 3339) or permanently.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AssignmentSpec {
    pub principal: String,
    #[serde(default = "root", skip_serializing_if = "is_root")]
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

fn root() -> String {
    "/".into()
}

fn is_root(scope: &String) -> bool {
    scope == "/"
}

fn one() -> i32 {
    1
}

fn is_one(n: &i32) -> bool {
    *n == 1
}

fn is_false(b: &bool) -> bool {
    !b
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// A value made here rather than read from a file (it has no line).
pub(crate) fn made<T>(value: T) -> Spanned<T> {
    Spanned::new(value, Location::UNKNOWN, Location::UNKNOWN)
}

/// Where a value was read: `path:line`, or the path alone when it was not read from a file.
pub(crate) fn at<T>(path: &str, item: &Spanned<T>) -> String {
    match item.referenced.line() {
        0 => path.to_owned(),
        line => format!("{path}:{line}"),
    }
}

/// Parses a file; a syntax error, an unknown key or a value of the wrong type is an error
/// that names its line.
pub(crate) fn parse(path: &str, text: &str) -> anyhow::Result<File> {
    if text.trim().is_empty() {
        return Ok(File::default());
    }
    serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("{path}: {e}"))
}

/// The file as YAML, with a first line naming its schema for editors.
pub(crate) fn render(file: &File) -> anyhow::Result<String> {
    let body = serde_saphyr::to_string(file)?;
    Ok(format!(
        "# PIM configuration (its format: deploy/pim.schema.json in PIM's repository).\n\
         # `pim plan -f FILE` shows what `pim apply -f FILE` would change.\n{body}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_keep_their_lines_and_unknown_keys_are_refused_with_theirs() {
        let text = "roles:\n  - name: Refunder\n    permissions: [app.payments/refunds/approve]\nassignments:\n  - role: Refunder\n    eligible:\n      - principal: lee\n        scope: /apps/payments\n";
        let file = parse("pim.yaml", text).unwrap();
        assert_eq!(at("pim.yaml", &file.roles[0]), "pim.yaml:2");
        let eligible = &file.assignments[0].value.eligible[0];
        assert_eq!(at("pim.yaml", eligible), "pim.yaml:7");
        assert_eq!(eligible.value.scope, "/apps/payments");

        let err = parse("pim.yaml", "policies:\n  - role: X\n    requires_mfa: true\n").unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("requires_mfa") && text.contains('3'), "{text}");
    }

    #[test]
    fn a_file_written_reads_back_the_same() {
        let mut file = File::default();
        file.policies.push(made(PolicySpec {
            role: "Exchange Administrator".into(),
            scope: "/".into(),
            activation_requires_mfa: Some(true),
            approvers: Some(vec![made("alice".to_owned())]),
            approval_stages: Some(vec![made(StageSpec {
                approvers: vec![made("bob".to_owned())],
                approvals_required: 2,
                timeout: Some("4h".into()),
                ..StageSpec::default()
            })]),
            ..PolicySpec::default()
        }));
        let text = render(&file).unwrap();
        let back = parse("x", &text).unwrap();
        let (a, b) = (&file.policies[0].value, &back.policies[0].value);
        assert_eq!(a.activation_requires_mfa, b.activation_requires_mfa);
        assert_eq!(
            b.approval_stages.as_ref().unwrap()[0].value.approvals_required,
            2,
            "{text}"
        );
        assert_eq!(b.approvers.as_ref().unwrap()[0].value, "alice");
    }
}
