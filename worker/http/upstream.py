"""Upstream endpoints of a route, load balancing and passive health.

An ``Upstream`` is one endpoint of one route (its pool key is shared with any other route that
names the same address, so connections are shared too). A ``Balancer`` picks among the healthy
ones; an upstream whose connects fail ``eject_after_failures`` times in a row is skipped for
``eject_duration_sec`` (passive health, no probes).
"""

from __future__ import annotations

import random
import ssl
import time
from typing import Any

import structlog

from monolake.worker.http.stats import Stats


class Upstream:
    """One endpoint; ``active`` counts requests in flight (for least_conn)."""

    __slots__ = ("kind", "scheme", "host", "port", "path", "query", "authority", "unix_path",
                 "weight", "ssl", "sni", "key", "label", "active", "failures", "ejected_until",
                 "max_idle", "idle_timeout", "eject_after", "eject_for", "builtin", "host_header")

    def __init__(self, endpoint: Any, weight: int, route: Any, ssl_ctx: ssl.SSLContext | None) -> None:
        self.kind = endpoint.type          # "uri" | "unix" | "builtin"
        self.weight = max(1, int(weight or 1))
        self.active = 0
        self.failures = 0
        self.ejected_until = 0.0
        self.max_idle = route.max_idle_per_upstream
        self.idle_timeout = route.idle_timeout_sec
        self.eject_after = max(1, route.eject_after_failures)
        self.eject_for = route.eject_duration_sec
        self.ssl = None
        self.sni: str | None = None
        self.unix_path = ""
        self.scheme = "http"
        self.host = ""
        self.port = 0
        self.path = "/"
        self.query = ""
        self.authority = ""
        self.host_header = b""
        self.builtin = ""
        if self.kind == "uri":
            self.scheme = endpoint.scheme
            self.host = endpoint.host
            self.port = endpoint.port
            self.path = endpoint.path or "/"
            self.query = endpoint.query
            self.authority = endpoint.authority
            self.host_header = self.authority.encode("latin-1")
            if self.scheme == "https":
                self.ssl = ssl_ctx
                self.sni = route.tls_sni or self.host
                self.key: tuple = ("https", self.host, self.port, self.sni, id(ssl_ctx))
            else:
                self.key = ("http", self.host, self.port)
            self.label = f"{self.scheme}://{self.authority}"
        elif self.kind == "unix":
            self.unix_path = endpoint.path or endpoint.value
            self.key = ("unix", self.unix_path)
            self.label = f"unix:{self.unix_path}"
        else:
            self.builtin = endpoint.value
            self.key = ("builtin", endpoint.value)
            self.label = f"builtin:{endpoint.value}"

    @property
    def exportable(self) -> bool:
        """Plain sockets can move to another process; TLS sessions cannot."""
        return self.ssl is None

    def healthy(self, now: float) -> bool:
        return self.ejected_until <= now

    def connect_failed(self, stats: Stats) -> None:
        self.failures += 1
        if self.failures >= self.eject_after and self.ejected_until <= time.monotonic():
            self.ejected_until = time.monotonic() + self.eject_for
            stats.upstream_ejections += 1
            structlog.get_logger().warning("upstream_ejected", upstream=self.label,
                                           failures=self.failures, seconds=self.eject_for)

    def connect_ok(self) -> None:
        if self.failures:
            self.failures = 0


class Balancer:
    """Picks an upstream: random, weighted_random, round_robin, first or least_conn."""

    __slots__ = ("kind", "upstreams", "position", "_weights", "_n")

    def __init__(self, kind: str, upstreams: list[Upstream]) -> None:
        self.kind = kind
        self.upstreams = upstreams
        self.position = 0
        self._weights = [u.weight for u in upstreams]
        self._n = len(upstreams)

    def pick(self, exclude: set[int] | None = None) -> Upstream | None:
        ups = self.upstreams
        n = self._n
        if n == 1 and not exclude:
            u = ups[0]
            return u if not u.ejected_until or u.ejected_until <= time.monotonic() else None
        now = time.monotonic()
        kind = self.kind
        if kind == "round_robin":
            for _ in range(n):
                i = self.position % n
                self.position = (i + 1) % n
                u = ups[i]
                if u.ejected_until <= now and (not exclude or i not in exclude):
                    return u
            return None
        candidates = [i for i, u in enumerate(ups)
                      if u.ejected_until <= now and (not exclude or i not in exclude)]
        if not candidates:
            return None
        if kind == "first":
            return ups[candidates[0]]
        if kind == "weighted_random":
            weights = [self._weights[i] for i in candidates]
            return ups[random.choices(candidates, weights)[0]]
        if kind == "least_conn":
            low = min(ups[i].active for i in candidates)
            best = [i for i in candidates if ups[i].active == low]
            return ups[random.choice(best)]
        return ups[random.choice(candidates)]

    def index_of(self, up: Upstream) -> int:
        return self.upstreams.index(up)
