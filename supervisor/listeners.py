"""The master's listening sockets: one SO_REUSEPORT socket per TCP listener per slot, one
shared socket per unix listener.

The master keeps every socket open for its whole life (or until a reload removes the listener),
so a worker that dies or is replaced leaves its accept queue intact for its successor:
closing a SO_REUSEPORT socket would reset every connection waiting in its queue.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any

import structlog

from monolake.supervisor import activation
from monolake.supervisor.sockets import bind_tcp, bind_unix

if TYPE_CHECKING:
    from monolake.conf.schema import ListenerConfig

log = structlog.get_logger()

Key = activation.Key  # ("socket", host, port) | ("unix", path, 0)


def listener_key(listener: ListenerConfig) -> Key:
    if listener.type == "unix":
        return ("unix", listener.path, 0)
    return ("socket", listener.host, listener.port)


def describe(key: Key) -> str:
    if key[0] == "unix":
        return f"unix:{key[1]}"
    host, port = key[1], key[2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Listeners:
    def __init__(self) -> None:
        self.tcp: dict[Key, dict[int, socket.socket]] = {}
        self.unix: dict[Key, socket.socket] = {}
        # socket activation (activation.py): sockets not yet in use, and every activated key
        self.inherited: dict[Key, activation.Activated] = {}
        self.activated: dict[Key, activation.Activated] = {}

    def adopt(self, matched: dict[Key, activation.Activated]) -> None:
        """Use these inherited sockets (systemd socket activation) instead of binding."""
        self.inherited = dict(matched)
        self.activated = dict(matched)

    def _activated(self, key: Key, slot: int | None, backlog: int) -> socket.socket | None:
        """The socket activation's socket for ``key`` (slot 0, or a unix listener), or for
        slots 1+ a socket joining it; None when ``key`` was not activated."""
        if key not in self.activated:
            return None
        got = self.inherited.pop(key, None)
        if got is not None:
            return got.sock
        if slot:
            return activation.extra_slot_socket(self.activated[key], backlog)
        return None

    def ensure(self, servers: dict[str, Any], nslots: int) -> list[tuple[Key, int | None]]:
        """Bind whatever ``servers`` on ``nslots`` slots needs and is not bound yet.

        Returns what was created, so a failed reload can close exactly that. On an error
        everything created by this call is closed again and the OSError names the address.
        """
        created: list[tuple[Key, int | None]] = []
        try:
            for server in servers.values():
                key = listener_key(server.listener)
                if key[0] == "unix":
                    if key not in self.unix:
                        self.unix[key] = self._activated(key, None, server.backlog) or bind_unix(
                            key[1], server.backlog
                        )
                        created.append((key, None))
                    continue
                per_slot = self.tcp.setdefault(key, {})
                for slot in range(nslots):
                    if slot not in per_slot:
                        per_slot[slot] = self._activated(key, slot, server.backlog) or bind_tcp(
                            key[1], key[2], server.backlog
                        )
                        created.append((key, slot))
        except OSError as exc:
            self.discard(created)
            raise OSError(exc.errno, f"cannot listen on {describe(key)}: {exc.strerror or exc}") from None
        return created

    def discard(self, created: list[tuple[Key, int | None]]) -> None:
        for key, slot in created:
            if slot is None:
                sock = self.unix.pop(key, None)
                if sock is not None:
                    sock.close()
                    if not self._forget_activated(key, sock):
                        _unlink(key[1])  # an activated socket's file belongs to systemd
            else:
                sock = self.tcp.get(key, {}).pop(slot, None)
                if sock is not None:
                    self._forget_activated(key, sock)
                    sock.close()
                if key in self.tcp and not self.tcp[key]:
                    del self.tcp[key]

    def _forget_activated(self, key: Key, sock: socket.socket) -> bool:
        """True if ``sock`` was the activated socket of ``key`` (now closed for good)."""
        got = self.activated.get(key)
        if got is not None and got.sock is sock:
            del self.activated[key]
            return True
        return False

    def for_slot(
        self, servers: dict[str, Any], slot: int, existing_only: bool = False
    ) -> tuple[dict[str, list[int]], list[int]]:
        """The ``listeners`` map and fd list of a worker ``hello`` for ``slot``
        (``existing_only``: skip listeners that have no socket for this slot)."""
        mapping: dict[str, list[int]] = {}
        fds: list[int] = []
        for name, server in servers.items():
            key = listener_key(server.listener)
            sock = self.unix.get(key) if key[0] == "unix" else self.tcp.get(key, {}).get(slot)
            if sock is None and existing_only:
                continue
            if sock is None:
                raise KeyError(f"no socket for {describe(key)} on slot {slot}")
            mapping[name] = [len(fds)]
            fds.append(sock.fileno())
        return mapping, fds

    def prune(self, servers: dict[str, Any], nslots: int) -> None:
        """Close sockets that ``servers`` on ``nslots`` slots no longer uses."""
        wanted = {listener_key(s.listener) for s in servers.values()}
        stale: list[tuple[Key, int | None]] = []
        for key in list(self.unix):
            if key not in wanted:
                stale.append((key, None))
        for key, per_slot in self.tcp.items():
            for slot in list(per_slot):
                if key not in wanted or slot >= nslots:
                    stale.append((key, slot))
        if stale:
            log.info(
                "closing listeners no longer configured", listeners=sorted({describe(k) for k, _ in stale})
            )
        self.discard(stale)

    def close_all(self) -> None:
        self.discard(
            [(k, None) for k in list(self.unix)] + [(k, s) for k, per in self.tcp.items() for s in list(per)]
        )

    def addresses(self) -> list[str]:
        return sorted(describe(k) for k in [*self.unix, *self.tcp])


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
