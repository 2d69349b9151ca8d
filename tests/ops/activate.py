"""Launch ``monolaked`` the way systemd's socket activation does (a test helper).

Usage: python activate.py FD[=NAME] [FD[=NAME] ...] -- monolaked-args...

The given inherited fds are moved to 3, 4, …; LISTEN_PID is set to this process's pid, which
``exec`` keeps, so the master sees exactly what systemd would hand it.
"""

from __future__ import annotations

import fcntl
import os
import sys


def main(argv: list[str]) -> None:
    split = argv.index("--")
    specs, args = argv[:split], argv[split + 1 :]
    fds: list[int] = []
    names: list[str] = []
    for spec in specs:
        number, _, name = spec.partition("=")
        fds.append(int(number))
        names.append(name)
    # move every fd out of the way first (above any target), so none is clobbered
    parked = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
    for fd in fds:
        os.close(fd)
    for i, fd in enumerate(parked):
        os.dup2(fd, 3 + i)
        os.close(fd)
    os.environ["LISTEN_PID"] = os.environ.get("FAKE_LISTEN_PID", str(os.getpid()))
    os.environ["LISTEN_FDS"] = str(len(fds))
    if any(names):
        os.environ["LISTEN_FDNAMES"] = ":".join(names)
    os.execv(sys.executable, [sys.executable, "-m", "monolake.supervisor.cli", *args])


if __name__ == "__main__":
    main(sys.argv[1:])
