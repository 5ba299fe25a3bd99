//! Audit records as OCSF 1.1.0 events for SIEM import: changes to accounts, their
//! credentials and their roles are Account Change (3001, roles as attached or detached
//! policies); changes to a group's members and owners, direct or through PIM for Groups, are
//! Group Management (3006); everything else is API Activity (6003). PIM's own fields (sequence, hashes,
//! scope, justification, ticket) travel under `unmapped`.

use serde_json::{Value, json};

use crate::chain::Record;
use pim_runtime::events::EventType;

pub const OCSF_VERSION: &str = "1.1.0";

const ACCOUNT_CHANGE: i64 = 3001;
const GROUP_MANAGEMENT: i64 = 3006;
const IAM: i64 = 3;
const API_ACTIVITY: i64 = 6003;
const APPLICATION: i64 = 6;

/// Account Change activities (OCSF 1.1.0).
fn account_activity(event: Option<EventType>) -> Option<(i64, &'static str)> {
    use EventType as E;
    Some(match event? {
        E::UserCreated | E::ServicePrincipalCreated => (1, "Create"),
        E::UserEnabled => (2, "Enable"),
        E::PasswordChanged => (3, "Password Change"),
        // An administrator's reset of a user's credentials.
        E::CredentialsReset => (4, "Password Reset"),
        E::UserDisabled | E::ServicePrincipalDisabled => (5, "Disable"),
        E::UserDeleted => (6, "Delete"),
        E::EligibilityGranted | E::ActiveAssignmentGranted | E::RoleActivated => (7, "Attach Policy"),
        E::EligibilityRemoved | E::ActiveAssignmentRemoved | E::RoleDeactivated => (8, "Detach Policy"),
        E::MfaLockedOut => (9, "Lock"),
        E::MfaEnrolled => (10, "MFA Factor Enable"),
        E::MfaReset | E::MfaMethodRemoved => (11, "MFA Factor Disable"),
        _ => return None,
    })
}

/// Group Management activities (OCSF 1.1.0) of a change to a group's members or owners
/// (a group's creation names no user, which the class requires: it stays an API call):
/// added to it directly, or holding the access through PIM for Groups (Group Member and
/// Group Owner at the group's scope), eligible or active. Owners hold privileges over it.
fn group_activity(event: Option<EventType>, role_id: &str) -> Option<(i64, &'static str)> {
    use EventType as E;
    use pim_proto::catalogue::{GROUP_MEMBER, GROUP_OWNER};
    let event = event?;
    let granted = matches!(
        event,
        E::EligibilityGranted | E::ActiveAssignmentGranted | E::RoleActivated
    );
    let removed = matches!(
        event,
        E::EligibilityRemoved | E::ActiveAssignmentRemoved | E::RoleDeactivated
    );
    Some(match (event, role_id) {
        (E::GroupMemberAdded, _) => (3, "Add User"),
        (E::GroupMemberRemoved, _) => (4, "Remove User"),
        (E::GroupOwnerAdded, _) => (1, "Assign Privileges"),
        (E::GroupOwnerRemoved, _) => (2, "Revoke Privileges"),
        (_, GROUP_MEMBER) if granted => (3, "Add User"),
        (_, GROUP_MEMBER) if removed => (4, "Remove User"),
        (_, GROUP_OWNER) if granted => (1, "Assign Privileges"),
        (_, GROUP_OWNER) if removed => (2, "Revoke Privileges"),
        _ => return None,
    })
}

/// API Activity activities, from the verb the event type ends with.
fn api_activity(event: &str) -> (i64, &'static str) {
    if event.ends_with("Created") || event.ends_with("Requested") {
        (1, "Create")
    } else if event.ends_with("Removed") || event.ends_with("Deleted") {
        (4, "Delete")
    } else if event.ends_with("Updated")
        || event.ends_with("Changed")
        || event.ends_with("Recorded")
        || event.ends_with("Decided")
        || event.starts_with("Approval")
    {
        (3, "Update")
    } else {
        (99, "Other")
    }
}

