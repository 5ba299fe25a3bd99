"""An app asks PIM whether a user may do something, as a service principal (Python, grpcio).

It signs in with its client id and secret (SignInServicePrincipal), asks CheckAccess by
permission (or role) at a scope and prints the answer with the grants behind it; with
--watch SECONDS it then prints the access changes PIM pushes (WatchAccessChanges), so a
cached answer can be dropped the moment access ends.

The service principal needs pim.assignments.read to ask about others (e.g. an active Global
Reader or Security Reader assignment); anyone may ask about themselves.

    pip install grpcio grpcio-tools
    PIM_CLIENT_SECRET=... python3 check_access.py --server 127.0.0.1:50051 --client-id ID \\
        --principal USER_ID --permission app.payments/refunds/approve --scope /apps/payments --watch 30

The stubs are generated from PIM's proto/ into a temporary directory at start (--proto
points elsewhere). Exit status: 0 allowed, 1 not allowed, 2 usage or a refused call.
"""

import argparse
import datetime
import glob
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))


def stubs(proto_root: str) -> str:
    """Generates the Python modules for PIM's protos; returns the directory holding them."""
    out = tempfile.mkdtemp(prefix="pim-stubs-")
    files = glob.glob(os.path.join(proto_root, "pim", "*", "v1", "*.proto"))
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    code = protoc.main(["protoc", f"-I{proto_root}", f"-I{include}", f"--python_out={out}",
                        f"--grpc_python_out={out}", *files])
    if code != 0:
        raise SystemExit(f"could not compile the protos in {proto_root}")
    return out


def rfc3339(ts) -> str:
    return datetime.datetime.fromtimestamp(ts.seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:50051", help="host:port of PIM (pim up or the gateway)")
    parser.add_argument("--client-id", required=True, help="the service principal's client id")
    parser.add_argument("--principal", required=True, help="the id of the user to ask about")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--permission", help="e.g. app.payments/refunds/approve")
    target.add_argument("--role", help="a role's id or name")
    parser.add_argument("--scope", default="/")
    parser.add_argument("--watch", type=float, default=0, help="then print access changes for this many seconds")
    parser.add_argument("--proto", default=os.path.join(HERE, "..", "..", "..", "proto"), help="PIM's proto/ directory")
    args = parser.parse_args()
    # The secret comes from the environment, never from the command line (where ps shows it).
    secret = os.environ.get("PIM_CLIENT_SECRET")
    if not secret:
        print("set PIM_CLIENT_SECRET to the client secret", file=sys.stderr)
        return 2

    sys.path.insert(0, stubs(os.path.abspath(args.proto)))
    from pim.assignment.v1 import assignment_pb2, assignment_pb2_grpc
    from pim.identity.v1 import identity_pb2, identity_pb2_grpc

    channel = grpc.insecure_channel(args.server)
    try:
        token = identity_pb2_grpc.AuthServiceStub(channel).SignInServicePrincipal(
            identity_pb2.SignInServicePrincipalRequest(client_id=args.client_id, client_secret=secret)).access_token
        auth = [("authorization", f"Bearer {token}")]
        access = assignment_pb2_grpc.AccessServiceStub(channel)
        ask = assignment_pb2.CheckAccessRequest(principal_id=args.principal, scope=args.scope)
        if args.permission:
            ask.permission = args.permission
        else:
            ask.role_id = args.role
        answer = access.CheckAccess(ask, metadata=auth)
    except grpc.RpcError as err:
        print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
        return 2
    if answer.allowed:
        print("allowed")
        for grant in answer.grants:
            until = f"until {rfc3339(grant.end_time)}" if grant.HasField("end_time") else "permanently"
            via = f" through group {grant.via_group_id}" if grant.via_group_id else ""
            print(f"  by {grant.role_name} at {grant.scope} (assignment {grant.assignment_id}), {until}{via}")
    else:
        print("not allowed")
    sys.stdout.flush()

    if args.watch > 0:
        changes = access.WatchAccessChanges(assignment_pb2.WatchAccessChangesRequest(), metadata=auth,
                                            timeout=args.watch)
        print(f"watching access changes for {args.watch:g}s", flush=True)
        try:
            for change in changes:
                if change.principal_id == args.principal:
                    what = "granted" if change.active else "ended"
                    print(f"{what}: role {change.role_id} at {change.scope} (assignment {change.assignment_id})",
                          flush=True)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
                return 2
    return 0 if answer.allowed else 1


if __name__ == "__main__":
    sys.exit(main())
