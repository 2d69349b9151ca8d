"""Pooled upstream connections: one pool per (upstream, transport) per worker.

A request takes an idle connection when there is one, opens a new one while the upstream has
fewer than ``max_conns``, and otherwise is pipelined onto the least busy connection. Every
request written upstream gets a proxy-assigned seqid unique on its connection, so responses
are matched to their callers by seqid whether the upstream answers in order or not.

The data path is callback-based (``asyncio.Protocol``): no Future or task per request.
Deadlines are checked by one periodic sweep per server instead of a timer per request; a
connection whose earliest deadline falls before the next sweep gets a timer for it, so a read
timeout fires within milliseconds of its deadline.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, cast

import structlog

from monolake.worker.sockopts import set_nodelay
from monolake.worker.upstream import ejection
from monolake.worker.upstream.address import Address, adopt
from monolake.worker.upstream.endpoint import Health
from monolake.worker.upstream.fds import FdSource
from monolake.worker.upstream.idle import IdleCounters, IdleList, import_fd, peer_gone

from .errors import FrameError, UpstreamError
from .framing import KIND_NAMES, Deframer, Frame
from .stats import Counters

log = structlog.get_logger()

MAX_SEQID = 0x7FFFFFFF
DEFAULT_MAX_CONNS = 64  # per upstream per worker; beyond it requests are pipelined


class Sink(Protocol):
    """Who is waiting for a reply (a downstream connection, or the gateway)."""

    def on_reply(self, call: Call, frame: Frame) -> None: ...

    def on_error(self, call: Call, error: UpstreamError) -> None: ...


class Call:
    """One request in flight; the sink decides what to do with the reply or the error."""

    __slots__ = ("data", "deadline", "frame_head", "seqid", "sink", "tt")

    def __init__(self, sink: Sink, seqid: int, frame_head: Any, tt: Any, data: Any = None) -> None:
        self.sink = sink
        self.seqid = seqid  # the caller's own seqid, restored on the reply
        self.frame_head = frame_head
        self.tt = tt
        self.deadline = 0.0
        self.data = data


class Endpoint(Address):
    """A thrift upstream's address (the kit's ``Address``): ``kind`` "socket" (``host:port``)
    or "unix" (``path``), and its links to discovery."""

    __slots__ = ("discovered", "group", "kind")

    def __init__(self, kind: str, host: str = "", port: int = 0, path: str = "") -> None:
        super().__init__(host, port, path if kind == "unix" else "")
        self.kind = kind
        self.discovered: Any = None  # a placeholder for a name DNS has not answered yet
        self.group: Any = None  # one address of a discovered name (worker/thrift/discovered.py)

    @classmethod
    def from_config(cls, cfg: Any) -> Endpoint:
        """From a ``monolake.conf`` EndpointConfig (type ``socket`` or ``unix``)."""
        if cfg.type == "unix":
            return cls("unix", path=cfg.path or cfg.value)
        return cls("socket", host=cfg.host, port=cfg.port)


@dataclass(slots=True)
class PoolSettings:
    """Per-pool knobs, from the server's ``timeout`` table and the route's pool keys."""

    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_idle: int = 32
    idle_timeout: float = 60.0
    eject_after: int = 3
    eject_duration: float = 10.0
    max_conns: int = DEFAULT_MAX_CONNS
    max_frame: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        self.max_conns = max(1, self.max_conns)


class UpstreamConnection(asyncio.Protocol):
    """One connection to an upstream; may carry several requests (distinct proxy seqids)."""

    def __init__(self, pool: EndpointPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, Call] = {}
        self.inflight = 0  # requests written (or queued) and not answered, oneway excluded
        self.queued: list[bytes | bytearray] = []
        self.deframer = Deframer(pool.kind, pool.settings.max_frame, names=False)
        self.next_seqid = 0
        self.idle_since = 0.0
        self.closed = False
        # the native relay (worker/thrift/native.py): its reader while C holds this connection
        self.native: Any = None
        self.fast_reader: Any = None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream connection, never datagrams; not an isinstance check: uvloop's transports
        # implement asyncio.Transport without subclassing it
        self.transport = cast("asyncio.Transport", transport)
        transport = self.transport
        set_nodelay(transport)
        if self.queued:
            if len(self.queued) > 1:
                transport.writelines(self.queued)
            else:
                transport.write(self.queued[0])
            self.queued = []
        if self.pending:  # queued while connecting: the read deadline starts now
            deadline = self.pool.now() + self.pool.settings.read_timeout
            for call in self.pending.values():
                if call.deadline > deadline:
                    call.deadline = deadline
        self.pool.on_connected(self)

    def data_received(self, data: bytes) -> None:
        try:
            self._received(data)
        except Exception as exc:
            log.exception("thrift_upstream_connection_error", upstream=self.pool.endpoint.label)
            self.fail(UpstreamError(f"internal error on the upstream connection: {exc!r}"))

    def _received(self, data: bytes) -> None:
        """Replies, matched by seqid. The connection goes back to the idle list only after the
        whole read is handled and only at a message boundary: bytes with nothing in flight, or
        a partial message after the last awaited reply, are unsolicited, and whoever got the
        connection next would read them as its reply (as for HTTP, worker/http/client.py)."""
        label = self.pool.endpoint.label
        if not self.pending:
            self._unsolicited(f"{len(data)} bytes with no request in flight")
            return
        try:
            frames = self.deframer.feed(data)
        except FrameError as exc:
            self.fail(UpstreamError(f"bad response from upstream {label}: {exc}"))
            return
        pending = self.pending
        for frame in frames:
            call = pending.pop(frame.head.seqid, None)
            if call is None:
                self.fail(UpstreamError(f"upstream {label} answered unknown seqid {frame.head.seqid}"))
                return
            self.inflight -= 1
            call.sink.on_reply(call, frame)
        if not self.inflight and not self.closed:
            if self.deframer.partial:
                self._unsolicited(f"{self.deframer.buffered} bytes after the last reply")
                return
            self.pool.on_idle(self)

    def _unsolicited(self, why: str) -> None:
        self.pool.counters.upstream_unsolicited += 1
        log.warning("upstream_unsolicited_bytes", upstream=self.pool.endpoint.label, detail=why)
        self.fail(UpstreamError(f"upstream {self.pool.endpoint.label} sent {why}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self.pool.on_closed(self)
        if self.pending:
            why = f"upstream {self.pool.endpoint.label} closed the connection"
            self._fail_pending(UpstreamError(why + (f": {exc}" if exc else "")))

    # -- used by the pool -------------------------------------------------------------------

    def send(self, frame: Frame, call: Call | None, now: float) -> None:
        """Write ``frame`` with a fresh seqid; ``call`` is None for oneway requests."""
        seqid = self.next_seqid
        pending = self.pending
        while True:
            seqid = seqid + 1 if seqid < MAX_SEQID else 1
            if seqid not in pending:
                break
        self.next_seqid = seqid
        data = frame.encode(seqid)
        if call is not None:
            settings = self.pool.settings
            call.deadline = (
                now + settings.read_timeout + (settings.connect_timeout if self.transport is None else 0.0)
            )
            pending[seqid] = call
            self.inflight += 1
        if self.transport is not None:
            self.transport.write(data)
        else:
            self.queued.append(data)

    def fail(self, error: UpstreamError) -> None:
        """Give up on this connection: close it and fail every request waiting on it."""
        if not self.closed:
            self.closed = True
            self.pool.on_closed(self)
            if self.transport is not None:
                self.transport.abort()
        self._fail_pending(error)

    def _fail_pending(self, error: UpstreamError) -> None:
        pending, self.pending = self.pending, {}
        self.inflight = 0
        for call in pending.values():
            try:
                call.sink.on_error(call, error)
            except Exception:
                log.exception("thrift_error_delivery_failed")

    def expired(self, now: float) -> bool:
        return any(call.deadline <= now for call in self.pending.values())

    def next_deadline(self) -> float:
        """The earliest read deadline of the requests waiting here, the native relay's call
        included (inf: none)."""
        u = self.native
        first = u.deadline if u is not None and u.busy else math.inf
        return min((call.deadline for call in self.pending.values()), default=first)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class EndpointPool(Health):
    """The connections of one worker to one upstream in one transport framing; its health
    (failures, ejection, draining: DNS dropped this address) is the kit's ``Health``."""

    def __init__(
        self,
        endpoint: Endpoint,
        kind: int,
        settings: PoolSettings,
        counters: Counters,
        loop: asyncio.AbstractEventLoop | None = None,
        idle_counters: IdleCounters | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.kind = kind
        self.settings = settings
        self.counters = counters
        self.loop = loop
        self.conns: list[UpstreamConnection] = []
        # open, nothing in flight; LIFO (warm first)
        self.idle: IdleList[UpstreamConnection] = IdleList(idle_counters or IdleCounters())
        self.adopting: list[UpstreamConnection] = []  # handed over by the previous generation
        self.clock = 0.0  # the last sweep's time: coarse, for idle bookkeeping
        # the native relay (worker/thrift/native.py) when it holds this pool's idle connections
        self.native: Any = None
        self.native_ep = -1
        Health.__init__(self)  # draining: connections close as they go idle

    @property
    def key(self) -> tuple[str, int]:
        return (self.endpoint.label, self.kind)

    def now(self) -> float:
        return (self.loop or asyncio.get_running_loop()).time()

    def load(self) -> int:
        return sum(map(_inflight, self.conns))

    def send(self, frame: Frame, call: Call | None, now: float) -> None:
        """Write one request on the best connection; failures reach ``call.sink.on_error``."""
        conn = self._checkout()
        conn.send(frame, call, now)
        if call is None and not conn.inflight and conn.transport is not None:
            self.on_idle(conn)  # oneway: the connection is free again at once

    def _checkout(self) -> UpstreamConnection:
        conn = self.idle.take()
        if conn is None and self.native is not None:
            conn = self.native.unpark(self)
        if conn is not None:
            return conn
        while self.adopting:  # requests queue on it until its transport is up
            conn = self.adopting.pop()
            if not conn.closed and not conn.inflight:
                return conn
        if len(self.conns) < self.settings.max_conns:
            return self._connect()
        return min(self.conns, key=_inflight)

    def _connect(self) -> UpstreamConnection:
        conn = UpstreamConnection(self)
        self.conns.append(conn)
        loop = self.loop or asyncio.get_running_loop()
        loop.create_task(self._open(conn))
        return conn

    async def _open(self, conn: UpstreamConnection) -> None:
        loop = self.loop or asyncio.get_running_loop()
        ep = self.endpoint
        coro: Coroutine[Any, Any, Any]
        try:
            if ep.discovered is not None:
                coro = self._open_discovered(conn)
            else:
                coro = ep.connect(loop, lambda: conn)
            await asyncio.wait_for(coro, self.settings.connect_timeout)
            self.idle.counters.opened += 1
        except (TimeoutError, OSError) as exc:
            timed_out = isinstance(exc, asyncio.TimeoutError)
            why = "timed out" if timed_out else (exc.strerror or str(exc))
            alt = ep.group.sibling_pool(ep, self.kind, loop.time()) if ep.group is not None else None
            if alt is not None and not conn.closed:
                # as a connect to a name tries each of its addresses: this one is out, and the
                # connection (with the calls queued on it: nothing was sent) tries another
                self._eject_now(why)
                self.on_closed(conn)
                conn.pool = alt
                alt.conns.append(conn)
                loop.create_task(alt._open(conn))
                return
            self._connect_failed()
            log.warning("thrift_upstream_connect_failed", upstream=ep.label, error=why)
            conn.fail(UpstreamError(f"cannot connect to upstream {ep.label}: {why}", timeout=timed_out))
        except asyncio.CancelledError:
            conn.fail(UpstreamError(f"connect to upstream {ep.label} cancelled"))
            raise

    async def _open_discovered(
        self, conn: UpstreamConnection
    ) -> tuple[asyncio.Transport, UpstreamConnection]:
        """A placeholder's pool (DNS has not answered when the call came): wait for the
        answer, then connect to one of its addresses."""
        loop = self.loop or asyncio.get_running_loop()
        link = self.endpoint.discovered
        target = await link.resolve(self.settings.connect_timeout)
        if target is None:
            raise OSError(link.why_none())
        return await Address(target.address, target.port).connect(loop, lambda: conn)

    def _eject_now(self, why: str) -> None:
        """One address of a name refused a connect while the name has others: out at once
        (unless ejection is off: eject_after_failures = 0)."""
        self.counters.upstream_connect_failures += 1
        now = (self.loop or asyncio.get_running_loop()).time()
        if ejection.eject_now(self, now, self.settings.eject_duration, self.settings.eject_after > 0):
            self.counters.upstream_ejections += 1
            log.warning(
                "thrift_upstream_ejected",
                upstream=self.endpoint.label,
                error=why,
                seconds=self.settings.eject_duration,
            )

    def drain(self) -> None:
        """DNS no longer names this address: close idle connections now, the others when
        their last call is answered (on_idle)."""
        self.draining = True
        for conn in self.idle.close_where():
            self.on_closed(conn)

    def _connect_failed(self) -> None:
        self.counters.upstream_connect_failures += 1
        now = (self.loop or asyncio.get_running_loop()).time()
        if ejection.record_failure(self, now, self.settings.eject_after, self.settings.eject_duration):
            self.counters.upstream_ejections += 1
            log.warning(
                "thrift_upstream_ejected",
                upstream=self.endpoint.label,
                failures=self.failures,
                seconds=self.settings.eject_duration,
            )

    # -- callbacks from connections ---------------------------------------------------------

    def on_connected(self, conn: UpstreamConnection) -> None:
        try:
            self.adopting.remove(conn)
        except ValueError:
            pass
        ejection.record_success(self, readmit=True)
        if not conn.inflight:
            self.on_idle(conn)

    def on_idle(self, conn: UpstreamConnection) -> None:
        if conn.closed:
            return
        if self.native is not None and not self.draining and self.native.park(self, conn):
            return
        if self.draining or not self.idle.park(conn, self.clock or self.now(), self.settings.max_idle):
            conn.close()

    def on_closed(self, conn: UpstreamConnection) -> None:
        if conn.native is not None:
            self.native.forget(conn)  # a call C had on it fails as this pool's
        self.idle.discard(conn)
        for group in (self.conns, self.adopting):
            try:
                group.remove(conn)
            except ValueError:
                pass

    # -- maintenance ------------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Expire requests past their deadline and idle connections past ``idle_timeout``."""
        self.clock = now
        if self.native is not None:
            self.native.sweep(self, now)
        for conn in list(self.conns):
            self.check_deadline(conn, now)
        for conn in self.idle.expire(now, self.settings.idle_timeout):
            self.on_closed(conn)

    def check_deadline(self, conn: UpstreamConnection, now: float) -> None:
        """Fail ``conn`` (and every request on it) if a request on it is past its deadline."""
        if conn.native is not None:
            self.native.check(conn, now)  # a call C sent: the pool's own from here
        if conn.pending and not conn.closed and conn.expired(now):
            log.warning(
                "thrift_upstream_timeout",
                upstream=self.endpoint.label,
                in_flight=len(conn.pending),
                timeout=self.settings.read_timeout,
            )
            conn.fail(
                UpstreamError(
                    f"upstream {self.endpoint.label} did not answer within {self.settings.read_timeout:g}s",
                    timeout=True,
                )
            )

    def export_fds(self, fds: list[int]) -> list[int]:
        """Hand idle connections to the next generation: dup their fds, forget them here."""
        if self.native is not None:
            self.native.give_back(self)
        start = len(fds)
        moved = self.idle.export(fds, _at_message_boundary)
        for conn in moved:
            self.on_closed(conn)
        return list(range(start, start + len(moved)))

    def adopt_fd(self, fd: int) -> None:
        """Take over one idle connection exported by the previous generation."""
        sock = import_fd(fd)
        if sock is None:
            return
        if sock.family not in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6) or peer_gone(sock):
            sock.close()
            return
        try:
            loop = self.loop or asyncio.get_running_loop()
        except RuntimeError:  # built outside the worker's loop: nothing can adopt it
            sock.close()
            return
        conn = UpstreamConnection(self)
        self.conns.append(conn)
        self.adopting.append(conn)
        loop.create_task(self._adopt(conn, sock))

    async def _adopt(self, conn: UpstreamConnection, sock: socket.socket) -> None:
        loop = self.loop or asyncio.get_running_loop()
        try:
            await adopt(loop, lambda: conn, sock)
        except OSError as exc:
            sock.close()
            conn.fail(UpstreamError(f"adopting a pooled connection failed: {exc}"))
            return
        self.idle.counters.adopted += 1

    def adopt_live(self, other: EndpointPool) -> None:
        """In-place reload: move the previous pool's idle connections and health here."""
        self.failures, self.ejected_until = other.failures, other.ejected_until
        if other.native is not None:
            other.native.give_back(other)
        for conn in list(other.idle):
            if conn.closed or len(self.idle) >= self.settings.max_idle:
                continue
            other.on_closed(conn)
            conn.pool = self
            self.conns.append(conn)
            self.idle.append(conn)

    def close(self) -> None:
        if self.native is not None:
            self.native.give_back(self)
        for conn in list(self.conns):
            conn.fail(UpstreamError(f"upstream pool for {self.endpoint.label} closed"))
        self.conns.clear()
        self.idle.clear()

    def describe(self) -> str:
        return f"{self.endpoint.label}/{KIND_NAMES.get(self.kind, self.kind)}"


