"""Spliced bodies in the proxy (worker/http/splice_relay.py), checked against the Python relay:
the same requests through a splice-on and a splice-off worker give the same bytes at the
client and at the upstream, byte for byte; an early close on either side, a client that stops
reading, a client abort, upstream and body timeouts end the same way; keep-alive goes on after
a spliced body; the epoll runtime takes the Python relay.

The upstream here is raw sockets in threads (not an HTTP library), so what it records is
exactly the bytes the proxy sent, and what it sends is exactly what a test scripts."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.http.conftest import NATIVE, URING, Worker, run_worker
from tests.support import free_port, wait_for

pytestmark = pytest.mark.skipif(not URING, reason="io_uring unavailable")

THRESHOLD = 32768
SIZES = [0, THRESHOLD - 1, THRESHOLD, 64 << 10, 1 << 20, 16 << 20]
_BLOCK = hashlib.sha256(b"splice").digest() * 8192  # 256 KiB


def pattern(n: int) -> bytes:
    """``n`` bytes that show a loss or a reordering."""
    return (_BLOCK * (n // len(_BLOCK) + 1))[:n]


def read_chunked(recv: Any, buf: bytes) -> tuple[bytes, bytes, bytes]:
    """A chunked body from ``buf`` and then ``recv()`` (b"" at EOF: ConnectionError), checked
    strictly: (payload, trailer lines, what follows the body)."""
    parts: list[bytes] = []

    def need(pred: Any) -> None:
        nonlocal buf
        while not pred(buf):
            data = recv()
            if not data:
                raise ConnectionError("EOF in a chunked body")
            buf += data

    while True:
        need(lambda b: b"\r\n" in b)
        line, _, buf = buf.partition(b"\r\n")
        size = int(line.split(b";")[0], 16)
        if size == 0:
            break
        need(lambda b, n=size: len(b) >= n + 2)
        assert buf[size : size + 2] == b"\r\n", "chunk data must end with CRLF"
        parts.append(buf[:size])
        buf = buf[size + 2 :]
    need(lambda b: b.startswith(b"\r\n") or b"\r\n\r\n" in b)
    if buf.startswith(b"\r\n"):
        return b"".join(parts), b"", buf[2:]
    trailers, _, buf = buf.partition(b"\r\n\r\n")
    return b"".join(parts), trailers, buf


# chunk sizes of the chunked bodies: some far above THRESHOLD (spliced), some below (copied)
CHUNKS = [100, 1 << 20, 5000, (3 << 20) + 7, 40000, 1, THRESHOLD, THRESHOLD - 1, 2 << 20]


def chunked(sizes: list[int]) -> bytes:
    """A chunked body of those chunk sizes (extensions on every other chunk) and a trailer."""
    body = pattern(sum(sizes))
    out, at = [], 0
    for i, n in enumerate(sizes):
        ext = b";i=%d" % i if i % 2 == 0 else b""
        out.append(b"%x%s\r\n%s\r\n" % (n, ext, body[at : at + n]))
        at += n
    out.append(b"0\r\nx-sum: %s\r\n\r\n" % hashlib.sha256(body).hexdigest().encode())
    return b"".join(out)


class RawUpstream:
    """HTTP/1.1 by hand, one thread per connection. ``requests`` records (connection number,
    raw request bytes: head and body) in arrival order; ``sent`` counts body bytes sent.

    Paths: ``/dl/N`` N bytes with Content-Length; ``/up`` reads the body and answers its
    length; ``/dlclose/N/M`` announces N, sends M, closes; ``/dlstall/N/M`` the same, then
    stalls; ``/dlslow/N/STEP/S`` N bytes, STEP at a time, S seconds apart; ``/upclose/K``
    reads K body bytes and closes without answering; ``/upearly/K`` reads K body bytes,
    waits, answers, stops reading for a while, then reads until the proxy closes; ``/dlchunked``
    a chunked body of CHUNKS with a trailer. A chunked request body is recorded decoded (its
    payload, then its trailer lines): its framing is the relay's, not the client's."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests: list[tuple[int, bytes]] = []
        self.sent = 0
        self.conns = 0
        self.closed = 0  # connections that ended (EOF or error)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.stop.set()
        self.sock.close()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns += 1
                n = self.conns
            threading.Thread(target=self._serve, args=(conn, n), daemon=True).start()

    def _serve(self, conn: socket.socket, n: int) -> None:
        buf = b""
        try:
            while not self.stop.is_set():
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(1 << 20)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                target = lines[0].split(b" ")[1].decode()
                length = 0
                is_chunked = False
                for line in lines[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                    if k.strip().lower() == b"transfer-encoding":
                        is_chunked = v.strip().lower() == b"chunked"
                parts = target.strip("/").split("/")
                if is_chunked:
                    payload, trailers, buf = read_chunked(lambda: conn.recv(1 << 20), buf)
                    with self.lock:
                        self.requests.append((n, head + b"\r\n\r\n" + payload + b"\r\n" + trailers))
                    if not self._answer(conn, parts, len(payload), hashlib.sha256(payload).hexdigest()):
                        return
                    continue
                take = length
                if parts[0] == "upslow":
                    time.sleep(float(parts[1]))  # not reading: the proxy must stop too
                if parts[0] in ("upclose", "upearly"):
                    take = min(length, int(parts[1]))
                h = hashlib.sha256()
                got = bytearray(buf[:take])
                buf = buf[take:]
                while len(got) < take:
                    data = conn.recv(min(1 << 20, take - len(got)))
                    if not data:
                        return
                    got += data
                h.update(got)
                with self.lock:
                    self.requests.append((n, head + b"\r\n\r\n" + bytes(got)))
                if parts[0] == "upclose":
                    time.sleep(0.5)  # the proxy's splice waits on us meanwhile
                    return
                if parts[0] == "upearly":
                    time.sleep(0.3)  # the splice is under way meanwhile (the test probes it)
                    body = f"{len(got)} {h.hexdigest()}".encode()
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                    time.sleep(0.5)  # the rest of the body cannot have gone through meanwhile
                    while conn.recv(1 << 20):
                        pass
                    return
                if not self._answer(conn, parts, len(got), h.hexdigest()):
                    return
        except OSError:
            return
        finally:
            with self.lock:
                self.closed += 1
            conn.close()

    def _answer(self, conn: socket.socket, parts: list[str], got: int, digest: str) -> bool:
        """Send the response; False: the connection ends here."""
        kind = parts[0]
        if kind == "dlchunked":
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            self._send(conn, chunked(CHUNKS))
            return True
        if kind in ("up", "upslow"):
            body = f"{got} {digest}".encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            return True
        size = int(parts[1])
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % size
        )
        if kind == "dl":
            self._send(conn, pattern(size))
            return True
        if kind == "dlslow":
            step, pause = int(parts[2]), float(parts[3])
            body = pattern(size)
            for i in range(0, size, step):
                self._send(conn, body[i : i + step])
                time.sleep(pause)
            return True
        self._send(conn, pattern(int(parts[2])))
        if kind == "dlstall":
            self.stop.wait(30)
        return False

    def _send(self, conn: socket.socket, data: bytes) -> None:
        view = memoryview(data)
        for i in range(0, len(view), 65536):
            conn.sendall(view[i : i + 65536])
            with self.lock:
                self.sent += len(view[i : i + 65536])


