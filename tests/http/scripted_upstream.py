"""A loopback upstream that answers from a script and records every byte it receives, per
connection: what the differential test compares between the two engines
(tests/http/test_native_engine_diff.py).

A request for ``/k/<name>`` (any query) gets ``SCRIPTS[name]``: a list of ``bytes`` to send
(each its own write, a short pause between), ``CLOSE`` to close the connection there, or a
number of seconds to stay silent.
Request bodies are not read (they arrive as bytes before the next head), except for a name
starting with ``read``: its Content-Length body is read before the answer (an upload the
upstream takes whole; ``readclose`` then closes instead of answering), and ``part*``, which
answers after the first ``PART`` bytes of it."""

from __future__ import annotations

import socket
import threading
import time

from tests.support import close_listener

CLOSE = None
_BIG = bytes(range(256)) * 800  # 200 KiB, spread over several reads
_HUGE = bytes(range(256)) * 8192  # 2 MiB: above the native engine's MAX_BODY


def _ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Up: s\r\nContent-Length: %d\r\n%b\r\n%b" % (
        len(body),
        extra,
        body,
    )


SCRIPTS: dict[str, list[bytes | float | None]] = {
    "ok": [_ok(b"hello")],
    "ok2": [_ok(b"second one")],
    "split": [b"HTTP/1.1 200 OK\r\nContent-Len", b"gth: 6\r\n\r\nab", b"cdef"],
    "big": [_ok(_BIG)[:70000], _ok(_BIG)[70000:140000], _ok(_BIG)[140000:]],
    "huge": [_ok(_HUGE)],
    "empty": [b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"],
    "404": [b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope"],
    "503": [b"HTTP/1.1 503 Busy\r\nRetry-After: 1\r\nContent-Length: 4\r\n\r\nbusy"],
    "hop": [
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nTE: x\r\n"
        b"Proxy-Connection: x\r\nUPPER-Case: V\r\nContent-Length: 2\r\n\r\nhi"
    ],
    "named": [b"HTTP/1.1 200 OK\r\nConnection: X-Drop\r\nX-Drop: 1\r\nContent-Length: 2\r\n\r\nhi"],
    "204": [b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n"],
    "304": [b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n'],
    "chunked": [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"],
    "chunkext": [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n5;ext=1\r\nhel",
        b'lo\r\n3 ; q="a"\r\nabc\r\n0\r\nX-T: 1\r\n\r\n',
    ],
    "interim": [b"HTTP/1.1 100 Continue\r\n\r\n", _ok(b"after interim")],
    "close": [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbye", CLOSE],
    "http10": [b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold", CLOSE],
    "untilclose": [b"HTTP/1.1 200 OK\r\n\r\nuntil close", CLOSE],
    "midbody": [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part", CLOSE],
    "eof": [CLOSE],
    "garbage": [b"\x00\x01 not http at all\r\n\r\n", CLOSE],
    "extra": [_ok(b"hello") + b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nstolen"],
    "noreason": [b"HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\nok"],
    "headonly": [b"HTTP/1.1 200 OK\r\nX-H: 1\r\nContent-Length: 5\r\n\r\n"],
    "headnolen": [b"HTTP/1.1 200 OK\r\nX-H: 2\r\n\r\n"],
    "304cl": [b'HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\nETag: "y"\r\n\r\n'],
    "silent": [2.5, CLOSE],
    "slow": [0.3, _ok(b"slow")],
    "readok": [_ok(b"got it")],
    "readclose": [CLOSE],
    "partial": [b"HTTP/1.1 413 Too Large\r\nContent-Length: 4\r\n\r\nbig!"],
}
PART = 2 << 20  # what ``part*`` reads of a body before it answers


class ScriptedUpstream:
    """Threaded blocking server on 127.0.0.1; ``log`` holds each connection's received bytes."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.log: list[bytearray] = []
        self._lock = threading.Lock()
        self._stop = False
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True, name="scripted-upstream")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ScriptedUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        close_listener(self.sock)
        for c in list(self._conns):
            try:
                c.close()
            except OSError:
                pass
        self._thread.join(5)

    def received(self) -> list[bytes]:
        with self._lock:
            return [bytes(b) for b in self.log]

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                rec = bytearray()
                self.log.append(rec)
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn, rec), daemon=True).start()

    def _recv(self, conn: socket.socket, rec: bytearray) -> bytes:
        """One read from the proxy, recorded; b"" at its EOF."""
        data = conn.recv(65536)
        with self._lock:
            rec += data
        return data

    def _serve(self, conn: socket.socket, rec: bytearray) -> None:
        buf = b""
        conn.settimeout(30)
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    if not (data := self._recv(conn, rec)):
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                target = head.split(b"\r\n", 1)[0].split(b" ")[1]
                name = target.split(b"?", 1)[0].rsplit(b"/", 1)[-1].decode()
                if name.startswith(("read", "part")):
                    cl = [ln for ln in head.lower().split(b"\r\n") if ln.startswith(b"content-length:")]
                    need = int(cl[0].split(b":")[1]) if cl else 0
                    if name.startswith("part"):  # answers after PART bytes of the body
                        need = min(need, PART)
                    while len(buf) < need:
                        if not (data := self._recv(conn, rec)):
                            return
                        buf += data
                    buf = buf[need:]
                for piece in SCRIPTS.get(name, SCRIPTS["ok"]):
                    if piece is None:
                        conn.close()
                        return
                    if isinstance(piece, float):
                        time.sleep(piece)
                        continue
                    conn.sendall(piece)
                    time.sleep(0.005)
        except OSError:
            return
        finally:
            try:
                conn.close()
            except OSError:
                pass
