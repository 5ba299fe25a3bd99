//! The CLI in scripts: token files that never send a token elsewhere, answers a script can
//! tell apart, and names that stand for one thing.

use super::*;

/// `pim` with a token file and no `--server` (nor PIM_SERVER): the server comes from the
/// file beside the token, as in a script run after `pim login`.
fn remembered(token_file: &Path, args: &[&str]) -> Output {
    Command::new(PIM)
        .args(args)
        .env_remove("PIM_SERVER")
        .env("PIM_TOKEN_FILE", token_file)
        .stdin(Stdio::null())
        .output()
        .expect("pim runs")
}

/// Two token files whose names differ only after the last dot keep a server each (`ci.prod`
/// and `ci.stage` once shared `ci.server`, and one's token went to the other's server); a token
/// file replaced by another token is not sent to the server of the one it replaced; and a
/// token is written as a new private file, whatever was there (a file anyone reads, a link).
#[test]
fn a_token_goes_only_to_the_server_it_was_signed_in_at() {
    let (dir, up, server, admin) = up_with_admin();
    let password = "ci's long passphrase, kept in a vault";
    admin.ok(
        &["users", "create", "--user-name", "ci-job", "--password-stdin"],
        Some(&format!("{password}\n")),
    );
    // The same server under two spellings stands for two: production and staging.
    let port = server.rsplit(':').next().expect("a port");
    let (prod, stage) = (server.clone(), format!("http://localhost:{port}"));
    let login = |token_file: &Path, server: &str| {
        Client {
            server: server.to_owned(),
            token_file: token_file.to_owned(),
        }
        .ok(
            &["login", "--user", "ci-job", "--password-stdin"],
            Some(&format!("{password}\n")),
        )
    };
    let (prod_token, stage_token) = (dir.join("ci.prod"), dir.join("ci.stage"));
    login(&prod_token, &prod);
    login(&stage_token, &stage);
    let server_of = |token: &Path| {
        let mut name = token.file_name().expect("a name").to_owned();
        name.push(".server");
        let text = std::fs::read_to_string(token.with_file_name(name)).expect("the server beside the token");
        text.lines().next().unwrap_or_default().to_owned()
    };
    assert_eq!(server_of(&prod_token), prod);
    assert_eq!(server_of(&stage_token), stage);
    let whoami = remembered(&prod_token, &["whoami"]);
    assert!(whoami.status.success(), "{}", String::from_utf8_lossy(&whoami.stderr));
    // Signed out everywhere from another session: these sessions' tokens work no more.
    let elsewhere = dir.join("ci.elsewhere");
    login(&elsewhere, &prod);
    let out = remembered(&elsewhere, &["logout", "--everywhere"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for token in [&prod_token, &stage_token] {
        let ended = remembered(token, &["whoami"]);
        assert_eq!(
            ended.status.code(),
            Some(2),
            "{}",
            String::from_utf8_lossy(&ended.stderr)
        );
    }
    login(&prod_token, &prod);
    login(&stage_token, &stage);

    // The staging token copied over the production one is not sent to production.
    std::fs::copy(&stage_token, &prod_token).expect("copy the token");
    let refused = remembered(&prod_token, &["whoami"]);
    let said = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert_eq!(refused.status.code(), Some(2), "{said}");
    assert!(said.contains("another token") && said.contains("--server"), "{said}");
    // Nor is a token with no server beside it (one put there by hand).
    let bare = dir.join("bare.token");
    std::fs::copy(&stage_token, &bare).expect("copy the token");
    let refused = remembered(&bare, &["whoami"]);
    let said = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert_eq!(refused.status.code(), Some(2), "{said}");
    assert!(said.contains("is not known"), "{said}");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // A token file anyone may read, and a token file that is a link to another file.
        let open = dir.join("open.token");
        std::fs::write(&open, "").expect("make the file");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        login(&open, &prod);
        let mode = std::fs::metadata(&open).expect("the token").permissions().mode();
        assert_eq!(mode & 0o077, 0, "only its owner reads the token: {mode:o}");
        let victim = dir.join("victim.txt");
        std::fs::write(&victim, "keep me").expect("make the file");
        let link = dir.join("link.token");
        std::os::unix::fs::symlink(&victim, &link).expect("link");
        login(&link, &prod);
        assert_eq!(
            std::fs::read_to_string(&victim).expect("read"),
            "keep me",
            "not written through the link"
        );
        assert!(
            !std::fs::symlink_metadata(&link)
                .expect("the token")
                .file_type()
                .is_symlink(),
            "the link is replaced by the token"
        );
    }
    up.terminate();
    std::fs::remove_dir_all(&dir).ok();
}

/// `pim check` answers 0 (allowed) or 1 (not allowed) only when it could ask: a question
/// refused to the asker exits 5, so a script that acts on "does not hold it" never acts on
/// "could not ask". With `--output json` the answer is one object.
#[test]
fn check_tells_not_allowed_from_could_not_ask() {
    let (dir, up, server, admin) = up_with_admin();
    admin.ok(
        &["users", "create", "--user-name", "lee", "--password-stdin"],
        Some("lee's long passphrase\n"),
    );
    let lee = Client {
        server,
        token_file: dir.join("lee-token"),
    };
    lee.ok(
        &["login", "--user", "lee", "--password-stdin"],
        Some("lee's long passphrase\n"),
    );
    let denied = admin.run(&["check", "lee", "Global Administrator"], None);
    assert_eq!(denied.status.code(), Some(1), "lee holds nothing");
    let asked = admin.ok(&["check", "admin", "Global Administrator", "--output", "json"], None);
    let answer: serde_json::Value = serde_json::from_str(asked.trim()).expect("one JSON object");
    assert_eq!(answer["allowed"], true, "{answer}");
    assert_eq!(answer["grants"][0]["role"], "Global Administrator", "{answer}");
    let denied = admin.run(&["check", "lee", "Global Administrator", "--output", "json"], None);
    assert_eq!(denied.status.code(), Some(1));
    let answer: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&denied.stdout).trim()).expect("one JSON object");
    assert_eq!(answer["allowed"], false, "{answer}");

    // Lee may not ask about the administrator: that is not "the administrator does not hold it".
    let admin_id = answer_id(&admin.ok(&["users", "get", "admin", "--output", "json"], None));
    let refused = lee.run(&["check", &admin_id, "Global Administrator"], None);
    let said = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert_eq!(refused.status.code(), Some(5), "{said}");
    assert!(
        said.contains("could not be answered") && said.contains("PermissionDenied"),
        "{said}"
    );
    // So is one naming the administrator by a name Lee may not look up; as JSON, an answer
    // that is none.
    let refused = lee.run(&["check", "admin", "Global Administrator", "--output", "json"], None);
    assert_eq!(
        refused.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let answer: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&refused.stdout).trim()).expect("one JSON object");
    assert!(answer["allowed"].is_null() && answer["error"].is_string(), "{answer}");

    // What a command did, as one JSON object a script reads.
    let assigned = admin.ok(
        &[
            "assign",
            "--principal",
            "lee",
            "--role",
            "Security Reader",
            "--kind",
            "active",
            "--duration",
            "1h",
            "--justification",
            "on call",
            "--output",
            "json",
        ],
        None,
    );
    let assigned: serde_json::Value = serde_json::from_str(assigned.trim()).expect("one JSON object");
    assert_eq!(assigned["status"], "provisioned", "{assigned}");
    assert_eq!(assigned["role"], "Security Reader", "{assigned}");
    assert!(
        !assigned["assignment_id"].as_str().unwrap_or_default().is_empty(),
        "{assigned}"
    );
    let removed = admin.ok(
        &[
            "unassign",
            "--principal",
            "lee",
            "--role",
            "Security Reader",
            "--kind",
            "active",
            "--justification",
            "rota over",
            "--output",
            "json",
        ],
        None,
    );
    let removed: serde_json::Value = serde_json::from_str(removed.trim()).expect("one JSON object");
    assert_eq!(removed["scope"], "/", "{removed}");
    assert_ne!(removed["request_id"], assigned["request_id"], "{removed}");

    // A page of the audit log cut short says so on standard error; --all reads every page;
    // an export takes a window.
    let cut = admin.run(&["audit", "--limit", "1", "--output", "json"], None);
    assert_eq!(String::from_utf8_lossy(&cut.stdout).lines().count(), 1);
    let said = String::from_utf8_lossy(&cut.stderr).into_owned();
    assert!(said.contains("more match: pass --all"), "{said}");
    // (Records may still arrive meanwhile: every page is between the counts before and after.)
    let count = |args: &[&str]| admin.ok(args, None).lines().count();
    let before = count(&["audit", "--limit", "1000", "--output", "json"]);
    let all = count(&["audit", "--limit", "1", "--all", "--output", "json"]);
    let after = count(&["audit", "--limit", "1000", "--output", "json"]);
    assert!(
        before > 1 && (before..=after).contains(&all),
        "{before} ≤ {all} ≤ {after}"
    );
    let whole = admin.ok(&["audit", "--limit", "1000", "--output", "json"], None);
    let exported = admin.ok(&["audit", "export"], None);
    assert!(exported.lines().count() >= whole.lines().count(), "{exported}");
    let long_ago = admin.ok(&["audit", "export", "--until", "1h"], None);
    assert_eq!(long_ago, "", "nothing is an hour old");
    up.terminate();
    std::fs::remove_dir_all(&dir).ok();
}

