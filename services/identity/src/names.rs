//! What the directory takes as a name or an address: a new user's user name, display name,
//! email and password; a group's or service principal's display name. Checked at the edge,
//! before anything is stored.

use crate::credentials;
use crate::error::{Error, Result};

/// A new user as asked for, checked.
pub struct NewUser {
    pub user_name: String,
    pub display_name: String,
    pub email: String,
    pub password: String,
}

impl NewUser {
    pub fn validate(mut self) -> Result<Self> {
        self.user_name = self.user_name.trim().to_lowercase();
        let n = self.user_name.chars().count();
        if !(3..=256).contains(&n) {
            return Err(Error::invalid("user_name", "must be 3 to 256 characters"));
        }
        if !self
            .user_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@+".contains(c))
        {
            return Err(Error::invalid(
                "user_name",
                "may hold only letters, digits and . _ - @ +",
            ));
        }
        not_an_id("user_name", &self.user_name)?;
        self.display_name = self.display_name.trim().to_owned();
        if self.display_name.is_empty() {
            self.display_name = self.user_name.clone();
        }
        self.display_name = checked_display_name(&self.display_name)?.to_owned();
        self.email = checked_email(&self.email)?.to_owned();
        credentials::check_password_rules(&self.password)?;
        Ok(self)
    }
}

/// A group's or a service principal's display name, trimmed: 1 to 256 characters on one
/// line, none that changes how the text around it shows (it is shown to others: a terminal,
/// a page).
pub(crate) fn checked_display_name(display_name: &str) -> Result<&str> {
    let display_name = pim_runtime::text::name(display_name, 256).map_err(|why| Error::invalid("display_name", why))?;
    if display_name.is_empty() {
        return Err(Error::invalid("display_name", "must be 1 to 256 characters"));
    }
    Ok(display_name)
}

/// Ids and names share one field in every lookup (an id is taken as one wherever it reads as
/// one): a name that reads as an id would stand for another principal wherever that id is
/// given.
fn not_an_id(field: &'static str, name: &str) -> Result<()> {
    match uuid::Uuid::parse_str(name) {
        Ok(_) => Err(Error::invalid(field, "must not read as an id (a UUID)")),
        Err(_) => Ok(()),
    }
}

/// A group's or service principal's display name, checked as [`checked_display_name`] and
/// never a built-in role's lookalike (`text::own_name`), nor one that stands for another
/// principal wherever names are taken: one that reads as an
/// id (a UUID), or that starts as the CLI writes a principal's kind (`user:`, `group:`,
/// `service-principal:`), so an export applied again, or a name typed, names this one alone.
pub(crate) fn checked_principal_name(display_name: &str) -> Result<&str> {
    // Access to a group is named after it ("Group Member of ops"): a group named as a role
    // would read as that role in every record and mail.
    let display_name =
        pim_runtime::text::own_name(display_name, 256).map_err(|why| Error::invalid("display_name", why))?;
    if display_name.is_empty() {
        return Err(Error::invalid("display_name", "must be 1 to 256 characters"));
    }
    not_an_id("display_name", display_name)?;
    let lower = display_name.to_ascii_lowercase();
    if ["user:", "group:", "service-principal:"]
        .iter()
        .any(|kind| lower.starts_with(kind))
    {
        return Err(Error::invalid(
            "display_name",
            "must not start with user:, group: or service-principal: (how names of a kind are written)",
        ));
    }
    Ok(display_name)
}

/// A group's or service principal's name refused by the database, once the transaction that
/// tried it is rolled back: taken (as [`taken`]), or reading as another's (`орѕ`, Cyrillic,
/// beside `ops`: their lookalike keys are held once), which the message names.
pub(crate) async fn name_refused(
    db: &sea_orm::DatabaseConnection,
    err: sea_orm::DbErr,
    kind: &str,
    table: &str,
    name: &str,
) -> Error {
    if !pim_runtime::db::is_lookalike_violation(&err) {
        return taken(err, kind, name);
    }
    match pim_runtime::db::name_read_as(db, table, "display_name", name).await {
        Ok(held) => match held.and_then(|held| pim_runtime::text::reads_as(kind, name, &held)) {
            Some(why) => Error::AlreadyExists(why),
            None => taken(err, kind, name),
        },
        Err(lookup) => lookup.into(),
    }
}

