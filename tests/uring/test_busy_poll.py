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
from tests.support import settle


class PollLog:
    """Every call the loop makes to its underlying poll (epoll, or the io_uring wait), with
    the time, the timeout and the busy-poll window's start (the last events) at that call."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.calls: list[tuple[float, float | None, float]] = []
        sel = loop._selector  # type: ignore[attr-defined]
        if hasattr(sel, "_ring"):  # io_uring: the loop's ring wait
            self._owner, orig = sel, sel._run or sel._ring.run
            sel._run = self._wrap(orig, sel)
        elif isinstance(sel, BusyPollSelector):  # asyncio, busy polling: the inner epoll
            self._owner, orig = sel, sel.inner.select
            sel.inner.select = self._wrap(orig, sel)  # type: ignore[method-assign,assignment]  # the spy
        else:  # asyncio, plain
            self._owner, orig = sel, sel.select
            sel.select = self._wrap(orig, sel)

    def _wrap(self, poll: Callable[[float | None], object], sel: object) -> Callable[[float | None], object]:
        calls = self.calls

        def recorded(timeout: float | None) -> object:
            calls.append((time.monotonic(), timeout, getattr(sel, "_last_events", 0.0)))
            return poll(timeout)

        return recorded

    def between(self, start: float, end: float) -> list[tuple[float, float | None, float]]:
        return [c for c in self.calls if start <= c[0] <= end]


async def _one_event_then_idle(idle: float) -> tuple[float, float]:
    """One readable event, then ``idle`` s without any; returns (time of the event, end)."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        got: asyncio.Future[bytes] = loop.create_future()
        loop.add_reader(a.fileno(), lambda: settle(got, lambda: a.recv(16)))
        b.send(b"x")
        assert await asyncio.wait_for(got, 5) == b"x"
        loop.remove_reader(a.fileno())
        t_event = time.monotonic()
        await asyncio.sleep(idle)
        return t_event, time.monotonic()
    finally:
        a.close()
        b.close()


def _run(
    factory: Callable[[], asyncio.AbstractEventLoop], busy_poll_us: int, idle: float
) -> tuple[PollLog, float, float]:
    loop = factory()
    try:
        assert set_busy_poll(loop, busy_poll_us)
        polls = PollLog(loop)
        t_event, t_end = loop.run_until_complete(_one_event_then_idle(idle))
        return polls, t_event, t_end
    finally:
        loop.close()


# A sleeping loop calls its poll a few times over an idle spell (once per timer); a polling
# one thousands of times. What counts is which kind of call the loop makes, and when: not
# how much CPU it got, which depends on what else the machine runs.
SLEEPING_CALLS = 10


def _sleeps(call: tuple[float, float | None, float]) -> bool:
    return call[1] is None or call[1] > 0


def test_polls_within_the_window_and_sleeps_after(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    window = 0.25
    polls, t_event, t_end = _run(loop_factory, int(window * 1e6), 0.5)
    idle = polls.between(t_event, t_end)
    spins = [c for c in idle if c[1] == 0 and c[0] < c[2] + window]
    assert spins, "no zero-timeout poll inside the window: not polling"
    early = [c for c in idle if _sleeps(c) and c[0] < c[2] + window - 0.001]
    assert not early, f"a sleeping wait {early[0][0] - early[0][2]:.3f}s into a {window}s window"
    assert any(_sleeps(c) for c in idle), "never slept after the window"
    after = polls.between(max(c[2] for c in idle) + window + 0.01, t_end)
    assert len(after) <= SLEEPING_CALLS, f"{len(after)} polls past the window: still polling"


def test_off_means_the_loop_sleeps(loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    polls, t_event, t_end = _run(loop_factory, 0, 0.25)
    idle = polls.between(t_event, t_end)
    assert len(idle) <= SLEEPING_CALLS and any(_sleeps(c) for c in idle), idle


def test_busy_poll_does_not_delay_timers(loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    """A timer due inside the window fires on time: the spin honours the wait's timeout.

    Counted, not timed (a loaded machine may deschedule the test at any point): once the
    timer is due the loop makes a few more calls at most (the spin's last zero-timeout poll,
    the wait for what is left of the timeout) before it runs the timer, where a spin that
    ignored the timeout would go on polling until the 100 ms window ends, thousands of times.
    """
    loop = loop_factory()
    try:
        assert set_busy_poll(loop, 100_000)
        polls = PollLog(loop)

        async def main() -> tuple[float, float, float]:
            a, b = socket.socketpair()
            a.setblocking(False)
            try:
                got: asyncio.Future[bytes] = loop.create_future()
                loop.add_reader(a.fileno(), lambda: settle(got, lambda: a.recv(16)))
                b.send(b"x")
                await asyncio.wait_for(got, 5)  # an event: the window opens
                loop.remove_reader(a.fileno())
            finally:
                a.close()
                b.close()
            fired: asyncio.Future[float] = loop.create_future()
            start = time.monotonic()
            handle = loop.call_later(0.01, lambda: fired.set_result(time.monotonic()))
            return start, handle.when(), await fired

        start, due, fired_at = loop.run_until_complete(main())
        waiting = polls.between(start, due)
        assert any(c[1] == 0 for c in waiting), "no zero-timeout poll: the window was not open"
        after_due = polls.between(due, fired_at)
        assert len(after_due) <= SLEEPING_CALLS, (
            f"{len(after_due)} polls after the timer was due: the spin held it back"
        )
    finally:
        loop.close()


def test_spin_stops_at_the_window_or_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """``spin`` on a clock the test drives: each poll takes 1 ms."""
    import monolake.uring.busypoll as busypoll

    clock = [100.0]
    monkeypatch.setattr(busypoll, "monotonic", lambda: clock[0])

    def poll_at(events_at: float | None) -> Callable[[float | None], list[int]]:
        def poll(timeout: float | None) -> list[int]:
            assert timeout == 0
            clock[0] += 0.001
            return [1] if events_at is not None and clock[0] >= events_at else []

        return poll

    # nothing happens: polls until the window ends, then the wait sleeps without a timeout
    assert busypoll.spin(poll_at(None), None, 100.05) == (None, None)
    assert clock[0] == pytest.approx(100.05, abs=0.0015)
    # a timer due before the window ends: stops at it, nothing of the timeout left
    clock[0] = 200.0
    ready, left = busypoll.spin(poll_at(None), 0.01, 200.05)
    assert ready is None and left == pytest.approx(0.0, abs=0.0015)
    assert clock[0] == pytest.approx(200.01, abs=0.0015)
    # events during the window: returned at once, the timeout untouched
    clock[0] = 300.0
    assert busypoll.spin(poll_at(300.003), 1.0, 300.05) == ([1], 1.0)
    # past the window, or a zero timeout: no polling at all
    assert busypoll.spin(poll_at(None), 1.0, 299.0) == (None, 1.0)
    assert busypoll.spin(poll_at(None), 0, 400.0) == (None, 0)


def test_can_be_changed_on_a_live_loop(loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    loop = loop_factory()
    try:
        assert set_busy_poll(loop, 150_000)
        assert set_busy_poll(loop, 0)
        polls = PollLog(loop)
        t_event, t_end = loop.run_until_complete(_one_event_then_idle(0.2))
        idle = polls.between(t_event, t_end)
        assert len(idle) <= SLEEPING_CALLS and any(_sleeps(c) for c in idle), idle
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
