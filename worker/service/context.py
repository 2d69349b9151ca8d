"""Typed per-connection and per-request contexts handed to every service call.

A connection context is created once per accepted connection; each request gets a light
``RequestContext`` that points at it (Monolake forks its context per request so that
per-request changes never leak into the next request on the same connection).
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from typing import Any

Address = Any  # (host, port) for TCP, a path string for unix sockets, None when unknown


@dataclass(slots=True)
class TlsInfo:
    """What the TLS handshake negotiated on a downstream connection."""

    version: str | None
    cipher: str | None
    server_name: str | None
    alpn: str | None


_UNSET: Any = object()
_SHARED_MAX = 4096  # distinct client hosts / forwarding facts shared before the tables reset
_hosts: dict[str, str] = {}
_forward_facts: dict[Any, Any] = {}


def _share(table: dict[Any, Any], value: Any) -> Any:
    """One object per distinct value across connections (idle connections from the same
    client then hold a pointer, not a copy; issue 16 §4). Bounded: reset when full."""
    got = table.get(value)
    if got is None:
        if len(table) >= _SHARED_MAX:
            table.clear()
        got = table[value] = value
    return got


def _tcp_addr(addr: Any) -> Address:
    """(host, port) of a socket address: IPv6 flow info and scope dropped; a 2-tuple as is
    (the transport keeps that one anyway)."""
    if isinstance(addr, tuple) and len(addr) > 2:
        return (_share(_hosts, addr[0]), addr[1])
    return addr


class ConnectionContext:
    """Facts about one downstream connection.

    Slots only, and lazy: an idle keep-alive connection holds one of these, so the socket
    addresses are asked for only when somebody reads them (from ``transport``, then kept),
    ``extra`` is allocated on first use and the forwarding facts are shared between
    connections (issue 16 §4: the eager version cost ~180 B per connection).
    """

    __slots__ = (
        "server",
        "worker_slot",
        "connection_id",
        "_peer",
        "_local",
        "_socket_peer",
        "tls",
        "scheme",
        "_extra",
        "_forward",
        "_transport",
    )

    def __init__(
        self,
        server: str,
        worker_slot: int,
        connection_id: int,
        peer: Address = _UNSET,
        local: Address = _UNSET,
        socket_peer: Address = _UNSET,
        tls: TlsInfo | None = None,
        scheme: str = "http",
        extra: dict[str, Any] | None = None,
        forward_cache: Any = None,
        transport: Any = None,
    ) -> None:
        self.server = server
        self.worker_slot = worker_slot
        self.connection_id = connection_id
        self._peer = peer if transport is not None or peer is not _UNSET else None
        self._local = local if transport is not None or local is not _UNSET else None
        self._socket_peer = socket_peer
        self.tls = tls
        self.scheme = scheme
        self._extra = extra
        self._forward = forward_cache
        self._transport = transport  # where unset addresses come from; None: they are None

    def _ask(self, name: str) -> Address:
        t = self._transport
        return _tcp_addr(t.get_extra_info(name)) if t is not None else None

    @property
    def peer(self) -> Address:
        """The client: from PROXY protocol when present, else the socket peer."""
        peer = self._peer
        if peer is _UNSET:
            peer = self._peer = self.socket_peer
        return peer

    @peer.setter
    def peer(self, value: Address) -> None:
        self._peer = value

    @property
    def local(self) -> Address:
        """Our address: from PROXY protocol when present, else the socket name."""
        local = self._local
        if local is _UNSET:
            local = self._local = self._ask("sockname")
        return local

    @local.setter
    def local(self, value: Address) -> None:
        self._local = value

    @property
    def socket_peer(self) -> Address:
        """The direct socket peer (the load balancer when PROXY protocol is on)."""
        sp = self._socket_peer
        if sp is _UNSET:
            sp = self._socket_peer = self._ask("peername")
        return sp

    @socket_peer.setter
    def socket_peer(self, value: Address) -> None:
        self._socket_peer = value

    @property
    def extra(self) -> dict[str, Any]:
        """Free-form per-connection data for your own services."""
        extra = self._extra
        if extra is None:
            extra = self._extra = {}
        return extra

    @property
    def forward_cache(self) -> Any:
        """The proxy's per-connection forwarding header facts (shared between connections)."""
        return self._forward

    @forward_cache.setter
    def forward_cache(self, value: Any) -> None:
        self._forward = None if value is None else _share(_forward_facts, value)

    def remember_addresses(self) -> None:
        """Fetch the socket addresses now (before the socket goes, for later logs)."""
        _ = self.socket_peer, self.peer, self.local

    def __repr__(self) -> str:
        return (
            f"ConnectionContext(server={self.server!r}, worker_slot={self.worker_slot}, "
            f"connection_id={self.connection_id}, peer={self.peer!r}, local={self.local!r}, "
            f"socket_peer={self.socket_peer!r}, tls={self.tls!r}, scheme={self.scheme!r})"
        )


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
        self.route: Any = None  # the matched route (set by the router service)
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
