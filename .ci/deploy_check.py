"""deploy/ checked offline, so it cannot rot silently (no Docker engine or cluster here).

- Kubernetes: every resource the kustomization lists validates strictly against the
  Kubernetes 1.30 schemas (`kubernetes-validate`); every service has a Deployment with more
  than one replica, gRPC health probes, resource requests and a non-root security context,
  a Service and a PodDisruptionBudget, and so has the gateway; the Ingress sends every path
  (`/`, pathType Prefix) to the gateway, which knows where each of the five services is.
- Compose: the five services, PostgreSQL (a database each), Redis with AOF, the gateway
  (`pim serve gateway`, knowing every service's address) and an OpenTelemetry Collector
  that takes OTLP.
- Dockerfile: its `cargo build` line is printed, and with --build run as is.
- The checks are shown to bite: broken copies of a manifest and of the compose file fail.
Usage: python3 .ci/deploy_check.py [--build]
"""

import copy
import os
import re
import shlex
import subprocess
import sys
import time

import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")
SERVICES = ["identity", "assignment", "approval", "alerting", "audit"]
K8S_VERSION = "1.30.0"


def k8s_problems(docs: list[dict], probe_kind: str = "grpc") -> list[str]:
    problems = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except Exception as err:  # the validator's own error types
            problems.append(f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}: {str(err)[:300]}")
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc.get("kind"), {})[doc.get("metadata", {}).get("name")] = doc
    for service in SERVICES + ["gateway"]:
        name = f"pim-{service}"
        deployment = by_kind.get("Deployment", {}).get(name)
        if deployment is None:
            problems.append(f"no Deployment {name}")
            continue
        spec = deployment.get("spec", {})
        if spec.get("replicas", 1) < 2:
            problems.append(f"{name}: fewer than 2 replicas")
        pod = spec.get("template", {}).get("spec", {})
        if not pod.get("securityContext", {}).get("runAsNonRoot"):
            problems.append(f"{name}: not runAsNonRoot")
        for container in pod.get("containers", []) or [{}]:
            for probe in ("readinessProbe", "livenessProbe"):
                if probe_kind not in container.get(probe, {}):
                    problems.append(f"{name}: no {probe_kind} {probe}")
            if not container.get("resources", {}).get("requests"):
                problems.append(f"{name}: no resource requests")
            env = {e.get("name"): e for e in container.get("env", [])}
            if service == "gateway":
                if container.get("args") != ["serve", "gateway"]:
                    problems.append(f"{name}: does not run pim serve gateway")
                continue
            signing = env.get("PIM_EVENT_SIGNING_KEYS", {}).get("valueFrom", {}).get("secretKeyRef", {})
            if signing.get("key") != service:
                problems.append(f"{name}: no event signing key of its own (PIM_EVENT_SIGNING_KEYS from key {service})")
            if "PIM_EVENT_VERIFYING_KEYS" not in env:
                problems.append(f"{name}: no PIM_EVENT_VERIFYING_KEYS")
        if name not in by_kind.get("Service", {}):
            problems.append(f"no Service {name}")
        if name not in by_kind.get("PodDisruptionBudget", {}):
            problems.append(f"no PodDisruptionBudget {name}")
    portal = by_kind.get("Deployment", {}).get("pim-portal")
    if portal is None:
        problems.append("no Deployment pim-portal")
    else:
        pod = portal.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []) or [{}]:
            if container.get("args") != ["serve", "portal"]:
                problems.append("pim-portal: does not run pim serve portal")
            for probe in ("readinessProbe", "livenessProbe"):
                if container.get(probe, {}).get("httpGet", {}).get("path") != "/healthz":
                    problems.append(f"pim-portal: no {probe} on GET /healthz")
            env = {e.get("name"): e.get("value", "") for e in container.get("env", [])}
            if not env.get("PIM_PUBLIC_URL", "").startswith("https://"):
                problems.append("pim-portal: PIM_PUBLIC_URL is not https:// (the session cookie would not be Secure)")
        for kind in ("Service", "PodDisruptionBudget", "Ingress"):
            if "pim-portal" not in by_kind.get(kind, {}):
                problems.append(f"no {kind} pim-portal")
    config = by_kind.get("ConfigMap", {}).get("pim-config", {}).get("data", {})
    for service in SERVICES:
        if config.get(f"PIM_{service.upper()}_URL") != f"http://pim-{service}:50051":
            problems.append(f"the gateway does not know where {service} is (PIM_{service.upper()}_URL)")
    for name, ingress in by_kind.get("Ingress", {}).items():
        paths = [p for rule in ingress.get("spec", {}).get("rules", []) for p in rule.get("http", {}).get("paths", [])]
        if name == "pim-portal":
            if not any(p.get("path") == "/" and p.get("backend", {}).get("service", {}) == {"name": "pim-portal", "port": {"name": "http"}}
                       for p in paths):
                problems.append("the pim-portal Ingress does not send / to pim-portal's http port")
            continue
        if name == "pim-ssf":
            # The Shared Signals transmitter: plain HTTP, served by audit on its ssf port.
            if not any(p.get("path") == "/" and p.get("backend", {}).get("service", {}) == {"name": "pim-audit", "port": {"name": "ssf"}}
                       for p in paths):
                problems.append("the pim-ssf Ingress does not send / to pim-audit's ssf port")
            continue
        # Kubernetes matches Prefix paths element by element: only `/` covers every gRPC path.
        if not any(p.get("path") == "/" and p.get("pathType") == "Prefix"
                   and p.get("backend", {}).get("service", {}).get("name") == "pim-gateway" for p in paths):
            problems.append("the Ingress does not send every path (/, Prefix) to pim-gateway")
        for p in paths:
            if p.get("path") != "/" and p.get("pathType") == "Prefix" and "." in p.get("path", ""):
                problems.append(f"the Ingress path {p.get('path')} cannot match gRPC paths (Prefix matches whole elements)")
    return problems


