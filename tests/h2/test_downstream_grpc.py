"""gRPC end to end: a grpcio client -> a real worker (h2c and TLS) -> a grpcio server (generic
handlers on raw bytes, in this process so the test sees what the server saw). The four call
shapes, status + details + trailing metadata, a multi-MiB message, concurrent calls on one
channel, cancellation both ways, grpc-timeout as the proxy's deadline, and the proxy's own
failures as trailers-only gRPC responses."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest

from tests.h2.peer import H2LibClient, Response
from tests.h2.test_downstream import config
from tests.h2.test_upstream_h2 import daemon_config
from tests.http.certs import Cert, make_ca, make_cert
from tests.http.conftest import run_worker
from tests.http.upstream import UpstreamServer
from tests.support import free_port, wait_for

grpc = pytest.importorskip("grpc")

BIG = bytes(range(256)) * (3 * 4096)  # 3 MiB
CHUNK = bytes(range(256)) * 4096  # 1 MiB, one message of the streaming soak
SOAK = os.environ.get("MONOLAKE_SOAK") == "1"
# the streaming soak: 1 GiB each way with MONOLAKE_SOAK=1, 64 MiB by default, the same bound
STREAM_MIB = 1024 if SOAK else 64
STREAM_RSS_GROWTH_KIB = 8 * 1024  # measured: < 0.5 MiB at 64 MiB and at 1 GiB
OPTIONS = [("grpc.max_receive_message_length", 16 << 20), ("grpc.max_send_message_length", 16 << 20)]


class Servicer:
    """The upstream's methods; ``started`` / ``cancelled`` say what it saw of Hang."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.cancelled = threading.Event()

    def unary(self, req: bytes, ctx: Any) -> bytes:
        if req == b"fail":
            ctx.set_trailing_metadata((("x-detail", "custom"),))
            ctx.abort(grpc.StatusCode.PERMISSION_DENIED, "no entry")
        ctx.set_trailing_metadata((("x-echo-len", str(len(req))),))
        return req[::-1]

    def server_stream(self, req: bytes, ctx: Any) -> Iterator[bytes]:
        for i in range(req[0]):
            yield bytes([i]) + req

    def client_stream(self, reqs: Iterator[bytes], ctx: Any) -> bytes:
        parts = list(reqs)
        ctx.set_trailing_metadata((("x-count", str(len(parts))),))
        return b"|".join(parts)

    def bidi(self, reqs: Iterator[bytes], ctx: Any) -> Iterator[bytes]:
        for r in reqs:
            yield r.upper()

    def hang(self, req: bytes, ctx: Any) -> bytes:
        ctx.add_callback(self.cancelled.set)
        self.started.set()
        self.cancelled.wait(20)
        return b"late"

    def slow(self, req: bytes, ctx: Any) -> Iterator[bytes]:
        for i in range(req[0]):
            time.sleep(0.2)
            yield bytes([i])

    def source(self, req: bytes, ctx: Any) -> Iterator[bytes]:
        """``int(req)`` messages of CHUNK, as fast as flow control lets them out."""
        for _ in range(int(req)):
            yield CHUNK

    def sink(self, reqs: Iterator[bytes], ctx: Any) -> bytes:
        """Reads slowly at first (1 s before the first message), then everything: its
        length and SHA-256."""
        time.sleep(1.0)
        digest, n = hashlib.sha256(), 0
        for r in reqs:
            digest.update(r)
            n += len(r)
        return b"%d:%s" % (n, digest.hexdigest().encode())

    def server_cancel(self, req: bytes, ctx: Any) -> Iterator[bytes]:
        yield b"first"
        time.sleep(0.2)
        ctx.cancel()


