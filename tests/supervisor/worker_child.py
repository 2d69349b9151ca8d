"""A real worker process driven by the test as its master: the tests that speak the control
protocol themselves start it as the master does (supervisor/workers.py's command line)."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from monolake.supervisor.workers import worker_argv


def start_worker(control: socket.socket, log: Path) -> subprocess.Popen[bytes]:
    """A worker on ``control`` (the worker's end of a socketpair, closed here: the child has
    its own copy), its stderr written to ``log``. The caller waits for it or kills it."""
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            worker_argv(control.fileno()),
            pass_fds=[control.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    control.close()
    return proc
