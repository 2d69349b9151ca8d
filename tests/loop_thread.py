"""The lifecycle of a test server that runs its own asyncio loop in a daemon thread (so a
test's blocking client and the server never share a loop)."""

from __future__ import annotations

import asyncio
import threading
from typing import Self


class LoopThread:
    """``with`` starts the thread, which opens the server (``_start``) and runs its loop, and
    waits until the server is open; leaving it calls ``_stop`` on the server's loop (which
    ends by stopping the loop) and joins the thread."""

    def __init__(self, name: str) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"upstream-{name}")

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("upstream did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._stop)
        self._thread.join(10)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._start(loop)
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Open the server on ``loop`` (not running yet), before ``with`` returns."""
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError
