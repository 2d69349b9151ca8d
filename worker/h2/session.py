"""Sans-I/O HTTP/2 sessions over libnghttp2: bytes in -> events, method calls -> bytes out.

Why sans-I/O (the h11 style): the same session runs under the io_uring loop, epoll, a test's
in-memory pipe, and later the proxy's connection core, with no transport assumptions. nghttp2
does the framing, HPACK, flow control and flood accounting; this module keeps per-stream send
queues, turns nghttp2 callbacks into events, and enforces what nghttp2 leaves to the application
(the decoded header-list cap, a budget of peer misbehaviour).

The output contract that makes the flood limits work: call :meth:`data_to_send` only when the
transport can take more (not while it is paused for writing), but keep calling
:meth:`receive_data`. A peer that floods PING/SETTINGS without reading then fills nghttp2's
bounded ACK queue and the session fails with ``ERR_FLOODED`` instead of growing a write buffer.
"""

from __future__ import annotations

import itertools
import struct
import time
import weakref
from collections import deque
from collections.abc import Iterable
from itertools import chain
from typing import Any, ClassVar

import structlog

from monolake.worker.h2 import _binding
from monolake.worker.h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    Headers,
    InformationalResponseReceived,
    PingAcknowledged,
    RemoteSettingsChanged,
    RequestReceived,
    ResponseReceived,
    StreamClosed,
    StreamEnded,
    StreamReset,
    StreamWritable,
    TrailersReceived,
)
from monolake.worker.h2.settings import H2Settings

log = structlog.get_logger("monolake.h2")

HeaderInput = Iterable[tuple[bytes | str, bytes | str]]
_DRAIN_PING = b"mlkdrain"
# session-fatal nghttp2 errors that mean "the peer is abusing us", answered with ENHANCE_YOUR_CALM
_ABUSE_ERRORS = ("NGHTTP2_ERR_FLOODED", "NGHTTP2_ERR_TOO_MANY_CONTINUATIONS", "NGHTTP2_ERR_TOO_MANY_SETTINGS")
# the C glue's log record (mh2.h, mh2_rec): kind, flags, cat, pad, stream id, aux, payload length
_REC = struct.Struct("=BBBxiII")
_EV = _binding.lib
EV_HEADERS, EV_DATA, EV_DATA_END = _EV.MH2_EV_HEADERS, _EV.MH2_EV_DATA, _EV.MH2_EV_DATA_END
EV_RST, EV_SETTINGS, EV_PING_ACK = _EV.MH2_EV_RST, _EV.MH2_EV_SETTINGS, _EV.MH2_EV_PING_ACK
EV_GOAWAY, EV_CLOSE, EV_GOAWAY_SENT = _EV.MH2_EV_GOAWAY, _EV.MH2_EV_CLOSE, _EV.MH2_EV_GOAWAY_SENT
_END_STREAM = _EV.NGHTTP2_FLAG_END_STREAM
# mh2_seg: where a by-reference body payload goes in mh2_send's output
_SEG = struct.Struct("=IiII")
# send_response bodies from this size stay in their bytes object: the output is spliced from
# it with one join instead of copying it into the glue and out again; smaller ones are copied
# (one memcpy costs less than the splicing)
BODY_BY_REFERENCE = 4096


class H2Error(Exception):
    """Misuse of a session (a programming error in the caller, not the peer's fault)."""


class _Stream:
    """Our side of one stream: header accumulation in, a send queue out."""

    __slots__ = (
        "above_low",
        "body_ref",
        "deferred",
        "end_queued",
        "final_seen",
        "has_provider",
        "id",
        "local_done",
        "out",
        "out_len",
        "remote_reset",
        "trailers",
        "unacked",
    )

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.final_seen = False  # client: a non-1xx response head arrived
        self.out: deque[memoryview] = deque()
        self.out_len = 0
        self.end_queued = False  # END_STREAM (or trailers) queued after the buffered data
        self.trailers: list[tuple[bytes | str, bytes | str]] | None = None
        self.deferred = False  # nghttp2 holds the data provider until resume_data
        self.has_provider = False
        self.local_done = False  # our side has ended the stream
        self.above_low = False
        self.remote_reset = False
        self.unacked = 0  # received DATA not yet acknowledged by the caller
        self.body_ref: bytes | None = None  # a send_response body the glue frames by reference


