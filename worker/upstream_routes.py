"""What the runtime upstream API (worker/upstream_admin.py) needs of one route, per protocol:
its endpoints now, each one's address and listing row, and how to set an operator state or
weight, add an endpoint and remove one. ``HttpRoute`` wraps an HTTP route's balancer and pool,
``ThriftRoute`` a thrift route's targets. Both hold what they wrap weakly: a route dropped by
a reload disappears from the API without being told.

Removal drains: the endpoint leaves the balancer (no new requests), requests in flight finish,
its idle pooled connections close (HTTP: at the pool's next sweep; thrift: at once) and busy
ones when they come back.
"""

from __future__ import annotations

import weakref
from typing import Any

from monolake.supervisor.upstream_rules import join


class RouteAdmin:
    """The API's view of one route of one server (``route`` is its pattern)."""

    protocol = ""

    def __init__(self, server: str, server_cfg: Any, route_cfg: Any, balancer: Any) -> None:
        self.server = server
        self.server_cfg = server_cfg
        self.route_cfg = route_cfg
        self.route = str(route_cfg.pattern)
        self._balancer = weakref.ref(balancer)

    @property
    def balancer(self) -> Any | None:
        return self._balancer()

    def alive(self) -> bool:
        return self._balancer() is not None

    def endpoints(self) -> list[Any]:
        balancer = self._balancer()
        return list(balancer.items) if balancer is not None else []

    def address_of(self, ep: Any) -> str:
        raise NotImplementedError

    def row(self, ep: Any, now: float) -> dict[str, Any]:
        raise NotImplementedError

    def set_state(self, ep: Any, state: str | None) -> None:
        raise NotImplementedError

    def add(self, uri: str, address: str, weight: int) -> str:
        """Add an endpoint; "" or why not (nothing changed)."""
        raise NotImplementedError

    def check_remove(self, address: str) -> str:
        """Why ``address`` cannot be removed from this route, or ""."""
        raise NotImplementedError

    def remove(self, address: str) -> None:
        raise NotImplementedError

    def reweigh(self) -> None:
        balancer = self._balancer()
        if balancer is not None:
            balancer.reweigh()

    def duplicate(self, address: str) -> str:
        for ep in self.endpoints():
            if self.address_of(ep) == address and not _leaving(ep):
                how = " (found by DNS)" if _discovered(ep) else ""
                return f"{address} is already an endpoint of route {self.route!r}{how}"
        return ""

    def _not_configured(self, address: str) -> str:
        """Why ``address``, configured on no endpoint of this route, cannot be removed: DNS
        gives it, or the route has no such endpoint."""
        derived = [ep for ep in self.endpoints() if _discovered(ep) and self.address_of(ep) == address]
        if derived:
            return (
                f"{address} is found by DNS ({_found_by(derived[0])}): it comes back at the "
                "next answer; disable or drain it instead, or change the record"
            )
        return f"route {self.route!r} has no endpoint {address}"

    def _last(self, address: str) -> str:
        return f"{address} is the last endpoint of route {self.route!r}: add another one first"

    def _base_row(self, ep: Any, label: str) -> dict[str, Any]:
        balancer = self._balancer()
        return {
            "server": self.server,
            "route": self.route,
            "address": self.address_of(ep),
            "upstream": label,
            "proxy": self.protocol,
            "balancer": balancer.policy if balancer is not None else "",
            "weight": ep.weight,
            "found_by": _found_by(ep),
        }


def _leaving(ep: Any) -> bool:
    """Drained by DNS or a removal (not by the operator's ``drain``)."""
    return bool(getattr(ep, "draining", False)) and getattr(ep, "admin", "") != "draining"


def _discovered(ep: Any) -> bool:
    group = getattr(ep, "group", None)
    if group is None:
        group = getattr(getattr(ep, "endpoint", None), "group", None)
    return group is not None


def _found_by(ep: Any) -> str:
    """The name or SRV record an address was found by ("" for a configured or added one)."""
    group = getattr(ep, "group", None)  # HTTP: the Discovered link of a derived upstream
    if group is not None:
        return str(group.source.name)
    group = getattr(getattr(ep, "endpoint", None), "group", None)  # thrift
    return str(group.name) if group is not None else ""


# ----- HTTP --------------------------------------------------------------------------------


