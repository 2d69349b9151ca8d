"""Fixtures for the health-check tests: flippable loopback backends, and a daemon config
with one route per entry of ``routes`` and an admin listener (for /metrics)."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.config_text import uri_upstream
from tests.discovery.conftest import dnsmasq
from tests.harness import base_config, http_get
from tests.health.backends import HealthBackend
from tests.support import free_port, wait_for


@pytest.fixture
def backend() -> Iterator[object]:
    """``backend(name, address="127.0.0.1", port=0)``; every one is closed after the test."""
    made: list[HealthBackend] = []

    def make(name: str, address: str = "127.0.0.1", port: int = 0) -> HealthBackend:
        b = HealthBackend(name, address, port)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def uri(b: HealthBackend, host: str = "") -> str:
    return uri_upstream(f"{host or b.address}:{b.port}")


def health_config(
    tmp: Path,
    port: int,
    admin: int,
    routes: list[tuple[str, str, list[str]]],
    resolver: str = "",
    runtime_type: str = "auto",
    workers: int = 1,
    supervisor: str = "",
    route_extra: str = "",
) -> str:
    """``routes``: (path_prefix, health_check table, upstream entries), round_robin."""
    text = "".join(
        textwrap.dedent("""
        [[servers.web.routes]]
        path_prefix = "{prefix}"
        load_balancer = "round_robin"
        health_check = {check}
        {extra}
        upstreams = [{ups}]
    """).format(prefix=p, check=c, ups=", ".join(u), extra=route_extra)
        for p, c, u in routes
    )
    cfg = base_config(
        tmp,
        port,
        runtime=f"workers = {workers}",
        supervisor=supervisor,
        routes=text,
        extra=f'\n[admin]\nlisten = "127.0.0.1:{admin}"\n',
    )
    cfg = cfg.replace('runtime_type = "auto"', f'runtime_type = "{runtime_type}"', 1)
    return (resolver + "\n" + cfg) if resolver else cfg


def health_rows(m: object) -> list[dict]:
    """Every worker's health rows from ``monolaked status --json``."""
    return [row for w in m.status()["workers"] for row in w.get("health", [])]  # type: ignore[attr-defined]


def row_of(m: object, upstream: str, route: str = "/*", server: str = "web") -> dict | None:
    return next(
        (
            r
            for r in health_rows(m)
            if r["upstream"] == upstream and r["route"] == route and r["server"] == server
        ),
        None,
    )


def wait_health(
    m: object, upstream: str, healthy: bool, route: str = "/*", server: str = "web", timeout: float = 10
) -> dict:
    """Poll status until every worker reports ``upstream`` (a label such as
    http://127.0.0.1:PORT) so; returns one of the rows."""

    def ok() -> dict | None:
        rows = [
            r for r in health_rows(m) if (r["upstream"], r["route"], r["server"]) == (upstream, route, server)
        ]
        return rows[0] if rows and all(r["healthy"] is healthy for r in rows) else None

    row = wait_for(ok, timeout=timeout, interval=0.2, what=f"{upstream} healthy={healthy}")
    assert row is not None  # wait_for returns a truthy value
    return row


def metrics(admin: int) -> str:
    status, body, _ = http_get(admin, "/metrics")
    assert status == 200
    return body.decode()


def free_ports() -> tuple[int, int]:
    return free_port(), free_port()


__all__ = [
    "backend",
    "dnsmasq",
    "uri",
    "health_config",
    "health_rows",
    "row_of",
    "wait_health",
    "metrics",
    "free_ports",
    "json",
]
