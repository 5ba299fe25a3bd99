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

/// Inside every crate, the top-level modules depend on one another one way: no module is
/// reached again from what it uses (the crate root, which wires them, and test modules aside;
/// a doc link is not a dependency).
#[test]
fn no_import_circle_among_a_crates_modules() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut crates = Vec::new();
    for folder in ["services", "shared"] {
        for entry in std::fs::read_dir(root.join(folder))? {
            let src = entry?.path().join("src");
            if src.is_dir() {
                crates.push(src);
            }
        }
    }
    anyhow::ensure!(crates.len() >= 8, "the crates were found: {crates:?}");
    let mut circles = Vec::new();
    for src in &crates {
        let graph = module_graph(src)?;
        for circle in circles_in(&graph) {
            circles.push(format!("{}: {}", src.display(), circle.join(" ↔ ")));
        }
    }
    assert!(circles.is_empty(), "modules that import each other: {circles:#?}");
    Ok(())
}

/// Top-level module → the top-level modules its code names (`crate::m`, `use crate::{m, …}`).
fn module_graph(src: &std::path::Path) -> anyhow::Result<std::collections::BTreeMap<String, BTreeSet<String>>> {
    let mut files: std::collections::BTreeMap<String, Vec<std::path::PathBuf>> = Default::default();
    for entry in std::fs::read_dir(src)? {
        let path = entry?.path();
        let name = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        if path.is_dir() {
            files.insert(name, rust_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "rs") && name != "lib" && name != "main" {
            files.entry(name).or_default().push(path);
        }
    }
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    let mut graph = std::collections::BTreeMap::new();
    for (module, paths) in &files {
        let mut uses = BTreeSet::new();
        for path in paths {
            let text = std::fs::read_to_string(path)?;
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
            let code: String = code
                .lines()
                .map(|line| line.split("//").next().unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n");
            for (at, _) in code.match_indices("crate::") {
                let rest = &code[at + "crate::".len()..];
                let named: Vec<&str> = match rest.strip_prefix('{') {
                    Some(group) => group
                        .split('}')
                        .next()
                        .unwrap_or_default()
                        .split(|c: char| !c.is_alphanumeric() && c != '_')
                        .collect(),
                    None => vec![
                        rest.split(|c: char| !c.is_alphanumeric() && c != '_')
                            .next()
                            .unwrap_or_default(),
                    ],
                };
                uses.extend(
                    named
                        .into_iter()
                        .filter(|n| modules.contains(*n) && *n != module)
                        .map(str::to_owned),
                );
            }
        }
        graph.insert(module.clone(), uses);
    }
    Ok(graph)
}

fn rust_files(folder: &std::path::Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(folder)? {
        let path = entry?.path();
        if path.is_dir() {
            found.extend(rust_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
    Ok(found)
}

/// The groups of modules that reach one another (strongly connected, more than one).
fn circles_in(graph: &std::collections::BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut next = vec![from.to_owned()];
        while let Some(m) = next.pop() {
            for n in graph.get(&m).into_iter().flatten() {
                if seen.insert(n.clone()) {
                    next.push(n.clone());
                }
            }
        }
        seen
    };
    let reached: std::collections::BTreeMap<&String, BTreeSet<String>> = graph.keys().map(|m| (m, reach(m))).collect();
    let mut circles: BTreeSet<Vec<String>> = BTreeSet::new();
    for (m, from_m) in &reached {
        let circle: Vec<String> = from_m
            .iter()
            .filter(|n| reached.get(n).is_some_and(|back| back.contains(*m)))
            .cloned()
            .collect();
        if !circle.is_empty() {
            circles.insert(circle);
        }
    }
    circles.into_iter().collect()
}

/// gRPC stays at the edges: in each service, only its adapters name `tonic` (the servers in
/// `grpc`, the clients of other services in `clients.rs`, audit's HTTP endpoints), with the
/// one error mapping (`error.rs`) and the crate root that hosts the routes.
#[test]
fn tonic_is_named_only_by_the_adapters() -> anyhow::Result<()> {
    let services = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../services");
    let adapters = ["lib.rs", "error.rs", "clients.rs", "grpc.rs", "grpc/", "http/"];
    let mut found = Vec::new();
    let mut read = 0;
    for service in SERVICE_CRATES {
        let src = services.join(service.trim_start_matches("pim-")).join("src");
        for path in rust_files(&src)? {
            read += 1;
            let file = path.strip_prefix(&src)?.to_string_lossy().replace('\\', "/");
            if adapters
                .iter()
                .any(|a| file == *a || (a.ends_with('/') && file.starts_with(a)))
            {
                continue;
            }
            let text = std::fs::read_to_string(&path)?;
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
            if code
                .lines()
                .any(|line| line.split("//").next().unwrap_or_default().contains("tonic"))
            {
                found.push(format!("{service}: {file}"));
            }
        }
    }
    anyhow::ensure!(read > 60, "the services' sources were read ({read} files)");
    assert!(found.is_empty(), "tonic named outside the adapters: {found:#?}");
    Ok(())
}

/// No room needs scrolling through unrelated flows: every Rust source file of a service is at
/// most 800 lines (a file that grows past it is split by responsibility).
#[test]
fn no_service_source_file_is_over_800_lines() -> anyhow::Result<()> {
    const MAX_LINES: usize = 800;
    let services = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../services");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&services)? {
        let path = entry?.path();
        for folder in ["src", "tests"] {
            if path.join(folder).is_dir() {
                files.extend(rust_files(&path.join(folder))?);
            }
        }
    }
    anyhow::ensure!(files.len() > 50, "the services' sources were found: {files:?}");
    let mut long = Vec::new();
    for file in files {
        let lines = std::fs::read_to_string(&file)?.lines().count();
        if lines > MAX_LINES {
            long.push(format!("{}: {lines} lines", file.display()));
        }
    }
    assert!(long.is_empty(), "files over {MAX_LINES} lines: {long:#?}");
    Ok(())
}

/// ARCHITECTURE.md keeps each invariant with the test that keeps it true: every test it names
/// (`module::a_test_named_in_words`) is a function in the workspace, so a renamed or deleted
/// test cannot leave the document pointing at nothing.
#[test]
fn every_test_the_architecture_names_exists() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md"))?;
    let mut functions = BTreeSet::new();
    for folder in ["services", "shared", "tests"] {
        for path in rust_files(&root.join(folder))? {
            let text = std::fs::read_to_string(&path)?;
            for (at, _) in text.match_indices("fn ") {
                let name: String = text[at + 3..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                functions.insert(name);
            }
        }
    }
    // A test named in words: a path in backticks whose last part is a long snake_case name.
    let mut named = BTreeSet::new();
    for quoted in doc.split('`').skip(1).step_by(2) {
        let Some((_, last)) = quoted.rsplit_once("::") else {
            continue;
        };
        if last.len() > 25
            && last.matches('_').count() >= 3
            && last
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            named.insert((quoted.to_owned(), last.to_owned()));
        }
    }
    anyhow::ensure!(
        named.len() > 50,
        "the tests ARCHITECTURE.md names were found: {}",
        named.len()
    );
    let missing: Vec<&String> = named
        .iter()
        .filter(|(_, last)| !functions.contains(last))
        .map(|(quoted, _)| quoted)
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names tests that do not exist: {missing:#?}"
    );
    Ok(())
}
