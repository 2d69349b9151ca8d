"""Typed per-connection and per-request contexts handed to every service call.

A connection context is created once per accepted connection; each request gets a light
``RequestContext`` that points at it (Monolake forks its context per request so that
per-request changes never leak into the next request on the same connection).
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from typing import Any

Address = Any  # (host, port) for TCP, a path string for unix sockets, None when unknown


@dataclass(slots=True)
class TlsInfo:
    """What the TLS handshake negotiated on a downstream connection."""

    version: str | None
    cipher: str | None
    server_name: str | None
    alpn: str | None


@dataclass(slots=True)
class ConnectionContext:
    """Facts about one downstream connection."""

    server: str
    worker_slot: int
    connection_id: int
    peer: Address = None        # the client: from PROXY protocol when present, else the socket peer
    local: Address = None       # our address: from PROXY protocol when present, else the socket name
    socket_peer: Address = None  # the direct socket peer (the load balancer when PROXY protocol is on)
    tls: TlsInfo | None = None
    scheme: str = "http"
    extra: dict[str, Any] = field(default_factory=dict)
    forward_cache: Any = None   # the proxy's per-connection forwarding header facts


_request_counter = itertools.count(1)
_request_prefix = f"{os.getpid():x}-"


class RequestContext:
    """Per-request view: the connection context plus what routing and proxying decided.

    Built for every request, so it is cheap: the id is formatted and ``extra`` allocated only
    when somebody asks for them.
    """

    __slots__ = ("conn", "_seq", "_id", "route", "params", "upstream", "started", "_extra")

    def __init__(self, conn: ConnectionContext, started: float | None = None) -> None:
        self.conn = conn
        self._seq = next(_request_counter)
        self._id: str | None = None
        self.route: Any = None            # the matched route (set by the router service)
        self.params: dict[str, str] = _NO_PARAMS  # path parameters of the matched route
        self.upstream: str | None = None  # the upstream chosen (set by the proxy)
        self.started = time.monotonic() if started is None else started
        self._extra: dict[str, Any] | None = None

    @property
    def request_id(self) -> str:
        rid = self._id
        if rid is None:
            rid = self._id = f"{_request_prefix}{self._seq}"
        return rid

    @property
    def extra(self) -> dict[str, Any]:
        """Free-form per-request data for your own services."""
        if self._extra is None:
            self._extra = {}
        return self._extra

    @property
    def peer(self) -> Address:
        return self.conn.peer

    @property
    def local(self) -> Address:
        return self.conn.local

    @property
    def tls(self) -> TlsInfo | None:
        return self.conn.tls

    @property
    def server(self) -> str:
        return self.conn.server


_NO_PARAMS: dict[str, str] = {}
