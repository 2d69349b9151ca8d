"""Per-server counters (the keys of ``ServerHandle.stats()`` in docs/contracts.md).

Plain attributes on a slotted object: incrementing one is the cheapest thing Python can do,
and this runs several times per request.
"""

from __future__ import annotations

COUNTERS = ("connections_total", "requests", "responses_1xx", "responses_2xx", "responses_3xx",
            "responses_4xx", "responses_5xx", "errors", "bytes_in", "bytes_out",
            "upstream_connect_failures", "upstream_ejections")
GAUGES = ("open_connections", "active_requests")


class Stats:
    __slots__ = COUNTERS + GAUGES

    def __init__(self) -> None:
        for name in COUNTERS + GAUGES:
            setattr(self, name, 0)

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
        return {name: getattr(self, name) for name in COUNTERS + GAUGES}

    def export(self) -> dict[str, int]:
        """The monotonic counters (gauges describe live connections and do not carry over)."""
        return {name: getattr(self, name) for name in COUNTERS}

    def absorb(self, data: dict) -> None:
        """Add a previous generation's totals, so totals survive a reload."""
        for name in COUNTERS:
            value = data.get(name)
            if isinstance(value, int):
                setattr(self, name, getattr(self, name) + value)
