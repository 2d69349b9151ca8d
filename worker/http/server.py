"""The ``http`` server builder (``monolake.worker.servers.BUILDERS["http"]``).

``build(name, cfg, env, previous)`` assembles the service stack (custom layers from the config
around the router/proxy), the shared per-server runtime that every connection reads, and the
``ServerHandle`` the worker drives (docs/contracts.md).
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from typing import Any

import structlog

from monolake.worker import h2, memtrim
from monolake.worker.http.exchange import entry_point
from monolake.worker.http.parser import HeadLimits, resolve_parser
from monolake.worker.http.pool import UpstreamPool
from monolake.worker.http.protocol import HttpServerProtocol
from monolake.worker.http.proxy import RouterFactory, RouterService
from monolake.worker.http.stats import Stats
from monolake.worker.net.tls import ServerTls
from monolake.worker.service.core import FactoryStack, ServiceStack, push_config_layers
from monolake.worker.service.state import NO_FDS
from monolake.worker.state import Snapshot

HANDLE_STATE_VERSION = 1


class ServerRuntime:
    """What every connection of one server shares; read on the hot path as plain attributes."""

    def __init__(
        self, name: str, cfg: Any, env: Any, stack: ServiceStack, stats: Stats, pool: UpstreamPool
    ) -> None:
        t = cfg.timeout
        self.name = name
        self.settings = cfg
        self.env = env
        self.slot = env.slot
        self.stack = stack
        self.serve = entry_point(stack.entry)
        self.stats = stats
        self.pool = pool
        self.log = env.logger.bind(server=name) if env.logger is not None else structlog.get_logger()
        self.parser_kind = resolve_parser(cfg.http_parser)
        self.max_head = cfg.max_header_size
        self.head_limits = HeadLimits.for_requests(cfg)
        self.max_uri = cfg.max_uri_size
        self.max_body = cfg.max_body_size
        self.keepalive_timeout = t.server_keepalive_timeout_sec
        self.header_timeout = t.server_read_header_timeout_sec
        self.body_timeout = t.server_read_body_timeout_sec
        self.body_timeout_on = self.body_timeout > 0
        # HTTP/2 on the same port (worker/h2/downstream.py): None when off or unavailable
        self.h2 = h2.downstream_listener(cfg)
        alpn = cfg.http2.alpn if self.h2 is not None else ("http/1.1",)
        self.tls = ServerTls(cfg.tls, alpn) if cfg.tls is not None else None
        self.connections: set[HttpServerProtocol] = set()
        self.draining = False
        self.loop: Any = None
        self.access_log = bool(cfg.access_log)
        self.native: Any = None  # the native engine (native_engine.py), when it is on
        self._access_file: Any = None
        if isinstance(cfg.access_log, str) and cfg.access_log:
            # open for the server's lifetime; close_files() closes it
            self._access_file = open(cfg.access_log, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        self._access = structlog.get_logger("monolake.access")
        self._sweep_handle: Any = None
        timeouts = [
            x
            for x in (
                self.keepalive_timeout,
                self.header_timeout,
                self.body_timeout,
                t.upstream_read_timeout_sec,
            )
            if x > 0
        ]
        self.sweep_interval = min(1.0, max(0.05, min(timeouts) / 4)) if timeouts else 1.0
        memtrim.track(self)

    def compact_memory(self) -> None:
        """After a burst (worker/memtrim.py): the sets of connections keep a table sized for
        the burst until rebuilt."""
        memtrim.compact_all((self.connections, self.pool.busy))

    # -- periodic timeout sweep ------------------------------------------------------------
    def ensure_loop(self) -> None:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
            self.pool.loop = self.pool.loop or self.loop
            self._sweep_handle = self.loop.call_later(self.sweep_interval, self._sweep)

    def _sweep(self) -> None:
        """Check every deadline, and give those due before the next sweep a timer of their
        own, so a timeout fires within milliseconds of its deadline, not up to a sweep
        interval late. Few get one: a deadline moves on with every byte, so only a
        connection silent for nearly its whole timeout is that close to it."""
        loop = self.loop
        now = loop.time()
        horizon = now + self.sweep_interval
        try:
            for conn in list(self.connections):
                conn.check_timeout(now)
                deadline = conn.deadline
                if now < deadline <= horizon:
                    loop.call_at(deadline, self._on_time, conn, deadline)
            self.pool.sweep(now)
            for up in list(self.pool.busy):
                deadline = up.deadline
                if now < deadline <= horizon:
                    loop.call_at(deadline, self._on_time, up, deadline)
        except Exception:
            self.log.exception("timeout_sweep_failed")
        if self._sweep_handle is not None:
            self._sweep_handle = loop.call_later(self.sweep_interval, self._sweep)

    def _on_time(self, conn: Any, deadline: float) -> None:
        """A deadline's own timer (see _sweep). The loop may run it a clock tick early, so
        the deadline itself is the earliest time it is checked at; one that has moved on
        since is not due, and the sweeps keep watching it."""
        if self._sweep_handle is None:
            return  # stopped (the handle is closing)
        try:
            conn.check_timeout(max(self.loop.time(), deadline))
        except Exception:
            self.log.exception("timeout_check_failed")

    def stop_sweep(self) -> None:
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None

    # -- access log ------------------------------------------------------------------------
    def log_access(self, ex: Any, conn: Any) -> None:
        req = ex.request
        ctx = ex.ctx
        rec = {
            "server": self.name,
            "worker": self.slot,
            "client": _addr(conn.peer),
            "method": req.method,
            "path": req.path,
            "query": req.query,
            "version": req.version,
            "status": ex.status,
            "bytes_in": req.body.received if req.body is not None else 0,
            "bytes_out": ex.bytes_out,
            "duration_ms": round((time.monotonic() - ex.started) * 1000, 3),
            "upstream": ctx.upstream if ctx is not None else None,
            "request_id": ctx.request_id if ctx is not None else None,
        }
        if self._access_file is not None:
            self._access_file.write(json.dumps(rec) + "\n")
        else:
            self._access.info("access", **rec)

    def close_files(self) -> None:
        if self._access_file is not None:
            self._access_file.close()
            self._access_file = None


def _addr(addr: Any) -> str | None:
    if isinstance(addr, tuple):
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(addr) if addr else None


class HttpServerHandle:
    """The contract's ``ServerHandle`` for one server running on the HTTP engine (the HTTP
    proxy here, the HTTP-to-Thrift gateway as a subclass)."""

    def __init__(self, rt: ServerRuntime) -> None:
        self.rt = rt
        self.stack = rt.stack
        self.pool = rt.pool
        self._pool_handed_over = False
        # built in place from a live handle: that handle (weakly: no chain of old handles is
        # kept alive) and the shared pool's settings before this build changed them
        self._built_from: tuple[Any, dict[str, Any]] | None = None

    def protocol_factory(self) -> HttpServerProtocol:
        rt = self.rt
        if rt.loop is None:
            rt.ensure_loop()  # rt.loop is the running loop from here
            self.on_loop(asyncio.get_running_loop())
        memtrim.note_open()
        return HttpServerProtocol(rt)

    def on_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start what needs the running loop (first connection, or build inside a loop)."""
        if self.pool._adopt:
            loop.create_task(self.pool.adopt_pending())

    def stats(self) -> dict[str, int]:
        out = self.rt.stats.as_dict()
        native = self.rt.native
        if native is not None:
            add_native_counters(out, native.counters())
        return out

    def begin_drain(self) -> None:
        rt = self.rt
        rt.draining = True
        for conn in list(rt.connections):
            conn.begin_drain()

    def retire(self) -> None:
        """An in-place reload replaced this stack. HTTP/1.1 connections finish on it as before;
        an h2 connection would stay on it for good (a busy gRPC channel never idles), so it
        drains: GOAWAY, its streams finish here, the client reconnects to the new stack."""
        for conn in list(self.rt.connections):
            retire = getattr(conn, "retire", None)
            if retire is not None:
                retire()

    def open_connections(self) -> int:
        return len(self.rt.connections)

    def idle_connections(self) -> list[tuple[float, Any]]:
        """(idle since, close) of each keep-alive connection waiting for its next request."""
        return [(conn.idle_since, conn.reclaim) for conn in self.rt.connections if conn.reclaimable]

    def export_state(self, fds: list[int]) -> dict:
        return {
            "version": HANDLE_STATE_VERSION,
            "stats": self.rt.stats.export(),
            "stack": self.stack.export_state(fds),
        }

    async def aclose(self) -> None:
        rt = self.rt
        rt.stop_sweep()
        await self.stack.aclose()
        if not self._pool_handed_over:
            await self.pool.aclose()
        rt.close_files()

    def discard(self) -> None:
        """A staged handle the worker will not commit (the in-place reload rolled back):
        give the live handle it was built from its pool back, with the settings it had, and
        stop this one's timers. ``aclose()`` follows (and leaves the pool alone)."""
        self.rt.stop_sweep()
        if self._built_from is not None:
            live_ref, settings = self._built_from
            self._built_from = None
            live = live_ref()
            if live is not None and live.pool is self.pool:
                for key, value in settings.items():
                    setattr(self.pool, key, value)
                live._pool_handed_over = False
        self._pool_handed_over = True  # the live handle's, or nobody's to close from here


