"""An authenticator that is not ours accepts PIM's enrolment and PIM accepts its codes.

Starts `pim up` on a fresh data directory, signs in as the break-glass administrator,
enrols TOTP through `pim mfa enroll` with pyotp reading the otpauth:// URI it shows, then
signs in again: the password alone is held by the server until `pim login --code` gives
pyotp's next code; the same code is refused a second time. Exits non-zero on any failure.
Usage: python3 .ci/external_totp.py PATH_TO_PIM
"""

import sys
import time

import pyotp

from pim_up import PimUp


def main(pim: str) -> int:
    with PimUp(pim) as up:
        enroll = up.popen("mfa", "enroll")
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

        # With an authenticator, the password alone does not sign in: the server holds the
        # sign-in until a code is verified.
        held = up.run("login", "--user", "admin", "--password-stdin", stdin=up.admin_password + "\n", check=False)
        if held.returncode == 0 or "--code" not in held.stderr:
            print(f"a password alone signed in: {held.stdout} {held.stderr}", file=sys.stderr)
            return 1
        # The next step's code (within the allowed skew) completes the sign-in.
        login = up.run("login", "--user", "admin", "--password-stdin", "--code", totp.at(first + 30),
                       stdin=up.admin_password + "\n", check=False)
        if login.returncode != 0:
            print(f"pim refused pyotp's code: {login.stderr}", file=sys.stderr)
            return 1
        # The same code again is refused (each code works once).
        replay = up.run("mfa", "verify", "--code", totp.at(first + 30), check=False)
        if replay.returncode == 0:
            print("pim accepted a code twice", file=sys.stderr)
            return 1
        print("external TOTP: pyotp's codes accepted at enrolment and sign-in, a replay refused")
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
