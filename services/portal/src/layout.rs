//! The document every page is (head, stylesheet, script, skip link), and the pieces that
//! need no signed-in caller: a bare page (sign-in, refusals) and a problem's paragraph. maud
//! escapes every value it writes.

use axum::response::Html;
use maud::{DOCTYPE, Markup, html};

/// A page with no navigation (sign-in, refusals).
pub fn bare_page(title: &str, text: &str) -> Html<String> {
    Html(
        document(
            title,
            html! {
                main id="main" {
                    h1 { (title) }
                    p { (text) }
                    p { a href="/roles" { "Back to PIM" } }
                }
            },
        )
        .into_string(),
    )
}

pub fn document(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · PIM" }
                link rel="stylesheet" href="/static/portal.css";
                script src="/static/portal.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to the content" }
                (body)
            }
        }
    }
}

/// A paragraph saying what failed (a refusal's own words, or a reference for a fault).
pub fn problem(text: &str) -> Markup {
    html! { p.flash.bad role="alert" { (text) } }
}
