"""Runs `pim up` on a fresh data directory for the CI scripts, signed in as the
break-glass administrator. Usage:

    with PimUp(pim) as up:
        up.run("users", "create", "--user-name", "lee")
"""

import os
import subprocess
import tempfile
import time


class PimUp:
    def __init__(self, pim: str, redis: tuple[str, str] | None = None, env: dict | None = None):
        """`redis`: (URL, stream prefix) to publish events there; embedded otherwise.
        `env`: more settings (e.g. OTEL_*)."""
        self.pim = pim
        work = tempfile.mkdtemp(prefix="pim-ci-")
        self.env = dict(os.environ, PIM_DATA_DIR=os.path.join(work, "data"), PIM_LISTEN_ADDR="127.0.0.1:0",
                        PIM_TOKEN_FILE=os.path.join(work, "token"))
        self.env.pop("PIM_REDIS_URL", None)
        if redis is not None:
            self.env["PIM_REDIS_URL"], self.env["PIM_STREAM_PREFIX"] = redis
        self.env.update(env or {})
        self.redis = redis
        self.work = work
        self.process = None
        self.ssf = None
        self.portal = None
        self.verifying_keys = None

    def __enter__(self) -> "PimUp":
        password = self._start(first=True)
        self.admin_password = password
        self.run("login", "--user", "admin", "--password-stdin", stdin=password + "\n")
        return self

    def restart(self, **env):
        """Stops `pim up` and starts it again on the same data directory, with the settings
        in `env` changed (None removes one); the administrator stays signed in."""
        self.process.terminate()
        self.process.wait(timeout=30)
        for name, value in env.items():
            if value is None:
                self.env.pop(name, None)
            else:
                self.env[name] = value
        self._start(first=False)

    def _start(self, first: bool) -> str | None:
        """Starts `pim up` and reads what it prints: where it serves, and on the first start
        the break-glass administrator's password (returned)."""
        self.process = subprocess.Popen([self.pim, "up"], env=self.env, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True)
        server = password = None
        done = False
        deadline = time.time() + 60
        while not done and time.time() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            if line.startswith("PIM is up at"):
                server = line.split()[-1]
            if line.strip().startswith("Portal:"):
                self.portal = line.split()[-1].rstrip("/")
            if "event verifying keys: PIM_EVENT_VERIFYING_KEYS=" in line:
                self.verifying_keys = line.strip().split("=", 1)[1]
            if "Shared Signals (SSF) transmitter:" in line:
                self.ssf = line.split()[-1].removesuffix("/.well-known/ssf-configuration")
            if line.strip().startswith("password:"):
                password = line.split()[-1]
            done = server is not None and (password is not None if first else line.strip().startswith("data:"))
        if not done:
            self.__exit__(None, None, None)
            raise RuntimeError("pim up did not print its address and credentials")
        self.env["PIM_SERVER"] = server
        return password

    def secrets_key(self) -> str:
        """The key `pim up` seals secrets with: PIM_SECRETS_KEY, or the one it keeps."""
        if "PIM_SECRETS_KEY" in self.env:
            return self.env["PIM_SECRETS_KEY"]
        with open(os.path.join(self.env["PIM_DATA_DIR"], "secrets.key")) as f:
            return f.read().strip()

    def run(self, *args: str, stdin: str | None = None, check: bool = True,
            as_user: str | None = None) -> subprocess.CompletedProcess:
        """`as_user`: run with that user's own token file instead of the administrator's."""
        env = dict(self.env)
        if as_user is not None:
            env["PIM_TOKEN_FILE"] = os.path.join(self.work, f"token-{as_user}")
        return subprocess.run([self.pim, *args], input=stdin, env=env, check=check, capture_output=True, text=True)

    def popen(self, *args: str, as_user: str | None = None) -> subprocess.Popen:
        env = dict(self.env)
        if as_user is not None:
            env["PIM_TOKEN_FILE"] = os.path.join(self.work, f"token-{as_user}")
        return subprocess.Popen([self.pim, *args], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def __exit__(self, *_):
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
        if self.redis is not None:
            # The streams under this run's prefix go with it (redis-cli comes with the server).
            url, prefix = self.redis
            keys = subprocess.run(["redis-cli", "-u", url, "--scan", "--pattern", prefix + "*"],
                                  capture_output=True, text=True).stdout.split()
            if keys:
                subprocess.run(["redis-cli", "-u", url, "del", *keys], capture_output=True)


def wait(what: str, check, seconds: float = 60):
    """Polls `check` until it returns something truthy (returned), or fails after `seconds`."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
