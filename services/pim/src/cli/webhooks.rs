//! `pim webhooks`: subscriptions that push what audit records to a URL, signed (Standard
//! Webhooks), and their deliveries.

use clap::Subcommand;

use pim_proto::audit::v1 as pb;
use pim_proto::audit::v1::webhook_service_client::WebhookServiceClient;
use pim_proto::event_types::EventType;
use pim_runtime::db::from_timestamp;

use super::{Cell, ClientArgs, Names, Session, explain, print_table, time};

#[derive(Subcommand)]
pub(crate) enum WebhooksCommand {
    /// Subscribe a URL to events (the signing secret is shown once).
    Create {
        /// Where to POST each event: https:// (http:// only to a loopback address).
        #[arg(long)]
        url: String,
        /// Event types, comma-separated (e.g. RoleActivated,AlertRaised; `pim webhooks event-types`
        /// lists them); default: every event.
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
        /// Only events about these roles (names or ids, comma-separated).
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// Only events about these groups (names or ids, comma-separated): the group, its
        /// members and owners, access to it.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Only alerts of at least this severity: low, medium, high or critical.
        #[arg(long, default_value = "")]
        min_severity: String,
        /// What the subscription is for.
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List subscriptions.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a subscription (and what it still had to deliver).
    Delete {
        /// The subscription's id (see `pim webhooks list`).
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Deliver again to a subscription suspended when a delivery was given up (events from now on).
    Resume {
        /// The subscription's id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A new signing secret (shown once); the old one keeps signing beside it for 24 hours.
    RotateSecret {
        /// The subscription's id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Send a test event to a subscription.
    Test {
        /// The subscription's id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The event types a subscription may name (`--events`), and the services that publish each.
    EventTypes,
    /// A subscription's deliveries, newest first: status, attempts, the receiver's last answer.
    Deliveries {
        /// The subscription's id.
        id: String,
        /// How many (at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: i32,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn status_name(status: i32) -> String {
    pb::DeliveryStatus::try_from(status)
        .map(|s| s.as_str_name().trim_start_matches("DELIVERY_STATUS_").to_lowercase())
        .unwrap_or_default()
}

fn print_secret(what: &str, answer: pb::SubscriptionSecret) {
    let s = answer.subscription.unwrap_or_default();
    super::print_made(
        &format!(
            "{what} webhook subscription {} for {}\n  signing secret: {} (shown once; verify each delivery's webhook-signature with it)",
            s.id, s.url, answer.secret
        ),
        serde_json::json!({"id": s.id, "url": s.url, "signing_secret": answer.secret}),
    );
}

pub(crate) async fn run(cmd: WebhooksCommand) -> anyhow::Result<i32> {
    match cmd {
        WebhooksCommand::Create {
            url,
            events,
            roles,
            groups,
            min_severity,
            description,
            client,
        } => {
            let session = Session::open(&client, true)?;
            let mut role_ids = Vec::new();
            for role in &roles {
                role_ids.push(session.role_id(role).await?);
            }
            let mut group_ids = Vec::new();
            for group in &groups {
                let reference = if uuid::Uuid::parse_str(group).is_ok() {
                    group.clone()
                } else {
                    format!("group:{group}")
                };
                group_ids.push(session.principal_id(&reference).await?);
            }
            let answer = WebhookServiceClient::new(session.channel.clone())
                .create_subscription(session.request(pb::CreateSubscriptionRequest {
                    subscription: Some(pb::Subscription {
                        url,
                        event_types: events,
                        role_ids,
                        group_ids,
                        min_severity,
                        description,
                        ..Default::default()
                    }),
                })?)
                .await
                .map_err(explain)?
                .into_inner();
            print_secret("Created", answer);
        }
        WebhooksCommand::EventTypes => {
            let rows = EventType::ALL
                .iter()
                .filter(|t| t.is_recorded())
                .map(|t| {
                    let sources: Vec<&str> = t.sources().iter().map(|s| s.name()).collect();
                    vec![Cell::from(t.name()), sources.join(",").into()]
                })
                .collect();
            print_table(&["EVENT TYPE", "PUBLISHED BY"], rows);
        }
        WebhooksCommand::List { client } => {
            let session = Session::open(&client, true)?;
            let listed = WebhookServiceClient::new(session.channel.clone())
                .list_subscriptions(session.request(pb::ListSubscriptionsRequest {})?)
                .await
                .map_err(explain)?
                .into_inner()
                .subscriptions;
            let mut names = Names::new(&session);
            let mut rows = Vec::new();
            for s in listed {
                let mut roles = Vec::new();
                for id in &s.role_ids {
                    roles.push(names.role(id).await.name);
                }
                let mut groups = Vec::new();
                for id in &s.group_ids {
                    groups.push(names.principal(id).await.name);
                }
                let state = match &s.suspended_at {
                    Some(at) => format!("suspended since {}", time(Some(from_timestamp(at)))),
                    None => "active".to_owned(),
                };
                rows.push(vec![
                    Cell::from(s.id),
                    s.url.into(),
                    s.event_types.join(",").into(),
                    roles.join(",").into(),
                    groups.join(",").into(),
                    s.min_severity.into(),
                    state.into(),
                    names.principal(&s.created_by).await.into(),
                    time(s.created_at.as_ref().map(from_timestamp)).into(),
                ]);
            }
            print_table(
                &[
                    "ID",
                    "URL",
                    "EVENTS",
                    "ROLES",
                    "GROUPS",
                    "MIN SEVERITY",
                    "STATE",
                    "CREATED BY",
                    "CREATED",
                ],
                rows,
            );
        }
        WebhooksCommand::Delete { id, client } => {
            let session = Session::open(&client, true)?;
            let s = WebhookServiceClient::new(session.channel.clone())
                .delete_subscription(session.request(pb::SubscriptionRequest { subscription_id: id })?)
                .await
                .map_err(explain)?
                .into_inner();
            println!("Deleted webhook subscription {} for {}", s.id, s.url);
        }
        WebhooksCommand::Resume { id, client } => {
            let session = Session::open(&client, true)?;
            let s = WebhookServiceClient::new(session.channel.clone())
                .resume_subscription(session.request(pb::SubscriptionRequest { subscription_id: id })?)
                .await
                .map_err(explain)?
                .into_inner();
            println!("Resumed webhook subscription {} for {}", s.id, s.url);
        }
        WebhooksCommand::RotateSecret { id, client } => {
            let session = Session::open(&client, true)?;
            let answer = WebhookServiceClient::new(session.channel.clone())
                .rotate_subscription_secret(session.request(pb::SubscriptionRequest { subscription_id: id })?)
                .await
                .map_err(explain)?
                .into_inner();
            print_secret("Rotated the secret of", answer);
            if !super::json_wanted() {
                println!("  the old secret keeps signing beside it for 24 hours");
            }
        }
        WebhooksCommand::Test { id, client } => {
            let session = Session::open(&client, true)?;
            let d = WebhookServiceClient::new(session.channel.clone())
                .test_subscription(session.request(pb::SubscriptionRequest { subscription_id: id })?)
                .await
                .map_err(explain)?
                .into_inner();
            println!(
                "Test event {} queued (delivery {}); see pim webhooks deliveries {}",
                d.event_id, d.id, d.subscription_id
            );
        }
        WebhooksCommand::Deliveries { id, limit, client } => {
            let session = Session::open(&client, true)?;
            let listed = WebhookServiceClient::new(session.channel.clone())
                .list_deliveries(session.request(pb::ListDeliveriesRequest {
                    subscription_id: id,
                    page_size: limit,
                })?)
                .await
                .map_err(explain)?
                .into_inner()
                .deliveries;
            let rows = listed
                .into_iter()
                .map(|d| {
                    vec![
                        Cell::from(d.id),
                        d.event_type.rsplit('.').next().unwrap_or_default().into(),
                        d.event_id.into(),
                        status_name(d.status).into(),
                        Cell::Count(d.attempts.into()),
                        if d.last_status_code == 0 {
                            String::new()
                        } else {
                            d.last_status_code.to_string()
                        }
                        .into(),
                        d.last_error.into(),
                        time(d.created_at.as_ref().map(from_timestamp)).into(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "ID",
                    "EVENT",
                    "EVENT ID",
                    "STATUS",
                    "ATTEMPTS",
                    "LAST ANSWER",
                    "LAST ERROR",
                    "QUEUED",
                ],
                rows,
            );
        }
    }
    Ok(0)
}

#[derive(Subcommand)]
pub(crate) enum SsfCommand {
    /// The streams receivers made at the transmitter (`/.well-known/ssf-configuration`):
    /// receiver, delivery, what each asked for, its status and how many events wait.
    Streams {
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub(crate) async fn run_ssf(cmd: SsfCommand) -> anyhow::Result<i32> {
    let SsfCommand::Streams { client } = cmd;
    let session = Session::open(&client, true)?;
    let streams = WebhookServiceClient::new(session.channel.clone())
        .list_ssf_streams(session.request(pb::ListSsfStreamsRequest {})?)
        .await
        .map_err(explain)?
        .into_inner()
        .streams;
    let mut names = Names::new(&session);
    let mut rows = Vec::new();
    for s in streams {
        let delivery = match s.delivery_method.as_str() {
            "urn:ietf:rfc:8935" => format!("push to {}", s.endpoint),
            "urn:ietf:rfc:8936" => "poll".to_owned(),
            other => other.to_owned(),
        };
        let events: Vec<&str> = s
            .events_requested
            .iter()
            .map(|e| e.rsplit('/').next().unwrap_or(e))
            .collect();
        let status = pb::SsfStreamStatus::try_from(s.status)
            .map(|s| s.as_str_name().trim_start_matches("SSF_STREAM_STATUS_").to_lowercase())
            .unwrap_or_default();
        rows.push(vec![
            Cell::from(s.id),
            names.principal(&s.receiver_id).await.into(),
            delivery.into(),
            events.join(",").into(),
            status.into(),
            s.pending.to_string().into(),
            s.description.into(),
            time(s.created_at.as_ref().map(from_timestamp)).into(),
        ]);
    }
    print_table(
        &[
            "ID",
            "RECEIVER",
            "DELIVERY",
            "EVENTS",
            "STATUS",
            "PENDING",
            "DESCRIPTION",
            "CREATED",
        ],
        rows,
    );
    Ok(0)
}
