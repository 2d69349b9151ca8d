"""Fixtures for the loop conformance suite: every test runs on io_uring and on asyncio."""

from __future__ import annotations

import asyncio
import os
import resource
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from monolake.uring import probe


def _uring_factory() -> asyncio.AbstractEventLoop:
    from monolake.uring import new_event_loop

    # MONOLAKE_URING_FLAGS runs the suite on a fallback flag set (e.g. "coop_taskrun", "none")
    return new_event_loop(entries=256, setup_flags=os.environ.get("MONOLAKE_URING_FLAGS") or None)


FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "io_uring": _uring_factory,
    "asyncio": asyncio.SelectorEventLoop,
}


@pytest.fixture(params=list(FACTORIES))
def loop_factory(request: pytest.FixtureRequest) -> Callable[[], asyncio.AbstractEventLoop]:
    if request.param == "io_uring" and not probe().available:
        pytest.skip(f"io_uring unavailable: {probe().reason}")
    return FACTORIES[request.param]


@pytest.fixture
def uring_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    if not probe().available:
        pytest.skip(f"io_uring unavailable: {probe().reason}")
    return _uring_factory


def run(
    factory: Callable[[], asyncio.AbstractEventLoop], coro: Coroutine[Any, Any, Any], timeout: float = 30.0
) -> Any:
    """Run ``coro`` on a fresh loop from ``factory`` with a deadline; the loop is closed after."""
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(asyncio.wait_for(coro, timeout))


def raise_nofile(want: int) -> int:
    """Raise RLIMIT_NOFILE towards ``want`` (bounded by the hard limit); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return soft
    try:  # root may raise the hard limit too (CAP_SYS_RESOURCE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
