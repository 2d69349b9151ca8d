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

from monolake.worker.discovery.sources import AddressSource, Source, SrvSource, Target, is_ip, reconcile
from monolake.worker.http.stats import Stats
from monolake.worker.upstream import balance, ejection
from monolake.worker.upstream.address import Address
from monolake.worker.upstream.endpoint import Health

DERIVED: weakref.WeakValueDictionary[tuple[Any, ...], Upstream] = weakref.WeakValueDictionary()
"""The live derived upstreams by pool key: where the pool puts connections that a previous
generation handed over to a discovered address (UpstreamPool.adopt_pending)."""


class DrainEpoch:
    """Counts the upstreams DNS has taken out, so the pool's sweep looks for connections to
    close only after one was (not at every sweep)."""

    value = 0


def mark_draining(up: Upstream) -> None:
    if not up.draining:
        up.draining = True
        DrainEpoch.value += 1


class Upstream(Health):
    """One endpoint; ``active`` counts requests in flight (for least_conn). Its health
    (failures, ejection, draining, active-check verdict) is the kit's ``Health``."""

    __slots__ = (
        "kind",
        "scheme",
        "host",
        "port",
        "path",
        "query",
        "authority",
        "unix_path",
        "weight",
        "ssl",
        "sni",
        "key",
        "label",
        "active",
        "max_idle",
        "h2_max_conns",
        "idle_timeout",
        "eject_after",
        "eject_for",
        "builtin",
        "host_header",
        "priority",
        "discovered",
        "origin",
        "address",
        "group",
        "requests",
        "__weakref__",
    )

    def __init__(self, endpoint: Any, weight: int, route: Any, ssl_ctx: ssl.SSLContext | None) -> None:
        Health.__init__(self)  # draining: left the DNS answer (no new requests)
        self.kind = endpoint.type  # "uri" | "unix" | "builtin" | "srv"
        self.weight = max(1, int(weight or 1))
        self.priority = 0  # SRV priority (lower first); 0 for everything else
        self.discovered: Discovered | None = None  # set on a placeholder (see Balancer)
        self.origin = ""  # a derived upstream: the label it was derived from
        self.address = ""  # the connect address when discovered (host: the name)
        self.group: Discovered | None = None  # a derived upstream: the name it is an address of
        self.active = 0
        self.requests = 0  # requests sent to it (the runtime API lists them)
        self.max_idle = route.max_idle_per_upstream
        self.h2_max_conns = getattr(route, "max_h2_connections_per_upstream", 16)  # the H2Pool's cap
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
                    from monolake.worker.net.tls import client_context

                    ssl_ctx = client_context(route)
                self.ssl = ssl_ctx
                self.sni = route.tls_sni or self.host
                self.key: tuple = ("https", self.host, self.port, self.sni, id(ssl_ctx))
            else:
                self.key = ("http", self.host, self.port)
            self.label = f"{self.scheme}://{self.authority}"
            if self.kind == "srv":
                self.kind = "uri"  # its targets are plain uri upstreams
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

    def derive(self, target: Target) -> Upstream:
        """The upstream for one address of this (discovered) one: same Host header, path,
        TLS name, pool and health settings; its own connect address and pool key."""
        up = object.__new__(Upstream)
        for name in Upstream.__slots__:
            if name != "__weakref__" and hasattr(self, name):
                setattr(up, name, getattr(self, name))
        Health.__init__(up)  # a new address: its own health
        up.active = 0
        up.requests = 0
        up.discovered = None
        up.group = self.discovered
        up.address = target.address
        up.port = target.port
        up.weight = max(1, target.weight)
        up.priority = target.priority
        up.origin = self.label
        hp = (
            f"[{target.address}]:{target.port}"
            if ":" in target.address
            else f"{target.address}:{target.port}"
        )
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

    def connect_to(self) -> Address:
        """Where a new connection goes (the kit's address; TLS is the pool's ``ssl``/``sni``)."""
        return Address(path=self.unix_path) if self.kind == "unix" else Address(self.connect_host, self.port)

    @property
    def exportable(self) -> bool:
        """Plain sockets can move to another process; TLS sessions cannot."""
        return self.ssl is None

    def load(self) -> int:
        return self.active

    def connect_failed(self, stats: Stats) -> None:
        if ejection.record_failure(self, time.monotonic(), self.eject_after, self.eject_for):
            stats.upstream_ejections += 1
            structlog.get_logger().warning(
                "upstream_ejected", upstream=self.label, failures=self.failures, seconds=self.eject_for
            )

    def eject_now(self, stats: Stats, why: str) -> None:
        """One of a name's addresses failed a connect while the name has others: out at once
        for ``eject_duration_sec`` (the request moves to another address)."""
        if ejection.eject_now(self, time.monotonic(), self.eject_for):
            stats.upstream_ejections += 1
            structlog.get_logger().warning(
                "upstream_ejected", upstream=self.label, origin=self.origin, error=why, seconds=self.eject_for
            )

    def connect_ok(self) -> None:
        ejection.record_success(self)


