"""Listening sockets: created by the master (one SO_REUSEPORT socket per TCP listener per
worker slot, one shared socket per unix listener) or by a standalone worker.

Dependency-free, so the worker can use it in standalone mode.
"""

from __future__ import annotations

import os
import socket
import stat


def bind_tcp(host: str, port: int, backlog: int, reuseport: bool = True) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    options: list[tuple[int, int]] = [(socket.SOL_SOCKET, socket.SO_REUSEADDR)]
    if reuseport:
        options.append((socket.SOL_SOCKET, socket.SO_REUSEPORT))
    if family == socket.AF_INET6:
        options.append((socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
    return _listen(socket.socket(family, socket.SOCK_STREAM), (host, port), backlog, tuple(options))


def bind_unix(path: str, backlog: int) -> socket.socket:
    """Bind a unix listener, replacing a stale socket file but never a regular file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale: nobody accepts there
        else:
            raise OSError(f"{path} is in use by another running server")
        finally:
            probe.close()
    return _listen(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), path, backlog)


def _listen(
    sock: socket.socket,
    address: str | tuple[str, int],
    backlog: int,
    options: tuple[tuple[int, int], ...] = (),
) -> socket.socket:
    """``sock`` with the (level, option) flags in ``options`` set, bound to ``address``,
    listening and non-blocking; closed if any step fails."""
    try:
        for level, option in options:
            sock.setsockopt(level, option, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def bound_address(sock: socket.socket) -> str:
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    host, port = name[0], name[1]
    return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"
