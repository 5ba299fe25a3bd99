"""Webhooks as a receiver that is not ours sees them: `pim up`, a subscription made with the
CLI, and an HTTP receiver that verifies every delivery with the Standard Webhooks reference
library (`standardwebhooks`). The receiver answers 500 to the first two deliveries: the first
event must come again (same webhook-id) until it is taken, and every event must arrive once
taken, in the order audit recorded them, as a CloudEvents 1.0 JSON event. A test delivery
arrives too; after a secret rotation, deliveries verify under the new secret and the old one.
After `PIM_SECRETS_KEY` rotates, they verify under the secret the receiver holds while the old
key is given, and under a secret rotated since once it is not.
Usage: python3 .ci/webhooks.py PATH_TO_PIM
"""

import base64
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError

from pim_up import PimUp, wait


class Receiver:
    def __init__(self):
        self.lock = threading.Lock()
        self.secrets: list[str] = []
        self.seen: list[dict] = []  # every request: id, verified, status answered, body
        self.failures_left = 2

    def handle(self, body: bytes, headers: dict) -> int:
        with self.lock:
            verified = []
            for secret in self.secrets:
                try:
                    Webhook(secret).verify(body, headers)
                    verified.append(secret)
                except WebhookVerificationError:
                    pass
            status = 200
            if self.failures_left > 0:
                self.failures_left -= 1
                status = 500
            self.seen.append({"id": headers.get("webhook-id"), "verified": verified, "status": status,
                              "body": body, "headers": headers})
            return status

    def taken(self) -> list[dict]:
        with self.lock:
            return [s for s in self.seen if s["status"] == 200]


def serve(receiver: Receiver) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            status = receiver.handle(body, headers)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def hanging_server(release: threading.Event, arrived: threading.Event) -> ThreadingHTTPServer:
    """A receiver that takes the connection and answers nothing until `release` is set."""
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", "0")))
            arrived.set()
            release.wait(60)
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server



def secret_of(output: str) -> str:
    return next(w for line in output.splitlines() if "signing secret:" in line for w in line.split()
                if w.startswith("whsec_"))


