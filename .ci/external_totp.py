"""An authenticator that is not ours accepts PIM's enrolment and PIM accepts its codes.

Starts `pim up` on a fresh data directory, signs in as the break-glass administrator,
enrols TOTP through `pim mfa enroll` with pyotp reading the otpauth:// URI it shows, then
steps up with `pim mfa verify` using pyotp's next code. Exits non-zero on any failure.
Usage: python3 .ci/external_totp.py PATH_TO_PIM
"""

import os
import subprocess
import sys
import tempfile
import time

import pyotp


def main(pim: str) -> int:
    work = tempfile.mkdtemp(prefix="pim-totp-")
    env = dict(os.environ, PIM_DATA_DIR=os.path.join(work, "data"), PIM_LISTEN_ADDR="127.0.0.1:0",
               PIM_TOKEN_FILE=os.path.join(work, "token"))
    env.pop("PIM_REDIS_URL", None)
    up = subprocess.Popen([pim, "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        server = password = None
        deadline = time.time() + 60
        while (server is None or password is None) and time.time() < deadline:
            line = up.stdout.readline()
            if not line:
                break
            if line.startswith("PIM is up at"):
                server = line.split()[-1]
            if line.strip().startswith("password:"):
                password = line.split()[-1]
        if server is None or password is None:
            print("pim up did not print its address and credentials", file=sys.stderr)
            return 1
        env["PIM_SERVER"] = server
        subprocess.run([pim, "login", "--user", "admin", "--password-stdin"], input=password + "\n",
                       env=env, check=True, capture_output=True, text=True)

        enroll = subprocess.Popen([pim, "mfa", "enroll"], env=env, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        uri = None
        while uri is None:
            line = enroll.stdout.readline()
            if not line:
                break
            if line.strip().startswith("otpauth://"):
                uri = line.strip()
        if uri is None:
            print("pim mfa enroll showed no otpauth:// URI", file=sys.stderr)
            return 1
        totp = pyotp.parse_uri(uri)
        assert isinstance(totp, pyotp.TOTP) and totp.digits == 6 and totp.interval == 30, uri
        first = time.time()
        out, err = enroll.communicate(totp.at(first) + "\n", timeout=30)
        if enroll.returncode != 0:
            print(f"enrolment refused pyotp's code: {err}", file=sys.stderr)
            return 1

        # The next step's code (within the allowed skew) steps the session up.
        verify = subprocess.run([pim, "mfa", "verify", "--code", totp.at(first + 30)], env=env,
                                capture_output=True, text=True)
        if verify.returncode != 0:
            print(f"pim refused pyotp's code: {verify.stderr}", file=sys.stderr)
            return 1
        # The same code again is refused (each code works once).
        replay = subprocess.run([pim, "mfa", "verify", "--code", totp.at(first + 30)], env=env,
                                capture_output=True, text=True)
        if replay.returncode == 0:
            print("pim accepted a code twice", file=sys.stderr)
            return 1
        print("external TOTP: pyotp's codes accepted, a replay refused")
        return 0
    finally:
        up.terminate()
        up.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
