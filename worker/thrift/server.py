"""``proxy_type = "thrift"``: the ServerHandle and the downstream connection protocol.

A downstream connection deframes requests in ``data_received`` and forwards each at once:
several requests may be in flight on one connection, each reply is written as soon as it
arrives with the caller's own seqid restored. Failures that concern one request (no route,
upstream down, upstream timeout) are answered with a TApplicationException for that seqid;
only a broken byte stream (malformed or oversized frame) closes the connection.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
from typing import Any, cast

import structlog

from monolake.worker.net import proxy_protocol
from monolake.worker.net.tls import ServerTls, TlsError
from monolake.worker.service import FactoryStack, ServiceStack, push_config_layers
from monolake.worker.service.context import ConnectionContext, RequestContext
from monolake.worker.service.state import NO_FDS
from monolake.worker.sockopts import set_nodelay
from monolake.worker.state import Snapshot

from .errors import FrameError, UpstreamError
from .framing import AUTO, FRAMED, KINDS, Deframer, Frame, frame_message
from .message import APP_INTERNAL_ERROR, APP_UNKNOWN_METHOD, CALL, ONEWAY, app_exception
from .pool import Call
from .proxy import PROXY_KEY, RouteError, ThriftProxy, ThriftProxyFactory
from .stats import Counters
from .ttheader import TTHeader

log = structlog.get_logger()

STATE_VERSION = 1
# diagnostics: each server's stats written to this path + "." + its name (JSON) at each sweep, so tests and benchmarks
# read a standalone worker's counters, the native relay's included (it has no stats endpoint)
STATS_FILE_ENV = "MONOLAKE_THRIFT_STATS_FILE"
MAX_INFLIGHT = 1024  # per downstream connection; reading pauses beyond it
_conn_ids = itertools.count(1)


def build_stack(name: str, cfg: Any, counters: Counters, previous: Any, fds: Any) -> ServiceStack:
    """The server's service stack: custom layers (outermost first) around the proxy."""
    stack = push_config_layers(FactoryStack(ThriftProxyFactory(cfg, counters)), cfg.layers)
    return stack.make(previous, NO_FDS if fds is None else fds)


