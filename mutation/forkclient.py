"""Test command of a mutant under the fork server: ``python -S forkclient.py SOCKET TIMEOUT LOG
-- PYTEST_ARGS...``; prints the run's output and exits with pytest's status (124: timeout)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from forkserver import request  # noqa: E402


def main(argv: list[str]) -> int:
    sock, timeout, log, sep, *args = argv
    if sep != "--":
        print("usage: forkclient.py SOCKET TIMEOUT LOG -- PYTEST_ARGS...", file=sys.stderr)
        return 2
    reply = request(sock, {"args": args, "timeout": float(timeout), "log": log})
    if os.path.exists(log):
        with open(log) as fh:
            sys.stdout.write(fh.read()[-20000:])
    return int(reply.get("code", 3))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
