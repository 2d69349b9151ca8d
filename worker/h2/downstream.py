"""Downstream HTTP/2: one ``H2Connection`` per client connection that spoke h2 (prior knowledge
on a plain listener, ALPN ``h2`` on TLS), and one ``Exchange`` per stream.

Why this shape: the HTTP/1.1 ``HttpServerProtocol`` keeps the transport (PROXY protocol, TLS,
the sniff of the first bytes) and hands every byte after the handover to this object; each
stream gets an ``H2Stream`` that looks to ``Exchange`` like the connection it was written for
(``_rt``, ``_ctx``, ``_serve``, ``_queue``, ``exchange_done`` ...), so routing, the service
stack, layers, X-Forwarded-*, limits and the access log are the HTTP/1.1 code, unchanged.
``H2Exchange`` only replaces how a response is written: HEADERS/DATA instead of a status line.
"""

from __future__ import annotations

from time import monotonic as _now
from typing import TYPE_CHECKING, Any

from monolake.worker.h2 import grpc
from monolake.worker.h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamClosed,
    StreamEnded,
    StreamReset,
    StreamWritable,
    TrailersReceived,
)
from monolake.worker.h2.session import H2ServerSession
from monolake.worker.h2.settings import H2Settings
from monolake.worker.h2.translate import CONNECTION_SPECIFIC, announces_trailers
from monolake.worker.http.body import BodyError, BodyStream
from monolake.worker.http.exchange import Exchange, discard_response
from monolake.worker.http.message import Request, Response, text_response

if TYPE_CHECKING:
    from monolake.worker.http.protocol import HttpServerProtocol

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SEND_HIGH_WATER = 256 * 1024  # a stream's queued response bytes above this pause its producer
FAILED_ABORT_SECONDS = 1.0  # a failed session lingers at most this long (see _finish), then RST
DRAIN_PING_SECONDS = 1.0  # the final GOAWAY goes out this long after the notice at the latest
CANCEL, INTERNAL_ERROR = 0x8, 0x2
# connection-specific fields never cross into HTTP/2; content-length is re-derived from the
# body the stream actually sends
_HOP = CONNECTION_SPECIFIC | {b"trailer", b"content-length"}


def sniff(buf: bytes) -> bool | None:
    """True: the client sent the h2 preface; False: it is HTTP/1.x; None: too few bytes yet."""
    n = min(len(buf), len(PREFACE))
    if buf[:n] != PREFACE[:n]:
        return False
    return True if n == len(PREFACE) else None


class H2Listener:
    """A server's h2 side (``ServerRuntime.h2``): the settings every connection advertises,
    and the two ways in: the preface sniff (plain) and ALPN ``h2`` (TLS)."""

    __slots__ = ("idle_timeout", "send_timeout", "settings")

    def __init__(self, cfg: Any) -> None:
        self.settings = H2Settings(
            max_concurrent_streams=cfg.max_concurrent_streams,
            initial_window_size=cfg.initial_window_size,
            max_header_list_size=cfg.max_header_list_size,
            max_frame_size=cfg.max_frame_size,
        )
        self.idle_timeout = cfg.idle_timeout_sec
        self.send_timeout = cfg.send_timeout_sec

    def connect(self, proto: HttpServerProtocol) -> H2Connection:
        return H2Connection(proto, self.settings, self.idle_timeout, self.send_timeout)

    def sniff(self, proto: HttpServerProtocol, data: bytes) -> bool:
        """The first bytes of a plain connection: True when they are (or may still become)
        the h2 preface, and are taken; False: HTTP/1.x, the caller parses them."""
        seen = sniff(data)
        if seen is False:
            return False
        if seen is None:
            proto._h2 = _Sniffer(self, proto, data)
            return True
        conn = proto._h2 = self.connect(proto)
        conn.data_received(data)
        return True


class _Sniffer:
    """A first read shorter than the preface that matches it so far: wait for the rest."""

    __slots__ = ("buf", "listener", "proto")

    def __init__(self, listener: H2Listener, proto: HttpServerProtocol, data: bytes) -> None:
        self.listener = listener
        self.proto = proto
        self.buf = data

    def data_received(self, data: bytes) -> None:
        proto = self.proto
        buf = self.buf + data
        proto._h2 = None
        if not self.listener.sniff(proto, buf):
            proto._reader.feed(buf)  # HTTP/1.x after all ("P" of a PUT, "PRI" of nonsense)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self) -> None:
        self.proto._h2 = None

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


