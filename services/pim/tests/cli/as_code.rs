//! Custom roles and PIM's configuration kept in a file (`pim plan|apply|export`).

use super::*;

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
    let (dir, up, server, admin) = up_with_admin();
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
        planned.contains("~ policy of \"Exchange Administrator\" at /: activation_requires_ticket: off -> on; notifications: (the defaults) -> [eligible_assignment/assignee: not the party itself] [activation/admin: also soc@example.com]"),
        "{planned}"
    );
    // A group's access, for a group the file creates: by its name.
    for line in [
        "~ policy of \"Group Member\" at group \"payments-oncall\": activation_max_duration: (default) -> 4h",
        "+ eligible lee: Group Member at group \"payments-oncall\", until permanent",
    ] {
        assert!(planned.contains(line), "{line} in {planned}");
    }
    assert!(
        planned.contains("Plan: 7 to add, 3 to change, 0 to remove."),
        "{planned}"
    );
    // A plan changes nothing.
    let roles = admin.ok(&["roles", "--definitions"], None);
    assert!(!roles.contains("Payments Refunder"), "{roles}");

    let applied = admin.ok(&["apply", "-f", example], None);
    assert!(applied.contains("Applied 10 change(s)."), "{applied}");
    let again = admin.ok(&["apply", "-f", example], None);
    assert!(again.contains("No changes"), "{again}");
    let policy = admin.ok(
        &["policy", "show", "Payments Refunder", "--scope", "/apps/payments"],
        None,
    );
    assert!(policy.contains("alice"), "{policy}");
    let members = admin.ok(&["groups", "members", "payments-oncall"], None);
    assert!(members.contains("sam"), "{members}");
    let rules = admin.ok(&["notifications", "show", "Exchange Administrator"], None);
    assert!(
        rules
            .lines()
            .any(|l| l.starts_with("activation") && l.contains("admin") && l.contains("soc@example.com")),
        "{rules}"
    );

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
    // A scheduled job finds drift by the exit status.
    let found = admin.run(&["plan", "-f", example, "--detailed-exitcode"], None);
    assert_eq!(found.status.code(), Some(6), "changes to apply");
    admin.ok(&["apply", "-f", example], None);
    let matched = admin.run(&["plan", "-f", example, "--detailed-exitcode"], None);
    assert_eq!(matched.status.code(), Some(0), "the server matches the file");
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
    assert!(
        text.contains("- group: payments-oncall\n  access: member\n"),
        "group access by the group's name: {text}"
    );
    assert!(!text.contains("/groups/"), "no group ids: {text}");
    let round = admin.ok(&["plan", "-f", exported.to_str().unwrap()], None);
    assert!(round.contains("No changes"), "{round}");
    // `-f -` is standard output, as no -f is.
    assert_eq!(admin.ok(&["export", "-f", "-"], None), text);
    assert!(!dir.join("-").exists() && !std::path::Path::new("-").exists());

    // A file that prunes one group's membership leaves another group's alone.
    admin.ok(&["groups", "create", "--name", "ops"], None);
    admin.ok(
        &[
            "groups",
            "assign",
            "ops",
            "--principal",
            "sam",
            "--access",
            "member",
            "--permanent",
            "-j",
            "on call",
        ],
        None,
    );
    let pruning = dir.join("pruning.yaml");
    std::fs::write(
        &pruning,
        "assignments:\n  - group: payments-oncall\n    access: member\n    prune: true\n",
    )
    .unwrap();
    let pruned = admin.ok(&["plan", "-f", pruning.to_str().unwrap()], None);
    assert!(
        pruned.contains(
            "- eligible lee: Group Member at group \"payments-oncall\" (not in the file, which prunes the role)"
        ),
        "{pruned}"
    );
    assert!(!pruned.contains("sam"), "ops is not the file's: {pruned}");
    // Listed with a time that has passed (the server's was extended since): nothing to
    // assign, and nothing pruned either.
    std::fs::write(
        &pruning,
        "assignments:\n  - group: payments-oncall\n    access: member\n    prune: true\n    eligible:\n      - principal: lee\n        until: 2020-01-01T00:00:00Z\n",
    )
    .unwrap();
    let listed = admin.run(&["plan", "-f", pruning.to_str().unwrap()], None);
    let (said, noted) = (
        String::from_utf8_lossy(&listed.stdout),
        String::from_utf8_lossy(&listed.stderr),
    );
    assert!(listed.status.success(), "{said} {noted}");
    assert!(!said.contains("lee"), "a listed entry is never pruned: {said}");
    assert!(
        noted.contains("has passed, but the server holds this permanently"),
        "{noted}"
    );

    // A prune never ends an activation: Sam's eligibility, which Sam's running activation
    // rests on, is kept with a warning until it ends.
    admin.ok(&["policy", "set", "Global Reader", "--require-mfa", "false"], None);
    admin.ok(
        &[
            "assign",
            "--principal",
            "sam",
            "--role",
            "Global Reader",
            "--kind",
            "eligible",
            "--permanent",
        ],
        None,
    );
    let sam = Client {
        server,
        token_file: dir.join("sam-token"),
    };
    sam.ok(
        &["login", "--user", "sam", "--password-stdin"],
        Some("sam's passphrase, long enough\n"),
    );
    // An activation scheduled for tomorrow answers once scheduled: nothing more happens before
    // its start, so it does not wait for it (a script would hang until then).
    let tomorrow = pim_runtime::format::rfc3339_seconds(pim_runtime::db::now_ms() + 86_400_000);
    let mut later = Command::new(PIM)
        .args([
            "activate",
            "Global Reader",
            "-j",
            "audit prep",
            "--start",
            &tomorrow,
            "--output",
            "json",
        ])
        .env("PIM_SERVER", &sam.server)
        .env("PIM_TOKEN_FILE", &sam.token_file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pim runs");
    let deadline = Instant::now() + Duration::from_secs(30);
    while later.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "a scheduled activation is answered at once");
        std::thread::sleep(Duration::from_millis(50));
    }
    let later = later.wait_with_output().expect("pim finishes");
    let said = String::from_utf8_lossy(&later.stderr).into_owned();
    let answer: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&later.stdout).trim())
        .unwrap_or_else(|e| panic!("one JSON object ({e}): {said}"));
    assert_eq!(answer["status"], "schedule_created", "{answer}");
    let request_id = answer["request_id"].as_str().expect("the request's id");
    // Sam's roles show what is coming, and from when.
    let roles = sam.ok(&["roles"], None);
    assert!(
        roles
            .lines()
            .any(|l| l.starts_with("active") && l.contains("Global Reader") && l.contains(&tomorrow)),
        "{roles}"
    );
    sam.ok(&["cancel", request_id], None);
    sam.ok(&["activate", "Global Reader", "-j", "audit prep", "--no-wait"], None);
    // A start without a time zone is refused, not read as UTC.
    let zoneless = sam.run(
        &[
            "activate",
            "Global Reader",
            "-j",
            "audit prep",
            "--start",
            "2030-01-01T09:00:00",
        ],
        None,
    );
    let said = String::from_utf8_lossy(&zoneless.stderr);
    assert!(
        !zoneless.status.success() && said.contains("has no time zone"),
        "{said}"
    );
    // An administrator schedules an assignment for tomorrow (a time with its offset), sees it
    // among the scheduled ones, and withdraws it before it starts.
    let tomorrow = pim_runtime::format::rfc3339_seconds(pim_runtime::db::now_ms() + 86_400_000).replace('Z', "+00:00");
    let scheduled = admin.ok(
        &[
            "assign",
            "--principal",
            "sam",
            "--role",
            "Security Reader",
            "--kind",
            "active",
            "--duration",
            "1h",
            "--start",
            &tomorrow,
            "-j",
            "night shift",
        ],
        None,
    );
    assert!(scheduled.contains("schedule_created"), "{scheduled}");
    let request = scheduled.split_whitespace().nth(1).expect("the request's id");
    let listed = admin.ok(&["assignments", "--principal", "sam", "--scheduled"], None);
    assert!(
        listed.contains("FROM") && listed.contains("Security Reader"),
        "{listed}"
    );
    let canceled = admin.ok(&["cancel", request], None);
    assert!(canceled.to_lowercase().contains("canceled"), "{canceled}");
    let readers = dir.join("readers.yaml");
    std::fs::write(&readers, "assignments:\n  - role: Global Reader\n    prune: true\n").unwrap();
    let planned = admin.run(&["plan", "-f", readers.to_str().unwrap()], None);
    let (said, warned) = (
        String::from_utf8_lossy(&planned.stdout),
        String::from_utf8_lossy(&planned.stderr),
    );
    assert!(
        said.contains(
            "! sam's eligible Global Reader at / is not in the file, but is kept while their activation of it runs"
        ),
        "{said} {warned}"
    );
    assert!(
        said.contains("No changes now. 1 kept while an activation runs"),
        "{said} {warned}"
    );

    // Every mistake, each at its line; nothing applied, not even the valid new role.
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "roles:\n  - name: Auditor Extra\n    permissions: [app.audit/read]\n  - name: Broken\n    permissions: [\"app payments/refunds\"]\npolicies:\n  - role: Payments Refunder\n    activation_max_duration: soon\n    notifications:\n      - event: activation\n        party: approver\n      - event: eligible_assignment\n        party: approver\n  - group: no-such-group\n    activation_max_duration: 1h\n  - role: Security Reader\n    activation_max_duration: 30h\n  - role: Auditor Extra\n    activation_max_duration: 30h\n  - role: Exchange Administrator\n    activation_requires_ticket: false\nassignments:\n  - role: Payments Refunder\n    eligible:\n      - principal: nobody\n      - principal: lee\n        scope: /apps/payments\n        until: 2020-01-01T00:00:00Z\n  - role: No Such Role\n  - role: Exchange Administrator\n    eligible:\n      - principal: lee\n        until: 2099-01-01T00:00:00Z\n  - role: Global Administrator\n    prune: true\ngroups:\n  - name: payments-oncall\n    role_assignable: true\n    owners: [payments-oncall]\n    members: [payments-oncall, sam]\n  - name: Exchange \u{410}dmins\n  - name: Ops  Two\n  - name: payments-0ncall\n  - name: PAYMENTS-ONCALL\n",
    )
    .unwrap();
    let refused = admin.run(&["apply", "-f", bad.to_str().unwrap()], None);
    assert_ne!(refused.status.code(), Some(0));
    let err = String::from_utf8_lossy(&refused.stderr);
    let bad_path = bad.display().to_string();
    for (line, what) in [
        (4, "app payments/refunds"),
        (7, "activation_max_duration"),
        (12, "no rule for event \"eligible_assignment\" and party \"approver\""),
        (14, "no group is named \"no-such-group\""),
        // Out of range: the server says so of a role it holds (validate_only), the same rules
        // here of one the file creates.
        (16, "activation_max_duration: must be between 60s and 86400s"),
        (18, "activation_max_duration: must be between 60s and 86400s"),
        (25, "nobody"),
        (29, "No Such Role"),
        // Found by the server (validate_only): longer than the policy allows, which the
        // file's change of another setting of that role's policy leaves as it is.
        (32, "at most 365d"),
        // The last permanent Global Administrator is not pruned away.
        (34, "last permanent active Global Administrator"),
        // What identity would refuse midway, refused before anything changes.
        (39, "a group's owners are users"),
        (40, "cannot have groups as members"),
        // Names identity would refuse midway: a lookalike, two spaces.
        (41, "one script"),
        (42, "single spaces"),
        // One that reads as another group's name.
        (43, "reads as the group payments-oncall"),
        (44, "is defined twice"),
    ] {
        assert!(
            err.lines()
                .any(|l| l.contains(&format!("{bad_path}:{line}:")) && l.contains(what)),
            "no error at line {line} about {what}:\n{err}"
        );
    }
    assert!(err.contains("16 error(s); nothing was changed"), "{err}");
    // An entry whose time is over is no mistake (a file exported yesterday still applies):
    // it assigns nothing, and the plan says so at its line.
    assert!(
        err.lines()
            .any(|l| l.starts_with(&format!("note: {bad_path}:26:")) && l.contains("has passed")),
        "{err}"
    );
    let roles = admin.ok(&["roles", "--definitions"], None);
    assert!(!roles.contains("Auditor Extra"), "{roles}");

    // A new role's stage that needs two approvals of one approver is refused before anything
    // changes; a group the file creates makes up the number.
    let stages = dir.join("stages.yaml");
    let with_approvers = |approvers: &str| {
        format!(
            "roles:\n  - name: Tally Checker\n    permissions: [app.tally/read]\ngroups:\n  - name: tally-approvers\n    members: [alice, bob]\npolicies:\n  - role: Tally Checker\n    approval_required: true\n    approval_stages:\n      - approvers: [{approvers}]\n        approvals_required: 2\n"
        )
    };
    std::fs::write(&stages, with_approvers("alice")).unwrap();
    let outnumbered = admin.run(&["plan", "-f", stages.to_str().unwrap()], None);
    let err = String::from_utf8_lossy(&outnumbered.stderr);
    assert_ne!(outnumbered.status.code(), Some(0), "{err}");
    assert!(err.contains("stage 1 needs 2 approvals and names 1 approvers"), "{err}");
    std::fs::write(&stages, with_approvers("group:tally-approvers")).unwrap();
    let planned = admin.ok(&["plan", "-f", stages.to_str().unwrap()], None);
    assert!(planned.contains("+ role \"Tally Checker\""), "{planned}");
    // A privileged role (one of its permissions administers PIM) is approved by a group only
    // if the group is role-assignable.
    let privileged = with_approvers("group:tally-approvers").replace("[app.tally/read]", "[pim.assignments.read]");
    std::fs::write(&stages, &privileged).unwrap();
    let open = admin.run(&["plan", "-f", stages.to_str().unwrap()], None);
    let err = String::from_utf8_lossy(&open.stderr);
    assert_ne!(open.status.code(), Some(0), "{err}");
    assert!(
        err.contains("\"group:tally-approvers\" is not role-assignable"),
        "{err}"
    );
    let guarded = privileged.replace(
        "  - name: tally-approvers\n",
        "  - name: tally-approvers\n    role_assignable: true\n",
    );
    std::fs::write(&stages, guarded).unwrap();
    admin.ok(&["plan", "-f", stages.to_str().unwrap()], None);

    up.terminate();
    std::fs::remove_dir_all(&dir).ok();
}

