"""The HTTP server's request duration histogram counters (worker/http/stats.py)."""

from __future__ import annotations

import inspect

from monolake.worker.http.stats import BUCKET_KEYS, COUNTERS, GAUGES, Stats


def durations(stats: Stats) -> dict[str, int]:
    return {k: v for k, v in stats.as_dict().items() if k.startswith("duration")}


def test_cumulative_buckets_sum_and_count():
    s = Stats()
    for seconds in (0.0005, 0.001, 0.003, 0.2, 7.0):  # 1 ms exactly falls in le=1 ms
        s.observe(seconds)
    d = durations(s)
    assert [d[k] for k in BUCKET_KEYS] == [2, 3, 3, 3, 3, 4, 4, 4]
    assert d["duration_count"] == 5  # the +Inf bucket: 7 s is above every bound
    assert d["duration_sum_us"] == 500 + 1000 + 3000 + 200_000 + 7_000_000


def test_histogram_survives_export_and_absorb():
    old = Stats()
    for seconds in (0.002, 0.04, 9.0):
        old.observe(seconds)
    new = Stats()
    new.absorb(old.export())
    new.observe(0.0001)
    d = durations(new)
    assert [d[k] for k in BUCKET_KEYS] == [1, 2, 2, 3, 3, 3, 3, 3]
    assert d["duration_count"] == 4
    assert d["duration_sum_us"] == 2000 + 40_000 + 9_000_000 + 100


def test_declared_fields_are_the_slots() -> None:
    """Stats (with its base, worker/counters.py's ServerCounters) declares its counters for
    type checkers beside the COUNTERS/GAUGES lists that make the slots and the stats keys: a
    counter added to one list only fails here."""
    declared = {name for cls in Stats.__mro__ for name in inspect.get_annotations(cls)}
    assert declared == set(COUNTERS + GAUGES) | {"_bins"}
    assert {name for cls in Stats.__mro__ for name in getattr(cls, "__slots__", ())} == declared