class H2Exchange(Exchange):
    """An ``Exchange`` whose response goes out as HEADERS and DATA on its stream."""

    __slots__ = ()

    # a whole body may be lent for the respond call only: send_response copies it (or the view
    # is copied when kept by reference), streamed chunks are copied by send_data
    lends = True

    def send(self, resp: Response) -> None:
        st: H2Stream = self.conn  # type: ignore[assignment]
        if not st.open or st.ex is not self:
            discard_response(resp)
            return
        rt = st._rt
        req = self.request
        if resp.tunnel is not None:  # a 101 cannot be relayed onto a stream
            resp.tunnel.close()
            resp = text_response(502, "upstream switched protocols")
        if st.grpc and resp.status != 200 and not grpc.is_grpc(resp.headers):
            self._send_grpc_error(resp)
            return
        self.status = resp.status
        self.head_sent = True
        st.cancel_deadline()
        head: list[tuple[bytes | str, bytes | str]] = [(b":status", b"%d" % resp.status)]
        length: bytes | None = None
        body = resp.body
        head_only = req is not None and req.method == "HEAD"
        no_body = resp.status < 200 or resp.status in (204, 304)
        s = st.conn.session
        lines = resp.head_block
        if lines is not None and not isinstance(body, BodyStream) and not head_only:
            # a relayed upstream head: its lines go to the C glue as they are (hop-by-hop
            # fields and Content-Length already gone, names lower-cased: mu_http.c)
            n = len(body) if body else 0
            if not no_body:
                head.append((b"content-length", b"%d" % n))
            s.send_response(st.id, head, body if n and not no_body else b"", lines)
            self.bytes_out += n
            rt.stats.bytes_out += n
            st.done(self)
            return
        for k, v in resp.headers:  # one pass: drop what HTTP/2 forbids, note Content-Length
            if k not in _HOP:
                head.append((k, v))
            elif k == b"content-length":
                length = v
        if isinstance(body, BodyStream):
            if body.length is not None and not no_body:
                head.append((b"content-length", b"%d" % body.length))
            elif head_only and length is not None:
                head.append((b"content-length", length))
            if head_only or no_body:
                s.send_headers(st.id, head, end_stream=True)
                body.abandon() if not body.done else body.discard()
                st.done(self)
                return
            s.send_headers(st.id, head)
            st.out_body = body
            st.conn.flush_soon()
            body.pipe(self)
            return
        data = body if body else b""  # bytes, or a view lent for this call (send_response copies)
        if head_only and length is not None:
            head.append((b"content-length", length))
        elif not no_body and (data or length is not None):
            head.append((b"content-length", b"%d" % len(data)))
        if head_only or no_body or not data:
            s.send_headers(st.id, head, end_stream=True)
        else:
            s.send_response(st.id, head, data)  # head and body in one call: the C glue frames it
            self.bytes_out += len(data)
            rt.stats.bytes_out += len(data)
        st.done(self)

    def _send_grpc_error(self, resp: Response) -> None:
        """The proxy (or a non-gRPC upstream) refused a gRPC call: a trailers-only response
        with the status a gRPC client acts on, the refusal's text as grpc-message."""
        st: H2Stream = self.conn  # type: ignore[assignment]
        raw = resp.body
        text = bytes(raw).decode("utf-8", "replace").strip() if isinstance(raw, (bytes, memoryview)) else ""
        discard_response(resp)
        code = grpc.status_for_http(resp.status)
        self.status = 200
        self.head_sent = True
        st.cancel_deadline()
        st.conn.session.send_headers(
            st.id, grpc.trailers_only(code, text or f"HTTP {resp.status}"), end_stream=True
        )
        st.done(self)

    def expire(self) -> None:
        """``grpc-timeout`` ran out: DEADLINE_EXCEEDED now if nothing was answered yet (what
        was under way upstream is cancelled), else the stream is cancelled."""
        st: H2Stream = self.conn  # type: ignore[assignment]
        if self.head_sent:
            st.conn.reset(st, CANCEL)
            return
        if self.task is not None:
            self.task.cancel()  # an h2 upstream stream gets RST_STREAM(CANCEL) from forward()
        elif self.upstream is not None:
            self.upstream.abort()
        if st.ex is self and not self.head_sent:
            self.send(text_response(504, "deadline exceeded (grpc-timeout)"))

    # BodySink: a streamed response body
    def write(self, data: bytes) -> None:
        st: H2Stream = self.conn  # type: ignore[assignment]
        if not st.open:
            return
        n = len(data)
        self.bytes_out += n
        st._rt.stats.bytes_out += n
        queued = st.conn.session.send_data(st.id, data)
        if queued > SEND_HIGH_WATER and st.out_body is not None:
            st.out_body.pause()  # resumed on StreamWritable: a slow reader stalls the upstream
        st.conn.flush_soon()

    def end(self) -> None:
        st: H2Stream = self.conn  # type: ignore[assignment]
        body, st.out_body = st.out_body, None
        if st.open:
            trailers = getattr(body, "trailers", None)
            if trailers:  # gRPC's status, or an HTTP/1.1 upstream's chunked trailers
                st.conn.session.send_trailers(
                    st.id, [(k, v) for k, v in trailers if k[:1] != b":" and k not in _HOP]
                )
            else:
                st.conn.session.end_stream(st.id)
        st.done(self)

    def abort(self, exc: BaseException) -> None:
        st: H2Stream = self.conn  # type: ignore[assignment]
        st.out_body = None
        st._rt.stats.errors += 1
        st._rt.log.info("response_body_aborted", error=str(exc), peer=st._ctx.peer, stream=st.id)
        if st.ex is self:
            self.account()
            st.ex = None
        # an upstream's RST_STREAM(CANCEL) reaches the client as CANCEL (gRPC: CANCELLED)
        code = getattr(exc, "error_code", None) or getattr(exc.__cause__, "error_code", None)
        st.conn.reset(st, code if code == CANCEL else INTERNAL_ERROR)


