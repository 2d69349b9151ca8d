"""The C glue's event log (mh2.c): every frame kind it records reaches Python as the event the
session promises, values intact, against the ``h2`` library as the peer."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from monolake.worker.h2 import H2ClientSession, H2Error, H2ServerSession, _binding
from monolake.worker.h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingAcknowledged,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
)
from monolake.worker.h2.session import _REC, BODY_BY_REFERENCE, headers_of

REQ = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"a.test"), (b":path", b"/p")]


def peer(client: bool) -> h2.connection.H2Connection:
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=client, header_encoding=None))
    c.initiate_connection()
    return c


def of(events: list, kind: type) -> list:
    return [e for e in events if isinstance(e, kind)]


def test_the_record_layout_matches_the_header() -> None:
    ffi = _binding.ffi
    assert _REC.size == ffi.sizeof("mh2_rec")
    assert ffi.offsetof("mh2_rec", "stream_id") == 4
    assert ffi.offsetof("mh2_rec", "aux") == 8
    assert ffi.offsetof("mh2_rec", "len") == 12


def test_headers_of_splits_the_block() -> None:
    assert headers_of(b"") == []
    assert headers_of(b":path\0/\0x\0\0") == [(b":path", b"/"), (b"x", b"")]


def test_settings_data_reset_and_goaway_reach_python() -> None:
    c, s = peer(True), H2ServerSession()
    c.update_settings({h2.settings.SettingCodes.MAX_FRAME_SIZE: 32768, 0x99: 7})
    events = s.receive_data(c.data_to_send())
    changed = {k: v for e in of(events, RemoteSettingsChanged) for k, v in e.changed.items()}
    assert changed[5] == 32768 and changed[0x99] == 7  # an unknown id crosses too
    c.receive_data(s.data_to_send())
    c.send_headers(1, REQ)
    c.send_data(1, b"a" * 1000)
    c.send_data(1, b"b" * 10, end_stream=True)
    c.send_headers(3, REQ)
    c.reset_stream(3, 0x8)
    events = s.receive_data(c.data_to_send())
    req = of(events, RequestReceived)
    assert [e.stream_id for e in req] == [1]  # 3: opened and reset in one read, never seen
    assert req[0].headers == REQ and not req[0].end_stream
    data = of(events, DataReceived)
    assert b"".join(e.data for e in data) == b"a" * 1000 + b"b" * 10
    assert data[-1].end_stream and of(events, StreamEnded)[-1].stream_id == 1
    assert s.cancelled_early == 1
    s.close(0x0, b"bye")
    goaway = [e for e in c.receive_data(s.data_to_send()) if isinstance(e, h2.events.ConnectionTerminated)]
    assert goaway[0].additional_data == b"bye" and goaway[0].last_stream_id == 3
    assert s.local_goaway == (0, 3)  # what the C glue saw go out


def test_ping_ack_and_peer_goaway_with_debug_data() -> None:
    srv, cl = peer(False), H2ClientSession()
    srv.receive_data(cl.data_to_send())
    cl.receive_data(srv.data_to_send())
    cl.ping(b"pingpong")
    srv.receive_data(cl.data_to_send())
    events = cl.receive_data(srv.data_to_send())
    assert of(events, PingAcknowledged)[0].opaque == b"pingpong"
    sid = cl.send_request(REQ, end_stream=True)
    srv.receive_data(cl.data_to_send())
    srv.close_connection(error_code=0, additional_data=b"maintenance", last_stream_id=0)
    events = cl.receive_data(srv.data_to_send())
    term = of(events, ConnectionTerminated)[0]
    assert term.additional_data == b"maintenance" and term.last_stream_id == 0
    assert term.unprocessed_stream_ids == [sid]
    assert not cl.accepting_streams


def test_a_reset_from_the_peer_is_remote() -> None:
    c, s = peer(True), H2ServerSession()
    s.receive_data(c.data_to_send())
    c.receive_data(s.data_to_send())
    c.send_headers(1, REQ)
    s.receive_data(c.data_to_send())
    c.reset_stream(1, 0x2)
    events = s.receive_data(c.data_to_send())
    reset = of(events, StreamReset)[0]
    assert reset.stream_id == 1 and reset.error_code == 0x2 and reset.remote


def test_a_burst_does_not_keep_its_buffers() -> None:
    """The log and the output buffer shrink back after a burst (an idle session stays small)."""
    c, s = peer(True), H2ServerSession()
    c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    c.increment_flow_control_window(1 << 20)
    s.receive_data(c.data_to_send())
    c.receive_data(s.data_to_send())
    c.send_headers(1, REQ)
    for _ in range(4):
        c.send_data(1, b"x" * 15000)
    c.end_stream(1)
    events = s.receive_data(c.data_to_send())
    assert sum(len(e.data) for e in of(events, DataReceived)) == 60000
    assert s._hdrs.log_len == 0 and s._hdrs.log_cap <= 16384
    s.send_headers(1, [(":status", "200")])
    s.send_data(1, b"y" * 200_000, end_stream=True)
    out = s.data_to_send()
    assert len(out) > 200_000 and s._hdrs.out_cap >= len(out)
    body = b"".join(e.data for e in c.receive_data(out) if isinstance(e, h2.events.DataReceived))
    assert body == b"y" * 200_000
    assert s.data_to_send() == b""
    assert s._hdrs.out_cap <= 65536 and s._hdrs.log_len == 0


@pytest.mark.parametrize("limit", [1, 100, 1 << 20])
def test_data_to_send_honours_its_limit(limit: int) -> None:
    c, s = peer(True), H2ServerSession()
    s.receive_data(c.data_to_send())
    c.receive_data(s.data_to_send())
    c.send_headers(1, REQ, end_stream=True)
    s.receive_data(c.data_to_send())
    s.send_headers(1, [(":status", "200")])
    s.send_data(1, b"z" * 40000, end_stream=True)
    chunks = []
    while out := s.data_to_send(limit):
        chunks.append(out)
    body = b"".join(e.data for e in c.receive_data(b"".join(chunks)) if isinstance(e, h2.events.DataReceived))
    assert body == b"z" * 40000
    if limit == 1:
        assert len(chunks) > 2  # one mem_send piece per call once over the limit


# --- whole bodies the glue owns (send_response: NO_COPY data provider + send_data_callback) ---
def opened(n: int = 1, window: int | None = None) -> tuple[h2.connection.H2Connection, H2ServerSession]:
    c, s = peer(True), H2ServerSession()
    if window is not None:
        c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
    s.receive_data(c.data_to_send())
    c.receive_data(s.data_to_send())
    for i in range(n):
        c.send_headers(1 + 2 * i, REQ, end_stream=True)
    s.receive_data(c.data_to_send())
    return c, s


@pytest.mark.parametrize("size", [1, 3000, BODY_BY_REFERENCE - 1, BODY_BY_REFERENCE, 204_800])
def test_a_whole_body_goes_out_under_flow_control(size: int) -> None:
    """Copied into the glue (small) or framed by reference and spliced (large): the same
    bytes, in windows of 1500, END_STREAM on the last frame."""
    c, s = opened(window=1500)
    body = (bytes(range(256)) * (size // 256 + 1))[:size]
    assert s.send_response(1, [(":status", "200"), ("Content-Length", str(len(body)))], body)
    got = b""
    ended = False
    for _ in range(size // 1500 + 5):
        events = c.receive_data(s.data_to_send())
        for ev in events:
            if isinstance(ev, h2.events.ResponseReceived):
                assert (b"content-length", str(size).encode()) in ev.headers  # lower-cased in C
            elif isinstance(ev, h2.events.DataReceived):
                got += ev.data
                c.acknowledge_received_data(ev.flow_controlled_length, 1)
            elif isinstance(ev, h2.events.StreamEnded):
                ended = True
        s.receive_data(c.data_to_send())
        if ended:
            break
    assert got == body and ended
    assert s._hdrs.bodies == _binding.ffi.NULL  # freed after its last frame
    assert s.open_streams == 0


def test_bodies_by_reference_interleave_with_other_frames() -> None:
    """Several large bodies, heads and a PING ACK in one output: every payload lands in its
    frame (the splice offsets), in stream order the peer can parse."""
    c, s = opened(3)
    bodies = {sid: bytes([sid]) * (5000 + 100 * sid) for sid in (1, 3, 5)}
    for sid, body in bodies.items():
        s.send_response(sid, [(":status", "200")], body)
    c.ping(b"pingpong")
    s.receive_data(c.data_to_send())
    got: dict[int, bytes] = {1: b"", 3: b"", 5: b""}
    for ev in c.receive_data(s.data_to_send()):
        if isinstance(ev, h2.events.DataReceived):
            got[ev.stream_id] += ev.data
    assert got == bodies


def test_a_body_reset_midway_is_freed_and_the_session_carries_on() -> None:
    c, s = opened(2, window=1000)
    s.send_response(1, [(":status", "200")], b"a" * 5000)
    s.send_response(3, [(":status", "200")], b"b" * 5000)
    c.receive_data(s.data_to_send())
    assert s._hdrs.bodies != _binding.ffi.NULL
    c.reset_stream(1, 0x8)
    s.receive_data(c.data_to_send())
    c.acknowledge_received_data(1000, 3)
    c.increment_flow_control_window(10_000, stream_id=3)
    s.receive_data(c.data_to_send())
    rest = b"".join(e.data for e in c.receive_data(s.data_to_send()) if isinstance(e, h2.events.DataReceived))
    assert rest == b"b" * 4000
    assert s._hdrs.bodies == _binding.ffi.NULL


def test_a_session_released_with_a_body_pending_frees_it() -> None:
    c, s = opened(window=100)
    s.send_response(1, [(":status", "200")], b"x" * 10_000)
    c.receive_data(s.data_to_send())
    assert s._hdrs.bodies != _binding.ffi.NULL
    s.release()  # mh2_hdrs_free walks the list (ASan's leak check in .ci/sanitize would see it)
    assert s.closed


def test_send_response_refuses_a_second_head_and_a_gone_stream() -> None:
    _, s = opened()
    s.send_response(1, [(":status", "200")], b"ok")
    with pytest.raises(H2Error, match="twice"):
        s.send_response(1, [(":status", "200")], b"ok")
    assert s.send_response(99, [(":status", "200")], b"ok") is False
    _, s2 = opened()
    with pytest.raises(H2Error, match="NUL"):
        s2.send_response(1, [(":status", "200"), ("x", "a\0b")], b"ok")


# --- relayed HTTP/1.1 heads (Response.head_block) -> HEADERS, parsed in C ----------------------
RELAYED = [
    b"server: nginx\r\ndate: Mon, 07 Dec 2026 13:00:00 GMT\r\ncontent-type: text/plain\r\n",
    b"x-colon: a: b: c\r\nx-empty: \r\nx-ws: in the middle\r\n",
    b"authorization: secret\r\nset-cookie: a=b\r\ncookie: c=1\r\n",
    b"".join(b"x-f%d: %s\r\n" % (i, b"v" * 60) for i in range(90)),  # > 64 fields, > 4 KiB
]


@pytest.mark.parametrize("lines", RELAYED)
@pytest.mark.parametrize("body", [b"", b"hello", b"z" * 5000])
def test_relayed_lines_match_the_python_parse(lines: bytes, body: bytes) -> None:
    """The C line parser against its Python twin, Response.headers (worker/http/message.py),
    which the list path sends: the peer sees the same fields either way."""
    from monolake.worker.http.message import Response

    twin = Response(200, head_block=lines).headers
    c, s = opened(window=1 << 20)
    c.increment_flow_control_window(1 << 20)
    head = [(":status", "200"), ("content-length", str(len(body)))]
    assert s.send_response(1, head, body, lines)
    events = c.receive_data(s.data_to_send())
    got = of(events, h2.events.ResponseReceived)[0].headers
    assert got == [(b":status", b"200"), (b"content-length", str(len(body)).encode()), *twin]
    assert b"".join(e.data for e in of(events, h2.events.DataReceived)) == body
    assert of(events, h2.events.StreamEnded)


def test_relayed_names_are_lower_cased_and_bad_lines_refused() -> None:
    c, s = opened(2)
    s.send_response(1, [(":status", "204")], b"", b"X-Mixed-Case: Keep\r\n")
    got = of(c.receive_data(s.data_to_send()), h2.events.ResponseReceived)[0].headers
    assert got == [(b":status", b"204"), (b"x-mixed-case", b"Keep")]
    for bad in (b"no-colon\r\n", b"x: no crlf", b": empty-name\r\n", b"x: bare lf\n", b"x:no-space\r\n"):
        with pytest.raises(H2Error):
            s.send_response(3, [(":status", "200")], b"", bad)
        s._streams[3].local_done = False  # the refused submit left the stream as it was
