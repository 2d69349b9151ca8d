"""The counter names every server kind reports in ``stats()`` (docs/contracts.md): one list,
so the HTTP and Thrift engines cannot drift apart; each adds its own on top."""

from __future__ import annotations

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
