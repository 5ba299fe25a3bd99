"""A SOC consumer that is not ours reads PIM's alerts from Redis.

Starts `pim up` publishing to Redis (a fresh stream prefix), makes the rules fire (the
break-glass administrator is a permanent Global Administrator; a privileged role's policy
stops asking for MFA), then — with nothing but the `redis` package — reads `pim.alerts`
through a consumer group, and checks each entry's JSON against the official OCSF 1.1.0
Detection Finding schema (`ocsf-json-schema` + `jsonschema`) and parses it with
`py-ocsf-models`. A broken finding must fail the same check. Exits non-zero on any failure.
Usage: python3 .ci/soc_alerts.py PATH_TO_PIM [REDIS_URL]
"""

import json
import sys
import time
import uuid

import jsonschema
import redis
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema
from py_ocsf_models.events.findings.detection_finding import DetectionFinding

from pim_up import PimUp


def main(pim: str, url: str) -> int:
    prefix = f"soc-{uuid.uuid4().hex[:8]}."
    stream = f"{prefix}pim.alerts"
    client = redis.Redis.from_url(url)
    client.xgroup_create(stream, "soc", id="0", mkstream=True)
    schema = OcsfJsonSchemaEmbedded(get_ocsf_schema(version="1.1.0")).get_class_schema("detection_finding")
    validator = jsonschema.Draft202012Validator(schema)
    findings = []
    try:
        with PimUp(pim, redis=(url, prefix)) as up:
            up.run("policy", "set", "Privileged Role Administrator", "--require-mfa", "false")
            deadline = time.time() + 30
            rules = set()
            while {"permanent_privileged", "activation_without_mfa"} - rules and time.time() < deadline:
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
                        client.xack(stream, "soc", entry_id)
                        findings.append(finding)
                        rules.update(finding["finding_info"]["types"])
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
              f"({', '.join(sorted(rules))})")
        return 0
    finally:
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "redis://127.0.0.1:6379"))