def _encode(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


def _block(headers: HeaderInput) -> tuple[bytes, int]:
    """Header fields as the C glue's "name\0value\0..." block and their count (the glue
    lower-cases the names, RFC 9113 §8.2.1). A NUL inside a field is refused: it could not be
    sent on the wire anyway."""
    if not isinstance(headers, list):
        headers = list(headers)
    n = len(headers)
    if not n:
        return b"", 0
    try:
        block = b"\0".join(chain.from_iterable(headers))  # type: ignore[arg-type]
    except TypeError:  # str names or values (latin-1, as HTTP/1.1 carries them)
        block = b"\0".join(_encode(x) for kv in headers for x in kv)
    block += b"\0"
    if block.count(b"\0") != 2 * n:
        raise H2Error("a header name or value contains NUL")
    return block, n


def headers_of(block: bytes) -> Headers:
    """A header block as the C glue collects it ("name\0value\0...") -> [(name, value)]."""
    if not block:
        return []
    parts = block.split(b"\0")
    return list(zip(parts[0:-1:2], parts[1::2], strict=True))


def _free(session: Any, hdrs: Any) -> None:
    _binding.lib.nghttp2_session_del(session)
    _binding.lib.mh2_hdrs_free(hdrs)


class _Session:
    """What the server and client sessions share; not used directly."""

    _ids = itertools.count(1)
    _live: ClassVar[weakref.WeakValueDictionary[int, _Session]] = weakref.WeakValueDictionary()
    client_side = False

    def __init__(self, settings: H2Settings | None = None) -> None:
        ffi, lib = _binding.ffi, _binding.lib
        self.settings = settings or H2Settings()
        self._events: list[Event] = []
        self._streams: dict[int, _Stream] = {}
        self._error: BaseException | None = None  # raised in a callback, re-raised to the caller
        self._dead = False  # a fatal error: no more input is processed
        self._remote_settings_seen = False
        self._peer_goaway: ConnectionTerminated | None = None
        self.local_goaway: tuple[int, int] | None = None  # (error_code, last_stream_id) sent
        self.failure = ""  # why the session failed, for the access/error log
        self.cancelled_early = 0  # streams opened and reset by the peer within one read
        self._batch_opened: set[int] = set()
        self._batch_cancelled: set[int] = set()
        self._glitch_tokens = float(self.settings.max_peer_errors)
        self._glitch_at = time.monotonic()
        self._key = next(self._ids)
        _Session._live[self._key] = self  # for leak checks: sessions die by refcount
        self._pp = ffi.new("const uint8_t **")
        # the C glue collects header blocks here (nghttp2's user_data)
        self._hdrs = lib.mh2_hdrs_new(self.settings.max_header_list_size)
        if self._hdrs == ffi.NULL:
            raise MemoryError("mh2_hdrs_new")
        self._too_big_seen = 0
        pp = ffi.new("nghttp2_session **")
        opt = _binding.options(self.settings)
        new = lib.nghttp2_session_client_new2 if self.client_side else lib.nghttp2_session_server_new2
        rv = new(pp, _binding.callbacks(), self._hdrs, opt)
        if rv != 0:
            lib.mh2_hdrs_free(self._hdrs)
            raise MemoryError(f"nghttp2 session: {_binding.strerror(rv)}")
        self._s = pp[0]
        self._finalizer = weakref.finalize(self, _free, self._s, self._hdrs)
        self._submit_settings()

    # --- setup ----------------------------------------------------------------------------
    def _submit_settings(self) -> None:
        ffi, lib = _binding.ffi, _binding.lib
        st = self.settings
        entries = [
            (lib.NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, st.max_concurrent_streams),
            (lib.NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, st.initial_window_size),
            (lib.NGHTTP2_SETTINGS_MAX_FRAME_SIZE, st.max_frame_size),
            (lib.NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, st.max_header_list_size),
            (lib.NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, st.header_table_size),
        ]
        if self.client_side:
            entries.append((lib.NGHTTP2_SETTINGS_ENABLE_PUSH, 0))
        iv = ffi.new("nghttp2_settings_entry[]", len(entries))
        for i, (sid, value) in enumerate(entries):
            iv[i].settings_id = sid
            iv[i].value = value
        self._check(lib.nghttp2_submit_settings(self._s, lib.NGHTTP2_FLAG_NONE, iv, len(entries)))
        if st.connection_window_size > 65_535:
            self._check(
                lib.nghttp2_session_set_local_window_size(
                    self._s, lib.NGHTTP2_FLAG_NONE, 0, st.connection_window_size
                )
            )

    @staticmethod
    def _check(rv: int) -> int:
        if rv < 0:
            raise H2Error(_binding.strerror(rv))
        return rv

    # --- bytes in / bytes out -------------------------------------------------------------
    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Feed bytes read from the peer; returns the events they produced, in order."""
        if self._dead or not data:
            return self.pop_events()
        ffi, lib = _binding.ffi, _binding.lib
        _binding.current = self
        try:
            rv = lib.nghttp2_session_mem_recv(self._s, ffi.from_buffer("uint8_t[]", data), len(data))
        finally:
            _binding.current = None
        self._reraise()
        self._drain()
        if rv < 0:
            self._fail(rv)
        too_big = self._hdrs.too_big_count
        while self._too_big_seen < too_big:  # header lists the C glue refused
            self._too_big_seen += 1
            self._glitch("header list too large")
        self._batch_opened.clear()
        if self._batch_cancelled:
            gone, self._batch_cancelled = self._batch_cancelled, set()
            self.cancelled_early += len(gone)
            self._events = [e for e in self._events if e.stream_id not in gone]
        return self.pop_events()

    def data_to_send(self, limit: int = 1 << 20) -> bytes:
        """Serialise queued frames (up to about ``limit`` bytes); empty when nothing is due.
        Events this produces (StreamWritable, StreamClosed) wait in :meth:`pop_events`."""
        ffi, lib = _binding.ffi, _binding.lib
        if self._s == ffi.NULL:
            return b""
        h = self._hdrs
        _binding.current = self
        try:
            n = lib.mh2_send(h, self._s, limit)
        finally:
            _binding.current = None
        self._reraise()
        if n <= 0:
            out = b""
        elif h.nsegs:
            out = self._splice(ffi.buffer(h.out, n), n, ffi.buffer(h.segs, h.nsegs * _SEG.size))
        else:
            out = ffi.buffer(h.out, n)[:]
        self._drain()  # after the splice: a stream closed in this send still has its body
        if n < 0:
            self._fail(n)
        return out

    def _splice(self, out: Any, n: int, segs: Any) -> bytes:
        """mh2_send's output with the by-reference body payloads put in place (mh2.h, mh2_seg):
        the frames and the bodies are copied once, by the join."""
        pieces: list[Any] = []
        pos = 0
        streams = self._streams
        for at, sid, off, ln in _SEG.iter_unpack(segs):
            st = streams.get(sid)
            body = st.body_ref if st is not None else None
            if body is None:  # cannot happen: the stream closes after this splice
                raise H2Error(f"stream {sid}: a body framed by reference is gone")
            pieces.append(out[pos:at])
            pieces.append(memoryview(body)[off : off + ln])
            pos = at
        pieces.append(out[pos:n])
        return b"".join(pieces)

    def pop_events(self) -> list[Event]:
        """Events produced outside ``receive_data`` (by ``data_to_send`` or a method call)."""
        events, self._events = self._events, []
        return events

    @property
    def closed(self) -> bool:
        """Nothing more to read or write: the caller closes the transport (after a last
        ``data_to_send``, which this implies returned empty)."""
        lib = _binding.lib
        return self._dead or (
            not lib.nghttp2_session_want_read(self._s) and not lib.nghttp2_session_want_write(self._s)
        )

    @property
    def wants_write(self) -> bool:
        return not self._dead and bool(_binding.lib.nghttp2_session_want_write(self._s))

    @property
    def buffered(self) -> int:
        """Bytes the caller queued with ``send_data`` that are not yet serialised (all streams)."""
        return sum(st.out_len for st in self._streams.values())

    def stream_buffered(self, stream_id: int) -> int:
        st = self._streams.get(stream_id)
        return st.out_len if st else 0

    @property
    def outbound_queue_frames(self) -> int:
        """Frames nghttp2 has queued (HEADERS, ACKs, RST_STREAM, ...), not DATA payloads."""
        return int(_binding.lib.nghttp2_session_get_outbound_queue_size(self._ptr()))

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def remote_setting(self, settings_id: int) -> int:
        return int(_binding.lib.nghttp2_session_get_remote_settings(self._ptr(), settings_id))

    def release(self) -> None:
        """Free the nghttp2 session now (also done when the object is released)."""
        self._dead = True
        self._streams.clear()
        self._finalizer()
        self._s = _binding.ffi.NULL  # every entry point checks this: no use after free

    def _ptr(self) -> Any:
        if self._s == _binding.ffi.NULL:
            raise H2Error("the session was released")
        return self._s

    # --- sending --------------------------------------------------------------------------
    def _stream(self, stream_id: int) -> _Stream | None:
        """The live stream, or None when the peer (or nghttp2) has already closed it."""
        return self._streams.get(stream_id)

    def send_data(
        self, stream_id: int, data: bytes | bytearray | memoryview, end_stream: bool = False
    ) -> int:
        """Queue body bytes; returns the stream's buffered total (the caller pauses its
        producer above its high-water mark and resumes on StreamWritable). The bytes leave as
        the peer's flow-control window allows. Returns -1 when the stream is already gone."""
        st = self._stream(stream_id)
        if st is None:
            return -1
        if st.end_queued or st.local_done or not st.has_provider:
            raise H2Error(f"stream {stream_id}: send_data after the end of the stream")
        if data:
            view = memoryview(bytes(data) if not isinstance(data, bytes) else data)
            st.out.append(view)
            st.out_len += len(view)
            if st.out_len >= self.settings.send_low_water:
                st.above_low = True
        if end_stream:
            st.end_queued = True
        self._resume(st)
        return st.out_len

    def end_stream(self, stream_id: int) -> bool:
        """Half-close our side after the buffered data (an empty DATA frame with END_STREAM)."""
        return self.send_data(stream_id, b"", end_stream=True) >= 0

    def send_trailers(self, stream_id: int, headers: HeaderInput) -> bool:
        """Queue a trailing header block after the buffered data; it ends the stream."""
        st = self._stream(stream_id)
        if st is None:
            return False
        if st.end_queued or st.local_done or not st.has_provider:
            raise H2Error(f"stream {stream_id}: trailers after the end of the stream")
        st.trailers = list(headers)
        st.end_queued = True
        self._resume(st)
        return True

    def _resume(self, st: _Stream) -> None:
        if st.deferred:
            st.deferred = False
            _binding.lib.nghttp2_session_resume_data(self._s, st.id)

    def reset_stream(self, stream_id: int, error_code: int = 0x8) -> bool:
        """RST_STREAM (default CANCEL); the queued body is dropped at once."""
        st = self._stream(stream_id)
        if st is None:
            return False
        st.out.clear()
        st.out_len = 0
        lib = _binding.lib
        return lib.nghttp2_submit_rst_stream(self._s, lib.NGHTTP2_FLAG_NONE, stream_id, error_code) == 0

    def ping(self, opaque: bytes = b"\0" * 8) -> None:
        if len(opaque) != 8:
            raise H2Error("a PING carries exactly 8 opaque bytes")
        lib = _binding.lib
        self._check(
            lib.nghttp2_submit_ping(
                self._ptr(), lib.NGHTTP2_FLAG_NONE, _binding.ffi.from_buffer("uint8_t[]", opaque)
            )
        )

    def acknowledge_received_data(self, stream_id: int, length: int) -> None:
        """Give back ``length`` flow-controlled bytes: reopens the stream and connection
        windows (nghttp2 batches the WINDOW_UPDATE). A closed stream's bytes were credited to
        the connection when it closed, so acknowledging them later is a no-op."""
        st = self._streams.get(stream_id)
        if st is None or length <= 0:
            return
        length = min(length, st.unacked)
        st.unacked -= length
        _binding.lib.nghttp2_session_consume(self._s, stream_id, length)

    def close(self, error_code: int = 0, reason: bytes = b"") -> None:
        """GOAWAY now with the last stream we processed; streams above it are refused."""
        if self._dead:
            return
        lib = _binding.lib
        last = lib.nghttp2_session_get_last_proc_stream_id(self._s)
        data = _binding.ffi.from_buffer("uint8_t[]", reason) if reason else _binding.ffi.NULL
        lib.nghttp2_submit_goaway(self._s, lib.NGHTTP2_FLAG_NONE, last, error_code, data, len(reason))

    # --- callbacks (called from _binding's extern "Python" functions) ---------------------
    def _drain(self) -> None:
        """Turn what the C glue recorded during the last mem_recv / mem_send (mh2.h: one
        record per frame that matters, in wire order) into state and events."""
        h = self._hdrs
        n = h.log_len
        if not n:
            return
        buf = _binding.ffi.buffer(h.log, n)
        try:
            self._records(buf, n)
        except BaseException:
            self._dead = True  # a bug in our event code ends the session, as in a callback
            raise
        finally:
            _binding.lib.mh2_log_reset(h)

    def _records(self, buf: Any, n: int) -> None:
        unpack, size = _REC.unpack_from, _REC.size
        off = 0
        while off < n:
            kind, flags, cat, sid, aux, ln = unpack(buf, off)
            off += size
            if kind == EV_HEADERS:
                self._on_headers(sid, flags, cat, buf[off : off + ln] if ln else b"")
            elif kind == EV_DATA:
                self._on_data_chunk(sid, buf[off : off + ln], ln)
            elif kind == EV_CLOSE:
                self._on_stream_close(sid, aux)
            else:
                self._on_frame(kind, flags, sid, aux, buf[off : off + ln] if ln else b"")
            off += ln

    def _reraise(self) -> None:
        if self._error is not None:
            exc, self._error = self._error, None
            self._dead = True
            raise exc

    def _fail(self, rv: int) -> None:
        """A session-fatal nghttp2 error: GOAWAY if still possible, then the session is done."""
        lib = _binding.lib
        abuse = any(rv == getattr(lib, name) for name in _ABUSE_ERRORS)
        code = lib.NGHTTP2_ENHANCE_YOUR_CALM if abuse else lib.NGHTTP2_PROTOCOL_ERROR
        self.failure = _binding.strerror(rv)
        log.warning(
            "h2_session_failed",
            error=self.failure,
            code=code,
            side="client" if self.client_side else "server",
        )
        if rv != lib.NGHTTP2_ERR_BAD_CLIENT_MAGIC and not self._dead:
            lib.nghttp2_session_terminate_session(self._s, code)
        self._dead = True
        self._events.append(ConnectionTerminated(error_code=code, remote=False, error=self.failure))

    def _glitch(self, what: str) -> None:
        """Peer misbehaviour nghttp2 answers per stream (an oversized header list, an invalid
        frame, a refused stream): a token bucket (max_peer_errors, peer_error_rate); empty ->
        GOAWAY(ENHANCE_YOUR_CALM), so a peer cannot make us reset streams forever."""
        now = time.monotonic()
        st = self.settings
        refill = (now - self._glitch_at) * st.peer_error_rate
        self._glitch_tokens = min(float(st.max_peer_errors), self._glitch_tokens + refill)
        self._glitch_at = now
        self._glitch_tokens -= 1
        if self._glitch_tokens < 0 and not self.failure:
            lib = _binding.lib
            self.failure = f"too many peer errors ({what})"
            log.warning("h2_session_failed", error=self.failure)
            lib.nghttp2_session_terminate_session(self._s, lib.NGHTTP2_ENHANCE_YOUR_CALM)

    def _on_headers(self, sid: int, flags: int, cat: int, block: bytes) -> None:
        st = self._streams.get(sid)
        if st is None:
            if self.client_side or cat != _binding.lib.NGHTTP2_HCAT_REQUEST:
                return
            st = self._streams[sid] = _Stream(sid)
            self._batch_opened.add(sid)
        end = bool(flags & _END_STREAM)
        self._events.append(self._head_event(st, cat, headers_of(block), end))
        if end:
            self._events.append(StreamEnded(sid))

    def _on_frame(self, kind: int, flags: int, sid: int, aux: int, payload: bytes) -> None:
        """The frames other than HEADERS and DATA chunks the C glue recorded."""
        if kind == EV_DATA_END:
            last = self._events[-1] if self._events else None
            if isinstance(last, DataReceived) and last.stream_id == sid:
                last.end_stream = True
            self._events.append(StreamEnded(sid))
        elif kind == EV_RST:
            st = self._streams.get(sid)
            if st is not None:
                st.remote_reset = True
        elif kind == EV_SETTINGS:
            self._remote_settings_seen = True
            pairs = struct.unpack(f"={len(payload) // 4}I", payload)
            self._events.append(RemoteSettingsChanged(dict(zip(pairs[0::2], pairs[1::2], strict=True))))
        elif kind == EV_PING_ACK:
            if payload == _DRAIN_PING and isinstance(self, H2ServerSession):
                self.finish_graceful_shutdown()
            self._events.append(PingAcknowledged(payload))
        elif kind == EV_GOAWAY:
            last = struct.unpack_from("=i", payload)[0]
            mine = (lambda s: s % 2 == 1) if self.client_side else (lambda s: s % 2 == 0)
            unprocessed = sorted(s for s in self._streams if mine(s) and s > last)
            ev = ConnectionTerminated(
                error_code=aux,
                last_stream_id=last,
                additional_data=payload[4:],
                unprocessed_stream_ids=unprocessed,
            )
            self._peer_goaway = ev
            self._events.append(ev)
        elif kind == EV_GOAWAY_SENT:
            self._on_goaway_sent(aux, struct.unpack_from("=i", payload)[0], payload[4:])

    def _head_event(self, st: _Stream, cat: int, headers: Headers, end: bool) -> Event:
        sid = st.id
        if not self.client_side:
            if cat == _binding.lib.NGHTTP2_HCAT_REQUEST:
                return RequestReceived(sid, headers, end)
            return TrailersReceived(sid, headers)
        if st.final_seen:
            return TrailersReceived(sid, headers)
        status = next((v for k, v in headers if k == b":status"), b"")
        if status.startswith(b"1"):
            return InformationalResponseReceived(sid, headers)
        st.final_seen = True
        return ResponseReceived(sid, headers, end)

    def _on_data_chunk(self, stream_id: int, data: bytes, length: int) -> None:
        st = self._streams.get(stream_id)
        if st is None:  # a stream we no longer track: its bytes are consumed at once
            _binding.lib.nghttp2_session_consume(self._s, stream_id, length)
            return
        st.unacked += length
        self._events.append(DataReceived(stream_id, data, length))

    def _on_stream_close(self, stream_id: int, error_code: int) -> None:
        st = self._streams.pop(stream_id, None)
        if st is None:
            return
        if st.unacked:  # the caller will not acknowledge a dead stream's bytes: credit them now
            _binding.lib.nghttp2_session_consume_connection(self._s, st.unacked)
        if st.remote_reset and stream_id in self._batch_opened:
            # opened and cancelled by the peer within one receive_data call (the rapid-reset
            # pattern): the application never sees it, receive_data drops its events
            self._batch_cancelled.add(stream_id)
        if error_code == 0 and not st.remote_reset:
            self._events.append(StreamClosed(stream_id))
        else:
            refused = error_code == _binding.lib.NGHTTP2_REFUSED_STREAM
            goaway = self._peer_goaway
            beyond = goaway is not None and stream_id > goaway.last_stream_id
            self._events.append(
                StreamReset(
                    stream_id,
                    error_code,
                    remote=st.remote_reset,
                    retryable=self.client_side and (refused or beyond),
                )
            )

    def _on_goaway_sent(self, error_code: int, last_stream_id: int, debug: bytes) -> None:
        self.local_goaway = (error_code, last_stream_id)
        if error_code and not self.failure:  # nghttp2's own reason rides in the GOAWAY
            self.failure = debug.decode("latin-1") or _binding.error_name(error_code)
        if error_code:
            log.info(
                "h2_goaway_sent", error_code=error_code, last_stream_id=last_stream_id, reason=self.failure
            )

    def _on_invalid_frame(self, frame: Any, lib_error: int) -> int:
        self._glitch(_binding.strerror(lib_error))
        return 0

    def _read_data(self, stream_id: int, buf: Any, length: int, data_flags: Any) -> int:
        """nghttp2 pulls body bytes; it only asks while the peer's window is open."""
        lib = _binding.lib
        st = self._streams.get(stream_id)
        if st is None:
            return lib.NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
        n = 0
        memmove = _binding.ffi.memmove
        out = st.out
        while out and n < length:
            chunk = out[0]
            take = min(len(chunk), length - n)
            if take == len(chunk):
                out.popleft()
                memmove(buf + n, chunk, take)
            else:
                memmove(buf + n, chunk[:take], take)
                out[0] = chunk[take:]
            n += take
        st.out_len -= n
        if st.above_low and st.out_len < self.settings.send_low_water:
            st.above_low = False
            self._events.append(StreamWritable(stream_id, st.out_len))
        if not out and st.end_queued:
            flags = lib.NGHTTP2_DATA_FLAG_EOF
            st.local_done = True
            if st.trailers is not None:
                flags |= lib.NGHTTP2_DATA_FLAG_NO_END_STREAM
                block, count = _block(st.trailers)
                rv = lib.mh2_submit_trailer(self._s, stream_id, block, len(block), count)
                if rv != 0:
                    return lib.NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
            data_flags[0] = flags
            return n
        if n == 0:
            st.deferred = True
            return lib.NGHTTP2_ERR_DEFERRED
        return n


