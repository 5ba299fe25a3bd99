//! Where notification mail waits to be sent, and where people are reached.

use sea_orm::{ConnectionTrait, DbErr, QueryResult};

use pim_runtime::db::{self, col};

use crate::queue::Queue;

/// The tables (migration m0006_mail).
pub const MIGRATION: &str = "CREATE TABLE mail_addresses (
        principal_id TEXT PRIMARY KEY,
        email TEXT NOT NULL,
        disabled BOOLEAN NOT NULL DEFAULT FALSE
    );
    CREATE TABLE mail_group_members (
        group_id TEXT NOT NULL,
        member_id TEXT NOT NULL,
        PRIMARY KEY (group_id, member_id)
    );
    CREATE TABLE mail_outbox (
        id TEXT PRIMARY KEY,
        position BIGINT NOT NULL,
        event_id TEXT NOT NULL,
        party TEXT NOT NULL,
        recipient TEXT NOT NULL,
        subject TEXT NOT NULL,
        text_body TEXT NOT NULL,
        html_body TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        last_error TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        next_attempt_at BIGINT NOT NULL,
        first_attempt_at BIGINT,
        sent_at BIGINT,
        UNIQUE (event_id, party, recipient)
    );
    CREATE INDEX mail_outbox_due ON mail_outbox (status, next_attempt_at)";

/// Groups' owners (migration m0010_mail_group_owners).
pub const OWNERS_MIGRATION: &str = "CREATE TABLE mail_group_owners (
        group_id TEXT NOT NULL,
        owner_id TEXT NOT NULL,
        PRIMARY KEY (group_id, owner_id)
    )";

/// One mail to one recipient.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mail {
    pub id: String,
    pub position: i64,
    pub event_id: String,
    pub party: String,
    pub recipient: String,
    pub subject: String,
    pub text_body: String,
    pub html_body: String,
    pub status: String,
    pub attempts: i32,
    pub last_error: String,
    pub created_at: i64,
    pub next_attempt_at: i64,
    pub first_attempt_at: Option<i64>,
    pub sent_at: Option<i64>,
}

const COLUMNS: &str = "id, position, event_id, party, recipient, subject, text_body, html_body, status, attempts, last_error, created_at, next_attempt_at, first_attempt_at, sent_at";

impl Mail {
    fn from_row(r: &QueryResult) -> Result<Self, DbErr> {
        Ok(Self {
            id: col(r, "id")?,
            position: col(r, "position")?,
            event_id: col(r, "event_id")?,
            party: col(r, "party")?,
            recipient: col(r, "recipient")?,
            subject: col(r, "subject")?,
            text_body: col(r, "text_body")?,
            html_body: col(r, "html_body")?,
            status: col(r, "status")?,
            attempts: col(r, "attempts")?,
            last_error: col(r, "last_error")?,
            created_at: col(r, "created_at")?,
            next_attempt_at: col(r, "next_attempt_at")?,
            first_attempt_at: col(r, "first_attempt_at")?,
            sent_at: col(r, "sent_at")?,
        })
    }
}

/// Where a principal is reached (empty: nowhere, which forgets it).
pub async fn set_address<C: ConnectionTrait>(c: &C, principal_id: &str, email: &str) -> Result<(), DbErr> {
    if email.is_empty() {
        db::exec(
            c,
            "DELETE FROM mail_addresses WHERE principal_id = $1",
            vec![principal_id.into()],
        )
        .await?;
        return Ok(());
    }
    db::exec(
        c,
        "INSERT INTO mail_addresses (principal_id, email, disabled) VALUES ($1, $2, FALSE)
         ON CONFLICT (principal_id) DO UPDATE SET email = excluded.email",
        vec![principal_id.into(), email.into()],
    )
    .await?;
    Ok(())
}

/// The known addresses of these principals, disabled or not (a Shared Signals subject).
pub async fn addresses_of<C: ConnectionTrait>(
    c: &C,
    principal_ids: &[&str],
) -> Result<std::collections::HashMap<String, String>, DbErr> {
    let mut known = std::collections::HashMap::new();
    for r in rows_in(
        c,
        "SELECT principal_id, email FROM mail_addresses WHERE principal_id",
        principal_ids,
    )
    .await?
    {
        known.insert(col(&r, "principal_id")?, col(&r, "email")?);
    }
    Ok(known)
}

