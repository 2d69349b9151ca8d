"""The sessions against the ``h2`` Python library as the peer, over in-memory bytes."""

from __future__ import annotations

import gc

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import hpack
import hyperframe.frame as hf
import pytest

from monolake.worker.h2 import H2ClientSession, H2Error, H2ServerSession, H2Settings
from monolake.worker.h2 import events as mlk
from monolake.worker.h2.session import _Session

REQ = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":authority", b"example.test"),
    (b":path", b"/svc/Method"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
]


def lib_client() -> h2.connection.H2Connection:
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    c.initiate_connection()
    return c


def lib_server(max_concurrent_streams: int | None = None) -> h2.connection.H2Connection:
    s = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    if max_concurrent_streams is not None:
        s.local_settings = h2.settings.Settings(
            client=False,
            initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams},
        )
    s.initiate_connection()
    return s


def to_ours(peer: h2.connection.H2Connection, ours) -> list:
    return ours.receive_data(peer.data_to_send())


def to_peer(ours, peer: h2.connection.H2Connection) -> list:
    events: list[object] = []
    while True:
        data = ours.data_to_send()
        if not data:
            return events
        events += peer.receive_data(data)


def of(events: list, kind: type) -> list:
    return [e for e in events if isinstance(e, kind)]


# --- server side -------------------------------------------------------------------------
def test_server_request_body_response_and_grpc_trailers() -> None:
    c, s = lib_client(), H2ServerSession()
    c.send_headers(1, REQ)
    c.send_data(1, b"\0\0\0\0\x05hello")
    c.send_headers(1, [(b"x-client-trailer", b"1")], end_stream=True)
    events = to_ours(c, s)
    assert of(events, mlk.RemoteSettingsChanged)[0].changed  # the client's SETTINGS
    req = of(events, mlk.RequestReceived)[0]
    assert req.stream_id == 1 and req.headers == REQ and not req.end_stream
    data = of(events, mlk.DataReceived)
    assert b"".join(d.data for d in data) == b"\0\0\0\0\x05hello"
    assert of(events, mlk.TrailersReceived)[0].headers == [(b"x-client-trailer", b"1")]
    assert of(events, mlk.StreamEnded)[0].stream_id == 1
    for d in data:
        s.acknowledge_received_data(1, d.flow_controlled_length)

    assert s.send_headers(1, [(":status", "200"), ("content-type", "application/grpc")])
    s.send_data(1, b"\0\0\0\0\x02ok")
    s.send_trailers(1, [("grpc-status", "0"), ("grpc-message", "fine"), ("x-meta", "v")])
    peer = to_peer(s, c)
    assert of(peer, h2.events.ResponseReceived)[0].headers[0] == (b":status", b"200")
    assert b"".join(e.data for e in of(peer, h2.events.DataReceived)) == b"\0\0\0\0\x02ok"
    trailers = of(peer, h2.events.TrailersReceived)[0]
    assert trailers.headers == [(b"grpc-status", b"0"), (b"grpc-message", b"fine"), (b"x-meta", b"v")]
    assert of(peer, h2.events.StreamEnded)
    assert of(s.pop_events(), mlk.StreamClosed)[0].stream_id == 1
    assert s.open_streams == 0


def test_server_trailers_only_response_and_informational() -> None:
    c, s = lib_client(), H2ServerSession()
    c.send_headers(1, [*REQ, (b"expect", b"100-continue")])
    to_ours(c, s)
    s.send_headers(1, [(":status", "100")])
    s.send_headers(
        1,
        [
            (":status", "200"),
            ("content-type", "application/grpc"),
            ("grpc-status", "12"),
            ("grpc-message", "unimplemented"),
        ],
        end_stream=True,
    )
    peer = to_peer(s, c)
    assert of(peer, h2.events.InformationalResponseReceived)[0].headers == [(b":status", b"100")]
    final = of(peer, h2.events.ResponseReceived)[0]
    assert (b"grpc-status", b"12") in final.headers
    assert of(peer, h2.events.StreamEnded)
    with pytest.raises(H2Error, match="after the end"):
        s.send_trailers(1, [("grpc-status", "0")])


def test_client_rst_stream_is_a_remote_reset_and_later_sends_are_dropped() -> None:
    c, s = lib_client(), H2ServerSession()
    c.send_headers(1, REQ)
    to_ours(c, s)
    s.send_headers(1, [(":status", "200")])
    to_peer(s, c)
    c.reset_stream(1, h2.errors.ErrorCodes.CANCEL)
    reset = of(to_ours(c, s), mlk.StreamReset)[0]
    assert (reset.stream_id, reset.error_code, reset.remote) == (1, 8, True)
    assert s.send_data(1, b"late") == -1  # the stream is gone: the caller just drops it
    assert s.send_headers(1, [(":status", "200")]) is False
    assert s.open_streams == 0


