//! Sign-in with codes, users managed, and a waiting request withdrawn.

use super::*;

/// The MFA lifecycle from the command line: with an authenticator enrolled, `pim login` needs
/// its code (the server holds the sign-in until then); new recovery codes from a session
/// without a recent MFA step up first; a recovery code signs in and says how many are left.
#[test]
fn sign_in_with_a_code_and_new_recovery_codes_after_a_step_up() {
    let (dir, up, server, admin) = up_with_admin();
    admin.ok(
        &["users", "create", "--user-name", "lee", "--password-stdin"],
        Some("lee's long passphrase\n"),
    );
    let lee = Client {
        server: server.clone(),
        token_file: dir.join("lee-token"),
    };
    lee.ok(
        &["login", "--user", "lee", "--password-stdin"],
        Some("lee's long passphrase\n"),
    );
    // A copy of the session's token from before the authenticator: it has no MFA.
    let before = Client {
        server: server.clone(),
        token_file: dir.join("lee-token-before-mfa"),
    };
    std::fs::copy(&lee.token_file, &before.token_file).expect("copy the token");
    let authenticator = lee.enroll_mfa();
    let enrolled_at = now_secs();

    // New recovery codes need a recent MFA: pim steps up with --code, then asks again.
    let generated = before.run(
        &[
            "mfa",
            "recovery-codes",
            "--code",
            &authenticator.generate(enrolled_at + 30),
        ],
        None,
    );
    let stdout = String::from_utf8_lossy(&generated.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&generated.stderr).into_owned();
    assert!(generated.status.success(), "{stdout} {stderr}");
    assert!(
        stderr.contains("Making new recovery codes needs a recent multi-factor authentication"),
        "{stderr}"
    );
    let codes: Vec<String> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("Recovery codes"))
        .skip(1)
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(codes.len(), 10, "{stdout}");

    // Without a code, signing in is refused and says what is missing.
    let refused = lee.run(
        &["login", "--user", "lee", "--password-stdin"],
        Some("lee's long passphrase\n"),
    );
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--code"));

    // With a recovery code (the phone is lost): signed in, told how many are left.
    let rescued = lee.run(
        &["login", "--user", "lee", "--password-stdin", "--code", &codes[0]],
        Some("lee's long passphrase\n"),
    );
    assert!(rescued.status.success(), "{}", String::from_utf8_lossy(&rescued.stderr));
    assert!(String::from_utf8_lossy(&rescued.stdout).contains("Signed in as"));
    assert!(
        String::from_utf8_lossy(&rescued.stderr).contains("recovery code was used (9 left)"),
        "{}",
        String::from_utf8_lossy(&rescued.stderr)
    );
    let methods = lee.ok(&["mfa", "methods"], None);
    assert!(methods.contains("Recovery codes left: 9"), "{methods}");

    // An administrator with an authenticator, in a session from before it, steps up to
    // disable a user, as to activate.
    let admin_before = Client {
        server: server.clone(),
        token_file: dir.join("admin-token-before-mfa"),
    };
    std::fs::copy(&admin.token_file, &admin_before.token_file).expect("copy the token");
    let admins = admin.enroll_mfa();
    let enrolled_at = now_secs();
    // Without a terminal and without a code there is no one to ask: refused at once, saying
    // how to give one (it once waited for a line on standard input, and a cron job hung).
    let unasked = admin_before.run(&["users", "disable", "lee"], None);
    let stderr = String::from_utf8_lossy(&unasked.stderr).into_owned();
    assert_eq!(unasked.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("needs a recent multi-factor authentication: pass --code"),
        "{stderr}"
    );
    assert!(admin.ok(&["users", "get", "lee"], None).contains("enabled"));
    let disabled = admin_before.run(
        &["users", "disable", "lee", "--code", &admins.generate(enrolled_at + 30)],
        None,
    );
    let stderr = String::from_utf8_lossy(&disabled.stderr).into_owned();
    assert!(disabled.status.success(), "{stderr}");
    assert!(
        stderr.contains("Disabling a user needs a recent multi-factor authentication"),
        "{stderr}"
    );
    assert!(admin.ok(&["users", "get", "lee"], None).contains("disabled"));
    up.terminate();
    std::fs::remove_dir_all(&dir).ok();
}

