"""An HTTP/1.1 upstream that records what it received, byte for byte: the request head, the
body's framing (Content-Length or chunked, chunk by chunk), the chunked trailer section and
whether an ``Expect`` reached it. Its own parser, written for the tests (no monolake code), so
an assertion on what the proxy sent does not share a bug with the proxy.

Every request is answered ``200`` with a JSON summary of itself; ``/trailers`` answers chunked
with a ``x-up-trailer: yes`` trailer field (for the response direction).
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field

from tests.support import close_listener


@dataclass
class Received:
    """One request as it arrived."""

    line: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    chunked: bool = False
    chunks: int = 0
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    raw_tail: bytes = b""  # the bytes after the last chunk: "0\r\n" + trailers + "\r\n"

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)


class Recorder:
    """A threaded HTTP/1.1 server on 127.0.0.1 (one thread per connection, bounded reads)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.received: list[Received] = []
        self.errors: list[str] = []
        self._stop = False
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._accept = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Recorder:
        self._accept.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        close_listener(self.sock)
        for c in self._conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        for t in [self._accept, *self._threads]:
            t.join(5)

    def _loop(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(20)
            self._conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        reader = _Reader(conn)
        try:
            while True:
                line = reader.line()
                if line is None:
                    return
                headers: list[tuple[bytes, bytes]] = []
                while True:
                    h = reader.line()
                    if h is None:
                        return
                    if not h:
                        break
                    k, _, v = h.partition(b":")
                    headers.append((k.strip().lower(), v.strip()))
                rec = Received(line, headers)
                te = rec.header(b"transfer-encoding")
                if te is not None and te.lower() == b"chunked":
                    rec.chunked = True
                    self._chunked(reader, rec)
                elif rec.header(b"content-length") is not None:
                    rec.body = reader.exact(int(rec.header(b"content-length") or b"0"))
                self.received.append(rec)
                self._answer(conn, rec)
        except (OSError, ValueError) as exc:
            if not self._stop:
                self.errors.append(repr(exc))
        finally:
            conn.close()

    def _chunked(self, reader: _Reader, rec: Received) -> None:
        body = bytearray()
        while True:
            size_line = reader.line()
            if size_line is None:
                raise ValueError("EOF in a chunk size")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            rec.chunks += 1
            body += reader.exact(size)
            if reader.exact(2) != b"\r\n":
                raise ValueError("chunk without CRLF")
        tail = bytearray(b"0\r\n")
        while True:
            t = reader.line()
            if t is None:
                raise ValueError("EOF in the trailer section")
            tail += t + b"\r\n"
            if not t:
                break
            k, _, v = t.partition(b":")
            rec.trailers.append((k.strip().lower(), v.strip()))
        rec.body = bytes(body)
        rec.raw_tail = bytes(tail)

    def _answer(self, conn: socket.socket, rec: Received) -> None:
        target = rec.line.split(b" ")[1]
        doc = json.dumps(
            {
                "length": len(rec.body),
                "chunked": rec.chunked,
                "trailers": [[k.decode(), v.decode()] for k, v in rec.trailers],
            }
        ).encode()
        if target.startswith(b"/trailers"):
            conn.sendall(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: application/json\r\n\r\n"
                + b"%x\r\n%s\r\n" % (len(doc), doc)
                + b"0\r\nx-up-trailer: yes\r\n\r\n"
            )
        else:
            conn.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (len(doc), doc)
            )


class _Reader:
    """Buffered, bounded reads from a blocking socket."""

    LIMIT = 64 * 1024 * 1024

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buf = bytearray()

    def _fill(self) -> bool:
        data = self.conn.recv(1 << 16)
        if not data:
            return False
        self.buf += data
        if len(self.buf) > self.LIMIT:
            raise ValueError("request too large for the recorder")
        return True

    def line(self) -> bytes | None:
        while b"\r\n" not in self.buf:
            if not self._fill():
                return None
        i = self.buf.index(b"\r\n")
        out = bytes(self.buf[:i])
        del self.buf[: i + 2]
        return out

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ValueError("EOF in a body")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out
