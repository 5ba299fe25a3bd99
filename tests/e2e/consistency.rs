//! Consistency under concurrency: at most one activation per principal, role and scope,
//! guaranteed by the database (SQLite and PostgreSQL), however many requests race.

use tonic::Code;

use pim_e2e::authed;
use pim_proto::assignment::v1 as apb;

use crate::activation::{EXCHANGE_ADMINISTRATOR, HOUR_MS, World, activation, request, run_on_both};

const RACERS: usize = 32;
const ROUNDS: usize = 20;

/// `RACERS` concurrent selfActivate calls with `token`; the ones that succeeded, and the
/// refusals (each must be ALREADY_EXISTS naming the winner).
async fn race(w: &World, token: &str) -> anyhow::Result<(Vec<apb::AssignmentRequest>, Vec<tonic::Status>)> {
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..RACERS {
        let mut client = w.assignments();
        let token = token.to_owned();
        calls.spawn(async move {
            let ask = activation(EXCHANGE_ADMINISTRATOR, HOUR_MS, &format!("racer {i}"));
            client
                .create_request(authed(&token, ask))
                .await
                .map(tonic::Response::into_inner)
        });
    }
    let (mut won, mut refused) = (Vec::new(), Vec::new());
    while let Some(outcome) = calls.join_next().await {
        match outcome? {
            Ok(request) => won.push(request),
            Err(status) => refused.push(status),
        }
    }
    Ok((won, refused))
}

/// Races once; exactly one call must win (with `status`), and every other must be
/// ALREADY_EXISTS.
async fn one_winner(
    w: &World,
    token: &str,
    round: usize,
    status: apb::RequestStatus,
) -> anyhow::Result<(apb::AssignmentRequest, Vec<tonic::Status>)> {
    let (won, refused) = race(w, token).await?;
    assert_eq!(won.len(), 1, "round {round}: exactly one winner ({refused:?})");
    assert_eq!(won[0].status, status as i32);
    for refusal in &refused {
        assert_eq!(refusal.code(), Code::AlreadyExists, "round {round}: {refusal:?}");
    }
    Ok((won.into_iter().next().expect("one"), refused))
}

async fn one_activation_wins_each_race(w: World) -> anyhow::Result<World> {
    let lee = w.user("lee").await?;
    w.make_eligible(&lee, EXCHANGE_ADMINISTRATOR).await?;
    let token = w.stepped_up(&lee)?;
    for round in 0..ROUNDS {
        let (winner, refused) = one_winner(&w, &token, round, apb::RequestStatus::Provisioned).await?;
        // The refusals name the live activation and its end in RFC 3339.
        assert!(
            refused
                .iter()
                .all(|r| r.message().contains(&winner.assignment_id) && r.message().contains("until 20")),
            "{refused:?}"
        );
        let live = w
            .assignments()
            .list_active_assignments(authed(
                &w.admin,
                apb::ListAssignmentsRequest {
                    principal_id: lee.id.clone(),
                    role_id: EXCHANGE_ADMINISTRATOR.into(),
                    ..Default::default()
                },
            ))
            .await?
            .into_inner()
            .assignments;
        assert_eq!(live.len(), 1, "round {round}: one live instance: {live:?}");
        // Ready for the next round.
        w.assignments()
            .create_request(authed(
                &token,
                request(
                    apb::RequestAction::SelfDeactivate,
                    apb::AssignmentKind::Active,
                    "",
                    EXCHANGE_ADMINISTRATOR,
                ),
            ))
            .await?;
    }
    Ok(w)
}

async fn one_request_waits_for_approval_after_each_race(w: World) -> anyhow::Result<World> {
    let lee = w.user("lee").await?;
    w.make_eligible(&lee, EXCHANGE_ADMINISTRATOR).await?;
    w.set_policy(EXCHANGE_ADMINISTRATOR, |p| p.approval_required = true)
        .await?;
    let token = w.stepped_up(&lee)?;
    for round in 0..ROUNDS {
        let (winner, refused) = one_winner(&w, &token, round, apb::RequestStatus::PendingApproval).await?;
        // The refusals name the waiting request and when it was made.
        assert!(
            refused
                .iter()
                .all(|r| r.message().contains(&winner.id) && r.message().contains("since 20")),
            "{refused:?}"
        );
        w.assignments()
            .cancel_request(authed(
                &token,
                apb::GetRequestRequest {
                    request_id: winner.id.clone(),
                },
            ))
            .await?;
    }
    Ok(w)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_activations_leave_exactly_one_instance() -> anyhow::Result<()> {
    run_on_both(one_activation_wins_each_race).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_activations_needing_approval_leave_exactly_one_waiting() -> anyhow::Result<()> {
    run_on_both(one_request_waits_for_approval_after_each_race).await
}
