"""What the master reacts to, as values on one queue.

Signals, control-socket commands, worker channels, child exits and timers all become events
posted to ``Events``; the master's one consumer (``Master.handle``) takes them in order. So
nothing the master does interleaves with anything else it does, except across an ``await``
of a task it started (a reload, a stop), and every cause of a change is one line in
``Master.handle``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from monolake.supervisor.workers import Slot, WorkerProc


@dataclass(frozen=True)
class SignalReceived:
    signum: int


@dataclass(frozen=True)
class CommandReceived:
    """A control-socket request; the consumer answers on ``reply``."""

    request: dict[str, Any]  # JSON from the control socket
    reply: asyncio.Future[dict[str, Any]] = field(compare=False)


@dataclass(frozen=True)
class WorkerReadable:
    """A worker's control channel has bytes (the consumer reads and decodes them)."""

    worker: WorkerProc = field(compare=False)


@dataclass(frozen=True)
class RespawnDue:
    slot: Slot = field(compare=False)


@dataclass(frozen=True)
class KillDue:
    """A hung worker's stack dump had its grace period."""

    worker: WorkerProc = field(compare=False)


@dataclass(frozen=True)
class Tick:
    """The watchdog's period: check heartbeats."""


@dataclass(frozen=True)
class Reconcile:
    """Something changed the desired state (a reload finished, a slot was removed)."""


Event = SignalReceived | CommandReceived | WorkerReadable | RespawnDue | KillDue | Tick | Reconcile


class Events:
    """The queue, and timers that post to it."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Event] = asyncio.Queue()

    def post(self, event: Event) -> None:
        self._queue.put_nowait(event)

    def later(self, delay: float, event: Event) -> asyncio.TimerHandle:
        """Post ``event`` in ``delay`` seconds (cancel the handle to call it off)."""
        return asyncio.get_running_loop().call_later(delay, self.post, event)

    async def get(self) -> Event:
        return await self._queue.get()