POOL_SETTINGS = ("parser_kind", "connect_timeout", "read_timeout", "head_limits")


def inherited_stack(
    live: HttpServerHandle | None, snapshot: Snapshot | None, stats: Stats, log: Any
) -> tuple[Any, Any]:
    """What the new stack is made from: the live stack (in-place reload), or the exported
    stack and its fds (a snapshot from the previous generation, whose counters are absorbed)."""
    if live is not None:
        return live.stack, NO_FDS
    if snapshot is not None:
        data = snapshot.data if isinstance(snapshot.data, dict) else {}
        if data.get("version") == HANDLE_STATE_VERSION:
            stats.absorb(data.get("stats", {}))
            return data.get("stack"), snapshot
        log.warning(
            "state_version_mismatch",
            exported=data.get("version"),
            expected=HANDLE_STATE_VERSION,
            action="starting fresh",
        )
    return None, NO_FDS


def start_native(rt: ServerRuntime, stack: Any, pool: UpstreamPool, log: Any) -> None:
    """``engine = "native"``: the C engine serves what it accepts (native_engine.py). The
    pool is shared across an in-place reload: the newest build's engine holds its idle
    connections."""
    pool.native_off()
    if getattr(rt.settings, "engine", "python") != "native":
        return
    from monolake.worker.http import native_engine

    reason = native_engine.why_not(rt.settings)
    if reason is None and not isinstance(stack.entry, RouterService):
        reason = "the stack's entry is not the router"
    if reason is not None:
        log.warning("native_engine_off", reason=reason)
        return
    try:
        rt.native = native_engine.NativeEngine(stack.entry, pool, rt)
    except ValueError as exc:
        log.warning("native_engine_off", reason=str(exc))
        return
    pool.native = rt.native


