//! Notifications by email. Assignment says who must hear of a change (`NotificationsDue`, as
//! the role's notification rules say); audit, which keeps where each user is reached (from
//! identity's events), writes one mail per recipient in the transaction that keeps the record,
//! and a sender delivers them over SMTP (lettre), retried with backoff for 24 hours. A mail
//! says who, what role, where, why, until when, and links to the request when PIM's public
//! URL is known; it holds nothing secret.

pub(crate) mod store;

use std::sync::Arc;
use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::Value;

use pim_runtime::db::{Db, now_ms};

use crate::chain::Record;
use crate::queue::{GIVE_UP_AFTER_MS, next_attempt};
use pim_runtime::events::EventType;
use store::Mail;

/// How long a claimed mail is another replica's to leave alone.
const LEASE_MS: i64 = 60_000;
/// How long one SMTP conversation may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// The address a record gives its target, if it says one: a user created, updated or
/// announced (empty: none now), or deleted (empty).
pub fn announced_address(r: &Record) -> Option<String> {
    match r.event_type() {
        Some(EventType::UserCreated | EventType::UserUpdated | EventType::UserAddressAnnounced) => Some(
            serde_json::from_str::<Value>(&r.payload_json)
                .ok()
                .and_then(|p| p["email"].as_str().map(|e| e.trim().to_owned()))
                .unwrap_or_default(),
        ),
        Some(EventType::UserDeleted) => Some(String::new()),
        _ => None,
    }
}

/// The membership change a record says, if it says one: (group, member, joined); a deleted
/// group has no member left (member empty).
pub fn announced_membership(r: &Record) -> Option<(String, String, bool)> {
    announced_link(r, EventType::GroupMemberAdded, EventType::GroupMemberRemoved)
}

/// The ownership change a record says, if it says one: (group, owner, added); a deleted
/// group has no owner left (owner empty).
pub fn announced_ownership(r: &Record) -> Option<(String, String, bool)> {
    announced_link(r, EventType::GroupOwnerAdded, EventType::GroupOwnerRemoved)
}

