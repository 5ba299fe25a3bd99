//! The README's walk-through, run as a person would: the real `pim` binary, `pim up` on a
//! fresh data directory with no PostgreSQL or Redis, then the client commands; then SIGTERM
//! ends it gracefully, and a restart keeps everything (and prints no new credentials).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const PIM: &str = env!("CARGO_BIN_EXE_pim");

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Up {
    fn start(data: &Path) -> Self {
        let mut child = Command::new(PIM)
            .arg("up")
            .env("PIM_DATA_DIR", data)
            .env("PIM_LISTEN_ADDR", "127.0.0.1:0")
            .env_remove("PIM_REDIS_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("pim up starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Reads output lines until `done` says it has what it needs.
    fn read_until(&self, mut done: impl FnMut(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                let finished = done(&line);
                seen.push(line);
                if finished {
                    return seen;
                }
            }
        }
        panic!("pim up did not print what was expected; it printed {seen:?}");
    }

    /// SIGTERM, then wait for a clean exit.
    fn terminate(mut self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(status.success(), "pim up exits cleanly on SIGTERM: {status}");
                return;
            }
            assert!(Instant::now() < deadline, "pim up did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn field(lines: &[String], label: &str) -> String {
    lines
        .iter()
        .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| panic!("no {label:?} in {lines:?}"))
}

/// A fresh `pim up` in a directory of its own, its address, and its administrator signed in.
fn up_with_admin() -> (PathBuf, Up, String, Client) {
    let dir = std::env::temp_dir().join(format!("pim-cli-{}", uuid::Uuid::now_v7().simple()));
    let up = Up::start(&dir.join("data"));
    let printed = up.read_until(|l| l.contains("password:"));
    let server = field(&printed, "PIM is up at");
    let password = field(&printed, "password:");
    let admin = Client {
        server: server.clone(),
        token_file: dir.join("admin-token"),
    };
    admin.ok(
        &["login", "--user", "admin", "--password-stdin"],
        Some(&format!("{password}\n")),
    );
    (dir, up, server, admin)
}

struct Client {
    server: String,
    token_file: PathBuf,
}

impl Client {
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(PIM)
            .args(args)
            .env("PIM_SERVER", &self.server)
            .env("PIM_TOKEN_FILE", &self.token_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pim runs");
        let mut input = child.stdin.take().expect("piped stdin");
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).expect("write stdin");
        }
        drop(input);
        child.wait_with_output().expect("pim finishes")
    }

    /// `pim mfa enroll`, answering its prompt with a code from the URI it shows.
    fn enroll_mfa(&self) -> totp_rs::TOTP {
        let mut child = Command::new(PIM)
            .args(["mfa", "enroll"])
            .env("PIM_SERVER", &self.server)
            .env("PIM_TOKEN_FILE", &self.token_file)
            .env_remove("PIM_MFA_CODE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pim runs");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut uri = String::new();
        while !uri.trim_start().starts_with("otpauth://") {
            uri.clear();
            assert!(
                stdout.read_line(&mut uri).expect("read") > 0,
                "pim mfa enroll showed no URI"
            );
        }
        let authenticator = totp_rs::TOTP::from_url(uri.trim()).expect("a valid otpauth URI");
        let mut stdin = child.stdin.take().expect("piped");
        writeln!(stdin, "{}", authenticator.generate(now_secs())).expect("write");
        drop(stdin);
        let out = child.wait_with_output().expect("pim finishes");
        assert!(
            out.status.success(),
            "enrol failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        authenticator
    }

    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "pim {args:?} failed: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

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
            "--ticket-system",
            "ServiceNow",
            "--ticket-number",
            "INC0012345",
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

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let audit = admin.ok(&["audit", "--target", "lee", "--output", "json"], None);
        if audit.contains("ActiveAssignmentGranted") && audit.contains("UserCreated") {
            assert!(audit.contains("\"justification\":\"mailbox migration\""));
            assert!(audit.contains("\"role_name\":\"Exchange Administrator\""));
            break;
        }
        assert!(Instant::now() < deadline, "audit never showed the slice: {audit}");
        std::thread::sleep(Duration::from_millis(50));
    }
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
    let authenticator = lee.enroll_mfa();
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
        requests.contains("self_activate") && requests.contains("self_deactivate"),
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
    let deadline = Instant::now() + Duration::from_secs(10);
    let approval = loop {
        let listed = admin.ok(&["approvals", "--status", "pending"], None);
        if let Some(line) = listed.lines().find(|l| l.contains("weekend on call")) {
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
    }
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
    assert!(stderr.contains("need a recent multi-factor authentication"), "{stderr}");
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

    // Kim asks to keep an administrator's assignment longer, then thinks better of it.
    admin.ok(
        &[
            "assign",
            "--principal",
            "kim",
            "--role",
            "Exchange Administrator",
            "--kind",
            "active",
            "--duration",
            "1h",
            "--justification",
            "on call",
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
    assert_eq!(canceled_row["principal"], "kim");
    assert_eq!(canceled_row["role"], "Exchange Administrator");
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

    // Disabled, a user cannot sign in; enabled again, they may.
    assert!(admin.ok(&["users", "disable", "kim"], None).contains("disabled"));
    let refused = kim.run(
        &["login", "--user", "kim", "--password-stdin"],
        Some(&format!("{second}\n")),
    );
    assert!(!refused.status.success(), "a disabled user cannot sign in");
    assert!(admin.ok(&["users", "get", "kim"], None).contains("disabled"));
    admin.ok(&["users", "enable", "kim"], None);
    assert!(admin.ok(&["users", "get", "kim"], None).contains("enabled"));

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
    admin.ok(&["service-principals", "create", "--name", "ticket bot"], None);
    admin.ok(&["service-principals", "create", "--name", "deploy bot"], None);
    let bots = admin.ok(&["sp", "list", "--filter", "ticket", "--output", "json"], None);
    assert_eq!(bots.lines().count(), 1, "only the ticket bot: {bots}");
    let bot: serde_json::Value = serde_json::from_str(bots.lines().next().unwrap_or_default()).expect("a JSON line");
    assert_eq!(
        (bot["name"].as_str(), bot["state"].as_str()),
        (Some("ticket bot"), Some("enabled"))
    );
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
    assert!(!admin.run(&["users", "get", "kim"], None).status.success(), "deleted");
    up.terminate();
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn custom_roles_are_created_checked_by_permission_and_deleted() {
    let (dir, up, _server, admin) = up_with_admin();
    let created = admin.ok(
        &[
            "roles",
            "create",
            "--name",
            "Payments Refunder",
            "--permission",
            "app.payments/refunds/approve",
            "--permission",
            "app.payments/reports/*",
        ],
        None,
    );
    assert!(
        created
            .lines()
            .any(|l| l.starts_with("privileged") && l.ends_with("false")),
        "{created}"
    );
    let listed = admin.ok(&["roles", "--definitions", "--output", "json"], None);
    // Kim, not the administrator (a Global Administrator holds every permission everywhere).
    admin.ok(
        &["users", "create", "--user-name", "kim", "--password-stdin"],
        Some("kim's passphrase, long enough\n"),
    );
    assert!(listed.contains("Payments Refunder"), "{listed}");
    admin.ok(
        &[
            "assign",
            "--principal",
            "kim",
            "--role",
            "Payments Refunder",
            "--kind",
            "active",
            "--scope",
            "/apps/payments",
            "--duration",
            "1h",
            "--justification",
            "month-end refunds",
        ],
        None,
    );
    let allowed = admin.run(
        &[
            "check",
            "kim",
            "--permission",
            "app.payments/reports/monthly",
            "--scope",
            "/apps/payments/eu",
        ],
        None,
    );
    assert_eq!(
        allowed.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&allowed.stdout)
    );
    assert!(
        String::from_utf8_lossy(&allowed.stdout).contains("through Payments Refunder at /apps/payments until"),
        "{}",
        String::from_utf8_lossy(&allowed.stdout)
    );
    let elsewhere = admin.run(
        &[
            "check",
            "kim",
            "--permission",
            "app.payments/refunds/approve",
            "--scope",
            "/apps/shop",
        ],
        None,
    );
    assert_eq!(elsewhere.status.code(), Some(1), "not allowed: exit status 1");
    let in_use = admin.run(&["roles", "delete", "Payments Refunder"], None);
    assert_eq!(in_use.status.code(), Some(1), "refused while assigned");
    assert!(String::from_utf8_lossy(&in_use.stderr).contains("1 eligible or active assignment(s)"));
    admin.ok(
        &[
            "unassign",
            "--principal",
            "kim",
            "--role",
            "Payments Refunder",
            "--kind",
            "active",
            "--scope",
            "/apps/payments",
        ],
        None,
    );
    admin.ok(&["roles", "delete", "Payments Refunder"], None);
    assert!(
        !admin
            .ok(&["roles", "--definitions"], None)
            .contains("Payments Refunder")
    );
    up.terminate();
    std::fs::remove_dir_all(&dir).ok();
}

/// Policy as code: the example file applies, a second apply changes nothing, an assignment
/// made by hand to a role the file prunes is planned away and removed, an export plans no
/// change, and a file with mistakes lists each with its line and changes nothing.
#[test]
fn a_configuration_file_applies_once_prunes_round_trips_and_a_bad_one_changes_nothing() {
    let (dir, up, _server, admin) = up_with_admin();
    for user in ["lee", "sam", "alice", "bob"] {
        admin.ok(
            &["users", "create", "--user-name", user, "--password-stdin"],
            Some(&format!("{user}'s passphrase, long enough\n")),
        );
    }
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/pim.example.yaml");

    let planned = admin.ok(&["plan", "-f", example], None);
    assert!(planned.contains("+ role \"Payments Refunder\""), "{planned}");
    assert!(
        planned.contains("~ policy of \"Exchange Administrator\" at /: activation_requires_ticket: off -> on"),
        "{planned}"
    );
    assert!(
        planned.contains("Plan: 6 to add, 2 to change, 0 to remove."),
        "{planned}"
    );
    // A plan changes nothing.
    let roles = admin.ok(&["roles", "--definitions"], None);
    assert!(!roles.contains("Payments Refunder"), "{roles}");

    let applied = admin.ok(&["apply", "-f", example], None);
    assert!(applied.contains("Applied 8 change(s)."), "{applied}");
    let again = admin.ok(&["apply", "-f", example], None);
    assert!(again.contains("No changes"), "{again}");
    let policy = admin.ok(
        &["policy", "show", "Payments Refunder", "--scope", "/apps/payments"],
        None,
    );
    assert!(policy.contains("alice"), "{policy}");
    let members = admin.ok(&["groups", "members", "payments-oncall"], None);
    assert!(members.contains("sam"), "{members}");

    // Bob's eligibility, made by hand, is not in the file, which owns the role.
    admin.ok(
        &[
            "assign",
            "--principal",
            "bob",
            "--role",
            "Payments Refunder",
            "--kind",
            "eligible",
            "--scope",
            "/apps/payments",
            "--permanent",
        ],
        None,
    );
    let drift = admin.ok(&["plan", "-f", example], None);
    assert!(
        drift.contains("- eligible bob: Payments Refunder at /apps/payments (not in the file, which prunes the role)"),
        "{drift}"
    );
    admin.ok(&["apply", "-f", example], None);
    let held = admin.ok(
        &["assignments", "--role", "Payments Refunder", "--kind", "eligible"],
        None,
    );
    assert!(!held.contains("bob") && held.contains("lee"), "{held}");

    // A policy at a scope and one below it that inherits from it: the one above applies
    // first, the one below keeps what the file gives it; a folded description (ending in a
    // newline) and a permission written twice in two cases read as the server keeps them.
    let nested = dir.join("nested.yaml");
    std::fs::write(
        &nested,
        "roles:\n  - name: Payments Auditor\n    description: >\n      Reads refunds\n    permissions: [app.payments/refunds/read, App.Payments/Refunds/Read]\npolicies:\n  - role: Security Reader\n    activation_max_duration: 3h\n  - role: Security Reader\n    scope: /apps\n    activation_max_duration: 4h\n    activation_requires_ticket: false\n",
    )
    .unwrap();
    let nested = nested.to_str().unwrap();
    let applied = admin.ok(&["apply", "-f", nested], None);
    assert!(applied.contains("Applied"), "{applied}");
    let again = admin.ok(&["plan", "-f", nested], None);
    assert!(again.contains("No changes"), "{again}");
    let below = admin.ok(&["policy", "show", "Security Reader", "--scope", "/apps/x"], None);
    assert!(
        below
            .lines()
            .any(|l| l.starts_with("activation max duration") && l.ends_with("4h")),
        "{below}"
    );

    // An export is a file whose plan is empty.
    let exported = dir.join("exported.yaml");
    admin.ok(&["export", "-f", exported.to_str().unwrap()], None);
    let text = std::fs::read_to_string(&exported).unwrap();
    assert!(
        text.contains("Payments Refunder") && text.contains("payments-oncall"),
        "{text}"
    );
    let round = admin.ok(&["plan", "-f", exported.to_str().unwrap()], None);
    assert!(round.contains("No changes"), "{round}");

    // Every mistake, each at its line; nothing applied, not even the valid new role.
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "roles:\n  - name: Auditor Extra\n    permissions: [app.audit/read]\n  - name: Broken\n    permissions: [\"app payments/refunds\"]\npolicies:\n  - role: Payments Refunder\n    activation_max_duration: soon\nassignments:\n  - role: Payments Refunder\n    eligible:\n      - principal: nobody\n      - principal: lee\n        scope: /apps/payments\n        until: 2020-01-01T00:00:00Z\n  - role: No Such Role\n  - role: Exchange Administrator\n    eligible:\n      - principal: lee\n        until: 2099-01-01T00:00:00Z\n  - role: Global Administrator\n    prune: true\ngroups:\n  - name: payments-oncall\n    role_assignable: true\n    owners: [payments-oncall]\n    members: [payments-oncall, sam]\n",
    )
    .unwrap();
    let refused = admin.run(&["apply", "-f", bad.to_str().unwrap()], None);
    assert_ne!(refused.status.code(), Some(0));
    let err = String::from_utf8_lossy(&refused.stderr);
    let bad_path = bad.display().to_string();
    for (line, what) in [
        (4, "app payments/refunds"),
        (7, "activation_max_duration"),
        (12, "nobody"),
        (13, "has passed"),
        (16, "No Such Role"),
        // Found by the server (validate_only): longer than the policy allows.
        (19, "at most 365d"),
        // The last permanent Global Administrator is not pruned away.
        (21, "last permanent active Global Administrator"),
        // What identity would refuse midway, refused before anything changes.
        (26, "a group's owners are users"),
        (27, "cannot have groups as members"),
    ] {
        assert!(
            err.lines()
                .any(|l| l.contains(&format!("{bad_path}:{line}:")) && l.contains(what)),
            "no error at line {line} about {what}:\n{err}"
        );
    }
    assert!(err.contains("9 error(s); nothing was changed"), "{err}");
    let roles = admin.ok(&["roles", "--definitions"], None);
    assert!(!roles.contains("Auditor Extra"), "{roles}");

    up.terminate();
    std::fs::remove_dir_all(&dir).ok();
}

struct Processes(Vec<std::process::Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The production shape without Docker: five `pim serve` processes, each on its own
/// PostgreSQL database, sharing Redis, behind `pim serve gateway`. The CLI is given only the
/// gateway's address: health (every service SERVING), reflection listing every service,
/// sign-in, MFA enrolment, assign, activate with a step-up, approve, check, and policy as
/// code (apply twice, export, plan).
#[test]
fn the_distributed_shape_is_driven_through_the_gateway() {
    use pim_runtime::testing::{TestDatabase, event_signing_keys, redis_url, unique};

    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let services = ["identity", "assignment", "approval", "alerting", "audit"];
    let databases: Vec<TestDatabase> = services
        .iter()
        .map(|s| runtime.block_on(TestDatabase::create(s)).expect("a database"))
        .collect();
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
    };
    let ports: Vec<u16> = services.iter().map(|_| free_port()).collect();
    let url = |i: usize| format!("http://127.0.0.1:{}", ports[i]);
    let settings: Vec<(&str, String)> = vec![
        ("PIM_REDIS_URL", redis_url()),
        ("PIM_STREAM_PREFIX", format!("{}:", unique("gateway"))),
        ("PIM_SECRETS_KEY", "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=".into()),
        ("PIM_EVENT_SIGNING_KEYS", event_signing_keys()),
        ("PIM_IDENTITY_URL", url(0)),
        ("PIM_ASSIGNMENT_URL", url(1)),
        ("PIM_APPROVAL_URL", url(2)),
        ("PIM_ALERTING_URL", url(3)),
        ("PIM_AUDIT_URL", url(4)),
        // Calls come through the gateway on this host: its x-forwarded-for is believed.
        ("PIM_TRUSTED_PROXIES", "127.0.0.1".into()),
    ];
    let pim = |args: &[&str]| {
        let mut command = Command::new(PIM);
        command
            .args(args)
            .envs(settings.iter().map(|(k, v)| (*k, v.as_str())))
            .env_remove("PIM_SERVER")
            .stdin(Stdio::null());
        command
    };
    // Before the first start, as the README says: the break-glass administrator.
    let bootstrapped = pim(&["bootstrap"])
        .env("PIM_IDENTITY_DATABASE_URL", &databases[0].url)
        .env("PIM_ASSIGNMENT_DATABASE_URL", &databases[1].url)
        .output()
        .expect("pim bootstrap runs");
    let printed: Vec<String> = String::from_utf8_lossy(&bootstrapped.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let mut processes = Processes(Vec::new());
    for (i, service) in services.iter().enumerate() {
        let child = pim(&["serve", service])
            .env("PIM_LISTEN_ADDR", format!("127.0.0.1:{}", ports[i]))
            .env("PIM_DATABASE_URL", &databases[i].url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pim serve runs");
        processes.0.push(child);
    }
    let gateway_port = free_port();
    let gateway = format!("http://127.0.0.1:{gateway_port}");
    processes.0.push(
        pim(&["serve", "gateway"])
            .env("PIM_LISTEN_ADDR", format!("127.0.0.1:{gateway_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pim serve gateway runs"),
    );

    let dir = std::env::temp_dir().join(format!("pim-gateway-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let admin = Client {
        server: gateway.clone(),
        token_file: dir.join("admin-token"),
    };
    // Every service answers through the gateway once it has started.
    let deadline = Instant::now() + Duration::from_secs(60);
    while admin.run(&["health"], None).status.code() != Some(0) {
        assert!(
            Instant::now() < deadline,
            "the services never all answered through the gateway"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let health = admin.ok(&["health"], None);
    for service in services {
        assert!(
            health
                .lines()
                .any(|l| l.starts_with(&format!("pim.{service}.v1.")) && l.ends_with("Serving")),
            "{health}"
        );
    }
    let itself = admin.ok(&["health", "--service", "gateway"], None);
    assert!(itself.contains("Serving"), "{itself}");
    let listed = runtime.block_on(async {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let channel = tonic::transport::Channel::from_shared(gateway.clone())?
            .connect()
            .await?;
        let ask = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = ServerReflectionClient::new(channel)
            .server_reflection_info(tokio_stream::iter([ask]))
            .await?
            .into_inner();
        let mut names = Vec::new();
        if let Some(answer) = answers.message().await?
            && let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response
        {
            names = list.service.into_iter().map(|s| s.name).collect();
        }
        anyhow::Ok(names)
    });
    let listed = listed.expect("reflection answers through the gateway");
    for name in [
        "pim.identity.v1.AuthService",
        "pim.approval.v1.ApprovalService",
        "pim.audit.v1.AuditService",
    ] {
        assert!(listed.iter().any(|s| s == name), "{listed:?}");
    }

    let password = field(&printed, "password:");
    admin.ok(
        &["login", "--user", "admin", "--password-stdin"],
        Some(&format!("{password}\n")),
    );
    admin.ok(
        &["users", "create", "--user-name", "lee", "--password-stdin"],
        Some("lee's passphrase, long enough\n"),
    );
    let lee = Client {
        server: gateway.clone(),
        token_file: dir.join("lee-token"),
    };
    lee.ok(
        &["login", "--user", "lee", "--password-stdin"],
        Some("lee's passphrase, long enough\n"),
    );
    let authenticator = lee.enroll_mfa();
    admin.ok(
        &["policy", "set", "Security Reader", "--require-approval", "true"],
        None,
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
    let code = authenticator.generate(now_secs() + 30);
    let waiting = lee.ok(
        &[
            "activate",
            "Security Reader",
            "--duration",
            "1h",
            "--justification",
            "night shift",
            "--code",
            &code,
            "--no-wait",
        ],
        None,
    );
    assert!(waiting.contains("pending_approval"), "{waiting}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let approval = loop {
        let listed = admin.ok(&["approvals", "--status", "pending"], None);
        if let Some(line) = listed.lines().find(|l| l.contains("night shift")) {
            break line.split_whitespace().next().expect("an id").to_owned();
        }
        assert!(Instant::now() < deadline, "no approval appeared: {listed}");
        std::thread::sleep(Duration::from_millis(100));
    };
    admin.ok(&["approve", &approval, "-j", "rota"], None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while admin.run(&["check", "lee", "Security Reader"], None).status.code() != Some(0) {
        assert!(Instant::now() < deadline, "the approved role never became active");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Policy as code on PostgreSQL + Redis: the example applies once, and its export plans
    // no change.
    for user in ["sam", "alice"] {
        admin.ok(
            &["users", "create", "--user-name", user, "--password-stdin"],
            Some(&format!("{user}'s passphrase, long enough\n")),
        );
    }
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/pim.example.yaml");
    let applied = admin.ok(&["apply", "-f", example], None);
    assert!(applied.contains("Applied 8 change(s)."), "{applied}");
    let again = admin.ok(&["apply", "-f", example], None);
    assert!(again.contains("No changes"), "{again}");
    let exported = dir.join("exported.yaml");
    admin.ok(&["export", "-f", exported.to_str().expect("a path")], None);
    let round = admin.ok(&["plan", "-f", exported.to_str().expect("a path")], None);
    assert!(round.contains("No changes"), "{round}");

    // Sign-ins are counted and audited by the address the gateway took them from, not by the
    // gateway's own, nor by what a client claims: each call comes from its own loopback
    // address and claims an x-forwarded-for of its choosing.
    let sign_in_from = |local: &str, claimed: &str, user: &str| {
        runtime
            .block_on(async {
                use pim_proto::identity::v1::auth_service_client::AuthServiceClient;
                let channel = tonic::transport::Channel::from_shared(gateway.clone())?
                    .local_address(Some(local.parse()?))
                    .connect()
                    .await?;
                let mut request = tonic::Request::new(pim_proto::identity::v1::SignInRequest {
                    user_name: user.to_owned(),
                    password: "not the password".into(),
                });
                request.metadata_mut().insert("x-forwarded-for", claimed.parse()?);
                let refused = AuthServiceClient::new(channel).sign_in(request).await;
                assert!(refused.is_err(), "a wrong password signs in");
                anyhow::Ok(())
            })
            .expect("the gateway answers")
    };
    sign_in_from("127.0.0.2", "203.0.113.7", "ghost-1");
    sign_in_from("127.0.0.3", "203.0.113.7", "ghost-2");
    sign_in_from("127.0.0.2", "198.51.100.9", "ghost-3");
    let deadline = Instant::now() + Duration::from_secs(20);
    let tags = loop {
        let audit = admin.ok(&["audit", "--limit", "500", "--output", "json"], None);
        let mut tags = std::collections::BTreeMap::new();
        for line in audit.lines() {
            let record: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            let user = record["payload"]["user_name"].as_str().unwrap_or_default();
            if user.starts_with("ghost-") {
                tags.insert(
                    user.to_owned(),
                    record["payload"]["source_hmac"].as_str().unwrap_or_default().to_owned(),
                );
            }
        }
        if tags.len() == 3 {
            break tags;
        }
        assert!(
            Instant::now() < deadline,
            "the failed sign-ins were not audited: {audit}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!tags["ghost-1"].is_empty(), "{tags:?}");
    assert_eq!(
        tags["ghost-1"], tags["ghost-3"],
        "one client, whatever it claims: {tags:?}"
    );
    assert_ne!(
        tags["ghost-1"], tags["ghost-2"],
        "two clients behind one gateway: {tags:?}"
    );

    drop(processes);
    for database in databases {
        runtime.block_on(database.drop_database()).ok();
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Wherever a command takes a principal, a user name, a group's or a service principal's
/// name serves, with a kind prefix when a name alone is ambiguous.
#[test]
fn principals_are_named_by_user_group_or_service_principal_name() {
    let (dir, up, _server, admin) = up_with_admin();
    admin.ok(&["groups", "create", "--name", "ops", "--role-assignable"], None);
    admin.ok(&["service-principals", "create", "--name", "ops"], None);
    admin.ok(&["service-principals", "create", "--name", "checker"], None);
    let assign = |principal: &str| {
        admin.run(
            &[
                "assign",
                "--principal",
                principal,
                "--role",
                "Security Reader",
                "--kind",
                "active",
                "--duration",
                "1h",
                "--justification",
                "on call",
            ],
            None,
        )
    };
    let by_name = assign("checker");
    assert!(by_name.status.success(), "{}", String::from_utf8_lossy(&by_name.stderr));
    let ambiguous = assign("ops");
    assert!(!ambiguous.status.success());
    let said = String::from_utf8_lossy(&ambiguous.stderr);
    assert!(
        said.contains("names several principals") && said.contains("group:ops"),
        "{said}"
    );
    let prefixed = assign("group:ops");
    assert!(
        prefixed.status.success(),
        "{}",
        String::from_utf8_lossy(&prefixed.stderr)
    );
    let unknown = assign("nobody");
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no user, group or service principal is named \"nobody\""),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
    let held = admin.ok(&["assignments", "--role", "Security Reader"], None);
    assert!(held.contains("checker") && held.contains("ops"), "{held}");

    // A bot alone as approver: said at once, since what it declines nobody could decide.
    let bot_only = admin.run(
        &[
            "policy",
            "set",
            "Security Reader",
            "--require-approval",
            "true",
            "--approvers",
            "checker",
        ],
        None,
    );
    assert!(bot_only.status.success());
    let warned = String::from_utf8_lossy(&bot_only.stderr);
    assert!(warned.contains("stage 1 has no person among its approvers"), "{warned}");
    let with_a_person = admin.run(
        &["policy", "set", "Security Reader", "--approvers", "checker,admin"],
        None,
    );
    assert!(with_a_person.status.success());
    assert!(!String::from_utf8_lossy(&with_a_person.stderr).contains("warning"));
    up.terminate();
    std::fs::remove_dir_all(&dir).ok();
}

/// PIM for Groups: Lee is made eligible for membership of a role-assignable group that holds
/// Exchange Administrator and Global Reader; activating the membership asks for MFA, then
/// both roles are Lee's through it until Lee ends it. A User Administrator may not make anyone
/// eligible for that group, nor may anyone make themselves eligible. Ola's activated
/// ownership of another group lets Ola add a member, and after it ends the same call is
/// refused.
#[test]
fn group_membership_and_ownership_are_activated_just_in_time() {
    let (dir, up, server, admin) = up_with_admin();
    let person = |name: &str| {
        admin.ok(
            &["users", "create", "--user-name", name, "--password-stdin"],
            Some(&format!("{name}'s passphrase, long enough\n")),
        );
        let client = Client {
            server: server.clone(),
            token_file: dir.join(format!("{name}-token")),
        };
        client.ok(
            &["login", "--user", name, "--password-stdin"],
            Some(&format!("{name}'s passphrase, long enough\n")),
        );
        client
    };
    let (lee, ola, uma) = (person("lee"), person("ola"), person("uma"));
    person("kim");
    admin.ok(
        &["groups", "create", "--name", "Exchange Admins", "--role-assignable"],
        None,
    );
    for role in ["Exchange Administrator", "Global Reader"] {
        admin.ok(
            &[
                "assign",
                "--principal",
                "group:Exchange Admins",
                "--role",
                role,
                "--kind",
                "active",
                "--duration",
                "30d",
                "-j",
                "the mail team's roles",
            ],
            None,
        );
    }
    admin.ok(
        &[
            "assign",
            "--principal",
            "uma",
            "--role",
            "User Administrator",
            "--kind",
            "active",
            "--duration",
            "1d",
            "-j",
            "helpdesk",
        ],
        None,
    );
    let eligible_lee = [
        "groups",
        "assign",
        "--principal",
        "lee",
        "--group",
        "Exchange Admins",
        "--access",
        "member",
        "--kind",
        "eligible",
        "--duration",
        "30d",
        "-j",
        "mail migration",
    ];
    // A User Administrator manages groups, but not who may join a role-assignable one.
    let refused = uma.run(&eligible_lee, None);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("only the group's owners"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    admin.ok(&eligible_lee, None);
    // Lee may become a member of a group that holds roles: a User Administrator no longer
    // resets Lee's password.
    let reset = uma.run(&["users", "reset-password", "kim"], None);
    assert_eq!(
        reset.status.code(),
        Some(0),
        "Kim is nobody's: {}",
        String::from_utf8_lossy(&reset.stderr)
    );
    let reset = uma.run(&["users", "reset-password", "lee"], None);
    assert_eq!(reset.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&reset.stderr).contains("membership of the role-assignable group"),
        "{}",
        String::from_utf8_lossy(&reset.stderr)
    );
    assert!(
        admin
            .run(&["check", "lee", "Exchange Administrator"], None)
            .status
            .code()
            == Some(1)
    );
    let mine = lee.ok(&["groups", "mine"], None);
    assert!(
        mine.lines()
            .any(|l| l.starts_with("Exchange Admins") && l.contains("member") && l.contains("eligible")),
        "{mine}"
    );

    // The group's policy is the defaults until set: MFA on activation, at most 8h.
    let policy = admin.ok(&["policy", "show", "--group", "Exchange Admins"], None);
    assert!(
        policy
            .lines()
            .any(|l| l.starts_with("activation requires MFA") && l.ends_with("true")),
        "{policy}"
    );
    admin.ok(
        &["policy", "set", "--group", "Exchange Admins", "--activation-max", "2h"],
        None,
    );
    let too_long = lee.run(
        &[
            "groups",
            "activate",
            "Exchange Admins",
            "--duration",
            "3h",
            "-j",
            "mailbox moves",
            "--code",
            "000000",
        ],
        None,
    );
    assert_eq!(too_long.status.code(), Some(1), "longer than the group's 2h");

    let authenticator = lee.enroll_mfa();
    let code = authenticator.generate(now_secs() + 30);
    let activated = lee.ok(
        &[
            "groups",
            "activate",
            "Exchange Admins",
            "--access",
            "member",
            "--duration",
            "1h",
            "-j",
            "mailbox moves",
            "--code",
            &code,
        ],
        None,
    );
    assert!(
        activated.contains("Membership of Exchange Admins active at /groups/"),
        "{activated}"
    );
    for role in ["Exchange Administrator", "Global Reader"] {
        let checked = admin.ok(&["check", "lee", role], None);
        assert!(checked.starts_with("allowed"), "{checked}");
        assert!(checked.contains("via group"), "{checked}");
    }
    // The role lasts as long as the membership, not the group's 30 days.
    let checked = admin.ok(&["check", "lee", "Exchange Administrator"], None);
    let until = checked.lines().next().unwrap_or_default();
    let in_an_hour = std::time::SystemTime::now() + Duration::from_secs(61 * 60);
    let shown = until.rsplit("until ").next().unwrap_or_default();
    let end = humantime::parse_rfc3339(shown.trim()).unwrap_or_else(|e| panic!("an RFC 3339 end in {until:?}: {e}"));
    assert!(end < in_an_hour, "ends with the membership: {until}");
    let members = admin.ok(&["groups", "members", "Exchange Admins"], None);
    assert!(
        members
            .lines()
            .any(|l| l.contains(" lee ") && l.contains("activated") && l.contains("Z")),
        "Lee is a member until the activation ends: {members}"
    );
    lee.ok(&["groups", "deactivate", "Exchange Admins", "-j", "done"], None);
    let members = admin.ok(&["groups", "members", "Exchange Admins"], None);
    assert!(!members.contains(" lee "), "{members}");
    for role in ["Exchange Administrator", "Global Reader"] {
        assert_eq!(
            admin.run(&["check", "lee", role], None).status.code(),
            Some(1),
            "{role} ended"
        );
    }

    // An access review of the group's membership removes Lee's eligibility.
    let created = admin.ok(
        &[
            "reviews",
            "create",
            "--name",
            "mail team",
            "--group",
            "Exchange Admins",
            "--access",
            "member",
            "--assignments",
            "eligible",
            "--reviewers",
            "admin",
            "--duration",
            "7d",
            "--auto-apply",
        ],
        None,
    );
    let review = created.split_whitespace().nth(1).expect("the review id").to_owned();
    let items = admin.ok(&["reviews", "items", &review], None);
    let item = items
        .lines()
        .find(|l| l.contains("lee"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("Lee's eligibility under review: {items}"))
        .to_owned();
    admin.ok(&["reviews", "decide", &item, "--deny", "-j", "moved teams"], None);
    admin.ok(&["reviews", "stop", &review], None);
    let deadline = Instant::now() + Duration::from_secs(10);
    while lee.ok(&["groups", "mine"], None).contains("Exchange Admins") {
        assert!(Instant::now() < deadline, "the review removed Lee's eligibility");
        std::thread::sleep(Duration::from_millis(100));
    }
    let again = lee.run(
        &[
            "groups",
            "activate",
            "Exchange Admins",
            "-j",
            "again",
            "--code",
            &authenticator.generate(now_secs()),
        ],
        None,
    );
    assert_eq!(
        again.status.code(),
        Some(2),
        "no longer eligible: the name means nothing to Lee"
    );
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("none of the groups you have access to"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // Nobody makes themselves eligible, owner or not.
    admin.ok(&["groups", "create", "--name", "ops"], None);
    let own = admin.run(
        &[
            "groups",
            "assign",
            "--principal",
            "admin",
            "--group",
            "ops",
            "--access",
            "owner",
            "-j",
            "me",
        ],
        None,
    );
    assert_eq!(own.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&own.stderr).contains("yourself"));

    // Ola's ownership of ops, activated: Ola adds Kim; once it ends, Ola cannot.
    admin.ok(
        &[
            "groups",
            "assign",
            "--principal",
            "ola",
            "--group",
            "ops",
            "--access",
            "owner",
            "--permanent",
            "-j",
            "runs ops",
        ],
        None,
    );
    admin.ok(
        &[
            "policy",
            "set",
            "--group",
            "ops",
            "--access",
            "owner",
            "--require-mfa",
            "false",
        ],
        None,
    );
    // Ola reads no directory: Kim is named by id.
    let kim = admin.ok(&["users", "list", "--output", "json"], None);
    let kim = kim
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON object per line"))
        .find(|u| u["user_name"] == "kim")
        .and_then(|u| u["id"].as_str().map(str::to_owned))
        .expect("kim listed");
    let by_name = ola.run(&["groups", "add-member", "ops", "kim"], None);
    assert!(
        String::from_utf8_lossy(&by_name.stderr).contains("give \"kim\"'s id instead"),
        "{}",
        String::from_utf8_lossy(&by_name.stderr)
    );
    let before = ola.run(&["groups", "add-member", "ops", &kim], None);
    assert_eq!(before.status.code(), Some(1), "not an owner before activating");
    ola.ok(
        &[
            "groups",
            "activate",
            "ops",
            "--access",
            "owner",
            "--duration",
            "30m",
            "-j",
            "onboarding",
        ],
        None,
    );
    ola.ok(&["groups", "add-member", "ops", &kim], None);
    // An owner for half an hour may not make herself a member (or owner) for good.
    let ola_id = admin.ok(&["users", "list", "--output", "json"], None);
    let ola_id = ola_id
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON object per line"))
        .find(|u| u["user_name"] == "ola")
        .and_then(|u| u["id"].as_str().map(str::to_owned))
        .expect("ola listed");
    let herself = ola.run(&["groups", "add-member", "ops", &ola_id], None);
    assert_eq!(herself.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&herself.stderr).contains("may not add yourself"),
        "{}",
        String::from_utf8_lossy(&herself.stderr)
    );
    ola.ok(
        &["groups", "deactivate", "ops", "--access", "owner", "-j", "done"],
        None,
    );
    let after = ola.run(&["groups", "remove-member", "ops", &kim], None);
    assert_eq!(after.status.code(), Some(1), "no longer an owner");
    assert!(String::from_utf8_lossy(&after.stderr).contains("PermissionDenied"));
    // Deleting ops ends Ola's eligibility with it.
    admin.ok(&["groups", "delete", "ops"], None);
    let listed = admin.ok(&["groups", "list"], None);
    assert!(
        !listed.lines().any(|l| l.split_whitespace().nth(1) == Some("ops")),
        "{listed}"
    );
    assert!(
        !ola.ok(&["groups", "mine"], None).contains("owner"),
        "Ola's eligibility ended"
    );
    up.terminate();
    std::fs::remove_dir_all(&dir).ok();
}
