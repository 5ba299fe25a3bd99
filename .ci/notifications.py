"""Notification mail as a mail server that is not ours receives it: `pim up` sending to an
aiosmtpd server. Lee is made eligible for Exchange Administrator (he hears of it); he
activates it and it waits for Ann's approval: Ann gets the mail that asks her to decide
(who, what role, where, why, the ticket, a link), Lee gets none of it; Ann denies it and Lee
hears why. A role given Lee for 6 seconds: he hears it ends soon, then that it ended. For Security Reader the
rule says approvers do not hear of activations: Lee's activation there sends no mail, while a
later mail still arrives. No mail holds a token or a password. Usage: python3 .ci/notifications.py PATH_TO_PIM
"""

import email
import email.policy
import json
import re
import socket
import sys
import threading

from aiosmtpd.controller import Controller

from pim_up import PimUp, wait


class Inbox:
    """The aiosmtpd handler: keeps every message as it came."""

    def __init__(self):
        self.lock = threading.Lock()
        self.messages: list[tuple[list[str], email.message.EmailMessage]] = []

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        with self.lock:
            self.messages.append((list(envelope.rcpt_tos), message))
        return "250 OK"

    def received(self):
        with self.lock:
            return list(self.messages)


def text_of(message) -> str:
    return message.get_body(preferencelist=("plain",)).get_content()


def main(pim: str) -> int:
    inbox = Inbox()
    with socket.socket() as probe:  # a free port (aiosmtpd checks its own with a connection)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    env = {"PIM_SMTP_URL": f"smtp://127.0.0.1:{port}", "PIM_SMTP_FROM": "PIM <pim@example.com>",
           "PIM_PUBLIC_URL": "https://pim.example.com", "PIM_EXPIRY_NOTICE_SECS": "3"}
    try:
        with PimUp(pim, env=env) as up:
            for user in ["lee", "ann"]:
                up.run("users", "create", "--user-name", user, "--email", f"{user}@example.com",
                       "--password-stdin", stdin=f"{user}'s long passphrase\n")
            for role in ["Exchange Administrator", "Security Reader"]:
                up.run("policy", "set", role, "--require-approval", "true", "--approvers", "ann",
                       "--require-mfa", "false")
                up.run("assign", role, "--principal", "lee", "-j", "on call")
            up.run("notifications", "set", "Security Reader", "--event", "activation", "--party", "approver",
                   "--default-recipients", "false")
            shown = [json.loads(l) for l in
                     up.run("notifications", "show", "Security Reader", "--output", "json").stdout.splitlines()]
            approvers = [r for r in shown if (r["event"], r["party"]) == ("activation", "approver")]
            assert [r["default_recipients"] for r in approvers] == [False], shown

            eligible = wait("lee hears he is eligible, twice", lambda: (e := [
                m["subject"] for to, m in inbox.received() if to == ["lee@example.com"] and "eligible" in m["subject"]])
                and len(e) >= 2 and e)
            assert sorted(eligible) == ["PIM: you are eligible for Exchange Administrator",
                                        "PIM: you are eligible for Security Reader"], eligible

            up.run("login", "--user", "lee", "--password-stdin", stdin="lee's long passphrase\n", as_user="lee")
            up.run("activate", "Security Reader", "-j", "quarterly audit", "--no-wait", as_user="lee")
            up.run("activate", "Exchange Administrator", "-j", "mailbox migration", "--ticket", "ServiceNow:INC42",
                   "--no-wait", as_user="lee")
            asked = wait("ann asked to decide", lambda: [
                (to, m) for to, m in inbox.received() if "approval needed" in m["subject"]])
            to, message = asked[0]
            assert to == ["ann@example.com"], to
            assert message["from"] == "PIM <pim@example.com>", message["from"]
            assert message["subject"] == "PIM: approval needed: lee requests Exchange Administrator", message["subject"]
            body = text_of(message)
            for fact in ["Justification: mailbox migration", "Ticket: ServiceNow:INC42", "Scope: /",
                         "pim approve ", "https://pim.example.com/approvals/"]:
                assert fact in body, f"{fact!r} in {body}"
            html = message.get_body(preferencelist=("html",)).get_content()
            assert "mailbox migration" in html, html

            # Ann denies it with the command the mail gives her: Lee hears why.
            up.run("login", "--user", "ann", "--password-stdin", stdin="ann's long passphrase\n", as_user="ann")
            told = re.search(r"pim deny (\S+)", body)
            assert told, body
            up.run("approvals", "--id", told.group(1), as_user="ann")
            up.run("deny", told.group(1), "-j", "not during the freeze", as_user="ann")
            denied = wait("lee hears of the denial", lambda: [
                m for to, m in inbox.received() if to == ["lee@example.com"] and "not approved" in m["subject"]])
            assert "not during the freeze" in text_of(denied[0]), text_of(denied[0])

            # A review of Exchange Administrator: its reviewer hears it started, and how to decide.
            up.run("reviews", "create", "Exchange Administrator", "--name", "Exchange admins, Q4",
                   "--reviewers", "ann", "--duration", "1h")
            review = wait("ann hears the review started", lambda: [
                m for to, m in inbox.received() if to == ["ann@example.com"] and "access review" in m["subject"]])
            assert review[0]["subject"] == 'PIM: access review "Exchange admins, Q4" started: Exchange Administrator', \
                review[0]["subject"]
            body = text_of(review[0])
            for fact in ["1 assignment to decide", "pim reviews items", "https://pim.example.com/reviews/"]:
                assert fact in body, f"{fact!r} in {body}"

            # A role given for 6 seconds: its holder hears it ends soon (3 s before), then that it ended.
            up.run("assign", "User Administrator", "--principal", "lee", "--kind", "active", "--duration", "6s",
                   "-j", "a short task")
            soon = wait("lee hears his role ends soon", lambda: [
                m for to, m in inbox.received() if to == ["lee@example.com"] and "ends soon" in m["subject"]], 20)
            assert soon[0]["subject"] == "PIM: your role User Administrator ends soon", soon[0]["subject"]
            wait("lee hears it ended", lambda: [
                m for to, m in inbox.received() if to == ["lee@example.com"] and m["subject"] ==
                "PIM: your role User Administrator ended"], 20)

            # A later mail still comes; the one the rule forbids never did.
            up.run("assign", "Exchange Administrator", "--principal", "ann", "-j", "backup")
            wait("ann hears she is eligible", lambda: any(
                to == ["ann@example.com"] and "eligible" in m["subject"] for to, m in inbox.received()))
            about_reader = [m["subject"] for to, m in inbox.received()
                            if "approval needed" in m["subject"] and "Security Reader" in m["subject"]]
            assert about_reader == [], about_reader
            assert all(to != ["lee@example.com"] for to, m in asked), "the requester approves nothing"

            # The operators' view of what went out: ann's mail, sent, newest first, no bodies.
            history = [json.loads(l) for l in up.run("notifications", "mails", "--to", "ANN@example.com",
                                                     "--output", "json").stdout.splitlines()]
            assert history and all(h["to"] == "ann@example.com" for h in history), history
            assert any(h["subject"].startswith("PIM: access review") and h["status"] == "sent"
                       for h in history), history
            assert history[0]["queued"] >= history[-1]["queued"], "newest first"

            for to, m in inbox.received():
                whole = m.as_string()
                assert "eyJ" not in whole and "passphrase" not in whole and up.admin_password not in whole, whole
            print(f"notifications: {len(inbox.received())} mails received by aiosmtpd; approvers asked, "
                  "denials, reviews, ends soon and ends told, rules that say none kept")
    finally:
        controller.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