@pytest.fixture
def upstream() -> Iterator[RawUpstream]:
    up = RawUpstream()
    yield up
    up.close()


def _config(up: RawUpstream, threshold: int, timeouts: str = "") -> str:
    return f"""
[servers.px]
proxy_type = "http"
listener = {{ type = "socket", value = "127.0.0.1:{free_port()}" }}
splice_threshold = {threshold}
{timeouts}
[[servers.px.routes]]
path = "/{{*p}}"
preserve_path = true
upstreams = [{{ endpoint = {{ type = "uri", value = "{up.url}" }} }}]
"""


@contextmanager
def proxy(
    tmp: Path, up: RawUpstream, threshold: int, loop: str = "io_uring", timeouts: str = ""
) -> Iterator[Worker]:
    with run_worker(tmp, _config(up, threshold, timeouts), loop=loop) as w:
        yield w


def pipes_of(w: Worker) -> int:
    """Pipe fds the worker holds: the splice relay keeps its pipes pooled, so a worker that
    spliced a body holds more than one that never did."""
    n = 0
    for fd in os.listdir(f"/proc/{w.proc.pid}/fd"):
        try:
            if os.readlink(f"/proc/{w.proc.pid}/fd/{fd}").startswith("pipe:"):
                n += 1
        except OSError:
            pass
    return n