class H2Stream:
    """One stream, shaped like the connection an ``Exchange`` expects; the request body's
    producer (its pause holds back WINDOW_UPDATEs: inbound backpressure)."""

    __slots__ = (
        "_queue",
        "body",
        "body_deadline",
        "conn",
        "deadline_handle",
        "discarding",
        "ex",
        "grpc",
        "held",
        "id",
        "last_buffered",
        "open",
        "out_body",
        "progress_at",
        "unacked",
    )

    _closing = False
    _lends_ok = False
    _tls = None

    def __init__(self, conn: H2Connection, stream_id: int) -> None:
        self.conn = conn
        self.id = stream_id
        self.ex: H2Exchange | None = None
        self.body: BodyStream | None = None
        self.out_body: BodyStream | None = None
        self.open = True
        self.held = False
        self.unacked = 0
        self.discarding = False
        self.body_deadline = 0.0
        self.progress_at = _now()
        self.last_buffered = 0
        self._queue: list[Any] = []
        self.grpc = False
        self.deadline_handle: Any = None

    def cancel_deadline(self) -> None:
        h = self.deadline_handle
        if h is not None:
            self.deadline_handle = None
            h.cancel()

    def _expire(self) -> None:
        self.deadline_handle = None
        ex = self.ex
        if ex is not None and self.open:
            self.conn.rt.log.info("grpc_deadline_exceeded", peer=self._ctx.peer, stream=self.id)
            ex.expire()
            self.conn.flush_soon()

    def send_continue(self) -> None:
        """The request body is being read (``expect: 100-continue``): a 100 HEADERS first."""
        ex = self.ex
        if self.open and ex is not None and not ex.head_sent:
            self.conn.session.send_headers(self.id, [(":status", "100")])
            self.conn.flush_soon()

    # what Exchange reads from its connection
    @property
    def _rt(self) -> Any:
        return self.conn.rt

    @property
    def _ctx(self) -> Any:
        return self.conn.proto._ctx

    @property
    def _serve(self) -> Any:
        return self.conn.rt.serve

    @property
    def _loop(self) -> Any:
        return self.conn.rt.loop

    @property
    def _transport(self) -> Any:
        return self.conn.proto._transport if self.open else None

    def _write(self, data: bytes) -> None:  # never used by H2Exchange; kept for the interface
        raise RuntimeError("h2 streams write frames, not bytes")

    def _abort(self) -> None:
        """What an Exchange does to its connection on a broken response: reset this stream."""
        self.conn.reset(self, INTERNAL_ERROR)

    def exchange_done(self, ex: Any) -> None:
        self.done(ex)

    def done(self, ex: Any) -> None:
        """The response is queued completely: account for it (one access-log line)."""
        cur = self.ex
        if cur is None or cur is not ex:
            return
        self.ex = None
        self._queue.clear()
        cur.account()
        body = self.body
        if body is not None and not body.done:
            # answered before the request body was in: the rest is read and dropped
            body.fail(BodyError("response sent before the request body was complete"))
            self.discard()
        self.conn.flush_soon()

    # Producer (of the request body)
    def body_pause(self) -> None:
        self.held = True

    def body_resume(self) -> None:
        self.held = False
        self.conn.acknowledge(self)

    def body_abandon(self) -> None:
        self.discard()

    def discard(self) -> None:
        self.discarding = True
        self.held = False
        self.conn.acknowledge(self)