def test_server_reset_stream_reaches_the_peer() -> None:
    c, s = lib_client(), H2ServerSession()
    c.send_headers(1, REQ)
    to_ours(c, s)
    assert s.reset_stream(1, 0x7)  # REFUSED_STREAM
    peer = to_peer(s, c)
    assert of(peer, h2.events.StreamReset)[0].error_code == h2.errors.ErrorCodes.REFUSED_STREAM
    reset = of(s.pop_events(), mlk.StreamReset)[0]
    assert reset.remote is False and reset.error_code == 7


def test_graceful_drain_goaway_after_one_round_trip() -> None:
    """Shutdown notice + PING; the final GOAWAY names the last accepted stream; in-flight
    streams finish; a stream opened after it is ignored; then the session is closed."""
    c, s = lib_client(), H2ServerSession()
    c.send_headers(1, REQ)  # in flight
    to_ours(c, s)
    s.start_graceful_shutdown()
    notice_bytes = s.data_to_send()
    c.send_headers(3, REQ, end_stream=True)  # sent before the client saw the notice
    raced = c.data_to_send()
    notice = of(c.receive_data(notice_bytes), h2.events.ConnectionTerminated)[0]
    assert notice.last_stream_id == 2**31 - 1 and notice.error_code == 0
    # the h2 library stops answering PINGs once it has seen any GOAWAY; real clients (nghttp2,
    # Go, grpc) do answer, so the test sends the ACK they would
    ping = next(f for f in _frames(notice_bytes) if f.type == 0x6)
    ack = hf.PingFrame(0, flags=("ACK",))
    ack.opaque_data = ping.opaque_data
    events = s.receive_data(raced + ack.serialize())  # stream 3, then the PING ACK
    assert [e.stream_id for e in of(events, mlk.RequestReceived)] == [3]
    assert of(events, mlk.PingAcknowledged)
    final = s.data_to_send()
    frames = list(_frames(final))
    assert [(f.last_stream_id, f.error_code) for f in frames if f.type == 0x7] == [(3, 0)]
    # a stream opened after the final GOAWAY is not processed
    late = hf.HeadersFrame(5, flags=("END_HEADERS", "END_STREAM"))
    late.data = hpack.Encoder().encode(REQ)
    assert not of(s.receive_data(late.serialize()), mlk.RequestReceived)
    assert not s.closed  # streams 1 and 3 are still open
    for sid in (1, 3):
        s.send_headers(sid, [(":status", "200")])
        s.send_data(sid, b"done", end_stream=True)
    s.data_to_send()
    end = hf.DataFrame(1)
    end.flags.add("END_STREAM")
    s.receive_data(end.serialize())
    s.data_to_send()
    assert s.closed and s.open_streams == 0


def _frames(data: bytes):
    view = memoryview(data)
    while view:
        frame, length = hf.Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9 : 9 + length])
        yield frame
        view = view[9 + length :]


def test_oversized_header_list_resets_only_that_stream() -> None:
    c, s = lib_client(), H2ServerSession(H2Settings(max_header_list_size=4096))
    c.send_headers(1, [*REQ, (b"x-big", b"a" * 8000)], end_stream=True)
    c.send_headers(3, REQ, end_stream=True)
    events = to_ours(c, s)
    assert [e.stream_id for e in of(events, mlk.RequestReceived)] == [3]
    peer = to_peer(s, c)
    assert [e.stream_id for e in of(peer, h2.events.StreamReset)] == [1]
    assert not s.closed


def test_inbound_flow_control_waits_for_acknowledgement() -> None:
    """Bytes not acknowledged keep the peer's window closed: at most one window is buffered."""
    c, s = lib_client(), H2ServerSession(H2Settings(initial_window_size=65_535))
    c.send_headers(1, REQ)
    to_ours(c, s)
    to_peer(s, c)  # our SETTINGS (and the 1 MiB connection window)
    sent = 0
    while c.local_flow_control_window(1) > 0:
        n = min(c.local_flow_control_window(1), c.max_outbound_frame_size)
        c.send_data(1, b"x" * n)
        sent += n
    got = sum(len(e.data) for e in of(to_ours(c, s), mlk.DataReceived))
    assert got == sent == 65_535
    to_peer(s, c)
    assert c.local_flow_control_window(1) == 0  # nothing acknowledged: still closed
    s.acknowledge_received_data(1, got)
    to_peer(s, c)
    assert c.local_flow_control_window(1) == 65_535