class Client:
    """A raw client that keeps every byte it receives."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.buf = b""
        self.raw = bytearray()
        self.sent = 0  # body bytes upload() has handed to the socket

    def close(self) -> None:
        self.sock.close()

    def reset(self) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        self.sock.close()

    def _fill(self) -> bool:
        data = self.sock.recv(1 << 20)
        self.raw += data
        self.buf += data
        return bool(data)

    def head(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError(f"closed in a head: {self.buf[:200]!r}")
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            fields[k.strip().lower()] = v.strip()
        return int(lines[0].split(" ")[1]), fields

    def body(self, n: int) -> bytes:
        """Up to ``n`` body bytes (fewer if the connection ends first)."""
        while len(self.buf) < n:
            try:
                if not self._fill():
                    break
            except ConnectionResetError:
                break
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def response(self) -> tuple[int, bytes]:
        status, fields = self.head()
        return status, self.body(int(fields.get("content-length", "0")))

    def upload(self, size: int, path: str = "/up") -> None:
        self.sock.sendall(
            b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (path.encode(), size)
        )
        body = memoryview(pattern(size))
        for i in range(0, size, 1 << 16):
            self.sock.sendall(body[i : i + (1 << 16)])
            self.sent += len(body[i : i + (1 << 16)])

    def upload_chunked(self, sizes: list[int], path: str = "/up") -> None:
        self.sock.sendall(
            b"POST %s HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" % path.encode()
        )
        body = memoryview(chunked(sizes))
        for i in range(0, len(body), 1 << 16):
            self.sock.sendall(body[i : i + (1 << 16)])

    def chunked_response(self) -> tuple[int, bytes, bytes]:
        """A response with a chunked body: (status, payload, trailer lines)."""
        status, fields = self.head()
        assert fields.get("transfer-encoding") == "chunked", fields
        payload, trailers, self.buf = read_chunked(lambda: self.sock.recv(1 << 20), self.buf)
        return status, payload, trailers

    def get(self, path: str) -> None:
        self.sock.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode())

    def ended(self, timeout: float = 10.0) -> bool:
        """The proxy closed the connection (EOF or reset) within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            while self._fill():
                pass
        except ConnectionResetError:
            pass
        except TimeoutError:
            return False
        return True


def _exchange_all(port: int) -> bytes:
    """Every size up and down, on one keep-alive connection; what the client received."""
    c = Client(port)
    try:
        for size in SIZES:
            c.upload(size)
            status, body = c.response()
            assert status == 200 and body.split()[0] == str(size).encode(), (size, body)
            c.get(f"/dl/{size}")
            status, body = c.response()
            assert status == 200 and body == pattern(size), (size, status, len(body))
        return bytes(c.raw)
    finally:
        c.close()


def test_same_bytes_at_both_ends(tmp_path: Path, upstream: RawUpstream) -> None:
    """Every size both ways on one keep-alive connection: splice on, splice off, the epoll
    runtime with splicing configured (it falls back to the Python relay), and the native
    engine with splicing on (C relays the small ones, the Python engine splices the rest)."""
    seen = []
    legs = ((THRESHOLD, "io_uring"), (0, "io_uring"), (THRESHOLD, "asyncio"), (THRESHOLD, NATIVE))
    for threshold, loop in legs:
        first, conns = len(upstream.requests), upstream.conns
        with proxy(tmp_path, upstream, threshold, loop=loop) as w:
            pipes = pipes_of(w)
            client = _exchange_all(w.port())
            ups = [r for _, r in upstream.requests[first:]]
            seen.append((client, ups, upstream.conns - conns, pipes_of(w) - pipes))
    (c_on, u_on, n_on, pipes_on), (c_off, u_off, n_off, pipes_off), (c_ep, u_ep, n_ep, pipes_ep) = seen[:3]
    c_nx, u_nx, n_nx, pipes_nx = seen[3]
    assert c_on == c_off == c_ep == c_nx
    assert u_on == u_off == u_ep == u_nx
    assert n_on == n_off == n_ep == n_nx == 1  # one upstream connection, reused after every spliced body
    assert pipes_on > 0 and pipes_off == 0 and pipes_ep == 0 and pipes_nx > 0  # only splice-on ones spliced


