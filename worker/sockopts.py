"""Socket options every proxied TCP connection needs."""

from __future__ import annotations

import asyncio
import socket


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Small writes must leave at once: Nagle plus delayed ACK costs 40 ms per exchange."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