@pytest.fixture
def upstream() -> Iterator[tuple[int, Servicer]]:
    svc = Servicer()
    handler = grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(svc.unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(svc.server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(svc.client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(svc.bidi),
            "Hang": grpc.unary_unary_rpc_method_handler(svc.hang),
            "ServerCancel": grpc.unary_stream_rpc_method_handler(svc.server_cancel),
            "Slow": grpc.unary_stream_rpc_method_handler(svc.slow),
            "Source": grpc.unary_stream_rpc_method_handler(svc.source),
            "Sink": grpc.stream_unary_rpc_method_handler(svc.sink),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port, svc
    finally:
        server.stop(0)


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Cert, Cert]:
    ca = make_ca(tmp_path)
    return ca, make_cert(tmp_path, ca, "monolake", ["127.0.0.1"])


def channel(port: int, ca: Cert | None = None) -> Any:
    if ca is None:
        return grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS)
    creds = grpc.ssl_channel_credentials(root_certificates=ca.chain.read_bytes())
    return grpc.secure_channel(f"127.0.0.1:{port}", creds, options=OPTIONS)


def proxy(up_port: int, **kw: object) -> str:
    return config(up_port, version="http2", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
def test_call_shapes_status_and_metadata(
    tmp_path: Path, upstream: tuple[int, Servicer], pki: tuple[Cert, Cert], tls: bool
) -> None:
    up_port, _svc = upstream
    ca, cert = pki
    with (
        run_worker(tmp_path, proxy(up_port, tls=cert if tls else None)) as w,
        channel(w.port(), ca if tls else None) as ch,
    ):
        unary = ch.unary_unary("/test.Echo/Unary")
        resp, call = unary.with_call(b"hello grpc", timeout=10)
        assert resp == b"cprg olleh"
        assert dict(call.trailing_metadata())["x-echo-len"] == "10"
        assert call.code() == grpc.StatusCode.OK

        with pytest.raises(grpc.RpcError) as err:
            unary(b"fail", timeout=10)
        e = err.value
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED and e.details() == "no entry"
        assert dict(e.trailing_metadata())["x-detail"] == "custom"

        assert unary(BIG, timeout=20) == BIG[::-1]  # 3 MiB each way

        stream = ch.unary_stream("/test.Echo/ServerStream")
        assert list(stream(b"\x05ab", timeout=10)) == [bytes([i]) + b"\x05ab" for i in range(5)]

        client = ch.stream_unary("/test.Echo/ClientStream")
        resp, call = client.with_call(iter([b"a", b"bb", BIG]), timeout=20)
        assert resp == b"a|bb|" + BIG and dict(call.trailing_metadata())["x-count"] == "3"

        # bidi, ping-pong: each answer arrives before the next request is sent
        queue: list[bytes] = []
        ready = threading.Event()

        def requests() -> Iterator[bytes]:
            for word in (b"one", b"two", b"three"):
                ready.clear()
                queue.append(word)
                yield word
                assert ready.wait(10), f"no answer to {word!r} before the next request"

        answers = []
        for a in ch.stream_stream("/test.Echo/Bidi")(requests(), timeout=20):
            answers.append(a)
            ready.set()
        assert answers == [b"ONE", b"TWO", b"THREE"]

        # hundreds of concurrent calls on one channel (one h2 connection)
        calls = [unary.future(b"n%d" % i, timeout=30) for i in range(300)]
        assert [f.result() for f in calls] == [(b"n%d" % i)[::-1] for i in range(300)]
    lines = [ln for ln in w.log().splitlines() if '"event": "access"' in ln and '"2.0"' in ln]
    assert len(lines) == 306  # one access-log line per call (stream)


@pytest.mark.slow
def test_long_streams_keep_worker_memory_bounded(tmp_path: Path, upstream: tuple[int, Servicer]) -> None:
    """A server stream and a client stream of STREAM_MIB MiB each (1 GiB with MONOLAKE_SOAK=1)
    through the worker, each with a side that reads slowly at first (the client pauses 1 s
    after the first message; the upstream waits 1 s before reading): flow control holds the
    sender, the worker's peak RSS grows by less than STREAM_RSS_GROWTH_KIB whatever the size."""
    up_port, _svc = upstream
    with run_worker(tmp_path, proxy(up_port)) as w, channel(w.port()) as ch:
        assert ch.unary_unary("/test.Echo/Unary")(CHUNK, timeout=20) == CHUNK[::-1]  # warm up
        base = w.peak_rss_kib()
        n, first = 0, True
        for m in ch.unary_stream("/test.Echo/Source")(b"%d" % STREAM_MIB, timeout=600):
            assert m == CHUNK
            n += 1
            if first:
                first = False
                time.sleep(1.0)  # a slow reader: the upstream must stall, not the worker buffer
                assert w.peak_rss_kib() - base < STREAM_RSS_GROWTH_KIB, (base, w.peak_rss_kib())
        assert n == STREAM_MIB
        assert w.peak_rss_kib() - base < STREAM_RSS_GROWTH_KIB, (base, w.peak_rss_kib())

        digest = hashlib.sha256()
        for _ in range(STREAM_MIB):
            digest.update(CHUNK)
        answer = ch.stream_unary("/test.Echo/Sink")(iter([CHUNK] * STREAM_MIB), timeout=600)
        assert answer == b"%d:%s" % (STREAM_MIB << 20, digest.hexdigest().encode())
        assert w.peak_rss_kib() - base < STREAM_RSS_GROWTH_KIB, (base, w.peak_rss_kib())


def test_cancellation_both_ways(tmp_path: Path, upstream: tuple[int, Servicer]) -> None:
    up_port, svc = upstream
    with run_worker(tmp_path, proxy(up_port)) as w, channel(w.port()) as ch:
        # client cancels -> RST_STREAM(CANCEL) reaches the upstream, which sees the cancel
        fut = ch.unary_unary("/test.Echo/Hang").future(b"x", timeout=30)
        assert svc.started.wait(10)
        fut.cancel()
        assert svc.cancelled.wait(5), "the upstream never saw the client's cancel"
        # the upstream cancels mid-stream -> the client sees CANCELLED after the first message
        got = []
        with pytest.raises(grpc.RpcError) as err:
            for m in ch.unary_stream("/test.Echo/ServerCancel")(b"x", timeout=10):
                got.append(m)
        assert got == [b"first"] and err.value.code() == grpc.StatusCode.CANCELLED, err.value
        # the channel still works
        assert ch.unary_unary("/test.Echo/Unary")(b"ok", timeout=10) == b"ko"


def test_grpcio_deadline_cancels_the_upstream_call(tmp_path: Path, upstream: tuple[int, Servicer]) -> None:
    """A grpcio client's deadline (sent as grpc-timeout) on a call the upstream never answers:
    DEADLINE_EXCEEDED at the deadline, and the upstream's call is cancelled too (the proxy's
    own deadline or the client's RST_STREAM, whichever comes first, resets the upstream stream)."""
    up_port, svc = upstream
    with run_worker(tmp_path, proxy(up_port)) as w, channel(w.port()) as ch:
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            ch.unary_unary("/test.Echo/Hang")(b"x", timeout=0.5)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.value
        assert time.monotonic() - start < 3
        assert svc.started.is_set() and svc.cancelled.wait(5), "the upstream call was left running"
        assert ch.unary_unary("/test.Echo/Unary")(b"ok", timeout=10) == b"ko"


def test_grpc_timeout_is_the_upstream_deadline(tmp_path: Path) -> None:
    """grpc-timeout 300m to an HTTP/1.1 upstream that answers after 5 s: only the proxy can
    enforce it, with a trailers-only DEADLINE_EXCEEDED well before the upstream answers."""
    with UpstreamServer("slow") as up, run_worker(tmp_path, config(up.port)) as w:
        c = H2LibClient(w.port(), timeout=20)
        try:
            sid = c.conn.get_next_available_stream_id()
            c.conn.send_headers(
                sid,
                c.headers(
                    "/slow?delay=5",
                    "POST",
                    [("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "300m")],
                ),
                end_stream=True,
            )
            c.responses[sid] = Response()
            c.flush()
            start = time.monotonic()
            resp = c.wait(sid)
            took = time.monotonic() - start
            h = dict(resp.headers)
            assert h[b":status"] == b"200" and h[b"grpc-status"] == b"4", h
            assert b"grpc-timeout" in h[b"grpc-message"], h
            assert 0.25 <= took < 1.5, took
        finally:
            c.close()


def test_proxy_failures_are_grpc_statuses(tmp_path: Path, upstream: tuple[int, Servicer]) -> None:
    """No route -> UNIMPLEMENTED, upstream down -> UNAVAILABLE, upstream timeout ->
    DEADLINE_EXCEEDED: trailers-only responses a gRPC client reads, not HTTP error pages."""
    up_port, _svc = upstream
    cfg = proxy(up_port, server_extra="timeout = { upstream_read_timeout_sec = 0.5 }")
    cfg = cfg.replace('path_prefix = "/"', 'path_prefix = "/test.Echo/"')
    cfg += (
        f'\n[[servers.px.routes]]\npath_prefix = "/down.Svc/"\nupstream_http_version = "http2"\n'
        f'upstreams = [{{ endpoint = {{ type = "uri", value = "http://127.0.0.1:{free_port()}" }} }}]\n'
    )
    with run_worker(tmp_path, cfg) as w, channel(w.port()) as ch:
        cases = [
            ("/other.Svc/Call", grpc.StatusCode.UNIMPLEMENTED, "no route"),
            ("/down.Svc/Call", grpc.StatusCode.UNAVAILABLE, "connect to"),
            ("/test.Echo/Hang", grpc.StatusCode.DEADLINE_EXCEEDED, "timeout"),
        ]
        for path, code, words in cases:
            with pytest.raises(grpc.RpcError) as err:
                ch.unary_unary(path)(b"x", timeout=10)
            assert err.value.code() == code, (path, err.value)
            assert words in (err.value.details() or ""), (path, err.value.details())
        assert ch.unary_unary("/test.Echo/Unary")(b"ok", timeout=10) == b"ko"


def test_reload_under_grpc_load_loses_nothing(
    master_factory, tmp_path: Path, upstream: tuple[int, Servicer]
) -> None:
    """Through ``monolaked``: unary calls in a loop and a 3 s server stream while the daemon
    reloads. The stream finishes on the old generation (GOAWAY lets it), no unary call fails
    (grpcio sends new calls on a new connection after the GOAWAY), and calls go on after."""
    up_port, _svc = upstream
    port = free_port()
    m = master_factory(daemon_config(tmp_path, port, up_port))
    m.wait_ready()
    stop = threading.Event()
    done: list[bytes] = []
    failed: list[BaseException] = []
    with channel(port) as ch:
        unary = ch.unary_unary("/test.Echo/Unary")
        assert unary(b"warm", timeout=10) == b"mraw"

        def loop() -> None:
            i = 0
            while not stop.is_set():
                try:
                    assert unary(b"c%d" % i, timeout=10) == (b"c%d" % i)[::-1]
                    done.append(b"")
                except BaseException as exc:
                    failed.append(exc)
                i += 1

        caller = threading.Thread(target=loop)
        caller.start()
        stream = ch.unary_stream("/test.Echo/Slow")(bytes([15]), timeout=30)
        got = [next(stream)]
        wait_for(lambda: len(done) >= 20, 10, what="unary calls flowing")
        result = m.cli("reload", timeout=120)
        assert result.returncode == 0, result.stderr
        got += list(stream)  # the old worker's stream runs to its end
        before = len(done)
        wait_for(lambda: len(done) >= before + 50, 20, what="calls after the reload")
        stop.set()
        caller.join(15)
    assert got == [bytes([i]) for i in range(15)] and stream.code() == grpc.StatusCode.OK
    assert not failed, failed[:3]