# --- client side -------------------------------------------------------------------------
def test_client_multiplexed_requests_with_bodies_and_trailers() -> None:
    srv, cl = lib_server(), H2ClientSession()
    ids = []
    for i in range(5):
        sid = cl.send_request(REQ)
        cl.send_data(sid, b"body-%d" % i)
        cl.send_trailers(sid, [("x-trailer", str(i))])
        ids.append(sid)
    assert ids == [1, 3, 5, 7, 9]
    peer = to_peer(cl, srv)
    assert [e.stream_id for e in of(peer, h2.events.RequestReceived)] == ids
    assert {e.stream_id: e.data for e in of(peer, h2.events.DataReceived)} == {
        sid: b"body-%d" % i for i, sid in enumerate(ids)
    }
    assert [e.headers for e in of(peer, h2.events.TrailersReceived)] == [
        [(b"x-trailer", str(i).encode())] for i in range(5)
    ]
    for sid in reversed(ids):  # answered out of order
        srv.send_headers(sid, [(b":status", b"200")])
        srv.send_data(sid, b"resp-%d" % sid)
        srv.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
    events = to_ours(srv, cl)
    assert [e.stream_id for e in of(events, mlk.ResponseReceived)] == list(reversed(ids))
    assert all(e.headers == [(b"grpc-status", b"0")] for e in of(events, mlk.TrailersReceived))
    assert {e.stream_id for e in of(events, mlk.StreamClosed)} == set(ids)
    assert cl.open_streams == 0


def test_client_honours_max_concurrent_streams() -> None:
    srv, cl = lib_server(max_concurrent_streams=2), H2ClientSession()
    assert cl.available_streams == H2ClientSession.ASSUMED_MAX_STREAMS  # before SETTINGS
    to_peer(cl, srv)
    to_ours(srv, cl)
    assert cl.max_concurrent_streams == 2 and cl.available_streams == 2
    a = cl.send_request(REQ, end_stream=True)
    cl.send_request(REQ, end_stream=True)
    assert cl.available_streams == 0
    to_peer(cl, srv)
    srv.send_headers(a, [(b":status", b"204")], end_stream=True)
    to_ours(srv, cl)
    assert cl.available_streams == 1


def test_client_goaway_tells_which_streams_to_retry() -> None:
    srv, cl = lib_server(), H2ClientSession()
    ids = [cl.send_request(REQ, end_stream=True) for _ in range(4)]
    to_peer(cl, srv)
    srv.close_connection(error_code=0, last_stream_id=3)
    events = to_ours(srv, cl)
    goaway = of(events, mlk.ConnectionTerminated)[0]
    assert goaway.last_stream_id == 3 and goaway.unprocessed_stream_ids == ids[2:]
    resets = {e.stream_id: e for e in of(events, mlk.StreamReset)}
    assert sorted(resets) == ids[2:] and all(r.retryable for r in resets.values())
    assert not cl.accepting_streams and cl.available_streams == 0
    with pytest.raises(H2Error, match="going away"):
        cl.send_request(REQ)


def test_client_informational_then_final_response() -> None:
    srv, cl = lib_server(), H2ClientSession()
    sid = cl.send_request([*REQ, (b"expect", b"100-continue")])
    to_peer(cl, srv)
    srv.send_headers(sid, [(b":status", b"100")])
    srv.send_headers(sid, [(b":status", b"200")], end_stream=True)
    events = to_ours(srv, cl)
    assert of(events, mlk.InformationalResponseReceived)[0].headers == [(b":status", b"100")]
    assert of(events, mlk.ResponseReceived)[0].end_stream