@pytest.mark.parametrize("direction", ["request", "response"])
def test_each_direction_is_spliced(tmp_path: Path, upstream: RawUpstream, direction: str) -> None:
    with proxy(tmp_path, upstream, THRESHOLD) as w:
        pipes = pipes_of(w)
        c = Client(w.port())
        if direction == "request":
            c.upload(4 << 20)
            status, body = c.response()
            assert status == 200 and body.split()[1] == hashlib.sha256(pattern(4 << 20)).hexdigest().encode()
        else:
            c.get(f"/dl/{4 << 20}")
            status, body = c.response()
            assert status == 200 and body == pattern(4 << 20)
        c.close()
        assert pipes_of(w) > pipes


class Probe:
    """Samples the worker's pipe fds while a scenario runs (``probe()`` at a moment a splice
    must be under way): a spliced body holds one, pooled after a clean end."""

    def __init__(self, w: Worker) -> None:
        self.w = w
        self.base = pipes_of(w)
        self.peak = 0

    def __call__(self) -> None:
        self.peak = max(self.peak, pipes_of(self.w) - self.base)


def both(tmp: Path, up: RawUpstream, scenario: Any, timeouts: str = "") -> list[Any]:
    """``scenario(worker, probe)`` through a splice-on and a splice-off worker: both outcomes
    (the callers assert they are equal), after checking that only the first spliced. Then
    through a splice-on worker on the native engine (issue 13 §3): these bodies are above
    what C relays, so it hands them to the Python engine (a request early, a response late,
    after its head came), which splices; the outcome must be the splice-on one."""
    out = []
    for threshold, loop in ((THRESHOLD, "io_uring"), (0, "io_uring"), (THRESHOLD, NATIVE)):
        with proxy(tmp, up, threshold, loop=loop, timeouts=timeouts) as w:
            probe = Probe(w)
            out.append(scenario(w, probe))
            probe()
            assert (probe.peak > 0) == bool(threshold), (threshold, loop, probe.peak)
    assert out[2] == out[0], f"the native engine: {out[2]}, the Python engine: {out[0]}"
    return out[:2]


def _wait_log(w: Worker, text: str, timeout: float = 10.0) -> bool:
    return bool(wait_for(lambda: text in w.log(), timeout=timeout))


def test_upstream_closes_mid_response(tmp_path: Path, upstream: RawUpstream) -> None:
    def scenario(w: Worker, probe: Probe) -> tuple:
        c = Client(w.port())
        c.get(f"/dlclose/{4 << 20}/{1 << 20}")
        status, fields = c.head()
        probe()
        body = c.body(4 << 20)
        ended = c.ended()
        c.close()
        assert body == pattern(len(body))  # a prefix, nothing else
        return (
            status,
            fields["content-length"],
            len(body) < 4 << 20,
            ended,
            _wait_log(w, "response_body_aborted"),
        )

    on, off = both(tmp_path, upstream, scenario)
    assert on == off == (200, str(4 << 20), True, True, True)


def test_upstream_closes_mid_request_body(tmp_path: Path, upstream: RawUpstream) -> None:
    def scenario(w: Worker, probe: Probe) -> tuple:
        c = Client(w.port())
        sender = _upload_until_forwarded(upstream, c, 8 << 20, "/upclose/", 1 << 20)
        probe()
        status, _ = c.response()
        # the client's body still unfinished when the 502 came: the proxy must close; if the
        # uploader got it all through first (a fast loopback), keep-alive is the right answer
        unfinished = c.sent < 8 << 20
        ended = c.ended() if unfinished else True
        sender.join(20)
        c.close()
        return status, ended, _wait_log(w, "upstream_failed")

    on, off = both(tmp_path, upstream, scenario)
    assert on == off == (502, True, True)


