"""HTTP upstreams whose health endpoint can be flipped, and whose listener can be closed and
reopened on the same port; each records when it served a (non-health) request, so a test can
measure when traffic left it and when it came back."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HealthBackend:
    """``GET /health`` answers ``health_status``; any other path answers ``name`` (200)."""

    def __init__(self, name: str, address: str = "127.0.0.1", port: int = 0) -> None:
        self.name, self.address, self.port = name, address, port
        self.health_status = 200
        self.health_checks = 0
        self.served: list[float] = []  # monotonic times of non-health requests
        self.hosts: set[str] = set()
        self._lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.open()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # head and body in one send: written apart, Nagle holds the body back until the
            # proxy's delayed ACK (~40 ms a request, a closed-loop client at ~20 requests/s)
            wbufsize = 1 << 16

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/health":
                    with outer._lock:
                        outer.health_checks += 1
                        outer.hosts.add(self.headers.get("Host", ""))
                    status, body = outer.health_status, b"health"
                else:
                    with outer._lock:
                        outer.served.append(time.monotonic())
                    status, body = 200, outer.name.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def open(self) -> None:
        """Listen (again) on the same address and port."""
        cls = ThreadingHTTPServer
        cls.allow_reuse_address = True
        self.server = cls((self.address, self.port), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop listening: connects are refused from now on (pooled connections are cut too)."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server.socket.close()
            self.server = None

    def requests(self) -> int:
        with self._lock:
            return len(self.served)

    def last_served(self) -> float:
        with self._lock:
            return self.served[-1] if self.served else 0.0

    def first_served_after(self, t: float) -> float | None:
        with self._lock:
            return next((x for x in self.served if x > t), None)


def free_shared_port(addresses: list[str]) -> int:
    """A port free on every one of ``addresses`` (for DNS names with several addresses)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((addresses[0], 0))
            port = s.getsockname()[1]
        try:
            for a in addresses[1:]:
                with socket.socket() as s:
                    s.bind((a, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no shared free port")
