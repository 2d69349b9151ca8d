"""systemd's notify protocol (``Type=notify``): a datagram to ``$NOTIFY_SOCKET``. No dependency."""

from __future__ import annotations

import os
import socket
import time


def notify(*lines: str) -> bool:
    """Send ``READY=1``, ``RELOADING=1``, ``STOPPING=1``, ``STATUS=...``; False if not under systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if "RELOADING=1" in lines and not any(line.startswith("MONOTONIC_USEC=") for line in lines):
        # Type=notify-reload (systemd 253+) wants to know when the reload began
        lines = (*lines, f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
    if path.startswith("@"):
        path = "\0" + path[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(path)
            sock.sendall("\n".join(lines).encode())
        return True
    except OSError:
        return False
