"""The innermost service of an HTTP server: route, then proxy (or answer a builtin).

``RouterFactory.make(previous)`` builds a ``RouterService`` and lets it inherit from the
previous version: round-robin positions, passive-health ejections and the upstream pool
(live objects in-process, exported state and fds across processes).
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from monolake.conf.routes import Router
from monolake.worker import health, upstream_admin
from monolake.worker.http.body import BodyStream
from monolake.worker.http.builtins import BUILTINS
from monolake.worker.http.client import UpstreamError, UpstreamTimeout
from monolake.worker.http.exchange import CallReply
from monolake.worker.http.headers import is_idempotent, request_head, upstream_target
from monolake.worker.http.message import Request, Response, text_response
from monolake.worker.http.pool import POOL_STATE_VERSION, ConnectHold, UpstreamPool
from monolake.worker.http.tunnel import Tunnel
from monolake.worker.http.upstream import Balancer, Upstream
from monolake.worker.net.tls import client_context
from monolake.worker.service.state import NO_FDS, FdSource, Stateful, restore_state


class RouteHandler:
    """Everything one route needs at request time."""

    __slots__ = ("index", "cfg", "balancer", "preserve_path", "builtin", "label", "h2", "h2_ssl")

    def __init__(
        self, index: int, cfg: Any, balancer: Balancer, builtin: Any, h2: str = "", h2_ssl: Any = None
    ) -> None:
        # "h2": the upstreams speak HTTP/2 ("http2"); "auto": https upstreams, ALPN decides
        # (h2_ssl offers h2 and http/1.1); "": HTTP/1.1
        self.h2 = h2
        self.h2_ssl = h2_ssl
        self.index = index
        self.cfg = cfg
        self.balancer = balancer
        self.preserve_path = cfg.preserve_path
        self.builtin = builtin
        self.label = cfg.pattern if hasattr(cfg, "pattern") else str(index)


class RouterService(Stateful):
    """Routes a request (Monolake's matching, from monolake.conf.routes) and proxies it."""

    state_version = 1

    def __init__(self, name: str, cfg: Any, slot: int, pool: UpstreamPool, stats: Any) -> None:
        self.name = name
        self.cfg = cfg
        self.pool = pool
        self.stats = stats
        self.router = Router(cfg.routes)
        self.preserve_host = cfg.preserve_host
        self.via = cfg.via
        self.read_timeout = cfg.timeout.upstream_read_timeout_sec
        self.routes: list[RouteHandler] = []
        by_key: dict[tuple, Upstream] = {}
        self.h2pool: Any = None
        for i, route in enumerate(cfg.routes):
            version = getattr(route, "upstream_http_version", None) or cfg.upstream_http_version
            tls = any(u.endpoint.type == "uri" and u.endpoint.scheme == "https" for u in route.upstreams)
            h2 = "h2" if version == "http2" else "auto" if version == "auto" and tls else ""
            if h2 == "auto" and not _h2_available():
                h2 = ""  # "auto" without the extension is HTTP/1.1, as it always was
            if h2 and self.h2pool is None:
                from monolake.worker.h2.pool import worker_pool

                self.h2pool = worker_pool()
                self.h2pool.configure(cfg.timeout.upstream_connect_timeout_sec, self.read_timeout)
            ssl_ctx = h2_ssl = None
            if tls:
                ssl_ctx = client_context(route)
                if h2 == "h2":
                    ssl_ctx.set_alpn_protocols(["h2"])
                elif h2 == "auto":  # the HTTP/1.1 pool's context offers no ALPN
                    h2_ssl = client_context(route)
                    h2_ssl.set_alpn_protocols(["h2", "http/1.1"])
            ups = [Upstream(u.endpoint, u.weight, route, ssl_ctx) for u in route.upstreams]
            for up in ups:
                by_key.setdefault(up.key, up)
            builtin = None
            if ups and all(u.kind == "builtin" for u in ups):
                maker = BUILTINS.get(ups[0].builtin)
                if maker is None:
                    raise ValueError(f"routes[{i}]: unknown builtin {ups[0].builtin!r}")
                builtin = maker(name, slot)
            balancer = Balancer(route.load_balancer, ups)
            if route.health_check is not None and builtin is None:
                health.watch_http(balancer, route.health_check, name, route.pattern)
            upstream_admin.register_http(name, cfg, route, balancer, pool)
            self.routes.append(
                RouteHandler(i, route, balancer, builtin, h2 if builtin is None else "", h2_ssl)
            )
        pool.upstreams_by_key = by_key

    async def call(self, req: Request, ctx: Any) -> Response:
        """The router as a coroutine service (what a layer awaits): the same ``serve`` path,
        answered through a ``CallReply`` instead of the connection's ``Exchange``."""
        reply = CallReply()
        self.serve(req, ctx, reply)
        return await reply.wait()

    def serve(self, req: Request, ctx: Any, ex: Any) -> None:
        """The one request path, callback-shaped: route match, builtin or proxy. With an
        idle pooled connection at hand, the request goes out and the response head comes
        back through callbacks, with no task and no future; the answer goes to
        ``ex.respond``. Anything that must wait (a connect, a builtin, a retry) continues as
        a coroutine via ``ex.spawn``. ``ex`` is the server's ``Exchange`` when nothing wraps
        the router, a ``CallReply`` when a layer awaits it (``call``)."""
        respond = ex.respond
        spawn = ex.spawn
        found = self.router.match(req.path, req.host or None)
        if found is None:
            if req.body is not None:
                req.body.discard()
            respond(text_response(404, "no route"))
            return
        index, params = found
        route = self.routes[index]
        ctx.route = route.cfg
        ctx.params = params
        if route.builtin is not None:
            spawn(route.builtin(req, ctx))
            return
        up = route.balancer.pick(None)
        if up is None:
            respond(text_response(503, "no healthy upstream"))
            return
        if route.h2 and self.h2pool.speaks_h2(up, route.h2):
            # this route's upstream speaks HTTP/2 (or ALPN has yet to say): the h2 pool
            from monolake.worker.h2.forward import forward

            spawn(
                forward(
                    self.h2pool,
                    route,
                    req,
                    ctx,
                    up,
                    preserve_host=self.preserve_host,
                    via=self.via,
                    stats=self.stats,
                    fallback=self._proxy,
                )
            )
            return
        conn = self.pool.take_idle(up)
        if conn is None:
            # counted from the pick: requests parsed before the task first runs see it; the
            # hold ends with the coroutine, also when it is cancelled before it ever runs
            hold = ConnectHold(up)
            spawn(self._proxy(route, req, ctx, first=up, hold=hold), hold.release)
            return
        ctx.upstream = up.label
        ex.upstream = conn
        head = self._head(route, req, ctx, up)

        def on_head(resp: Response | None, exc: BaseException | None) -> None:
            ex.upstream = None
            if resp is not None:  # the client's contract: a response xor an error
                if resp.status == 101:
                    if req.upgrade:
                        resp.tunnel = Tunnel(conn)
                    else:
                        conn.abort()
                        resp = text_response(502, "upstream switched protocols unasked")
                respond(resp)
                return
            conn.abort()
            if getattr(exc, "retryable", False) and _may_retry(req):
                spawn(self._proxy(route, req, ctx, retry=True))  # a stale keep-alive connection
                return
            structlog.get_logger().info(
                "upstream_failed", upstream=up.label, error=str(exc), request_id=ctx.request_id
            )
            respond(_error_response(exc) if isinstance(exc, UpstreamError) else text_response(502))

        # lend_body: the server's respond() is done with the body when it returns
        # (Exchange.respond); a layer keeps the response, so it gets a copy (CallReply)
        conn.send(
            req.method, head, req.body, req.upgrade, self.via, self.read_timeout, on_head, lend_body=ex.lends
        )

    def _head(self, route: RouteHandler, req: Request, ctx: Any, up: Any) -> bytes:
        """The request head sent to ``up``: the route's target, this server's Host and Via."""
        return request_head(
            req,
            ctx,
            up,
            upstream_target(req, up, route.preserve_path),
            preserve_host=self.preserve_host,
            via=self.via,
        )

    async def _proxy(
        self,
        route: RouteHandler,
        req: Request,
        ctx: Any,
        first: Any = None,
        retry: bool = False,
        hold: ConnectHold | None = None,
    ) -> Response:
        """The rest of a request that has to wait: a connect (``first``, the upstream
        ``serve`` picked, with ``hold`` counting it) or a retry on a fresh connection after
        a stale keep-alive one failed (``retry``)."""
        balancer = route.balancer
        pool = self.pool
        tried: set[int] | None = None
        last: UpstreamError | None = None
        for attempt in (1,) if retry else (0, 1):
            if first is not None:
                up, first = first, None
            else:
                up, hold = balancer.pick(tried), None
            if up is None:
                if last is not None:
                    return _error_response(last)
                return text_response(503, "no healthy upstream")
            ctx.upstream = up.label
            try:
                conn = await pool.acquire(up, hold)
            except UpstreamError as exc:
                up.connect_failed(self.stats)
                structlog.get_logger().info(
                    "upstream_connect_failed", upstream=up.label, error=str(exc), request_id=ctx.request_id
                )
                last = exc
                if attempt == 0 and _may_retry(req):
                    tried = {balancer.index_of(up)}
                    continue
                return _error_response(exc)
            up.connect_ok()
            head = self._head(route, req, ctx, up)
            try:
                resp = await conn.request(
                    req.method, head, req.body, req.upgrade, self.via, self.read_timeout
                )
            except UpstreamError as exc:
                conn.abort()
                last = exc
                if exc.retryable and attempt == 0 and _may_retry(req):
                    continue  # a stale keep-alive connection: once more on a fresh one
                structlog.get_logger().info(
                    "upstream_failed", upstream=up.label, error=str(exc), request_id=ctx.request_id
                )
                return _error_response(exc)
            except BaseException:
                conn.abort()
                raise
            if resp.status == 101:
                if req.upgrade:
                    resp.tunnel = Tunnel(conn)
                else:
                    conn.abort()
                    return text_response(502, "upstream switched protocols unasked")
            return resp
        return _error_response(last) if last else text_response(502)

    # -- state -----------------------------------------------------------------------------
    def export_state(self, fds: list[int]) -> dict:
        now = time.monotonic()
        routes = []
        for r in self.routes:
            routes.append(
                {
                    "pattern": r.label,
                    "position": r.balancer.position,
                    "upstreams": {
                        u.label: {"failures": u.failures, "ejected_for": max(0.0, u.ejected_until - now)}
                        for u in r.balancer.upstreams
                    },
                }
            )
        return {"routes": routes, "pool": {"version": POOL_STATE_VERSION, "idle": self.pool.export_idle(fds)}}

    def import_state(self, data: dict, fds: FdSource) -> None:
        now = time.monotonic()
        by_pattern = {r.get("pattern"): r for r in data.get("routes", [])}
        for r in self.routes:
            old = by_pattern.get(r.label)
            if old is None:
                continue
            n = len(r.balancer.upstreams)
            r.balancer.position = int(old.get("position", 0)) % n if n else 0
            ups = old.get("upstreams", {})
            for u in r.balancer.upstreams:
                rec = ups.get(u.label)
                if rec:
                    u.failures = int(rec.get("failures", 0))
                    left = float(rec.get("ejected_for", 0.0))
                    if left > 0:
                        u.ejected_until = now + left
        pool = data.get("pool") or {}
        if pool.get("version") == POOL_STATE_VERSION:
            self.pool.import_idle(pool.get("idle", []), fds)

    def adopt(self, previous: RouterService) -> None:
        """In-place reload: positions and health from the live router; the pool is shared."""
        data = {"routes": previous.export_state_routes_only()}
        self.import_state(data, NO_FDS)

    def export_state_routes_only(self) -> list[dict]:
        now = time.monotonic()
        return [
            {
                "pattern": r.label,
                "position": r.balancer.position,
                "upstreams": {
                    u.label: {"failures": u.failures, "ejected_for": max(0.0, u.ejected_until - now)}
                    for u in r.balancer.upstreams
                },
            }
            for r in self.routes
        ]

    async def aclose(self) -> None:
        return None


def _h2_available() -> bool:
    from monolake.worker import h2

    return bool(h2.available())


def _may_retry(req: Request) -> bool:
    body = req.body
    return is_idempotent(req.method) and (body is None or not body.consumed)


def _error_response(exc: UpstreamError) -> Response:
    if isinstance(exc, UpstreamTimeout):
        return text_response(504, str(exc))
    return text_response(exc.status, str(exc))


def native_route_table(service: RouterService) -> Any:
    """``service``'s routes compiled for the C matcher (uring/mu_route.c), for the native
    exchange (issue 13 §2): a ``NativeRoutes`` whose ``match`` is ``service.router.match``
    decided in C, or None where C does not take the table (no codec extension, a trie deeper
    than it bounds). Built once per router build, never per request."""
    from monolake.worker.http.native_route import NativeRoutes

    return NativeRoutes.of(service.router)


class RouterFactory:
    """Innermost factory of an HTTP server's stack."""

    key = "router"

    def __init__(self, name: str, cfg: Any, slot: int, pool: UpstreamPool, stats: Any) -> None:
        self.name = name
        self.cfg = cfg
        self.slot = slot
        self.pool = pool
        self.stats = stats

    def make(self, previous: Any) -> RouterService:
        svc = RouterService(self.name, self.cfg, self.slot, self.pool, self.stats)
        restore_state(svc, previous, what=f"{self.name}.router")
        return svc


__all__ = ["RouterFactory", "RouterService", "BodyStream"]
