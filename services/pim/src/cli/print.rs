//! How every command prints: tables of names (ids beside them with `--ids`), or JSON lines
//! with the ids as `<field>_id`; one status casing and one time format.

use clap::ValueEnum;

/// How a command prints: a table for people, JSON lines for programs.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Output {
    Table,
    Json,
}

/// How this command prints (set once, from its `--output` and `--ids`, when it opens its
/// session).
pub(crate) static OUTPUT: std::sync::OnceLock<(Output, bool)> = std::sync::OnceLock::new();

/// A status as every command prints it: lower case with underscores (`InProgress` →
/// `in_progress`, as `pending_approval`).
pub(crate) fn snake_case(status: &str) -> String {
    let mut out = String::with_capacity(status.len() + 4);
    for (i, c) in status.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

pub(crate) fn time(ms: Option<i64>) -> String {
    match ms {
        None => "permanent".to_owned(),
        Some(ms) => pim_runtime::format::rfc3339_seconds(ms),
    }
}

/// One cell of a printed row: text, or a principal, role or group by its name and id.
pub(crate) enum Cell {
    Text(String),
    Named(Named),
    /// Yes or no: `yes` or `no` in a table, `true` or `false` in JSON.
    Flag(bool),
    /// A number: a number in JSON too, never a string.
    Count(i64),
}

/// A principal, role or group as people read it (its name) and as machines do (its id).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Named {
    pub(crate) name: String,
    pub(crate) id: String,
}

impl std::fmt::Display for Named {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl Named {
    /// `name (id)`, or the name alone when there is no other id to show.
    pub(crate) fn with_id(&self) -> String {
        if self.id.is_empty() || self.id == self.name {
            self.name.clone()
        } else {
            format!("{} ({})", self.name, self.id)
        }
    }
}

impl Cell {
    /// The cell as a table prints it, [`printable`].
    pub(crate) fn shown(self) -> String {
        let text = match self {
            Cell::Text(text) => text,
            Cell::Named(named) if OUTPUT.get().is_some_and(|(_, ids)| *ids) => named.with_id(),
            Cell::Named(named) => named.name,
            Cell::Flag(on) => if on { "yes" } else { "no" }.to_owned(),
            Cell::Count(n) => n.to_string(),
        };
        printable(&text)
    }
}

/// Text from the server as a terminal may show it: what someone else wrote (a justification,
/// a name, an audit record's claims) never moves the cursor, clears the screen or starts a row
/// of its own; its control characters are shown as escapes (`\u{1b}`, `\n`).
pub fn printable(text: &str) -> String {
    use pim_runtime::text::is_unseen;
    if !text.chars().any(is_unseen) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if is_unseen(c) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

impl From<String> for Cell {
    fn from(text: String) -> Self {
        Cell::Text(text)
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Self {
        Cell::Text(text.to_owned())
    }
}

impl From<Named> for Cell {
    fn from(named: Named) -> Self {
        Cell::Named(named)
    }
}

/// Whether `--output json` was asked for.
pub(crate) fn json_wanted() -> bool {
    matches!(OUTPUT.get(), Some((Output::Json, _)))
}

/// What a command made, said once: in `words`, or with `--output json` as one JSON object
/// (`fields`, a secret shown once included), for a script to read.
pub(crate) fn print_made(words: &str, fields: serde_json::Value) {
    if json_wanted() {
        println!("{fields}");
    } else {
        println!("{words}");
    }
}

/// Prints rows under `headers`: a table (names only, or `name (id)` with `--ids`), or with
/// `--output json` one JSON object per row whose fields are the headers in lowercase (spaces
/// and dashes as underscores); a named cell adds its id as `<field>_id`.
pub(crate) fn print_table<C: Into<Cell>>(headers: &[&str], rows: Vec<Vec<C>>) {
    let rows = rows.into_iter().map(|row| row.into_iter().map(Into::into));
    if json_wanted() {
        for line in json_lines(headers, rows) {
            println!("{line}");
        }
        return;
    }
    let rows: Vec<Vec<String>> = rows.map(|row| row.map(Cell::shown).collect()).collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

/// The rows as JSON objects, one per row (see [`print_table`]).
fn json_lines(headers: &[&str], rows: impl Iterator<Item = impl Iterator<Item = Cell>>) -> Vec<serde_json::Value> {
    let keys: Vec<String> = headers
        .iter()
        .map(|h| h.to_lowercase().replace([' ', '-'], "_"))
        .collect();
    rows.map(|row| {
        let mut object = serde_json::Map::new();
        for (key, cell) in keys.iter().zip(row) {
            match cell {
                Cell::Text(text) => {
                    object.insert(key.clone(), text.into());
                }
                Cell::Named(named) => {
                    object.insert(key.clone(), named.name.into());
                    object.insert(format!("{key}_id"), named.id.into());
                }
                Cell::Flag(on) => {
                    object.insert(key.clone(), on.into());
                }
                Cell::Count(n) => {
                    object.insert(key.clone(), n.into());
                }
            }
        }
        serde_json::Value::Object(object)
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::{Cell, printable};

    #[test]
    fn flags_and_counts_are_booleans_and_numbers_in_json() {
        let rows = vec![
            vec![Cell::from("r1"), Cell::Flag(true), Cell::Count(3)],
            vec![Cell::from("r2"), Cell::Flag(false), Cell::Count(0)],
        ];
        let lines = super::json_lines(
            &["ID", "PRIVILEGED", "USES LEFT"],
            rows.into_iter().map(|row| row.into_iter()),
        );
        assert_eq!(
            lines[0],
            serde_json::json!({"id": "r1", "privileged": true, "uses_left": 3})
        );
        assert_eq!(lines[1]["privileged"], false);
        assert_eq!(
            (Cell::Flag(false).shown(), Cell::Count(12).shown()),
            ("no".into(), "12".into())
        );
    }

    #[test]
    fn what_someone_else_wrote_is_shown_not_obeyed() {
        assert_eq!(
            printable("rota\n01a2  approved\u{1b}[8m"),
            "rota\\n01a2  approved\\u{1b}[8m"
        );
        assert_eq!(printable("Lee Gu — été\u{9b}"), "Lee Gu — été\\u{9b}");
        assert_eq!(printable("txt.\u{202e}exe"), "txt.\\u{202e}exe");
        assert_eq!(printable("Lee Gu — été"), "Lee Gu — été");
        assert_eq!(Cell::from("ok\u{1b}[2J\r").shown(), "ok\\u{1b}[2J\\r");
    }
}
