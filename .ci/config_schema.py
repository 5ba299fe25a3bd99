"""PIM's configuration files validate against deploy/pim.schema.json with tools that are
not ours (PyYAML reads them, `jsonschema` checks them).

Starts `pim up`, creates the users deploy/pim.example.yaml names, applies it, exports the
server's configuration with `pim export`, and validates the example and the export against
the schema (Draft 2020-12). A file with an unknown setting must fail the same check, so the
check itself is shown to bite. Exits non-zero on any failure.
Usage: python3 .ci/config_schema.py PATH_TO_PIM
"""

import json
import os
import sys

import jsonschema
import yaml

from pim_up import PimUp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Loader(yaml.SafeLoader):
    """YAML as PIM reads it: an unquoted time stays text (PyYAML would make it a datetime)."""


Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def main(pim: str) -> int:
    with open(os.path.join(ROOT, "deploy", "pim.schema.json")) as f:
        schema = json.load(f)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    example_path = os.path.join(ROOT, "deploy", "pim.example.yaml")
    with open(example_path) as f:
        example = yaml.load(f, Loader=Loader)

    with PimUp(pim) as up:
        for user in ("lee", "sam", "alice"):
            up.run("users", "create", "--user-name", user, "--password-stdin", stdin=f"{user}'s long passphrase\n")
        up.run("apply", "-f", example_path)
        again = up.run("apply", "-f", example_path).stdout
        if "No changes" not in again:
            print(f"a second apply changed something:\n{again}", file=sys.stderr)
            return 1
        exported = yaml.load(up.run("export").stdout, Loader=Loader)

    for name, document in (("deploy/pim.example.yaml", example), ("pim export", exported)):
        errors = sorted(validator.iter_errors(document), key=str)
        if errors:
            print(f"{name} does not match the schema: {errors[0].message} at {list(errors[0].path)}", file=sys.stderr)
            return 1
    for wanted in ("roles", "groups", "policies", "assignments"):
        if not exported.get(wanted):
            print(f"the export has no {wanted}", file=sys.stderr)
            return 1
    broken = {"policies": [{"role": "Payments Refunder", "requires_mfa": True}]}
    if validator.is_valid(broken):
        print("the schema accepted a policy with an unknown setting", file=sys.stderr)
        return 1
    print(f"configuration schema: the example and an export of {sum(len(v) for v in exported.values())} items are valid")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
