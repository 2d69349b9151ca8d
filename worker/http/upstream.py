"""Upstream endpoints of a route, load balancing and passive health.

An ``Upstream`` is one endpoint of one route (its pool key is shared with any other route that
names the same address, so connections are shared too). A ``Balancer`` picks among the healthy
ones; an upstream whose connects fail ``eject_after_failures`` times in a row is skipped for
``eject_duration_sec`` (passive health, no probes).

A ``uri`` upstream whose host is a name, and every ``srv`` upstream, is *discovered*: the
balancer asks worker/discovery for its targets and holds one derived ``Upstream`` per address
(``derive``), replacing the set whenever DNS changes it, with no reload. An address that
leaves is *draining*: never picked again, its in-flight requests finish, and the pool closes
its connections (idle ones at the next sweep, busy ones when they are released). Until the
first answer the configured upstream itself stands in the list as a *placeholder* that the
pool resolves on connect (``Discovered.resolve``). SRV priorities: only the lowest priority
with a healthy (not ejected) upstream is used.
"""

from __future__ import annotations

import random
import ssl
import time
import weakref
from typing import Any

import structlog

from monolake.worker.discovery.sources import AddressSource, Source, SrvSource, Target, is_ip
from monolake.worker.http.stats import Stats


DERIVED: "weakref.WeakValueDictionary[tuple[Any, ...], Upstream]" = weakref.WeakValueDictionary()
"""The live derived upstreams by pool key: where the pool puts connections that a previous
generation handed over to a discovered address (UpstreamPool.adopt_pending)."""


class DrainEpoch:
    """Counts the upstreams DNS has taken out, so the pool's sweep looks for connections to
    close only after one was (not at every sweep)."""

    value = 0


def mark_draining(up: "Upstream") -> None:
    if not up.draining:
        up.draining = True
        DrainEpoch.value += 1


