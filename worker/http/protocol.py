"""The downstream side: one ``HttpServerProtocol`` per accepted connection, the glue
between a transport and the two pieces that do the work:

- ``RequestReader`` (connection.py), the sans-I/O core: bytes in, request heads, bodies,
  errors and upgrades out;
- ``Exchange`` (exchange.py), one per request: the service call, the response write, the
  accounting.

What stays here is what needs the transport: the prelude (PROXY protocol, TLS), the queue of
pipelined exchanges (answered strictly in order; reading pauses when too many wait), flow
control both ways, keep-alive and closing (lingering, draining, reclaiming), timeouts and
the tunnel after a 101. Callback-shaped throughout: the only coroutine is a service call
that has to wait, one per request at most.
"""

from __future__ import annotations

import asyncio
from time import monotonic as _now
from typing import TYPE_CHECKING, Any

from monolake.worker import memtrim
from monolake.worker.http.body import BodyError, BodyStream
from monolake.worker.http.connection import BODY, HEAD, IDLE, PHASE_NAMES, PIPELINE_MAX, RequestReader
from monolake.worker.http.exchange import Exchange
from monolake.worker.http.message import Request
from monolake.worker.net import proxy_protocol
from monolake.worker.net.tls import TlsError
from monolake.worker.service.context import ConnectionContext
from monolake.worker.sockopts import set_nodelay

if TYPE_CHECKING:
    from monolake.worker.http.server import ServerRuntime
    from monolake.worker.net.tls import ServerTls

DRAIN_IDLE_GRACE = 1.0  # a draining server closes keep-alive connections idle this long
LINGER_SECONDS = 2.0  # how long to drain a client's unread body before closing

_PAUSE_PIPELINE = 1 << 20  # reasons to stop reading (bodies count in the low bits)
_PAUSE_TUNNEL = 1 << 21
_NO_BYTES: list[bytes] = []  # shared, always empty (never appended to)


