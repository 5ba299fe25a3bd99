"""deploy/ checked offline, so it cannot rot silently (no Docker engine or cluster here).

- Kubernetes: every resource the kustomization lists validates strictly against the
  Kubernetes 1.30 schemas (`kubernetes-validate`); every service has a Deployment with more
  than one replica, gRPC health probes, resource requests and a non-root security context,
  a Service and a PodDisruptionBudget; the Ingress routes every gRPC package in proto/.
- Compose: the five services, PostgreSQL (a database each), Redis with AOF, Envoy and an
  OpenTelemetry Collector; Envoy routes every gRPC package; the Collector takes OTLP.
- Dockerfile: its `cargo build` line is printed, and with --build run as is.
- The checks are shown to bite: broken copies of a manifest and of the compose file fail.
Usage: python3 .ci/deploy_check.py [--build]
"""

import copy
import glob
import os
import re
import shlex
import subprocess
import sys

import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")
SERVICES = ["identity", "assignment", "approval", "alerting", "audit"]
K8S_VERSION = "1.30.0"


def grpc_packages() -> set[str]:
    """The proto packages that declare services: what a gateway must route."""
    found = set()
    for path in glob.glob(os.path.join(ROOT, "proto", "pim", "*", "v1", "*.proto")):
        text = open(path).read()
        package = re.search(r"^package ([\w.]+);", text, re.M)
        if package and re.search(r"^service \w+", text, re.M):
            found.add(package.group(1))
    return found


def k8s_problems(docs: list[dict]) -> list[str]:
    problems = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except Exception as err:  # the validator's own error types
            problems.append(f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}: {str(err)[:300]}")
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc.get("kind"), {})[doc.get("metadata", {}).get("name")] = doc
    for service in SERVICES:
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
                if "grpc" not in container.get(probe, {}):
                    problems.append(f"{name}: no gRPC {probe}")
            if not container.get("resources", {}).get("requests"):
                problems.append(f"{name}: no resource requests")
            env = {e.get("name"): e for e in container.get("env", [])}
            signing = env.get("PIM_EVENT_SIGNING_KEYS", {}).get("valueFrom", {}).get("secretKeyRef", {})
            if signing.get("key") != service:
                problems.append(f"{name}: no event signing key of its own (PIM_EVENT_SIGNING_KEYS from key {service})")
            if "PIM_EVENT_VERIFYING_KEYS" not in env:
                problems.append(f"{name}: no PIM_EVENT_VERIFYING_KEYS")
        if name not in by_kind.get("Service", {}):
            problems.append(f"no Service {name}")
        if name not in by_kind.get("PodDisruptionBudget", {}):
            problems.append(f"no PodDisruptionBudget {name}")
    routed = set()
    for ingress in by_kind.get("Ingress", {}).values():
        for rule in ingress.get("spec", {}).get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                routed.add(path.get("path", "").strip("/").rstrip("."))
    for package in grpc_packages() - routed:
        problems.append(f"the Ingress does not route /{package}.*")
    return problems


def compose_problems(compose: dict, envoy: dict, collector: dict, init_sql: str) -> list[str]:
    problems = []
    services = compose.get("services", {})
    for needed in SERVICES + ["postgres", "redis", "otel-collector", "gateway"]:
        if needed not in services:
            problems.append(f"compose has no service {needed}")
    redis_command = " ".join(services.get("redis", {}).get("command", []))
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
        if f"PIM_EVENT_KEY_{service.upper()}" not in str(environment.get("PIM_EVENT_SIGNING_KEYS", "")):
            problems.append(f"compose: {service} has no event signing key of its own")
        if "PIM_EVENT_VERIFYING_KEYS" not in environment:
            problems.append(f"compose: {service} has no PIM_EVENT_VERIFYING_KEYS")
    routes = set()
    clusters = {c["name"] for c in envoy["static_resources"]["clusters"]}
    for listener in envoy["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                for host in f["typed_config"]["route_config"]["virtual_hosts"]:
                    for route in host["routes"]:
                        routes.add(route["match"]["prefix"].strip("/").rstrip("."))
                        if route["route"]["cluster"] not in clusters:
                            problems.append(f"envoy: no cluster {route['route']['cluster']}")
    for package in grpc_packages() - routes:
        problems.append(f"envoy does not route /{package}.*")
    pipelines = collector.get("service", {}).get("pipelines", {})
    if "otlp" not in collector.get("receivers", {}) or "otlp" not in pipelines.get("traces", {}).get("receivers", []):
        problems.append("collector: no OTLP receiver in the traces pipeline")
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
    envoy = yaml.safe_load(open(os.path.join(compose_dir, "envoy.yaml")))
    collector = yaml.safe_load(open(os.path.join(compose_dir, "otel-collector.yaml")))
    init_sql = open(os.path.join(compose_dir, "postgres-init.sql")).read()

    problems = k8s_problems(docs) + compose_problems(compose, envoy, collector, init_sql)
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
    if not compose_problems(no_aof, envoy, collector, init_sql):
        print("Redis without AOF passed the check", file=sys.stderr)
        return 1

    # ... and so is a service signing with another's key.
    shared_key = copy.deepcopy(compose)
    shared_key["services"]["audit"]["environment"]["PIM_EVENT_SIGNING_KEYS"] = "${PIM_EVENT_KEY_IDENTITY}"
    if not compose_problems(shared_key, envoy, collector, init_sql):
        print("a service signing with another's event key passed the check", file=sys.stderr)
        return 1

    dockerfile = open(os.path.join(DEPLOY, "Dockerfile")).read()
    build_line = re.search(r"^RUN (cargo build .+)$", dockerfile, re.M)
    if build_line is None:
        print("the Dockerfile has no `RUN cargo build` line", file=sys.stderr)
        return 1
    command = build_line.group(1)
    print(f"deploy/: {len(docs)} Kubernetes resources valid for {K8S_VERSION}, compose, Envoy and "
          f"Collector consistent; the Dockerfile builds with: {command}")
    if build:
        subprocess.run(shlex.split(command), cwd=ROOT, check=True)
        print("the Dockerfile's build command succeeded")
    return 0


if __name__ == "__main__":
    sys.exit(main("--build" in sys.argv[1:]))
