//! The portal against the suite on PostgreSQL + Redis, driven as a browser drives it: HTTP,
//! a session cookie, forms with their CSRF token (`pim_e2e::browser`). Chromium drives it in
//! `.ci/portal.py`; this keeps its core in the test suite.

use std::time::Duration;

use pim_e2e::browser::{Browser, between, serve_portal};

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

    // A page polling by itself (an open tab) is answered, and leaves the idle time running
    // (`session::tests::a_session_ends_after_its_idle_time_and_after_its_lifetime_however_busy`).
    browser.polling = true;
    let (status, body) = browser.send("GET", "/roles", None).await?;
    assert_eq!(status, 200, "{body}");
    browser.polling = false;

    let (status, _) = browser.post("/signout", &[]).await?;
    assert_eq!(status, 200);
    let (status, _) = browser.send("GET", "/roles", None).await?;
    assert_eq!(status, 303, "signed out: the cookie opens nothing");
    // The page's poll is told the session is gone, so its script stops polling.
    browser.polling = true;
    let (status, _) = browser.send("GET", "/requests/anything/status", None).await?;
    assert_eq!(status, 401, "a poll is not sent to a page");
    w.ts.stop().await
}

/// Pages loaded at the same moment as the access token lapses (here: tokens of a minute,
/// always about to) refresh it one at a time: each takes the newest tokens, none shows the
/// spent refresh token again (identity would take it for a stolen copy and end the session).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tabs_refreshing_at_once_keep_the_session() -> anyhow::Result<()> {
    let ts = pim_e2e::TestSuite::embedded_with(&[("PIM_ACCESS_TOKEN_TTL_SECS", "60".into())]).await?;
    let result = async {
        let admin = ts.admin_token().await?;
        ts.create_user(&admin, "lee").await?;
        let mut browser = Browser::connect(serve_portal(&ts).await?).await?;
        browser.sign_in("lee", &pim_e2e::password_of("lee")).await?;
        for _ in 0..3 {
            let mut tabs = Vec::new();
            for _ in 0..4 {
                let mut tab = browser.another_tab().await?;
                tabs.push(tokio::spawn(async move { tab.send("GET", "/roles", None).await }));
            }
            for tab in tabs {
                let (status, body) = tab.await??;
                assert_eq!(status, 200, "still signed in: {body}");
            }
        }
        assert!(browser.get("/roles").await?.contains("My roles"));
        anyhow::Ok(())
    }
    .await;
    ts.stop().await?;
    result
}

/// Where sign-in requires MFA, a first sign-in in the portal offers to add an authenticator
/// app: the (new) administrator adds one in the window a new account has, adds Kim on the
/// Directory page (her initial password shown once) and gives her an enrolment pass; Kim
/// enters it with her password, scans the secret the page shows (totp-rs reads the setup
/// link), a wrong code is refused with the secret shown again, the right one completes the
/// sign-in; her next sign-in asks for a code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_user_adds_an_authenticator_app_at_first_sign_in_in_the_portal() -> anyhow::Result<()> {
    let ts = pim_e2e::TestSuite::postgres_with(None, &[("PIM_SIGNIN_MFA", "required".into())]).await?;
    let result = async {
        let portal = serve_portal(&ts).await?;
        let mut admin = Browser::connect(portal).await?;
        let (page, _) = first_sign_in(&mut admin, &ts.admin_user, &ts.admin_password).await?;
        assert!(page.contains("<svg"), "the setup shows a QR code: {page}");
        assert_eq!(admin.send("GET", "/roles", None).await?.0, 200, "signed in");

        admin.get("/admin/directory").await?;
        let (status, page) = admin.post("/admin/users", &[("user_name", "kim")]).await?;
        assert_eq!(status, 200, "{page}");
        let password = between(&page, "data-initial-password>", "</code>")
            .expect("the initial password is shown once")
            .to_owned();
        let page = admin.get("/admin/directory?filter=kim").await?;
        let kim_id = between(&page, "action=\"/admin/passes/", "\"")
            .expect("kim is listed")
            .to_owned();
        let (status, page) = admin.post(&format!("/admin/passes/{kim_id}"), &[]).await?;
        assert_eq!(status, 200, "{page}");
        let pass = between(&page, "data-enrolment-pass>", "</code>").expect("the pass is shown once");

        let mut kim = Browser::connect(portal).await?;
        kim.get("/signin").await?;
        let (_, page) = kim.post("/signin", &[("user", "kim"), ("password", &password)]).await?;
        assert!(page.contains("Enrolment pass"), "{page}");
        let (_, page) = kim.post("/signin/enrol", &[("pass", "not-the-pass")]).await?;
        assert!(
            page.contains("Enrolment pass") && !page.contains("data-otpauth"),
            "a wrong pass: {page}"
        );
        let (_, page) = kim.post("/signin/enrol", &[("pass", pass)]).await?;
        let app = setup_link(&page)?;
        let (status, page) = kim.post("/signin/enrol/confirm", &[("code", "000000")]).await?;
        assert_eq!(status, 200);
        assert!(
            page.contains("incorrect") && page.contains("data-otpauth"),
            "a wrong code: refused, the secret shown again: {page}"
        );
        let (status, _) = kim
            .post("/signin/enrol/confirm", &[("code", &app.generate_current()?)])
            .await?;
        assert_eq!(status, 303, "the right code completes the sign-in");
        let page = kim.get("/account").await?;
        assert!(
            page.contains("Authenticator app (TOTP)") && page.contains("kim"),
            "{page}"
        );

        // Pat starts adding an app at this browser and walks away; Kim signs in at the same
        // browser: nothing of Pat's enrolment is shown to her, whatever she posts.
        let (_, page) = admin.post("/admin/users", &[("user_name", "pat")]).await?;
        let pat_password = between(&page, "data-initial-password>", "</code>")
            .expect("pat's initial password")
            .to_owned();
        let mut again = Browser::connect(portal).await?;
        again.get("/signin").await?;
        again
            .post("/signin", &[("user", "pat"), ("password", &pat_password)])
            .await?;
        let (_, page) = again.post("/signin/enrol", &[("pass", "")]).await?;
        let pats = between(&page, "data-otpauth>", "</code>")
            .expect("pat's setup link")
            .to_owned();
        again.get("/signin").await?;
        let (_, page) = again
            .post("/signin", &[("user", "kim"), ("password", &password)])
            .await?;
        assert!(
            page.contains("Verify it's you") && !page.contains("Add an authenticator app"),
            "the next sign-in asks for a code from the app: {page}"
        );
        let (_, page) = again.post("/signin/enrol/confirm", &[("code", "000000")]).await?;
        assert!(!page.contains(&pats), "pat's secret is shown to kim: {page}");
        Ok(())
    }
    .await;
    ts.stop().await?;
    result
}