/// A group's link to a principal that a record says was `added` or `removed`, or the group
/// deleted (every link gone: the principal empty).
fn announced_link(r: &Record, added: EventType, removed: EventType) -> Option<(String, String, bool)> {
    let group = || {
        serde_json::from_str::<Value>(&r.payload_json)
            .ok()
            .and_then(|p| p["group_id"].as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    match r.event_type()? {
        EventType::GroupDeleted => Some((r.target_id.clone(), String::new(), false)),
        t if t == added => Some((group(), r.target_id.clone(), true)),
        t if t == removed => Some((group(), r.target_id.clone(), false)),
        _ => None,
    }
}

/// Learns where principals are reached from the records that say it: a user created or
/// updated (with or without an address), disabled (no mail until enabled again), deleted; a
/// group's members, who are reached through it, and its owners, who approve access to it.
pub async fn learn_addresses<C: sea_orm::ConnectionTrait>(c: &C, records: &[Record]) -> anyhow::Result<()> {
    for r in records {
        if let Some((group, member, joined)) = announced_membership(r) {
            store::set_member(c, &group, &member, joined).await?;
        }
        if let Some((group, owner, added)) = announced_ownership(r) {
            store::set_owner(c, &group, &owner, added).await?;
        }
        match r.event_type() {
            Some(EventType::UserDisabled | EventType::UserDisabledAnnounced) => {
                store::set_disabled(c, &r.target_id, true).await?
            }
            Some(EventType::UserEnabled) => store::set_disabled(c, &r.target_id, false).await?,
            _ => {}
        }
        if let Some(email) = announced_address(r) {
            store::set_address(c, &r.target_id, &email).await?;
        }
    }
    Ok(())
}

/// What the mail of one notice says.
#[derive(Debug, PartialEq)]
pub struct Composed {
    pub subject: String,
    pub text: String,
    pub html: String,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The mail a `NotificationsDue` record gives `party` (admin, assignee, approver, reviewer).
pub fn compose(r: &Record, party: &str, public_url: Option<&str>) -> Composed {
    let payload: Value = serde_json::from_str(&r.payload_json).unwrap_or_default();
    let who = if r.target_name.is_empty() {
        &r.target_id
    } else {
        &r.target_name
    };
    let role = if r.role_name.is_empty() {
        &r.role_id
    } else {
        &r.role_name
    };
    let scope = if r.scope.is_empty() { "/" } else { &r.scope };
    let happening = payload["happening"].as_str().unwrap_or_default();
    let awaiting = matches!(happening, "awaiting_approval" | "approval_reminder");
    let review = payload["review_name"].as_str().unwrap_or_default();
    let review_id = payload["review_id"].as_str().unwrap_or_default();
    let items = match payload["undecided_items"].as_i64().unwrap_or_default() {
        1 => "1 assignment".to_owned(),
        n => format!("{n} assignments"),
    };
    let event = payload["event"].as_str().unwrap_or_default();
    let reason = payload["reason"].as_str().unwrap_or_default();
    let yours = party == "assignee";
    // What the request asks: to activate, or to keep an assignment longer or again.
    let kind = payload["assignment_kind"]
        .as_str()
        .filter(|k| *k != "unspecified")
        .unwrap_or("");
    let (asks, asking) = match payload["request_action"].as_str().unwrap_or_default() {
        "selfExtend" => (
            format!("to extend their {kind} assignment of"),
            format!("extending their {kind} assignment of"),
        ),
        "selfRenew" => (
            format!("to renew their {kind} assignment of"),
            format!("renewing their {kind} assignment of"),
        ),
        _ => ("to activate".to_owned(), "activating".to_owned()),
    };
    let (asks, asking) = (asks.replace("  ", " "), asking.replace("  ", " "));
    let (subject, said) = match (happening, event, yours) {
        ("awaiting_approval", _, _) => (
            format!("PIM: approval needed: {who} requests {role}"),
            format!("{who} asks {asks} {role} at {scope} and waits for your decision."),
        ),
        ("approval_reminder", _, _) => (
            format!("PIM: reminder: approval needed: {who} requests {role}"),
            format!("{who} still waits for your decision on {asking} {role} at {scope}."),
        ),
        ("review_started", _, _) => (
            format!("PIM: access review {review:?} started: {role}"),
            format!("The access review {review:?} of {role} at {scope} started: {items} to decide."),
        ),
        ("review_reminder", _, _) => (
            format!("PIM: reminder: access review {review:?} waits for you"),
            format!("The access review {review:?} of {role} at {scope} still has {items} undecided."),
        ),
        ("denied", _, _) => (
            format!("PIM: your request for {role} was not approved"),
            format!(
                "Your request {} {role} at {scope} was not approved: {reason}.",
                asks.replace("their", "your")
            ),
        ),
        ("expiring", _, _) => (
            format!("PIM: your role {role} ends soon"),
            format!("Your role {role} at {scope} ends soon: extend it if you still need it (pim extend)."),
        ),
        ("shortened", _, true) => (
            format!("PIM: your role {role} now ends earlier"),
            format!("Your role {role} at {scope} now ends earlier: what allowed it was moved earlier ({reason})."),
        ),
        ("shortened", _, false) => (
            format!("PIM: {who}'s role {role} now ends earlier"),
            format!("{who}'s role {role} at {scope} now ends earlier: what allowed it was moved earlier ({reason})."),
        ),
        ("ended", _, true) => (
            format!("PIM: your role {role} ended"),
            format!("Your role {role} at {scope} ended ({reason})."),
        ),
        ("ended", _, false) => (
            format!("PIM: {who}'s role {role} ended"),
            format!("{who}'s role {role} at {scope} ended ({reason})."),
        ),
        (_, "activation", true) => (
            format!("PIM: you activated {role}"),
            format!("Your role {role} at {scope} is active."),
        ),
        (_, "activation", false) => (
            format!("PIM: {who} activated {role}"),
            format!("{who} activated {role} at {scope}."),
        ),
        (_, "eligible_assignment", true) => (
            format!("PIM: you are eligible for {role}"),
            format!("You are eligible for {role} at {scope}: activate it when you need it."),
        ),
        (_, "eligible_assignment", false) => (
            format!("PIM: {who} is eligible for {role}"),
            format!("{who} was made eligible for {role} at {scope}."),
        ),
        (_, _, true) => (
            format!("PIM: you were assigned {role}"),
            format!("You were assigned {role} at {scope}, active now."),
        ),
        _ => (
            format!("PIM: {who} was assigned {role}"),
            format!("{who} was assigned {role} at {scope}, active now."),
        ),
    };
    let until = payload["end_time"].as_str().unwrap_or("no end (permanent)");
    let request_id = payload["request_id"].as_str().unwrap_or_default();
    let reviewing = !review_id.is_empty();
    let mut facts = if reviewing {
        vec![
            ("Review", review.to_string()),
            ("Role", role.to_string()),
            ("Scope", scope.to_string()),
            ("Ends", until.to_string()),
            ("Undecided", items.clone()),
        ]
    } else {
        vec![
            ("Who", who.to_string()),
            ("Role", role.to_string()),
            ("Scope", scope.to_string()),
            ("Until", until.to_string()),
        ]
    };
    if !r.justification.is_empty() {
        facts.push(("Justification", r.justification.clone()));
    }
    if !r.ticket.is_empty() {
        facts.push(("Ticket", r.ticket.clone()));
    }
    if !reviewing && !r.actor_name.is_empty() && r.actor_id != r.target_id {
        facts.push(("By", r.actor_name.clone()));
    }
    if awaiting && !reason.is_empty() {
        facts.push(("Note", reason.to_owned()));
    }
    if !request_id.is_empty() {
        facts.push(("Request", request_id.to_owned()));
    }
    if reviewing {
        facts.push(("Review id", review_id.to_owned()));
    }
    let link = match (public_url, request_id) {
        (Some(base), _) if reviewing => Some(format!("{base}/reviews/{review_id}")),
        (Some(base), id) if !id.is_empty() && awaiting => Some(format!("{base}/approvals/{id}")),
        (Some(base), id) if !id.is_empty() => Some(format!("{base}/requests/{id}")),
        _ => None,
    };
    let action = if reviewing {
        Some(format!(
            "Decide with: pim reviews items {review_id} (to see them), then pim reviews decide ITEM --approve or --deny"
        ))
    } else {
        let id = if request_id.is_empty() { "ID" } else { request_id };
        awaiting.then(|| {
            format!("Decide with: pim approvals --id {id} (to see it), then pim approve {id} or pim deny {id} -j WHY")
        })
    };
    let mut text = format!("{said}\n\n");
    for (name, value) in &facts {
        text.push_str(&fact_line(name, value));
    }
    if let Some(action) = &action {
        text.push_str(&format!("\n{action}\n"));
    }
    if let Some(link) = &link {
        text.push_str(&format!("\n{link}\n"));
    }
    let mut html = format!("<p>{}</p>\n<table>\n", escape(&said));
    for (name, value) in &facts {
        html.push_str(&format!(
            "<tr><th align=\"left\">{}</th><td>{}</td></tr>\n",
            escape(name),
            escape(value)
        ));
    }
    html.push_str("</table>\n");
    if let Some(action) = &action {
        html.push_str(&format!("<p>{}</p>\n", escape(action)));
    }
    if let Some(link) = &link {
        html.push_str(&format!("<p><a href=\"{0}\">{0}</a></p>\n", escape(link)));
    }
    // A name written before names refused them may hold a MIME encoded-word, which a mail
    // reader would show decoded (any character, a bidirectional override included): broken
    // here, it shows as written.
    let subject = subject.replace("=?", "= ?");
    Composed { subject, text, html }
}

/// Whether an `smtp://` URL signs in (user info) without requiring TLS (`?tls=required`):
/// lettre may then send the password in clear.
fn plain_with_password(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("smtp://") else {
        return false;
    };
    // User info ends at the last @ before the query (a password may hold a /).
    let signs_in = rest.split('?').next().unwrap_or_default().contains('@');
    // Opportunistic TLS can be stripped on the way: only required TLS keeps it.
    signs_in && !url.contains("tls=required")
}

/// A fact as the plain-text part shows it: `name: value`, except that what someone wrote
/// over several lines (a justification, a reason) goes under its name, each line marked as
/// quoted, so it cannot pass for the mail's own words ("pre-approved, sign in at …").
fn fact_line(name: &str, value: &str) -> String {
    if !value.contains(['\n', '\r']) {
        return format!("{name}: {value}\n");
    }
    // Every line break counts, a lone CR too (a mail client may show it as one).
    let value = value.replace("\r\n", "\n");
    value.split(['\r', '\n']).fold(format!("{name}:\n"), |mut out, line| {
        out.push_str("    > ");
        out.push_str(line);
        out.push('\n');
        out
    })
}

/// Queues the mail of every `NotificationsDue` record, one per recipient (a principal's
/// address, or an address a rule names); a principal nobody can reach is passed over.
pub async fn enqueue<C: sea_orm::ConnectionTrait>(
    c: &C,
    records: &[Record],
    now: i64,
    public_url: Option<&str>,
) -> anyhow::Result<usize> {
    let mut queued = 0;
    for r in records.iter().filter(|r| r.action.ends_with(".NotificationsDue")) {
        let payload: Value = serde_json::from_str(&r.payload_json).unwrap_or_default();
        for notice in payload["notices"].as_array().into_iter().flatten() {
            let party = notice["party"].as_str().unwrap_or_default();
            let strings = |field: &str| -> Vec<String> {
                notice[field]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            };
            let mut ids = strings("principal_ids");
            // The owners of the groups it names, as the directory keeps them.
            let groups = strings("owners_of");
            let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
            ids.extend(store::owners_of(c, &groups).await?);
            // Whoever asked is never asked to approve it, even through a group.
            let except = if notice["critical"].as_bool().unwrap_or(false) {
                r.target_id.as_str()
            } else {
                ""
            };
            let mut to = store::addresses(c, &ids, except).await?;
            to.extend(
                notice["emails"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_owned)),
            );
            to.sort();
            to.dedup();
            let composed = compose(r, party, public_url);
            for recipient in to {
                let mail = Mail {
                    id: uuid::Uuid::now_v7().to_string(),
                    position: r.sequence,
                    event_id: r.event_id.clone(),
                    party: party.to_owned(),
                    recipient,
                    subject: composed.subject.clone(),
                    text_body: composed.text.clone(),
                    html_body: composed.html.clone(),
                    status: "pending".into(),
                    created_at: now,
                    next_attempt_at: now,
                    ..Mail::default()
                };
                queued += usize::from(store::insert(c, &mail).await?);
            }
        }
    }
    Ok(queued)
}

/// Sends queued mail over SMTP.
#[derive(Clone)]
pub struct Mailer {
    db: Db,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    pub(crate) public_url: Option<String>,
    /// Woken when mail is queued.
    pub(crate) wake: Arc<tokio::sync::Notify>,
}

impl Mailer {
    /// A mailer for `PIM_SMTP_URL` sending as `PIM_SMTP_FROM`.
    pub fn new(db: Db, url: &str, from: &str, public_url: Option<String>) -> anyhow::Result<Self> {
        use anyhow::Context;
        if plain_with_password(url) {
            tracing::warn!(
                "PIM_SMTP_URL signs in to the mail server without TLS: its password crosses the network in clear (use smtps:// or ?tls=required)"
            );
        }
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| anyhow::anyhow!("PIM_SMTP_URL is not usable: {e}"))?
            .timeout(Some(SEND_TIMEOUT))
            .build();
        let from: Mailbox = from
            .parse()
            .with_context(|| format!("PIM_SMTP_FROM {from:?} is not a mailbox (e.g. PIM <pim@example.com>)"))?;
        Ok(Self {
            db,
            transport,
            from,
            public_url,
            wake: Arc::default(),
        })
    }

    /// Sends until `stop`: what is due, whenever mail is queued, else every second.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            if let Err(err) = self.round(now_ms()).await {
                tracing::warn!(error = %format!("{err:#}"), "sending notification mail failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = self.wake.notified() => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Attempts every due mail once, as of `now`; how many were attempted.
    pub async fn round(&self, now: i64) -> anyhow::Result<usize> {
        let mut attempted = 0;
        for mail in store::due(&self.db, now, 64).await? {
            // Each mail's claim from when it is taken (the ones before it took their time).
            let now = now_ms().max(now);
            let lease = now + LEASE_MS;
            if !store::claim(&self.db, &mail, now, lease).await? {
                continue;
            }
            attempted += 1;
            let span = tracing::info_span!("notification mail", mail = %mail.id, party = %mail.party);
            let outcome = tracing::Instrument::instrument(self.send(&mail), span).await;
            let after = now_ms().max(now);
            let metrics = pim_runtime::metrics::metrics();
            let since = mail.first_attempt_at.unwrap_or(now);
            let (status, error, next, outcome_label) = match outcome {
                Ok(()) => ("sent", String::new(), after, "sent"),
                Err(Failure::Permanent(error)) => ("dead", error, after, "dead"),
                Err(Failure::Transient(error)) if after - since >= GIVE_UP_AFTER_MS => ("dead", error, after, "dead"),
                Err(Failure::Transient(error)) => ("pending", error, next_attempt(after, mail.attempts + 1), "retry"),
            };
            metrics.mail_attempts.with_label_values(&[outcome_label]).inc();
            match outcome_label {
                "sent" => tracing::info!(mail = %mail.id, party = %mail.party, "notification mail sent"),
                "retry" => tracing::warn!(mail = %mail.id, %error, "notification mail not sent; retrying"),
                _ => tracing::error!(mail = %mail.id, %error, "notification mail given up"),
            }
            store::attempted(&self.db, &mail.id, lease, status, &error, next, after).await?;
        }
        Ok(attempted)
    }

    async fn send(&self, mail: &Mail) -> Result<(), Failure> {
        let to: Mailbox = mail
            .recipient
            .parse()
            .map_err(|e| Failure::Permanent(format!("the recipient is not an address: {e}")))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject.clone())
            .multipart(MultiPart::alternative_plain_html(
                mail.text_body.clone(),
                mail.html_body.clone(),
            ))
            .map_err(|e| Failure::Permanent(format!("the mail could not be built: {e}")))?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(Failure::Permanent(format!("the server refused it: {e}"))),
            Err(e) => Err(Failure::Transient(format!("{e}"))),
        }
    }
}