def main(pim: str) -> int:
    receiver = Receiver()
    server = serve(receiver)
    url = f"http://127.0.0.1:{server.server_address[1]}/pim-hook"
    with PimUp(pim) as up:
        catalogue = up.run("webhooks", "event-types").stdout
        assert any(line.split()[:2] == ["UserCreated", "pim.identity"] for line in catalogue.splitlines()), catalogue
        misspelt = up.run("webhooks", "create", "--url", url, "--events", "UserCreate", check=False)
        assert misspelt.returncode == 2 and "UserCreate is not an event type" in misspelt.stderr, misspelt
        created = up.run("webhooks", "create", "--url", url, "--events", "UserCreated").stdout
        subscription = next(line.split()[3] for line in created.splitlines() if line.startswith("Created webhook"))
        first_secret = secret_of(created)
        receiver.secrets.append(first_secret)
        names = [f"hook-user-{n}" for n in range(5)]
        for name in names:
            up.run("users", "create", "--user-name", name)
        taken = wait("five events taken", lambda: (t := receiver.taken()) and len(t) >= 5 and t)
        events = [json.loads(t["body"]) for t in taken[:5]]
        got = [e["data"]["target"]["name"] for e in events]
        assert got == names, f"every event once, in order: {got}"
        for e in events:
            assert e["specversion"] == "1.0" and e["type"] == "pim.identity.v1.UserCreated", e
            assert e["id"] and e["source"] == "pim.identity" and e["time"].endswith("Z"), e
        assert all(s["verified"] for s in receiver.seen), "every delivery verifies with the secret"
        first_id = taken[0]["id"]
        tries = [s for s in receiver.seen if s["id"] == first_id]
        assert [s["status"] for s in tries] == [500, 500, 200], f"retried after two 500s: {tries}"
        # Verification is real: a changed body does not verify.
        try:
            Webhook(first_secret).verify(taken[0]["body"] + b" ", taken[0]["headers"])
            raise AssertionError("a changed body verified")
        except WebhookVerificationError:
            pass
        deliveries = [json.loads(l) for l in
                      up.run("webhooks", "deliveries", subscription, "--output", "json").stdout.splitlines()]
        oldest = deliveries[-1]
        assert (oldest["status"], oldest["attempts"], oldest["last_answer"]) == ("delivered", 3, "200"), oldest

        up.run("webhooks", "test", subscription)
        wait("the test delivery", lambda: any(json.loads(t["body"])["type"] == "pim.audit.v1.WebhookTest"
                                             for t in receiver.taken()))

        rotated = up.run("webhooks", "rotate-secret", subscription).stdout
        second_secret = secret_of(rotated)
        assert second_secret != first_secret
        receiver.secrets[:] = [second_secret]
        up.run("users", "create", "--user-name", "after-rotation")
        def delivery_about(name: str):
            return next((t for t in receiver.taken() if json.loads(t["body"])["data"]["target"]["name"] == name), None)

        last = wait("a delivery after the rotation", lambda: delivery_about("after-rotation"))
        assert last["verified"] == [second_secret], "the new secret verifies"
        assert len(last["headers"]["webhook-signature"].split()) == 2, "both secrets sign for a day"
        Webhook(first_secret).verify(last["body"], last["headers"])

        # The suite's key rotates (the old one given for a restart): deliveries still verify
        # under the secret the receiver holds; the subscription's secret rotated then is one
        # of the new key, which alone verifies once the old key is no longer given.
        old_key = up.secrets_key()
        up.restart(PIM_SECRETS_KEY=base64.b64encode(os.urandom(32)).decode(), PIM_SECRETS_KEY_PREVIOUS=old_key)
        up.run("users", "create", "--user-name", "after-the-key-rotation")
        rotated_key = wait("a delivery after the key's rotation", lambda: delivery_about("after-the-key-rotation"))
        assert second_secret in rotated_key["verified"], "the secret the receiver holds still verifies"
        third_secret = secret_of(up.run("webhooks", "rotate-secret", subscription).stdout)
        assert third_secret not in (first_secret, second_secret)
        receiver.secrets[:] = [second_secret, third_secret]
        up.restart(PIM_SECRETS_KEY_PREVIOUS=None)
        up.run("users", "create", "--user-name", "after-the-old-key")
        new_key_alone = wait("a delivery under the new key alone", lambda: delivery_about("after-the-old-key"))
        assert new_key_alone["verified"] == [third_secret], "only the new key's secret verifies"
        receiver.secrets[:] = [third_secret]
        for s in receiver.seen:
            assert b"whsec_" not in s["body"], "no secret in a delivery"
        # A group filter: only events about that group (its creation, its members).
        up.run("groups", "create", "--name", "ops")
        up.run("groups", "create", "--name", "dev")
        by_group = up.run("webhooks", "create", "--url", url, "--groups", "ops",
                          "--events", "GroupMemberAdded").stdout
        receiver.secrets.append(secret_of(by_group))
        up.run("groups", "add-member", "dev", "hook-user-1")
        up.run("groups", "add-member", "ops", "hook-user-2")
        added = wait("ops's new member", lambda: [t for t in receiver.taken()
                                                 if json.loads(t["body"])["type"].endswith("GroupMemberAdded")])
        up.run("users", "create", "--user-name", "after-the-groups")
        wait("a later event", lambda: any(json.loads(t["body"])["data"]["target"]["name"] == "after-the-groups"
                                          for t in receiver.taken()))
        added = [json.loads(t["body"]) for t in receiver.taken()
                 if json.loads(t["body"])["type"].endswith("GroupMemberAdded")]
        assert [a["data"]["target"]["name"] for a in added] == ["hook-user-2"], added

        # A receiver that hangs holds back only its own deliveries: the healthy receiver takes
        # the next event well before the hanging one's 10 s attempt timeout.
        release, arrived = threading.Event(), threading.Event()
        hanging = hanging_server(release, arrived)
        hung = up.run("webhooks", "create", "--url", f"http://127.0.0.1:{hanging.server_address[1]}/hook",
                      "--events", "UserCreated").stdout
        hung_id = next(line.split()[3] for line in hung.splitlines() if line.startswith("Created webhook"))
        up.run("users", "create", "--user-name", "before-the-hang")
        wait("the hanging receiver reached", arrived.is_set, 8)
        up.run("users", "create", "--user-name", "while-one-hangs")
        wait("the healthy receiver served while the other hangs",
             lambda: any(json.loads(t["body"])["data"]["target"]["name"] == "while-one-hangs"
                         for t in receiver.taken()), 8)
        release.set()
        up.run("webhooks", "delete", hung_id)
        hanging.shutdown()
        listed = [json.loads(l) for l in up.run("webhooks", "list", "--output", "json").stdout.splitlines()]
        assert [(l["url"], l["events"]) for l in listed] == [(url, "UserCreated"), (url, "GroupMemberAdded")], listed
        for l in listed:
            up.run("webhooks", "delete", l["id"])
        assert up.run("webhooks", "list", "--output", "json").stdout.strip() == "", "deleted"
        refused = up.run("webhooks", "create", "--url", "http://hooks.example.com/pim", check=False)
        assert refused.returncode == 2 and "https" in refused.stderr, refused.stderr
        print(f"webhooks: {len(receiver.seen)} deliveries verified by standardwebhooks; retries and order as promised")
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
