"""File descriptors handed from one worker generation to the next, and who claims which.

An exporter appends dup'ed fds to a list and refers to them by index in its (picklable)
state; the importer claims each one with ``take_fd(index)``: ownership moves to the caller and
the slot becomes -1, so a second claim gets -1 and ``close_untaken`` closes exactly what nobody
claimed. ``FdList`` is the one implementation: the worker's ``Snapshot`` (worker/state.py),
service state (worker/service/state.py) and the upstream pools all claim through it."""

from __future__ import annotations

import os
from typing import Protocol


class FdSource(Protocol):
    """Where exported fds are claimed from: -1 when ``index`` is out of range or taken."""

    def take_fd(self, index: int) -> int: ...


class FdList:
    """An ``FdSource`` over a list of fds (shared with the caller, not copied)."""

    __slots__ = ("fds",)

    def __init__(self, fds: list[int] | None = None) -> None:
        self.fds: list[int] = fds if fds is not None else []

    def take_fd(self, index: int) -> int:
        """Hand over ownership of one fd (-1 if already taken or out of range)."""
        fds = self.fds
        if 0 <= index < len(fds):
            fd, fds[index] = fds[index], -1
            return fd
        return -1

    def close_untaken(self) -> None:
        """Close every fd no importer claimed, so none leaks."""
        fds = self.fds
        for i, fd in enumerate(fds):
            if fd >= 0:
                fds[i] = -1
                try:
                    os.close(fd)
                except OSError:
                    pass


NO_FDS: FdSource = FdList([])
"""Nothing to claim: a fresh start, or an in-place reload (the live instance is handed over)."""
