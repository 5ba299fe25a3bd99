"""The web portal in a real browser: Playwright driving Debian's Chromium against `pim up`.

- Lee signs in with his password and a TOTP code pyotp computes; activates Exchange
  Administrator, whose policy wants an MFA under a second old, through the step-up the page
  shows in place; sees it active with the time left; deactivates it.
- Lee adds a passkey (Chromium's virtual authenticator, through DevTools' WebAuthn domain),
  steps up with it, and signs in with it; a copy of it (its counter set back) is refused.
- Lee asks for Security Reader, which Ann must approve; Ann approves on the Approvals page, and
  Lee's page, left open, turns active without a reload; he deactivates it from My requests.
- Lee activates his membership of a group from My roles (PIM for Groups), and asks to extend
  an eligibility that ends, and an active assignment the admin gave him for a week.
- Ann decides an access review item (and the admin starts another review, mail off); Ann, a
  Security Administrator, dismisses the break-glass alert, which the admin may not (it is
  about them); the admin weakens a role's
  settings on Role settings: the policy_weakened alert appears; adds an approval stage and a
  notification rule there (the CLI reads them back); the change is found on Audit,
  downloaded as OCSF, and the hash chain verifies.
- The administrator adds a service principal (its secret shown once; a new one replaces it;
  then disables it), adds Kim in the Directory (her initial password shown once), creates a
  group and adds her; Kim signs in, adds her authenticator app (pyotp reads the setup link)
  and makes recovery codes; on a phone-sized screen no page is wider than the screen.
- A forged form from another origin is refused (403) and changes nothing.
- axe-core finds no serious or critical accessibility violation on any page; no page holds a
  token; every answer has the strict Content-Security-Policy and the cookie is HttpOnly and
  SameSite=Strict.
- Screenshots of the main pages go to the directory PIM_SCREENSHOTS names (when set).

Usage: python3 .ci/portal.py PATH_TO_PIM
"""

import http.server
import json
import os
import re
import sys
import threading
import time

import pyotp
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import expect, sync_playwright

from pim_up import PimUp, wait

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PASSWORDS = {"lee": "lee's long passphrase", "ann": "ann's long passphrase"}


def enrol_totp(up: PimUp, user: str) -> "Codes":
    """Enrols TOTP for `user` with `pim mfa enroll`, reading its otpauth:// URI as an app would."""
    enroll = up.popen("mfa", "enroll", as_user=user)
    uri = None
    while uri is None:
        line = enroll.stdout.readline()
        if not line:
            raise AssertionError("pim mfa enroll showed no otpauth:// URI")
        if line.strip().startswith("otpauth://"):
            uri = line.strip()
    totp = pyotp.parse_uri(uri)
    codes = Codes(totp)
    _, err = enroll.communicate(codes.next() + "\n", timeout=30)
    assert enroll.returncode == 0, err
    return codes