class H2Connection:
    """The h2 side of one client connection; see the module docstring."""

    def __init__(
        self, proto: HttpServerProtocol, settings: H2Settings, idle_timeout: float, send_timeout: float
    ) -> None:
        rt: Any = proto._rt
        self.proto = proto
        self.rt = rt
        self.session = H2ServerSession(settings)
        self.streams: dict[int, H2Stream] = {}
        self.idle_timeout = idle_timeout
        self.send_timeout = send_timeout
        self.write_paused = False
        self.closed = False
        self.draining = False
        self._flush_handle: Any = None
        self._idle_at = _now()
        # the sweep, the drain and fd reclaiming see this connection, not the HTTP/1.1 one
        # that sniffed it (that one stays the transport's protocol: TLS, bytes in and out)
        rt.connections.discard(proto)
        rt.connections.add(self)
        rt.stats.h2_connections_total += 1
        if self.rt.draining:
            self.begin_drain()

    @property
    def peer(self) -> Any:
        ctx = self.proto._ctx
        return ctx.peer if ctx is not None else None

    # -- bytes in --------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        for ev in self.session.receive_data(data):
            self._event(ev)
        self.flush()

    def _event(self, ev: Any) -> None:
        st = self.streams.get(ev.stream_id)
        if isinstance(ev, RequestReceived):
            self._request(ev)
        elif isinstance(ev, DataReceived):
            if st is None or st.discarding or st.body is None:
                self.session.acknowledge_received_data(ev.stream_id, ev.flow_controlled_length)
                return
            st.unacked += ev.flow_controlled_length
            body = st.body
            max_body = self.rt.max_body
            if max_body and body.received + len(ev.data) > max_body:
                body.fail(BodyError("request body too large"))
                if st.ex is not None and not st.ex.head_sent:
                    st.ex.fail(413)
                st.discard()
                return
            if ev.data:
                body.feed(ev.data)
            if self.rt.body_timeout_on:
                st.body_deadline = _now() + self.rt.body_timeout
            if not st.held:
                self.acknowledge(st)
        elif isinstance(ev, (StreamEnded, TrailersReceived)):
            if st is not None and st.body is not None:
                if isinstance(ev, TrailersReceived):
                    st.body.trailers = ev.headers
                st.body_deadline = 0.0
                st.body.finish()
        elif isinstance(ev, (StreamReset, StreamClosed)):
            if st is not None:
                self._gone(st, isinstance(ev, StreamReset))
        elif isinstance(ev, StreamWritable):
            if st is not None and st.out_body is not None:
                st.out_body.resume()
        elif isinstance(ev, ConnectionTerminated) and not ev.remote:
            self.rt.log.info("h2_connection_failed", error=ev.error, peer=self.peer)

    def _request(self, ev: RequestReceived) -> None:
        st = H2Stream(self, ev.stream_id)
        self.streams[st.id] = st
        req, status = build_request(ev, self.rt, st)
        st.body = req.body if req is not None else None
        if st.body is not None and self.rt.body_timeout_on:
            st.body_deadline = _now() + self.rt.body_timeout
        # the stream stands in for Exchange's connection (the members it uses, duck-typed)
        ex = H2Exchange(st, req, error=status)  # type: ignore[arg-type]
        st.ex = ex
        st._queue.append(ex)
        if req is not None:
            self.rt.stats.h2_requests += 1
            if grpc.is_grpc(req.headers):
                st.grpc = True
                timeout = grpc.timeout_of(req.headers)
                if timeout is not None:
                    st.deadline_handle = self.rt.loop.call_later(timeout, st._expire)
        ex.start()

    def _gone(self, st: H2Stream, reset: bool) -> None:
        """The stream closed (normally, or reset by the peer or by us)."""
        st.open = False
        st.cancel_deadline()
        self.streams.pop(st.id, None)
        if not self.streams:
            self._idle_at = _now()
        err = BodyError("client reset the stream")
        out = st.out_body
        if out is not None:
            st.out_body = None
            out.abandon()
        ex = st.ex
        if ex is not None:
            st.ex = None
            if reset and ex.head_sent:
                ex.account()  # a response cut off by the reset: still one log line
            else:
                ex.lost(err)
                if ex.request is not None:
                    ex.status = 499  # cancelled before the answer (nginx's 499): logged too
                    ex.account()
        if st.body is not None and not st.body.done:
            st.body.fail(err)

    def acknowledge(self, st: H2Stream) -> None:
        if st.unacked:
            n, st.unacked = st.unacked, 0
            self.session.acknowledge_received_data(st.id, n)
            self.flush_soon()

    def reset(self, st: H2Stream, code: int) -> None:
        if st.open:
            self.session.reset_stream(st.id, code)
        self.flush_soon()

    # -- bytes out -------------------------------------------------------------------------
    def flush_soon(self) -> None:
        """Coalesce the frames of one loop iteration into one write."""
        if self._flush_handle is None and not self.closed:
            self._flush_handle = self.rt.loop.call_soon(self.flush)

    def flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self.closed:
            return
        s = self.session
        while not self.write_paused:  # the output contract: no data_to_send while paused
            out = s.data_to_send()
            events = s.pop_events()
            if out:
                self.proto._write(out)
            for ev in events:
                self._event(ev)
            if not out and not events:
                break
        if s.closed:
            self._finish()

    def _finish(self) -> None:
        """The session is over (drained, GOAWAY'd, or failed): a lingering close.

        Why lingering: a flooding or misbehaving client has usually sent more than we read
        when we give up (megabytes, in the flood tests); close() on a socket with unread input
        makes the kernel answer with RST at once, which fails the client's next send and
        drops whatever of our output its stack had not yet delivered, the GOAWAY that says
        why included. So: the GOAWAY is flushed, then FIN (shutdown(SHUT_WR)); what the client
        still sends is read and dropped (``closed`` makes ``data_received`` a no-op) until its
        EOF; bounded: a failed session is aborted after FAILED_ABORT_SECONDS whatever the
        client does (one that keeps sending or never reads gets its RST then), any other
        after the HTTP/1.1 lingering bound (protocol.LINGER_SECONDS)."""
        if self.closed:
            return
        self.closed = True
        for st in list(self.streams.values()):
            self._gone(st, True)
        proto = self.proto
        if self.session.failure:
            self.rt.loop.call_later(FAILED_ABORT_SECONDS, proto._abort)
        proto._close(linger=True)

    # -- transport events ------------------------------------------------------------------
    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.flush()

    def eof_received(self) -> bool:
        for st in list(self.streams.values()):
            self._gone(st, True)
        self.closed = True
        return False

    def connection_lost(self) -> None:
        self.rt.connections.discard(self)
        self.closed = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        for st in list(self.streams.values()):
            self._gone(st, True)
        self.session.release()

    # -- what ServerRuntime's sweep and drain call -----------------------------------------
    def check_timeout(self, now: float) -> None:
        if self.closed:
            return
        if not self.streams:
            if self.idle_timeout > 0 and now - self._idle_at >= self.idle_timeout:
                self.session.close()
                self.flush()
                if not self.closed:
                    self._finish()
            return
        s = self.session
        for st in list(self.streams.values()):
            if st.body_deadline and now >= st.body_deadline and not st.held:
                st.body_deadline = 0.0
                self.rt.log.info("client_timeout", phase="body", peer=self.peer, stream=st.id)
                if st.ex is not None and not st.ex.head_sent:
                    st.ex.fail(408)
                elif st.body is not None:
                    st.body.fail(BodyError("request body timeout"))
                    self.reset(st, CANCEL)
            buffered = s.stream_buffered(st.id)
            if buffered != st.last_buffered or not buffered:
                st.last_buffered = buffered
                st.progress_at = now
            elif self.send_timeout > 0 and now - st.progress_at >= self.send_timeout:
                # the zero-window stall: the client does not open its window for our data
                self.rt.log.info(
                    "client_timeout", phase="send", peer=self.peer, stream=st.id, buffered=buffered
                )
                self.reset(st, CANCEL)
                st.progress_at = now

    @property
    def deadline(self) -> float:
        return 0.0  # checked by every sweep (at most a second apart)

    def begin_drain(self) -> None:
        """GOAWAY notice + PING; the final GOAWAY on the ack or after a second; in-flight
        streams finish, then ``closed`` turns true and the connection closes."""
        if self.draining or self.closed:
            return
        self.draining = True
        self.session.start_graceful_shutdown()
        self.flush()
        self.rt.loop.call_later(DRAIN_PING_SECONDS, self._finish_drain)

    def retire(self) -> None:
        """The stack this connection was accepted on was replaced by an in-place reload."""
        self.begin_drain()

    def _finish_drain(self) -> None:
        if not self.closed:
            self.session.finish_graceful_shutdown()
            self.flush()

    @property
    def idle(self) -> bool:
        return not self.streams

    @property
    def reclaimable(self) -> bool:
        return not self.streams and not self.closed

    @property
    def idle_since(self) -> float:
        return self._idle_at

    def reclaim(self) -> None:
        self.session.close()
        self.flush()
        if not self.closed:
            self._finish()


