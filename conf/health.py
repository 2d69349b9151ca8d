"""The ``health_check`` key of a route: active health checks of its upstreams (issue 15 §2).

Absent, a route has passive ejection only. Present, every worker probes each endpoint of the
route (every discovered address too) on its own connection, and an endpoint is picked only
while it is healthy by these checks *and* not passively ejected. Names are the operator-facing
contract of issue 15 §4: ``health_check = { path = "/health", interval_sec = 1, timeout_sec = 1,
fall = 2, rise = 2 }`` with ``type = "http"`` (the default on http routes), ``"tcp"`` or, on
thrift routes, ``"thrift"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .fields import MISSING, Table, found_with_type

HEALTH_KEYS = (
    "type",
    "method",
    "path",
    "expected_statuses",
    "host",
    "interval_sec",
    "timeout_sec",
    "fall",
    "rise",
    "jitter",
    "all_unhealthy",
    "service",
)
HTTP_ONLY = ("path", "expected_statuses", "host")
TYPES = {"http": ("http", "tcp", "grpc"), "thrift": ("thrift", "tcp")}
ALL_UNHEALTHY = ("fail_open", "reject")
DEFAULT_STATUSES = ((200, 399),)


@dataclass(frozen=True)
class HealthCheckConfig:
    type: str = "http"  # "http" | "tcp" | "thrift" | "grpc" (grpc.health.v1, docs/http2.md)
    method: str = "GET"  # http: the request method; thrift: the method to call
    path: str = "/"  # http: the request target
    expected_statuses: tuple[tuple[int, int], ...] = DEFAULT_STATUSES  # inclusive ranges
    host: str = ""  # http: the Host header ("" = the upstream's authority)
    interval_sec: float = 5.0
    timeout_sec: float = 2.0
    fall: int = 3  # consecutive failures that make a healthy endpoint unhealthy
    rise: int = 2  # consecutive successes that make an unhealthy endpoint healthy
    jitter: float = 0.1  # each wait is interval_sec x (1 +/- jitter), at random
    all_unhealthy: str = "fail_open"  # "fail_open" (use them all) | "reject" (503 / no upstream)
    service: str = ""  # grpc: the service asked about ("" = the server as a whole)

    def expects(self, status: int) -> bool:
        return any(lo <= status <= hi for lo, hi in self.expected_statuses)


def parse_health_check(route: Table, kind: str) -> HealthCheckConfig | None:
    """Read a route's ``health_check`` (``kind``: "http" or "thrift"); problems are recorded."""
    t = route.subtable("health_check", known=HEALTH_KEYS)
    if t is None:
        return None
    d = HealthCheckConfig()
    types = TYPES[kind]
    default_type = "http" if kind == "http" else ("thrift" if "method" in t.raw else "tcp")
    check_type = t.enum(
        "type",
        default_type,
        types,
        hints={"thrift": "thrift checks are for thrift routes"}
        if kind == "http"
        else {"http": 'a thrift route checks with type = "thrift" or "tcp"'},
    )
    method = d.method
    if check_type == "thrift":
        method = t.string("method", "", required=True, allow_empty=False) or ""
    elif check_type == "http":
        method = t.string("method", d.method, allow_empty=False)
        if not method.isalpha() or not method.isupper():
            t.expected("method", 'an HTTP method in capitals, such as "GET" or "HEAD"', method)
            method = d.method
    elif "method" in t.raw:
        what = (
            "a grpc check calls grpc.health.v1.Health/Check"
            if check_type == "grpc"
            else "a tcp check only connects"
        )
        t.expected("method", f'no method with type = "{check_type}" ({what})', t.raw["method"])
    service = t.string("service", "") if check_type == "grpc" else ""
    if check_type != "grpc" and "service" in t.raw:
        t.expected(
            "service",
            'no service without type = "grpc" (it is the gRPC health service name)',
            t.raw["service"],
        )
    if check_type == "grpc":
        _require_h2(t)
    if check_type != "http":
        for key in HTTP_ONLY:
            if key == "host" and check_type == "grpc":
                continue  # the :authority of the call
            if key in t.raw:
                t.expected(key, f'no {key} with type = "{check_type}" (it is for http checks)', t.raw[key])
    path = t.string("path", d.path, allow_empty=False)
    if not path.startswith("/"):
        t.expected("path", 'a request path starting with "/", such as "/health"', path)
        path = d.path
    host = t.string("host", "")
    statuses = _statuses(t)
    interval = t.duration("interval_sec", d.interval_sec)
    timeout = t.duration("timeout_sec", d.timeout_sec)
    if "timeout_sec" in t.raw and "interval_sec" in t.raw and timeout > interval:
        t.expected(
            "timeout_sec",
            f"a duration <= interval_sec ({interval:g}), so checks never overlap",
            t.raw["timeout_sec"],
        )
        timeout = interval
    timeout = min(timeout, interval)
    fall = t.integer("fall", d.fall, lo=1, hi=100)
    rise = t.integer("rise", d.rise, lo=1, hi=100)
    jitter = _fraction(t, "jitter", d.jitter)
    all_unhealthy = t.enum("all_unhealthy", d.all_unhealthy, ALL_UNHEALTHY)
    t.done()
    return HealthCheckConfig(
        type=check_type,
        method=method,
        path=path,
        expected_statuses=statuses,
        host=host,
        interval_sec=interval,
        timeout_sec=timeout,
        fall=fall,
        rise=rise,
        jitter=jitter,
        all_unhealthy=all_unhealthy,
        service=service,
    )


def _require_h2(t: Table) -> None:
    """A grpc check speaks HTTP/2: without the extension it is a config error naming the
    install step, as ``upstream_http_version = "http2"`` is."""
    from monolake.worker import h2

    avail = h2.available()
    if not avail:
        t.problems.add(t.key("type"), avail.reason)


def _statuses(t: Table) -> tuple[tuple[int, int], ...]:
    """``[200, 204]`` or ``["200-299", 301]``: statuses and inclusive ranges of 100-599."""
    used, value = t.lookup("expected_statuses")
    if value is MISSING:
        return DEFAULT_STATUSES
    expected = 'a non-empty array of statuses or ranges, such as [200, 204] or ["200-399"]'
    if not isinstance(value, list) or not value:
        t.expected(
            used,
            expected,
            found_with_type(value) if not isinstance(value, list) else "an empty array",
            raw=True,
        )
        return DEFAULT_STATUSES
    out: list[tuple[int, int]] = []
    for i, item in enumerate(value):
        span = _span(item)
        if span is None:
            t.expected(
                f"{used}[{i}]",
                'a status from 100 to 599 or a range "LOW-HIGH" of them',
                found_with_type(item),
                raw=True,
            )
            continue
        out.append(span)
    return tuple(out) or DEFAULT_STATUSES


def _span(item: Any) -> tuple[int, int] | None:
    if isinstance(item, int) and not isinstance(item, bool):
        return (item, item) if 100 <= item <= 599 else None
    if isinstance(item, str) and item.count("-") == 1:
        lo, hi = (p.strip() for p in item.split("-"))
        if lo.isdigit() and hi.isdigit() and 100 <= int(lo) <= int(hi) <= 599:
            return int(lo), int(hi)
    return None


def _fraction(t: Table, name: str, default: float) -> float:
    used, value = t.lookup(name)
    if value is MISSING:
        return default
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not 0 <= value <= 0.5:
        t.expected(
            used,
            "a fraction of the interval from 0 to 0.5, such as 0.1",
            found_with_type(value) if not ok else value,
            raw=not ok,
        )
        return default
    return float(value)
