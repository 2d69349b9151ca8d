"""monolake.uring: an asyncio-compatible event loop on io_uring (cffi + liburing), and the
runtime choice between it, uvloop and asyncio."""

from __future__ import annotations

import asyncio
from typing import Any

from monolake.uring.probing import Probe, probe

__all__ = ["EventLoopPolicy", "Probe", "new_event_loop", "probe"]


def new_event_loop(**kwargs: Any) -> asyncio.AbstractEventLoop:
    """A fresh io_uring event loop (imports the extension lazily: probing must not need it)."""
    from monolake.uring.loop import new_event_loop as _new

    return _new(**kwargs)


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """For code that creates loops through the policy (``asyncio.run`` before 3.12, libraries
    calling ``asyncio.new_event_loop()``): ``asyncio.set_event_loop_policy(EventLoopPolicy())``."""

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return new_event_loop()