def compose_problems(compose: dict, collector: dict, init_sql: str) -> list[str]:
    problems = []
    services = compose.get("services", {})
    for needed in SERVICES + ["postgres", "redis", "otel-collector", "gateway", "portal"]:
        if needed not in services:
            problems.append(f"compose has no service {needed}")
    redis_args = services.get("redis", {}).get("command", [])
    redis_command = " ".join(redis_args)
    users, current = {}, None
    for arg in redis_args:
        if arg == "--user":
            current = None
        elif current is None and not arg.startswith("--"):
            current = arg
            users[current] = []
        elif current is not None:
            users[current].append(arg)
    if "on" in users.get("default", ["on"]):
        problems.append("compose: Redis lets anyone in (the default user is not off)")
    owned = {"identity": ["pim.identity.events"], "assignment": ["pim.assignment.events"],
             "approval": ["pim.approval.events"], "alerting": ["pim.alerting.events", "pim.alerts"],
             "audit": ["pim.audit.events"]}
    if "--appendonly yes" not in redis_command or "--appendfsync" not in redis_command:
        problems.append("compose: Redis runs without AOF (--appendonly yes --appendfsync …)")
    databases = set()
    for service in SERVICES:
        url = services.get(service, {}).get("environment", {}).get("PIM_DATABASE_URL", "")
        database = url.rsplit("/", 1)[-1]
        if not database or database in databases:
            problems.append(f"compose: {service} has no database of its own")
        elif f"CREATE DATABASE {database};" not in init_sql:
            problems.append(f"compose: {database} is not created by postgres-init.sql")
        databases.add(database)
        environment = services.get(service, {}).get("environment", {})
        if not str(environment.get("PIM_REDIS_URL", "")).startswith(f"redis://{service}:"):
            problems.append(f"compose: {service} does not reach Redis as its own user")
        rules = users.get(service, [])
        appends = [r for r in rules if "+xadd" in r]
        expected = "(+xadd " + " ".join(f"~{k}" for k in owned[service] + ["pim.deadletter"]) + ")"
        if appends != [expected] or "-@all" not in rules:
            problems.append(f"compose: Redis user {service} may append to more than its own streams ({appends})")
        if f"PIM_EVENT_KEY_{service.upper()}" not in str(environment.get("PIM_EVENT_SIGNING_KEYS", "")):
            problems.append(f"compose: {service} has no event signing key of its own")
        if "PIM_EVENT_VERIFYING_KEYS" not in environment:
            problems.append(f"compose: {service} has no PIM_EVENT_VERIFYING_KEYS")
    if services.get("identity", {}).get("environment", {}).get("PIM_APPROVAL_URL") != "http://approval:50051":
        problems.append("compose: identity does not know where approval is (PIM_APPROVAL_URL)")
    gateway = services.get("gateway", {})
    if gateway.get("command") != ["serve", "gateway"]:
        problems.append("compose: the gateway does not run pim serve gateway")
    for service in SERVICES:
        if gateway.get("environment", {}).get(f"PIM_{service.upper()}_URL") != f"http://{service}:50051":
            problems.append(f"compose: the gateway does not know where {service} is")
    published = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            host = str(port).rsplit(":", 1)[0]
            if host in published:
                problems.append(f"compose: {name} and {published[host]} both publish host port {host}")
            published[host] = name
    forwarders = sorted(
        f"{services.get(name, {}).get('networks', {}).get('default', {}).get('ipv4_address')}/32"
        for name in ["gateway", "portal"])
    trusted = str(services.get("identity", {}).get("environment", {}).get("PIM_TRUSTED_PROXIES", ""))
    if sorted(t.strip() for t in trusted.split(",") if t.strip()) != forwarders:
        problems.append(f"compose: identity must trust exactly the gateway and the portal ({forwarders}), not {trusted!r}")
    pipelines = collector.get("service", {}).get("pipelines", {})
    if "otlp" not in collector.get("receivers", {}) or "otlp" not in pipelines.get("traces", {}).get("receivers", []):
        problems.append("collector: no OTLP receiver in the traces pipeline")
    return problems


