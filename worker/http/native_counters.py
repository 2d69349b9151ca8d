"""The native exchange's stats counters (uring/mu_counters.c), read into ``stats()``.

The C exchange counts into one ``mu_counters`` struct per server (the same counters as
worker/http/stats.py's ``Stats``, in the same order, and Stats' own counting rules); Python
reads it only when ``stats()`` or a reload asks, and adds it to the Python engine's counts, so
one server reports one set of totals whichever engine served a request.
"""

from __future__ import annotations

from typing import Any

from monolake.worker.http.stats import BUCKET_KEYS, COUNTERS, GAUGES, Stats

try:
    from monolake.uring._codec import ffi, lib  # type: ignore[import-not-found,attr-defined,unused-ignore]
except ImportError:  # the codec extension is not built
    ffi = lib = None

FIELDS = COUNTERS + GAUGES  # mu_counters' fields before ``bins``


class NativeCounters:
    """One mu_counters (zeroed): ``ptr`` is what the C exchange counts into."""

    __slots__ = ("ptr",)

    def __init__(self) -> None:
        if lib is None:
            raise RuntimeError("the monolake.uring._codec extension is not built")
        self.ptr: Any = ffi.new("mu_counters *")

    def count_status(self, status: int) -> None:
        lib.mu_ctr_count_status(self.ptr, status)

    def observe(self, seconds: float) -> None:
        """Stats.observe: the microseconds as Python truncates them, then the C count."""
        lib.mu_ctr_observe_us(self.ptr, int(seconds * 1_000_000))

    def as_dict(self) -> dict[str, int]:
        """The keys of ``Stats.as_dict()``, with the same cumulative duration buckets."""
        c = self.ptr
        out = {name: int(getattr(c, name)) for name in FIELDS}
        running = 0
        for key, i in zip(BUCKET_KEYS, range(len(BUCKET_KEYS)), strict=True):
            running += int(c.bins[i])
            out[key] = running
        return out


def combined(stats: Stats, native: NativeCounters | None) -> dict[str, int]:
    """One server's stats(): the Python engine's counts plus the native exchange's."""
    mine = stats.as_dict()
    if native is None:
        return mine
    theirs = native.as_dict()
    return {k: v + theirs.get(k, 0) for k, v in mine.items()}