# --- both ours: flow-control backpressure over a 64 MiB body ----------------------------
def test_64mib_echo_keeps_buffers_bounded() -> None:
    """Client uploads 64 MiB; the server echoes it, acknowledging input only while its send
    queue is under a high-water mark (the response window is the limit). Peak buffering stays
    within a
    few windows on both sides however big the body."""
    total, chunk, high = 64 << 20, 64 << 10, 256 << 10
    s, cl = H2ServerSession(), H2ClientSession()
    sid = cl.send_request(REQ)
    sent = received = 0
    held = 0
    peak_server = peak_client = 0
    done = False
    rounds = 0
    while not done:
        rounds += 1
        assert rounds < 200_000
        while sent < total and cl.stream_buffered(sid) < high:
            n = min(chunk, total - sent)
            cl.send_data(sid, b"u" * n, end_stream=sent + n == total)
            sent += n
        peak_client = max(peak_client, cl.buffered)
        for ev in s.receive_data(cl.data_to_send()):
            if isinstance(ev, mlk.RequestReceived):
                s.send_headers(ev.stream_id, [(":status", "200")])
            elif isinstance(ev, mlk.DataReceived):
                if s.send_data(sid, ev.data) >= high or held:
                    held += ev.flow_controlled_length
                else:
                    s.acknowledge_received_data(sid, ev.flow_controlled_length)
            elif isinstance(ev, mlk.StreamEnded):
                s.send_trailers(sid, [("grpc-status", "0")])
        peak_server = max(peak_server, s.buffered + held)
        out = s.data_to_send()
        for ev in s.pop_events():
            if isinstance(ev, mlk.StreamWritable) and held:
                s.acknowledge_received_data(sid, held)
                held = 0
        for ev in cl.receive_data(out):
            if isinstance(ev, mlk.DataReceived):
                received += len(ev.data)
                cl.acknowledge_received_data(sid, ev.flow_controlled_length)
            elif isinstance(ev, mlk.TrailersReceived):
                assert ev.headers == [(b"grpc-status", b"0")]
                done = True
        cl.pop_events()
    assert sent == received == total
    assert peak_server <= high + 2 * 65_535 + chunk, peak_server
    assert peak_client <= high + chunk, peak_client


def test_sessions_are_freed_when_dropped() -> None:
    gc.collect()
    before = len(_Session._live)
    sessions = [H2ServerSession() for _ in range(200)]
    assert len(_Session._live) == before + 200
    del sessions  # no reference cycle: refcounting frees them (workers may tune the GC)
    assert len(_Session._live) == before


def test_settings_frame_with_too_many_entries_ends_the_session() -> None:
    """max_settings: one SETTINGS frame with 100 entries gets GOAWAY(ENHANCE_YOUR_CALM)."""
    c, s = lib_client(), H2ServerSession()
    to_ours(c, s)
    flood = hf.SettingsFrame(0)
    flood.settings = {i: 1 for i in range(100, 200)}
    s.receive_data(flood.serialize())
    goaway = [f for f in _frames(s.data_to_send()) if f.type == 0x7]
    assert goaway and goaway[0].error_code == 0xB
    assert s.closed and "too many setting entries" in s.failure


def test_garbage_instead_of_the_preface_fails_cleanly() -> None:
    """An HTTP/1.1 request (or noise) on an h2 session: a clear failure, no GOAWAY, closed."""
    s = H2ServerSession()
    events = s.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(events[-1], mlk.ConnectionTerminated) and not events[-1].remote
    assert "magic" in s.failure.lower() and s.closed
    assert s.receive_data(b"more") == []  # a failed session ignores further input


def test_header_fields_round_trip_through_the_c_glue() -> None:
    """Names are lower-cased, values (empty, binary-ish, long, many fields) arrive intact, a
    NUL inside a field is refused before it reaches the wire."""
    c, s = lib_client(), H2ServerSession()
    extra = [(b"x-empty", b""), (b"x-bin", bytes(range(33, 127))), (b"x-long", b"v" * 20_000)]
    extra += [(b"x-f%d" % i, b"%d" % i) for i in range(100)]  # more than the C stack array
    c.send_headers(1, REQ + extra, end_stream=True)
    req = of(to_ours(c, s), mlk.RequestReceived)[0]
    assert req.headers == REQ + extra
    many = [(":status", "200"), ("X-Upper", "Keep-Case"), *((f"x-r{i}", "r") for i in range(80))]
    s.send_headers(1, many, end_stream=True)
    got = of(to_peer(s, c), h2.events.ResponseReceived)[0].headers
    assert got[1] == (b"x-upper", b"Keep-Case") and len(got) == 82
    c.send_headers(3, REQ, end_stream=True)
    to_ours(c, s)
    with pytest.raises(H2Error, match="NUL"):
        s.send_headers(3, [(":status", "200"), ("x-bad", "a\0b")])