class Upstream:
    """One endpoint; ``active`` counts requests in flight (for least_conn)."""

    __slots__ = ("kind", "scheme", "host", "port", "path", "query", "authority", "unix_path",
                 "weight", "ssl", "sni", "key", "label", "active", "failures", "ejected_until",
                 "max_idle", "idle_timeout", "eject_after", "eject_for", "builtin", "host_header",
                 "priority", "draining", "discovered", "origin", "address", "group",
                 "held_down", "admin", "requests", "__weakref__")

    def __init__(self, endpoint: Any, weight: int, route: Any, ssl_ctx: ssl.SSLContext | None) -> None:
        self.kind = endpoint.type          # "uri" | "unix" | "builtin" | "srv"
        self.weight = max(1, int(weight or 1))
        self.priority = 0                  # SRV priority (lower first); 0 for everything else
        self.draining = False              # left the DNS answer: no new requests, no pooling
        self.discovered: Discovered | None = None  # set on a placeholder (see Balancer)
        self.origin = ""                   # a derived upstream: the label it was derived from
        self.address = ""                  # the connect address when discovered (host: the name)
        self.group: Discovered | None = None  # a derived upstream: the name it is an address of
        self.active = 0
        self.failures = 0
        self.ejected_until = 0.0
        self.held_down = False             # failing its active health checks (worker/health)
        self.admin = ""                    # "draining" | "disabled": the runtime API (worker/upstream_admin)
        self.requests = 0                  # requests sent to it (the runtime API lists them)
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
        if self.kind in ("uri", "srv"):
            self.scheme = endpoint.scheme
            self.host = endpoint.host
            self.port = endpoint.port
            self.path = endpoint.path or "/"
            self.query = endpoint.query
            self.authority = endpoint.authority
            self.host_header = self.authority.encode("latin-1")
            if self.scheme == "https":
                if ssl_ctx is None:  # an srv endpoint: the router made a context for uri ones only
                    from monolake.worker.http.tls import client_context
                    ssl_ctx = client_context(route)
                self.ssl = ssl_ctx
                self.sni = route.tls_sni or self.host
                self.key: tuple = ("https", self.host, self.port, self.sni, id(ssl_ctx))
            else:
                self.key = ("http", self.host, self.port)
            self.label = f"{self.scheme}://{self.authority}"
            if self.kind == "srv":
                self.kind = "uri"          # its targets are plain uri upstreams
                self.label = f"srv:{endpoint.value}"
                self.key = ("srv", endpoint.value)
        elif self.kind == "unix":
            self.unix_path = endpoint.path or endpoint.value
            self.key = ("unix", self.unix_path)
            self.label = f"unix:{self.unix_path}"
        else:
            self.builtin = endpoint.value
            self.key = ("builtin", endpoint.value)
            self.label = f"builtin:{endpoint.value}"

    @property
    def needs_discovery(self) -> bool:
        """A name (not an IP literal) or an SRV record: its addresses come from DNS."""
        return self.kind == "uri" and (self.key[0] == "srv" or not is_ip(self.host))

    def derive(self, target: Target) -> "Upstream":
        """The upstream for one address of this (discovered) one: same Host header, path,
        TLS name, pool and health settings; its own connect address and pool key."""
        up = object.__new__(Upstream)
        for name in Upstream.__slots__:
            if name != "__weakref__" and hasattr(self, name):
                setattr(up, name, getattr(self, name))
        up.active = 0
        up.failures = 0
        up.ejected_until = 0.0
        up.held_down = False
        up.admin = ""
        up.requests = 0
        up.draining = False
        up.discovered = None
        up.group = self.discovered
        up.address = target.address
        up.port = target.port
        up.weight = max(1, target.weight)
        up.priority = target.priority
        up.origin = self.label
        hp = f"[{target.address}]:{target.port}" if ":" in target.address else \
            f"{target.address}:{target.port}"
        if self.scheme == "https":
            up.key = ("https", target.address, target.port, self.sni, id(self.ssl))
        else:
            up.key = ("http", target.address, target.port)
        up.label = f"{self.scheme}://{hp}"
        DERIVED[up.key] = up
        return up

    @property
    def connect_host(self) -> str:
        return self.address or self.host

    @property
    def exportable(self) -> bool:
        """Plain sockets can move to another process; TLS sessions cannot."""
        return self.ssl is None

    def healthy(self, now: float) -> bool:
        """Eligible: not passively ejected, not held down by active health checks, and not
        drained or disabled through the runtime API."""
        return self.ejected_until <= now and not self.held_down and not self.admin

    def connect_failed(self, stats: Stats) -> None:
        self.failures += 1
        if self.failures >= self.eject_after and self.ejected_until <= time.monotonic():
            self.ejected_until = time.monotonic() + self.eject_for
            stats.upstream_ejections += 1
            structlog.get_logger().warning("upstream_ejected", upstream=self.label,
                                           failures=self.failures, seconds=self.eject_for)

    def eject_now(self, stats: Stats, why: str) -> None:
        """One of a name's addresses failed a connect while the name has others: out at once
        for ``eject_duration_sec`` (the request moves to another address)."""
        self.failures += 1
        if self.ejected_until <= time.monotonic():
            self.ejected_until = time.monotonic() + self.eject_for
            stats.upstream_ejections += 1
            structlog.get_logger().warning("upstream_ejected", upstream=self.label, origin=self.origin,
                                           error=why, seconds=self.eject_for)

    def connect_ok(self) -> None:
        if self.failures:
            self.failures = 0


class Discovered:
    """The link from a configured (discovered) upstream to its DNS source, for the balancer
    that owns it: the placeholder's ``discovered``."""

    __slots__ = ("template", "source", "children", "ready", "_balancer", "__weakref__")

    def __init__(self, template: Upstream, balancer: "Balancer") -> None:
        self.template = template
        self.children: dict[tuple[str, int], Upstream] = {}
        self.ready = False                 # the first answer is in: children replace the placeholder
        self._balancer = weakref.ref(balancer)
        if template.key[0] == "srv":
            self.source: Source = SrvSource(template.key[1], balancer.endpoints_changed)
        else:
            self.source = AddressSource(template.host, template.port, template.weight,
                                        balancer.endpoints_changed)

    def current(self) -> list[Upstream]:
        """Children for the current targets (an unchanged target keeps its object, so its
        health and counters); targets that left are marked draining."""
        if not self.ready:
            if not self.source.settled:
                return [self.template]
            self.ready = True
        fresh: dict[tuple[str, int], Upstream] = {}
        for t in self.source.targets():
            k = (t.address, t.port)
            if k in fresh:
                continue
            up = self.children.get(k)
            if up is None or up.draining:
                up = self.template.derive(t)
            else:  # an SRV weight or priority change keeps the address's connections
                up.weight, up.priority = max(1, t.weight), t.priority
            fresh[k] = up
        for k, up in self.children.items():
            if k not in fresh:
                mark_draining(up)
        self.children = fresh
        return list(fresh.values())

    async def resolve(self, timeout: float) -> Upstream | None:
        """For a request that picked the placeholder: wait (bounded) for the first answer and
        pick one of its upstreams; None when there is none (the error says why)."""
        await self.source.wait(timeout)
        balancer = self._balancer()
        if balancer is not None:
            balancer.endpoints_changed()
        now = time.monotonic()
        ups = [u for u in self.children.values() if u.healthy(now)]
        if not ups:
            return None
        low = min(u.priority for u in ups)
        ups = [u for u in ups if u.priority == low]
        return random.choices(ups, [u.weight for u in ups])[0]

    def fallback(self, failed: Upstream) -> Upstream | None:
        """Another healthy address of this name after a connect to ``failed`` was refused or
        timed out (nothing was sent, so any request may move): the lowest priority first."""
        now = time.monotonic()
        ups = [u for u in self.children.values()
               if u is not failed and not u.draining and u.healthy(now)]
        if not ups:
            return None
        low = min(u.priority for u in ups)
        ups = [u for u in ups if u.priority == low]
        return random.choices(ups, [u.weight for u in ups])[0]

    def why_none(self) -> str:
        src = self.source
        if not src.settled:
            return f"no DNS answer yet for {src.name}"
        return f"DNS gave no address for {src.name}" + (f" ({src.error})" if src.error else "")