class Codes:
    """An authenticator's codes, each step once and in order (PIM refuses a step at or before
    the last one it accepted): the current step, or one ahead, within the skew PIM allows
    (one step either way). Never the step before: a window ending between the code and its
    check would put it two steps back."""

    def __init__(self, totp: pyotp.TOTP):
        self.totp, self.last = totp, None

    def next(self) -> str:
        while True:
            now = int(time.time() // 30)
            for step in (now, now + 1):
                if self.last is None or step > self.last:
                    self.last = step
                    return self.totp.at(step * 30)
            time.sleep(0.5)  # all three used: the authenticator's next window


def check_page(page, axe: Axe, name: str, shots: str | None):
    """The page has no serious accessibility violation and holds no token; screenshot it."""
    results = axe.run(page)
    serious = [v for v in results.response["violations"] if v["impact"] in ("serious", "critical")]
    assert not serious, f"{name}: axe-core found {[(v['id'], v['help']) for v in serious]}"
    html = page.content()
    assert "eyJ" not in html, f"{name}: a token-like value is in the page"
    if shots:
        page.screenshot(path=os.path.join(shots, f"{name}.png"), full_page=True)


def sign_in(page, portal: str, user: str, password: str, code: str | None = None):
    page.goto(portal + "/roles")
    expect(page).to_have_url(portal + "/signin")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    if code is not None:
        expect(page.get_by_role("heading", name="Verify it's you")).to_be_visible()
        page.get_by_label("Code from your authenticator app").fill(code)
        page.get_by_role("button", name="Verify").click()
    expect(page).to_have_url(portal + "/roles")
    expect(page.get_by_text(f"Signed in as {user}")).to_be_visible()


class Forger(http.server.BaseHTTPRequestHandler):
    """Another origin's page that posts a form to the portal as soon as it loads."""
    target = ""

    def do_GET(self):
        body = (f'<!doctype html><form id="f" method="post" action="{self.target}/roles/activate">'
                '<input name="role_id" value="x"><input name="scope" value="/">'
                '<input name="csrf" value="guessed"></form>'
                '<script>document.getElementById("f").submit()</script>').encode()
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_):
        pass


