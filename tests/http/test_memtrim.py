"""worker/memtrim.py (issue 16 §4): what a burst is, and tables rebuilt in place.

A dict or set never shrinks when its entries are deleted: after a burst of N connections the
loop's and the server's per-connection tables stay sized for N until rebuilt. The rebuild is in
place (the io_uring loop's C dispatcher holds the same dict objects), so the loop must go on
serving afterwards."""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
import threading
from typing import Any

import pytest

from monolake.uring import probe
from monolake.worker import memtrim
from tests.uring.conftest import FACTORIES, raise_nofile, run

N = 600


class FakeLoop:
    """Records call_later; nothing runs unless the test runs it."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, Any, tuple[Any, ...]]] = []

    def call_later(self, delay: float, fn: Any, *args: Any) -> object:
        self.calls.append((delay, fn, args))
        return object()


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (
        ("_level", 0),
        ("_peak", 0),
        ("_pending", None),
        ("_closed_at", 0.0),
        ("_last", -memtrim.MIN_INTERVAL),
        ("ENABLED", True),
    ):
        monkeypatch.setattr(memtrim, name, value)


def test_steady_churn_is_no_burst(fresh):
    loop = FakeLoop()
    for _ in range(100):
        memtrim.note_open()
    for _ in range(20 * memtrim.BURST):  # as many opens as closes: the memory is reused
        memtrim.note_close(loop)
        memtrim.note_open()
    assert loop.calls == []


def test_a_burst_schedules_one_trim(fresh, monkeypatch):
    loop = FakeLoop()
    ran: list[Any] = []
    monkeypatch.setattr(memtrim, "trim_now", ran.append)
    for _ in range(memtrim.BURST + 50):
        memtrim.note_open()
    for _ in range(memtrim.BURST - 1):
        memtrim.note_close(loop)
    assert loop.calls == []
    for _ in range(50):
        memtrim.note_close(loop)
    assert len(loop.calls) == 1, "one trim for the burst, however many closes follow"
    delay, fn, args = loop.calls.pop()
    assert delay >= memtrim.DELAY
    monkeypatch.setattr(memtrim, "_closed_at", memtrim.monotonic() - memtrim.DELAY)
    fn(*args)
    assert ran == [loop]
    assert memtrim._peak == memtrim._level == 1
    memtrim.note_open()
    memtrim.note_close(loop)
    assert loop.calls == [], "the peak starts again from the level at the trim"


def test_a_trim_waits_while_closes_go_on(fresh, monkeypatch):
    loop = FakeLoop()
    ran: list[Any] = []
    monkeypatch.setattr(memtrim, "trim_now", ran.append)
    for _ in range(memtrim.BURST):
        memtrim.note_open()
    for _ in range(memtrim.BURST):
        memtrim.note_close(loop)
    _, fn, args = loop.calls.pop()
    fn(*args)  # the last close was just now: not yet
    assert ran == [] and len(loop.calls) == 1
    monkeypatch.setattr(memtrim, "_due", 0.0)  # waited MAX_WAIT already: trims now
    _, fn, args = loop.calls.pop()
    fn(*args)
    assert ran == [loop]


def test_compact_dict_and_set_in_place():
    d = {i: str(i) for i in range(5000)}
    s = set(range(5000))
    big_d, big_s = sys.getsizeof(d), sys.getsizeof(s)
    for i in range(4990):
        del d[i]
        s.discard(i)
    assert sys.getsizeof(d) == big_d and sys.getsizeof(s) == big_s  # never shrinks by itself
    same_d, same_s = d, s
    assert memtrim.compact_dict(d) and memtrim.compact_set(s)
    assert d is same_d and s is same_s
    assert d == {i: str(i) for i in range(4990, 5000)} and s == set(range(4990, 5000))
    assert sys.getsizeof(d) < memtrim.COMPACT_MIN and sys.getsizeof(s) < memtrim.COMPACT_MIN
    full = {i: i for i in range(5000)}
    assert not memtrim.compact_dict(full), "a table its entries fill is left alone"
    assert not memtrim.compact_set(set())


def _clients(port: int, n: int, opened: threading.Event, release: threading.Event) -> None:
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"x")
            assert s.recv(1) == b"x"
            socks.append(s)
        opened.set()
        release.wait(20)
    finally:
        for s in socks:
            s.close()


class Echo(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


@pytest.mark.parametrize("kind", list(FACTORIES))
def test_loop_tables_compacted_and_the_loop_serves_on(kind):
    if kind == "io_uring" and not probe().available:
        pytest.skip(f"io_uring unavailable: {probe().reason}")
    raise_nofile(2 * N + 256)

    async def scenario() -> tuple[int, int, bytes]:
        loop = asyncio.get_running_loop()
        if kind == "io_uring":
            for name in memtrim.LOOP_TABLES:  # the names memtrim looks for
                assert isinstance(getattr(loop, name), dict), name
        server = await loop.create_server(Echo, "127.0.0.1", 0, backlog=1024)
        port = server.sockets[0].getsockname()[1]
        opened, release = threading.Event(), threading.Event()
        t = threading.Thread(target=_clients, args=(port, N, opened, release))
        t.start()
        await loop.run_in_executor(None, opened.wait, 30)
        release.set()
        await loop.run_in_executor(None, t.join, 30)
        for _ in range(200):  # every close seen
            await asyncio.sleep(0.01)
            if len(loop._transports) == 0:  # type: ignore[attr-defined]
                break
        first = memtrim.compact_loop(loop)
        again = memtrim.compact_loop(loop)
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"after")
        echoed = await asyncio.wait_for(r.readexactly(5), 10)
        w.close()
        server.close()
        return first, again, echoed

    first, again, echoed = run(FACTORIES[kind], scenario(), timeout=60)
    assert first >= 1, "a burst's tables were rebuilt"
    assert again == 0, "nothing left to rebuild"
    assert echoed == b"after"


class Cycle:
    def __init__(self) -> None:
        self.me = self


def test_trim_collects_cyclic_garbage(monkeypatch):
    """A closed connection left in a cycle keeps its pages from malloc_trim: collect first."""
    import weakref

    monkeypatch.setattr(memtrim, "_malloc_trim", None)
    garbage = Cycle()
    ref = weakref.ref(garbage)
    del garbage
    gc_was = gc.isenabled()
    gc.disable()
    try:
        assert ref() is not None
        memtrim.trim_now(FakeLoop())
        assert ref() is None
    finally:
        if gc_was:
            gc.enable()
