"""Give memory back to the system after a burst of closed connections (issue 16 §4).

Why: once thousands of connections close, the Python heap is back at its baseline but the
process RSS is not. Three things hold the freed memory (measured with 3000 idle connections,
docs/http.md "Memory per idle connection"):

- the per-connection tables (the loop's handlers, readers and transports, a server's set of
  connections): a dict or set never shrinks when its entries go, so each keeps a table sized
  for the burst (~0.7 MiB for 3000). ``compact_dict``/``compact_set`` rebuild them in place.
- the allocator: glibc keeps freed chunks in its heap; ``malloc_trim(0)`` hands every free
  page back (madvise, 0.1-0.3 ms). pymalloc keeps each 1 MiB arena while any object in it
  lives, and a handful of objects made during the burst (counters, timers) pin several: the
  worker therefore runs with ``PYTHONMALLOC=malloc`` (supervisor/workers.py), where a
  survivor pins a 4 KiB page, not an arena.
- cyclic garbage: on asyncio's own loop every closed transport is in a reference cycle (it
  holds a bound method of itself), and an upstream connection the upstream closed is in one
  with its parser. The worker's GC policy (gcpolicy.py) makes full collections rare, and a
  few such objects left in the heap kept 3 MiB of 3000 connections' pages from the trim:
  a full collection runs first (~10 ms for the worker's ~26k objects, once per burst).

A *burst* is the number of open connections falling ``BURST`` below its peak since the last
trim: steady churn (as many opens as closes) reuses its memory and never triggers one. The
work runs off the request path, in a loop callback a moment after the burst, at most once per
``MIN_INTERVAL``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys
import weakref
from collections.abc import Iterable
from time import monotonic
from typing import Any, Protocol

BURST = 256  # open connections below the peak that make a trim worth doing
DELAY = 0.25  # seconds without a close before the trim (the burst has ended)
MAX_WAIT = 2.0  # seconds a trim waits at most for the closes to stop
MIN_INTERVAL = 2.0  # seconds between two trims
COMPACT_MIN = 16 * 1024  # tables smaller than this (bytes) are left as they are

# the event loops' per-connection tables: the io_uring loop's completion handlers, readers and
# transports (uring/loop.py); asyncio's transports and selector map are found separately
LOOP_TABLES = ("_handlers", "_readers", "_conn_transports")


class Compactable(Protocol):
    def compact_memory(self) -> None:
        """Rebuild this owner's per-connection tables (``compact_dict``/``compact_set``)."""


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


# MONOLAKE_MALLOC_TRIM=0 turns the whole step off (for A/B measurements, bench_conn_memory.py)
ENABLED = os.environ.get("MONOLAKE_MALLOC_TRIM") != "0"
_malloc_trim = _load_trim() if ENABLED else None
_owners: weakref.WeakSet[Any] = weakref.WeakSet()
_level = 0  # connections open (note_open - note_close)
_peak = 0  # the highest _level since the last trim
_pending: Any = None
_due = 0.0  # when the pending trim runs at the latest
_closed_at = 0.0  # the last close
_last = -MIN_INTERVAL
trims = 0  # how many trims ran (for tests and status)


def available() -> bool:
    return _malloc_trim is not None


def track(owner: Compactable) -> None:
    """``owner.compact_memory()`` runs at every trim while the owner lives (held weakly)."""
    _owners.add(owner)


def note_open() -> None:
    """A connection was accepted (the servers' protocol factories)."""
    global _level, _peak
    _level += 1
    if _level > _peak:
        _peak = _level


def note_close(loop: Any) -> None:
    """A connection closed: once the open count is a burst below its peak, schedule a trim."""
    global _level, _pending, _closed_at, _due
    _level -= 1
    _closed_at = now = monotonic()
    if _peak - _level >= BURST and _pending is None and ENABLED:
        wait = max(DELAY, _last + MIN_INTERVAL - now)
        _due = now + wait + MAX_WAIT
        _pending = loop.call_later(wait, _trim, loop)


def _trim(loop: Any) -> None:
    global _pending, _last, _peak, trims
    now = monotonic()
    if now - _closed_at < DELAY and now < _due:  # still closing: trim once they stop
        _pending = loop.call_later(DELAY, _trim, loop)
        return
    _pending = None
    _peak = _level
    _last = monotonic()
    trims += 1
    trim_now(loop)


def trim_now(loop: Any = None) -> bool:
    """Collect cyclic garbage, compact the tables, trim the heap (outside a burst: a test or a
    status hook); False if there is no malloc_trim to call."""
    gc.collect()
    if loop is not None:
        compact_loop(loop)
    for owner in list(_owners):
        owner.compact_memory()
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


def compact_loop(loop: Any) -> int:
    """Compact the loop's per-connection tables; how many were rebuilt."""
    tables: list[Any] = [getattr(loop, name, None) for name in LOOP_TABLES]
    transports = getattr(loop, "_transports", None)  # a WeakValueDictionary
    if transports is not None and not getattr(transports, "_iterating", None):
        tables.append(getattr(transports, "data", None))
    tables.append(getattr(getattr(loop, "_selector", None), "_fd_to_key", None))
    return sum(compact_dict(t) for t in tables if isinstance(t, dict))


def compact_dict(table: dict[Any, Any]) -> bool:
    """Rebuild ``table`` in place if its hash table is over twice what its entries need (a
    dict never shrinks when entries are deleted). In place: others hold the same object (the
    C dispatcher holds the loop's)."""
    size = sys.getsizeof(table)
    if size < COMPACT_MIN:
        return False
    copy = table.copy()  # sized for its entries (a dict with deletions is rebuilt, not cloned)
    if sys.getsizeof(copy) * 2 > size:
        return False
    table.clear()
    table.update(copy)
    return True


def compact_set(table: set[Any]) -> bool:
    """``compact_dict`` for a set."""
    size = sys.getsizeof(table)
    if size < COMPACT_MIN:
        return False
    copy = set(table)
    if sys.getsizeof(copy) * 2 > size:
        return False
    table.clear()
    table |= copy
    return True


def compact_all(tables: Iterable[Any]) -> int:
    """Compact every dict and set of ``tables``; how many were rebuilt."""
    n = 0
    for t in tables:
        if isinstance(t, dict):
            n += compact_dict(t)
        elif isinstance(t, set):
            n += compact_set(t)
    return n
