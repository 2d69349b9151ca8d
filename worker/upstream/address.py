"""Where an upstream listens, and how the kit opens or takes over a connection to it.

One class for HTTP and Thrift upstreams: ``host:port`` or a unix socket ``path``. What is
protocol-specific (TLS for HTTP, framing for Thrift, their error types) stays in the pools,
which pass ``ssl``/``server_hostname`` and map the exceptions themselves."""

from __future__ import annotations

import asyncio
import socket
import ssl as _ssl
from collections.abc import Callable
from typing import TypeVar

P = TypeVar("P", bound=asyncio.BaseProtocol)


def host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 literal in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Address:
    """``host:port`` (TCP) or ``path`` (a unix socket); ``label`` names it in logs and state."""

    __slots__ = ("host", "label", "path", "port")

    def __init__(self, host: str = "", port: int = 0, path: str = "") -> None:
        self.host, self.port, self.path = host, port, path
        self.label = f"unix:{path}" if path else host_port(host, port)

    async def connect(
        self,
        loop: asyncio.AbstractEventLoop,
        factory: Callable[[], P],
        *,
        ssl: _ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> tuple[asyncio.Transport, P]:
        """A new connection (TLS only over TCP); the caller bounds it with its connect timeout."""
        if self.path:
            return await loop.create_unix_connection(factory, self.path)
        return await loop.create_connection(
            factory, self.host, self.port, ssl=ssl, server_hostname=server_hostname if ssl else None
        )


async def adopt(
    loop: asyncio.AbstractEventLoop, factory: Callable[[], P], sock: socket.socket
) -> tuple[asyncio.Transport, P]:
    """Wrap an already connected socket (one a previous generation handed over)."""
    if sock.family == socket.AF_UNIX:
        return await loop.create_unix_connection(factory, sock=sock)
    return await loop.create_connection(factory, sock=sock)