/// The principal an address belongs to, if one user has it.
pub async fn principal_of_address<C: ConnectionTrait>(c: &C, email: &str) -> Result<Option<String>, DbErr> {
    let rows = db::query(
        c,
        "SELECT principal_id FROM mail_addresses WHERE LOWER(email) = LOWER($1) LIMIT 2",
        vec![email.trim().into()],
    )
    .await?;
    match rows.as_slice() {
        [one] => Ok(Some(col(one, "principal_id")?)),
        _ => Ok(None),
    }
}

/// The known members of those of these principals that are groups.
pub async fn members_of<C: ConnectionTrait>(
    c: &C,
    group_ids: &[&str],
) -> Result<std::collections::HashMap<String, std::collections::BTreeSet<String>>, DbErr> {
    let mut members: std::collections::HashMap<String, std::collections::BTreeSet<String>> =
        std::collections::HashMap::new();
    for r in rows_in(
        c,
        "SELECT group_id, member_id FROM mail_group_members WHERE group_id",
        group_ids,
    )
    .await?
    {
        members
            .entry(col(&r, "group_id")?)
            .or_default()
            .insert(col(&r, "member_id")?);
    }
    Ok(members)
}

/// The rows of `select` (ending in the column to match) whose column is one of `ids`, read in
/// chunks within both databases' parameter limits.
async fn rows_in<C: ConnectionTrait>(c: &C, select: &str, ids: &[&str]) -> Result<Vec<QueryResult>, DbErr> {
    let mut rows = Vec::new();
    for chunk in ids.chunks(500) {
        let list: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!("{select} IN ({})", list.join(", "));
        rows.extend(db::query(c, &sql, chunk.iter().map(|id| (*id).into()).collect()).await?);
    }
    Ok(rows)
}

/// Whether a user is disabled (a disabled user is mailed nothing).
pub async fn set_disabled<C: ConnectionTrait>(c: &C, principal_id: &str, disabled: bool) -> Result<(), DbErr> {
    db::exec(
        c,
        "UPDATE mail_addresses SET disabled = $2 WHERE principal_id = $1",
        vec![principal_id.into(), disabled.into()],
    )
    .await?;
    Ok(())
}

/// A group's member joined or left (`joined`), or the group is gone (`member` empty).
pub async fn set_member<C: ConnectionTrait>(c: &C, group_id: &str, member: &str, joined: bool) -> Result<(), DbErr> {
    set_link(c, "mail_group_members", "member_id", group_id, member, joined).await
}

/// A group's owner added or removed (`added`), or the group is gone (`owner` empty).
pub async fn set_owner<C: ConnectionTrait>(c: &C, group_id: &str, owner: &str, added: bool) -> Result<(), DbErr> {
    set_link(c, "mail_group_owners", "owner_id", group_id, owner, added).await
}

/// Keeps a group's link to a principal in `table` (its `column`): made, ended, or every
/// one of the group's ended (`principal` empty).
async fn set_link<C: ConnectionTrait>(
    c: &C,
    table: &'static str,
    column: &'static str,
    group_id: &str,
    principal: &str,
    linked: bool,
) -> Result<(), DbErr> {
    let (sql, values): (String, Vec<sea_orm::Value>) = match (principal, linked) {
        ("", _) => (
            format!("DELETE FROM {table} WHERE group_id = $1"),
            vec![group_id.into()],
        ),
        (_, true) => (
            format!("INSERT INTO {table} (group_id, {column}) VALUES ($1, $2) ON CONFLICT DO NOTHING"),
            vec![group_id.into(), principal.into()],
        ),
        (_, false) => (
            format!("DELETE FROM {table} WHERE group_id = $1 AND {column} = $2"),
            vec![group_id.into(), principal.into()],
        ),
    };
    db::exec(c, &sql, values).await?;
    Ok(())
}

/// The known owners of these groups.
pub async fn owners_of<C: ConnectionTrait>(c: &C, group_ids: &[&str]) -> Result<Vec<String>, DbErr> {
    rows_in(c, "SELECT owner_id FROM mail_group_owners WHERE group_id", group_ids)
        .await?
        .iter()
        .map(|r| col(r, "owner_id"))
        .collect()
}

/// The addresses of those principals, and of the members of those that are groups, that have
/// one; never `except`'s (a requester is not asked to approve themselves).
pub async fn addresses<C: ConnectionTrait>(
    c: &C,
    principal_ids: &[String],
    except: &str,
) -> Result<Vec<String>, DbErr> {
    if principal_ids.is_empty() {
        return Ok(Vec::new());
    }
    let placeholders: Vec<String> = (2..=principal_ids.len() + 1).map(|i| format!("${i}")).collect();
    let list = placeholders.join(", ");
    let mut values: Vec<sea_orm::Value> = vec![except.into()];
    values.extend(principal_ids.iter().map(|id| id.clone().into()));
    db::query(
        c,
        &format!(
            "SELECT DISTINCT email FROM mail_addresses
             WHERE principal_id <> $1 AND disabled = FALSE
               AND (principal_id IN ({list})
                    OR principal_id IN (SELECT member_id FROM mail_group_members WHERE group_id IN ({list})))
             ORDER BY email"
        ),
        values,
    )
    .await?
    .iter()
    .map(|r| col(r, "email"))
    .collect()
}