def _inflight(conn: UpstreamConnection) -> int:
    """Calls on ``conn``, the native relay's included."""
    u = conn.native
    return conn.inflight + 1 if u is not None and u.busy else conn.inflight


def _at_message_boundary(conn: UpstreamConnection) -> bool:
    """No partial reply buffered: the next generation may read this connection from scratch."""
    return not conn.deframer.partial


class Upstreams:
    """Every pool of one server, shared by its routes, and the sweep that keeps them honest."""

    state_version = 1

    def __init__(self, counters: Counters, sweep_interval: float = 1.0) -> None:
        self.counters = counters
        self.idle_counters = IdleCounters()  # of every pool of this server
        self.pools: dict[tuple[str, int], EndpointPool] = {}
        self.retired: list[EndpointPool] = []  # drained by DNS, connections still finishing
        self.sweep_interval = sweep_interval
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False

    def pool(self, endpoint: Endpoint, kind: int, settings: PoolSettings) -> EndpointPool:
        key = (endpoint.label, kind)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = EndpointPool(
                endpoint, kind, settings, self.counters, self._loop, self.idle_counters
            )
            self.sweep_interval = min(self.sweep_interval, _interval_for(settings))
        return pool

    def forget(self, pool: EndpointPool) -> None:
        """A drained pool leaves the table (an address that comes back gets a new one); it is
        still swept (deadlines of its calls in flight) until its last connection is gone."""
        if self.pools.get(pool.key) is pool:
            del self.pools[pool.key]
            self.retired.append(pool)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Begin the periodic sweep (idempotent; needs the worker's loop)."""
        if self._loop is None and not self.closed:
            self._loop = loop
            for pool in self.pools.values():
                pool.loop = loop
            self._timer = loop.call_later(self.sweep_interval, self._sweep)

    def _sweep(self) -> None:
        loop = self._loop
        if loop is None or self.closed:
            return
        now = loop.time()
        horizon = now + self.sweep_interval
        self.retired = [p for p in self.retired if p.conns]
        for pool in [*self.pools.values(), *self.retired]:
            try:
                pool.sweep(now)
                for conn in pool.conns:
                    deadline = conn.next_deadline()
                    if now < deadline <= horizon:  # due before the next sweep: its own timer
                        loop.call_at(deadline, self._on_time, pool, conn, deadline)
            except Exception:
                log.exception("thrift_pool_sweep_failed", upstream=pool.describe())
        self._timer = loop.call_later(self.sweep_interval, self._sweep)

    def _on_time(self, pool: EndpointPool, conn: UpstreamConnection, deadline: float) -> None:
        """A deadline's own timer (see _sweep), checked no earlier than the deadline itself (the
        loop may run a timer a clock tick early). A request answered meanwhile is not due; a
        later one on the same connection stays with the sweeps."""
        loop = self._loop
        if loop is None or self.closed:
            return
        try:
            pool.check_deadline(conn, max(loop.time(), deadline))
        except Exception:
            log.exception("thrift_timeout_check_failed", upstream=pool.describe())

    def export_state(self, fds: list[int]) -> dict:
        pools = []
        for pool in self.pools.values():
            idx = pool.export_fds(fds)
            if idx:
                pools.append({"upstream": pool.endpoint.label, "kind": pool.kind, "fds": idx})
        return {"pools": pools}

    def import_state(
        self, data: dict, fds: FdSource, resolve: Callable[[str, int], EndpointPool | None]
    ) -> int:
        """Adopt exported idle connections into the pools ``resolve(upstream, kind)`` names
        (None: that upstream left the config, its connections are closed); returns how many."""
        adopted = 0
        for item in data.get("pools", []):
            pool = resolve(item.get("upstream"), item.get("kind"))
            for index in item.get("fds", []):
                fd = fds.take_fd(index)
                if fd < 0:
                    continue
                if pool is None:
                    os.close(fd)
                    continue
                pool.adopt_fd(fd)
                adopted += 1
        return adopted

    def adopt_live(self, other: Upstreams, resolve: Callable[[str, int], EndpointPool | None]) -> None:
        """In-place reload: idle connections of the live previous version move here."""
        for (label, kind), old in list(other.pools.items()):
            pool = resolve(label, kind)
            if pool is not None:
                pool.adopt_live(old)

    def close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for pool in [*self.pools.values(), *self.retired]:
            pool.close()


def _interval_for(settings: PoolSettings) -> float:
    shortest = min(settings.read_timeout, settings.idle_timeout, settings.connect_timeout)
    return max(0.01, min(1.0, shortest / 8))


__all__ = ["Call", "Endpoint", "EndpointPool", "PoolSettings", "Sink", "UpstreamConnection", "Upstreams"]
