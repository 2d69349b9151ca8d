"""HTTP upstreams on chosen loopback addresses (127.0.0.x), each counting its requests and
its open connections, so a test sees where traffic goes and when pooled connections close."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Backend:
    """``GET /<anything>`` answers ``<name>`` (``/slow`` after ``slow`` seconds); keep-alive
    HTTP/1.1."""

    def __init__(self, address: str, port: int, name: str, tls: tuple[str, str] | None = None) -> None:
        outer = self
        self.address, self.name = address, name
        self.requests = 0
        self.slow = 1.5
        self.open_connections = 0
        self.hosts: set[str] = set()
        self.client_ports: list[int] = []  # the proxy's side of each request's connection
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # head and body in one send: written apart, Nagle holds the body back until the
            # proxy's delayed ACK (~40 ms a request, a closed-loop client at ~20 requests/s)
            wbufsize = 1 << 16

            def log_message(self, *args: object) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with outer._lock:
                    outer.open_connections += 1
                    outer._sockets.add(self.connection)

            def finish(self) -> None:
                try:
                    super().finish()
                finally:
                    with outer._lock:
                        outer.open_connections -= 1
                        outer._sockets.discard(self.connection)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.do_GET()

            def do_GET(self) -> None:
                with outer._lock:
                    outer.requests += 1
                    outer.hosts.add(self.headers.get("Host", ""))
                    outer.client_ports.append(self.client_address[1])
                body = outer.name.encode()
                if "/slow" in self.path:
                    time.sleep(outer.slow)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        server_class = ThreadingHTTPServer
        if ":" in address:

            class V6(ThreadingHTTPServer):
                address_family = socket.AF_INET6

            server_class = V6
        self.server = server_class((address, port), Handler)
        self.server.daemon_threads = True
        if tls is not None:  # (chain, key): an https upstream
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(*tls)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop listening and end every open connection (as a crashed upstream would)."""
        self.server.shutdown()
        self.server.server_close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Backends:
    """Several backends, closed together."""

    def __init__(self) -> None:
        self.all: list[Backend] = []

    def add(self, address: str, port: int, name: str, tls: tuple[str, str] | None = None) -> Backend:
        b = Backend(address, port, name, tls)
        self.all.append(b)
        return b

    def close(self) -> None:
        for b in self.all:
            try:
                b.close()
            except OSError:
                pass
