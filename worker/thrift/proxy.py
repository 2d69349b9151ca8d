"""The Thrift proxy service: route a request by method name and forward it through the pools.

It is the innermost service of a thrift server's stack (``monolake.worker.service``) and is
``Stateful``: its pools' idle connections move to the next version on reload. Two entry
points: ``forward(frame, call)`` is the callback-based hot path the server uses when no
custom layer sits in front; ``call(frame, ctx)`` is the framework's ``Service`` interface
(awaitable), used when layers are configured and by the gateway.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from monolake.worker import health, upstream_admin
from monolake.worker.service import Stateful, restore_state
from monolake.worker.service.state import FdSource
from monolake.worker.upstream.endpoint import DRAINING, EJECTED, UNHEALTHY, UP

from .discovered import RouteTargets
from .errors import UpstreamError
from .framing import Frame
from .message import ONEWAY
from .pool import Call, Endpoint, EndpointPool, PoolSettings, Upstreams
from .stats import Counters

log = structlog.get_logger()

PROXY_KEY = "thrift_proxy"


class RouteError(UpstreamError):
    """No route takes this method (no ``methods`` match and no default route)."""


class Target:
    """One upstream of one route: its weight, and its pool per transport framing."""

    __slots__ = (
        "admin",
        "draining",
        "endpoint",
        "held_down",
        "pools",
        "priority",
        "requests",
        "settings",
        "upstreams",
        "weight",
    )

    def __init__(
        self, endpoint: Endpoint, weight: int, settings: PoolSettings, upstreams: Upstreams, priority: int = 0
    ) -> None:
        self.endpoint = endpoint
        self.weight = weight
        self.priority = priority  # SRV priority (lower first)
        self.draining = False  # DNS dropped it (worker/thrift/discovered.py)
        self.held_down = False  # failing its active health checks (worker/health)
        self.admin = ""  # the runtime API's "draining" or "disabled" (worker/upstream_admin.py)
        self.requests = 0  # calls sent to it (the runtime API lists them)
        self.settings = settings
        self.upstreams = upstreams
        self.pools: dict[int, EndpointPool] = {}

    def pool_for(self, kind: int) -> EndpointPool:
        pool = self.pools.get(kind)
        if pool is None:
            pool = self.pools[kind] = self.upstreams.pool(self.endpoint, kind, self.settings)
        return pool

    def set_checked(self, verdict: str | None) -> None:
        """For the active health checker (worker/health): the kit's verdicts, applied to the
        target as a whole, as its pools are made per framing on demand."""
        self.held_down = verdict not in (None, UP)

    def available(self, now: float) -> bool:
        return not self.held_down and not self.admin and all(p.available(now) for p in self.pools.values())

    def state(self, now: float) -> str:
        """As the kit's ``Health.state``: operator, DNS drain, active check, ejection."""
        if self.admin:
            return self.admin
        if self.draining:
            return DRAINING
        if self.held_down:
            return UNHEALTHY
        if any(p.ejected_until > now for p in self.pools.values()):
            return EJECTED
        return UP

    def load(self) -> int:
        return sum(p.load() for p in self.pools.values())


class Route:
    __slots__ = ("balancer", "label", "targets")

    def __init__(self, label: str, targets: RouteTargets) -> None:
        self.label = label
        self.targets = targets  # keeps the DNS sources alive (they hold it weakly)
        self.balancer = targets.balancer


def pool_settings(server_cfg: Any, route_cfg: Any) -> PoolSettings:
    t = server_cfg.timeout
    return PoolSettings(
        connect_timeout=t.upstream_connect_timeout_sec,
        read_timeout=t.upstream_read_timeout_sec,
        max_idle=route_cfg.max_idle_per_upstream,
        idle_timeout=route_cfg.idle_timeout_sec,
        eject_after=route_cfg.eject_after_failures,
        eject_duration=route_cfg.eject_duration_sec,
        max_frame=server_cfg.max_frame_size,
    )


class MethodRouter:
    """Method name -> route: exact names from ``methods`` lists, then the default route.

    A multiplexed name (``"Service:method"``, TMultiplexedProtocol) matches its full form
    first, then the bare method.
    """

    def __init__(self, server_cfg: Any, upstreams: Upstreams) -> None:
        self.by_method: dict[str, Route] = {}
        self.default: Route | None = None
        self.routes: list[Route] = []
        for rcfg in server_cfg.thrift_routes:
            settings = pool_settings(server_cfg, rcfg)

            def make(ep: Endpoint, weight: int, priority: int, settings: PoolSettings = settings) -> Target:
                return Target(ep, weight, settings, upstreams, priority)

            route = Route(rcfg.pattern, RouteTargets(rcfg.upstreams, rcfg.load_balancer, make))
            upstream_admin.register_thrift(server_cfg.name, server_cfg, rcfg, route.targets, self)
            if rcfg.health_check is not None:
                health.watch_thrift(
                    route.targets,
                    rcfg.health_check,
                    server_cfg.name,
                    rcfg.pattern,
                    framed=server_cfg.thrift_transport != "unframed",
                )
            self.routes.append(route)
            if rcfg.methods is None:
                if self.default is None:
                    self.default = route
            else:
                for method in rcfg.methods:
                    self.by_method.setdefault(method, route)

    def pool_for(self, label: str, kind: int) -> EndpointPool | None:
        """The pool of upstream ``label`` in framing ``kind``, if a route still uses it."""
        for route in self.routes:
            for target in route.balancer.items:
                if target.endpoint.label == label:
                    return target.pool_for(kind)
        return None

    def route(self, name: str) -> Route | None:
        route = self.by_method.get(name)
        if route is not None:
            return route
        if ":" in name:
            route = self.by_method.get(name.rpartition(":")[2])
            if route is not None:
                return route
        return self.default


