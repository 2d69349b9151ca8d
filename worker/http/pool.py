"""The per-worker upstream keep-alive pool.

Idle connections wait per pool key (LIFO: the most recently used is the most likely to still
be open), at most ``max_idle_per_upstream`` of them, for at most ``idle_timeout_sec``. One
periodic sweep (driven by the server) expires idle connections and enforces upstream read
timeouts, instead of a timer per request.

On a generation reload, idle plain-TCP connections are exported as dup'ed fds and the next
worker wraps them back into transports, so it starts warm.
"""

from __future__ import annotations

import asyncio
import socket
from functools import partial
from typing import Any

import structlog

from monolake.worker.discovery.watch import settle_all
from monolake.worker.http.client import NoAddress, UpstreamConnection, UpstreamError, UpstreamTimeout
from monolake.worker.http.parser import HeadLimits
from monolake.worker.http.stats import Stats
from monolake.worker.http.upstream import DERIVED, DrainEpoch, Upstream
from monolake.worker.service.state import FdSource
from monolake.worker.upstream.address import adopt
from monolake.worker.upstream.idle import IdleCounters, IdleList, import_fd

POOL_STATE_VERSION = 1


class ConnectHold:
    """One request bound for ``up`` counted in ``up.active`` (what least_conn compares) from
    the moment it is committed to ``up`` until its connection is handed over; the exchange
    that ``send`` starts counts it from there. ``release`` is idempotent, so every way out
    (success, refusal, timeout, cancellation, a task that never ran) may call it."""

    __slots__ = ("up",)

    def __init__(self, up: Upstream) -> None:
        self.up: Upstream | None = up
        up.active += 1

    def release(self, *_: Any) -> None:  # also a task done callback
        up = self.up
        if up is not None:
            self.up = None
            up.active -= 1