enum Failure {
    /// The server refused it for good (or it cannot be sent): not tried again.
    Permanent(String),
    Transient(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(event: &str, awaiting: bool) -> Record {
        Record {
            event_id: "e1".into(),
            action: "pim.assignment.v1.NotificationsDue".into(),
            actor_id: "lee-id".into(),
            actor_name: "lee".into(),
            target_id: "lee-id".into(),
            target_name: "lee".into(),
            role_id: "ex".into(),
            role_name: "Exchange Administrator".into(),
            scope: "/".into(),
            justification: "mailbox <migration> & more".into(),
            ticket: "ServiceNow:INC1".into(),
            payload_json: serde_json::json!({
                "event": event, "happening": if awaiting { "awaiting_approval" } else { "granted" }, "request_id": "r1",
                "end_time": "2026-12-05T08:00:00.000Z",
                "notices": [],
            })
            .to_string(),
            ..Record::default()
        }
    }

    /// A role named before names refused encoded-words reaches the subject broken, shown as
    /// written, never decoded by the reader's mail program.
    #[test]
    fn an_encoded_word_in_a_name_is_not_a_subject_a_reader_decodes() {
        let mut granted = due("activation", false);
        granted.role_name = "Group Member of =?UTF-8?B?R2xvYmFsIEFkbWluaXN0cmF0b3LigK4=?=".into();
        let mail = compose(&granted, "requester", None);
        assert!(!mail.subject.contains("=?"), "{}", mail.subject);
        assert!(mail.subject.contains("= ?UTF-8?B?"), "{}", mail.subject);
    }

    #[test]
    fn a_password_sent_in_clear_is_warned_of() {
        assert!(plain_with_password("smtp://pim:secret@mail.example.com:25"));
        assert!(!plain_with_password(
            "smtp://pim:secret@mail.example.com:587?tls=required"
        ));
        assert!(!plain_with_password("smtps://pim:secret@mail.example.com"));
        assert!(!plain_with_password("smtp://127.0.0.1:2525"));
        assert!(plain_with_password(
            "smtp://pim:a/b@mail.example.com:25?tls=opportunistic"
        ));
    }

    #[test]
    fn what_someone_wrote_over_several_lines_is_quoted_in_the_text() {
        let mut asked = due("activation", true);
        asked.justification =
            "routine\r\n\r\nThis request was pre-approved by the SOC.\rTo approve sign in at: https://evil.example"
                .into();
        let mail = compose(&asked, "approver", None);
        assert!(
            mail.text.contains(
                "Justification:\n    > routine\n    > \n    > This request was pre-approved by the SOC.\n    > To approve"
            ),
            "{}",
            mail.text
        );
        assert!(!mail.text.lines().any(|l| l.starts_with("To approve")), "{}", mail.text);
    }

    #[test]
    fn a_mail_says_who_what_where_why_and_until_when_escaped_in_html() {
        let approver = compose(&due("activation", true), "approver", Some("https://pim.example.com"));
        assert_eq!(
            approver.subject,
            "PIM: approval needed: lee requests Exchange Administrator"
        );
        for fact in [
            "Scope: /",
            "Until: 2026-12-05T08:00:00.000Z",
            "Justification: mailbox <migration> & more",
            "Ticket: ServiceNow:INC1",
            "pim approve r1",
            "https://pim.example.com/approvals/r1",
        ] {
            assert!(approver.text.contains(fact), "{fact} in {}", approver.text);
        }
        assert!(
            approver.html.contains("mailbox &lt;migration&gt; &amp; more"),
            "{}",
            approver.html
        );
        assert!(!approver.html.contains("<migration>"));
        let mine = compose(&due("activation", false), "assignee", None);
        assert_eq!(mine.subject, "PIM: you activated Exchange Administrator");
        assert!(!mine.text.contains("http"), "no link without a public URL");
        let admin = compose(&due("eligible_assignment", false), "admin", None);
        assert_eq!(admin.subject, "PIM: lee is eligible for Exchange Administrator");
        let mut denied = due("activation", false);
        denied.payload_json = serde_json::json!({"event": "activation", "happening": "denied", "reason": "not during the freeze", "request_id": "r1"}).to_string();
        let denied = compose(&denied, "assignee", None);
        assert_eq!(
            denied.subject,
            "PIM: your request for Exchange Administrator was not approved"
        );
        assert!(
            denied.text.contains("not approved: not during the freeze."),
            "{}",
            denied.text
        );
        let mut shortened = due("activation", false);
        shortened.payload_json = serde_json::json!({"event": "activation", "happening": "shortened", "reason": "eligibility shortened", "end_time": "2026-12-05T07:30:00.000Z"}).to_string();
        let shortened = compose(&shortened, "assignee", None);
        assert_eq!(
            shortened.subject,
            "PIM: your role Exchange Administrator now ends earlier"
        );
        for fact in ["(eligibility shortened)", "Until: 2026-12-05T07:30:00.000Z"] {
            assert!(shortened.text.contains(fact), "{fact} in {}", shortened.text);
        }
        // A request to keep an assignment is asked as such, and its denial told so.
        let mut extend = due("activation", true);
        extend.payload_json = serde_json::json!({"event": "activation", "happening": "awaiting_approval", "request_id": "r2", "request_action": "selfExtend", "assignment_kind": "active", "end_time": "2026-12-20T08:00:00.000Z"}).to_string();
        let extend = compose(&extend, "approver", None);
        assert!(
            extend
                .text
                .starts_with("lee asks to extend their active assignment of Exchange Administrator at / and waits"),
            "{}",
            extend.text
        );
        let mut renewal = due("activation", false);
        renewal.payload_json = serde_json::json!({"event": "activation", "happening": "denied", "reason": "project over", "request_action": "selfRenew", "assignment_kind": "eligible"}).to_string();
        let renewal = compose(&renewal, "assignee", None);
        assert!(
            renewal.text.contains("Your request to renew your eligible assignment of Exchange Administrator at / was not approved: project over."),
            "{}",
            renewal.text
        );
        let mut reminder = due("activation", true);
        reminder.payload_json = serde_json::json!({"event": "activation", "happening": "approval_reminder", "reason": "reminder: still no decision; it times out at 2026-12-05T08:00:00.000Z", "request_id": "r1"}).to_string();
        let reminder = compose(&reminder, "approver", Some("https://pim.example.com"));
        assert_eq!(
            reminder.subject,
            "PIM: reminder: approval needed: lee requests Exchange Administrator"
        );
        for fact in [
            "Note: reminder: still no decision",
            "pim approve r1",
            "https://pim.example.com/approvals/r1",
        ] {
            assert!(reminder.text.contains(fact), "{fact} in {}", reminder.text);
        }
    }

    #[test]
    fn a_reviewers_mail_names_the_review_what_waits_and_how_to_decide() {
        let mut r = due("", false);
        r.target_id = "rev-1".into();
        r.target_name = "Exchange admins, Q4".into();
        r.justification = String::new();
        r.ticket = String::new();
        r.payload_json = serde_json::json!({
            "happening": "review_started", "review_id": "rev-1", "review_name": "Exchange admins, Q4",
            "undecided_items": 3, "end_time": "2026-12-19T08:00:00.000Z", "notices": [],
        })
        .to_string();
        let started = compose(&r, "reviewer", Some("https://pim.example.com"));
        assert_eq!(
            started.subject,
            "PIM: access review \"Exchange admins, Q4\" started: Exchange Administrator"
        );
        for fact in [
            "3 assignments to decide",
            "Ends: 2026-12-19T08:00:00.000Z",
            "pim reviews items rev-1",
            "https://pim.example.com/reviews/rev-1",
        ] {
            assert!(started.text.contains(fact), "{fact} in {}", started.text);
        }
        assert!(!started.text.contains("Who:"), "a review is about no one person");
        r.payload_json = r.payload_json.replace("review_started", "review_reminder");
        let reminder = compose(&r, "reviewer", None);
        assert_eq!(
            reminder.subject,
            "PIM: reminder: access review \"Exchange admins, Q4\" waits for you"
        );
        assert!(
            reminder.text.contains("still has 3 assignments undecided"),
            "{}",
            reminder.text
        );
    }
}
