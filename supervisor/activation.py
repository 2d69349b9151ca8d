"""systemd socket activation: listening sockets inherited through ``LISTEN_FDS``.

systemd (or any launcher speaking the protocol) binds the sockets of a ``.socket`` unit and
starts the master with them as fds 3, 4, … and the environment ``LISTEN_PID`` (the master's
pid: the variables are for this process only), ``LISTEN_FDS`` (how many) and optionally
``LISTEN_FDNAMES`` (colon-separated ``FileDescriptorName=`` values).

Each inherited socket is matched to a configured listener: by name first (a
``FileDescriptorName=`` equal to the server's name), then by address (the socket's bound
address against the listener's ``host:port`` or unix path). Unmatched sockets are closed with
a warning; listeners without a socket are bound as usual.

A TCP listener has one SO_REUSEPORT socket per worker slot, but systemd hands over one. The
activated socket serves slot 0; the other slots get fresh SO_REUSEPORT sockets bound to the
same address, which join the activated socket's reuseport group when it has SO_REUSEPORT
(``ReusePort=yes`` in the .socket unit). Without it a second bind would fail, so the other
slots share the activated socket instead (a dup: one accept queue for every worker).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import structlog

from monolake.supervisor.sockets import bind_tcp

log = structlog.get_logger()

SD_LISTEN_FDS_START = 3
ENV_KEYS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")

# as monolake.supervisor.listeners.listener_key: ("socket", host, port) | ("unix", path, 0)
Key = tuple[str, str, int]


@dataclass
class Activated:
    """One inherited listening socket."""

    sock: socket.socket
    name: str  # its FileDescriptorName ("" if none)
    address: Key  # ("socket", ip, port) or ("unix", path, 0), from getsockname()
    shared_warned: bool = False

    @property
    def reuseport(self) -> bool:
        try:
            return bool(self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))
        except OSError:
            return False

    def describe(self) -> str:
        if self.address[0] == "unix":
            return f"unix:{self.address[1]}"
        host, port = self.address[1], self.address[2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def inherited_sockets(
    environ: MutableMapping[str, str] | None = None, start: int = SD_LISTEN_FDS_START
) -> list[Activated]:
    """Adopt the listening sockets passed to this process, and unset the variables.

    Nothing is adopted unless ``LISTEN_PID`` names this process: the variables may have
    leaked from a parent that was itself activated.
    """
    env = os.environ if environ is None else environ
    pid, count, names = (env.get(k, "") for k in ENV_KEYS)
    for key in ENV_KEYS:
        env.pop(key, None)  # never inherited by the workers
    if not count:
        return []
    if not pid.isdigit() or int(pid) != os.getpid():
        log.warning("LISTEN_FDS ignored: LISTEN_PID is not this process", listen_pid=pid, pid=os.getpid())
        return []
    try:
        n = int(count)
    except ValueError:
        log.warning("LISTEN_FDS ignored: not a number", listen_fds=count)
        return []
    labels = names.split(":") if names else []
    adopted: list[Activated] = []
    for i in range(n):
        fd = start + i
        name = labels[i] if i < len(labels) else ""
        sock = _adopt(fd, name)
        if sock is not None:
            adopted.append(Activated(sock, name, bound_key(sock)))
    if adopted:
        log.info(
            "sockets inherited (socket activation)",
            sockets=[f"{a.describe()}{' (' + a.name + ')' if a.name else ''}" for a in adopted],
        )
    return adopted


def _adopt(fd: int, name: str) -> socket.socket | None:
    """The fd as a listening stream socket, or None (closed, with a warning)."""
    try:
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        log.warning("inherited fd is not a socket; closing it", fd=fd, name=name, error=str(exc))
        _close_fd(fd)
        return None
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    if (
        sock.type != socket.SOCK_STREAM
        or not listening
        or sock.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)
    ):
        log.warning("inherited socket is not a listening stream socket; closing it", fd=fd, name=name)
        sock.close()
        return None
    sock.setblocking(False)
    return sock


def _close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def bound_key(sock: socket.socket) -> Key:
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        path = name.decode(errors="replace") if isinstance(name, bytes) else name
        return ("unix", path, 0)
    return ("socket", str(ipaddress.ip_address(name[0].split("%")[0])), int(name[1]))


def _host_ips(host: str, port: int) -> set[str]:
    """The IPs a configured host stands for (an IP literal, or a name resolved locally)."""
    try:
        return {str(ipaddress.ip_address(host))}
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return set()
    return {str(ipaddress.ip_address(str(info[4][0]).split("%")[0])) for info in infos}


def _same_address(listener_key: Key, activated: Activated) -> bool:
    got = activated.address
    if listener_key[0] != got[0]:
        return False
    if got[0] == "unix":
        return bool(got[1]) and os.path.realpath(listener_key[1]) == os.path.realpath(got[1])
    return listener_key[2] == got[2] and got[1] in _host_ips(listener_key[1], listener_key[2])


def match(activated: list[Activated], servers: dict[str, Any]) -> dict[Key, Activated]:
    """Pair inherited sockets with configured listeners (by name, then by address).

    Returns listener key -> socket; sockets no listener wants are closed.
    """
    from monolake.supervisor.listeners import listener_key

    left = list(activated)
    matched: dict[Key, Activated] = {}
    keys = {name: listener_key(server.listener) for name, server in servers.items()}
    for by_name in (True, False):
        for name, key in keys.items():
            if key in matched:
                continue
            for candidate in left:
                if (candidate.name == name) if by_name else _same_address(key, candidate):
                    if by_name and not _same_address(key, candidate):
                        log.warning(
                            "inherited socket named after a server is bound elsewhere; using it anyway",
                            server=name,
                            socket=candidate.describe(),
                        )
                    matched[key] = candidate
                    left.remove(candidate)
                    break
    for extra in left:
        log.warning(
            "inherited socket matches no configured listener; closing it",
            socket=extra.describe(),
            name=extra.name,
        )
        extra.sock.close()
    return matched


def extra_slot_socket(first: Activated, backlog: int) -> socket.socket:
    """A socket for slot 1+ of an activated TCP listener (see the module docstring)."""
    if first.reuseport:
        return bind_tcp(first.address[1], first.address[2], backlog)
    if not first.shared_warned:
        first.shared_warned = True
        log.warning(
            "activated socket has no SO_REUSEPORT (set ReusePort=yes in the .socket "
            "unit); all workers share its accept queue",
            socket=first.describe(),
        )
    dup = first.sock.dup()
    dup.setblocking(False)
    return dup
