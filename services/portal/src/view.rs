//! The layout every page shares and the small pieces pages are made of. maud escapes every
//! value it writes; nothing here writes raw HTML from data.

use axum::response::Html;
use maud::{Markup, html};

use pim_runtime::db::from_timestamp;

pub use crate::layout::{document, problem};
use crate::web::Caller;

/// The main navigation: (path, label).
const NAV: &[(&str, &str)] = &[
    ("/roles", "My roles"),
    ("/requests", "My requests"),
    ("/approvals", "Approvals"),
    ("/reviews", "Access reviews"),
    ("/admin/assignments", "Assignments"),
    ("/admin/alerts", "Alerts"),
    ("/admin/policies", "Role settings"),
    ("/admin/audit", "Audit"),
    ("/admin/directory", "Directory"),
    ("/account", "Security info"),
];

/// A signed-in page: navigation, the caller's name, sign-out, the flash message, `content`.
pub fn page(caller: &Caller, current: &str, title: &str, content: Markup) -> Html<String> {
    let flash = caller.take_flash();
    Html(
        document(
            title,
            html! {
                header {
                    nav aria-label="Main" {
                        span.brand { "PIM" }
                        ul {
                            @for (path, label) in NAV {
                                li {
                                    @if *path == current {
                                        a href=(path) aria-current="page" { (label) }
                                    } @else {
                                        a href=(path) { (label) }
                                    }
                                }
                            }
                        }
                        div.who {
                            span { "Signed in as " strong { (caller.user.name) } }
                            form method="post" action="/signout" {
                                (csrf(caller))
                                button type="submit" { "Sign out" }
                            }
                            form method="post" action="/signout/everywhere" {
                                (csrf(caller))
                                button type="submit" { "Sign out everywhere" }
                            }
                        }
                    }
                }
                main id="main" {
                    h1 { (title) }
                    @if let Some((good, text)) = flash {
                        p.flash.(if good { "good" } else { "bad" }) role=(if good { "status" } else { "alert" }) { (text) }
                    }
                    (content)
                }
            },
        )
        .into_string(),
    )
}

/// The session's CSRF token, as every form carries it.
pub fn csrf(caller: &Caller) -> Markup {
    html! { input type="hidden" name="csrf" value=(caller.session.csrf); }
}

/// A moment: UTC on the server; the browser shows it in its own zone, the UTC value on hover.
pub fn moment(ms: Option<i64>) -> Markup {
    match ms {
        Some(ms) => {
            let utc = pim_runtime::format::rfc3339_ms(ms);
            let shown = format!("{} UTC", utc.get(..16).unwrap_or(&utc).replace('T', " "));
            html! { time datetime=(utc) title=(shown) { (shown) } }
        }
        None => html! { "permanent" },
    }
}

pub fn timestamp(ts: &Option<prost_types::Timestamp>) -> Option<i64> {
    ts.as_ref().map(from_timestamp)
}

/// "2h 15m left", "45s left", or "" when there is no end.
pub fn time_left(end_ms: Option<i64>, now_ms: i64) -> String {
    let Some(end) = end_ms else {
        return String::new();
    };
    let secs = ((end - now_ms).max(0) / 1000) as u64;
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3_600, secs % 3_600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{secs}s left"),
        (0, 0, m) => format!("{m}m left"),
        (0, h, m) => format!("{h}h {m}m left"),
        (d, h, _) => format!("{d}d {h}h left"),
    }
}

#[derive(serde::Deserialize, Default)]
pub struct Paging {
    #[serde(default)]
    pub page: String,
}

/// The link to the next page, where there is one.
pub fn next_page(path: &str, token: &str, label: &str) -> Markup {
    html! {
        @if !token.is_empty() {
            nav aria-label="Pages" { a href=(format!("{path}?page={}", in_query(token))) { (label) } }
        }
    }
}

/// A value as a URL's query carries it (form-encoded), so no value can change the URL's
/// shape or make an invalid `Location`.
pub fn in_query(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// The first 8 characters of an id, for a person to tell rows apart.
pub fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_in_text_and_attributes() {
        let hostile = r#"<script>alert("x")</script>" onmouseover="x"#;
        let out = html! { p title=(hostile) { (hostile) } }.into_string();
        assert!(!out.contains("<script>"), "{out}");
        assert!(!out.contains(r#"" onmouseover"#), "{out}");
        assert!(out.contains("&lt;script&gt;"), "{out}");
    }

    #[test]
    fn a_value_in_a_query_cannot_change_the_urls_shape() {
        assert_eq!(in_query("/groups/a&b=c#d\r\n"), "%2Fgroups%2Fa%26b%3Dc%23d%0D%0A");
        let location = format!("/admin/policies?role={}", in_query("x\r\nSet-Cookie: y"));
        assert!(http::HeaderValue::from_str(&location).is_ok(), "{location}");
    }

    #[test]
    fn time_left_reads_like_a_person_would_say_it() {
        let now = 1_000_000;
        assert_eq!(time_left(Some(now + 45_000), now), "45s left");
        assert_eq!(time_left(Some(now + 59 * 60_000 + 59_000), now), "59m left");
        assert_eq!(time_left(Some(now + (2 * 3600 + 15 * 60) * 1000), now), "2h 15m left");
        assert_eq!(time_left(Some(now + (3 * 86_400 + 5 * 3600) * 1000), now), "3d 5h left");
        assert_eq!(time_left(None, now), "");
    }
}