def test_upstream_answers_mid_request_body(tmp_path: Path, upstream: RawUpstream) -> None:
    """An answer before the whole request body (a refusal would be one): the response goes
    out, announcing the close, and the connection closes (the rest is never forwarded); the
    splice is stopped where it was (settled) before the response head is decided."""

    def scenario(w: Worker, probe: Probe) -> tuple:
        c = Client(w.port())
        # far more than every buffer on the way holds (socket buffers autotune to MiBs): the
        # body cannot be all through when the answer comes, in either engine
        sender = _upload_until_forwarded(upstream, c, 64 << 20, "/upearly/", 1 << 20)
        probe()
        status, fields = c.head()
        body = c.body(int(fields["content-length"]))
        ended = c.ended()
        sender.join(20)
        c.close()
        return status, fields.get("connection"), body.split()[0], ended

    on, off = both(tmp_path, upstream, scenario)
    assert on == off == (200, "close", str(1 << 20).encode(), True)


def _quiet(fn: Any, *args: Any) -> None:
    """``fn(*args)``; the proxy may close under it (that is what is tested)."""
    try:
        fn(*args)
    except OSError:
        pass


def _upload_until_forwarded(
    upstream: RawUpstream, c: Client, size: int, prefix: str, n: int
) -> threading.Thread:
    """Start uploading ``size`` body bytes on ``c`` to ``prefix`` + ``n`` in a thread; return
    it once the upstream has seen the request's head."""
    first = len(upstream.requests)
    sender = threading.Thread(target=_quiet, args=(c.upload, size, f"{prefix}{n}"))
    sender.start()
    wait_for(lambda: any(prefix.encode() in r for _, r in upstream.requests[first:]), timeout=10)
    return sender


def test_client_that_stops_reading_holds_the_upstream(tmp_path: Path, upstream: RawUpstream) -> None:
    size = 256 << 20

    def scenario(w: Worker, probe: Probe) -> tuple:
        base = w.rss_kib()
        start = upstream.sent
        c = Client(w.port())
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        c.get(f"/dl/{size}")
        status, _ = c.head()
        time.sleep(1.5)  # not reading: the proxy must stop reading the upstream
        ahead = upstream.sent - start
        grown = w.rss_kib() - base
        h = hashlib.sha256(c.buf)
        got = len(c.buf)
        c.buf = b""
        while got < size:
            data = c.sock.recv(1 << 20)
            assert data
            h.update(data)
            got += len(data)
        c.close()
        assert ahead < 96 << 20, ahead  # socket buffers and the pipe, not the body
        assert grown < 64 << 10, grown  # KiB
        return status, h.hexdigest() == hashlib.sha256(pattern(size)).hexdigest()

    on, off = both(tmp_path, upstream, scenario)
    assert on == off == (200, True)


@pytest.mark.parametrize("direction", ["request", "response"])
def test_client_abort_mid_body(tmp_path: Path, upstream: RawUpstream, direction: str) -> None:
    def scenario(w: Worker, probe: Probe) -> tuple:
        conns, closed = upstream.conns, upstream.closed
        c = Client(w.port())
        if direction == "response":
            c.get(f"/dl/{64 << 20}")
            c.head()
            c.body(1 << 20)
            probe()
        else:
            c.sock.sendall(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (16 << 20))
            c.sock.sendall(pattern(2 << 20))
            wait_for(lambda: upstream.conns > conns, timeout=10)
            time.sleep(0.2)
            probe()
        c.reset()
        # the upstream connection is closed, not pooled: the next request gets a new one
        gone = bool(wait_for(lambda: upstream.closed > closed, timeout=10))
        c2 = Client(w.port())
        c2.get("/dl/10")
        status, body = c2.response()
        c2.close()
        return gone, status, body == pattern(10), upstream.conns - conns

    on, off = both(tmp_path, upstream, scenario)
    assert on == off == (True, 200, True, 2)


