"""Bounded busy polling, a property of a worker's event loop (``[runtime] busy_poll_us``).

Why: a proxy hop costs its core two wake-ups per request (the request, then the upstream's
reply). A core that went to sleep between them pays the idle exit and the cross-core wake-up
(large on virtual machines, where a halted vCPU must be rescheduled by the hypervisor), which
can cost more than the proxy's own work. For ``busy_poll_us`` after the last network events
the loop polls with a zero timeout instead of sleeping, so a busy proxy stays awake; an idle
one sleeps again once the window has passed, so the extra CPU is bounded by one window per
burst of traffic. It is the loop's job, not a service's: HTTP and Thrift servers both gain.

Loops: io_uring polls the ring inside its own wait (``UringEventLoop.busy_poll``); asyncio's
selector loop gets the same through a selector wrapper; uvloop exposes no hook into its poll,
so with busy polling on, the legacy runtime uses asyncio's selector loop instead of uvloop.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable
from time import monotonic
from typing import Any

import structlog

from monolake.uring.runtime import LoopChoice

log = structlog.get_logger()


def spin(
    poll: Callable[[float | None], Any], timeout: float | None, until: float
) -> tuple[Any, float | None]:
    """Poll with a zero timeout until the monotonic time ``until`` (or until ``timeout`` runs
    out, if sooner). Returns (events, timeout) as soon as ``poll`` reports some, else
    (None, what is left of ``timeout``) for the sleeping wait that follows. Shared by the
    io_uring loop and the selector wrapper below."""
    if timeout is not None and timeout <= 0:
        return None, timeout
    start = monotonic()
    if start >= until:
        return None, timeout
    end = until if timeout is None else min(until, start + timeout)
    while True:
        ready = poll(0)
        if ready:
            return ready, timeout
        now = monotonic()
        if now >= end:
            break
    return None, None if timeout is None else max(0.0, timeout - (now - start))


class BusyPollSelector(selectors.BaseSelector):
    """Wraps an asyncio selector loop's selector: zero-timeout polls for ``window`` seconds
    after the last ready events, before a wait that would otherwise sleep."""

    def __init__(self, inner: selectors.BaseSelector, window: float) -> None:
        self.inner = inner
        self.window = window
        self._last_events = 0.0

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self.inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self.inner.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self.inner.modify(fileobj, events, data)

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self.inner.get_key(fileobj)

    def get_map(self) -> Any:
        return self.inner.get_map()

    def close(self) -> None:
        self.inner.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = None
        if self.window:
            ready, timeout = spin(self.inner.select, timeout, self._last_events + self.window)
        if not ready:
            ready = self.inner.select(timeout)
        if ready:
            self._last_events = monotonic()
        return ready


def set_busy_poll(loop: asyncio.AbstractEventLoop, busy_poll_us: int) -> bool:
    """Set ``loop``'s busy-poll window (0 turns it off); False if this loop cannot do it."""
    seconds = max(0, int(busy_poll_us)) / 1e6
    if hasattr(type(loop), "busy_poll"):  # UringEventLoop: native, in its ring wait
        loop.busy_poll = seconds  # type: ignore[attr-defined]
        return True
    if isinstance(loop, asyncio.BaseEventLoop) and isinstance(
        getattr(loop, "_selector", None), selectors.BaseSelector
    ):
        sel = loop._selector  # type: ignore[attr-defined]
        if isinstance(sel, BusyPollSelector):
            sel.window = seconds
        elif seconds:
            loop._selector = BusyPollSelector(sel, seconds)  # type: ignore[attr-defined]
        return True
    return not seconds


def with_busy_poll(choice: LoopChoice, busy_poll_us: int) -> LoopChoice:
    """``choice`` with its loops built busy-polling ``busy_poll_us`` (unchanged when 0).

    uvloop cannot busy-poll: it is swapped for asyncio's selector loop, and the detail says so.
    """
    if busy_poll_us <= 0:
        return choice
    factory: Callable[[], asyncio.AbstractEventLoop] = choice.factory
    name, detail = choice.name, choice.detail
    if name == "uvloop":
        factory, name = asyncio.SelectorEventLoop, "asyncio"
        detail = "asyncio selector loop (epoll; uvloop has no hook for busy_poll_us)"

    def make() -> asyncio.AbstractEventLoop:
        loop = factory()
        if not set_busy_poll(loop, busy_poll_us):
            log.warning("busy polling unsupported by this event loop", loop=type(loop).__name__)
        return loop

    return LoopChoice(make, name, f"{detail} busy_poll_us={busy_poll_us}")
