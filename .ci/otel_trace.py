"""One activation that needs approval is one trace, seen by an OTLP receiver that is not ours;
the metrics arrive over OTLP too, and the Prometheus endpoint serves them.

Runs a minimal OTLP/gRPC trace receiver (grpcio + opentelemetry-proto), starts `pim up`
exporting to it (OTEL_EXPORTER_OTLP_ENDPOINT) with events over Redis, and through the CLI
has Lee ask for a role that needs approval and the administrator approve it. The
trace `pim activate` starts must then hold its CreateRequest call, approval handling RequestCreated,
assignment handling ApprovalGranted, and audit recording the events, each event span with a
parent across the Redis hop. Exits non-zero on any failure.
Usage: python3 .ci/otel_trace.py PATH_TO_PIM [REDIS_URL]
"""

import socket
import sys
import threading
import urllib.request
import time
import uuid
from concurrent import futures

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from pim_up import PimUp


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self):
        self.spans = []
        self.lock = threading.Lock()

    def Export(self, request, context):
        with self.lock:
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    self.spans.extend(scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def snapshot(self):
        with self.lock:
            return list(self.spans)


class MetricsReceiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self):
        self.names = set()
        self.lock = threading.Lock()

    def Export(self, request, context):
        with self.lock:
            for resource in request.resource_metrics:
                for scope in resource.scope_metrics:
                    self.names.update(m.name for m in scope.metrics)
        return metrics_service_pb2.ExportMetricsServiceResponse()


def main(pim: str, url: str) -> int:
    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    metrics_receiver = MetricsReceiver()
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(metrics_receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        admin_port = probe.getsockname()[1]
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_SERVICE_NAME": "pim",
           "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_METRIC_EXPORT_INTERVAL": "500",
           "PIM_ADMIN_ADDR": f"127.0.0.1:{admin_port}"}
    prefix = f"otel-{uuid.uuid4().hex[:8]}."
    try:
        with PimUp(pim, redis=(url, prefix), env=env) as up:
            up.run("users", "create", "--user-name", "lee", "--password-stdin", stdin="lee's long passphrase\n")
            up.run("assign", "--principal", "lee", "--role", "Security Reader", "--kind", "eligible", "--permanent")
            up.run("policy", "set", "Security Reader", "--require-approval", "true", "--require-mfa", "false")
            up.run("login", "--user", "lee", "--password-stdin", stdin="lee's long passphrase\n", as_user="lee")
            asked = up.run("activate", "Security Reader", "--duration", "1h", "--justification", "trace me",
                           "--no-wait", as_user="lee").stdout
            if "pending_approval" not in asked:
                print(f"expected a pending request: {asked}", file=sys.stderr)
                return 1
            approval = None
            deadline = time.time() + 20
            while approval is None and time.time() < deadline:
                for line in up.run("approvals", "--status", "pending").stdout.splitlines():
                    if "Security Reader" in line:
                        approval = line.split()[0]
                time.sleep(0.2)
            if approval is None:
                print("no approval appeared", file=sys.stderr)
                return 1
            up.run("approve", approval, "-j", "traced")

            wanted = {"pim activate", "approval RequestCreated", "assignment ApprovalGranted"}
            deadline = time.time() + 30
            while time.time() < deadline:
                spans = receiver.snapshot()
                # Lee's CreateRequest (the administrator's assignment was one too).
                found = None
                for root in (s for s in spans if s.name.endswith("AssignmentService/CreateRequest")):
                    in_trace = [s for s in spans if s.trace_id == root.trace_id]
                    names = {s.name for s in in_trace}
                    audit = [s for s in in_trace if s.name.startswith("audit ")]
                    if wanted <= names and audit:
                        found = root
                        break
                if found is not None:
                    trace = found.trace_id
                    break
                time.sleep(0.3)
            else:
                names = sorted({s.name for s in receiver.snapshot()})
                print(f"the activation's trace is incomplete; spans seen: {names}", file=sys.stderr)
                return 1
            # The request's span names who asked, for which role, and the request.
            attributes = {a.key: a.value.string_value for a in found.attributes}
            for key in ("pim.principal", "pim.role_id", "pim.request_id"):
                if not attributes.get(key):
                    print(f"the CreateRequest span lacks {key}: {attributes}", file=sys.stderr)
                    return 1
            # The same run's metrics, read with a plain HTTP client.
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10).read().decode()
            for wanted_metric in ('pim_rpc_requests_total{code="Ok",method="CreateRequest"',
                                  'pim_events_published_total{stream="pim.approval.events"}',
                                  'pim_events_consumed_total{', 'pim_outbox_backlog{service="audit"}'):
                if wanted_metric not in metrics:
                    print(f"/metrics lacks {wanted_metric}", file=sys.stderr)
                    return 1
            # And over OTLP.
            otlp_wanted = {"pim_rpc_requests_total", "pim_events_published_total", "pim_rpc_duration_seconds_sum"}
            deadline = time.time() + 20
            while not otlp_wanted <= metrics_receiver.names and time.time() < deadline:
                time.sleep(0.2)
            if not otlp_wanted <= metrics_receiver.names:
                print(f"OTLP metrics missing: {sorted(otlp_wanted - metrics_receiver.names)}", file=sys.stderr)
                return 1
        event_spans = [s for s in in_trace if (s.name in wanted and s.name != "pim activate") or s.name.startswith("audit ")]
        orphans = [s.name for s in event_spans if not s.parent_span_id]
        if orphans:
            print(f"event spans without a parent: {orphans}", file=sys.stderr)
            return 1
        print(f"OTLP: one trace ({trace.hex()}) holds {len(in_trace)} spans, among them "
              f"{', '.join(sorted(wanted))} and {len(audit)} audit spans, each linked to its parent; "
              f"CreateRequest carries pim.principal, pim.role_id and pim.request_id; "
              f"{len(metrics_receiver.names)} metrics received, and /metrics served")
        return 0
    finally:
        server.stop(None)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "redis://127.0.0.1:6379"))
