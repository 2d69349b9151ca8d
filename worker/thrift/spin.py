"""Bounded busy polling: keep the event loop polling, not sleeping, for a short window after
network activity.

Why: a proxy hop costs two wake-ups of the proxy's core per request. On a core that went idle,
each wake-up pays the idle-exit latency (large on virtual machines: a halted vCPU must be
rescheduled by the hypervisor), which can dominate the cost of the hop. Polling for a window
somewhat longer than one upstream round trip after each event keeps a busy proxy awake; an
idle one goes back to sleep after the window, so the CPU cost is bounded by the window per
burst of traffic (the trade-off thread-per-core servers such as Seastar make permanently).
"""

from __future__ import annotations

import asyncio
import os

# seconds of busy polling after activity; off unless MONOLAKE_THRIFT_BUSY_POLL_US is set (the
# config schema has no key for it yet: it is a property of the worker's loop, see docs/thrift.md)
WINDOW = max(0.0, float(os.environ.get("MONOLAKE_THRIFT_BUSY_POLL_US", "0") or 0) / 1e6)


class BusyPoll:
    """One per event loop: ``kick(now)`` on activity keeps ``call_soon`` spinning until ``now + window``."""

    __slots__ = ("loop", "window", "until", "active")

    def __init__(self, loop: asyncio.AbstractEventLoop, window: float) -> None:
        self.loop = loop
        self.window = window
        self.until = 0.0
        self.active = False

    def kick(self, now: float) -> None:
        self.until = now + self.window
        if not self.active:
            self.active = True
            self.loop.call_soon(self._spin)

    def _spin(self) -> None:
        if self.loop.time() < self.until:
            self.loop.call_soon(self._spin)
        else:
            self.active = False


_POLLERS: dict[int, BusyPoll] = {}


def busy_poll_for(loop: asyncio.AbstractEventLoop, window: float = WINDOW) -> BusyPoll | None:
    """The loop's shared poller (None when ``window`` is 0: disabled)."""
    if window <= 0:
        return None
    poller = _POLLERS.get(id(loop))
    if poller is None or poller.loop is not loop:
        poller = _POLLERS[id(loop)] = BusyPoll(loop, window)
    return poller
