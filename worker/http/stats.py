"""Per-server counters (the keys of ``ServerHandle.stats()`` in docs/contracts.md).

Plain attributes on a slotted object: incrementing one is the cheapest thing Python can do,
and this runs several times per request.
"""

from __future__ import annotations

from bisect import bisect_left

from monolake.worker.counters import GAUGES, SERVER_COUNTERS, ServerCounters

# the HTTP engine's counters on top of the shared ones (worker/counters.py)
OWN_COUNTERS = (
    "duration_sum_us",
    "duration_count",
    # by protocol: of connections_total / requests, those that spoke HTTP/2
    "h2_connections_total",
    "h2_requests",
    # requests proxied to h2 upstreams (any client protocol), and the H2Pool's decisions
    "h2_upstream_requests",
    "h2_upstream_retries",  # sent again after GOAWAY / REFUSED_STREAM
    "h2_upstream_retry_failures",  # refused, but the body had outgrown the replay buffer: 502
    "h2_upstream_cap_waits",  # waited at max_h2_connections_per_upstream
    "h2_upstream_cap_timeouts",  # ... and got no stream slot in time: 503
)
COUNTERS = SERVER_COUNTERS + OWN_COUNTERS
# Request duration histogram (the admin listener's monolake_request_duration_seconds): the
# stats carry cumulative counts ``duration_le_<ms>`` of requests that took at most <ms>.
DURATION_BUCKETS_MS = (1, 5, 10, 50, 100, 500, 1000, 5000)
BUCKET_KEYS = tuple(f"duration_le_{ms}" for ms in DURATION_BUCKETS_MS)
_BOUNDS_US = tuple(ms * 1000 for ms in DURATION_BUCKETS_MS)


class Stats(ServerCounters):
    __slots__ = (*OWN_COUNTERS, "_bins")
    # The slots above, declared for type checkers (__init__ sets them by name), beside the
    # shared ones ServerCounters declares; tests/ops/test_duration_histogram.py keeps the
    # declarations and the lists the same.
    duration_sum_us: int
    duration_count: int
    h2_connections_total: int
    h2_requests: int
    h2_upstream_requests: int
    h2_upstream_retries: int
    h2_upstream_retry_failures: int
    h2_upstream_cap_waits: int
    h2_upstream_cap_timeouts: int
    _bins: list[int]

    def __init__(self) -> None:
        super().__init__()
        for name in OWN_COUNTERS:
            setattr(self, name, 0)
        self._bins = [0] * (len(_BOUNDS_US) + 1)  # per bucket, not cumulative; last: > 5 s

    def observe(self, seconds: float) -> None:
        """One finished request's duration (one bisect and three increments)."""
        us = int(seconds * 1_000_000)
        self._bins[bisect_left(_BOUNDS_US, us)] += 1
        self.duration_sum_us += us
        self.duration_count += 1

    def _cumulative(self) -> dict[str, int]:
        out: dict[str, int] = {}
        running = 0
        for key, count in zip(BUCKET_KEYS, self._bins, strict=False):  # last bin (> 5 s): no key
            running += count
            out[key] = running
        return out

    def count_status(self, status: int) -> None:
        if status < 200:
            self.responses_1xx += 1
        elif status < 300:
            self.responses_2xx += 1
        elif status < 400:
            self.responses_3xx += 1
        elif status < 500:
            self.responses_4xx += 1
        else:
            self.responses_5xx += 1

    def as_dict(self) -> dict[str, int]:
        return {**self.values(COUNTERS + GAUGES), **self._cumulative()}

    def export(self) -> dict[str, int]:
        """The monotonic counters (gauges describe live connections and do not carry over)."""
        return {**self.values(COUNTERS), **self._cumulative()}

    def absorb(self, data: dict[str, object]) -> None:
        """Add a previous generation's totals, so totals survive a reload."""
        self.add(COUNTERS, data)
        below = 0
        for i, key in enumerate(BUCKET_KEYS):
            value = data.get(key)
            if isinstance(value, int) and value >= below:
                self._bins[i] += value - below
                below = value
        count = data.get("duration_count")
        if isinstance(count, int) and count >= below:
            self._bins[-1] += count - below
