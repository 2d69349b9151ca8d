"""A byte pipe between a client and an upstream after ``101 Switching Protocols``.

Both ends are the existing protocol objects; bytes flow from one transport's ``data_received``
straight into the other's ``write``, with pause_reading/resume_reading across the two for
backpressure and half-close (``write_eof``) passed through.
"""

from __future__ import annotations

from typing import Any


class Tunnel:
    def __init__(self, upstream: Any) -> None:
        self.upstream = upstream  # UpstreamConnection
        self.client: Any = None  # HttpServerProtocol
        self._client_eof = False
        self._upstream_eof = False
        self._closed = False

    def attach_client(self, client: Any, pending: list[bytes]) -> None:
        """Start piping: called by the server once the 101 head is written."""
        self.client = client
        rest = self.upstream.attach_tunnel(self)
        if rest:
            client.tunnel_write(rest)
        t = self.upstream.transport
        for data in pending:
            t.write(data)
        if self.upstream.closed:
            self.upstream_closed()
            return
        client.tunnel_pause_reading(False)

    def from_client(self, data: bytes) -> None:
        up = self.upstream
        if not up.closed:
            up.transport.write(data)

    def from_upstream(self, data: bytes) -> None:
        if self.client is not None:
            self.client.tunnel_write(data)

    # backpressure
    def client_write_paused(self, paused: bool) -> None:
        up = self.upstream
        if up.closed:
            return
        try:
            if paused:
                up.transport.pause_reading()
            else:
                up.transport.resume_reading()
        except (RuntimeError, AttributeError):
            pass

    def upstream_write_paused(self, paused: bool) -> None:
        if self.client is not None:
            self.client.tunnel_pause_reading(paused)

    # half-close and close
    def client_eof(self) -> None:
        self._client_eof = True
        up = self.upstream
        if not up.closed and up.transport.can_write_eof():
            up.transport.write_eof()
        if self._upstream_eof:
            self.close()

    def upstream_eof(self) -> None:
        self._upstream_eof = True
        if self.client is not None:
            self.client.tunnel_write_eof()
        if self._client_eof:
            self.close()

    def client_closed(self) -> None:
        self.client = None
        self.close()

    def upstream_closed(self) -> None:
        client = self.client
        self.client = None
        if client is not None:
            client.tunnel_close()
        self._closed = True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.upstream.close()
        client = self.client
        if client is not None:
            client.tunnel_close()