/// The `id` of the one JSON object printed.
fn answer_id(printed: &str) -> String {
    let answer: serde_json::Value = serde_json::from_str(printed.trim()).expect("one JSON object");
    answer["id"].as_str().expect("an id").to_owned()
}

/// A group's and a service principal's name stands for one: made again (a script retried), it
/// is refused as existing, so commands and config files that name it never find two.
#[test]
fn a_name_made_twice_is_refused_the_second_time() {
    let (dir, up, _server, admin) = up_with_admin();
    admin.ok(&["sp", "create", "--name", "ci-bot"], None);
    let again = admin.run(&["sp", "create", "--name", "ci-bot"], None);
    let said = String::from_utf8_lossy(&again.stderr).into_owned();
    assert_eq!(again.status.code(), Some(1), "{said}");
    assert!(said.contains("AlreadyExists") && said.contains("ci-bot"), "{said}");
    admin.ok(&["sp", "disable", "ci-bot"], None);

    admin.ok(&["groups", "create", "--name", "ops"], None);
    admin.ok(&["groups", "create", "--name", "oncall"], None);
    let again = admin.run(&["groups", "create", "--name", "ops"], None);
    let said = String::from_utf8_lossy(&again.stderr).into_owned();
    assert_eq!(again.status.code(), Some(1), "{said}");
    assert!(said.contains("AlreadyExists"), "{said}");
    let renamed = admin.run(&["groups", "update", "oncall", "--name", "ops"], None);
    let said = String::from_utf8_lossy(&renamed.stderr).into_owned();
    assert_eq!(renamed.status.code(), Some(1), "{said}");
    assert!(said.contains("AlreadyExists"), "{said}");
    admin.ok(&["groups", "add-member", "ops", "admin"], None);
    up.terminate();
    std::fs::remove_dir_all(&dir).ok();
}