NATIVE_SHARED = (
    "requests",
    "responses_2xx",
    "responses_3xx",
    "responses_4xx",
    "responses_5xx",
    "bytes_in",
    "bytes_out",
    "upstream_unsolicited",
)


def add_native_counters(out: dict[str, int], native: dict[str, int]) -> None:
    """The native engine's counters in the server's stats: what it served counts as the
    Python engine's would (requests, statuses, bytes); its own keys are prefixed."""
    for key in NATIVE_SHARED:
        out[key] = out.get(key, 0) + native.get(key, 0)
    for key in ("requests", "declined", "declined_late", "aborted"):
        out["native_" + key] = native.get(key, 0)


def start_if_running(handle: HttpServerHandle) -> None:
    """Built inside a running loop (a reload): start now rather than at the first connection."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    handle.rt.ensure_loop()
    handle.on_loop(loop)


def build(name: str, cfg: Any, env: Any, previous: object | None) -> HttpServerHandle:
    """Build an HTTP server; ``previous`` is a live handle, a ``Snapshot`` or None."""
    log = env.logger.bind(server=name) if env.logger is not None else structlog.get_logger()
    parser_kind = resolve_parser(cfg.http_parser)
    t = cfg.timeout
    live = previous if isinstance(previous, HttpServerHandle) else None
    snapshot = previous if isinstance(previous, Snapshot) else None
    # in place: the same counters go on (gauges stay right for old connections)
    stats = live.rt.stats if live is not None else Stats()
    if live is not None:
        # Monolake's model: the new version shares the live pool (old connections keep using
        # it until they finish, new ones get its idle connections)
        pool = live.pool
    else:
        pool = UpstreamPool(
            parser_kind=parser_kind,
            connect_timeout=t.upstream_connect_timeout_sec,
            read_timeout=t.upstream_read_timeout_sec,
            stats=stats,
            log=log,
            head_limits=HeadLimits.for_responses(cfg),
        )
    factory = push_config_layers(FactoryStack(RouterFactory(name, cfg, env.slot, pool, stats)), cfg.layers)
    prev_stack, fd_source = inherited_stack(live, snapshot, stats, log)
    stack = factory.make(prev_stack, fd_source)
    rt = ServerRuntime(name, cfg, env, stack, stats, pool)
    start_native(rt, stack, pool, log)
    handle = HttpServerHandle(rt)
    if live is not None:
        # only now that nothing can fail: the live pool takes this config's settings and is
        # this handle's from here (discard() gives it back if the reload rolls back)
        handle._built_from = (weakref.ref(live), {key: getattr(pool, key) for key in POOL_SETTINGS})
        pool.parser_kind = parser_kind
        pool.connect_timeout = t.upstream_connect_timeout_sec
        pool.read_timeout = t.upstream_read_timeout_sec
        pool.head_limits = HeadLimits.for_responses(cfg)
        live._pool_handed_over = True
    start_if_running(handle)
    log.info(
        "http_server_built",
        parser=parser_kind,
        routes=len(cfg.routes),
        layers=len(cfg.layers),
        tls=cfg.tls is not None,
        inherited=previous is not None,
    )
    return handle
