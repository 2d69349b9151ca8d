"""The counter names every server kind reports in ``stats()`` (docs/contracts.md): one list,
so the HTTP and Thrift engines cannot drift apart; each adds its own on top."""

from __future__ import annotations

from collections.abc import Mapping

SERVER_COUNTERS = (
    "connections_total",
    "requests",
    "responses_1xx",
    "responses_2xx",
    "responses_3xx",
    "responses_4xx",
    "responses_5xx",
    "errors",
    "bytes_in",
    "bytes_out",
    "upstream_connect_failures",
    "upstream_ejections",
    "upstream_unsolicited",
)
GAUGES = ("open_connections", "active_requests")


class ServerCounters:
    """The counters and gauges above as plain integer attributes (slots), starting at 0:
    incremented on the hot path, read on every heartbeat. The HTTP ``Stats`` and the Thrift
    ``Counters`` build on it, each adding its own."""

    __slots__ = SERVER_COUNTERS + GAUGES
    # the slots' types, for the type checker (annotations make no class attributes)
    connections_total: int
    requests: int
    responses_1xx: int
    responses_2xx: int
    responses_3xx: int
    responses_4xx: int
    responses_5xx: int
    errors: int
    bytes_in: int
    bytes_out: int
    upstream_connect_failures: int
    upstream_ejections: int
    upstream_unsolicited: int
    open_connections: int
    active_requests: int

    def __init__(self) -> None:
        for name in SERVER_COUNTERS + GAUGES:
            setattr(self, name, 0)

    def values(self, names: tuple[str, ...]) -> dict[str, int]:
        return {name: getattr(self, name) for name in names}

    def add(self, names: tuple[str, ...], data: Mapping[str, object]) -> None:
        """Add a previous generation's integer ``names`` in ``data``, so totals survive a reload."""
        for name in names:
            value = data.get(name)
            if isinstance(value, int):
                setattr(self, name, getattr(self, name) + value)
