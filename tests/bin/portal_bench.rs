//! `pim-loadgen portal`: how long the portal takes to render *My roles* for a user with many
//! eligible roles (50 by default), against the suite on PostgreSQL + Redis. A browser's
//! requests over one keep-alive HTTP/1.1 connection, signed in through the sign-in form as a
//! browser is. Measured in the same run, in alternating rounds: `GET /healthz` (the portal's
//! floor: HTTP and routing) and the gRPC calls the page makes, straight to the suite (the
//! services' share of the page).

use std::time::{Duration, Instant};

use pim_e2e::browser::Browser;
use pim_e2e::{TestSuite, assign_for_an_hour, authed, password_of};
use pim_proto::assignment::v1 as apb;
use pim_proto::assignment::v1::assignment_service_client::AssignmentServiceClient;
use pim_proto::assignment::v1::role_service_client::RoleServiceClient;

pub async fn portal(roles: usize, seconds: u64, rounds: u32) -> anyhow::Result<()> {
    let ts: TestSuite = super::bench_suite().await?;
    let admin = ts.admin_token().await?;
    let user = ts.create_user(&admin, "bench-lee").await?;
    let mut definitions = RoleServiceClient::new(ts.channel.clone());
    let mut assignments = AssignmentServiceClient::new(ts.channel.clone());
    for i in 0..roles {
        let role = definitions
            .create_role_definition(authed(
                &admin,
                apb::CreateRoleDefinitionRequest {
                    name: format!("Bench role {i:03}"),
                    permissions: vec![format!("app.bench/role{i}")],
                    ..Default::default()
                },
            ))
            .await?
            .into_inner();
        assignments
            .create_request(authed(
                &admin,
                assign_for_an_hour(apb::AssignmentKind::Eligible, &user.id, &role.id),
            ))
            .await?;
    }

    let addr = pim_e2e::browser::serve_portal(&ts).await?;
    // Signed in as a browser is: the form's CSRF token, the password, a new session cookie.
    let mut browser = Browser::connect(addr).await?;
    browser.sign_in("bench-lee", &password_of("bench-lee")).await?;
    let page = browser.get("/roles").await?;
    let shown = page.matches("Activate Bench role").count();
    anyhow::ensure!(shown == roles, "My roles shows {shown} eligible roles, not {roles}");

    let token = ts.sign_in("bench-lee", &password_of("bench-lee")).await?;
    let mine = || apb::ListAssignmentsRequest {
        mine: true,
        ..Default::default()
    };
    let pending = apb::ListRequestsRequest {
        principal_id: user.id.clone(),
        status: apb::RequestStatus::PendingApproval as i32,
        page_size: 50,
        ..Default::default()
    };

    // Warm-up, then alternating rounds of the three, each one client, back to back.
    let warm = Instant::now() + Duration::from_secs(2);
    while Instant::now() < warm {
        browser.get("/roles").await?;
    }
    let (mut page_us, mut health_us, mut grpc_us) = (Vec::new(), Vec::new(), Vec::new());
    let (mut page_time, mut health_time, mut grpc_time) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let per_round = Duration::from_secs(seconds) / rounds.max(1);
    for _ in 0..rounds.max(1) {
        let started = Instant::now();
        while started.elapsed() < per_round {
            let at = Instant::now();
            browser.get("/roles").await?;
            page_us.push(at.elapsed().as_micros() as u64);
        }
        page_time += started.elapsed();
        let started = Instant::now();
        while started.elapsed() < per_round {
            let at = Instant::now();
            browser.get("/healthz").await?;
            health_us.push(at.elapsed().as_micros() as u64);
        }
        health_time += started.elapsed();
        let started = Instant::now();
        while started.elapsed() < per_round {
            let at = Instant::now();
            assignments.list_eligible_assignments(authed(&token, mine())).await?;
            assignments.list_active_assignments(authed(&token, mine())).await?;
            assignments.list_requests(authed(&token, pending.clone())).await?;
            grpc_us.push(at.elapsed().as_micros() as u64);
        }
        grpc_time += started.elapsed();
    }
    println!(
        "portal (PostgreSQL + Redis): My roles for a user with {roles} eligible roles, one keep-alive \
         connection, {rounds} alternating rounds over {seconds} s:"
    );
    super::report("GET /roles (the page)", page_us, page_time);
    super::report("GET /healthz (floor)", health_us, health_time);
    super::report("its 3 gRPC calls, direct", grpc_us, grpc_time);
    ts.stop().await
}