class Balancer:
    """Picks an upstream: random, weighted_random, round_robin, first or least_conn.

    ``upstreams`` is the current list: the configured static ones and, for each discovered
    one, its current derived upstreams (or its placeholder until DNS first answers). The list
    is replaced, never changed in place, when DNS changes it (``endpoints_changed``)."""

    __slots__ = ("kind", "upstreams", "position", "_weights", "_n", "_configured", "_found",
                 "_tiered", "health", "__weakref__")

    def __init__(self, kind: str, upstreams: list[Upstream]) -> None:
        self.kind = kind
        self._configured = list(upstreams)
        self._found: dict[int, Discovered] = {}
        self.position = 0
        self.upstreams: list[Upstream] = []
        self._weights: list[int] = []
        self._n = 0
        self._tiered = False
        self.health: Any = None  # the route's active health checks (worker/health), if any
        for i, up in enumerate(self._configured):
            if up.needs_discovery:
                link = self._found[i] = Discovered(up, self)
                up.discovered = link
        self._rebuild()

    def _rebuild(self) -> None:
        ups: list[Upstream] = []
        for i, up in enumerate(self._configured):
            link = self._found.get(i)
            ups.extend(link.current() if link is not None else (up,))
        self.upstreams = ups
        self._weights = [u.weight for u in ups]
        self._n = len(ups)
        self._tiered = len({u.priority for u in ups}) > 1
        self.position = self.position % self._n if self._n else 0

    def endpoints_changed(self) -> None:
        """A source's targets changed (called by worker/discovery)."""
        before = {u.label: u for u in self.upstreams}
        self._rebuild()
        after = [u.label for u in self.upstreams]
        if list(before) != after:
            structlog.get_logger().info(
                "upstreams_changed", upstreams=after,
                joined=[x for x in after if x not in before],
                draining=[x for x, u in before.items() if x not in after and u.discovered is None])

    def pick(self, exclude: set[int] | None = None) -> Upstream | None:
        ups = self.upstreams
        n = self._n
        if n == 1 and not exclude:
            u = ups[0]
            return u if u.healthy(time.monotonic()) else None
        if n == 0:
            return None
        now = time.monotonic()
        kind = self.kind
        if kind == "round_robin" and not self._tiered:
            for _ in range(n):
                i = self.position % n
                self.position = (i + 1) % n
                u = ups[i]
                if u.healthy(now) and (not exclude or i not in exclude):
                    return u
            return None
        candidates = [i for i, u in enumerate(ups)
                      if u.healthy(now) and (not exclude or i not in exclude)]
        if not candidates:
            return None
        if self._tiered:  # SRV: the lowest priority that has a healthy upstream
            low = min(ups[i].priority for i in candidates)
            candidates = [i for i in candidates if ups[i].priority == low]
        if kind == "round_robin":
            self.position = (self.position + 1) % max(1, n)
            return ups[candidates[self.position % len(candidates)]]
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
        """``up``'s index, or -1 when DNS has taken it out of the list meanwhile."""
        try:
            return self.upstreams.index(up)
        except ValueError:
            return -1