/// Queues a mail unless this event's mail to this recipient as this party is queued already.
pub async fn insert<C: ConnectionTrait>(c: &C, m: &Mail) -> Result<bool, DbErr> {
    Ok(db::exec(
        c,
        &format!(
            "INSERT INTO mail_outbox ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
             ON CONFLICT (event_id, party, recipient) DO NOTHING"
        ),
        vec![
            m.id.clone().into(),
            m.position.into(),
            m.event_id.clone().into(),
            m.party.clone().into(),
            m.recipient.clone().into(),
            m.subject.clone().into(),
            m.text_body.clone().into(),
            m.html_body.clone().into(),
            m.status.clone().into(),
            m.attempts.into(),
            m.last_error.clone().into(),
            m.created_at.into(),
            m.next_attempt_at.into(),
            m.first_attempt_at.into(),
            m.sent_at.into(),
        ],
    )
    .await?
        == 1)
}

/// Mail whose next attempt is due, oldest first.
/// The newest mail (to `recipient` only, when given), newest first.
pub async fn history<C: ConnectionTrait>(c: &C, recipient: Option<&str>, limit: u64) -> Result<Vec<Mail>, DbErr> {
    db::query(
        c,
        &format!(
            "SELECT {COLUMNS} FROM mail_outbox WHERE ($1 = '' OR LOWER(recipient) = LOWER($1))
             ORDER BY created_at DESC, position DESC, id DESC LIMIT $2"
        ),
        vec![recipient.unwrap_or_default().into(), (limit as i64).into()],
    )
    .await?
    .iter()
    .map(Mail::from_row)
    .collect()
}

pub async fn due<C: ConnectionTrait>(c: &C, now: i64, limit: u64) -> Result<Vec<Mail>, DbErr> {
    db::query(
        c,
        &format!(
            "SELECT {COLUMNS} FROM mail_outbox WHERE status = 'pending' AND next_attempt_at <= $1
             ORDER BY position, id LIMIT $2"
        ),
        vec![now.into(), (limit as i64).into()],
    )
    .await?
    .iter()
    .map(Mail::from_row)
    .collect()
}

/// Takes a due mail for one attempt (see [`Queue::claim`]).
pub async fn claim<C: ConnectionTrait>(c: &C, m: &Mail, now: i64, lease_until: i64) -> Result<bool, DbErr> {
    Queue::MailOutbox
        .claim(c, &m.id, m.next_attempt_at, now, lease_until)
        .await
}

/// An attempt's outcome, written under the claim that made it (`lease`): sent, pending until
/// `next_attempt_at`, or dead.
pub async fn attempted<C: ConnectionTrait>(
    c: &C,
    id: &str,
    lease: i64,
    status: &str,
    error: &str,
    next_attempt_at: i64,
    now: i64,
) -> Result<bool, DbErr> {
    Ok(db::exec(
        c,
        "UPDATE mail_outbox SET status = $2, attempts = attempts + 1, last_error = $3, next_attempt_at = $4,
             sent_at = CASE WHEN $2 = 'sent' THEN $5 ELSE sent_at END
         WHERE id = $1 AND status = 'pending' AND next_attempt_at = $6",
        vec![
            id.into(),
            status.into(),
            error.into(),
            next_attempt_at.into(),
            now.into(),
            lease.into(),
        ],
    )
    .await?
        == 1)
}

/// The mail queued for one event, in order.
#[cfg(test)]
pub async fn of_event<C: ConnectionTrait>(c: &C, event_id: &str) -> Result<Vec<Mail>, DbErr> {
    db::query(
        c,
        &format!("SELECT {COLUMNS} FROM mail_outbox WHERE event_id = $1 ORDER BY party, recipient"),
        vec![event_id.into()],
    )
    .await?
    .iter()
    .map(Mail::from_row)
    .collect()
}

/// Forgets mail sent or given up before `before`; how many.
pub async fn forget_settled<C: ConnectionTrait>(c: &C, before: i64) -> Result<u64, DbErr> {
    Queue::MailOutbox.forget_settled(c, before).await
}