class _Head:
    """What ``build_request`` needs from a request head, gathered in one pass."""

    __slots__ = ("continue_", "host", "length", "pseudo", "regular")

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        pseudo: dict[bytes, bytes] = {}
        regular: list[tuple[bytes, bytes]] = []
        cookies: list[bytes] = []
        self.host: bytes | None = None
        self.length: bytes | None = None
        self.continue_ = False
        for k, v in headers:
            if k[:1] == b":":
                pseudo[k] = v
            elif k == b"cookie":
                cookies.append(v)
            else:
                regular.append((k, v))
                if k == b"host":
                    if self.host is None:  # the first one, as for HTTP/1.1
                        self.host = v
                elif k == b"content-length":
                    if self.length is None:
                        self.length = v
                elif k == b"expect" and v.lower() == b"100-continue":
                    self.continue_ = True
        if cookies:  # RFC 9113 §8.2.3: one cookie line towards HTTP/1.1
            regular.append((b"cookie", b"; ".join(cookies)))
        self.pseudo = pseudo
        self.regular = regular


def build_request(ev: RequestReceived, rt: Any, producer: H2Stream) -> tuple[Request | None, int]:
    """The HTTP/1.1-shaped Request for a stream (``:authority`` -> Host), or an error status."""
    head = _Head(ev.headers)
    pseudo, headers = head.pseudo, head.regular
    method = pseudo.get(b":method", b"").decode("latin-1")
    if method == "CONNECT":
        return None, 405
    target = pseudo.get(b":path", b"/").decode("latin-1")
    if rt.max_uri and len(target) > rt.max_uri:
        return None, 414  # max_uri_size, as for HTTP/1.1
    authority = pseudo.get(b":authority")
    host = authority
    if host is None:
        host = head.host
    elif head.host is None:
        headers.insert(0, (b"host", host))
    if len(headers) > rt.settings.max_headers:
        return None, 431
    length: int | None = None
    raw = head.length
    if raw is not None:
        try:
            length = int(raw)
        except ValueError:
            return None, 400
        if rt.max_body and length > rt.max_body:
            return None, 413
    body = None
    if not ev.end_stream:
        # a body whose trailer fields are announced (``trailer``) goes on chunked, so they can follow
        body = BodyStream(None if announces_trailers(headers) else length, producer)
        if head.continue_:
            body.on_consume = producer.send_continue
    path, _, query = target.partition("?")
    if not host:
        hostname = ""
    elif host.startswith(b"["):
        hostname = host.decode("latin-1").split("]")[0][1:].lower()
    else:
        hostname = host.decode("latin-1").rsplit(":", 1)[0].strip("[]").lower()
    return Request(
        method, target, path, query, "2.0", headers, body, True, False, False, length, False, hostname
    ), 0
