"""Fork server for the mutants' test runs (``make mutate``).

Most of a small test run is spent importing numpy, scipy, pandas, statsmodels, numba,
matplotlib and pytest. The server imports those once; for every run it forks a child that
imports the project (the mutated module included) from disk and calls ``pytest.main``. The
project itself is never imported by the server, so every child sees the files as they are.

Protocol (one request per connection, JSON lines over a Unix socket): ``{"args": [...],
"timeout": seconds, "log": path}`` -> ``{"code": exit status}``; ``{"stop": true}`` ends the
server. A child running past its timeout is killed and reported with status 124.

Usage: ``python mutation/forkserver.py SOCKET`` (started by mutation/run.py in the copy of the
tree, which is its working directory).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import socket
import sys
import time

PRELOAD = ("numpy", "scipy", "scipy.special", "scipy.stats", "scipy.optimize",
           "scipy.integrate", "scipy.linalg", "pandas", "statsmodels.api", "numba",
           "threadpoolctl", "joblib", "matplotlib", "matplotlib.pyplot", "pytest",
           "hypothesis", "tomllib", "sqlite3")
TIMED_OUT = 124


def _child(args: list[str], log: str) -> None:
    os.setsid()  # its own group: a timeout kills whatever it started
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    code = 3
    try:
        import pytest

        code = int(pytest.main(args))
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _wait(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return TIMED_OUT
        time.sleep(0.01)


def serve(path: str) -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    assert not any(m == "simstudy" or m.startswith(("simstudy.", "tests")) for m in sys.modules)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)
    while True:
        conn, _ = srv.accept()
        with conn:
            req = json.loads(conn.makefile("r").readline())
            if req.get("stop"):
                break
            pid = os.fork()
            if pid == 0:
                srv.close()
                conn.close()
                _child(req["args"], req["log"])
            code = _wait(pid, float(req["timeout"]))
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"code": code}).encode() + b"\n")
    srv.close()
    os.unlink(path)


def request(path: str, payload: dict, connect_timeout: float = 60.0) -> dict:
    """Send one request; wait for the server's socket up to ``connect_timeout`` seconds."""
    deadline = time.monotonic() + connect_timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    with s:
        s.sendall(json.dumps(payload).encode() + b"\n")
        line = s.makefile("r").readline()
    return json.loads(line) if line else {}


if __name__ == "__main__":
    serve(sys.argv[1])