def merge(base, patch):
    """Kubernetes' strategic merge, as far as the overlays use it: maps merge (null deletes),
    lists of named maps merge by name, other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = merge(base.get(key), value) if key in base else value
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(i, dict) and "name" in i for i in base + patch):
        out = [dict(i) for i in base]
        for item in patch:
            match = next((i for i, b in enumerate(out) if b["name"] == item["name"]), None)
            if match is None:
                out.append(item)
            else:
                out[match] = merge(out[match], item)
        return out
    return patch


def load_overlay(name: str, base: list[dict]) -> list[dict]:
    """The base with an overlay's patches applied (each to the resources its target names)."""
    kustomization = yaml.safe_load(open(os.path.join(DEPLOY, "k8s", name, "kustomization.yaml")))
    docs = copy.deepcopy(base)
    for entry in kustomization.get("patches", []):
        target, patch = entry["target"], yaml.safe_load(entry["patch"])
        for i, doc in enumerate(docs):
            if doc.get("kind") == target["kind"] and target.get("name", doc["metadata"]["name"]) == doc["metadata"]["name"]:
                patched = merge(doc, {k: v for k, v in patch.items() if k != "metadata"})
                patched["metadata"] = merge(doc["metadata"], {k: v for k, v in patch["metadata"].items() if k != "name"})
                docs[i] = patched
    return docs


def mtls_problems(docs: list[dict]) -> list[str]:
    problems = k8s_problems(docs, probe_kind="exec")
    for doc in docs:
        if doc.get("kind") != "Deployment":
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
            for needed in ("PIM_TLS_CERT", "PIM_TLS_KEY", "PIM_TLS_CLIENT_CA", "PIM_TLS_CLIENT_CERT", "PIM_TLS_CLIENT_KEY"):
                if not env.get(needed):
                    problems.append(f"mtls: {doc['metadata']['name']} has no {needed}")
            for peer in [f"PIM_{service.upper()}_URL" for service in SERVICES]:
                if not env.get(peer, "").startswith("https://"):
                    problems.append(f"mtls: {doc['metadata']['name']} calls its peers without TLS ({peer})")
    return problems