_UPSTREAM_TIMEOUT = "[servers.px.timeout]\nupstream_read_timeout_sec = 1"
_BODY_TIMEOUT = "[servers.px.timeout]\nserver_read_body_timeout_sec = 1"


def test_upstream_read_timeout_mid_body(tmp_path: Path, upstream: RawUpstream) -> None:
    def scenario(w: Worker, probe: Probe) -> tuple:
        c = Client(w.port())
        t0 = time.monotonic()
        c.get(f"/dlstall/{8 << 20}/{1 << 20}")
        status, _ = c.head()
        probe()
        body = c.body(8 << 20)
        ended = c.ended()
        took = time.monotonic() - t0
        c.close()
        return status, len(body) <= 1 << 20, ended, 0.9 < took < 5, _wait_log(w, "upstream_timeout")

    on, off = both(tmp_path, upstream, scenario, _UPSTREAM_TIMEOUT)
    assert on == off == (200, True, True, True, True)


def test_slow_upstream_body_within_the_timeout(tmp_path: Path, upstream: RawUpstream) -> None:
    """Bytes keep coming, each step within the read timeout: the whole body takes longer than
    the timeout and must still arrive (the splice moves the deadline on)."""

    def scenario(w: Worker, probe: Probe) -> tuple:
        c = Client(w.port())
        c.get(f"/dlslow/{4 << 20}/{1 << 20}/0.4")
        status, body = c.response()
        c.close()
        return status, body == pattern(4 << 20)

    on, off = both(tmp_path, upstream, scenario, _UPSTREAM_TIMEOUT)
    assert on == off == (200, True)


def test_request_body_timeout_mid_body(tmp_path: Path, upstream: RawUpstream) -> None:
    def scenario(w: Worker, probe: Probe) -> tuple:
        closed = upstream.closed
        c = Client(w.port())
        c.sock.sendall(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (4 << 20))
        c.sock.sendall(pattern(1 << 20))
        time.sleep(0.2)
        probe()
        status, _ = c.response()
        ended = c.ended()
        c.close()
        # the upstream connection that got half a body is closed, never pooled
        gone = bool(wait_for(lambda: upstream.closed > closed, timeout=10))
        return status, ended, _wait_log(w, "client_timeout"), gone

    on, off = both(tmp_path, upstream, scenario, _BODY_TIMEOUT)
    assert on == off == (408, True, True, True)


def test_slow_request_body_within_the_timeout(tmp_path: Path, upstream: RawUpstream) -> None:
    def scenario(w: Worker, probe: Probe) -> tuple:
        c = Client(w.port())
        size = 4 << 20
        c.sock.sendall(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size)
        body = pattern(size)
        for i in range(0, size, 1 << 20):
            c.sock.sendall(body[i : i + (1 << 20)])
            time.sleep(0.4)
        status, answer = c.response()
        c.close()
        return status, answer == f"{size} {hashlib.sha256(body).hexdigest()}".encode()

    on, off = both(tmp_path, upstream, scenario, _BODY_TIMEOUT)
    assert on == off == (200, True)


def test_concurrent_spliced_bodies_stay_apart(tmp_path: Path, upstream: RawUpstream) -> None:
    """Many relays at once, both ways, on one ring: every body arrives whole and in order."""
    size, n = 8 << 20, 8
    digest = hashlib.sha256(pattern(size)).hexdigest().encode()
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            c = Client(w.port())
            for _ in range(2):
                if i % 2:
                    c.upload(size)
                    status, body = c.response()
                    assert status == 200 and body.split()[1] == digest, body
                else:
                    c.get(f"/dl/{size}")
                    status, body = c.response()
                    assert status == 200 and body == pattern(size)
            c.close()
        except Exception as exc:  # reported by the test thread
            errors.append(exc)

    with proxy(tmp_path, upstream, THRESHOLD) as w:
        probe = Probe(w)
        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        probe()
        assert not errors, errors
        assert probe.peak > 0


