//! An alert as OCSF sees it: a Detection Finding.

use super::*;

/// An alert as an OCSF 1.1.0 Detection Finding (class 2004).
pub fn detection_finding(a: &AlertRow, description: &str) -> serde_json::Value {
    let (activity_id, activity) = match a.status {
        AlertStatus::Resolved | AlertStatus::Dismissed => (3, "Close"),
        _ if a.count > 1 || a.status == AlertStatus::Acknowledged => (2, "Update"),
        AlertStatus::Open | AlertStatus::Acknowledged => (1, "Create"),
    };
    let (status_id, status) = match a.status {
        AlertStatus::Open => (1, "New"),
        AlertStatus::Acknowledged => (2, "In Progress"),
        AlertStatus::Dismissed => (3, "Suppressed"),
        AlertStatus::Resolved => (4, "Resolved"),
    };
    let severity_id = match a.severity {
        Severity::Low => 2,
        Severity::Medium => 3,
        Severity::High => 4,
        Severity::Critical => 5,
    };
    let mut finding = json!({
        "class_uid": 2004,
        "class_name": "Detection Finding",
        "category_uid": 2,
        "category_name": "Findings",
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": 200400 + activity_id,
        "time": a.last_seen,
        "severity_id": severity_id,
        "severity": a.severity.as_str(),
        "status_id": status_id,
        "status": status,
        "count": a.count,
        "message": description,
        "metadata": {
            "version": "1.1.0",
            "product": { "name": "PIM", "vendor_name": "PIM", "feature": { "name": "alerting" } },
            "uid": a.id,
            "sequence": a.rev,
        },
        "finding_info": {
            "uid": a.id,
            "title": description,
            "types": [a.rule_id],
            "first_seen_time": a.first_seen,
            "last_seen_time": a.last_seen,
            "related_events": a.evidence.iter().map(|id| json!({ "uid": id })).collect::<Vec<_>>(),
        },
        "unmapped": {
            "rule_id": a.rule_id,
            "dedup_key": a.dedup_key,
            "principal_id": a.principal_id,
            "role_id": a.role_id,
            "scope": a.scope,
            "figures": a.figures,
            "status_changed_by": a.status_changed_by,
            "status_reason": a.status_reason,
        },
    });
    if !a.principal_id.is_empty() {
        finding["resources"] = json!([{ "uid": a.principal_id, "type": "principal" }]);
    }
    finding
}
