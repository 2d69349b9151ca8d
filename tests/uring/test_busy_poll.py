"""Busy polling as a property of the event loop (``[runtime] busy_poll_us``): within the
window after events the loop polls instead of sleeping (it burns CPU), after it the loop
sleeps (it does not), and a loop without a hook into its poll is swapped or refused."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import pytest

from monolake.uring.busypoll import BusyPollSelector, set_busy_poll, with_busy_poll
from monolake.uring.runtime import LoopChoice, legacy_loop


async def _one_event_then_idle(idle: float) -> tuple[float, float]:
    """CPU seconds used over ``idle`` s right after one readable event, then over the next ``idle`` s."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        got: asyncio.Future[bytes] = loop.create_future()
        loop.add_reader(a.fileno(), lambda: got.done() or got.set_result(a.recv(16)))
        b.send(b"x")
        assert await asyncio.wait_for(got, 5) == b"x"
        loop.remove_reader(a.fileno())
        t0 = time.process_time()
        await asyncio.sleep(idle)
        t1 = time.process_time()
        await asyncio.sleep(idle)
        return t1 - t0, time.process_time() - t1
    finally:
        a.close()
        b.close()


def _run(factory: Callable[[], asyncio.AbstractEventLoop], busy_poll_us: int, idle: float) -> tuple[float, float]:
    loop = factory()
    try:
        assert set_busy_poll(loop, busy_poll_us)
        return loop.run_until_complete(_one_event_then_idle(idle))
    finally:
        loop.close()


def test_polls_within_the_window_and_sleeps_after(loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    # a 250 ms window: the loop spins (CPU ~ wall time, less if the CPU is shared) through it,
    # then sleeps
    in_window, after = _run(loop_factory, 250_000, 0.3)
    assert in_window > 0.05, f"only {in_window:.3f}s of CPU in a 250 ms busy-poll window: not polling"
    assert after < 0.05, f"{after:.3f}s of CPU in 0.3 s past the window: still polling"


def test_off_means_the_loop_sleeps(loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    in_window, after = _run(loop_factory, 0, 0.25)
    assert in_window < 0.05 and after < 0.05, (in_window, after)


def test_busy_poll_does_not_delay_timers(loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    """A timer due inside the window fires on time: the spin honours the wait's timeout."""
    loop = loop_factory()
    try:
        set_busy_poll(loop, 100_000)

        async def main() -> float:
            await asyncio.sleep(0)
            fired = loop.create_future()
            start = loop.time()
            loop.call_later(0.01, lambda: fired.set_result(loop.time()))
            return await fired - start

        late = loop.run_until_complete(main())
        assert late < 0.05, late
    finally:
        loop.close()


def test_can_be_changed_on_a_live_loop(loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    loop = loop_factory()
    try:
        assert set_busy_poll(loop, 150_000)
        assert set_busy_poll(loop, 0)
        in_window, after = loop.run_until_complete(_one_event_then_idle(0.2))
        assert in_window < 0.05 and after < 0.05, (in_window, after)
    finally:
        loop.close()


def test_uring_loop_rejects_a_negative_window(uring_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    loop = uring_factory()
    try:
        with pytest.raises(ValueError):
            loop.busy_poll = -1.0  # type: ignore[attr-defined]
        loop.busy_poll = 0.0003  # type: ignore[attr-defined]
        assert loop.busy_poll == pytest.approx(0.0003)  # type: ignore[attr-defined]
    finally:
        loop.close()


def test_legacy_choice_swaps_uvloop_for_the_selector_loop() -> None:
    choice = with_busy_poll(legacy_loop(), 300)
    assert choice.name == "asyncio" and "busy_poll_us=300" in choice.detail
    loop = choice.factory()
    try:
        assert isinstance(loop._selector, BusyPollSelector)  # type: ignore[attr-defined]
        assert loop._selector.window == pytest.approx(0.0003)  # type: ignore[attr-defined]
    finally:
        loop.close()
    plain = legacy_loop()
    assert with_busy_poll(plain, 0) is plain


def test_a_loop_without_a_hook_is_reported() -> None:
    uvloop = pytest.importorskip("uvloop")
    loop = uvloop.new_event_loop()
    try:
        assert not set_busy_poll(loop, 300)
        assert set_busy_poll(loop, 0)  # off is always possible
    finally:
        loop.close()
    assert isinstance(with_busy_poll(LoopChoice(asyncio.SelectorEventLoop, "x", "y"), 0), LoopChoice)
