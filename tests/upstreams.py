"""Small real upstream servers for end-to-end tests (threads in the test process, loopback only)."""

from __future__ import annotations

import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def pattern(size: int) -> bytes:
    """Deterministic bytes, so a client can check a body without holding a copy."""
    block = hashlib.sha256(b"monolake").digest() * 2048  # 64 KiB
    out = block * (size // len(block)) + block[: size % len(block)]
    return out


class Upstream:
    """A keep-alive HTTP/1.1 upstream.

    - ``/id``: ``<name> <client port>`` — the client port identifies the proxy's connection;
    - ``/bytes?n=N``: N bytes of ``pattern`` (Content-Length);
    - ``/stream?chunks=N&delay=S&size=B``: N chunks of B bytes, S seconds apart (chunked);
    - ``/slow?delay=S``: answers after S seconds.
    """

    def __init__(self, name: str = "up") -> None:
        outer = self
        self.name = name
        self.requests = 0
        self.client_ports: list[int] = []
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # head and body in one send: written apart, Nagle holds the body back until the
            # proxy's delayed ACK (~40 ms a request, a closed-loop client at ~20 requests/s)
            wbufsize = 1 << 16

            def log_message(self, *args) -> None:
                pass

            def _reply(self, body: bytes, status: int = 200) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                with outer._lock:
                    outer.requests += 1
                    outer.client_ports.append(self.client_address[1])
                if url.path.endswith("/id"):
                    self._reply(f"{outer.name} {self.client_address[1]}".encode())
                elif url.path.endswith("/bytes"):
                    self._reply(pattern(int(q.get("n", "0"))))
                elif url.path.endswith("/slow"):
                    time.sleep(float(q.get("delay", "1")))
                    self._reply(b"slow ok")
                elif url.path.endswith("/stream"):
                    chunks, delay = int(q.get("chunks", "10")), float(q.get("delay", "0.1"))
                    size = int(q.get("size", "1024"))
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    piece = pattern(size)
                    for _ in range(chunks):
                        self.wfile.write(f"{size:x}\r\n".encode() + piece + b"\r\n")
                        self.wfile.flush()
                        time.sleep(delay)
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self._reply(f"{outer.name} {url.path}".encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