def test_pipelined_bodies(tmp_path: Path, upstream: RawUpstream) -> None:
    """Requests with large bodies sent back to back in one stream: whatever the relay finds
    already read (a body's end and the next head) goes to the parser, the rest is spliced;
    the upstream and the client see the same bytes either way."""
    sizes = [1 << 20, 40000, 3 << 20, 0, 2 << 20]

    def scenario(w: Worker, probe: Probe) -> tuple:
        first = len(upstream.requests)
        c = Client(w.port())
        stream = b"".join(
            b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % n + pattern(n) for n in sizes
        )
        sender = threading.Thread(target=c.sock.sendall, args=(stream,))
        sender.start()
        answers = [c.response() for _ in sizes]
        sender.join(20)
        probe()
        c.get(f"/dl/{4 << 20}")
        answers.append(c.response())
        c.close()
        return answers, [r for _, r in upstream.requests[first:]]

    on, off = both(tmp_path, upstream, scenario)
    assert on == off
    assert [a[1].split()[0] for a in on[0][: len(sizes)]] == [str(n).encode() for n in sizes]


def test_upstream_that_stops_reading_holds_the_client(tmp_path: Path, upstream: RawUpstream) -> None:
    size = 128 << 20

    def scenario(w: Worker, probe: Probe) -> tuple:
        base = w.rss_kib()
        c = Client(w.port())
        sender = threading.Thread(target=c.upload, args=(size, "/upslow/1.5"))
        sender.start()
        time.sleep(1.0)  # the upstream reads nothing yet: the proxy must stop reading us
        probe()
        ahead, grown = c.sent, w.rss_kib() - base
        status, body = c.response()
        sender.join(30)
        c.close()
        assert ahead < 64 << 20, ahead  # socket buffers and the pipe, not the body
        assert grown < 64 << 10, grown  # KiB
        return status, body.split()[1] == hashlib.sha256(pattern(size)).hexdigest().encode()

    on, off = both(tmp_path, upstream, scenario)
    assert on == off == (200, True)


@pytest.mark.parametrize("direction", ["request", "response"])
def test_chunked_bodies_same_at_both_ends(tmp_path: Path, upstream: RawUpstream, direction: str) -> None:
    """Chunked bodies, their chunks of at least splice_threshold spliced one by one (the size
    lines, CRLFs and trailers through the parser): the heads, the payload and the trailers
    both ends see are the Python relay's, and keep-alive goes on on both sides."""
    total = sum(CHUNKS)
    want = pattern(total)

    def scenario(w: Worker, probe: Probe) -> tuple:
        first, conns = len(upstream.requests), upstream.conns
        c = Client(w.port())
        got: list[Any] = []
        for _ in range(2):
            if direction == "request":
                c.upload_chunked(CHUNKS)
                status, body = c.response()
                assert body == f"{total} {hashlib.sha256(want).hexdigest()}".encode(), body
                got.append(status)
            else:
                c.sock.sendall(b"GET /dlchunked HTTP/1.1\r\nHost: t\r\nTE: trailers\r\n\r\n")
                status, payload, trailers = c.chunked_response()
                assert payload == want, (len(payload), total)
                got.append((status, trailers))
            probe()
        c.close()
        return got, [r for _, r in upstream.requests[first:]], upstream.conns - conns

    on, off = both(tmp_path, upstream, scenario)
    assert on == off
    assert on[2] == 1  # one upstream connection, reused after the chunked bodies


def test_chunked_body_over_the_limit(tmp_path: Path, upstream: RawUpstream) -> None:
    """A chunked request body that crosses max_body_size: its first large chunk is spliced,
    the one that crosses the limit is not (the parser refuses it with 413, as without
    splicing), and the connection closes."""

    def scenario(w: Worker, probe: Probe) -> tuple:
        c = Client(w.port())
        sender = threading.Thread(target=_quiet, args=(c.upload_chunked, CHUNKS))
        sender.start()
        status, _ = c.response()
        probe()
        ended = c.ended()
        sender.join(20)
        c.close()
        return status, ended

    on, off = both(tmp_path, upstream, scenario, timeouts=f"max_body_size = {2 << 20}")
    assert on == off == (413, True)
