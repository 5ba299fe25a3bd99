//! The distributed shape, driven through `pim serve gateway`.

use super::*;

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
    // Names asked of assignment's own address: a usage mistake that says what to give.
    let at_assignment = admin.run(&["check", "lee", "Security Reader", "--server", &url(1)], None);
    let said = String::from_utf8_lossy(&at_assignment.stderr);
    assert_eq!(at_assignment.status.code(), Some(2), "{said}");
    assert!(said.contains("the address of the gateway"), "{said}");

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
    assert!(applied.contains("Applied 10 change(s)."), "{applied}");
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
