//! The README's walk-through, run as a person would: `pim up`, the client commands, then
//! SIGTERM ends it gracefully, and a restart keeps everything (and prints no new credentials).

use super::*;

#[test]
fn the_readme_walk_through_works_and_survives_a_restart() {
    let dir = std::env::temp_dir().join(format!("pim-cli-{}", uuid::Uuid::now_v7().simple()));
    let data = dir.join("data");
    let up = Up::start(&data);
    let printed = up.read_until(|l| l.contains("password:"));
    let server = field(&printed, "PIM is up at");
    let password = field(&printed, "password:");
    assert_eq!(field(&printed, "user name:"), "admin");
    // What pim up keeps is its owner's alone.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700, "the data directory");
        for file in ["identity.db", "audit.db", "secrets.key"] {
            assert_eq!(mode(&data.join(file)), 0o600, "{file}");
        }
    }

    let admin = Client {
        server: server.clone(),
        token_file: dir.join("admin-token"),
    };
    assert!(
        admin
            .ok(
                &["login", "--user", "admin", "--password-stdin"],
                Some(&format!("{password}\n"))
            )
            .contains("Signed in as admin (")
    );
    // The login's server is remembered with its token: later commands need no --server.
    let remembered = Command::new(PIM)
        .arg("whoami")
        .env_remove("PIM_SERVER")
        .env("PIM_TOKEN_FILE", &admin.token_file)
        .output()
        .expect("pim runs");
    assert!(
        remembered.status.success() && String::from_utf8_lossy(&remembered.stdout).contains("admin"),
        "whoami without --server: {} {}",
        String::from_utf8_lossy(&remembered.stdout),
        String::from_utf8_lossy(&remembered.stderr)
    );
    let created = admin.ok(
        &["users", "create", "--user-name", "lee", "--display-name", "Lee Gu"],
        None,
    );
    assert!(created.contains("Created user lee"), "{created}");
    let lee_password = field(
        &created.lines().map(str::to_owned).collect::<Vec<_>>(),
        "Initial password (shown once):",
    );
    let assigned = admin.ok(
        &[
            "assign",
            "--principal",
            "lee",
            "--role",
            "Exchange Administrator",
            "--kind",
            "active",
            "--duration",
            "1h",
            "--justification",
            "mailbox migration",
            "--ticket",
            "ServiceNow:INC0012345",
        ],
        None,
    );
    assert!(assigned.contains("provisioned"), "{assigned}");
    let allowed = admin.ok(
        &[
            "check",
            "--principal",
            "lee",
            "--role",
            "Exchange Administrator",
            "--scope",
            "/",
        ],
        None,
    );
    assert!(
        allowed.starts_with("allowed: lee holds Exchange Administrator at / until"),
        "{allowed}"
    );
    let extended = admin.ok(
        &[
            "extend",
            "--principal",
            "lee",
            "--role",
            "Exchange Administrator",
            "--kind",
            "active",
            "--duration",
            "2h",
            "-j",
            "the migration slipped",
        ],
        None,
    );
    assert!(extended.contains("now ends"), "{extended}");
    let shorter = admin.run(
        &[
            "extend",
            "--principal",
            "lee",
            "--role",
            "Exchange Administrator",
            "--kind",
            "active",
            "--duration",
            "1m",
            "-j",
            "done early",
        ],
        None,
    );
    assert_eq!(
        shorter.status.code(),
        Some(1),
        "an extension only moves the end later (refused)"
    );
    let denied = admin.run(&["check", "--principal", "lee", "--role", "Global Administrator"], None);
    assert_eq!(denied.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&denied.stdout).starts_with("denied"));
    // The principal by flag and the role by argument is the same question.
    let mixed = admin.run(&["check", "--principal", "lee", "Global Administrator"], None);
    assert_eq!(mixed.status.code(), Some(1), "{mixed:?}");
    let twice = admin.run(&["check", "--principal", "lee", "lee", "Global Administrator"], None);
    assert_eq!(twice.status.code(), Some(2), "the principal named twice is a mistake");
    // A role that does not exist is a mistake in the command (2), never "denied" (1).
    let misspelt = admin.run(&["check", "--principal", "lee", "--role", "Exchange Admin"], None);
    assert_eq!(misspelt.status.code(), Some(2), "{misspelt:?}");
    assert!(
        String::from_utf8_lossy(&misspelt.stderr).contains("no role is named"),
        "{misspelt:?}"
    );
    let nobody = admin.run(
        &["check", "--principal", "nobody", "--role", "Global Administrator"],
        None,
    );
    assert_eq!(
        nobody.status.code(),
        Some(2),
        "nor is a principal that does not exist: {nobody:?}"
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let audit = admin.ok(&["audit", "--target", "lee", "--output", "json"], None);
        if audit.contains("ActiveAssignmentGranted") && audit.contains("UserCreated") {
            assert!(audit.contains("\"justification\":\"mailbox migration\""));
            assert!(audit.contains("\"role_name\":\"Exchange Administrator\""));
            assert!(audit.contains("\"ticket\":\"ServiceNow:INC0012345\""));
            // Lee is named the same way in every record (the user name, whatever the
            // event carried), and payload times read as RFC 3339.
            for line in audit.lines() {
                let record: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
                assert_eq!(record["target_name"], "lee", "{line}");
                for at in ["start_time", "end_time"] {
                    if let Some(t) = record["payload"][at].as_str() {
                        assert!(humantime::parse_rfc3339(t).is_ok(), "{line}");
                    }
                    assert!(!record["payload"][at].is_number(), "{line}");
                }
            }
            break;
        }
        assert!(Instant::now() < deadline, "audit never showed the slice: {audit}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Between two moments: an hour ago until now has Lee's records; until an hour ago, none.
    let hour_ago = pim_runtime::format::rfc3339_seconds(pim_runtime::db::now_ms() - 3_600_000);
    let recent = admin.ok(
        &["audit", "--target", "lee", "--since", &hour_ago, "--until", "0s"],
        None,
    );
    assert!(recent.contains("UserCreated"), "{recent}");
    let earlier = admin.ok(&["audit", "--target", "lee", "--until", "1h", "--output", "json"], None);
    assert!(earlier.trim().is_empty(), "{earlier}");
    // The table says why a refusal was refused: its rule and the server's words.
    let refusals = admin.ok(&["audit", "--outcome", "failure", "--target", "lee"], None);
    assert!(refusals.lines().next().is_some_and(|h| h.contains("WHY")), "{refusals}");
    assert!(
        refusals
            .lines()
            .any(|l| l.contains("RequestRefused") && l.contains("an extension")),
        "{refusals}"
    );
    let health = admin.ok(&["health"], None);
    assert!(
        health
            .lines()
            .any(|l| l.starts_with("pim.audit.v1.AuditService") && l.ends_with("Serving")),
        "{health}"
    );

    // Lee, signed in, is refused what administrators may do.
    let lee = Client {
        server: server.clone(),
        token_file: dir.join("lee-token"),
    };
    lee.ok(
        &["login", "--user", "lee", "--password-stdin"],
        Some(&format!("{lee_password}\n")),
    );
    let refused = lee.run(&["users", "create", "--user-name", "eve"], None);
    assert_eq!(refused.status.code(), Some(1), "refused: exit status 1");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("PermissionDenied"));

    // Just-in-time: Lee enrols an authenticator, is made eligible for Security Reader, and
    // activates it; the default policy asks for MFA, so `pim activate` steps up with the code.
    admin.ok(&["policy", "set", "Security Reader", "--activation-max", "2h"], None);
    let shown = admin.ok(&["policy", "show", "Security Reader"], None);
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("activation requires MFA") && l.ends_with("true")),
        "{shown}"
    );
    admin.ok(
        &[
            "assign",
            "--principal",
            "lee",
            "--role",
            "Security Reader",
            "--kind",
            "eligible",
            "--permanent",
        ],
        None,
    );
    // A length that is not one is a usage mistake (exit 2) that says what to write.
    let negative = lee.run(&["activate", "Security Reader", "--duration", "-5m"], None);
    let said = String::from_utf8_lossy(&negative.stderr);
    assert_eq!(negative.status.code(), Some(2), "{said}");
    assert!(
        said.contains("never negative") && said.contains("30m, 8h or 14d"),
        "{said}"
    );
    // Nor is a length in a unit some read as minutes and others as months.
    let month = lee.run(&["activate", "Security Reader", "--duration", "1M"], None);
    let said = String::from_utf8_lossy(&month.stderr);
    assert_eq!(month.status.code(), Some(2), "{said}");
    assert!(said.contains("'M' is not a unit"), "{said}");
    // Without an authenticator, she is told to enrol one (not asked for a code she cannot give).
    let no_method = lee.run(&["activate", "Security Reader", "-j", "alert triage"], None);
    let said = String::from_utf8_lossy(&no_method.stderr);
    assert_eq!(no_method.status.code(), Some(2), "{said}");
    assert!(
        said.contains("you have no MFA method") && said.contains("pim mfa enroll"),
        "{said}"
    );
    let authenticator = lee.enroll_mfa();
    // A wrong code is a wrong code: signing in again would not help, so it is not suggested.
    let wrong = lee.run(&["mfa", "verify", "--code", "00000000"], None);
    let said = String::from_utf8_lossy(&wrong.stderr);
    assert_ne!(wrong.status.code(), Some(0), "{said}");
    assert!(
        said.contains("code is incorrect") && !said.contains("pim login"),
        "{said}"
    );

    let code = authenticator.generate(now_secs() + 30);
    let activated = lee.ok(
        &[
            "activate",
            "Security Reader",
            "--duration",
            "1h",
            "--justification",
            "alert triage",
            "--code",
            &code,
        ],
        None,
    );
    assert!(
        activated.contains("needs") || activated.contains("active"),
        "{activated}"
    );
    assert!(activated.contains("Security Reader active at / from"), "{activated}");
    let roles = lee.ok(&["roles"], None);
    assert!(
        roles
            .lines()
            .any(|l| l.starts_with("eligible") && l.contains("Security Reader")),
        "{roles}"
    );
    assert!(
        roles
            .lines()
            .any(|l| l.starts_with("active") && l.contains("Security Reader")),
        "{roles}"
    );
    assert!(
        admin
            .ok(&["check", "lee", "Security Reader"], None)
            .starts_with("allowed")
    );
    lee.ok(&["deactivate", "Security Reader"], None);
    // Lee, who may not read the directory now, still names herself; naming another is a
    // question she may not ask (exit 5, give the id instead), never "not allowed" (exit 1).
    let herself = lee.run(&["check", "lee", "Security Reader"], None);
    let said = String::from_utf8_lossy(&herself.stdout);
    assert_eq!(herself.status.code(), Some(1), "{said}");
    assert!(said.starts_with("denied: lee does not hold"), "{said}");
    let by_name = lee.run(&["check", "admin", "Security Reader"], None);
    let said = String::from_utf8_lossy(&by_name.stderr);
    assert_eq!(by_name.status.code(), Some(5), "{said}");
    assert!(said.contains("give \"admin\"'s id instead"), "{said}");
    // Naming herself looked nothing else up: the audit log holds the refusal of her look-up of
    // "admin" (GetUser), and no refused listing of groups or apps she never asked for.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let refusals = admin.ok(&["audit", "--outcome", "failure", "--output", "json"], None);
        if refusals.contains("DirectoryService/GetUser") {
            assert!(!refusals.contains("DirectoryService/ListGroups"), "{refusals}");
            assert!(
                !refusals.contains("DirectoryService/ListServicePrincipals"),
                "{refusals}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "audit never showed the refused look-up: {refusals}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        admin.run(&["check", "lee", "Security Reader"], None).status.code(),
        Some(1)
    );
    // The session is stepped up now: only the duration rule fails.
    let too_long = lee.run(
        &[
            "activate",
            "Security Reader",
            "--duration",
            "3h",
            "--justification",
            "triage",
        ],
        None,
    );
    assert_eq!(too_long.status.code(), Some(1), "refused by a policy rule");
    assert!(
        String::from_utf8_lossy(&too_long.stderr).contains("[rules: ExpirationRule]"),
        "{}",
        String::from_utf8_lossy(&too_long.stderr)
    );
    let requests = lee.ok(&["requests"], None);
    assert!(
        requests.contains("selfActivate") && requests.contains("selfDeactivate"),
        "{requests}"
    );
    // Names, not ids: who asked, and for which role.
    assert!(
        requests.contains(" lee ") && requests.contains("Security Reader"),
        "{requests}"
    );

    // With approval required, the request waits; the admin (a default approver) sees it in
    // `pim approvals` and approves it, and the role is active.
    admin.ok(
        &["policy", "set", "Security Reader", "--require-approval", "true"],
        None,
    );
    // A change based on a version of the policy that is no longer in force applies nothing.
    let stale = admin.run(
        &[
            "policy",
            "set",
            "Security Reader",
            "--require-ticket",
            "true",
            "--etag",
            "\"0\"",
        ],
        None,
    );
    assert_eq!(stale.status.code(), Some(1), "refused: exit status 1");
    assert!(String::from_utf8_lossy(&stale.stderr).contains("changed since it was read"));
    // The etag `policy show` prints applies, even without the quotes a shell would strip.
    let shown = admin.ok(&["policy", "show", "Security Reader"], None);
    let etag = shown
        .lines()
        .find_map(|l| l.strip_prefix("etag"))
        .map(|e| e.trim().trim_matches('"').to_owned())
        .unwrap_or_else(|| panic!("an etag: {shown}"));
    admin.ok(
        &[
            "policy",
            "set",
            "Security Reader",
            "--require-ticket",
            "false",
            "--etag",
            &etag,
        ],
        None,
    );
    let shown = admin.ok(&["policy", "show", "Security Reader"], None);
    for (setting, value) in [
        ("activation requires ticket", "false"),
        ("approval required", "true"),
        ("activation requires MFA", "true"),
    ] {
        assert!(
            shown.lines().any(|l| l.starts_with(setting) && l.ends_with(value)),
            "{setting}: {shown}"
        );
    }
    let waiting = lee.ok(
        &[
            "activate",
            "Security Reader",
            "--duration",
            "1h",
            "--justification",
            "weekend on call",
            "--no-wait",
        ],
        None,
    );
    assert!(waiting.contains("pending_approval"), "{waiting}");
    // Until approved it has no end yet: the hour counts from the approval.
    let asked = lee.ok(&["requests"], None);
    assert!(
        asked
            .lines()
            .any(|l| l.contains("pending_approval") && l.contains("1h once approved")),
        "{asked}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let approval = loop {
        let listed = admin.ok(&["approvals", "--status", "pending"], None);
        if let Some(line) = listed.lines().find(|l| l.contains("weekend on call")) {
            assert!(listed.lines().next().is_some_and(|h| h.contains("ASKS")), "{listed}");
            assert!(line.contains("activate for 1h"), "what is asked: {line}");
            break line.split_whitespace().next().expect("an id").to_owned();
        }
        assert!(Instant::now() < deadline, "no approval appeared: {listed}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let refused = lee.run(&["approve", &approval, "-j", "me"], None);
    assert_eq!(refused.status.code(), Some(1), "nobody approves their own request");
    let approved = admin.ok(&["approve", &approval, "-j", "on-call rota"], None);
    assert!(approved.contains("is approved"), "{approved}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin.run(&["check", "lee", "Security Reader"], None).status.code() != Some(0) {
        assert!(Instant::now() < deadline, "the approved role never became active");
        std::thread::sleep(Duration::from_millis(100));
    }

    // An access review of Security Reader: the admin keeps Lee's eligibility, then stops it.
    let created = admin.ok(
        &[
            "reviews",
            "create",
            "--name",
            "readers",
            "--role",
            "Security Reader",
            "--assignments",
            "eligible",
            "--reviewers",
            "admin",
            "--duration",
            "7d",
        ],
        None,
    );
    assert!(created.contains("in_progress"), "{created}");
    let review = created.split_whitespace().nth(1).expect("the review id").to_owned();
    let items = admin.ok(&["reviews", "items", &review], None);
    let item = items
        .lines()
        .find(|l| l.contains("eligible"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("Lee's eligibility under review: {items}"))
        .to_owned();
    let decided = admin.ok(
        &["reviews", "decide", &item, "--approve", "-j", "still on the SOC rota"],
        None,
    );
    assert!(decided.ends_with("approve\n"), "{decided}");
    assert!(admin.ok(&["reviews", "stop", &review], None).contains("stopped"));
    assert!(admin.ok(&["reviews", "list"], None).contains("readers"));
    let outcomes = admin.ok(&["reviews", "items", &review, "--all"], None);
    assert!(
        outcomes
            .lines()
            .any(|l| l.starts_with(&item) && l.trim_end().ends_with("kept")),
        "{outcomes}"
    );

    // Alerts: the break-glass administrator is a permanent Global Administrator, which the
    // rules point out; the admin acknowledges it and tunes a rule.
    let deadline = Instant::now() + Duration::from_secs(10);
    let alert = loop {
        let listed = admin.ok(&["alerts"], None);
        if let Some(line) = listed.lines().find(|l| l.contains("permanent_privileged")) {
            break line.split_whitespace().next().expect("an id").to_owned();
        }
        assert!(Instant::now() < deadline, "no alert appeared: {listed}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let acked = admin.ok(&["alerts", "ack", &alert], None);
    assert!(acked.contains("acknowledged"), "{acked}");
    // A status filter lists only the alerts in that status.
    let open = admin.ok(&["alerts", "--status", "open"], None);
    assert!(!open.contains(&alert), "acknowledged, so not open: {open}");
    let acknowledged = admin.ok(&["alerts", "--status", "acknowledged"], None);
    assert!(acknowledged.contains(&alert), "{acknowledged}");
    // Dismissing asks why, and says how to tell it; -j tells it, as everywhere.
    let unexplained = admin.run(&["alerts", "dismiss", &alert], None);
    let said = String::from_utf8_lossy(&unexplained.stderr);
    assert_eq!(unexplained.status.code(), Some(2), "{said}");
    assert!(said.contains("--reason"), "{said}");
    // The alert is about the admin: another administrator dismisses it.
    let own = admin.run(
        &["alerts", "dismiss", &alert, "-j", "the break-glass account, by design"],
        None,
    );
    let said = String::from_utf8_lossy(&own.stderr);
    assert_ne!(own.status.code(), Some(0), "{said}");
    assert!(said.contains("about you"), "{said}");
    let rules = admin.ok(
        &["alerts", "rules", "set", "frequent_activation", "--setting", "count=4"],
        None,
    );
    assert!(
        rules
            .lines()
            .any(|l| l.starts_with("frequent_activation") && l.contains("count=4")),
        "{rules}"
    );

    // The audit log is intact, and exports as JSON lines with the chain's hashes.
    assert!(admin.ok(&["audit", "verify"], None).starts_with("intact:"));
    let exported = admin.ok(&["audit", "export"], None);
    let lines: Vec<&str> = exported.lines().collect();
    assert!(lines.len() >= 8, "{exported}");
    assert!(
        lines.iter().all(|l| l.starts_with('{') && l.contains("\"hash\":\"")),
        "{exported}"
    );
    assert!(!exported.contains(&password), "no secret in the audit log");
    // A reader that goes away (`pim audit | head -1`) ends the command quietly.
    for args in [&["audit"][..], &["audit", "export"]] {
        let out = admin.run_reader_gone(args);
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "pim {args:?}: {said}");
        assert!(said.is_empty(), "pim {args:?}: {said}");
    }

    let whoami = admin.ok(&["whoami"], None);
    assert!(
        whoami.starts_with("admin (") && whoami.contains("signed in until 20"),
        "{whoami}"
    );
    let created = admin.ok(&["groups", "create", "--name", "ops", "--role-assignable"], None);
    assert!(created.contains("role-assignable"), "{created}");
    let group = created
        .split('(')
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("the group id")
        .to_owned();
    admin.ok(&["groups", "add-member", &group, "lee"], None);
    assert!(admin.ok(&["groups", "members", &group], None).contains("lee"));
    admin.ok(&["groups", "remove-member", &group, "lee"], None);
    assert!(!admin.ok(&["groups", "members", &group], None).contains("lee"));

    let logout = lee.ok(&["logout"], None);
    assert!(logout.contains("Signed out"), "{logout}");
    assert_eq!(lee.run(&["roles"], None).status.code(), Some(2), "no token any more");

    let key = std::fs::read_to_string(data.join("secrets.key")).expect("pim up keeps a key for secrets at rest");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("secrets.key"))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "only its owner may read the key");
        // The server a token was signed in at is kept beside it, as privately.
        let remembered = std::fs::metadata(dir.join("admin-token.server"))
            .expect("the server remembered")
            .permissions()
            .mode();
        assert_eq!(remembered & 0o077, 0, "only its owner reads where the token works");
    }
    // A password in the server's address would be kept there: refused, and not echoed.
    let refused = admin.run(&["roles", "--server", "http://ops:hunter2@127.0.0.1:1"], None);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_ne!(refused.status.code(), Some(0), "{said}");
    assert!(said.contains("no credentials") && !said.contains("hunter2"), "{said}");
    up.terminate();

    // Restarted on the same data: no new administrator, same access, same tokens, same key.
    let again = Up::start(&data);
    let printed = again.read_until(|l| l.starts_with("PIM is up at"));
    let server = field(&printed, "PIM is up at");
    let admin = Client {
        server,
        token_file: dir.join("admin-token"),
    };
    let allowed = admin.ok(
        &["check", "--principal", "lee", "--role", "Exchange Administrator"],
        None,
    );
    assert!(allowed.starts_with("allowed"), "{allowed}");
    // The credentials block would follow the address, before the server answered the check.
    assert!(
        again.lines.try_iter().all(|l| !l.contains("Break-glass")),
        "credentials are printed on first start only"
    );
    again.terminate();
    assert_eq!(
        std::fs::read_to_string(data.join("secrets.key")).expect("key file"),
        key
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A supervisor's SIGTERM as `pim up` starts (just after it prints its address, while it
/// still makes the administrator) stops it: the whole process hears the signal from its first
/// moment, and no part of it, listening later, misses it and runs on.
#[test]
fn told_to_stop_as_it_starts_pim_up_stops() {
    let dir = std::env::temp_dir().join(format!("pim-cli-{}", uuid::Uuid::now_v7().simple()));
    let up = Up::start(&dir.join("data"));
    up.read_until(|l| l.starts_with("PIM is up at"));
    up.terminate();
    let _ = std::fs::remove_dir_all(dir);
}