def test_an_exception_in_a_callback_surfaces_and_ends_the_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in our event code must not unwind through C nor be swallowed: receive_data
    raises it, and the session takes no more input."""
    c, s = lib_client(), H2ServerSession()

    def boom(*args: object) -> None:
        raise RuntimeError("bug in an event handler")

    monkeypatch.setattr(s, "_on_frame", boom)
    with pytest.raises(RuntimeError, match="bug in an event handler"):
        to_ours(c, s)
    assert s.closed
    assert s.receive_data(b"\0" * 9) == []


def test_idle_session_memory_is_small() -> None:
    """What an idle h2 connection costs in the engine (nghttp2 state + our buffers): about
    15 KB measured; the bound leaves room for allocator noise."""

    def rss_kb() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    c = lib_client()
    hello = c.data_to_send()
    gc.collect()
    before = rss_kb()
    sessions = []
    for _ in range(2000):
        s = H2ServerSession()
        s.receive_data(hello)
        s.data_to_send()
        sessions.append(s)
    per_session = (rss_kb() - before) * 1024 / len(sessions)
    assert per_session < 64 * 1024, per_session
    del sessions


def test_a_released_session_is_inert() -> None:
    """After release() (connection gone) a stray call is a no-op or an H2Error, never a use of
    freed nghttp2 memory."""
    c, s = lib_client(), H2ServerSession()
    c.send_headers(1, REQ)
    to_ours(c, s)
    s.release()
    assert s.closed and s.data_to_send() == b"" and s.receive_data(b"x") == []
    assert s.send_headers(1, [(":status", "200")]) is False and s.send_data(1, b"x") == -1
    s.start_graceful_shutdown()
    s.close()
    with pytest.raises(H2Error, match="released"):
        s.ping()
    cl = H2ClientSession()
    cl.release()
    assert cl.available_streams == 0
    with pytest.raises(H2Error):
        cl.send_request(REQ)


def test_requests_queued_beyond_the_stream_limit_are_retryable_after_goaway() -> None:
    """nghttp2 holds requests above MAX_CONCURRENT_STREAMS; a GOAWAY refuses them too, so each
    gets a retryable mlk.StreamReset (some only once data_to_send runs) and none is lost."""
    srv, cl = lib_server(max_concurrent_streams=2), H2ClientSession()
    to_peer(cl, srv)
    to_ours(srv, cl)
    to_peer(cl, srv)
    ids = [cl.send_request(REQ, end_stream=True) for _ in range(4)]
    assert [e.stream_id for e in of(to_peer(cl, srv), h2.events.RequestReceived)] == ids[:2]
    srv.close_connection(error_code=0, last_stream_id=ids[0])
    events = to_ours(srv, cl)
    assert of(events, mlk.ConnectionTerminated)[0].unprocessed_stream_ids == ids[1:]
    cl.data_to_send()
    resets = of(events + cl.pop_events(), mlk.StreamReset)
    assert sorted(r.stream_id for r in resets) == ids[1:]
    assert all(r.retryable and r.error_code == 7 for r in resets)
    assert cl.open_streams == 1  # stream 1 is still answered


def test_streams_beyond_our_limit_are_refused() -> None:
    """A client ignoring our MAX_CONCURRENT_STREAMS: the extra streams get
    RST_STREAM(REFUSED_STREAM) and never reach the application."""
    s = H2ServerSession(H2Settings(max_concurrent_streams=50))
    enc = hpack.Encoder()
    frames = [hf.SettingsFrame(0).serialize()]
    for i in range(80):
        f = hf.HeadersFrame(2 * i + 1, flags=("END_HEADERS",))
        f.data = enc.encode(REQ)
        frames.append(f.serialize())
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    s.data_to_send()  # our SETTINGS went out first
    events = s.receive_data(preface + b"".join(frames))
    assert len(of(events, mlk.RequestReceived)) == 50
    refused = [f for f in _frames(s.data_to_send()) if f.type == 0x3]
    assert len(refused) == 30 and all(f.error_code == 7 for f in refused)


def test_streams_opened_and_reset_in_one_read_never_reach_the_application() -> None:
    """The rapid-reset pattern costs the application nothing: a request whose RST_STREAM came
    in the same receive_data call produces no event at all (counted in cancelled_early);
    a reset in a later read is still reported."""
    c, s = lib_client(), H2ServerSession()
    to_ours(c, s)
    for _ in range(500):
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, REQ, end_stream=True)
        c.reset_stream(sid)
    c.send_headers(1001, REQ)  # a normal request in the same read
    events = to_ours(c, s)
    assert [e.stream_id for e in of(events, mlk.RequestReceived)] == [1001]
    assert not of(events, mlk.StreamReset) and s.cancelled_early == 500
    c.reset_stream(1001)
    reset = of(to_ours(c, s), mlk.StreamReset)
    assert [r.stream_id for r in reset] == [1001] and s.cancelled_early == 500