fn user(uid: &str, name: &str) -> Value {
    let mut u = json!({ "uid": uid });
    if !name.is_empty() {
        u["name"] = json!(name);
    }
    u
}

/// One audit record as an OCSF event (a JSON object).
pub fn event(r: &Record) -> Value {
    let short = r.action.rsplit('.').next().unwrap_or(&r.action);
    let failed = matches!(r.outcome.as_str(), "failure" | "refused");
    let actor_uid = if r.actor_id.is_empty() {
        "system"
    } else {
        r.actor_id.as_str()
    };
    let mut e = json!({
        "time": r.time,
        "severity_id": if failed { 3 } else { 1 },
        "severity": if failed { "Medium" } else { "Informational" },
        "status_id": if failed { 2 } else { 1 },
        "status": if failed { "Failure" } else { "Success" },
        "message": format!("{short} by {actor_uid}"),
        "metadata": {
            "version": OCSF_VERSION,
            "uid": r.event_id,
            "sequence": r.sequence,
            "correlation_uid": r.trace_id,
            "log_name": "pim.audit",
            "product": { "name": "PIM", "vendor_name": "PIM", "feature": { "name": r.source } },
        },
        "actor": { "user": user(actor_uid, &r.actor_name) },
        "unmapped": {
            "pim_action": r.action,
            "scope": r.scope,
            "role_id": r.role_id,
            "role_name": r.role_name,
            "justification": r.justification,
            "ticket": r.ticket,
            "outcome": r.outcome,
            "prev_hash": hex(&r.prev_hash),
            "hash": hex(&r.hash),
        },
    });
    // Only the keyed tag of a source address is kept (see records.rs).
    let payload: Value = serde_json::from_str(&r.payload_json).unwrap_or_default();
    // Why a refused or failed attempt failed, in OCSF's words for it.
    if let Some(reason) = payload["reason"].as_str().filter(|r| failed && !r.is_empty()) {
        e["status_detail"] = json!(reason);
    }
    if let Some(tag) = payload["source_hmac"].as_str().filter(|t| !t.is_empty()) {
        e["src_endpoint"] = json!({ "uid": tag });
    }
    let group = pim_proto::catalogue::group_of_scope(&r.scope);
    if let (Some(group), Some((activity, name))) = (group, group_activity(EventType::parse(short), &r.role_id)) {
        e["class_uid"] = json!(GROUP_MANAGEMENT);
        e["class_name"] = json!("Group Management");
        e["category_uid"] = json!(IAM);
        e["category_name"] = json!("Identity & Access Management");
        e["activity_id"] = json!(activity);
        e["activity_name"] = json!(name);
        e["type_uid"] = json!(GROUP_MANAGEMENT * 100 + activity);
        e["group"] = json!({ "uid": group });
        e["user"] = user(&r.target_id, &r.target_name);
        if matches!(activity, 1 | 2) {
            e["privileges"] = json!(["owner"]);
        }
        // OCSF 1.1.0's Group Management has no actor or source endpoint: who did it travels
        // with PIM's own fields.
        if let Some(fields) = e.as_object_mut() {
            fields.remove("src_endpoint");
            if let Some(actor) = fields.remove("actor") {
                e["unmapped"]["actor"] = actor["user"].clone();
            }
        }
        return e;
    }
    match account_activity(EventType::parse(short)) {
        Some((activity, name)) => {
            e["class_uid"] = json!(ACCOUNT_CHANGE);
            e["class_name"] = json!("Account Change");
            e["category_uid"] = json!(IAM);
            e["category_name"] = json!("Identity & Access Management");
            e["activity_id"] = json!(activity);
            e["activity_name"] = json!(name);
            e["type_uid"] = json!(ACCOUNT_CHANGE * 100 + activity);
            e["user"] = user(&r.target_id, &r.target_name);
            if !r.role_id.is_empty() {
                e["policy"] = json!({ "uid": r.role_id, "name": r.role_name, "group": { "name": r.scope } });
            }
        }
        None => {
            let (activity, name) = api_activity(short);
            e["class_uid"] = json!(API_ACTIVITY);
            e["class_name"] = json!("API Activity");
            e["category_uid"] = json!(APPLICATION);
            e["category_name"] = json!("Application Activity");
            e["activity_id"] = json!(activity);
            e["activity_name"] = json!(name);
            e["type_uid"] = json!(API_ACTIVITY * 100 + activity);
            e["api"] = json!({ "operation": short, "service": { "name": r.source } });
            if e.get("src_endpoint").is_none() {
                e["src_endpoint"] = json!({ "svc_name": r.source });
            }
            if !r.target_id.is_empty() {
                e["resources"] = json!([{ "uid": r.target_id, "type": "principal" }]);
            }
        }
    }
    e
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(action: &str) -> Record {
        Record {
            sequence: 7,
            event_id: "e-1".into(),
            time: 1_700_000_000_000,
            source: "pim.assignment".into(),
            action: action.into(),
            actor_id: "admin-id".into(),
            target_id: "lee-id".into(),
            role_id: "role-1".into(),
            role_name: "Exchange Administrator".into(),
            scope: "/".into(),
            outcome: "success".into(),
            ..Record::default()
        }
    }

    #[test]
    fn role_changes_are_account_changes_and_the_rest_api_activity() {
        let e = event(&record("pim.assignment.v1.RoleActivated"));
        assert_eq!(
            (e["class_uid"].as_i64(), e["type_uid"].as_i64()),
            (Some(3001), Some(300107))
        );
        assert_eq!(e["user"]["uid"], "lee-id");
        assert_eq!(e["policy"]["name"], "Exchange Administrator");
        let e = event(&record("pim.assignment.v1.RequestCreated"));
        assert_eq!(
            (e["class_uid"].as_i64(), e["activity_id"].as_i64()),
            (Some(6003), Some(1))
        );
        assert_eq!(e["api"]["operation"], "RequestCreated");
        assert_eq!(e["metadata"]["sequence"], 7);
        // An administrator's reset of credentials, a service principal disabled.
        let e = event(&record("pim.identity.v1.CredentialsReset"));
        assert_eq!(
            (e["class_uid"].as_i64(), e["activity_id"].as_i64()),
            (Some(3001), Some(4))
        );
        let e = event(&record("pim.identity.v1.ServicePrincipalDisabled"));
        assert_eq!(
            (e["class_uid"].as_i64(), e["activity_id"].as_i64()),
            (Some(3001), Some(5))
        );
    }

    #[test]
    fn group_access_is_group_management() {
        let at_group = |action: &str, role: &str| Record {
            role_id: role.into(),
            scope: "/groups/g-1".into(),
            ..record(action)
        };
        let e = event(&at_group("pim.assignment.v1.RoleActivated", "group-member"));
        assert_eq!(
            (e["class_uid"].as_i64(), e["type_uid"].as_i64()),
            (Some(3006), Some(300603))
        );
        assert_eq!(
            (e["group"]["uid"].as_str(), e["user"]["uid"].as_str()),
            (Some("g-1"), Some("lee-id"))
        );
        let e = event(&at_group("pim.assignment.v1.EligibilityRemoved", "group-owner"));
        assert_eq!(
            (e["activity_id"].as_i64(), e["privileges"][0].as_str()),
            (Some(2), Some("owner"))
        );
        let e = event(&at_group("pim.identity.v1.GroupMemberAdded", ""));
        assert_eq!(e["activity_name"], "Add User");
        assert!(e.get("actor").is_none(), "not in the class");
        assert_eq!(e["unmapped"]["actor"]["uid"], "admin-id");
        // A request about group access is still an API call.
        let e = event(&at_group("pim.assignment.v1.RequestCreated", "group-member"));
        assert_eq!(e["class_uid"].as_i64(), Some(6003));
    }
}
