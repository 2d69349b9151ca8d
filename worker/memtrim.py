"""Give memory back to the system after a burst of closed connections (issue 16 §4).

Why: once thousands of connections close, the Python heap is back at its baseline but the
process RSS is not: glibc malloc keeps the freed chunks of its heap (the top of the main heap
only shrinks past M_TRIM_THRESHOLD, and holes below it never do). ``malloc_trim(0)`` hands
every free page back (madvise). It walks the heap, so it runs off the request path: a loop
callback a moment after a burst of closes, at most once per ``MIN_INTERVAL``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from time import monotonic
from typing import Any

BURST = 256          # closes since the last trim that make one worth doing
DELAY = 0.25         # seconds after the burst's first closes (the rest close meanwhile)
MIN_INTERVAL = 2.0   # seconds between two trims


def _load_trim() -> Any:
    """glibc's malloc_trim, or None (musl and others have nothing to trim this way)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


# MONOLAKE_MALLOC_TRIM=0 turns it off (for A/B measurements, scripts/bench_conn_memory.py)
_malloc_trim = None if os.environ.get("MONOLAKE_MALLOC_TRIM") == "0" else _load_trim()
_closes = 0
_pending: Any = None
_last = -MIN_INTERVAL
trims = 0  # how many trims ran (for tests and status)


def available() -> bool:
    return _malloc_trim is not None


def note_close(loop: Any) -> None:
    """A connection closed: count it, and after a burst schedule one trim."""
    global _closes, _pending
    _closes += 1
    if _closes >= BURST and _pending is None and _malloc_trim is not None:
        wait = max(DELAY, _last + MIN_INTERVAL - monotonic())
        _pending = loop.call_later(wait, _trim)


def _trim() -> None:
    global _closes, _pending, _last, trims
    _pending = None
    _closes = 0
    _last = monotonic()
    trims += 1
    _malloc_trim(0)


def trim_now() -> bool:
    """Trim at once (outside a burst, e.g. a test or a status hook); False if unavailable."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True
