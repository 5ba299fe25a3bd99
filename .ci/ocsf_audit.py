"""PIM's audit export validates as OCSF with tools that are not ours.

Starts `pim up`, does a little of everything (users, an eligible assignment, a policy
change, a failed sign-in, a group member added and an owner made eligible through PIM for
Groups), exports the audit log with `pim audit export --format ocsf`, and validates every
line against the official OCSF 1.1.0 schema of its class (JSON Schema from the
`ocsf-json-schema` package, checked with `jsonschema`). A broken event must fail
the same check, so the check itself is shown to bite. Exits non-zero on any failure.
Usage: python3 .ci/ocsf_audit.py PATH_TO_PIM
"""

import copy
import json
import sys

import jsonschema
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

from pim_up import PimUp

CLASSES = {3001: "account_change", 3006: "group_management", 6003: "api_activity"}


def main(pim: str) -> int:
    with PimUp(pim) as up:
        up.run("users", "create", "--user-name", "lee", "--password-stdin", stdin="lee's long passphrase\n")
        up.run("assign", "--principal", "lee", "--role", "Security Reader", "--kind", "eligible", "--permanent")
        up.run("policy", "set", "Security Reader", "--require-approval", "true")
        up.run("groups", "create", "--name", "ops")
        up.run("groups", "add-member", "ops", "lee")
        up.run("groups", "assign", "--principal", "lee", "--group", "ops", "--access", "owner",
               "--kind", "eligible", "--permanent", "-j", "runs ops")
        up.run("login", "--user", "lee", "--password-stdin", stdin="not lee's password\n", check=False)
        exported = up.run("audit", "export", "--format", "ocsf").stdout

    schemas = OcsfJsonSchemaEmbedded(get_ocsf_schema(version="1.1.0"))
    validators = {uid: jsonschema.Draft202012Validator(schemas.get_class_schema(name))
                  for uid, name in CLASSES.items()}
    events = [json.loads(line) for line in exported.splitlines() if line.strip()]
    if len(events) < 6:
        print(f"expected at least 6 events, got {len(events)}", file=sys.stderr)
        return 1
    seen = {}
    for event in events:
        validator = validators.get(event.get("class_uid"))
        if validator is None:
            print(f"unexpected class: {event.get('class_uid')}", file=sys.stderr)
            return 1
        errors = sorted(validator.iter_errors(event), key=str)
        if errors:
            print(f"not valid OCSF {CLASSES[event['class_uid']]}: {errors[0].message}\n{json.dumps(event)}",
                  file=sys.stderr)
            return 1
        seen[event["class_uid"]] = seen.get(event["class_uid"], 0) + 1
    if set(seen) != set(CLASSES):
        print(f"expected every class, saw {seen}", file=sys.stderr)
        return 1
    if not any(e["status_id"] == 2 for e in events):
        print("the failed sign-in is missing", file=sys.stderr)
        return 1
    broken = copy.deepcopy(events[0])
    del broken["metadata"]
    if validators[broken["class_uid"]].is_valid(broken):
        print("the validator accepted an event without metadata", file=sys.stderr)
        return 1
    print(f"OCSF: {len(events)} audit events valid ({', '.join(f'{CLASSES[k]}: {v}' for k, v in seen.items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
