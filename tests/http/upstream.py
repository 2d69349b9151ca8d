"""A scriptable HTTP/1.1 upstream for the proxy tests: an asyncio server in a thread, loopback only.

Routes (by path suffix, so any proxy rewrite prefix works):
- ``/info``: JSON with the method, target, headers, body length and sha256 of the request;
- ``/bytes?n=N``: N bytes of ``pattern`` with Content-Length; ``&chunked=1``: chunked;
  ``&close=1``: close-delimited (no length); ``&onewrite=1``: head and body in one send, so
  the proxy reads them together (the native parser then lends the body instead of copying);
- ``/sink``: reads the body (any size) and answers its length and sha256 (``?pause=S``: stops
  reading for S seconds after the first MiB, to exercise backpressure);
- ``/slow?delay=S``: answers after S seconds; ``/slowbody?delay=S``: head now, body after S;
- ``/reset``: resets the connection (SO_LINGER 0) without answering;
- ``/garbage``: answers bytes that are not HTTP;
- ``/early``: answers 413 at once, without reading the request body;
- ``/silentclose``: answers with a length, then closes without saying ``Connection: close``;
- ``/fault?kind=K``: a complete response with more bytes after it in the same write (see
  ``FAULTS``), then the connection goes on serving requests, so a proxy that pools it hands
  those bytes to the next client;
- ``/delay/<tag>``: answers ``<tag>`` after 0.3 s (``?s=S``: after S seconds);
- ``/head?n=N&size=S``: ``ok`` with N extra header fields ``x-h<i>`` of S bytes each.
Anything else: ``<name> <path>`` as text.

``served`` lists ``(connection number, target)`` for every request, in arrival order.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import struct
from urllib.parse import parse_qs, urlsplit

from tests.loop_thread import LoopThread


def pattern(size: int) -> bytes:
    block = hashlib.sha256(b"monolake").digest() * 2048  # 64 KiB
    return block * (size // len(block)) + block[: size % len(block)]


_BLOCK = pattern(65536)

_HELLO = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
_STOLEN = b"HTTP/1.1 200 OK\r\nX-Up: POISON\r\nContent-Length: 6\r\n\r\nstolen"
_LONG = pattern(100_000)
# /fault?kind=K: what the upstream writes, in one send, for one request. Each is a complete
# response followed by bytes that are not an answer to anything (the "ok" kinds have none:
# they must be pooled as usual).
FAULTS: dict[str, bytes] = {
    "second": _HELLO + _STOLEN,  # an unsolicited second response
    "head": _HELLO + b"HTTP/1.1 200 OK\r\nX-Up: POISON\r\nContent-Length: 40\r\n\r\n",
    "half": _HELLO + b"HTTP/1.1 200 OK\r\nX-Up: POI",  # half a head
    "after204": b"HTTP/1.1 204 No Content\r\n\r\n" + _STOLEN,  # a body after a 204
    "after304": b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n' + _STOLEN,
    "garbage": _HELLO + b"\x00\x01not http\r\n\r\n",
    "long": b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(_LONG) + _LONG + _STOLEN,
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" + _STOLEN,
    "empty": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" + _STOLEN,
    "ok": _HELLO,
    "ok-interim": b"HTTP/1.1 100 Continue\r\n\r\n" + _HELLO,
}
# the answer to HEAD /fault?kind=headbody: a HEAD response carries no body, these bytes are extra
HEAD_FAULT = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nstolen"


class UpstreamServer(LoopThread):
    def __init__(self, name: str = "up", unix_path: str | None = None, ssl: object = None) -> None:
        super().__init__(name)
        self.name = name
        self.unix_path = unix_path
        self.ssl = ssl
        self.requests = 0
        self.connections = 0
        self.paths: list[str] = []
        self.served: list[tuple[int, str]] = []
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # -- lifecycle -------------------------------------------------------------------------
    def _stop(self) -> None:
        for w in list(self._writers):
            w.transport.abort()
        if self._server is not None:
            self._server.close()
        assert self._loop is not None  # called on it
        self._loop.stop()

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.unix_path:
            self._server = loop.run_until_complete(asyncio.start_unix_server(self._handle, self.unix_path))
        else:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0, limit=1 << 20, ssl=self.ssl)
            )
            self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl else 'http'}://127.0.0.1:{self.port}"

    # -- protocol --------------------------------------------------------------------------
    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        cid = self.connections
        self._writers.add(w)
        try:
            while True:
                try:
                    head = await r.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head[:-4].split(b"\r\n")
                method, target, version = lines[0].decode().split(" ", 2)
                headers: list[tuple[str, str]] = []
                for line in lines[1:]:
                    k, _, v = line.partition(b":")
                    headers.append((k.strip().lower().decode(), v.strip().decode()))
                hd: dict[str, str] = {}
                for hname, hvalue in headers:
                    hd.setdefault(hname, hvalue)
                self.requests += 1
                url = urlsplit(target)
                self.paths.append(target)
                self.served.append((cid, target))
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                path = url.path
                if path.endswith("/fault"):
                    w.write(HEAD_FAULT if method == "HEAD" else FAULTS[q.get("kind", "ok")])
                    await w.drain()
                    continue
                if path.endswith("/head"):
                    value = b"v" * int(q.get("size", "1"))
                    fields = b"".join(b"x-h%d: %s\r\n" % (i, value) for i in range(int(q.get("n", "0"))))
                    w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n" + fields + b"\r\nok")
                    await w.drain()
                    continue
                if "/delay/" in path:
                    await asyncio.sleep(float(q.get("s", "0.3")))
                    await self._reply(w, path.rsplit("/", 1)[1].encode(), head=method == "HEAD")
                    await w.drain()
                    continue
                if hd.get("upgrade", "").lower() == "websocket":
                    await self._websocket(r, w)
                    return
                if path.endswith("/reset"):
                    sock = w.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    w.transport.abort()
                    return
                if path.endswith("/garbage"):
                    w.write(b"this is not HTTP at all\r\n\r\n")
                    await w.drain()
                    w.close()
                    return
                if path.endswith("/early"):
                    # answer before reading the body, then linger (read and drop) like nginx
                    # does, so that the close does not reset the answer away
                    w.write(
                        b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope"
                    )
                    await w.drain()
                    try:
                        async with asyncio.timeout(5):
                            while await r.read(1 << 20):
                                pass
                    except TimeoutError:
                        pass
                    w.close()
                    return
                length, digest = await self._read_body(r, hd, float(q.get("pause", "0")))
                if path.endswith("/silentclose"):
                    await self._reply(w, b"bye")
                    await w.drain()
                    w.close()
                    return
                keep = hd.get("connection", "").lower() != "close"
                if path.endswith("/slow"):
                    await asyncio.sleep(float(q.get("delay", "1")))
                    await self._reply(w, b"slow ok")
                elif path.endswith("/slowbody"):
                    w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n")
                    await w.drain()
                    await asyncio.sleep(float(q.get("delay", "1")))
                    w.write(b"late ok")
                elif path.endswith("/bytes"):
                    n = int(q.get("n", "0"))
                    if q.get("chunked"):
                        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                        await self._send_pattern(w, n, chunked=True)
                        w.write(b"0\r\n\r\n")
                    elif q.get("close"):
                        w.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n")
                        await self._send_pattern(w, n, chunked=False)
                        await w.drain()
                        w.close()
                        return
                    elif q.get("onewrite") and method != "HEAD":  # head and body in one send
                        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (n, pattern(n)))
                    else:
                        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % n)
                        if method != "HEAD":
                            await self._send_pattern(w, n, chunked=False)
                elif path.endswith(("/sink", "/info")):
                    doc = {
                        "name": self.name,
                        "method": method,
                        "target": target,
                        "version": version,
                        "headers": headers,
                        "length": length,
                        "sha256": digest,
                    }
                    sslobj = w.get_extra_info("ssl_object")
                    if sslobj is not None:
                        peer = sslobj.getpeercert()
                        doc["client_cert"] = (
                            dict(x[0] for x in peer["subject"])["commonName"] if peer else None
                        )
                    await self._reply(
                        w, json.dumps(doc).encode(), ctype=b"application/json", head=method == "HEAD"
                    )
                else:
                    await self._reply(w, f"{self.name} {target}".encode(), head=method == "HEAD")
                await w.drain()
                if not keep:
                    w.close()
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(w)

    async def _read_body(self, r: asyncio.StreamReader, hd: dict, pause: float = 0.0) -> tuple[int, str]:
        """Read (and hash) the body; ``pause``: stop reading for that long after the first MiB."""
        h = hashlib.sha256()
        n = 0
        paused = pause <= 0

        async def consume(left: int) -> None:
            nonlocal n, paused
            while left:
                chunk = await r.read(min(left, 1 << 20))
                if not chunk:
                    raise asyncio.IncompleteReadError(b"", left)
                h.update(chunk)
                n += len(chunk)
                left -= len(chunk)
                if not paused and n > (1 << 20):
                    paused = True
                    await asyncio.sleep(pause)

        if "content-length" in hd:
            await consume(int(hd["content-length"]))
        elif hd.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await r.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while (await r.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    break
                await consume(size)
                await r.readexactly(2)
        return n, h.hexdigest()

    async def _send_pattern(self, w: asyncio.StreamWriter, n: int, chunked: bool) -> None:
        left = n
        while left:
            piece = _BLOCK[: min(left, len(_BLOCK))]
            if chunked:
                w.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            else:
                w.write(piece)
            left -= len(piece)
            await w.drain()

    async def _reply(
        self, w: asyncio.StreamWriter, body: bytes, ctype: bytes = b"text/plain", head: bool = False
    ) -> None:
        w.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\nx-upstream: %s\r\n\r\n"
            % (ctype, len(body), self.name.encode())
        )
        if not head:
            w.write(body)

    async def _websocket(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\r\n")
        await w.drain()
        while True:
            data = await r.read(65536)
            if not data:
                w.close()
                return
            w.write(data)
            await w.drain()
