//! `pim notifications show|set`: who hears of a role's (or a group's) assignments and
//! activations by email, a rule per event and party, as Entra's role settings have them;
//! `pim notifications mails`: what was mailed, to whom, and whether it went.

use anyhow::bail;
use clap::{Subcommand, ValueEnum};

use pim_proto::assignment::v1 as apb;
use pim_proto::assignment::v1::policy_service_client::PolicyServiceClient;
use pim_proto::audit::v1::audit_service_client::AuditServiceClient;
use pim_proto::common::v1::{NotificationEvent, NotificationParty, NotificationRule};
use pim_runtime::db::from_timestamp;

use super::policy::GroupTarget;
use super::{Cell, ClientArgs, RoleRef, Session, explain, print_table, time};

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Event {
    /// An administrator made someone eligible.
    EligibleAssignment,
    /// An administrator assigned the role active.
    ActiveAssignment,
    /// Someone activated the role (or asked to, waiting for approval).
    Activation,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Party {
    /// The role assignment alert: active Global and Privileged Role Administrators.
    Admin,
    /// The assigned principal, or whoever activated.
    Assignee,
    /// The approvers of an activation waiting for approval (activation only).
    Approver,
}

impl Event {
    fn pb(self) -> NotificationEvent {
        match self {
            Event::EligibleAssignment => NotificationEvent::EligibleAssignment,
            Event::ActiveAssignment => NotificationEvent::ActiveAssignment,
            Event::Activation => NotificationEvent::Activation,
        }
    }
}

impl Party {
    fn pb(self) -> NotificationParty {
        match self {
            Party::Admin => NotificationParty::Admin,
            Party::Assignee => NotificationParty::Assignee,
            Party::Approver => NotificationParty::Approver,
        }
    }
}

/// Every (event, party) a rule may name, in the order they are shown.
pub(crate) const RULES: [(NotificationEvent, NotificationParty); 7] = [
    (NotificationEvent::EligibleAssignment, NotificationParty::Admin),
    (NotificationEvent::EligibleAssignment, NotificationParty::Assignee),
    (NotificationEvent::ActiveAssignment, NotificationParty::Admin),
    (NotificationEvent::ActiveAssignment, NotificationParty::Assignee),
    (NotificationEvent::Activation, NotificationParty::Admin),
    (NotificationEvent::Activation, NotificationParty::Assignee),
    (NotificationEvent::Activation, NotificationParty::Approver),
];

#[derive(Subcommand)]
pub(crate) enum NotificationsCommand {
    /// Show who hears of what, rule by rule (a rule not set has the defaults).
    Show {
        #[command(flatten)]
        role: RoleRef,
        /// The scope to read the policy in force at.
        #[arg(long, default_value = "/")]
        scope: String,
        #[command(flatten)]
        group: GroupTarget,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change one rule (only what is given changes).
    Set {
        #[command(flatten)]
        role: RoleRef,
        /// The scope the policy is set at.
        #[arg(long, default_value = "/")]
        scope: String,
        #[command(flatten)]
        group: GroupTarget,
        /// Which change the rule is about.
        #[arg(long, value_enum)]
        event: Event,
        /// Who hears of it.
        #[arg(long, value_enum)]
        party: Party,
        /// Whether the party's own members hear of it (true or false).
        #[arg(long)]
        default_recipients: Option<bool>,
        /// Email addresses that hear of it too, comma-separated (empty: none).
        #[arg(long, value_delimiter = ',')]
        recipients: Option<Vec<String>>,
        /// Only mails that ask for action (an approval waiting) (true or false).
        #[arg(long)]
        critical_only: Option<bool>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The mail sent or to be sent, newest first: to whom, what, and whether it went (pim.audit.read).
    Mails {
        /// Only mail to this address.
        #[arg(long)]
        to: Option<String>,
        /// How many (at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: i32,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub(crate) fn name(text: &str, prefix: &str) -> String {
    text.trim_start_matches(prefix).to_lowercase()
}

fn print_rules(p: &apb::RolePolicy) {
    let rows = RULES
        .iter()
        .map(|(event, party)| {
            let r = p.notification_rule(*event, *party);
            vec![
                Cell::from(name(event.as_str_name(), "NOTIFICATION_EVENT_")),
                name(party.as_str_name(), "NOTIFICATION_PARTY_").into(),
                Cell::Flag(r.default_recipients),
                r.additional_recipients.join(",").into(),
                Cell::Flag(r.critical_only),
            ]
        })
        .collect();
    print_table(&["EVENT", "PARTY", "DEFAULT RECIPIENTS", "ALSO", "CRITICAL ONLY"], rows);
}

pub(crate) async fn notifications(cmd: NotificationsCommand) -> anyhow::Result<i32> {
    match cmd {
        NotificationsCommand::Mails { to, limit, client } => {
            let session = Session::open(&client, true)?;
            let mails = AuditServiceClient::new(session.channel.clone())
                .list_mails(session.request(pim_proto::audit::v1::ListMailsRequest {
                    recipient: to.unwrap_or_default(),
                    page_size: limit,
                })?)
                .await
                .map_err(explain)?
                .into_inner()
                .mails;
            let rows = mails
                .into_iter()
                .map(|m| {
                    let status = pim_proto::audit::v1::DeliveryStatus::try_from(m.status)
                        .map(|s| match s {
                            pim_proto::audit::v1::DeliveryStatus::Delivered => "sent".to_owned(),
                            other => name(other.as_str_name(), "DELIVERY_STATUS_"),
                        })
                        .unwrap_or_default();
                    vec![
                        Cell::from(time(m.created_at.as_ref().map(from_timestamp))),
                        m.recipient.into(),
                        m.party.into(),
                        m.subject.into(),
                        status.into(),
                        Cell::Count(m.attempts.into()),
                        m.last_error.into(),
                    ]
                })
                .collect();
            print_table(
                &["QUEUED", "TO", "PARTY", "SUBJECT", "STATUS", "ATTEMPTS", "LAST ERROR"],
                rows,
            );
        }
        NotificationsCommand::Show {
            role,
            scope,
            group,
            client,
        } => {
            let session = Session::open(&client, true)?;
            let (role_id, scope) = group.target(&session, role.given(), &scope).await?;
            print_rules(&super::policy::fetch(&session, role_id, scope).await?);
        }
        NotificationsCommand::Set {
            role,
            scope,
            group,
            event,
            party,
            default_recipients,
            recipients,
            critical_only,
            client,
        } => {
            if default_recipients.is_none() && recipients.is_none() && critical_only.is_none() {
                bail!("nothing to change: pass --default-recipients, --recipients or --critical-only");
            }
            let session = Session::open(&client, true)?;
            let (role_id, scope) = group.target(&session, role.given(), &scope).await?;
            let current = super::policy::fetch(&session, role_id.clone(), scope.clone()).await?;
            let mut rule = current.notification_rule(event.pb(), party.pb());
            if let Some(v) = default_recipients {
                rule.default_recipients = v;
            }
            if let Some(v) = recipients {
                rule.additional_recipients = v
                    .into_iter()
                    .map(|a| a.trim().to_owned())
                    .filter(|a| !a.is_empty())
                    .collect();
            }
            if let Some(v) = critical_only {
                rule.critical_only = v;
            }
            let mut rules: Vec<NotificationRule> = current
                .notification_rules
                .iter()
                .filter(|r| !(r.event == rule.event && r.party == rule.party))
                .cloned()
                .collect();
            rules.push(rule);
            // The rules read, changed in one place, sent back with the version read: a change
            // someone made meanwhile is refused (ABORTED), not overwritten.
            let updated = PolicyServiceClient::new(session.channel.clone())
                .update_role_policy(session.request(apb::UpdateRolePolicyRequest {
                    policy: Some(apb::RolePolicy {
                        role_id,
                        scope,
                        etag: current.etag,
                        notification_rules: rules,
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["notification_rules".into()],
                    }),
                    validate_only: false,
                })?)
                .await
                .map_err(explain)?
                .into_inner();
            print_rules(&updated);
        }
    }
    Ok(0)
}
