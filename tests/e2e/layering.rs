//! How the crates depend on each other: services share contracts (`pim-proto`) and the
//! runtime (`pim-runtime`), never each other's crates. Only the host (`pim`, which runs them)
//! and the tests depend on service crates.

use std::collections::BTreeSet;

const SERVICE_CRATES: [&str; 5] = [
    "pim-identity",
    "pim-assignment",
    "pim-approval",
    "pim-alerting",
    "pim-audit",
];

#[test]
fn no_service_crate_depends_on_another() -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args(["metadata", "--no-deps", "--format-version", "1", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let packages = metadata["packages"].as_array().cloned().unwrap_or_default();
    let mut seen = BTreeSet::new();
    let mut crossings = Vec::new();
    for package in &packages {
        let name = package["name"].as_str().unwrap_or_default();
        if !SERVICE_CRATES.contains(&name) {
            continue;
        }
        seen.insert(name.to_owned());
        for dependency in package["dependencies"].as_array().into_iter().flatten() {
            let on = dependency["name"].as_str().unwrap_or_default();
            if SERVICE_CRATES.contains(&on) {
                crossings.push(format!("{name} -> {on}"));
            }
        }
    }
    assert_eq!(
        seen.len(),
        SERVICE_CRATES.len(),
        "every service crate is in the workspace: {seen:?}"
    );
    assert!(
        crossings.is_empty(),
        "service crates depending on each other: {crossings:?}"
    );
    Ok(())
}

/// Domain code answers in its service's error vocabulary; only the gRPC adapters (grpc.rs),
/// the error mappings (error.rs) and the host seam build a `tonic::Status`.
#[test]
fn no_status_is_built_outside_the_grpc_adapters() -> anyhow::Result<()> {
    let services = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../services");
    // Files, or folders whose every file is domain code.
    let domain_code = [
        "approval/src/approvals.rs",
        "approval/src/reviews.rs",
        "alerting/src/alerts",
        "alerting/src/rules.rs",
        "assignment/src/domain",
        "assignment/src/assignments",
        "assignment/src/scheduler.rs",
        "identity/src/directory.rs",
        "identity/src/groups.rs",
        "identity/src/protection.rs",
        "identity/src/mfa.rs",
        "identity/src/credentials.rs",
        "identity/src/tokens.rs",
    ];
    let mut files = Vec::new();
    for path in domain_code {
        let path = services.join(path);
        if path.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                let entry = entry?.path();
                if entry.extension().is_some_and(|e| e == "rs") {
                    files.push(entry);
                }
            }
        } else {
            anyhow::ensure!(path.is_file(), "{} is gone: update the list", path.display());
            files.push(path);
        }
    }
    anyhow::ensure!(files.len() > 15, "the domain's files were found: {files:?}");
    let mut found = Vec::new();
    for path in files {
        let file = path.strip_prefix(&services)?.display().to_string();
        let text = std::fs::read_to_string(&path)?;
        for (n, line) in text.lines().enumerate() {
            let built = [
                "Status::permission_denied",
                "Status::not_found",
                "Status::failed_precondition",
                "Status::unavailable",
                "Status::internal",
                "Status::invalid_argument",
                "Status::aborted",
                "Status::already_exists",
                "Status::unauthenticated",
                "Status::new(",
            ];
            if built.iter().any(|b| line.contains(b)) || line.contains("use tonic::Status") {
                found.push(format!("{file}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "tonic::Status built in domain code: {found:#?}");
    Ok(())
}