/// A write refused because the name is taken (each user name, group name and service
/// principal name is held once, by a unique index, and each user's email address):
/// ALREADY_EXISTS, naming it. Any other failure stays what it was.
pub(crate) fn taken(err: sea_orm::DbErr, kind: &str, name: &str) -> Error {
    // The unique index over the email's key (`users_email`, on `email_key`): PostgreSQL names
    // the index, SQLite the column (never "email" alone: a user name may hold the word).
    let said = err.to_string();
    if pim_runtime::db::is_unique_violation(&err)
        && (said.contains("\"users_email\"") || said.contains("users.email_key"))
    {
        Error::AlreadyExists("another user has this email address (each address is one user's)".into())
    } else if pim_runtime::db::is_unique_violation(&err) {
        Error::AlreadyExists(format!("a {kind} named {name} already exists"))
    } else {
        err.into()
    }
}

/// A user's email address, trimmed (empty: none): one `@` between a local part and a domain,
/// printable ASCII with no white space (mail goes to it: a line break would add a header), no
/// quoted or commented local part and no empty label in the domain, so one mailbox is written
/// one way only (the address is one user's, whatever its case: `"kim"@example.com`,
/// `kim@example.com.` or a Kelvin sign for `K` would be another user's under another spelling).
pub(crate) fn checked_email(email: &str) -> Result<&str> {
    let email = email.trim();
    let plain = |part: &str| {
        !part.is_empty()
            && part.chars().all(|c| {
                c.is_ascii_graphic() && !matches!(c, '"' | '(' | ')' | ',' | ';' | '<' | '>' | '[' | ']' | '\\')
            })
    };
    let labels = |domain: &str| domain.split('.').all(|label| !label.is_empty());
    match email.split_once('@') {
        _ if email.is_empty() => Ok(email),
        Some((local, domain))
            if email.len() <= 320 && plain(local) && plain(domain) && !domain.contains('@') && labels(domain) =>
        {
            Ok(email)
        }
        _ => Err(Error::invalid(
            "email",
            "must be an email address (name@domain, printable ASCII, no quotes)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_user(name: &str, password: &str) -> NewUser {
        NewUser {
            user_name: name.into(),
            display_name: String::new(),
            email: String::new(),
            password: password.into(),
        }
    }

    /// One mailbox is written one way: no quoted local part, no trailing dot, no look-alike
    /// letter, nothing a header could be made of.
    #[test]
    fn an_email_address_is_written_one_way() {
        for ok in ["", " kim@example.com ", "kim.o'neil+pim@mail.example.co.uk"] {
            assert_eq!(checked_email(ok).map_err(|e| e.to_string()), Ok(ok.trim()));
        }
        for other_spelling in [
            "\"kim\"@example.com",
            "kim@example.com.",
            "kim@.example.com",
            "kim@example..com",
            "\u{212A}im@example.com",
            "kim(work)@example.com",
            "kim@example.com\r\nBcc: eve@example.com",
            "Kim <kim@example.com>",
            "kim@example.com,eve@example.com",
            "kim",
        ] {
            assert!(checked_email(other_spelling).is_err(), "{other_spelling:?}");
        }
    }

    #[test]
    fn user_names_are_normalised_and_checked() {
        let ok = new_user("  Lee@Contoso.Example ", "long enough password")
            .validate()
            .unwrap();
        assert_eq!(ok.user_name, "lee@contoso.example");
        assert_eq!(ok.display_name, "lee@contoso.example");
        for bad in ["", "ab", "has space", "semi;colon"] {
            assert!(matches!(
                new_user(bad, "long enough password").validate(),
                Err(Error::InvalidArgument { field: "user_name", .. })
            ));
        }
        assert!(matches!(
            new_user("lee", "short").validate(),
            Err(Error::InvalidArgument { field: "password", .. })
        ));
    }
}