class HttpRoute(RouteAdmin):
    protocol = "http"

    def __init__(self, server: str, server_cfg: Any, route_cfg: Any, balancer: Any, pool: Any) -> None:
        super().__init__(server, server_cfg, route_cfg, balancer)
        self._pool = weakref.ref(pool)

    def alive(self) -> bool:
        """A balancer is in a reference cycle (its bound chooser) and outlives its stack until
        the collector runs; its pool goes with the stack (or is shared with the next one)."""
        return self._balancer() is not None and self._pool() is not None

    def address_of(self, up: Any) -> str:
        return join(up.connect_host, int(up.port)) if up.port else str(up.label)

    def row(self, up: Any, now: float) -> dict[str, Any]:
        pool = self._pool()
        idle = len(pool.idle.get(up.key, ())) if pool is not None else 0
        return {
            **self._base_row(up, up.label),
            "state": str(up.state(now)),
            "active": up.active,
            "idle": idle,
            "requests": up.requests,
        }

    def set_state(self, up: Any, state: str | None) -> None:
        from monolake.worker.http.upstream import DrainEpoch

        was = up.admin
        up.admin = state or ""
        if state == "draining" and not up.draining:
            up.draining = True  # the pool closes its idle connections, and busy ones on release
            DrainEpoch.value += 1
        elif state != "draining" and was == "draining" and up.draining and self._still_named(up):
            up.draining = False  # drained by the operator (not by DNS or a removal): back

    def _still_named(self, up: Any) -> bool:
        """Is ``up`` still in the route: configured, or an address DNS still gives?"""
        balancer = self._balancer()
        if balancer is None or up not in balancer.items:
            return False
        group = up.group
        return group is None or group.children.get((up.address, up.port)) is up

    def add(self, uri: str, address: str, weight: int) -> str:
        from monolake.conf.addresses import parse_http_uri
        from monolake.conf.schema import EndpointConfig
        from monolake.worker.http.upstream import Upstream

        balancer = self._balancer()
        pool = self._pool()
        if balancer is None or pool is None:
            return f"route {self.route!r} is gone"
        if any(up.kind == "builtin" for up in balancer.upstreams):
            return f"route {self.route!r} serves a builtin: it has no upstreams to add to"
        why = self.duplicate(address)
        if why:
            return why
        parsed = parse_http_uri(uri)
        endpoint = EndpointConfig(
            "uri",
            uri,
            scheme=parsed.scheme,
            host=parsed.host,
            port=parsed.port,
            path=parsed.path,
            query=parsed.query,
        )
        up = Upstream(endpoint, weight, self.route_cfg, None)
        up.origin = "api"
        balancer.add_configured(up)
        pool.upstreams_by_key.setdefault(up.key, up)  # a reload hands its idle connections over
        return ""

    def _configured_at(self, address: str) -> list[Any]:
        balancer = self._balancer()
        if balancer is None:
            return []
        return [up for up in balancer.configured if up.discovered is None and self.address_of(up) == address]

    def check_remove(self, address: str) -> str:
        balancer = self._balancer()
        if balancer is None:
            return f"route {self.route!r} is gone"
        found = self._configured_at(address)
        if not found:
            return self._not_configured(address)
        if len(balancer.configured) <= len(found):
            return self._last(address)
        return ""

    def remove(self, address: str) -> None:
        from monolake.worker.http.upstream import mark_draining

        balancer = self._balancer()
        if balancer is None:
            return
        for up in self._configured_at(address):
            balancer.remove_configured(up)
            mark_draining(up)  # in-flight requests finish; the pool closes its connections


# ----- Thrift ------------------------------------------------------------------------------


class ThriftRoute(RouteAdmin):
    protocol = "thrift"

    def __init__(self, server: str, server_cfg: Any, route_cfg: Any, targets: Any, router: Any) -> None:
        super().__init__(server, server_cfg, route_cfg, targets.balancer)
        self._targets = weakref.ref(targets)
        self._router = weakref.ref(router)

    def alive(self) -> bool:
        return self._targets() is not None and self._router() is not None

    def address_of(self, target: Any) -> str:
        return str(target.endpoint.label)

    def row(self, target: Any, now: float) -> dict[str, Any]:
        return {
            **self._base_row(target, self.address_of(target)),
            "state": target.state(now),
            "active": target.load(),
            "idle": sum(len(p.idle) for p in target.pools.values()),
            "requests": target.requests,
        }

    def set_state(self, target: Any, state: str | None) -> None:
        was = target.admin
        target.admin = state or ""
        if state == "draining":
            for pool in target.pools.values():
                pool.drain()  # idle connections close now, busy ones when their calls are answered
        elif was == "draining" and not target.draining:
            for pool in target.pools.values():
                pool.draining = False

    def add(self, uri: str, address: str, weight: int) -> str:
        from monolake.worker.thrift.pool import Endpoint

        targets = self._targets()
        if targets is None:
            return f"route {self.route!r} is gone"
        why = self.duplicate(address)
        if why:
            return why
        host, _, port = address.rpartition(":")
        targets.add_static(Endpoint("socket", host=host.strip("[]"), port=int(port)), weight)
        return ""

    def check_remove(self, address: str) -> str:
        targets = self._targets()
        if targets is None:
            return f"route {self.route!r} is gone"
        if not any(self.address_of(t) == address for t in targets.static()):
            return self._not_configured(address)
        if len(targets.entries()) <= 1:
            return self._last(address)
        return ""

    def remove(self, address: str) -> None:
        from monolake.worker.thrift.discovered import drain

        targets = self._targets()
        if targets is None:
            return
        for target in [t for t in targets.static() if self.address_of(t) == address]:
            targets.remove_static(target)
            router = self._router()
            shared = router is not None and any(
                self.address_of(t) == address for r in router.routes for t in r.balancer.items
            )
            if not shared:  # another route's target shares its pools: they stay
                drain(target)
