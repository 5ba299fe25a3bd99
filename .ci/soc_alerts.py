"""A SOC consumer that is not ours reads PIM's alerts from Redis.

Starts `pim up` publishing to Redis (a fresh stream prefix), makes the rules fire (the
break-glass administrator is a permanent Global Administrator; a privileged role's policy
stops asking for MFA), then — with nothing but the `redis` package — reads `pim.alerts`
through a consumer group, and checks each entry's JSON against the official OCSF 1.1.0
Detection Finding schema (`ocsf-json-schema` + `jsonschema`) and parses it with
`py-ocsf-models`. A broken finding must fail the same check. Each entry's envelope (`ce`)
must carry alerting's Ed25519 signature as proto/pim/events/v1/envelope.proto describes it,
verified with `cryptography` from the public key `pim up` prints at start; an altered
envelope must fail. Exits non-zero on any failure.
Usage: python3 .ci/soc_alerts.py PATH_TO_PIM [REDIS_URL]
"""

import base64
import hashlib
import json
import sys
import time
import uuid

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

import jsonschema
import redis
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema
from py_ocsf_models.events.findings.detection_finding import DetectionFinding

from pim_up import PimUp


def proto_fields(message: bytes):
    """The (number, wire type, start, end, value) of each top-level protobuf field."""
    i = 0

    def varint():
        nonlocal i
        shift = value = 0
        while True:
            byte = message[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while i < len(message):
        start = i
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value = varint()
        elif wire == 2:
            length = varint()
            value = message[i:i + length]
            i += length
        else:
            raise ValueError(f"unexpected wire type {wire}")
        yield number, wire, start, i, value


def signature_valid(stream: str, ce: bytes, public: Ed25519PublicKey) -> bool:
    """Envelope field 10 is the key id, 11 the signature over "pim.events.v1\\n", the stream
    name, "\\n" and the envelope without its signature field."""
    parsed = list(proto_fields(ce))
    signature = [f for f in parsed if f[0] == 11]
    key_id = [f[4].decode() for f in parsed if f[0] == 10]
    expected_id = hashlib.sha256(public.public_bytes_raw()).hexdigest()[:16]
    if len(signature) != 1 or key_id != [expected_id]:
        return False
    _, _, start, end, value = signature[0]
    unsigned = ce[:start] + ce[end:]
    try:
        public.verify(value, b"pim.events.v1\n" + stream.encode() + b"\n" + unsigned)
        return True
    except InvalidSignature:
        return False


def alerting_public_key(verifying_keys: str | None) -> Ed25519PublicKey:
    """Alerting's public key, from the PIM_EVENT_VERIFYING_KEYS line `pim up` prints at start
    (what a SOC is given: no secret of the suite's)."""
    for entry in (verifying_keys or "").split(","):
        service, public = entry.split(":", 1) if ":" in entry else ("", "")
        if service == "alerting":
            return Ed25519PublicKey.from_public_bytes(base64.b64decode(public))
    raise SystemExit("pim up printed no verifying key for alerting")


def main(pim: str, url: str) -> int:
    prefix = f"soc-{uuid.uuid4().hex[:8]}."
    stream = f"{prefix}pim.alerts"
    client = redis.Redis.from_url(url)
    client.xgroup_create(stream, "soc", id="0", mkstream=True)
    schema = OcsfJsonSchemaEmbedded(get_ocsf_schema(version="1.1.0")).get_class_schema("detection_finding")
    validator = jsonschema.Draft202012Validator(schema)
    findings = []
    seen, replays = set(), 0  # envelope ids: a repeat is a replay, signed or not
    try:
        with PimUp(pim, redis=(url, prefix)) as up:
            public = alerting_public_key(up.verifying_keys)
            up.run("policy", "set", "Privileged Role Administrator", "--require-mfa", "false")
            deadline = time.time() + 30
            rules = set()
            while ({"permanent_privileged", "activation_without_mfa"} - rules or not replays) and time.time() < deadline:
                reply = client.xreadgroup("soc", "ci", {stream: ">"}, count=100, block=500)
                for _, entries in reply:
                    for entry_id, fields in entries:
                        finding = json.loads(fields[b"data"])
                        errors = sorted(validator.iter_errors(finding), key=str)
                        if errors:
                            print(f"not an OCSF Detection Finding: {errors[0].message}\n{json.dumps(finding)}",
                                  file=sys.stderr)
                            return 1
                        DetectionFinding(**finding)
                        ce = fields[b"ce"]
                        if not signature_valid("pim.alerts", ce, public):
                            print(f"entry {entry_id} does not carry alerting's signature", file=sys.stderr)
                            return 1
                        tampered = ce.replace(b"permanent_privileged", b"permanent_privilegee")
                        if tampered != ce and signature_valid("pim.alerts", tampered, public):
                            print("an altered envelope passed the signature check", file=sys.stderr)
                            return 1
                        if signature_valid("pim.alerting.events", ce, public):
                            print("a signature for pim.alerts passed for another stream", file=sys.stderr)
                            return 1
                        client.xack(stream, "soc", entry_id)
                        envelope_id = next(v for n, _, _, _, v in proto_fields(ce) if n == 1)
                        if envelope_id in seen:
                            replays += 1
                            continue
                        seen.add(envelope_id)
                        if not findings:
                            # Whoever can write to Redis can append a genuine entry again: it
                            # verifies, and only its envelope id tells it is a repeat.
                            client.xadd(stream, fields)
                        findings.append(finding)
                        rules.update(finding["finding_info"]["types"])
            if replays != 1:
                print(f"the genuine entry appended again was not told apart ({replays} repeats dropped)",
                      file=sys.stderr)
                return 1
            missing = {"permanent_privileged", "activation_without_mfa"} - rules
            if missing:
                print(f"no finding for {sorted(missing)} within 30 s (saw {sorted(rules)})", file=sys.stderr)
                return 1
            # Before the suite stops: stopping deletes its streams.
            pending = client.xpending(stream, "soc")["pending"]
            if pending:
                print(f"{pending} entries left unacknowledged", file=sys.stderr)
                return 1
        broken = dict(findings[0])
        del broken["finding_info"]
        if validator.is_valid(broken):
            print("the validator accepted a finding without finding_info", file=sys.stderr)
            return 1
        print(f"SOC consumer: {len(findings)} findings on {stream}, all valid OCSF Detection Findings "
              f"signed by alerting ({', '.join(sorted(rules))})")
        return 0
    finally:
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "redis://127.0.0.1:6379"))