/// A refusal no step-up would mend is shown at once, every rule named: an activation without
/// the ticket the policy wants, from a session whose MFA is not recent, says both (not "pass
/// --code"); one of a role already active says so (not asked for a code first). Only a
/// refusal for want of MFA alone asks for a code.
#[test]
fn a_refusal_a_step_up_would_not_mend_is_shown_at_once() {
    let (dir, up, server, admin) = up_with_admin();
    admin.ok(
        &["users", "create", "--user-name", "lee", "--password-stdin"],
        Some("lee's long passphrase\n"),
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
    admin.ok(&["policy", "set", "Security Reader", "--require-ticket", "true"], None);
    let lee = Client {
        server: server.clone(),
        token_file: dir.join("lee-token"),
    };
    lee.ok(
        &["login", "--user", "lee", "--password-stdin"],
        Some("lee's long passphrase\n"),
    );
    let before = |name: &str| {
        let copy = Client {
            server: server.clone(),
            token_file: dir.join(name),
        };
        std::fs::copy(&lee.token_file, &copy.token_file).expect("copy the token");
        copy
    };
    let (first, second) = (before("lee-first"), before("lee-second"));
    let authenticator = lee.enroll_mfa();
    let enrolled_at = now_secs();

    let unticketed = first.run(&["activate", "Security Reader", "-j", "triage"], None);
    let stderr = String::from_utf8_lossy(&unticketed.stderr).into_owned();
    assert_eq!(unticketed.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("TicketingRule") && stderr.contains("MfaRule"),
        "{stderr}"
    );
    assert!(!stderr.contains("pass --code"), "{stderr}");
    let ticketed = [
        "activate",
        "Security Reader",
        "-j",
        "triage",
        "--ticket",
        "ServiceNow:INC0042",
    ];
    let unasked = first.run(&ticketed, None);
    let stderr = String::from_utf8_lossy(&unasked.stderr).into_owned();
    assert_eq!(unasked.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("pass --code"), "{stderr}");
    let code = authenticator.generate(enrolled_at + 30);
    let mut with_code = ticketed.to_vec();
    with_code.extend(["--code", &code]);
    first.ok(&with_code, None);
    let again = second.run(&ticketed, None);
    let stderr = String::from_utf8_lossy(&again.stderr).into_owned();
    assert_eq!(again.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("already active"), "{stderr}");
    up.terminate();
    std::fs::remove_dir_all(&dir).ok();
}
