//! The portal against the suite on PostgreSQL + Redis, driven as a browser drives it: HTTP,
//! a session cookie, forms with their CSRF token (`pim_e2e::browser`). Chromium drives it in
//! `.ci/portal.py`; this keeps its core in the test suite.

use std::time::Duration;

use pim_e2e::browser::{Browser, serve_portal};

use crate::activation::{EXCHANGE_ADMINISTRATOR, World};

/// Lee signs in through the form, activates Exchange Administrator from My roles and holds it
/// (CheckAccess agrees); a form carrying his cookie and even his CSRF token but another site's
/// Origin changes nothing; no page holds a token; signed out, his cookie opens nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_activates_a_role_in_the_portal_and_a_forged_form_changes_nothing() -> anyhow::Result<()> {
    let w = World::new().await?;
    let lee = w.user("lee").await?;
    w.make_eligible(&lee, EXCHANGE_ADMINISTRATOR).await?;
    w.set_policy(EXCHANGE_ADMINISTRATOR, |p| p.activation_requires_mfa = false)
        .await?;
    let mut browser = Browser::connect(serve_portal(&w.ts).await?).await?;

    let (status, _) = browser.send("GET", "/roles", None).await?;
    assert_eq!(status, 303, "not signed in: to the sign-in page");
    browser.sign_in("lee", "lee's long passphrase").await?;
    let page = browser.get("/roles").await?;
    assert!(page.contains("Activate Exchange Administrator"), "{page}");
    assert!(!page.contains("eyJ"), "a token-like value in the page");

    let activation = [
        ("role_id", EXCHANGE_ADMINISTRATOR),
        ("scope", "/"),
        ("role_name", "Exchange Administrator"),
        ("duration", "1h"),
        ("justification", "mailbox migration"),
    ];
    let (status, body) = browser
        .post_from("http://evil.example", "/roles/activate", &activation)
        .await?;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not sent from this portal"), "{body}");
    let (status, _) = browser.post("/roles/activate", &activation[..4]).await?;
    assert_eq!(status, 303);
    let page = browser.get("/roles").await?;
    assert!(
        page.contains("Exchange Administrator was not activated") && page.contains("justification"),
        "the policy's refusal in its own words: {page}"
    );
    assert!(
        !w.check(&lee.id, EXCHANGE_ADMINISTRATOR).await?.allowed,
        "nothing was activated"
    );

    let (status, _) = browser.post("/roles/activate", &activation).await?;
    assert_eq!(status, 303);
    let page = browser.get("/roles").await?;
    assert!(page.contains("Exchange Administrator is active until"), "{page}");
    pim_runtime::testing::eventually(Duration::from_secs(10), "CheckAccess to allow it", || async {
        Ok(w.check(&lee.id, EXCHANGE_ADMINISTRATOR).await?.allowed.then_some(()))
    })
    .await?;

    let (status, _) = browser.post("/signout", &[]).await?;
    assert_eq!(status, 200);
    let (status, _) = browser.send("GET", "/roles", None).await?;
    assert_eq!(status, 303, "signed out: the cookie opens nothing");
    w.ts.stop().await
}