class H2ServerSession(_Session):
    """The downstream side: requests in, responses out, graceful drain with GOAWAY."""

    client_side = False

    def __init__(self, settings: H2Settings | None = None) -> None:
        super().__init__(settings)
        self._draining = False
        self._final_sent = False

    def send_headers(self, stream_id: int, headers: HeaderInput, end_stream: bool = False) -> bool:
        """A response head (``:status`` first). A 1xx head may precede the final one. Without
        ``end_stream`` a body follows through ``send_data`` / ``send_trailers``. False when the
        peer has already reset or closed the stream (a race the caller just drops)."""
        st = self._stream(stream_id)
        if st is None:
            return False
        lib = _binding.lib
        block, count = _block(headers)
        if block.startswith(b":status\x001"):  # :status comes first (RFC 9113)
            self._check(
                lib.mh2_submit_headers(self._s, lib.NGHTTP2_FLAG_NONE, stream_id, block, len(block), count)
            )
            return True
        if st.has_provider or st.local_done:
            raise H2Error(f"stream {stream_id}: response head sent twice")
        if end_stream:
            st.local_done = True
            prd = _binding.ffi.NULL
        else:
            st.has_provider = True
            prd = _binding.provider()
        self._check(lib.mh2_submit_response(self._s, stream_id, block, len(block), count, prd))
        return True

    def send_response(
        self, stream_id: int, headers: HeaderInput, body: bytes | memoryview, lines: bytes = b""
    ) -> bool:
        """A final response head with its whole body in one call (an empty body: the HEADERS
        end the stream). The C glue frames the body itself as the window allows (no per-frame
        Python callback): copied now when small, else kept by reference until the stream
        closes, so a view lent for this call only is copied first. ``lines`` are more header
        fields as a relayed HTTP/1.1 head ("name: value\r\n"..., hop-by-hop fields already
        dropped, see Response.head_block), sent after ``headers``. False when the stream is
        already gone."""
        st = self._stream(stream_id)
        if st is None:
            return False
        if st.has_provider or st.local_done:
            raise H2Error(f"stream {stream_id}: response head sent twice")
        block, count = _block(headers)
        st.local_done = True
        ffi, lib = _binding.ffi, _binding.lib
        n = len(body)
        data: Any = body if n else ffi.NULL
        if n >= BODY_BY_REFERENCE:
            st.body_ref = body if type(body) is bytes else bytes(body)
            data = ffi.NULL
        elif n and type(body) is not bytes:
            data = ffi.from_buffer(body)
        self._check(
            lib.mh2_submit_response_h1(
                self._hdrs, self._s, stream_id, block, len(block), count, lines, len(lines), data, n
            )
        )
        return True

    def start_graceful_shutdown(self) -> None:
        """Drain: a GOAWAY(2^31-1) notice plus a PING now; once the PING is acknowledged (one
        round trip, so no request is in flight towards us unseen) the final GOAWAY names the
        last stream we accept. In-flight streams finish; then ``closed`` turns true."""
        if self._draining or self._dead:
            return
        self._draining = True
        lib = _binding.lib
        self._check(lib.nghttp2_submit_shutdown_notice(self._s))
        self.ping(_DRAIN_PING)

    def finish_graceful_shutdown(self) -> None:
        """The final GOAWAY (last processed stream id). Sent by itself when the drain PING is
        acknowledged; call it from a timer for a peer that never answers PINGs."""
        if self._final_sent or self._dead:
            return
        self._final_sent = True
        lib = _binding.lib
        last = lib.nghttp2_session_get_last_proc_stream_id(self._s)
        lib.nghttp2_submit_goaway(
            self._s, lib.NGHTTP2_FLAG_NONE, last, lib.NGHTTP2_NO_ERROR, _binding.ffi.NULL, 0
        )


