"""``monolaked start --daemon``: detach, and let the launching process exit with the outcome."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


def daemonize() -> Callable[[bool, str], None]:
    """Double-fork; the original process waits on a pipe and exits 0 once the master reports
    its workers ready (1 if it could not start). Returns the master's reporting callback."""
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            outcome = pipe.read()
        ok = outcome.startswith(b"ok")
        sys.stderr.write(
            outcome[3:].decode(errors="replace") + "\n"
            if outcome
            else "monolaked: the daemon exited before it started\n"
        )
        os._exit(0 if ok else 1)
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    os.close(devnull)
    reported = [False]

    def report(ok: bool, message: str) -> None:
        if reported[0]:
            return
        reported[0] = True
        try:
            os.write(write_end, (b"ok " if ok else b"err ") + message.encode())
            os.close(write_end)
        except OSError:
            pass

    return report