class ThriftServer:
    """One thrift server in one worker (the ServerHandle of docs/contracts.md)."""

    def __init__(self, name: str, cfg: Any, env: Any, previous: Any) -> None:
        self.name = name
        self.cfg = cfg
        self.env = env
        self.kind = KINDS[cfg.thrift_transport]
        self.max_frame = cfg.max_frame_size
        t = cfg.timeout
        self.keepalive_timeout = t.server_keepalive_timeout_sec
        self.message_timeout = t.server_message_timeout_sec
        # TLS termination and the PROXY protocol reuse the HTTP server's implementations
        self.tls = ServerTls(cfg.tls) if cfg.tls is not None else None
        self.proxy_protocol = bool(cfg.proxy_protocol)
        prev_stack: Any = None
        fds: Any = None
        self.counters: Counters
        self.stack: ServiceStack
        if isinstance(previous, ThriftServer):
            self.counters = previous.counters  # in-place: one monotonic series
            prev_stack = previous.stack
        else:
            self.counters = Counters()
            if isinstance(previous, Snapshot) and previous.data.get("version") == STATE_VERSION:
                self.counters.restore(previous.data.get("counters", {}))
                prev_stack, fds = previous.data.get("stack"), previous
        self.stack = build_stack(name, cfg, self.counters, prev_stack, fds)
        proxy = self.stack.services[PROXY_KEY]
        assert isinstance(proxy, ThriftProxy)
        self.proxy = proxy
        self.direct = self.stack.entry is proxy  # no custom layer: the callback fast path
        self.native: Any = start_native(self)  # engine = "native": the C relay (native.py)
        self.conns: set[ThriftConnection] = set()
        self.active = 0
        self.draining = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False
        try:
            self._bind(asyncio.get_running_loop())
        except RuntimeError:
            pass  # bound on the first connection

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.loop is None:
            self.loop = loop
            self.proxy.start(loop)
            interval = max(0.05, min(1.0, self.keepalive_timeout / 4, self.message_timeout / 4))
            self._interval = interval
            self._timer = loop.call_later(interval, self._sweep)

    # -- ServerHandle ----------------------------------------------------------------------

    def protocol_factory(self) -> asyncio.BaseProtocol:
        return ThriftConnection(self)

    def stats(self) -> dict[str, int]:
        out = self.counters.as_dict()
        out["open_connections"] = len(self.conns)
        out["active_requests"] = self.active
        if self.native is not None:
            from .native import add_counters

            add_counters(out, self.native.counters())
        return out

    def begin_drain(self) -> None:
        self.draining = True
        for conn in list(self.conns):
            conn.close_if_idle()

    def open_connections(self) -> int:
        return len(self.conns)

    def idle_connections(self) -> list[tuple[float, Any]]:
        """(idle since, close) of each client connection with nothing in flight (see
        Worker.reclaim_idle)."""
        return [
            (conn.last_active, conn.close_if_idle)
            for conn in self.conns
            if conn.transport is not None and conn.idle() and conn.last_active
        ]

    def export_state(self, fds: list[int]) -> dict:
        return {
            "version": STATE_VERSION,
            "counters": self.counters.export(),
            "stack": self.stack.export_state(fds),
        }

    async def aclose(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for conn in list(self.conns):
            conn.abort()
        await self.stack.aclose()

    # -- maintenance -----------------------------------------------------------------------

    def _sweep(self) -> None:
        """Close connections idle past the keep-alive timeout, or stuck mid-message; give a
        deadline due before the next sweep a timer of its own, so it fires within
        milliseconds, not up to a sweep late (as the HTTP server does, worker/http/server.py).
        Few get one: every byte moves a deadline on."""
        loop = self.loop
        if loop is None or self.closed:
            return
        now = loop.time()
        horizon = now + self._interval
        if os.environ.get(STATS_FILE_ENV):
            write_stats(self.name, self.stats())
        for conn in list(self.conns):
            conn.check_timeouts(now)
            deadline = conn.deadline()
            if now < deadline <= horizon:
                loop.call_at(deadline, self._on_time, conn, deadline)
        self._timer = loop.call_later(self._interval, self._sweep)

    def _on_time(self, conn: ThriftConnection, deadline: float) -> None:
        """A deadline's own timer (see _sweep). The loop may run it a clock tick early, so the
        deadline itself is the earliest time it is checked at; one that moved on since is not
        due, and the sweeps keep watching it."""
        if self.closed or self.loop is None:
            return
        try:
            conn.check_timeouts(max(self.loop.time(), deadline))
        except Exception:
            log.exception("thrift_timeout_check_failed", server=self.name)


class ThriftConnection(asyncio.Protocol):
    """One downstream client connection; the ``Sink`` of its requests' replies."""

    def __init__(self, server: ThriftServer) -> None:
        self.server = server
        self.counters = server.counters
        self.proxy = server.proxy
        self.deframer = Deframer(server.kind, server.max_frame)
        self.transport: asyncio.Transport | None = None
        self.inflight = 0
        self.last_active = 0.0
        self.partial_since = 0.0
        self.read_paused = False
        self.write_paused = False
        self.ctx: ConnectionContext | None = None
        self.peer: Any = None
        self.tls: Any = None  # TlsSession when the server terminates TLS
        self.prelude: bytearray | None = None  # PROXY protocol header being read
        self.write: Any = None  # transport.write, or the TLS session's
        self._native: Any = None  # the native relay's C reader (native.py), when it is on
        self.fast_reader: Any = None

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        srv = self.server
        if srv.loop is None:
            srv._bind(asyncio.get_running_loop())
        self.transport = t = cast(asyncio.Transport, transport)  # a stream transport
        self.write = t.write
        srv.conns.add(self)
        self.counters.connections_total += 1
        assert srv.loop is not None
        self.last_active = srv.loop.time()
        self.peer = transport.get_extra_info("peername")
        set_nodelay(transport)
        if srv.proxy_protocol:
            self.prelude = bytearray()
        elif srv.tls is not None:
            self._start_tls()
        elif srv.native is not None:
            self._native = srv.native.attach(self, transport)
        if srv.draining:
            transport.close()

    def _start_tls(self) -> None:
        assert self.transport is not None and self.server.tls is not None
        self.tls = self.server.tls.session(self.transport.write)
        self.write = self.tls.write

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.conns.discard(self)
        self.transport = None
        self._lose_native()

    def _lose_native(self) -> None:
        native = self._native
        if native is not None:
            self._native = None
            self.fast_reader = None
            native.lost()

    def pause_writing(self) -> None:
        self.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._update_reading()

    def data_received(self, data: bytes) -> None:
        native = self._native
        if native is not None and native.owned:
            native(data)  # the C relay reads this connection (a paused transport calls here)
            return
        try:
            self._received(data)
        except Exception:
            self.counters.errors += 1
            log.exception("thrift_connection_error", server=self.server.name, peer=_peer(self.peer))
            self.abort()
            return
        if native is not None and not self.deframer.buf and self.deframer.kind == FRAMED and self.transport:
            native.rearm()  # at a message boundary with nothing held: C may take the next read

    def _native_declined(self, data: bytes) -> None:
        """The C relay hands over the rest of a read, from the first message it does not take
        (mu_thrift.c decline): the Python engine goes on from there."""
        native = self._native
        if native is not None and native.framed and self.deframer.kind == AUTO:
            self.deframer.kind = FRAMED  # C already read this stream's first message
        self.data_received(data)

    def _received(self, data: bytes) -> None:
        counters = self.counters
        counters.bytes_in += len(data)
        loop = self.server.loop
        assert loop is not None
        now = loop.time()
        self.last_active = now
        if self.prelude is not None:
            data = self._read_prelude(data)
            if not data:
                return
        if self.tls is not None:
            try:
                data = self.tls.feed(data)
            except TlsError as exc:
                counters.errors += 1
                log.info("thrift_tls_error", server=self.server.name, peer=_peer(self.peer), error=str(exc))
                self.abort()
                return
            if not data:
                if self.tls.peer_closed and self.transport is not None:
                    self.transport.close()
                return
        try:
            frames = self.deframer.feed(data)
        except FrameError as exc:
            counters.errors += 1
            log.warning("thrift_bad_frame", server=self.server.name, peer=_peer(self.peer), error=str(exc))
            self.abort()
            return
        if self.deframer.buf:
            if not self.partial_since:
                self.partial_since = now
        elif self.partial_since:
            self.partial_since = 0.0
        for frame in frames:
            self._request(frame, now)
            if self.transport is None:
                return

    def _read_prelude(self, data: bytes) -> bytes:
        """Collect the PROXY protocol header; return the bytes after it once it is complete."""
        buf = self.prelude
        assert buf is not None
        buf += data
        try:
            parsed = proxy_protocol.parse(bytes(buf))
        except proxy_protocol.ProxyProtocolError as exc:
            self.counters.errors += 1
            log.info(
                "proxy_protocol_rejected", server=self.server.name, peer=_peer(self.peer), error=str(exc)
            )
            self.abort()
            return b""
        if parsed is None:
            return b""
        consumed, src, _dst = parsed
        if src is not None:
            self.peer = src
        rest = bytes(buf[consumed:])
        self.prelude = None
        if self.server.tls is not None:
            self._start_tls()
        return rest

    # -- requests --------------------------------------------------------------------------

    def _request(self, frame: Frame, now: float) -> None:
        head = frame.head
        self.counters.requests += 1
        if head.mtype == CALL:
            call = Call(self, head.seqid, head, frame.tt)
            self.inflight += 1
            self.server.active += 1
            if self.inflight >= MAX_INFLIGHT:
                self._update_reading()
            if self.server.direct:
                self.proxy.forward(frame, call, now)
            else:
                self._through_stack(frame, call)
        elif head.mtype == ONEWAY:
            if self.server.direct:
                self.proxy.forward(frame, None, now)
            else:
                self._through_stack(frame, None)
        else:
            self.counters.errors += 1
            log.warning(
                "thrift_bad_message_type",
                server=self.server.name,
                peer=_peer(self.peer),
                method=head.name,
                type=head.mtype,
            )
            self.abort()

    def _through_stack(self, frame: Frame, call: Call | None) -> None:
        """Custom layers are configured: one task per request through the service stack."""
        if self.ctx is None:
            sock = self.transport.get_extra_info("sockname") if self.transport else None
            self.ctx = ConnectionContext(
                server=self.server.name,
                worker_slot=self.server.env.slot,
                connection_id=next(_conn_ids),
                peer=self.peer,
                local=sock,
                socket_peer=self.peer,
                scheme="thrift",
            )
        loop = self.server.loop
        assert loop is not None
        loop.create_task(self._run_stack(frame, call, RequestContext(self.ctx)))

    async def _run_stack(self, frame: Frame, call: Call | None, ctx: RequestContext) -> None:
        try:
            reply = await self.server.stack.call(frame, ctx)
        except UpstreamError as exc:
            if call is not None:
                self.on_error(call, exc)
            return
        except Exception as exc:
            log.exception("thrift_layer_error", server=self.server.name)
            if call is not None:
                self.on_error(call, UpstreamError(f"internal error: {exc!r}"))
            return
        if call is not None:
            if isinstance(reply, Frame) and reply is not frame:
                self.on_reply(call, reply)
            else:
                self.on_error(call, UpstreamError("a layer returned no reply frame"))

    # -- Sink ------------------------------------------------------------------------------

    def on_reply(self, call: Call, frame: Frame) -> None:
        self._done()
        tt = call.tt
        data = frame.encode(call.seqid, tt.seq_id if tt is not None else None)
        self.counters.responses_2xx += 1
        self._send(data)

    def on_error(self, call: Call, error: UpstreamError) -> None:
        self._done()
        counters = self.counters
        counters.responses_5xx += 1
        counters.errors += 1
        head = call.frame_head
        kind = APP_UNKNOWN_METHOD if isinstance(error, RouteError) else APP_INTERNAL_ERROR
        payload = app_exception(head.proto, head.name, call.seqid, kind, f"monolake: {error}")
        tt = call.tt
        if tt is not None:
            reply_tt = TTHeader(flags=tt.flags, protocol_id=tt.protocol_id)
            self._send(frame_message(self.deframer.kind, payload, reply_tt, tt.seq_id))
        else:
            self._send(frame_message(self.deframer.kind, payload))

    def _done(self) -> None:
        self.inflight -= 1
        self.server.active -= 1
        if self.read_paused and self.inflight < MAX_INFLIGHT // 2:
            self._update_reading()

    def _send(self, data: bytes | bytearray) -> None:
        transport = self.transport
        if transport is None:
            return  # the client went away; the reply has nobody to go to
        self.counters.bytes_out += len(data)
        try:
            self.write(data)
        except TlsError as exc:
            log.info("thrift_tls_error", server=self.server.name, peer=_peer(self.peer), error=str(exc))
            self.abort()
            return
        if self.server.draining and self.idle():
            transport.close()

    # -- connection management -------------------------------------------------------------

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None:
            return
        want_pause = self.write_paused or self.inflight >= MAX_INFLIGHT
        if want_pause and not self.read_paused:
            self.read_paused = True
            transport.pause_reading()
        elif not want_pause and self.read_paused:
            self.read_paused = False
            transport.resume_reading()

    def idle(self) -> bool:
        """Nothing in flight (the C relay's calls included) and no partial message."""
        native = self._native
        return not self.inflight and not self.deframer.partial and not (native is not None and native.busy)

    def close_if_idle(self) -> None:
        if self.transport is None:
            return
        if self.idle():
            self.transport.close()
        elif self._native is not None:
            self._native.close_after()  # C calls this again when its last call is answered

    def deadline(self) -> float:
        """When ``check_timeouts`` acts if nothing arrives meanwhile (inf: nothing is due):
        mid-message, the message timeout from its first byte; idle, the keep-alive timeout."""
        if self.transport is None:
            return math.inf
        srv = self.server
        if self.partial_since:
            return self.partial_since + srv.message_timeout
        native = self._native
        if native is None:
            return self.last_active + srv.keepalive_timeout if not self.inflight else math.inf
        if self.inflight or native.busy:
            return math.inf
        return max(self.last_active, native.last) + srv.keepalive_timeout

    def check_timeouts(self, now: float) -> None:
        srv = self.server
        if self.transport is None or now < self.deadline():
            return
        if self.partial_since:
            self.counters.errors += 1
            log.info(
                "thrift_message_timeout",
                server=srv.name,
                peer=_peer(self.peer),
                buffered=self.deframer.buffered,
                timeout=srv.message_timeout,
            )
            self.abort()
        else:
            log.debug("thrift_keepalive_timeout", server=srv.name, peer=_peer(self.peer))
            self.transport.close()

    def abort(self) -> None:
        transport = self.transport
        if transport is not None:
            self.transport = None
            self.server.conns.discard(self)
            self._lose_native()
            transport.abort()


def write_stats(server: str, stats: dict[str, int]) -> None:
    """``stats`` to $MONOLAKE_THRIFT_STATS_FILE.<server>, atomically (see STATS_FILE_ENV)."""
    path = os.environ[STATS_FILE_ENV] + "." + server
    with open(path + ".tmp", "w") as f:
        json.dump(stats, f)
    os.replace(path + ".tmp", path)


def start_native(srv: ThriftServer) -> Any:
    """``engine = "native"``: the C relay takes what it can (native.py), or None with the
    reason logged (the Python engine serves everything)."""
    if getattr(srv.cfg, "engine", "python") != "native":
        return None
    from . import native

    reason = native.why_not(srv)
    relay = None
    if reason is None:
        relay = native.NativeRelay(srv)
        if not relay.usable:
            reason = "no route has one static upstream"
            for pool in relay.pools:
                pool.native = None
            relay = None
    if reason is not None:
        log.warning("thrift_native_engine_off", server=srv.name, reason=reason)
    return relay


def _peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer) if peer else "unix"


def build(name: str, cfg: Any, env: Any, previous: object | None) -> ThriftServer:
    """Builder for ``proxy_type = "thrift"`` (monolake.worker.servers.BUILDERS)."""
    return ThriftServer(name, cfg, env, previous)
