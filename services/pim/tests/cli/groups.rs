//! Principals named by name, and PIM for Groups from the command line.

use super::*;

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
    // A second group of one name is refused: a name stands for one group of a kind.
    let twice = admin.run(&["groups", "create", "--name", "ops", "--role-assignable"], None);
    let said = String::from_utf8_lossy(&twice.stderr);
    assert_eq!(twice.status.code(), Some(1), "{said}");
    assert!(said.contains("a group named ops already exists"), "{said}");
    let unknown = assign("nobody");
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no user, group or service principal is named \"nobody\""),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
    // Nobody of that name, as no role of that name, is "not found" (1), whoever looked.
    let no_role = admin.run(
        &[
            "assign",
            "--principal",
            "checker",
            "--role",
            "Security Readr",
            "--kind",
            "eligible",
        ],
        None,
    );
    assert_eq!((unknown.status.code(), no_role.status.code()), (Some(1), Some(1)));
    let held = admin.ok(&["assignments", "--role", "Security Reader"], None);
    assert!(held.contains("checker") && held.contains("ops"), "{held}");
    // A member's role through the group says so: it is the group's to change, not the member's.
    admin.ok(
        &["users", "create", "--user-name", "dee", "--password-stdin"],
        Some("dee's long passphrase\n"),
    );
    admin.ok(&["groups", "add-member", "ops", "dee"], None);
    let dees = admin.ok(&["assignments", "--principal", "dee", "--output", "json"], None);
    let rows: Vec<serde_json::Value> = dees
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect();
    assert!(
        rows.iter()
            .any(|r| r["role"] == "Security Reader" && r["via"] == "group ops" && r["via_id"] != ""),
        "{dees}"
    );

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
    // Approval turned off keeps its approvers, asking them nothing: said, not silent.
    let off = admin.run(
        &["policy", "set", "Security Reader", "--require-approval", "false"],
        None,
    );
    assert!(off.status.success());
    let noted = String::from_utf8_lossy(&off.stderr);
    assert!(noted.contains("approval is off"), "{noted}");
    admin.ok(
        &["policy", "set", "Security Reader", "--require-approval", "true"],
        None,
    );
    // Every limit of assignments and activations is set from the command line too.
    admin.ok(
        &[
            "policy",
            "set",
            "Security Reader",
            "--eligible-max",
            "90d",
            "--active-max",
            "30d",
            "--min-before-deactivate",
            "5m",
        ],
        None,
    );
    let shown = admin.ok(&["policy", "show", "Security Reader"], None);
    for (setting, value) in [
        ("eligible: max duration", "90d"),
        ("active: max duration", "30d"),
        ("deactivation allowed after", "5m"),
    ] {
        assert!(
            shown
                .lines()
                .any(|l| l.starts_with(setting) && l.trim_end().ends_with(value)),
            "{setting} {value}: {shown}"
        );
    }
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
        assert!(
            checked.contains("via group Exchange Admins ("),
            "named, its id beside: {checked}"
        );
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
            "ops",
            "--principal",
            "admin",
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
    // The eligibility given an end (adminUpdate), then a later one (adminExtend).
    let ownership = |ola: &Client| {
        ola.ok(&["groups", "mine"], None)
            .lines()
            .find(|l| l.contains("ops") && l.contains("owner") && l.contains("eligible"))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    assert!(ownership(&ola).contains("permanent"), "{}", ownership(&ola));
    let extend = |duration: &str, update: bool| {
        let mut args = vec![
            "groups",
            "extend",
            "ops",
            "--access",
            "owner",
            "--principal",
            "ola",
            "--duration",
            duration,
            "-j",
            "review the ops owners",
        ];
        if update {
            args.push("--update");
        }
        admin.ok(&args, None)
    };
    let shortened = extend("30d", true);
    assert!(shortened.contains("Ownership of ops of ola"), "{shortened}");
    // UNTIL is the last column, RFC 3339 in UTC (so later sorts later).
    let until = |line: String| line.split_whitespace().last().unwrap_or_default().to_owned();
    let thirty = until(ownership(&ola));
    assert!(thirty.ends_with('Z'), "an end now: {thirty}");
    extend("60d", false);
    let sixty = until(ownership(&ola));
    assert!(sixty > thirty, "moved later: {thirty} -> {sixty}");
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
    let activate_ownership = |more: &[&str]| {
        let mut args = vec![
            "groups",
            "activate",
            "ops",
            "--access",
            "owner",
            "--duration",
            "30m",
            "-j",
            "onboarding",
        ];
        args.extend_from_slice(more);
        ola.ok(&args, None)
    };
    activate_ownership(&[]);
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
    // Waiting for approval, access to a group is listed by the group's name.
    admin.ok(
        &[
            "policy",
            "set",
            "--group",
            "ops",
            "--access",
            "owner",
            "--require-approval",
            "true",
        ],
        None,
    );
    activate_ownership(&["--no-wait"]);
    let waiting = admin.ok(&["approvals", "--status", "pending"], None);
    assert!(
        waiting
            .lines()
            .any(|l| l.contains("Group Owner") && l.contains("group ops")),
        "{waiting}"
    );
    // Permanent owners are added, listed (by name, with how) and removed by name.
    admin.ok(&["groups", "add-owner", "ops", "kim"], None);
    let owners = |client: &Client| -> Vec<serde_json::Value> {
        client
            .ok(&["groups", "owners", "ops", "--output", "json"], None)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
            .collect()
    };
    let kim_owner = owners(&admin)
        .into_iter()
        .find(|o| o["user_name"] == "kim")
        .expect("kim owns ops");
    assert_eq!(kim_owner["how"], "direct", "{kim_owner}");
    admin.ok(&["groups", "remove-owner", "ops", "kim"], None);
    assert!(!owners(&admin).iter().any(|o| o["user_name"] == "kim"));
    // A group is renamed, and is then named by its new name; an update naming nothing to
    // change is a usage mistake.
    let nothing = admin.run(&["groups", "update", "ops"], None);
    assert_eq!(nothing.status.code(), Some(2), "nothing to change");
    admin.ok(
        &[
            "groups",
            "update",
            "ops",
            "--name",
            "ops-team",
            "--description",
            "on call",
        ],
        None,
    );
    admin.ok(&["groups", "members", "ops-team"], None);
    // The old name names nothing now: not found (1), as the server says it.
    assert_eq!(admin.run(&["groups", "members", "ops"], None).status.code(), Some(1));
    admin.ok(&["groups", "update", "ops-team", "--name", "ops"], None);
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
