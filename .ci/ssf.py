"""Shared Signals as a receiver that is not ours sees them: `pim up`, an app (a service
principal holding "Shared Signals Receiver") that reads the transmitter's configuration,
fetches its JWKS and makes two streams over HTTP, one pushed (RFC 8935) and one polled
(RFC 8936). Every Security Event Token is verified with PyJWT against the published keys.
Lee is given a role for 4 seconds: the push receiver gets the role's token-claims-change,
then its session-revoked within 1 s of the role's end; the polled stream holds the same two
events, in order, until they are acknowledged. The push receiver wants its own credential
(the stream's authorization_header) on every SET, then rotates it with a PATCH; the
credential is never shown back nor in the audit trail, and survives a rotation of
`PIM_SECRETS_KEY`. Without a token, or without the permission, stream management is
refused. Usage: python3 .ci/ssf.py PATH_TO_PIM
"""

import base64
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt

from pim_up import PimUp, wait

SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
CLAIMS_CHANGE = "https://schemas.openid.net/secevent/caep/event-type/token-claims-change"
VERIFICATION = "https://schemas.openid.net/secevent/ssf/event-type/verification"
PUSH, POLL = "urn:ietf:rfc:8935", "urn:ietf:rfc:8936"


def call(method: str, url: str, token: str | None = None, body=None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("content-type", "application/json")
    if token is not None:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            status, text = answer.status, answer.read()
    except urllib.error.HTTPError as refused:
        status, text = refused.code, refused.read()
    return status, (json.loads(text) if text else None)


RECEIVER_CREDENTIAL = "Bearer receiver-credential-4f1c"


class Receiver:
    """An RFC 8935 push endpoint that wants its own credential (the stream's
    authorization_header): takes each SET carrying it (202) and notes when it came; refuses
    any other (401)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.received: list[tuple[float, str, str]] = []  # (time, content type, SET)
        self.refused = 0
        self.credential = RECEIVER_CREDENTIAL

    def sets(self) -> list[tuple[float, str, str]]:
        with self.lock:
            return list(self.received)


def serve(receiver: Receiver) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if self.headers.get("authorization") != receiver.credential:
                with receiver.lock:
                    receiver.refused += 1
                self.send_response(401)
                self.send_header("content-length", "0")
                self.end_headers()
                return
            with receiver.lock:
                receiver.received.append((time.time(), self.headers.get("content-type"), body.decode()))
            self.send_response(202)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server



def parse_time(text: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def main(pim: str) -> int:
    receiver = Receiver()
    server = serve(receiver)
    # The receiver listens on this machine: a private address the operator allows.
    with PimUp(pim, env={"PIM_SSF_PRIVATE_RECEIVERS": "on"}) as up:
        issuer = up.ssf
        assert issuer, "pim up prints where the transmitter is"
        status, config = call("GET", f"{issuer}/.well-known/ssf-configuration")
        assert status == 200 and config["issuer"] == issuer, config
        assert set(config["delivery_methods_supported"]) == {PUSH, POLL}, config
        status, jwks = call("GET", config["jwks_uri"])
        assert status == 200, jwks
        keys = {k.key_id: k for k in jwt.PyJWKSet.from_dict(jwks).keys}

        created = up.run("service-principals", "create", "--name", "ssf-app").stdout
        client_id = next(l.split()[-1] for l in created.splitlines() if "client id:" in l)
        secret = next(l.split()[2] for l in created.splitlines() if "client secret:" in l)
        app_id = created.splitlines()[0].split("(")[-1].rstrip(")")
        up.run("assign", "Shared Signals Receiver", "--principal", "ssf-app", "--kind", "active", "--duration", "1h",
               "-j", "receives CAEP")
        up.run("login", "--client-id", client_id, "--password-stdin", stdin=secret + "\n", as_user="ssf-app")
        with open(os.path.join(up.work, "token-ssf-app")) as f:
            token = f.read().strip()

        def verified(set_text: str) -> dict:
            header = jwt.get_unverified_header(set_text)
            assert header["typ"] == "secevent+jwt" and header["alg"] == "EdDSA", header
            return jwt.decode(set_text, keys[header["kid"]], algorithms=["EdDSA"], audience=app_id, issuer=issuer)

        # Refusals: no token; a user who does not hold pim.ssf.receive.
        status, refused = call("POST", config["configuration_endpoint"], None, {"delivery": {"method": POLL}})
        assert status == 401, (status, refused)
        up.run("users", "create", "--user-name", "lee", "--email", "lee@example.com", "--password-stdin",
               stdin="lee's long passphrase\n")
        up.run("login", "--user", "lee", "--password-stdin", stdin="lee's long passphrase\n", as_user="lee")
        with open(os.path.join(up.work, "token-lee")) as f:
            lee_token = f.read().strip()
        status, refused = call("POST", config["configuration_endpoint"], lee_token, {"delivery": {"method": POLL}})
        assert status == 403 and "pim.ssf.receive" in refused["description"], (status, refused)

        push_url = f"http://127.0.0.1:{server.server_address[1]}/caep"
        status, pushed = call("POST", config["configuration_endpoint"], token, {
            "delivery": {"method": PUSH, "endpoint_url": push_url, "authorization_header": RECEIVER_CREDENTIAL},
            "events_requested": [SESSION_REVOKED, CLAIMS_CHANGE], "format": "iss_sub",
            "description": "the payments app"})
        assert status == 201 and pushed["aud"] == app_id and pushed["iss"] == issuer, (status, pushed)
        assert "receiver-credential" not in json.dumps(pushed), "the receiver's credential is never shown back"
        status, bad = call("POST", config["configuration_endpoint"], token, {
            "delivery": {"method": PUSH, "endpoint_url": push_url, "authorization_header": "Bearer a\r\nX-Injected: 1"}})
        assert status == 400 and "authorization_header" in bad["description"], (status, bad)
        assert set(pushed["events_delivered"]) == {SESSION_REVOKED, CLAIMS_CHANGE}, pushed
        # The polled stream names subjects by email (RFC 9493), as an app signing users in elsewhere does.
        status, polled = call("POST", config["configuration_endpoint"], token,
                              {"delivery": {"method": POLL}, "format": "email"})
        assert status == 201 and polled["delivery"]["endpoint_url"].startswith(issuer), (status, polled)
        status, bad = call("POST", config["configuration_endpoint"], token,
                           {"delivery": {"method": PUSH, "endpoint_url": "http://receiver.example.com/"}})
        assert status == 400 and "https" in bad["description"], (status, bad)

        # Verification: the receiver's state comes back in a signed SET.
        status, _ = call("POST", config["verification_endpoint"], token, {"stream_id": pushed["stream_id"],
                                                                          "state": "ci-state-1"})
        assert status == 204, status
        first = wait("the verification event", receiver.sets)[0]
        assert first[1] == "application/secevent+jwt", first[1]
        claims = verified(first[2])
        assert claims["events"][VERIFICATION]["state"] == "ci-state-1", claims
        # Verification is rate-limited: five a minute per stream, then 429 with Retry-After.
        for _ in range(4):
            status, _ = call("POST", config["verification_endpoint"], token, {"stream_id": pushed["stream_id"]})
            assert status == 204, status
        status, limited = call("POST", config["verification_endpoint"], token, {"stream_id": pushed["stream_id"]})
        assert status == 429 and limited["err"] == "too_many_requests", (status, limited)
        tampered = first[2][:-4] + ("AAAA" if not first[2].endswith("AAAA") else "BBBB")
        try:
            verified(tampered)
            raise AssertionError("a tampered SET verified")
        except jwt.InvalidSignatureError:
            pass

        # Lee's role for 4 seconds: the claims change when it is given, the session revoked
        # when it ends, pushed within 1 s of its end.
        up.run("assign", "Exchange Administrator", "--principal", "lee", "--kind", "active", "--duration", "4s",
               "-j", "a short task")
        events = lambda kind: [(at, verified(s)) for at, _, s in receiver.sets()
                               if kind in json.loads(jwt.utils.base64url_decode(s.split(".")[1]))["events"]]
        given = wait("the token-claims-change", lambda: events(CLAIMS_CHANGE))[0][1]
        change = given["events"][CLAIMS_CHANGE]
        assert change["claims"]["pim_role_added"]["name"] == "Exchange Administrator", given
        lee_id = given["sub_id"]["sub"]
        assert given["sub_id"] == {"format": "iss_sub", "iss": "pim.identity", "sub": lee_id}, given
        ends_at = parse_time(change["claims"]["pim_role_added"]["until"])
        arrived, revoked = wait("the session-revoked", lambda: events(SESSION_REVOKED), 15)[0]
        assert revoked["sub_id"]["sub"] == lee_id, revoked
        assert revoked["events"][SESSION_REVOKED]["initiating_entity"] == "policy", revoked
        late = arrived - ends_at
        assert late <= 1.0, f"session-revoked pushed {late:.3f} s after the role ended"

        # The polled stream holds the same two events, in order, until acknowledged.
        poll_url = polled["delivery"]["endpoint_url"]
        status, answer = call("POST", poll_url, token, {"returnImmediately": True, "maxEvents": 10})
        assert status == 200 and not answer["moreAvailable"], (status, answer)
        sets = {jti: verified(s) for jti, s in answer["sets"].items()}
        # jti are time-ordered ids: the order they were queued in, which is the records' order.
        kinds = [next(iter(sets[jti]["events"])) for jti in sorted(sets)]
        assert kinds == [CLAIMS_CHANGE, SESSION_REVOKED], kinds
        assert all(c["sub_id"] == {"format": "email", "email": "lee@example.com"} for c in sets.values()), sets
        status, answer = call("POST", poll_url, token, {"returnImmediately": True, "ack": list(sets)})
        assert status == 200 and answer["sets"] == {}, answer

        # Lee removed from the polled stream (SSF add/remove subject): his next change is pushed
        # but not queued for polling; added back, the one after is.
        lee_subject = {"format": "email", "email": "lee@example.com"}
        status, _ = call("POST", config["remove_subject_endpoint"], token,
                         {"stream_id": polled["stream_id"], "subject": lee_subject})
        assert status == 204, status
        status, bad = call("POST", config["remove_subject_endpoint"], token,
                           {"stream_id": polled["stream_id"], "subject": {"format": "phone_number"}})
        assert status == 400 and "format" in bad["description"], (status, bad)
        pushed_before = len(events(CLAIMS_CHANGE))
        up.run("assign", "Security Reader", "--principal", "lee", "--kind", "active", "--duration", "1h",
               "-j", "a second task")
        wait("the second token-claims-change, pushed", lambda: len(events(CLAIMS_CHANGE)) > pushed_before)
        status, answer = call("POST", poll_url, token, {"returnImmediately": True})
        assert status == 200 and answer["sets"] == {}, ("removed from the polled stream", answer)
        status, _ = call("POST", config["add_subject_endpoint"], token,
                         {"stream_id": polled["stream_id"], "subject": lee_subject})
        assert status == 200, status
        up.run("unassign", "Security Reader", "--principal", "lee", "--kind", "active", "-j", "done")
        back = wait("lee's end, polled again", lambda: call("POST", poll_url, token, {"returnImmediately": True})[1]["sets"])
        assert all(SESSION_REVOKED in verified(s)["events"] for s in back.values()), back
        status, answer = call("POST", poll_url, token, {"returnImmediately": True, "ack": list(back)})
        assert status == 200 and answer["sets"] == {}, answer

        assert receiver.refused == 0, "every push carried the stream's authorization_header"
        exported = up.run("audit", "export").stdout
        assert "SsfStreamCreated" in exported and "receiver-credential" not in exported, \
            "the audit trail names the stream, never its credential"
        listed = [json.loads(l) for l in up.run("ssf", "streams", "--output", "json").stdout.splitlines()]
        assert sorted(l["delivery"] for l in listed) == ["poll", f"push to http://127.0.0.1:{server.server_address[1]}"], listed
        assert all(l["receiver"] == "ssf-app (app)" and l["pending"] == "0" for l in listed), listed

        # The receiver rotates its credential: a PATCH gives the new one, and pushes carry it.
        receiver.credential = "Bearer receiver-credential-5e2a"
        status, patched = call("PATCH", config["configuration_endpoint"], token, {
            "stream_id": pushed["stream_id"],
            "delivery": {"method": PUSH, "endpoint_url": push_url, "authorization_header": receiver.credential}})
        assert status == 200 and "receiver-credential" not in json.dumps(patched), (status, patched)
        before = len(receiver.sets())
        up.run("assign", "Global Reader", "--principal", "lee", "--kind", "active", "--duration", "1h",
               "-j", "a credential rotation check")
        wait("a push carrying the new credential", lambda: len(receiver.sets()) > before)
        assert receiver.refused == 0, "no push went with the old credential after the PATCH"

        # The suite's key rotates: the restart that gives the old key too seals the stream's
        # credential again under the new one, so pushes carry it once the old key is gone; the
        # SETs verify with the keys the transmitter publishes then.
        old_key = up.secrets_key()
        up.restart(PIM_SECRETS_KEY=base64.b64encode(os.urandom(32)).decode(), PIM_SECRETS_KEY_PREVIOUS=old_key)
        up.restart(PIM_SECRETS_KEY_PREVIOUS=None)
        issuer = up.ssf
        status, config = call("GET", f"{issuer}/.well-known/ssf-configuration")
        assert status == 200, config
        keys = {k.key_id: k for k in jwt.PyJWKSet.from_dict(call("GET", config["jwks_uri"])[1]).keys}
        before = len(receiver.sets())
        up.run("unassign", "Global Reader", "--principal", "lee", "--kind", "active", "-j", "after the key's rotation")
        wait("a push after the key's rotation", lambda: len(receiver.sets()) > before)
        assert receiver.refused == 0, "the push carried the credential sealed again under the new key"
        verified(receiver.sets()[-1][2])

        status, _ = call("DELETE", f"{config['configuration_endpoint']}?stream_id={pushed['stream_id']}", token)
        assert status == 204, status
        status, _ = call("GET", f"{config['configuration_endpoint']}?stream_id={pushed['stream_id']}", token)
        assert status == 404, status
        print(f"ssf: {len(receiver.sets())} pushed SETs and {len(sets) + len(back)} polled verified with PyJWT; "
              f"session-revoked {late * 1000:.0f} ms after the role ended")
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
