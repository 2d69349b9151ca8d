"""Moving idle upstream connections between generations (state migration on reload).

The old worker dups each idle connection's fd (``export_fd``) into the state message; the new
one wraps each received fd back into a non-blocking socket (``import_fd``) and its pool turns
it into a transport. Shared by the HTTP and Thrift pools."""

from __future__ import annotations

import asyncio
import os
import socket


def export_fd(transport: asyncio.BaseTransport | None) -> int:
    """A dup of the transport's socket fd (the caller then drops its own copy), or -1."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return -1
    try:
        return os.dup(sock.fileno())
    except OSError:
        return -1


def import_fd(fd: int) -> socket.socket | None:
    """The received fd as a non-blocking socket; None (and the fd closed) when it is not one."""
    if fd < 0:
        return None
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        return None
    try:
        sock.setblocking(False)
    except OSError:
        sock.close()
        return None
    return sock


def expired(idle_since: float, now: float, timeout: float) -> bool:
    """Has a connection idle since ``idle_since`` outlived ``idle_timeout_sec``?"""
    return now - idle_since >= timeout