def main(pim: str) -> int:
    shots = os.environ.get("PIM_SCREENSHOTS")
    if shots:
        os.makedirs(shots, exist_ok=True)
    with PimUp(pim) as up, sync_playwright() as pw:
        portal = up.portal
        assert portal, "pim up printed no portal address"
        for user, password in PASSWORDS.items():
            up.run("users", "create", "--user-name", user, "--email", f"{user}@example.com",
                   "--password-stdin", stdin=password + "\n")
            up.run("login", "--user", user, "--password-stdin", stdin=password + "\n", as_user=user)
        codes = enrol_totp(up, "lee")
        up.run("policy", "set", "Exchange Administrator", "--require-mfa", "true", "--mfa-freshness", "1s",
               "--require-approval", "false")
        up.run("policy", "set", "Security Reader", "--require-mfa", "false", "--require-approval", "true",
               "--approvers", "ann")
        for role in ["Exchange Administrator", "Security Reader"]:
            up.run("assign", role, "--principal", "lee", "-j", "on call")
        up.run("reviews", "create", "Security Reader", "--name", "Q4 readers", "--reviewers", "ann")
        up.run("assign", "Security Administrator", "--principal", "ann", "--kind", "active", "--duration", "1d",
               "-j", "alert triage")
        up.run("assign", "Global Reader", "--principal", "lee", "--duration", "10d", "-j", "audit support")
        up.run("groups", "create", "--name", "payments-oncall")
        up.run("groups", "assign", "--principal", "lee", "--group", "payments-oncall", "--access", "member",
               "--kind", "eligible", "--permanent")
        up.run("policy", "set", "--group", "payments-oncall", "--access", "member", "--require-mfa", "false")

        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        axe = Axe()
        lee = browser.new_context().new_page()

        # The sign-in page, then password and code.
        lee.goto(portal + "/signin")
        answer = lee.request.get(portal + "/signin")
        csp = answer.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp, csp
        check_page(lee, axe, "signin", shots)
        sign_in(lee, portal, "lee", PASSWORDS["lee"], codes.next())
        cookie = next(c for c in lee.context.cookies() if c["name"] == "pim_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
        signed_in_at = time.time()
        check_page(lee, axe, "my-roles", shots)

        # Exchange Administrator wants an MFA under a second old: let the sign-in's one age
        # past it, so the activation meets the step-up.
        time.sleep(max(0.0, signed_in_at + 1.5 - time.time()))
        eligible = lee.get_by_role("row").filter(has_text="Exchange Administrator")
        eligible.get_by_text("Activate").first.click()
        eligible.get_by_label("Duration").fill("2h")
        eligible.get_by_label("Justification").fill("mailbox migration")
        eligible.get_by_role("button", name="Activate Exchange Administrator").click()
        expect(lee.get_by_role("heading", name="Verify it's you")).to_be_visible()
        expect(lee.get_by_text("needs a recent multi-factor authentication")).to_be_visible()
        check_page(lee, axe, "step-up", shots)
        lee.get_by_label("Authenticator code").fill(codes.next())
        lee.get_by_role("button", name="Verify and continue").click()
        expect(lee).to_have_url(portal + "/roles")
        expect(lee.get_by_role("status")).to_contain_text("Exchange Administrator is active until")
        active = lee.locator("section[aria-labelledby=active-h] tr").filter(has_text="Exchange Administrator")
        expect(active.locator("td.left")).to_have_text(re.compile(r"^(1h 59m|2h 0m) left$"))
        check_page(lee, axe, "my-roles-active", shots)
        active.get_by_role("button", name="Deactivate Exchange Administrator").click()
        expect(lee.get_by_role("status")).to_contain_text("Exchange Administrator is deactivated")
        expect(lee.locator("section[aria-labelledby=active-h]")).not_to_contain_text("Exchange Administrator")

        # A passkey: registered on Security info with Chromium's virtual authenticator
        # (DevTools' WebAuthn domain), then the step-up done with it instead of a code.
        devtools = lee.context.new_cdp_session(lee)
        devtools.send("WebAuthn.enable")
        authenticator = devtools.send("WebAuthn.addVirtualAuthenticator", {"options": {
            "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
            "hasUserVerification": True, "isUserVerified": True}})["authenticatorId"]
        lee.goto(portal + "/account")
        lee.get_by_label("Name").fill("virtual key")
        lee.get_by_role("button", name="Add a passkey").click()
        expect(lee.get_by_role("status").first).to_contain_text("Passkey virtual key added")
        expect(lee.get_by_role("row").filter(has_text="virtual key")).to_contain_text("Passkey")
        check_page(lee, axe, "security-info", shots)

        # From now on the role takes a passkey's MFA only (phishing-resistant): a code is not
        # enough, the page asks again and says why.
        up.run("policy", "set", "Exchange Administrator", "--require-passkey", "true")

        def activate_with_passkey(code_first: bool = False):
            time.sleep(1.5)  # past the role's 1 s MFA freshness, so the step-up is asked
            lee.goto(portal + "/roles")
            row = lee.get_by_role("row").filter(has_text="Exchange Administrator")
            row.get_by_text("Activate").first.click()
            row.get_by_label("Justification").fill("mailbox migration, again")
            row.get_by_role("button", name="Activate Exchange Administrator").click()
            expect(lee.get_by_role("heading", name="Verify it's you")).to_be_visible()
            if code_first:
                # A wrong code, with a passkey beside the app: refused as a wrong code, no fault.
                lee.get_by_label("Authenticator code").fill("000000")
                lee.get_by_role("button", name="Verify and continue").click()
                expect(lee.get_by_role("alert")).to_contain_text("the code is incorrect")
                lee.get_by_label("Authenticator code").fill(codes.next())
                lee.get_by_role("button", name="Verify and continue").click()
                expect(lee.get_by_role("heading", name="Verify it's you")).to_be_visible()
                expect(lee.get_by_role("alert")).to_contain_text("phishing-resistant")
            lee.get_by_role("button", name="Use a passkey").click()

        activate_with_passkey(code_first=True)
        expect(lee).to_have_url(portal + "/roles")
        expect(lee.get_by_role("status")).to_contain_text("Exchange Administrator is active until")
        lee.locator("section[aria-labelledby=active-h] tr").filter(has_text="Exchange Administrator") \
            .get_by_role("button", name="Deactivate Exchange Administrator").click()
        expect(lee.get_by_role("status")).to_contain_text("Exchange Administrator is deactivated")

        # A copy of the key (its signature counter set back to 0) is refused: the counter of
        # each assertion must go up.
        [stored] = devtools.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"]
        assert stored["signCount"] >= 1, stored
        devtools.send("WebAuthn.removeCredential", {"authenticatorId": authenticator,
                                                    "credentialId": stored["credentialId"]})
        devtools.send("WebAuthn.addCredential", {"authenticatorId": authenticator,
                                                 "credential": dict(stored, signCount=0)})
        activate_with_passkey()
        expect(lee.locator("[data-passkey-status]")).to_contain_text("looks copied")
        devtools.send("WebAuthn.removeCredential", {"authenticatorId": authenticator,
                                                    "credentialId": stored["credentialId"]})
        devtools.send("WebAuthn.addCredential", {"authenticatorId": authenticator,
                                                 "credential": dict(stored, signCount=stored["signCount"] + 10)})

        # Security Reader waits for Ann; Lee's page follows the request.
        lee.goto(portal + "/roles")
        reader = lee.get_by_role("row").filter(has_text="Security Reader")
        reader.get_by_text("Activate").first.click()
        reader.get_by_label("Justification").fill("quarterly audit")
        reader.get_by_role("button", name="Activate Security Reader").click()
        expect(lee.get_by_role("status")).to_contain_text("waiting for approval")
        expect(lee.locator("[data-request]")).to_have_text("waiting for approval")

        ann = browser.new_context().new_page()
        sign_in(ann, portal, "ann", PASSWORDS["ann"])
        ann.goto(portal + "/approvals")
        expect(ann.get_by_role("article", name="Security Reader for lee")).to_contain_text("quarterly audit")
        check_page(ann, axe, "approvals", shots)
        # Ann follows the link her mail gives (PIM_PUBLIC_URL/approvals/REQUEST_ID): the
        # approval with Lee's recent activations.
        request_id = lee.locator("[data-request]").get_attribute("data-request")
        ann.goto(f"{portal}/approvals/{request_id}")
        card = ann.get_by_role("article", name="Security Reader for lee")
        expect(card).to_contain_text("Recent activations by lee")
        card.get_by_label("Reason").fill("audit season")
        card.get_by_role("button", name="Approve").click()
        expect(ann.get_by_role("status")).to_contain_text("You approved Security Reader")

        # No reload on Lee's side: the page's script sees the request end and fetches anew.
        expect(lee.locator("section[aria-labelledby=active-h]")).to_contain_text("Security Reader", timeout=15000)
        lee.goto(portal + "/requests")
        expect(lee.get_by_role("row").filter(has_text="Security Reader").first).to_contain_text("active")
        check_page(lee, axe, "my-requests", shots)
        # My requests ends the activation its newest request made.
        lee.get_by_role("button", name="Deactivate Security Reader").click()
        expect(lee).to_have_url(portal + "/requests")
        expect(lee.get_by_role("status").first).to_contain_text("Security Reader is deactivated")
        expect(lee.get_by_role("button", name="Deactivate Security Reader")).to_have_count(0)

        # Group access (PIM for Groups) is on My roles too, by the group's name.
        lee.goto(portal + "/roles")
        membership = lee.get_by_role("row").filter(has_text="Member of payments-oncall")
        membership.get_by_text("Activate").first.click()
        membership.get_by_label("Justification").fill("on call tonight")
        membership.get_by_role("button", name="Activate Member of payments-oncall").click()
        expect(lee.get_by_role("status")).to_contain_text("Member of payments-oncall is active until")

        # An eligibility that ends: Lee asks for more time, which waits for an administrator.
        reader_row = lee.get_by_role("row").filter(has_text="Global Reader")
        reader_row.get_by_text("Extend").first.click()
        reader_row.get_by_label("Justification").last.fill("audit runs to March")
        reader_row.get_by_role("button", name="Ask to extend Global Reader").click()
        expect(lee.get_by_role("status")).to_contain_text("Your request to extend Global Reader is waiting")

        # Ann reviews who holds Security Reader.
        ann.goto(portal + "/reviews")
        item = ann.get_by_role("row").filter(has_text="lee")
        check_page(ann, axe, "reviews", shots)
        item.get_by_label("Reason").fill("still on the audit")
        item.get_by_role("button", name="Keep Security Reader for lee").click()
        expect(ann.get_by_role("status")).to_contain_text("Recorded: keep")

        # The break-glass alert is about the administrator's own sign-in: another decides it.
        # Ann, a Security Administrator, dismisses it.
        admin = browser.new_context().new_page()
        sign_in(admin, portal, "admin", up.admin_password)
        admin.goto(portal + "/admin/alerts")
        expect(admin.get_by_role("row").filter(has_text="break_glass_used")).to_contain_text(
            "About you: another administrator dismisses or resolves it")
        ann.goto(portal + "/admin/alerts")
        alert = ann.get_by_role("row").filter(has_text="break_glass_used")
        check_page(ann, axe, "alerts", shots)
        alert.get_by_label("Reason").fill("the CI's own sign-in")
        alert.get_by_role("button", name="Dismiss alert").click()
        expect(ann.get_by_role("status")).to_contain_text("The alert is dismissed")

        # The administrator turns off Privileged Role Administrator's justification: the
        # change is saved and alerting raises policy_weakened, seen on the Alerts page.
        role = "Privileged Role Administrator"
        admin.goto(portal + "/admin/policies")
        admin.get_by_role("link", name=role, exact=True).click()
        justification = admin.get_by_label("Activation needs a justification")
        expect(justification).to_be_checked()
        check_page(admin, axe, "role-settings", shots)
        justification.uncheck()
        admin.get_by_role("button", name=f"Save {role}'s settings").click()
        expect(admin.get_by_role("status")).to_contain_text(f"{role}'s settings are saved")
        expect(admin.get_by_label("Activation needs a justification")).not_to_be_checked()

        def weakened_alert_shown():
            admin.goto(portal + "/admin/alerts")
            return admin.get_by_role("row").filter(has_text="policy_weakened").filter(has_text=role).count() == 1
        wait("the policy_weakened alert on the Alerts page", weakened_alert_shown, seconds=15)
        # The administrator acknowledges it (about them: they may not close it); acknowledged,
        # it is still in sight, among the acknowledged alerts.
        listed = [json.loads(line) for line in up.run("alerts", "--output", "json").stdout.splitlines() if line]
        weakened = next(a for a in listed if a["rule"] == "policy_weakened" and a["role"] == role)
        up.run("alerts", "ack", weakened["id"])
        admin.goto(portal + "/admin/alerts")
        admin.get_by_role("link", name="Show the acknowledged alerts").click()
        expect(admin.get_by_role("row").filter(has_text="policy_weakened").filter(has_text=role)).to_contain_text(
            "About you: another administrator dismisses or resolves it")

        # Approval stages and notification rules in the same form: a second stage of Ann's
        # with a reason required, and administrators' activation mail also to the SOC; the
        # CLI reads back what the page saved.
        admin.goto(portal + "/admin/policies")
        admin.get_by_role("link", name=role, exact=True).click()
        expect(admin.get_by_role("group", name="Approval stage 2")).to_be_visible()
        stage2 = admin.get_by_role("group", name="Approval stage 2")
        stage2.get_by_label("Approvers").fill("ann")
        stage2.get_by_label("The stage waits at most").fill("4h")
        stage2.get_by_label("A decision needs a reason").check()
        admin.get_by_label("An activation: Administrators (role activation alert): also to").fill("soc@example.com")
        admin.get_by_label("An activation: The requester: critical mails only").check()
        admin.get_by_role("button", name=f"Save {role}'s settings").click()
        expect(admin.get_by_role("status")).to_contain_text(f"{role}'s settings are saved")
        expect(admin.get_by_role("group", name="Approval stage 2").get_by_label("Approvers")).to_have_value("ann")
        expect(admin.get_by_role("group", name="Approval stage 3")).to_be_visible()
        shown = up.run("policy", "show", role).stdout
        assert "1 of ann within 4h; a reason required" in shown, shown
        rules = up.run("notifications", "show", role).stdout
        assert "soc@example.com" in rules, rules
        admin.get_by_role("group", name="Approval stage 2").get_by_label("Approvers").fill("nobody-here")
        admin.get_by_role("button", name=f"Save {role}'s settings").click()
        expect(admin.get_by_role("alert")).to_contain_text('no user is named "nobody-here"')

        # Audit: the policy change is found by its action, the chain verifies, and the search
        # downloads as OCSF (one JSON object a line, OCSF's class and time on each).
        admin.get_by_role("link", name="Audit").click()
        admin.get_by_label("Action").fill("PolicyUpdated")
        admin.get_by_role("button", name="Search").click()
        expect(admin.get_by_role("row").filter(has_text=role).first).to_contain_text("PolicyUpdated")
        check_page(admin, axe, "audit", shots)
        with admin.expect_download() as downloaded:
            admin.get_by_role("link", name="Download as OCSF").click()
        with open(downloaded.value.path()) as export:
            lines = [json.loads(line) for line in export if line.strip()]
        assert lines and all("class_uid" in l and "time" in l for l in lines), lines[:2]
        assert any(role in json.dumps(l) for l in lines), "the export holds the policy change"
        admin.get_by_role("button", name="Verify the hash chain").click()
        expect(admin.get_by_role("status")).to_contain_text("The chain verifies")

        # Assignments: the administrator makes Ann eligible for Global Reader, then removes it.
        admin.get_by_role("link", name="Assignments").click()
        admin.get_by_text("Assign a role").click()
        admin.get_by_label("User (user name)").fill("ann")
        admin.get_by_label("Role", exact=True).last.select_option(label="Global Reader")
        admin.get_by_label("Justification").fill("audit season")
        admin.get_by_role("button", name="Assign", exact=True).click()
        expect(admin.get_by_role("status")).to_contain_text("Assigned to ann")
        check_page(admin, axe, "assignments", shots)
        admin.get_by_role("button", name="Remove Global Reader from ann").click()
        expect(admin.get_by_role("status")).to_contain_text("The assignment is removed")
        expect(admin.get_by_role("button", name="Remove Global Reader from ann")).to_have_count(0)
        # An active assignment for a time: Lee asks from My roles to extend it.
        admin.get_by_text("Assign a role").click()
        admin.get_by_label("User (user name)").fill("lee")
        admin.get_by_label("Role", exact=True).last.select_option(label="Groups Administrator")
        admin.get_by_label("Kind").select_option("active")
        admin.get_by_label("For (e.g. 30d)").fill("7d")
        admin.get_by_label("Justification").fill("directory clean-up")
        admin.get_by_role("button", name="Assign", exact=True).click()
        expect(admin.get_by_role("status")).to_contain_text("Assigned to lee")
        lee.goto(portal + "/roles")
        held = lee.locator("section[aria-labelledby=active-h] tr").filter(has_text="Groups Administrator")
        held.get_by_text("Extend").first.click()
        held.get_by_label("Justification").fill("the clean-up takes a month")
        held.get_by_role("button", name="Ask to extend Groups Administrator").click()
        expect(lee.get_by_role("status").first).to_contain_text("Your request to extend Groups Administrator is waiting")

        # Directory: disabling Ann ends her sessions; her open portal session is over too.
        admin.get_by_role("link", name="Directory").click()
        check_page(admin, axe, "directory", shots)
        admin.get_by_role("button", name="Disable ann").click()
        expect(admin.get_by_role("status")).to_contain_text("ann is disabled")
        ann.goto(portal + "/approvals")
        expect(ann.get_by_role("alert")).to_contain_text("Your session has ended")
        ann.goto(portal + "/approvals")
        expect(ann).to_have_url(portal + "/signin")

        # Onboarding in the browser: the administrator adds Kim (the portal makes her initial
        # password and shows it once), makes a group and adds her to it; Kim signs in, adds
        # her authenticator app on Security info (pyotp reads the setup link as an app reads
        # the QR code), and makes recovery codes. (Where sign-in requires MFA, the sign-in
        # itself offers the app: tests/e2e/portal.rs.)
        admin.goto(portal + "/admin/directory")
        admin.get_by_text("Add a user").click()
        admin.get_by_label("User name (they sign in with it)").fill("kim")
        admin.get_by_label("Email").fill("kim@example.com")
        admin.get_by_role("button", name="Add the user").click()
        expect(admin.get_by_role("status")).to_contain_text("The user kim is added")
        kim_password = admin.locator("[data-initial-password]").text_content().strip()
        assert len(kim_password) >= 12, "the initial password is strong"
        admin.get_by_role("link", name="Back to the directory").click()
        admin.get_by_text("Create a group").click()
        admin.get_by_label("Group name").fill("db-admins")
        admin.get_by_role("button", name="Create the group").click()
        expect(admin.get_by_role("heading", name="Group db-admins")).to_be_visible()
        admin.get_by_label("Add a member (user name)").fill("kim")
        admin.get_by_role("button", name="Add member").click()
        expect(admin.get_by_role("status")).to_contain_text("kim is now a direct member of the group")
        members = admin.locator("section[aria-labelledby=members-h]")
        expect(members.get_by_role("row").filter(has_text="kim")).to_contain_text("added")
        check_page(admin, axe, "group", shots)
        admin.get_by_label("Add a member (user name)").fill("nobody-here")
        admin.get_by_role("button", name="Add member").click()
        expect(admin.get_by_role("alert")).to_contain_text('no user is named "nobody-here"')
        admin.get_by_role("link", name="Settings of this group's membership").click()
        expect(admin.get_by_role("heading", name="Membership of db-admins at /groups/")).to_be_visible()
        expect(admin.get_by_label("Activation needs MFA")).to_be_visible()

        # The administrator starts an access review from the portal, without mail.
        admin.goto(portal + "/reviews")
        admin.get_by_text("Start an access review").click()
        admin.get_by_label("Name", exact=True).fill("Exchange holders")
        admin.get_by_label("Role whose holders are reviewed").select_option(label="Exchange Administrator")
        admin.get_by_label("Reviewers (user names, comma-separated)").fill("lee")
        admin.get_by_label("Mail the reviewers when it starts").uncheck()
        admin.get_by_role("button", name="Start the review").click()
        expect(admin.get_by_role("status").first).to_contain_text("The review Exchange holders is started")
        expect(admin.get_by_role("row").filter(has_text="Exchange holders")).to_contain_text("InProgress")
        shown = up.run("reviews", "list", "--output", "json").stdout
        assert "Exchange holders" in shown, shown

        # A service principal for an app: its client secret shown once, and it signs in with
        # it; a new secret replaces it; disabled, it signs in no more.
        admin.goto(portal + "/admin/directory")
        admin.get_by_text("Add a service principal").click()
        admin.get_by_label("Name (the app it signs in as)").fill("payments-app")
        admin.get_by_role("button", name="Add the service principal").click()
        expect(admin.get_by_role("status")).to_contain_text("payments-app")
        client_id = admin.locator("[role=status] code").text_content().strip()
        first_secret = admin.locator("[data-client-secret]").text_content().strip()
        up.run("login", "--client-id", client_id, "--password-stdin", stdin=first_secret + "\n", as_user="app")
        admin.goto(portal + "/admin/directory")
        admin.get_by_role("button", name="New client secret for payments-app").click()
        second_secret = admin.locator("[data-client-secret]").text_content().strip()
        assert second_secret != first_secret
        refused = up.run("login", "--client-id", client_id, "--password-stdin", stdin=first_secret + "\n",
                         as_user="app", check=False)
        assert refused.returncode != 0, "the old secret no longer signs in"
        up.run("login", "--client-id", client_id, "--password-stdin", stdin=second_secret + "\n", as_user="app")
        admin.goto(portal + "/admin/directory")
        admin.get_by_role("button", name="Disable payments-app").click()
        expect(admin.get_by_role("status")).to_contain_text("payments-app is disabled")

        kim = browser.new_context().new_page()
        sign_in(kim, portal, "kim", kim_password)
        kim.goto(portal + "/account")
        kim.get_by_role("button", name="Add an authenticator app").click()
        expect(kim.get_by_role("img", name="QR code of the new authenticator's secret")).to_be_visible()
        check_page(kim, axe, "add-authenticator", shots)
        kim_codes = Codes(pyotp.parse_uri(kim.locator("[data-otpauth]").text_content().strip()))
        kim.get_by_label("The 6-digit code the app shows now").fill("000000")
        kim.get_by_role("button", name="Confirm the app").click()
        expect(kim.get_by_role("alert")).to_contain_text("incorrect")
        kim.get_by_label("The 6-digit code the app shows now").fill(kim_codes.next())
        kim.get_by_role("button", name="Confirm the app").click()
        expect(kim.get_by_role("status").first).to_contain_text("The authenticator app is added")
        expect(kim.get_by_role("row").filter(has_text="Authenticator app")).to_have_count(1)
        kim.get_by_role("button", name="Make new recovery codes").click()
        expect(kim.get_by_role("heading", name="Your recovery codes")).to_be_visible()
        assert kim.locator("[data-recovery-codes] li").count() >= 8

        # On a phone's screen every page is one column: nothing wider than the screen.
        phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True).new_page()
        sign_in(phone, portal, "lee", PASSWORDS["lee"], codes.next())
        for path in ["/roles", "/requests", "/approvals", "/reviews", "/account"]:
            phone.goto(portal + path)
            width = phone.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"{path} is {width}px wide on a 390px phone"
        phone.goto(portal + "/roles")
        check_page(phone, axe, "phone-my-roles", shots)

        # A form another origin posts, with Lee's cookie sent by his browser, is refused.
        lee.goto(portal + "/requests")
        requests_before = lee.get_by_role("row").count()
        Forger.target = portal
        forger = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forger)
        threading.Thread(target=forger.serve_forever, daemon=True).start()
        with lee.expect_response(lambda r: r.url.endswith("/roles/activate")) as posted:
            # Same site (localhost), another origin (its port): the browser sends Lee's
            # SameSite=Strict cookie, so only the portal's own checks stand in the way.
            lee.goto(f"http://localhost:{forger.server_address[1]}/")
        assert posted.value.status == 403, posted.value.status
        expect(lee.get_by_role("heading", name="Refused")).to_be_visible()
        forger.shutdown()
        lee.goto(portal + "/requests")
        assert lee.get_by_role("row").count() == requests_before, "the forged form made a request"

        # Sign out: the session's cookie no longer opens a page.
        lee.goto(portal + "/roles")
        lee.get_by_role("button", name="Sign out", exact=True).click()
        expect(lee.get_by_role("heading", name="Signed out")).to_be_visible()
        lee.goto(portal + "/roles")
        expect(lee).to_have_url(portal + "/signin")

        # Sign-in with the password and the passkey.
        lee.get_by_label("User name").fill("lee")
        lee.get_by_label("Password").fill(PASSWORDS["lee"])
        lee.get_by_role("button", name="Sign in").click()
        lee.get_by_role("button", name="Use a passkey").click()
        expect(lee).to_have_url(portal + "/roles")
        expect(lee.get_by_text("Signed in as lee")).to_be_visible()
        browser.close()
    print("portal: sign-in with TOTP and with a passkey, step-up with either, a copied passkey refused, "
          "live approval, review, alert, onboarding (user, group, authenticator app), phone width, "
          "forged form refused, axe-core clean")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
