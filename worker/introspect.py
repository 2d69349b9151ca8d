"""What a worker holds, for ``monolaked debug``: objects by type, fds, timers, tasks, stacks,
and how its event loop waits (the busy-poll window it applies).

Answers "what does this worker retain" (issue 17: RSS growing with in-place reloads) from the
outside, without a debugger: the master forwards a ``debug`` request to one worker, which
replies with this report. It walks every object the collector tracks, so it costs tens of
milliseconds of the worker's loop: a diagnostic, not a metric.
"""

from __future__ import annotations

import asyncio
import gc
import os
import tracemalloc
from collections import Counter
from typing import Any

TOP_TYPES = 60  # object types listed, most numerous first
TOP_ALLOCATIONS = 25  # tracemalloc lines listed, when tracing (MONOLAKE_TRACEMALLOC)


def start_tracing_if_asked() -> None:
    """``MONOLAKE_TRACEMALLOC=N`` in a worker's environment: trace allocations with N frames
    from the start (costly; for hunting leaks), so ``debug`` can show where memory went."""
    frames = os.environ.get("MONOLAKE_TRACEMALLOC", "")
    if frames.isdigit() and int(frames) > 0 and not tracemalloc.is_tracing():
        tracemalloc.start(int(frames))


def live_timers(loop: asyncio.AbstractEventLoop) -> int:
    """Scheduled, not cancelled timers (asyncio's heap; 0 for a loop without one)."""
    scheduled = getattr(loop, "_scheduled", ())
    return sum(1 for handle in scheduled if not handle.cancelled())


def busy_poll_us(loop: asyncio.AbstractEventLoop) -> int:
    """The busy-poll window the running loop applies now (uring/busypoll.py), in µs."""
    if hasattr(type(loop), "busy_poll"):  # the io_uring loop: native
        return round(float(loop.busy_poll) * 1e6)  # type: ignore[attr-defined]
    from monolake.uring.busypoll import BusyPollSelector

    selector = getattr(loop, "_selector", None)
    return round(selector.window * 1e6) if isinstance(selector, BusyPollSelector) else 0


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def report(handles: dict[str, int], collect: bool) -> dict[str, Any]:
    """The report; ``collect``: run a full collection first (then the counts are what is
    really retained, and ``collected`` says how much was garbage waiting for the collector)."""
    collected = gc.collect() if collect else None
    objects = gc.get_objects()
    by_type = Counter(type(obj).__name__ for obj in objects)
    loop = asyncio.get_running_loop()
    out: dict[str, Any] = {
        "rss": rss_bytes(),
        "fds": len(os.listdir("/proc/self/fd")),
        "timers": live_timers(loop),
        "busy_poll_us": busy_poll_us(loop),
        "tasks": len(asyncio.all_tasks(loop)),
        "objects": len(objects),
        "collected": collected,
        "gc_counts": list(gc.get_count()),
        "handles": handles,
        "types": dict(by_type.most_common(TOP_TYPES)),
    }
    del objects
    if tracemalloc.is_tracing():
        snapshot = tracemalloc.take_snapshot()
        out["allocations"] = [
            {"where": str(stat.traceback), "size": stat.size, "count": stat.count}
            for stat in snapshot.statistics("lineno")[:TOP_ALLOCATIONS]
        ]
    return out
