"""The worker's choice of event loop: io_uring, uvloop or asyncio.

Why here and not in the worker: the choice depends on io_uring details (kernel, sysctl, seccomp,
setup flags, whether the extension was built) that only this package knows.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from monolake.uring.probing import Probe, probe

log = structlog.get_logger()

RUNTIME_TYPES = ("auto", "io_uring", "legacy")


class RuntimeUnavailable(RuntimeError):
    """An explicit ``runtime_type = "io_uring"`` that this process cannot have."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class LoopChoice:
    """A loop factory for ``asyncio.Runner(loop_factory=...)``, its name and a human detail."""

    factory: Callable[[], asyncio.AbstractEventLoop]
    name: str
    detail: str


def legacy_loop() -> LoopChoice:
    """uvloop if importable, else asyncio's selector (epoll) loop."""
    try:
        import uvloop
    except ImportError:
        return LoopChoice(asyncio.SelectorEventLoop, "asyncio", "asyncio selector loop (epoll)")
    return LoopChoice(uvloop.new_event_loop, "uvloop", f"uvloop {uvloop.__version__}")


def io_uring_loop(p: Probe, entries: int) -> LoopChoice:
    from monolake.uring.loop import new_event_loop

    factory = functools.partial(new_event_loop, entries=entries, setup_flags=p.setup_flags)
    return LoopChoice(
        factory, "io_uring", f"io_uring entries={entries} flags={p.setup_flags} kernel={p.kernel}"
    )


_logged_missing = False


def _log_fallback(p: Probe, fallback: LoopChoice) -> None:
    """One clear line per process saying why io_uring is not used and what the worker runs instead."""
    global _logged_missing
    if _logged_missing:
        return
    _logged_missing = True
    if "extension" in p.reason:
        log.warning(
            "io_uring unavailable: the monolake.uring._uring extension was not built "
            "(install liburing-dev and reinstall monolake); falling back",
            fallback=fallback.name,
        )
    else:
        log.warning("io_uring unavailable; falling back", reason=p.reason, fallback=fallback.name)


def choose_loop(runtime_type: str = "auto", entries: int = 1024) -> LoopChoice:
    """Pick the loop for ``runtime_type`` ("auto", "io_uring" or "legacy")."""
    if runtime_type not in RUNTIME_TYPES:
        raise ValueError(f"runtime_type must be one of {RUNTIME_TYPES}, got {runtime_type!r}")
    if runtime_type == "legacy":
        return legacy_loop()
    p = probe()
    if p.available and _loop_implemented():
        return io_uring_loop(p, entries)
    reason = p.reason if not p.available else "the io_uring event loop is not implemented yet"
    if runtime_type == "io_uring":
        raise RuntimeUnavailable(
            f'runtime_type = "io_uring" was requested but io_uring is unavailable: {reason}'
        )
    fallback = legacy_loop()
    _log_fallback(Probe(False, reason, p.setup_flags, p.kernel), fallback)
    return LoopChoice(fallback.factory, fallback.name, f"{fallback.detail} (io_uring unavailable: {reason})")


def _loop_implemented() -> bool:
    try:
        import monolake.uring.loop  # noqa: F401
    except ImportError:
        return False
    return True