class UpstreamPool:
    def __init__(
        self,
        *,
        parser_kind: str,
        connect_timeout: float,
        read_timeout: float,
        stats: Stats,
        log: Any = None,
        head_limits: HeadLimits | None = None,
    ) -> None:
        self.parser_kind = parser_kind
        self.head_limits = head_limits or HeadLimits(status=502)  # of upstream response heads
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.stats = stats
        self.log = log or structlog.get_logger()
        self.counters = IdleCounters()
        # the router's upstreams by key: a reload's idle connections find theirs (proxy.py)
        self.upstreams_by_key: dict[tuple, Upstream] = {}
        self.idle: dict[tuple, IdleList[UpstreamConnection]] = {}
        self.busy: set[UpstreamConnection] = set()
        self._adopt: list[tuple[tuple, socket.socket]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self._drain_epoch = DrainEpoch.value
        self.closed = False
        # the native engine (worker/http/native_engine.py) holds idle connections of its
        # endpoints; a late decline pins the connection its request went out on
        self.native: Any = None
        self.pinned: UpstreamConnection | None = None

    # -- acquire / release -----------------------------------------------------------------
    def take_idle(self, up: Upstream) -> UpstreamConnection | None:
        """An idle connection to ``up`` (most recently used first), or None: no waiting."""
        pinned = self.pinned
        if pinned is not None and pinned.key == up.key:
            self.pinned = None
            pinned.upstream = up
            self.busy.add(pinned)
            return pinned
        if self._adopt:
            return None  # adopted sockets are wrapped first (acquire)
        dq = self.idle.get(up.key)
        conn = dq.take(self._checked_out) if dq else None
        if conn is None and self.native is not None:
            conn = self.native.unpark(up.key)
        if conn is not None:
            conn.upstream = up
            self.busy.add(conn)
        return conn

    def _checked_out(self, conn: UpstreamConnection) -> bool:
        """Idle and checked out at once: handing it out would give one connection to two
        exchanges (their responses would cross); the stale idle entry is dropped."""
        if conn in self.busy:
            self.log.error("pool_double_checkout", upstream=conn.upstream.label)
            return True
        return False

    async def acquire(self, up: Upstream, hold: ConnectHold | None = None) -> UpstreamConnection:
        """An idle or new connection to ``up``. The request counts in ``up.active`` while it
        waits (``hold``, or one taken here before the first await), so least_conn sees
        connects in flight; the hold ends when this returns or raises, and the caller's
        ``send`` (with no await in between) counts the exchange."""
        if hold is None:
            hold = ConnectHold(up)
        try:
            if self.loop is None:
                self.loop = asyncio.get_running_loop()
            if self._adopt:
                await self.adopt_pending()
            if up.discovered is not None:
                up = await self._resolved(up)
            conn = self.take_idle(up)
            if conn is not None:
                return conn
            try:
                return await self._connect(up)
            except UpstreamError as exc:
                alt = up.group.fallback(up) if up.group is not None else None
                if alt is None:
                    raise
                # as a connect to a name tries each of its addresses: this one is ejected,
                # the request (nothing sent yet) goes on to another
                up.eject_now(self.stats, str(exc))
                conn = self.take_idle(alt)
                return conn if conn is not None else await self._connect(alt)
        finally:
            hold.release()

    async def _resolved(self, placeholder: Upstream) -> Upstream:
        """A request picked a discovered upstream before DNS first answered: wait for the
        answer (within the connect timeout) and take one of its addresses."""
        link = placeholder.discovered
        assert link is not None
        up = await link.resolve(self.connect_timeout)
        if up is None:
            self.stats.upstream_connect_failures += 1
            raise NoAddress(f"connect to {placeholder.label} failed: {link.why_none()}")
        return up

    async def _connect(self, up: Upstream) -> UpstreamConnection:
        loop = self.loop or asyncio.get_running_loop()
        addr = up.connect_to()
        try:
            coro = addr.connect(
                loop, lambda: UpstreamConnection(self, up), ssl=up.ssl, server_hostname=up.sni
            )
            _transport, conn = await asyncio.wait_for(coro, self.connect_timeout)
        except TimeoutError:
            self.stats.upstream_connect_failures += 1
            raise UpstreamTimeout(f"connect to {up.label} timed out", retryable=True) from None
        except (OSError, ValueError) as exc:
            self.stats.upstream_connect_failures += 1
            raise UpstreamError(f"connect to {up.label} failed: {exc}", retryable=True) from None
        self.counters.opened += 1
        self.busy.add(conn)
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        """Return a checked-out connection (each checkout is released exactly once)."""
        if conn not in self.busy:
            # released twice (or never checked out): it may already sit in the idle deque or
            # serve another exchange; closing it is the only safe answer
            self.log.error("pool_double_release", upstream=conn.upstream.label)
            self.forget(conn)
            conn.close()
            return
        self.busy.discard(conn)
        up = conn.upstream
        if self.closed or conn.closed or conn.poisoned or up.draining:
            conn.close()  # draining: DNS no longer names this address
            return
        if self.native is not None and conn.upstream.max_idle > 0 and self.native.park(conn):
            return
        dq = self.idle.get(conn.key)
        if dq is None:
            dq = self.idle[conn.key] = IdleList(self.counters)
        # max_idle bounds both engines' idle lists together (C's may hold some of this key's)
        room = up.max_idle - (self.native.idle_for(conn.key) if self.native is not None else 0)
        if not dq.park(conn, self.loop.time() if self.loop else 0.0, room):
            conn.close()

    def forget(self, conn: UpstreamConnection) -> None:
        """A connection closed: drop it from wherever it is."""
        self.busy.discard(conn)
        if self.native is not None:
            self.native.forget(conn)
        dq = self.idle.get(conn.key)
        if dq:
            dq.discard(conn)

    def idle_count(self) -> int:
        native = self.native.idle_count() if self.native is not None else 0
        return native + sum(len(dq) for dq in self.idle.values())

    # -- periodic sweep --------------------------------------------------------------------
    def sweep(self, now: float) -> None:
        for dq in list(self.idle.values()):
            dq.expire(now, _idle_timeout)
        if self.native is not None:
            self.native.sweep(now)
        if self._drain_epoch != DrainEpoch.value:
            self._drain_epoch = DrainEpoch.value
            for dq in list(self.idle.values()):
                dq.close_where(_draining)  # its address left the DNS answer
        for conn in list(self.busy):
            conn.check_timeout(now)

    def native_off(self) -> None:
        """The native engine lets go: its idle connections come back to the Python lists."""
        native, self.native = self.native, None
        if native is not None:
            for conn in native.give_back():
                self.busy.add(conn)
                self.release(conn)

    async def aclose(self) -> None:
        self.native_off()
        self.closed = True
        for dq in self.idle.values():
            dq.close_where()
        for _key, sock in self._adopt:
            sock.close()
        self._adopt.clear()

    # -- state migration -------------------------------------------------------------------
    def export_idle(self, fds: list[int]) -> list[dict]:
        """Hand idle plain connections over (dup'ed fds); they leave this pool."""
        self.native_off()
        out: list[dict] = []
        for key, dq in self.idle.items():
            start = len(fds)
            moved = dq.export(fds, _exportable)
            out += [{"key": key, "fd": start + i} for i in range(len(moved))]
        return out

    def import_idle(self, items: list[dict], fds: FdSource) -> int:
        """Claim exported connections; they are wrapped into transports on the loop."""
        n = 0
        for item in items:
            sock = import_fd(fds.take_fd(int(item.get("fd", -1))))
            if sock is None:
                continue
            self._adopt.append((tuple(item["key"]), sock))
            n += 1
        return n

    async def adopt_pending(self, upstreams: dict[tuple, Upstream] | None = None) -> None:
        """Wrap adopted sockets into transports (needs the running loop)."""
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        pending, self._adopt = self._adopt, []
        lookup = upstreams if upstreams is not None else self.upstreams_by_key
        if any(key not in lookup for key, _sock in pending):
            # connections to discovered addresses: their upstreams exist once DNS has answered
            # (this worker has only just asked); wait for the first answers, within bounds
            await settle_all(self.connect_timeout)
        for key, sock in pending:
            up = lookup.get(key)
            if up is None:
                up = DERIVED.get(key)
                if up is not None and up.draining:
                    up = None
            if up is None or self.closed:
                sock.close()
                continue
            try:
                _t, conn = await adopt(self.loop, partial(UpstreamConnection, self, up), sock)
            except (OSError, ValueError) as exc:
                self.log.info("pool_adopt_failed", upstream=up.label, error=str(exc))
                sock.close()
                continue
            self.counters.adopted += 1
            self.busy.add(conn)
            self.release(conn)


def _idle_timeout(conn: UpstreamConnection) -> float:
    return conn.upstream.idle_timeout


def _draining(conn: UpstreamConnection) -> bool:
    return conn.upstream.draining


def _exportable(conn: UpstreamConnection) -> bool:
    return conn.upstream.exportable