def redis_acl_problems(compose: dict) -> list[str]:
    """Runs redis-server with compose's command (passwords filled in) and tries each user: it
    may read, group-read and acknowledge any PIM stream and append to its own, not to another's."""
    import socket
    import redis

    owned = {"identity": "pim.identity.events", "assignment": "pim.assignment.events",
             "approval": "pim.approval.events", "alerting": "pim.alerts", "audit": "pim.audit.events"}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = [re.sub(r"\$\{PIM_REDIS_PASSWORD_(\w+):\?[^}]*\}", lambda m: "pw-" + m.group(1).lower(), a)
            for a in compose["services"]["redis"]["command"]]
    args = [a for a in args if a not in ("--appendonly", "--appendfsync", "yes", "everysec")]
    server = subprocess.Popen(args + ["--port", str(port), "--bind", "127.0.0.1", "--save", ""],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    problems = []
    try:
        deadline = time.time() + 10
        while True:
            try:
                redis.Redis(port=port, username="health", password="-").ping()
                break
            except redis.exceptions.ConnectionError:
                if time.time() > deadline:
                    return ["compose: Redis did not start with compose's command"]
                time.sleep(0.1)
        try:
            redis.Redis(port=port).xadd("pim.identity.events", {"ce": b""})
            problems.append("compose: Redis accepts anonymous writes")
        except redis.exceptions.RedisError:
            pass
        for service, stream in owned.items():
            client = redis.Redis(port=port, username=service, password=f"pw-{service}")
            client.xadd(stream, {"ce": b""})
            client.xadd("pim.deadletter", {"ce": b""})
            # As a consumer of another service's stream does: make its group (and the stream).
            client.xgroup_create("pim.approval.events", service, id="0", mkstream=True)
            for other in owned.values():
                if other == stream:
                    continue
                try:
                    client.xadd(other, {"ce": b"forged"})
                    problems.append(f"compose: Redis user {service} may append to {other}")
                except redis.exceptions.NoPermissionError:
                    pass
            for _, entries in client.xreadgroup(service, "check", {"pim.approval.events": ">"}, count=1):
                for entry_id, _ in entries:
                    client.xack("pim.approval.events", service, entry_id)
            client.xautoclaim("pim.approval.events", service, "check", 30000)
            client.xpending("pim.approval.events", service)
            client.xrevrange("pim.identity.events", count=1)
    except redis.exceptions.RedisError as err:
        problems.append(f"compose: a Redis user may not do what PIM needs: {err}")
    finally:
        server.kill()
        server.wait()
    return problems


def load_k8s() -> list[dict]:
    base = os.path.join(DEPLOY, "k8s", "base")
    kustomization = yaml.safe_load(open(os.path.join(base, "kustomization.yaml")))
    docs = []
    for resource in kustomization["resources"]:
        docs.extend(d for d in yaml.safe_load_all(open(os.path.join(base, resource))) if d)
    return docs


def main(build: bool) -> int:
    docs = load_k8s()
    compose_dir = os.path.join(DEPLOY, "compose")
    compose = yaml.safe_load(open(os.path.join(compose_dir, "docker-compose.yml")))
    collector = yaml.safe_load(open(os.path.join(compose_dir, "otel-collector.yaml")))
    init_sql = open(os.path.join(compose_dir, "postgres-init.sql")).read()

    mtls = load_overlay("mtls", docs)
    problems = (k8s_problems(docs) + compose_problems(compose, collector, init_sql) + mtls_problems(mtls)
                + redis_acl_problems(compose))
    if problems:
        print("deploy/ is broken:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1

    # The checks bite: a Deployment without containers, and Redis without AOF, are refused.
    broken = copy.deepcopy(docs)
    deployment = next(d for d in broken if d["kind"] == "Deployment")
    del deployment["spec"]["template"]["spec"]["containers"]
    if not k8s_problems(broken):
        print("a Deployment without containers passed the check", file=sys.stderr)
        return 1
    no_aof = copy.deepcopy(compose)
    no_aof["services"]["redis"]["command"] = ["redis-server"]
    if not compose_problems(no_aof, collector, init_sql):
        print("Redis without AOF passed the check", file=sys.stderr)
        return 1

    # ... and so is an mTLS overlay that leaves a service without client certificates.
    no_client_ca = copy.deepcopy(mtls)
    deployment = next(d for d in no_client_ca if d["kind"] == "Deployment")
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        container["env"] = [e for e in container["env"] if e["name"] != "PIM_TLS_CLIENT_CA"]
    if not mtls_problems(no_client_ca):
        print("an mTLS overlay without PIM_TLS_CLIENT_CA passed the check", file=sys.stderr)
        return 1
    # ... and so is a Redis user that may append to another service's stream.
    wide = copy.deepcopy(compose)
    wide["services"]["redis"]["command"] = [
        "(+xadd ~pim.*)" if "+xadd ~pim.identity.events" in a else a for a in wide["services"]["redis"]["command"]]
    if not compose_problems(wide, collector, init_sql):
        print("a Redis user appending to every stream passed the check", file=sys.stderr)
        return 1
    # ... and so is a service signing with another's key.
    shared_key = copy.deepcopy(compose)
    shared_key["services"]["audit"]["environment"]["PIM_EVENT_SIGNING_KEYS"] = "${PIM_EVENT_KEY_IDENTITY}"
    if not compose_problems(shared_key, collector, init_sql):
        print("a service signing with another's event key passed the check", file=sys.stderr)
        return 1
    # ... and so is a host port two services publish.
    clash = copy.deepcopy(compose)
    clash["services"]["audit"]["ports"] = clash["services"]["portal"]["ports"]
    if not compose_problems(clash, collector, init_sql):
        print("two services publishing one host port passed the check", file=sys.stderr)
        return 1
    # ... and so is an Ingress routing by package prefix, which Kubernetes never matches.
    by_prefix = copy.deepcopy(docs)
    ingress = next(d for d in by_prefix if d["kind"] == "Ingress" and d["metadata"]["name"] == "pim")
    ingress["spec"]["rules"][0]["http"]["paths"][0]["path"] = "/pim.identity.v1."
    if not k8s_problems(by_prefix):
        print("an Ingress routing /pim.identity.v1. by Prefix passed the check", file=sys.stderr)
        return 1

    dockerfile = open(os.path.join(DEPLOY, "Dockerfile")).read()
    build_line = re.search(r"^RUN (cargo build .+)$", dockerfile, re.M)
    if build_line is None:
        print("the Dockerfile has no `RUN cargo build` line", file=sys.stderr)
        return 1
    command = build_line.group(1)
    print(f"deploy/: {len(docs)} Kubernetes resources valid for {K8S_VERSION} (and with the mtls overlay), compose, gateway and "
          f"Collector consistent; the Dockerfile builds with: {command}")
    if build:
        subprocess.run(shlex.split(command), cwd=ROOT, check=True)
        print("the Dockerfile's build command succeeded")
    return 0


if __name__ == "__main__":
    sys.exit(main("--build" in sys.argv[1:]))