class H2ClientSession(_Session):
    """The upstream side: multiplexed requests, MAX_CONCURRENT_STREAMS and GOAWAY aware."""

    client_side = True
    # what nghttp2 assumes too (nghttp2_option_set_peer_max_concurrent_streams) until SETTINGS
    ASSUMED_MAX_STREAMS = 100

    def send_request(self, headers: HeaderInput, end_stream: bool = False) -> int:
        """Open a stream with a request head (``:method``, ``:scheme``, ``:authority``,
        ``:path`` first); returns its id. Without ``end_stream`` the body follows through
        ``send_data`` / ``send_trailers`` / ``end_stream``. Raises H2Error after a GOAWAY
        (open a new connection: :attr:`accepting_streams`)."""
        lib, ffi = _binding.lib, _binding.ffi
        if not self.accepting_streams:
            raise H2Error("the connection is going away: open a new one")
        block, count = _block(headers)
        prd = ffi.NULL if end_stream else _binding.provider()
        sid = lib.mh2_submit_request(self._s, block, len(block), count, prd)
        self._check(sid)
        st = self._streams[sid] = _Stream(sid)
        st.has_provider = not end_stream
        st.local_done = end_stream
        return sid

    @property
    def accepting_streams(self) -> bool:
        """False after a GOAWAY (either way) or a failure: the pool opens another connection."""
        if self._dead or self._peer_goaway is not None or self.local_goaway is not None:
            return False
        return bool(_binding.lib.nghttp2_session_check_request_allowed(self._s))

    @property
    def max_concurrent_streams(self) -> int:
        if not self._remote_settings_seen:
            return self.ASSUMED_MAX_STREAMS
        return self.remote_setting(_binding.lib.NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS)

    @property
    def available_streams(self) -> int:
        """Streams the peer still allows us to open now (0: use or open another connection)."""
        if not self.accepting_streams:
            return 0
        return max(0, self.max_concurrent_streams - len(self._streams))