class HttpServerProtocol(asyncio.Protocol):
    """HTTP/1.1 server connection: the transport side of a RequestReader and its Exchanges."""

    # Slots, and a list rather than a deque for the pipeline (at most PIPELINE_MAX long): an
    # idle keep-alive connection is mostly this object, so its size is the worker's memory per
    # connection (issue 16 §4: a __dict__ and an empty deque were 1.4 KiB of the 3.8).
    __slots__ = (
        "_rt",
        "_serve",
        "_loop",
        "_transport",
        "_write",
        "_lends_ok",
        "_reader",
        "_ctx",
        "_queue",
        "_pauses",
        "_read_paused",
        "_write_paused",
        "_out_body",
        "_closing",
        "_prelude",
        "_tls",
        "_tunnel",
        "_tunnel_pending",
        "_lingering",
        "_h2",
        "_native",
        "fast_reader",
        "__weakref__",
    )

    # set by connection_made(), before anything reads it (unset until then: no None to test)
    _ctx: ConnectionContext

    def __init__(self, rt: ServerRuntime) -> None:
        self._rt = rt
        self._serve = rt.serve  # how an exchange calls the stack (exchange.entry_point)
        self._loop = rt.loop
        self._transport: Any = None
        self._write: Any = None
        self._lends_ok = False  # the transport's writelines copies what it does not send
        self._reader = RequestReader(rt, self, self)  # bytes -> requests (connection.py)
        self._queue: list[Exchange] = []
        self._pauses = 0
        self._read_paused = False
        self._write_paused = False
        self._out_body: BodyStream | None = None  # the response body being written
        self._closing = False
        self._prelude: bytearray | None = None
        self._tls: Any = None
        self._tunnel: Any = None
        self._tunnel_pending: list[bytes] = _NO_BYTES  # a list once a tunnel has some
        self._lingering = False
        self._h2: Any = None  # the h2 side once the client spoke HTTP/2 (worker/h2/downstream.py)
        self._native: Any = None  # the C reader of the native engine (worker/http/native_engine.py)

    # -- connection lifecycle --------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        rt = self._rt
        self._transport = transport
        self._write = transport.write
        self._lends_ok = getattr(transport, "writelines_copies", False)
        tune_transport(transport)
        rt.connections.add(self)
        st = rt.stats
        st.connections_total += 1
        st.open_connections += 1
        # addresses asked for lazily (ConnectionContext): most connections never need them
        self._ctx = ConnectionContext(rt.name, rt.slot, st.connections_total, transport=transport)
        self._reader.deadline = _now() + rt.header_timeout
        if rt.settings.proxy_protocol:
            self._prelude = bytearray()
        elif rt.tls is not None:
            self._start_tls(rt.tls)
        else:
            self._start_http()
            if rt.native is not None:
                self._native = rt.native.attach(self, transport)
                if self._native is not None:
                    self.fast_reader = self._native
                    transport._update_fast_reader()

    def _start_tls(self, tls: ServerTls) -> None:
        self._tls = tls.session(self._transport.write)
        self._write = self._tls_write
        self._ctx.scheme = "https"

    def _tls_write(self, data: bytes) -> None:
        try:
            self._tls.write(data)
        except TlsError:
            self._abort()

    def _start_http(self) -> None:
        self._reader.start()

    def connection_lost(self, exc: BaseException | None) -> None:
        rt = self._rt
        if self._transport is None:
            return
        if self._queue or self._out_body is not None:
            self._ctx.remember_addresses()  # for the logs of what is cut short
        self._transport = None
        rt.connections.discard(self)
        if self._native is not None:
            native, self._native = self._native, None
            self.fast_reader = None
            native.lost()
        rt.stats.open_connections -= 1
        if self._h2 is not None:
            h2, self._h2 = self._h2, None
            h2.connection_lost()
        err = BodyError("client connection lost")
        self._reader.stop(str(err))
        out = self._out_body
        if out is not None:
            self._out_body = None
            out.abandon()
        for ex in self._queue:
            ex.lost(err)
        self._queue.clear()
        tunnel = self._tunnel
        if tunnel is not None:
            self._tunnel = None
            tunnel.client_closed()
        # the reader and its parser point back at us: cut the cycle so the connection's
        # objects go by reference counting now, not at the next full GC (issue 16 §4)
        self._reader.release()
        memtrim.note_close(self._loop)

    def eof_received(self) -> bool | None:
        if self._h2 is not None:
            return self._h2.eof_received()
        if self._tunnel is not None:
            self._tunnel.client_eof()
            return True
        self._reader.peer_closed()
        self._closing = True
        if self._native is not None and self._native.close_after():
            return True  # C answers its request in flight, then closes
        # Nothing in flight: close; otherwise answer what is in flight, then close.
        return bool(self._queue)
        # (keep-alive is off from here: see exchange_done)

    # -- reading ---------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        native = self._native
        if native is not None and native.owned:
            # bytes the transport delivered around the C reader (held while paused) while C
            # owns the connection: they are C's, in order
            native(data)
            return
        n = len(data)
        self._rt.stats.bytes_in += n
        if self._tls is not None:
            if self._lingering:
                return  # after our close_notify: read and dropped, never decrypted
            try:
                data = self._tls.feed(data)
            except TlsError as exc:
                self._rt.log.debug("tls_error", error=str(exc), peer=self._ctx.peer)
                self._abort()
                return
            if self._ctx.tls is None and self._tls.handshake_done:
                self._ctx.tls = self._tls.info()
                if self._ctx.tls.alpn == "h2" and self._rt.h2 is not None:
                    self._h2 = self._rt.h2.connect(self)
                elif not self._reader.started:
                    self._start_http()
            if not data:
                if self._tls.peer_closed and not self.eof_received():
                    self._close()
                return
        if self._h2 is not None:
            self._h2.data_received(data)
            return
        if self._tunnel is not None:
            self._tunnel.from_client(data)
            return
        if self._lingering:
            return
        prelude = self._prelude
        if prelude is not None:
            self._read_prelude(prelude, data)
            return
        if (
            self._reader.fresh
            and self._rt.h2 is not None
            and self._tls is None
            and self._rt.h2.sniff(self, data)
        ):
            return  # the h2 preface (prior knowledge): the h2 side has the bytes
        self._reader.feed(data)

    def _read_prelude(self, buf: bytearray, data: bytes) -> None:
        """``buf``: the prelude read so far (``self._prelude``), extended in place."""
        buf += data
        try:
            parsed = proxy_protocol.parse(bytes(buf))
        except proxy_protocol.ProxyProtocolError as exc:
            self._rt.log.info("proxy_protocol_rejected", error=str(exc), peer=self._ctx.socket_peer)
            self._rt.stats.errors += 1
            self._abort()
            return
        if parsed is None:
            return
        consumed, src, dst = parsed
        if src is not None:
            self._ctx.peer = src
            self._ctx.local = dst
        rest = bytes(buf[consumed:])
        self._prelude = None
        tls = self._rt.tls
        if tls is not None:
            self._start_tls(tls)
        else:
            self._start_http()
        if rest:
            self._rt.stats.bytes_in -= len(rest)
            self.data_received(rest)

    # RequestReader events (connection.py)
    def on_request(self, req: Request) -> None:
        """Queue the request's exchange; the first in line starts now, the others when the
        responses before them are out (pipelining; reading pauses when too many wait)."""
        ex = Exchange(self, req)
        queue = self._queue
        queue.append(ex)
        if len(queue) == 1:
            ex.start()
        elif len(queue) >= PIPELINE_MAX and not self._pauses & _PAUSE_PIPELINE:
            self._add_pause(_PAUSE_PIPELINE)

    def on_error(self, status: int, reason: str, req: Request | None, internal: BaseException | None) -> None:
        """A malformed request: answer ``status`` in turn, then close; parse nothing more."""
        if internal is not None:
            self._rt.log.error("http_callback_error", peer=self._ctx.peer, exc_info=internal)
        self._rt.stats.errors += 1
        self._rt.log.info("bad_request", status=status, reason=reason, peer=self._ctx.peer)
        ex = self._exchange_of(req)
        if ex is not None and not ex.head_sent and ex is not self._queue[0]:
            ex.error = status
        elif ex is not None and not ex.head_sent:
            ex.fail(status)  # the service is already running for it: answer the error instead
        else:
            err = Exchange(self, None, error=status)
            self._queue.append(err)
            if len(self._queue) == 1:
                err.start()
        self._add_pause(_PAUSE_PIPELINE)

    def on_upgrade(self, rest: bytes) -> None:
        """The parser stopped after an Upgrade request: the rest is for the tunnel."""
        if rest:
            if self._tunnel_pending is _NO_BYTES:
                self._tunnel_pending = []
            self._tunnel_pending.append(rest)
        # further bytes before the 101 wait in _tunnel_pending (bounded by pausing)
        self._add_pause(_PAUSE_TUNNEL)

    def on_continue(self, req: Request) -> None:
        ex = self._queue[0] if self._queue else None
        if self._transport is not None and ex is not None and not ex.head_sent:
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _exchange_of(self, req: Request | None) -> Exchange | None:
        if req is not None:
            for ex in self._queue:
                if ex.request is req:
                    return ex
        return None

    # -- request queue ---------------------------------------------------------------------
    def become_tunnel(self, tunnel: Any) -> None:
        """A 101 went out: from now on the connection is a byte pipe (tunnel.py)."""
        self._queue.clear()
        self._tunnel = tunnel
        self._reader.tunnel()
        pending, self._tunnel_pending = self._tunnel_pending, _NO_BYTES
        tunnel.attach_client(self, pending)

    def exchange_done(self, ex: Exchange) -> None:
        """``ex``'s response is out: start the next pipelined request, or wait for one
        (keep-alive), or close."""
        if not self._queue or self._queue[0] is not ex:
            return
        del self._queue[0]
        ex.account()
        if self._transport is None:
            return
        req = ex.request
        body = req.body if req is not None else None
        incomplete = body is not None and not body.done
        if body is not None and incomplete:
            # answered before the whole request body arrived (an early upstream answer, a
            # refusal): the rest is never forwarded, and the connection cannot be reused
            body.fail(BodyError("response sent before the request body was complete"))
        if ex.close or self._closing or incomplete or ex.error:
            self._close(linger=incomplete or bool(ex.error))
            return
        if self._queue:
            self._queue[0].start()
            if len(self._queue) < PIPELINE_MAX and self._pauses & _PAUSE_PIPELINE and not self._reader.dead:
                self._remove_pause(_PAUSE_PIPELINE)
            return
        if self._pauses & _PAUSE_PIPELINE and not self._reader.dead:
            self._remove_pause(_PAUSE_PIPELINE)
        if self._rt.draining:
            self._close(linger=True)  # a request already on its way gets FIN, not RST
            return
        reader = self._reader
        reader.answered(self._rt.keepalive_timeout)
        if self._native is not None and reader.phase == IDLE and getattr(reader.parser, "leftover", 1) == 0:
            self._native.rearm()  # at a request boundary with nothing held: C may take the next

    # -- flow control ----------------------------------------------------------------------
    def pause_writing(self) -> None:
        self._write_paused = True
        if self._native is not None:
            self._native.write_paused(True)  # a body C relays: its upstream stops reading
        if self._h2 is not None:
            self._h2.pause_writing()
        if self._out_body is not None:
            self._out_body.pause()
        if self._tunnel is not None:
            self._tunnel.client_write_paused(True)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._native is not None:
            self._native.write_paused(False)
        if self._h2 is not None:
            self._h2.resume_writing()
        if self._out_body is not None:
            self._out_body.resume()
        if self._tunnel is not None:
            self._tunnel.client_write_paused(False)

    # Producer (of request bodies): a body over its high-water mark or a blocked sink
    def body_pause(self) -> None:
        self._add_pause(1)

    def body_resume(self) -> None:
        self._remove_pause(1)

    def body_abandon(self) -> None:
        """The upstream stopped taking the request body: we will close after the response."""
        self._closing = True

    def _add_pause(self, reason: int) -> None:
        self._pauses += reason
        if not self._read_paused and self._transport is not None:
            self._read_paused = True
            try:
                self._transport.pause_reading()
            except (RuntimeError, AttributeError):
                pass

    def _remove_pause(self, reason: int) -> None:
        self._pauses -= reason
        if self._pauses <= 0:
            self._pauses = 0
            if self._read_paused and self._transport is not None:
                self._read_paused = False
                try:
                    self._transport.resume_reading()
                except (RuntimeError, AttributeError):
                    pass

    def tunnel_pause_reading(self, paused: bool) -> None:
        if paused:
            if not self._pauses & _PAUSE_TUNNEL:
                self._add_pause(_PAUSE_TUNNEL)
        elif self._pauses & _PAUSE_TUNNEL:
            self._remove_pause(_PAUSE_TUNNEL)

    def tunnel_write(self, data: bytes) -> None:
        self._rt.stats.bytes_out += len(data)
        if self._transport is not None:
            self._write(data)

    def tunnel_write_eof(self) -> None:
        t = self._transport
        if t is None:
            return
        if self._tls is None and t.can_write_eof():
            t.write_eof()
        else:
            self._close()

    def tunnel_close(self) -> None:
        self._close()

    # -- timeouts --------------------------------------------------------------------------
    def check_timeout(self, now: float) -> None:
        if self._transport is None:
            return
        reader = self._reader
        phase = reader.due(now, self._read_paused)
        if phase < 0:
            return
        if self._native is not None and self._native.busy:
            self._native.timeout()  # the upstream read timeout of a request C sent
            return
        if phase == IDLE or self._prelude is not None:
            self._close()
            return
        self._rt.log.info("client_timeout", phase=PHASE_NAMES[phase], peer=self._ctx.peer)
        if phase == HEAD:
            if not self._queue:
                reader.dead = True
                ex = Exchange(self, None, error=408)
                self._queue.append(ex)
                ex.start()
            else:
                self._closing = True
            return
        if phase == BODY:
            req = reader.stop("request body timeout")
            current = self._queue[0] if self._queue else None
            if req is not None and current is not None and current.request is req and not current.head_sent:
                current.fail(408)
                return
            self._close()

    # -- closing ---------------------------------------------------------------------------
    def begin_drain(self) -> None:
        """Keep-alive off: close now if idle between requests, else after the response in
        flight. A connection that has not sent its first byte yet is served once (it was
        accepted to be served); an idle one gets a lingering close, so a request racing
        with the close sees FIN rather than a reset."""
        self._closing = True
        if self._native is not None:
            self._native.close_after()
        if self._reader.fresh:
            return
        if self._is_idle():
            # a busy client sends its next request within the grace and gets its answer with
            # Connection: close; only a connection that stays idle is closed, so the race of
            # a request with our FIN is limited to clients idle for the whole grace period
            self._loop.call_later(DRAIN_IDLE_GRACE, self._close_if_idle)

    def _is_idle(self) -> bool:
        return (
            not self._queue
            and self._tunnel is None
            and not (self._native is not None and self._native.busy)
            and (self._reader.receiving is None or self._reader.phase == IDLE)
        )

    def _close_if_idle(self) -> None:
        if self._transport is not None and not self._lingering and self._is_idle():
            self._close(linger=True)

    @property
    def idle(self) -> bool:
        return (
            not self._queue
            and self._reader.phase == IDLE
            and not (self._native is not None and self._native.busy)
        )

    @property
    def reclaimable(self) -> bool:
        """Idle between requests after serving at least one: what a worker out of fds closes
        first (a connection that has sent nothing yet was accepted to be served)."""
        return (
            self.idle
            and not self._reader.fresh
            and self._transport is not None
            and not self._lingering
            and self._tunnel is None
        )

    @property
    def deadline(self) -> float:
        """When the current phase's timeout is due (0.0: none); see ServerRuntime._sweep."""
        return self._reader.deadline

    @property
    def idle_since(self) -> float:
        return self._reader.deadline - self._rt.keepalive_timeout

    def reclaim(self) -> None:
        self._close()

    def _close(self, linger: bool = False) -> None:
        t = self._transport
        if t is None:
            return
        if linger and (self._tls is None or self._h2 is not None) and t.can_write_eof():
            # lingering close: stop sending, read and drop what the client still sends, so
            # that closing with unread data does not reset the connection before the client
            # has read our response (h2 over TLS too: close_notify, then FIN; a flood's
            # GOAWAY must not be lost to an RST; docs/http2.md)
            self._lingering = True
            self._reader.dead = True
            try:
                if self._tls is not None:
                    self._tls.close_notify()
                t.write_eof()
            except (OSError, RuntimeError):
                t.abort()
                return
            while self._pauses:
                self._remove_pause(self._pauses)
            self._reader.deadline = 0.0
            self._loop.call_later(LINGER_SECONDS, self._abort)
            return
        if self._tls is not None:
            self._tls.close_notify()
        t.close()

    def _abort(self) -> None:
        t = self._transport
        if t is not None:
            t.abort()


WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024


def tune_transport(transport: Any) -> None:
    """TCP_NODELAY (small writes leave at once), and a write buffer that holds a few typical
    bodies, so that backpressure engages for real streams, not for every 64 KiB response
    (each pause/resume costs a round of calls)."""
    try:
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
    except (AttributeError, NotImplementedError, ValueError):
        pass
    if not getattr(transport, "nodelay_set", False):
        set_nodelay(transport)
