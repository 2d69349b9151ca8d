"""Process memory readings that the memory tests and scripts/bench_conn_memory.py share."""

from __future__ import annotations

import time
from collections.abc import Callable


def settled(read_kib: Callable[[], int], timeout: float = 5.0) -> int:
    """``read_kib()`` (an RSS in KiB) once two readings 200 ms apart agree within 1 % (or
    64 KiB): frees and closes have settled; the last reading at the deadline."""
    deadline = time.monotonic() + timeout
    last = read_kib()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = read_kib()
        if abs(now - last) <= max(64, last // 100):
            return now
        last = now
    return last
