"""The h2 defences through the real server (a worker proxying to an HTTP/1.1 upstream, not
the session-level echo server of test_floods.py): rapid reset, CONTINUATION flood, HPACK bomb,
SETTINGS/PING floods from a client that never reads, and a zero-window stall. Each time the
offender's connection (or stream, for the stall) is cut off, the worker's memory and CPU stay
bounded, another client's connection, open across the attack, is served throughout, and a new
client is served right after."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import hpack
import hyperframe.frame as hf
import pytest

from tests.h2 import attack
from tests.h2.peer import H2LibClient
from tests.h2.test_downstream import LOOPS, config, curl_json
from tests.http.certs import make_ca, make_cert
from tests.http.conftest import Worker, run_worker
from tests.http.upstream import UpstreamServer

ENHANCE_YOUR_CALM, INTERNAL_ERROR, CANCEL = 0xB, 0x2, 0x8
RSS_BOUND_KB = 48 * 1024
CPU_BOUND_S = 4.0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Worker, UpstreamServer]]:
    tmp = tmp_path_factory.mktemp("floods")
    with UpstreamServer("h1") as up:
        cfg = config(up.port, http2="send_timeout_sec = 1").replace("access_log = true", "")
        with run_worker(tmp, cfg) as w:
            yield w, up


def still_served(w: Worker) -> None:
    c = H2LibClient(w.port(), timeout=20)
    try:
        r = c.request("/info", b"still here")
        assert r.status == 200 and b'"length": 10' in bytes(r.body), bytes(r.body)
    finally:
        c.close()


class Bystander:
    """Another client during the attack: one h2 connection opened before it, requests one
    after another on it until stopped (the last one after the attack is over)."""

    def __init__(self, port: int) -> None:
        self.client = H2LibClient(port, timeout=20)
        self.served = 0
        self.slowest = 0.0
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _one(self) -> None:
        start = time.monotonic()
        r = self.client.request("/info", b"bystander")
        assert r.status == 200 and b'"length": 9' in bytes(r.body), bytes(r.body)
        self.slowest = max(self.slowest, time.monotonic() - start)
        self.served += 1

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                self._one()
            self._one()
        except BaseException as exc:
            self.errors.append(exc)

    def __enter__(self) -> Bystander:
        self._one()  # connected and served before the attack starts
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)
        self.client.close()

    def check(self) -> None:
        assert not self.thread.is_alive() and not self.errors, self.errors
        assert self.served >= 3 and self.slowest < 10, (self.served, self.slowest)


def assert_defended(
    served: tuple[Worker, UpstreamServer],
    make: Callable[[], Iterable[bytes]],
    *,
    read: bool = True,
    codes: tuple[int, ...] = (ENHANCE_YOUR_CALM,),
) -> tuple[attack.Outcome, int]:
    w, up = served
    rss, cpu, requests = w.rss_kib(), cpu_seconds(w.proc.pid), up.requests
    with Bystander(w.port()) as other:  # its connection, open across the attack, is unaffected
        out = attack.Attacker(w.port(), read=read, rcvbuf=None if read else 4096).run(make(), deadline=30)
    other.check()
    assert out.closed, f"the worker kept the flooding connection open: {out}"
    assert out.seconds < 15, out
    if read:
        assert out.goaway_codes and out.goaway_codes[-1] in codes, out
    assert w.rss_kib() - rss < RSS_BOUND_KB, (rss, w.rss_kib())
    assert cpu_seconds(w.proc.pid) - cpu < CPU_BOUND_S
    assert w.proc.poll() is None
    still_served(w)
    # requests the attack got to the upstream: not the bystander's, nor still_served's one
    return out, up.requests - requests - other.served - 1


def test_rapid_reset(served: tuple[Worker, UpstreamServer]) -> None:
    out, reached = assert_defended(
        served, lambda: attack.rapid_reset(20_000), codes=(INTERNAL_ERROR, ENHANCE_YOUR_CALM)
    )
    assert reached < 200, reached  # opened and cancelled in one read: never proxied
    assert out.sent < 20_000 * 20


def test_continuation_flood(served: tuple[Worker, UpstreamServer]) -> None:
    out, reached = assert_defended(served, lambda: attack.continuation_flood(100_000))
    assert reached == 0 and out.sent < 1_000_000


def test_hpack_bomb(served: tuple[Worker, UpstreamServer]) -> None:
    out, reached = assert_defended(served, lambda: attack.hpack_bomb(5_000))
    assert reached == 0 and out.rst_streams > 0


@pytest.mark.parametrize("kind", ["settings", "ping"])
def test_control_flood_without_reading(served: tuple[Worker, UpstreamServer], kind: str) -> None:
    assert_defended(served, lambda: attack.control_flood(kind, 2_000_000), read=False)


def test_zero_window_stall(served: tuple[Worker, UpstreamServer]) -> None:
    """A client that announces a zero window and never opens it: the 1 MB response cannot
    move; after send_timeout_sec (1 s here) the stream is reset (CANCEL), and the response
    bytes it held are let go; the others are served meanwhile."""
    w, _up = served
    sock = socket.create_connection(("127.0.0.1", w.port()), timeout=10)
    try:
        settings = hf.SettingsFrame(0, settings={hf.SettingsFrame.INITIAL_WINDOW_SIZE: 0})
        req = [
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "127.0.0.1"),
            (":path", "/bytes?n=1000000"),
        ]
        sock.sendall(
            attack.PREFACE + settings.serialize() + attack.headers_frame(1, hpack.Encoder().encode(req))
        )
        start = time.monotonic()
        still_served(w)
        buf = bytearray()
        rst = None
        while rst is None and time.monotonic() - start < 10:
            chunk = sock.recv(65536)
            assert chunk, "the worker closed the connection instead of resetting the stream"
            buf += chunk
            while len(buf) >= 9:
                frame, length = hf.Frame.parse_frame_header(memoryview(buf[:9]))
                if len(buf) < 9 + length:
                    break
                frame.parse_body(memoryview(bytes(buf[9 : 9 + length])))
                del buf[: 9 + length]
                if isinstance(frame, hf.SettingsFrame) and "ACK" not in frame.flags:
                    sock.sendall(hf.SettingsFrame(0, flags=["ACK"]).serialize())
                assert not isinstance(frame, hf.DataFrame) or not frame.data, "DATA past a 0 window"
                if isinstance(frame, hf.RstStreamFrame):
                    rst = frame
        assert rst is not None and rst.stream_id == 1 and rst.error_code == CANCEL, rst
        assert 0.9 <= time.monotonic() - start < 5
    finally:
        sock.close()
    still_served(w)


@pytest.mark.parametrize("loop", LOOPS)
def test_flood_close_is_lingering_and_bounded(tmp_path: Path, loop: str) -> None:
    """Through the worker (H2Connection._finish, HttpServerProtocol._close(linger=True)), on
    both runtimes: after an HPACK bomb the GOAWAY is followed by FIN, not by the RST a close()
    with megabytes of unread attack input would make the kernel send; an attacker that keeps
    sending after the FIN is reset within about a second (FAILED_ABORT_SECONDS), at bounded CPU."""
    with UpstreamServer("h1") as up, run_worker(tmp_path, config(up.port), loop=loop) as w:
        cpu = cpu_seconds(w.proc.pid)
        attack.assert_lingering_close(w.port(), ENHANCE_YOUR_CALM)
        assert cpu_seconds(w.proc.pid) - cpu < CPU_BOUND_S
        still_served(w)


@pytest.mark.parametrize("loop", LOOPS)
def test_flood_close_over_tls_is_lingering(tmp_path: Path, loop: str) -> None:
    """The same over TLS (ALPN h2): after the HPACK bomb the client reads the GOAWAY, then the
    TLS close_notify and FIN, not an RST, although megabytes of its input were never read."""
    ca = make_ca(tmp_path)
    cert = make_cert(tmp_path, ca, "monolake", ["127.0.0.1"])
    with UpstreamServer("h1") as up, run_worker(tmp_path, config(up.port, tls=cert), loop=loop) as w:
        ctx = ssl.create_default_context(cafile=str(ca.chain))
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", w.port()), timeout=10)
        received = bytearray()
        reset = None
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            assert sock.selected_alpn_protocol() == "h2"
            try:
                for chunk in attack.hpack_bomb(5_000):
                    sock.sendall(chunk)  # the worker reads on (and drops once it gave up)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    data = sock.recv(65536)
                    if not data:
                        break  # close_notify (and FIN)
                    received += data
            except (ConnectionResetError, BrokenPipeError, ssl.SSLError) as exc:
                reset = exc
        assert reset is None, f"reset after {len(received)} bytes: {reset!r}"
        assert attack.goaway_codes(bytes(received))[-1:] == [ENHANCE_YOUR_CALM], len(received)
        version, _ = curl_json("--http2", "--cacert", str(ca.chain), f"https://127.0.0.1:{w.port()}/info")
        assert version == "2"  # and the others are served
