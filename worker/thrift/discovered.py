"""Thrift upstreams found by DNS: a ``socket`` endpoint whose host is a name, or an ``srv``
endpoint, stands for one ``Target`` per address (worker/discovery), replaced in the route's
balancer whenever DNS changes them, with no reload.

The rules are the HTTP balancer's (docs/configuration.md, "Discovery"): each address carries
the upstream's full weight; SRV targets carry the record's port, priority and weight; a target
that leaves is drained (its pools close idle connections at once and every other one when it
goes idle; calls in flight finish); before the first answer a placeholder target stands in,
whose pool resolves the name when it connects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from monolake.worker.discovery.sources import AddressSource, Source, SrvSource, is_ip, reconcile
from monolake.worker.discovery.sources import Target as DnsTarget
from monolake.worker.upstream.balance import pick_weighted_lowest

from .balance import Balancer
from .pool import Endpoint

if TYPE_CHECKING:
    from .proxy import Target

log = structlog.get_logger()


class Discovered:
    """One discovered upstream of one route."""

    def __init__(self, cfg: Any, weight: int, make_target: Any, owner: RouteTargets) -> None:
        self.make_target = make_target  # Endpoint, weight, priority -> Target
        self.children: dict[tuple[str, int], Target] = {}
        self.ready = False
        if cfg.type == "srv":
            self.name = cfg.value
            self.source: Source = SrvSource(cfg.value, owner.changed)
            ep = Endpoint("socket", host=cfg.host, port=0)
            ep.label = f"srv:{cfg.value}"
        else:
            self.name = cfg.host
            self.source = AddressSource(cfg.host, cfg.port, weight, owner.changed)
            ep = Endpoint("socket", host=cfg.host, port=cfg.port)
        ep.discovered = self
        self.placeholder: Target = make_target(ep, weight, 0)

    def current(self) -> list[Target]:
        if not self.ready:
            if not self.source.settled:
                return [self.placeholder]
            self.ready = True
            drain(self.placeholder)
        self.children = reconcile(self.children, self.source.targets(), self._derive, drain)
        return list(self.children.values())

    def _derive(self, t: DnsTarget) -> Target:
        ep = Endpoint("socket", host=t.address, port=t.port)
        ep.group = self
        return self.make_target(ep, max(1, t.weight), t.priority)

    async def resolve(self, timeout: float) -> DnsTarget | None:  # noqa: ASYNC109 - the connect deadline
        """For the placeholder's pool: the address to connect to, once DNS has answered."""
        await self.source.wait(timeout)
        return pick_weighted_lowest(self.source.targets())

    def sibling_pool(self, failed: Endpoint, kind: int, now: float) -> Any:
        """After a refused connect to ``failed``: the pool (same framing) of another address of
        this name that is neither draining nor ejected, lowest priority first; None if none."""
        target = pick_weighted_lowest(
            [
                t
                for t in self.children.values()
                if t.endpoint is not failed and not t.draining and t.available(now)
            ]
        )
        return target.pool_for(kind) if target is not None else None

    def why_none(self) -> str:
        return self.source.why_none()


def drain(target: Target) -> None:
    """No new calls (it has left the balancer); its pools close their connections as they go
    idle, and leave the server's pool table so an address that comes back starts afresh."""
    target.draining = True
    for pool in list(target.pools.values()):
        pool.drain()
        target.upstreams.forget(pool)


def needs_discovery(cfg: Any) -> bool:
    """An srv endpoint, or a socket endpoint whose host is a name: DNS gives its addresses."""
    return bool(cfg.type == "srv" or (cfg.type == "socket" and not is_ip(cfg.host)))


class RouteTargets:
    """A thrift route's upstreams: static targets and discovered ones, kept in its balancer.
    ``make_target(endpoint, weight, priority)`` builds a Target (worker/thrift/proxy.py)."""

    def __init__(self, upstreams: Any, policy: str, make_target: Any) -> None:
        self._make = make_target
        self._entries: list[Any] = [  # Target | Discovered, in config order
            Discovered(u.endpoint, u.weight, make_target, self)
            if needs_discovery(u.endpoint)
            else make_target(Endpoint.from_config(u.endpoint), u.weight, 0)
            for u in upstreams
        ]
        self.balancer = Balancer(self._items(), policy)

    def _items(self) -> list[Any]:
        items: list[Any] = []
        for entry in self._entries:
            items.extend(entry.current() if isinstance(entry, Discovered) else (entry,))
        return items

    def entries(self) -> list[Any]:
        """The route's entries (a Target, or a Discovered name), in order."""
        return list(self._entries)

    def static(self) -> list[Any]:
        """The entries that are one address each (configured or added at runtime)."""
        return [e for e in self._entries if not isinstance(e, Discovered)]

    def add_static(self, endpoint: Endpoint, weight: int) -> Target:
        """The runtime API added an address (worker/upstream_routes.py)."""
        target: Target = self._make(endpoint, weight, 0)
        self._entries.append(target)
        self.changed()
        return target

    def remove_static(self, target: Target) -> None:
        """The runtime API removed an address (the caller drains its pools)."""
        self._entries.remove(target)
        self.changed()

    def changed(self) -> None:
        from monolake.worker import upstream_admin

        before = {t.endpoint.label: t for t in self.balancer.items}
        self.balancer.replace(self._items())
        upstream_admin.endpoints_changed(self.balancer)  # held operator changes apply to new addresses
        after = [t.endpoint.label for t in self.balancer.items]
        if list(before) != after:
            log.info(
                "thrift_upstreams_changed",
                upstreams=after,
                joined=[x for x in after if x not in before],
                draining=[x for x, t in before.items() if x not in after and t.endpoint.discovered is None],
            )

    @property
    def discovered(self) -> list[Discovered]:
        return [e for e in self._entries if isinstance(e, Discovered)]
