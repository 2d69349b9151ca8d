"""A ``selectors`` implementation on io_uring poll operations.

Why: asyncio's add_reader/add_writer, the sock_* coroutines, pipes, subprocesses and the
self-pipe all sit on a selector. Emulating one on the ring keeps all of that working with a single
``io_uring_enter`` per loop iteration. Polls are one-shot and re-armed before the next wait if the
fd is still registered, which gives epoll's level-triggered semantics.
"""

from __future__ import annotations

import errno
import functools
import selectors
from collections.abc import Callable
from typing import Any

from monolake.uring._uring import lib
from monolake.uring.ring import K_POLL, Ring

EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE
POLLIN = lib.POLLIN
POLLOUT = lib.POLLOUT
NOT_IN = ~POLLIN
NOT_OUT = ~POLLOUT


class UringSelector(selectors._BaseSelectorImpl):  # type: ignore[name-defined]
    """Selector whose readiness comes from io_uring POLL_ADD completions.

    The loop does not call ``select()``: it runs the ring itself and dispatches every completion
    (polls reach :meth:`on_poll`). ``select()`` does the same for a standalone user, returning the
    ready keys.
    """

    # set by _BaseSelectorImpl.__init__; typeshed does not declare the private base
    _fd_to_key: dict[int, selectors.SelectorKey]

    def __init__(
        self,
        ring: Ring,
        handlers: dict[int, Callable[[int, int, int, int], None]],
        on_ready: Callable[[selectors.SelectorKey, int], None],
    ) -> None:
        super().__init__()
        self._ring = ring
        self._handlers = handlers
        self._on_ready = on_ready
        self._armed: dict[int, int] = {}  # fd -> token of its poll in flight
        self._rearm: set[int] = set()  # fds to arm before the next wait

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = super().register(fileobj, events, data)
        self._rearm.add(key.fd)
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        key = super().unregister(fileobj)
        self._disarm(key.fd)
        return key

    def _disarm(self, fd: int) -> None:
        self._rearm.discard(fd)
        token = self._armed.pop(fd, None)
        if token is not None:
            self._handlers.pop(token, None)
            if not self._ring.closed:
                lib.mu_cancel(self._ring.ptr, (token << 8) | K_POLL)

    def arm_pending(self) -> None:
        """Arm a poll for each registered fd that has none in flight (called before each wait)."""
        if not self._rearm:
            return
        ring = self._ring
        fd_to_key = self._fd_to_key
        for fd in self._rearm:
            key = fd_to_key.get(fd)
            if key is None or fd in self._armed:
                continue
            mask = (POLLIN if key.events & EVENT_READ else 0) | (POLLOUT if key.events & EVENT_WRITE else 0)
            token = ring.token()
            self._armed[fd] = token
            self._handlers[token] = functools.partial(self.on_poll, fd, token)
            lib.mu_poll_add(ring.ptr, fd, mask, (token << 8) | K_POLL)
        self._rearm.clear()

    def on_poll(self, fd: int, token: int, kind: int, res: int, flags: int, off: int) -> None:
        """A poll completed: report the fd ready and re-arm it before the next wait."""
        self._handlers.pop(token, None)
        if self._armed.get(fd) != token:
            return
        del self._armed[fd]
        key = self._fd_to_key.get(fd)
        if key is None:
            return
        if res < 0:
            if res == -errno.ECANCELED:
                return
            if res == -errno.EBADF:
                return  # closed without unregistering: like epoll, it silently drops out
            events = key.events  # other errors: let the callbacks see them
        else:
            events = 0
            if res & NOT_IN:
                events |= EVENT_WRITE
            if res & NOT_OUT:
                events |= EVENT_READ
            events &= key.events
        self._rearm.add(fd)
        if events:
            self._on_ready(key, events)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready: list[tuple[selectors.SelectorKey, int]] = []
        saved = self._on_ready
        self._on_ready = lambda key, ev: ready.append((key, ev))
        try:
            self.arm_pending()
            batch = self._ring.run(timeout)
            it = iter(batch)
            for ud, res, flags, off in zip(it, it, it, it, strict=False):  # flat quadruples
                h = self._handlers.get(ud >> 8)
                if h is not None:
                    h(ud & 255, res, flags, off)
        finally:
            self._on_ready = saved
        return ready

    def close(self) -> None:
        for fd in list(self._armed):
            self._disarm(fd)
        super().close()
