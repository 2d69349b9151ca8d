"""Large response bodies on the native engine (issue 13 §2): C relays a Content-Length body of
any length below the splice threshold, with backpressure: while the client's transport is
above its high-water mark the upstream connection's reading is paused, so a client that
stops reading does not make the worker buffer the body. Both engines run the same checks;
on the native one the request must have been C's (its counters)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.http.conftest import URING, run_worker
from tests.http.upstream import UpstreamServer, pattern

pytestmark = pytest.mark.skipif(not URING, reason="io_uring unavailable")

BIG = 48 << 20  # far more than the kernel's socket buffers hold on both sides
MID = 3 << 20  # above the native engine's old 1 MiB limit


def config(up: UpstreamServer, engine: str, splice: int) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"""
[servers.px]
proxy_type = "http"
listener = {{ type = "socket", value = "127.0.0.1:{port}" }}
engine = "{engine}"
splice_threshold = {splice}
[[servers.px.routes]]
path_prefix = "/"
preserve_path = true
upstreams = [{{ endpoint = {{ type = "uri", value = "{up.url}" }} }}]
"""


def _request(c: socket.socket, n: int) -> None:
    c.sendall(b"GET /bytes?n=%d HTTP/1.1\r\nHost: t\r\n\r\n" % n)


def _read_response(c: socket.socket, deadline: float) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        assert time.monotonic() < deadline, "no response head"
        piece = c.recv(65536)
        assert piece, "closed before the head"
        buf += piece
    head, _, body = buf.partition(b"\r\n\r\n")
    length = int(
        next(
            v for k, _, v in (ln.partition(b": ") for ln in head.split(b"\r\n")[1:]) if k == b"content-length"
        )
    )
    h = hashlib.sha256(body)
    got = len(body)
    while got < length:
        assert time.monotonic() < deadline, f"body cut at {got} of {length}"
        piece = c.recv(1 << 20)
        assert piece, f"closed at {got} of {length}"
        h.update(piece)
        got += len(piece)
    return head, h.digest()


def _counters(path: Path, done: Callable[[dict], bool]) -> dict:
    """The engine's counters once ``done`` holds (the worker rewrites the file at each timeout
    sweep), or the last ones read after 5 s."""
    deadline = time.monotonic() + 5
    c: dict = {}
    while time.monotonic() < deadline:
        try:
            c = json.loads(path.read_text())
        except (OSError, ValueError):
            pass
        if done(c):
            break
        time.sleep(0.1)
    return c


@pytest.mark.parametrize("engine", ["python", "native"])
def test_stalled_client_bounds_memory(tmp_path: Path, engine: str) -> None:
    """A client that reads nothing of a 48 MiB body for a while: the worker's RSS grows by far
    less than the body; then it reads it all, intact, and the connection is reused."""
    stats = tmp_path / "native.json"
    os.environ["MONOLAKE_NATIVE_STATS_FILE"] = str(stats)
    try:
        with UpstreamServer("a") as up, run_worker(tmp_path, config(up, engine, 0), loop="io_uring") as w:
            c = socket.socket()
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            c.connect(("127.0.0.1", w.port()))
            c.settimeout(10)
            with c:
                deadline = time.monotonic() + 30
                _request(c, 10)  # the first request is always Python's
                _read_response(c, deadline)
                before = w.rss_kib()
                _request(c, BIG)
                # poll the RSS while the client reads nothing: it must level off
                peak = before
                stop = time.monotonic() + 2.0
                while time.monotonic() < stop:
                    peak = max(peak, w.rss_kib())
                    time.sleep(0.05)
                assert peak - before < 24 * 1024, f"RSS grew {peak - before} KiB for a stalled client"
                head, digest = _read_response(c, time.monotonic() + 60)
                assert head.startswith(b"HTTP/1.1 200")
                assert digest == hashlib.sha256(pattern(BIG)).digest()
                _request(c, MID)  # the same connection: keep-alive held
                _, digest = _read_response(c, time.monotonic() + 30)
                assert digest == hashlib.sha256(pattern(MID)).digest()
            counters = _counters(stats, lambda c: c.get("requests", 0) >= 2 or engine == "python")
    finally:
        os.environ.pop("MONOLAKE_NATIVE_STATS_FILE", None)
    if engine == "native":
        assert counters.get("requests", 0) >= 2, counters
        assert counters.get("declined_late", 0) == 0, counters


def test_at_splice_threshold_python_splices(tmp_path: Path) -> None:
    """A body at or above the splice threshold is declined late, and the Python engine
    relays it (spliced); below it C relays it, and C takes the connection back after each."""
    stats = tmp_path / "native.json"
    os.environ["MONOLAKE_NATIVE_STATS_FILE"] = str(stats)
    try:
        with UpstreamServer("a") as up, run_worker(tmp_path, config(up, "native", MID), loop="io_uring") as w:
            with socket.create_connection(("127.0.0.1", w.port()), timeout=10) as c:
                deadline = time.monotonic() + 30
                for n in (10, MID - 1, MID, MID + 1, 10):
                    _request(c, n)
                    _, digest = _read_response(c, deadline)
                    assert digest == hashlib.sha256(pattern(n)).digest(), n
            counters = _counters(stats, lambda c: c.get("requests", 0) >= 2)
    finally:
        os.environ.pop("MONOLAKE_NATIVE_STATS_FILE", None)
    assert counters.get("declined_late", 0) == 2, counters  # MID, MID + 1
    assert counters.get("requests", 0) == 2, counters  # MID - 1, the last one


UPLOAD = BIG  # an upload far larger than the kernel's socket buffers


class _StallingUpstream:
    """One-connection upstream that reads a request head, then (for a body above 64 KiB)
    nothing for ``stall`` seconds, then the Content-Length body, and answers with the body's
    SHA-256 (keep-alive); its receive buffer is small, so an upload it does not read backs up
    into the proxy."""

    def __init__(self, stall: float) -> None:
        import threading

        self.stall = stall
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stalling = threading.Event()  # set while it reads nothing of an upload
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> _StallingUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        from tests.support import close_listener

        close_listener(self.sock)
        self._thread.join(5)

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(30)
            buf = b""
            try:
                while True:
                    while b"\r\n\r\n" not in buf:
                        piece = conn.recv(65536)
                        if not piece:
                            return
                        buf += piece
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    lines = head.lower().split(b"\r\n")
                    n = next((int(ln.split(b":")[1]) for ln in lines if ln.startswith(b"content-length:")), 0)
                    if n > 65536:
                        self.stalling.set()
                        time.sleep(self.stall)
                        self.stalling.clear()
                    h = hashlib.sha256(buf[:n])
                    got, buf = min(n, len(buf)), buf[n:]
                    while got < n:
                        piece = conn.recv(min(1 << 20, n - got))
                        if not piece:
                            return
                        h.update(piece)
                        got += len(piece)
                    digest = h.hexdigest().encode()
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(digest), digest))
            except OSError:
                return


def _upload_config(url: str, engine: str) -> str:
    return config(type("U", (), {"url": url})(), engine, 0)  # type: ignore[arg-type]


@pytest.mark.parametrize("engine", ["python", "native"])
def test_upload_to_stalled_upstream_bounds_memory(tmp_path: Path, engine: str) -> None:
    """A 48 MiB upload to an upstream that reads none of it for a while: the proxy stops
    reading the client once its upstream connection is above its high-water mark, so the
    client cannot push the body and the worker's RSS grows by far less than it; then the
    upstream reads it all, intact, and the connection is reused. On the native engine C
    relayed both uploads and paused the client's reading (its upload_paused count)."""
    stats = tmp_path / "native.json"
    os.environ["MONOLAKE_NATIVE_STATS_FILE"] = str(stats)
    body = memoryview(pattern(UPLOAD))
    want = hashlib.sha256(body).hexdigest().encode()
    small = b"PUT /small HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi"
    try:
        with (
            _StallingUpstream(2.0) as up,
            run_worker(tmp_path, _upload_config(up.url, engine), loop="io_uring") as w,
        ):
            c = socket.socket()
            c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
            c.connect(("127.0.0.1", w.port()))
            with c:
                c.settimeout(10)
                c.sendall(small)  # the first request is always Python's
                _read_response(c, time.monotonic() + 10)
                before = w.rss_kib()
                c.sendall(b"PUT /up HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % UPLOAD)
                assert up.stalling.wait(5), "the upstream never got the head"
                # push the body without blocking until the proxy has taken nothing for 0.5 s
                c.setblocking(False)
                sent, idle_since, peak = 0, time.monotonic(), before
                while up.stalling.is_set() and time.monotonic() - idle_since < 0.5:
                    try:
                        sent += c.send(body[sent : sent + 65536])
                        idle_since = time.monotonic()
                    except BlockingIOError:
                        peak = max(peak, w.rss_kib())
                        time.sleep(0.02)
                stalled_at = sent
                assert up.stalling.is_set(), f"the stall ended first ({sent} bytes pushed)"
                c.setblocking(True)
                c.settimeout(30)
                c.sendall(body[sent:])
                head, digest = _read_response(c, time.monotonic() + 30)
                assert head.startswith(b"HTTP/1.1 200"), head
                assert digest == hashlib.sha256(want).digest(), "the upstream got another body"
                c.sendall(small)  # the same connection: keep-alive held
                _read_response(c, time.monotonic() + 10)
            counters = _counters(stats, lambda c: c.get("requests", 0) >= 2 or engine == "python")
    finally:
        os.environ.pop("MONOLAKE_NATIVE_STATS_FILE", None)
    print(f"{engine}: {stalled_at} bytes pushed, RSS +{peak - before} KiB while stalled")
    assert stalled_at < 24 << 20, f"the client pushed {stalled_at} bytes to a stalled upstream"
    assert peak - before < 24 * 1024, f"RSS grew {peak - before} KiB for a stalled upstream"
    if engine == "native":
        assert counters.get("requests", 0) >= 2, counters
        assert counters.get("declined_late", 0) == 0, counters
        assert counters.get("upload_paused", 0) >= 1, counters