class Discovered:
    """The link from a configured (discovered) upstream to its DNS source, for the balancer
    that owns it: the placeholder's ``discovered``."""

    __slots__ = ("template", "source", "children", "ready", "_balancer", "__weakref__")

    def __init__(self, template: Upstream, balancer: Balancer) -> None:
        self.template = template
        self.children: dict[tuple[str, int], Upstream] = {}
        self.ready = False  # the first answer is in: children replace the placeholder
        self._balancer = weakref.ref(balancer)
        if template.key[0] == "srv":
            self.source: Source = SrvSource(template.key[1], balancer.endpoints_changed)
        else:
            self.source = AddressSource(
                template.host, template.port, template.weight, balancer.endpoints_changed
            )

    def current(self) -> list[Upstream]:
        """Children for the current targets (an unchanged target keeps its object, so its
        health and counters); targets that left are marked draining."""
        if not self.ready:
            if not self.source.settled:
                return [self.template]
            self.ready = True
        self.children = reconcile(
            self.children,
            self.source.targets(),
            self.template.derive,
            mark_draining,
            keep=lambda up: not up.draining or up.admin == "draining",  # the operator's drain stays
        )
        return list(self.children.values())

    # ASYNC109: on expiry the wait gives a result (no upstream yet), it does not cancel
    async def resolve(self, timeout: float) -> Upstream | None:  # noqa: ASYNC109
        """For a request that picked the placeholder: wait (bounded) for the first answer and
        pick one of its upstreams; None when there is none (the error says why)."""
        await self.source.wait(timeout)
        balancer = self._balancer()
        if balancer is not None:
            balancer.endpoints_changed()
        now = time.monotonic()
        return balance.pick_weighted_lowest([u for u in self.children.values() if u.available(now)])

    def fallback(self, failed: Upstream) -> Upstream | None:
        """Another healthy address of this name after a connect to ``failed`` was refused or
        timed out (nothing was sent, so any request may move): the lowest priority first."""
        now = time.monotonic()
        return balance.pick_weighted_lowest(
            [u for u in self.children.values() if u is not failed and u.available(now)]
        )

    def why_none(self) -> str:
        return self.source.why_none()


class Balancer(balance.Balancer):
    """The kit's balancer over a route's upstreams, plus discovery.

    ``upstreams`` is the current list: the configured static ones and, for each discovered
    one, its current derived upstreams (or its placeholder until DNS first answers). The list
    is replaced, never changed in place, when DNS changes it (``endpoints_changed``). With no
    available upstream ``pick`` gives None."""

    __slots__ = ("_configured", "_found")

    def __init__(self, kind: str, upstreams: list[Upstream]) -> None:
        self._configured = list(upstreams)
        self._found: dict[int, Discovered] = {}
        super().__init__(kind, [], rand=random)  # the module: tests patch its choices
        for i, up in enumerate(self._configured):
            if up.needs_discovery:
                link = self._found[i] = Discovered(up, self)
                up.discovered = link
        self._rebuild()

    @property
    def kind(self) -> str:
        return self.policy

    @property
    def upstreams(self) -> list[Upstream]:
        return self.items

    @upstreams.setter
    def upstreams(self, ups: list[Upstream]) -> None:
        self.items = ups

    def _rebuild(self) -> None:
        ups: list[Upstream] = []
        for i, up in enumerate(self._configured):
            link = self._found.get(i)
            ups.extend(link.current() if link is not None else (up,))
        self.replace(ups)

    @property
    def configured(self) -> list[Upstream]:
        """The route's entries: the config's, and those the runtime API added."""
        return list(self._configured)

    def add_configured(self, up: Upstream) -> None:
        """The runtime API added an entry (a static address)."""
        self._configured.append(up)
        self._rebuild()

    def remove_configured(self, up: Upstream) -> None:
        """The runtime API removed a static entry (the caller drains it)."""
        i = self._configured.index(up)
        del self._configured[i]
        self._found = {(j if j < i else j - 1): link for j, link in self._found.items() if j != i}
        self._rebuild()

    def endpoints_changed(self) -> None:
        """A source's targets changed (called by worker/discovery)."""
        from monolake.worker import upstream_admin

        before = {u.label: u for u in self.upstreams}
        self._rebuild()
        upstream_admin.endpoints_changed(self)  # held operator changes apply to new addresses
        after = [u.label for u in self.upstreams]
        if list(before) != after:
            structlog.get_logger().info(
                "upstreams_changed",
                upstreams=after,
                joined=[x for x in after if x not in before],
                draining=[x for x, u in before.items() if x not in after and u.discovered is None],
            )

    def pick(self, exclude: set[int] | None = None) -> Upstream | None:  # type: ignore[override]
        return super().pick(time.monotonic(), exclude)

    def index_of(self, up: Upstream) -> int:
        """``up``'s index, or -1 when DNS has taken it out of the list meanwhile."""
        try:
            return self.upstreams.index(up)
        except ValueError:
            return -1
