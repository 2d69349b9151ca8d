"""The C counters (uring/mu_counters.c) against their twin, worker/http/stats.py's Stats:
the struct has Stats' counters in Stats' order, and seeded sequences of statuses and
durations (bucket edges included) count alike; stats() adds the two engines' counts."""

from __future__ import annotations

import random

import pytest

from monolake.worker.http import native_counters as nc
from monolake.worker.http.stats import DURATION_BUCKETS_MS, Stats

pytestmark = pytest.mark.skipif(nc.lib is None, reason="the codec extension is not built")


def test_fields_are_stats_counters_in_order() -> None:
    names = [name for name, _ in nc.ffi.typeof("mu_counters").fields]
    assert names == [*nc.FIELDS, "bins"]
    assert nc.ffi.sizeof("mu_counters") == 8 * (len(nc.FIELDS) + len(DURATION_BUCKETS_MS) + 1)
    assert len(DURATION_BUCKETS_MS) == nc.lib.MU_CTR_BUCKETS


@pytest.mark.parametrize("seed", range(5))
def test_counting_matches_stats(seed: int) -> None:
    rnd = random.Random(seed)
    edges = [ms / 1000 for ms in DURATION_BUCKETS_MS]
    py, c = Stats(), nc.NativeCounters()
    for _ in range(5000):
        status = rnd.choice(
            [0, 100, 101, 199, 200, 204, 299, 300, 304, 399, 400, 404, 499, 500, 502, 599, 999]
        )
        py.count_status(status)
        c.count_status(status)
        seconds = rnd.choice(
            [
                0.0,
                rnd.random() * 6,
                rnd.choice(edges),
                rnd.choice(edges) + 1e-6,
                rnd.choice(edges) - 1e-7,
                1e-6,
            ]
        )
        py.observe(seconds)
        c.observe(seconds)
    assert c.as_dict() == py.as_dict()


def test_stats_adds_both_engines() -> None:
    py, c = Stats(), nc.NativeCounters()
    py.requests, py.bytes_out, py.open_connections = 3, 100, 1
    c.ptr.requests, c.ptr.bytes_out, c.ptr.active_requests = 4, 11, 2
    c.observe(0.002)
    out = nc.combined(py, c)
    assert (out["requests"], out["bytes_out"], out["open_connections"], out["active_requests"]) == (
        7,
        111,
        1,
        2,
    )
    assert out["duration_le_1"] == 0 and out["duration_le_5"] == 1 and out["duration_count"] == 1
    assert nc.combined(py, None) == py.as_dict()