/// An administrator looks after users from the CLI (update, disable, enable, reset the
/// password, delete), and a user withdraws a request of theirs that waits for approval.
#[test]
fn users_are_managed_and_a_waiting_request_is_withdrawn() {
    let (dir, up, server, admin) = up_with_admin();
    let kim = Client {
        server,
        token_file: dir.join("kim-token"),
    };
    let first = "kim's first passphrase, long enough";
    admin.ok(
        &["users", "create", "--user-name", "kim", "--password-stdin"],
        Some(&format!("{first}\n")),
    );
    let updated = admin.ok(&["users", "update", "kim", "--display-name", "Kim Lee"], None);
    assert!(updated.contains("Kim Lee"), "{updated}");
    admin.ok(&["users", "update", "kim", "--email", "kim@example.com"], None);
    let shown = admin.ok(&["users", "get", "kim"], None);
    assert!(
        shown.contains("Kim Lee") && shown.contains("kim@example.com"),
        "the email is shown: {shown}"
    );
    // Lists as JSON lines, one object per row, parsed back.
    let listed = admin.ok(&["users", "list", "--output", "json"], None);
    let users: Vec<serde_json::Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect();
    let kim_row = users
        .iter()
        .find(|u| u["user_name"] == "kim")
        .unwrap_or_else(|| panic!("kim listed: {listed}"));
    assert_eq!(kim_row["display_name"], "Kim Lee");
    assert_eq!(kim_row["state"], "enabled");
    assert!(uuid::Uuid::parse_str(kim_row["id"].as_str().unwrap_or_default()).is_ok());

    kim.ok(
        &["login", "--user", "kim", "--password-stdin"],
        Some(&format!("{first}\n")),
    );

    // A refusal exits 1 (see the other statuses at the end).
    let refused = kim.run(&["users", "create", "--user-name", "eve"], None);
    assert_eq!(refused.status.code(), Some(1), "kim administers nobody");

    // Kim asks to keep an administrator's assignment longer, then thinks better of it. A
    // role is named the same way by every command: first, or with --role (not both); a
    // ticket as SYSTEM:NUMBER.
    let both = admin.run(
        &[
            "assign",
            "Exchange Administrator",
            "--role",
            "Exchange Administrator",
            "--principal",
            "kim",
        ],
        None,
    );
    assert_eq!(both.status.code(), Some(2), "a role named twice is a usage mistake");
    let odd_ticket = admin.run(
        &[
            "assign",
            "Exchange Administrator",
            "--principal",
            "kim",
            "--ticket",
            "INC1",
        ],
        None,
    );
    assert_eq!(odd_ticket.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&odd_ticket.stderr).contains("SYSTEM:NUMBER"));
    admin.ok(
        &[
            "assign",
            "Exchange Administrator",
            "--principal",
            "kim",
            "--kind",
            "active",
            "--duration",
            "1h",
            "--justification",
            "on call",
            "--ticket",
            "ServiceNow:INC42",
        ],
        None,
    );
    let asked = kim.ok(
        &[
            "extend",
            "--role",
            "Exchange Administrator",
            "--kind",
            "active",
            "--duration",
            "2h",
            "--justification",
            "the migration slipped",
        ],
        None,
    );
    let request_id = asked
        .split_whitespace()
        .nth(1)
        .filter(|_| asked.contains("pending_approval"))
        .unwrap_or_else(|| panic!("a waiting request: {asked}"));
    let canceled = kim.ok(&["cancel", request_id], None);
    assert!(canceled.contains("canceled"), "{canceled}");
    let requests = kim.ok(&["requests", "--output", "json"], None);
    let canceled_row: serde_json::Value = requests
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON"))
        .find(|r| r["id"] == request_id)
        .unwrap_or_else(|| panic!("the request listed: {requests}"));
    assert_eq!(canceled_row["status"], "canceled");
    assert_eq!(canceled_row["until"], "-", "a canceled request granted nothing to end");
    assert_eq!(canceled_row["principal"], "kim");
    assert_eq!(canceled_row["role"], "Exchange Administrator");
    // Names in tables; their ids beside them in JSON, and in tables with --ids.
    let kim_id = canceled_row["principal_id"].as_str().unwrap_or_default().to_owned();
    assert!(uuid::Uuid::parse_str(&kim_id).is_ok(), "{canceled_row}");
    assert!(uuid::Uuid::parse_str(canceled_row["role_id"].as_str().unwrap_or_default()).is_ok());
    let table = kim.ok(&["requests"], None);
    assert!(table.contains(" kim ") && !table.contains(&kim_id), "{table}");
    let with_ids = kim.ok(&["requests", "--ids"], None);
    assert!(with_ids.contains(&format!("kim ({kim_id})")), "{with_ids}");
    let again = kim.run(&["cancel", request_id], None);
    assert!(!again.status.success(), "nothing left to cancel");

    let second = "kim's second passphrase, also long";
    admin.ok(
        &["users", "reset-password", "kim", "--password-stdin"],
        Some(&format!("{second}\n")),
    );
    kim.ok(
        &["login", "--user", "kim", "--password-stdin"],
        Some(&format!("{second}\n")),
    );
    // Kim changes her own password: a wrong current one is refused, the right one works.
    let third = "kim's third passphrase, longer still";
    let wrong = kim.run(
        &["password", "--password-stdin"],
        Some(&format!("not my password at all\n{third}\n")),
    );
    let said = String::from_utf8_lossy(&wrong.stderr).into_owned();
    assert_eq!(wrong.status.code(), Some(1), "{said}");
    assert!(
        said.contains("current password is incorrect") && !said.contains("roles"),
        "{said}"
    );
    kim.ok(&["password", "--password-stdin"], Some(&format!("{second}\n{third}\n")));
    kim.ok(
        &["login", "--user", "kim", "--password-stdin"],
        Some(&format!("{third}\n")),
    );
    let second = third;

    // Disabled, a user cannot sign in; enabled again, they may.
    assert!(admin.ok(&["users", "disable", "kim"], None).contains("disabled"));
    let refused = kim.run(
        &["login", "--user", "kim", "--password-stdin"],
        Some(&format!("{second}\n")),
    );
    assert!(!refused.status.success(), "a disabled user cannot sign in");
    assert!(admin.ok(&["users", "get", "kim"], None).contains("disabled"));
    // Enabled again, what Kim held comes back with the account: said, to check.
    let enabled = admin.run(&["users", "enable", "kim"], None);
    let said = String::from_utf8_lossy(&enabled.stderr).into_owned();
    assert!(enabled.status.success(), "{said}");
    assert!(
        said.contains("kim holds again") && said.contains("Exchange Administrator"),
        "{said}"
    );
    assert!(admin.ok(&["users", "get", "kim"], None).contains("enabled"));
    let again = admin.run(&["users", "enable", "kim"], None);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("User kim is already enabled"));
    assert!(!String::from_utf8_lossy(&again.stderr).contains("holds again"));

    admin.ok(
        &[
            "unassign",
            "--principal",
            "kim",
            "--role",
            "Exchange Administrator",
            "--kind",
            "active",
        ],
        None,
    );
    // Service principals are listed by name, as JSON lines too.
    // What is made says itself as JSON to a script, its secret shown once included.
    let made = admin.ok(
        &[
            "service-principals",
            "create",
            "--name",
            "ticket bot",
            "--output",
            "json",
        ],
        None,
    );
    let made_bot: serde_json::Value = serde_json::from_str(made.trim()).expect("one JSON object");
    assert!(
        made_bot["client_secret"].as_str().is_some_and(|s| s.len() >= 32) && made_bot["client_id"].is_string(),
        "{made_bot}"
    );
    let made = admin.ok(&["users", "create", "--user-name", "ann", "--output", "json"], None);
    let made: serde_json::Value = serde_json::from_str(made.trim()).expect("one JSON object");
    assert!(
        made["initial_password"].as_str().is_some_and(|p| p.len() >= 16),
        "{made}"
    );
    admin.ok(&["service-principals", "create", "--name", "deploy bot"], None);
    let bots = admin.ok(&["sp", "list", "--filter", "ticket", "--output", "json"], None);
    assert_eq!(bots.lines().count(), 1, "only the ticket bot: {bots}");
    let bot: serde_json::Value = serde_json::from_str(bots.lines().next().unwrap_or_default()).expect("a JSON line");
    assert_eq!(
        (bot["name"].as_str(), bot["state"].as_str()),
        (Some("ticket bot"), Some("enabled"))
    );
    // Named by its name, as every command takes a principal.
    let rotated = admin.ok(&["sp", "rotate", "ticket bot"], None);
    assert!(rotated.contains("New client secret for ticket bot:"), "{rotated}");
    // As JSON, the new secret with what it signs in as, as `create` gives them.
    let rotated = admin.ok(&["sp", "rotate", "ticket bot", "--output", "json"], None);
    let rotated: serde_json::Value = serde_json::from_str(rotated.trim()).expect("one JSON object");
    assert_eq!(rotated["client_id"], made_bot["client_id"], "{rotated}");
    assert_eq!(rotated["name"], "ticket bot", "{rotated}");
    // Signed in with its secret, the app is said to be one (an app may be named as a person).
    let app = Client {
        server: kim.server.clone(),
        token_file: dir.join("app-token"),
    };
    let (id, secret) = (rotated["client_id"].as_str(), rotated["client_secret"].as_str());
    let signed_in = app.ok(
        &["login", "--client-id", id.unwrap_or_default(), "--password-stdin"],
        Some(&format!("{}\n", secret.unwrap_or_default())),
    );
    assert!(signed_in.contains("Signed in as ticket bot (app) ("), "{signed_in}");
    let disabled = admin.ok(&["sp", "disable", "ticket bot"], None);
    assert!(
        disabled.starts_with("Service principal ticket bot disabled"),
        "{disabled}"
    );
    let bots = admin.ok(&["sp", "list", "--filter", "ticket", "--output", "json"], None);
    assert!(bots.contains(r#""state":"disabled""#), "{bots}");
    admin.ok(&["users", "delete", "kim"], None);
    // Exit statuses say what went wrong: 2 usage (and a token no longer good), 3 unreachable.
    let code = |out: Output| out.status.code();
    assert_eq!(code(admin.run(&["users", "create"], None)), Some(2), "a missing flag");
    assert_eq!(
        code(kim.run(&["users", "list"], None)),
        Some(2),
        "kim's token ended with kim"
    );
    assert_eq!(
        code(admin.run(
            &["users", "create", "--user-name", "eve", "--password-stdin"],
            Some("short\n")
        )),
        Some(2),
        "a password the rules refuse is bad input"
    );
    assert_eq!(
        code(admin.run(&["users", "list", "--server", "http://127.0.0.1:9"], None)),
        Some(3),
        "nothing listens there"
    );
    let unreached = admin.run(&["health", "--server", "http://127.0.0.1:9"], None);
    assert_eq!(unreached.status.code(), Some(3), "health: nothing listens there");
    let said = String::from_utf8_lossy(&unreached.stderr);
    assert!(
        said.contains("PIM could not be reached") && said.contains("Connection refused"),
        "health says why under its table: {said}"
    );
    assert!(!admin.run(&["users", "get", "kim"], None).status.success(), "deleted");
    up.terminate();
    std::fs::remove_dir_all(&dir).ok();
}

/// Standing access a target system's connector reports, which PIM did not grant, is listed by
/// `pim unmanaged` with its principal and role by name (ids with `--output json`).
#[test]
fn unmanaged_grants_are_listed_by_name() {
    use pim_proto::assignment::v1 as apb;
    use pim_proto::assignment::v1::reconcile_service_client::ReconcileServiceClient;
    let (dir, up, server, admin) = up_with_admin();
    admin.ok(
        &["users", "create", "--user-name", "mallory", "--password-stdin"],
        Some("mallory's long passphrase\n"),
    );
    let mallory = admin.ok(&["users", "get", "mallory", "--output", "json"], None);
    let mallory: serde_json::Value = serde_json::from_str(mallory.trim()).expect("a JSON line");
    let mallory_id = mallory["id"].as_str().expect("an id").to_owned();
    let token = std::fs::read_to_string(&admin.token_file).expect("the admin's token");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime
        .block_on(async {
            let channel = tonic::transport::Channel::from_shared(server.clone())?
                .connect()
                .await?;
            let mut report = tonic::Request::new(apb::ReportObservedGrantsRequest {
                system: "exchange-online".into(),
                grants: vec![apb::ObservedGrant {
                    principal_id: mallory_id.clone(),
                    role_id: pim_proto::catalogue::GLOBAL_ADMINISTRATOR.into(),
                    scope: "/".into(),
                    system: String::new(),
                }],
            });
            report
                .metadata_mut()
                .insert("authorization", format!("Bearer {}", token.trim()).parse()?);
            ReconcileServiceClient::new(channel)
                .report_observed_grants(report)
                .await?;
            anyhow::Ok(())
        })
        .expect("the connector's report");
    let listed = admin.ok(&["unmanaged"], None);
    let row = listed
        .lines()
        .find(|l| l.starts_with("exchange-online"))
        .unwrap_or_else(|| panic!("the grant listed: {listed}"));
    assert!(row.contains("mallory") && row.contains("Global Administrator"), "{row}");
    assert!(!row.contains(&mallory_id), "names, not ids: {row}");
    let json = admin.ok(&["unmanaged", "--output", "json"], None);
    let grant: serde_json::Value = serde_json::from_str(json.trim()).expect("a JSON line");
    assert_eq!(grant["principal"], "mallory");
    assert_eq!(grant["principal_id"], mallory_id.as_str());
    assert_eq!(grant["role_id"], pim_proto::catalogue::GLOBAL_ADMINISTRATOR);
    up.terminate();
    std::fs::remove_dir_all(&dir).ok();
}