class ThriftProxy(Stateful):
    """Forwards framed requests upstream and hands each reply to its caller's sink."""

    state_version = 1

    def __init__(self, server_cfg: Any, counters: Counters) -> None:
        self.counters = counters
        self.upstreams = Upstreams(counters)
        self.router = MethodRouter(server_cfg, upstreams=self.upstreams)
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the worker's loop (first connection); starts the pools' sweep."""
        if self.loop is None:
            self.loop = loop
            self.upstreams.start(loop)

    # -- hot path -------------------------------------------------------------------------

    def forward(self, frame: Frame, call: Call | None, now: float = 0.0) -> None:
        """Send ``frame`` upstream; the reply (or failure) goes to ``call.sink``.

        ``call`` is None for oneway requests, which get no reply. A routing failure is
        reported through the sink like any upstream failure.
        """
        route = self.router.route(frame.head.name)
        if route is None:
            err: UpstreamError = RouteError(f"no route for method {frame.head.name!r}")
            if call is not None:
                call.sink.on_error(call, err)
            else:
                self.counters.errors += 1  # type: ignore[attr-defined]  # Counters' slots are made from a tuple
                log.warning("thrift_oneway_dropped", method=frame.head.name, reason=str(err))
            return
        if not now:
            loop = self.loop
            if loop is None:
                self.start(asyncio.get_running_loop())
                loop = self.loop
                assert loop is not None
            now = loop.time()
        target = route.balancer.pick(now)
        if target is None:  # every upstream of the route is discovered, and DNS names none
            why = "; ".join(d.why_none() for d in route.targets.discovered) or "no upstream"
            if route.balancer.health is not None and route.balancer.health.rejecting:
                why = "every upstream fails its health checks"
            err = UpstreamError(f"no upstream address for method {frame.head.name!r}: {why}")
            if call is not None:
                call.sink.on_error(call, err)
            else:
                self.counters.errors += 1  # type: ignore[attr-defined]  # Counters' slots are made from a tuple
            return
        target.requests += 1
        pool = target.pools.get(frame.kind) or target.pool_for(frame.kind)
        pool.send(frame, call, now)

    # -- framework Service interface --------------------------------------------------------

    async def call(self, request: Frame, ctx: Any) -> Frame:
        """Forward one request and wait for its reply frame (raises ``UpstreamError``).

        A oneway request returns the request frame itself: nothing comes back.
        """
        loop = asyncio.get_running_loop()
        head = request.head
        if head.mtype == ONEWAY:
            self.forward(request, None)
            return request
        fut: asyncio.Future[Frame] = loop.create_future()
        self.forward(request, Call(_FutureSink(fut), head.seqid, head, request.tt))
        return await fut

    # -- state ------------------------------------------------------------------------------

    def export_state(self, fds: list[int]) -> dict:
        return self.upstreams.export_state(fds)

    def import_state(self, data: Any, fds: FdSource) -> None:
        if isinstance(data, dict):
            n = self.upstreams.import_state(data, fds, self.router.pool_for)
            if n:
                log.info("thrift_pool_adopted", connections=n)

    def adopt(self, previous: Any) -> None:
        self.upstreams.adopt_live(previous.upstreams, self.router.pool_for)

    async def aclose(self) -> None:
        self.upstreams.close()


class _FutureSink:
    """Bridges the callback data path to an awaiting caller."""

    __slots__ = ("fut",)

    def __init__(self, fut: asyncio.Future[Frame]) -> None:
        self.fut = fut

    def on_reply(self, call: Call, frame: Frame) -> None:
        if not self.fut.done():
            self.fut.set_result(frame)

    def on_error(self, call: Call, error: UpstreamError) -> None:
        if not self.fut.done():
            self.fut.set_exception(error)


class ThriftProxyFactory:
    """Builds the proxy from the server config, inheriting the previous version's pools."""

    key = PROXY_KEY

    def __init__(self, server_cfg: Any, counters: Counters) -> None:
        self.server_cfg = server_cfg
        self.counters = counters

    def make(self, previous: Any) -> ThriftProxy:
        svc = ThriftProxy(self.server_cfg, self.counters)
        restore_state(svc, previous, what=f"thrift proxy {self.server_cfg.name}")
        return svc