/// A first sign-in that adds an authenticator app (no pass: in a new account's window);
/// returns the setup page and the app.
async fn first_sign_in(browser: &mut Browser, user: &str, password: &str) -> anyhow::Result<(String, totp_rs::TOTP)> {
    browser.get("/signin").await?;
    let (status, page) = browser
        .post("/signin", &[("user", user), ("password", password)])
        .await?;
    assert_eq!(status, 200);
    assert!(page.contains("Add an authenticator app"), "{page}");
    assert_eq!(browser.send("GET", "/roles", None).await?.0, 303, "not signed in yet");
    let (_, page) = browser.post("/signin/enrol", &[("pass", "")]).await?;
    let app = setup_link(&page)?;
    let (status, body) = browser
        .post("/signin/enrol/confirm", &[("code", &app.generate_current()?)])
        .await?;
    anyhow::ensure!(status == 303, "confirming answered {status}: {body}");
    Ok((page, app))
}

/// The authenticator an app makes of the setup link a page shows.
fn setup_link(page: &str) -> anyhow::Result<totp_rs::TOTP> {
    let uri = between(page, "data-otpauth>", "</code>")
        .ok_or_else(|| anyhow::anyhow!("no setup link in {page}"))?
        .replace("&amp;", "&");
    totp_rs::TOTP::from_url(&uri).map_err(|e| anyhow::anyhow!("{e:?}"))
}

/// A requester reading their own waiting approval is offered no decision: nobody decides
/// their own request, and trying is flagged as a self-approval; a page refused answers 403 or
/// 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requester_is_offered_no_decision_on_their_own_request() -> anyhow::Result<()> {
    let w = World::new().await?;
    let lee = w.user("lee").await?;
    w.set_policy(EXCHANGE_ADMINISTRATOR, |p| p.approval_required = true)
        .await?;
    let request = w.ask(&lee, "incident INC0042").await?;
    let approval = w.approval_of(&request.id).await?;
    let mut browser = Browser::connect(serve_portal(&w.ts).await?).await?;
    browser.sign_in("lee", "lee's long passphrase").await?;
    let page = browser.get(&format!("/approvals/{}", approval.id)).await?;
    assert!(page.contains("This is your request"), "{page}");
    assert!(!page.contains(r#"value="approve""#), "a form to decide: {page}");
    // A page whose content was refused says so in its status too, not only in its words: a
    // script, a scanner or a proxy's log reads 403 or 404, never 200.
    let (status, page) = browser.send("GET", "/admin/alerts", None).await?;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("requires permission"), "{page}");
    let (status, page) = browser
        .send("GET", "/requests/01890000-0000-7000-8000-000000000000", None)
        .await?;
    assert_eq!(status, 404, "{page}");
    w.ts.stop().await
}
