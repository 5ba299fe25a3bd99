"""The example clients in services/pim/examples (Python with grpcio, Rust with tonic) work
against `pim up` as an app developer would run them.

Starts `pim up`, makes a custom role with an app permission, gives Lee an active assignment
of it, creates a service principal for the app (an active Global Reader, to ask about
others), then runs each example: it must sign in as the service principal, say "allowed"
with the grant behind it, and, watching access changes, print "ended" once an administrator
removes Lee's assignment. Asked elsewhere, it must say "not allowed" (exit status 1).
Usage: python3 .ci/example_clients.py PATH_TO_PIM PATH_TO_RUST_EXAMPLE
"""

import json
import os
import queue
import subprocess
import sys
import threading
import time

from pim_up import PimUp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON_EXAMPLE = os.path.join(ROOT, "services", "pim", "examples", "check_access.py")


def lines_of(process: subprocess.Popen) -> queue.Queue:
    q = queue.Queue()

    def pump():
        for line in process.stdout:
            q.put(line.rstrip("\n"))
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def wait_for(q: queue.Queue, wanted: str, seen: list, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            line = q.get(timeout=max(0.0, deadline - time.time()))
        except queue.Empty:
            return False
        if line is None:
            return False
        seen.append(line)
        if wanted in line:
            return True
    return False


def main(pim: str, rust_example: str) -> int:
    with PimUp(pim) as up:
        up.run("users", "create", "--user-name", "lee", "--password-stdin", stdin="lee's long passphrase\n")
        lee = json.loads(up.run("users", "get", "lee", "--output", "json").stdout.splitlines()[0])["id"]
        up.run("roles", "create", "--name", "Payments Refunder", "--permission", "app.payments/refunds/*")
        created = up.run("service-principals", "create", "--name", "payments-app").stdout
        client_id = next(l.split()[-1] for l in created.splitlines() if "client id:" in l)
        secret = next(l.split()[2] for l in created.splitlines() if "client secret:" in l)
        up.run("assign", "--principal", client_id, "--role", "Global Reader", "--kind", "active",
               "--duration", "24h", "--justification", "the payments app checks access")
        server = up.env["PIM_SERVER"]
        examples = {
            "python": [sys.executable, PYTHON_EXAMPLE, "--server", server.removeprefix("http://")],
            "rust": [rust_example, "--server", server],
        }
        env = dict(up.env, PIM_CLIENT_SECRET=secret)
        for name, command in examples.items():
            up.run("assign", "--principal", "lee", "--role", "Payments Refunder", "--kind", "active",
                   "--scope", "/apps/payments", "--duration", "1h", "--justification", "month-end refunds")
            ask = ["--client-id", client_id, "--principal", lee, "--permission", "app.payments/refunds/approve"]
            elsewhere = subprocess.run(command + ask + ["--scope", "/apps/other"], env=env, capture_output=True,
                                       text=True, timeout=120)
            if elsewhere.returncode != 1 or "not allowed" not in elsewhere.stdout:
                print(f"{name}: expected 'not allowed' (exit 1) at /apps/other, got {elsewhere.returncode}:\n"
                      f"{elsewhere.stdout}{elsewhere.stderr}", file=sys.stderr)
                return 1
            process = subprocess.Popen(command + ask + ["--scope", "/apps/payments/eu", "--watch", "60"], env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            seen = []
            try:
                q = lines_of(process)
                if not wait_for(q, "watching access changes", seen, 90):
                    print(f"{name}: never started watching:\n" + "\n".join(seen) + process.stderr.read(),
                          file=sys.stderr)
                    return 1
                if seen[0] != "allowed" or not any("by Payments Refunder at /apps/payments" in l for l in seen):
                    print(f"{name}: expected allowed by Payments Refunder:\n" + "\n".join(seen), file=sys.stderr)
                    return 1
                up.run("unassign", "--principal", "lee", "--role", "Payments Refunder", "--kind", "active",
                       "--scope", "/apps/payments", "--justification", "month-end is over")
                if not wait_for(q, "ended:", seen, 20):
                    print(f"{name}: the end of Lee's assignment was not pushed:\n" + "\n".join(seen), file=sys.stderr)
                    return 1
            finally:
                process.kill()
                process.wait()
            print(f"example client ({name}): allowed with its grant, not allowed elsewhere, the end pushed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