/// Where a role's policy wants the administrator's recent MFA to give an active assignment
/// (`--require-mfa-on-active-assignment`), `pim plan` still plans it (nothing the file could
/// mend), and `pim assign` and `pim apply` step up with `--code`, or say to pass one.
#[test]
fn an_active_assignment_that_needs_the_administrators_mfa_steps_up() {
    let (dir, up, server, admin) = up_with_admin();
    admin.ok(
        &["users", "create", "--user-name", "kim", "--password-stdin"],
        Some("kim's passphrase, long enough\n"),
    );
    admin.ok(
        &[
            "policy",
            "set",
            "Exchange Administrator",
            "--require-mfa-on-active-assignment",
            "true",
        ],
        None,
    );
    let shown = admin.ok(&["policy", "show", "Exchange Administrator"], None);
    assert!(
        shown
            .lines()
            .any(|l| l.contains("requires the administrator's MFA") && l.trim_end().ends_with("true")),
        "{shown}"
    );
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("set at") && l.trim_end().ends_with(" /")),
        "{shown}"
    );
    let below = admin.ok(
        &["policy", "show", "Exchange Administrator", "--scope", "/apps/mail"],
        None,
    );
    assert!(
        below
            .lines()
            .any(|l| l.starts_with("set at") && l.trim_end().ends_with("/ (inherited)")),
        "{below}"
    );
    // Sessions of the administrator's from before their authenticator: no MFA in them.
    let before = |name: &str| {
        let copy = Client {
            server: server.clone(),
            token_file: dir.join(name),
        };
        std::fs::copy(&admin.token_file, &copy.token_file).expect("copy the token");
        copy
    };
    let (for_assign, for_apply) = (before("admin-assign"), before("admin-apply"));
    let authenticator = admin.enroll_mfa();
    let enrolled_at = now_secs();

    let assign = [
        "assign",
        "--principal",
        "kim",
        "--role",
        "Exchange Administrator",
        "--kind",
        "active",
        "--duration",
        "2h",
        "-j",
        "migration weekend",
    ];
    let unasked = for_assign.run(&assign, None);
    let stderr = String::from_utf8_lossy(&unasked.stderr).into_owned();
    assert_eq!(unasked.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("Assigning Exchange Administrator needs a recent multi-factor authentication: pass --code"),
        "{stderr}"
    );
    let file = dir.join("pim.yaml");
    let until = pim_runtime::format::rfc3339_seconds(pim_runtime::db::now_ms() + 30 * 86_400_000);
    std::fs::write(
        &file,
        format!(
            "groups:\n  - name: tier0\n    role_assignable: true\n    members: [kim]\nassignments:\n  - role: Exchange Administrator\n    active:\n      - principal: kim\n        until: {until}\n"
        ),
    )
    .expect("write the file");
    let file = file.to_str().expect("a UTF-8 path");
    let planned = for_apply.ok(&["plan", "-f", file], None);
    assert!(planned.contains("kim"), "planned, not an error of the file: {planned}");
    let unasked = for_apply.run(&["apply", "-f", file], None);
    assert_eq!(unasked.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unasked.stderr).contains("pass --code"));
    let held = admin.ok(&["assignments", "--principal", "kim"], None);
    assert!(!held.contains("Exchange Administrator"), "nothing given yet: {held}");

    let applied = for_apply.run(
        &["apply", "-f", file, "--code", &authenticator.generate(enrolled_at + 30)],
        None,
    );
    let stderr = String::from_utf8_lossy(&applied.stderr).into_owned();
    assert!(applied.status.success(), "{stderr}");
    assert!(
        stderr.contains("needs a recent multi-factor authentication"),
        "{stderr}"
    );
    let held = admin.ok(&["assignments", "--principal", "kim", "--kind", "active"], None);
    assert!(held.contains("Exchange Administrator"), "{held}");
    // The member of a role-assignable group too: the one step-up served both changes.
    let members = admin.ok(&["groups", "members", "tier0"], None);
    assert!(members.contains("kim"), "{members}");
    up.terminate();
    std::fs::remove_dir_all(&dir).ok();
}
