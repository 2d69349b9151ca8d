"""The access-log ring (uring/mu_logring.c) against its Python twin, and the lines it emits
against today's per-request line (worker/http/server.py log_access): seeded sequences of
appends (short and multi-slot records, absent fields, UTF-8 labels) and takes (with byte
caps) on small rings must place, drop and return alike; drained records give the same
structlog events and the same file bytes as log_access."""

from __future__ import annotations

import asyncio
import io
import random
import time
from collections.abc import MutableMapping
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from monolake.worker.http import native_logring as nl
from monolake.worker.http.native_logring import HEADER, AccessRing, LogRing, PyLogRing, Record
from monolake.worker.http.server import ServerRuntime

pytestmark = pytest.mark.skipif(nl.lib is None, reason="the codec extension is not built")

TEXTS = ["", "/", "/a/b", "/é/ÿ", "x" * 200, "/" + "p" * 1000, "a=1&b=%20", "€uro", "\udcff"]


def _record(rnd: random.Random) -> Record:
    def text() -> str | None:
        return None if rnd.random() < 0.15 else rnd.choice(TEXTS)

    values = tuple(text() for _ in nl.FIELDS)
    if rnd.random() < 0.05:
        values = ("GET", "/" + "q" * rnd.randint(0, 9000), "", "1.1", None, None, None)
    return Record(
        rnd.randrange(4),
        rnd.choice([200, 404, 502, 0]),
        rnd.choice([0, 1, 2**40]),
        rnd.choice([0, 7, 2**63]),
        rnd.choice([0.0, 0.0012345, 3.5]),
        values,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("seed", range(40))
def test_ring_matches_twin(seed: int) -> None:
    rnd = random.Random(seed)
    nslots = rnd.choice([1, 2, 3, 5, 8, 13, 40])
    c, py = LogRing(nslots), PyLogRing(nslots)
    for step in range(400):
        where = f"seed={seed} step={step} nslots={nslots}"
        if rnd.random() < 0.7:
            rec = _record(rnd)
            entry = c.append if rnd.random() < 0.5 else c.append_fields
            assert entry(rec) == py.append(rec), where
        else:
            cap = None if rnd.random() < 0.5 else rnd.randint(0, 3 * nl.SLOT)
            assert c.take(cap) == py.take(cap), where
        assert c.state() == py.state(), where
    assert c.take() == py.take()
    assert c.used == 0


def test_values_survive_as_appended() -> None:
    """Nothing is truncated: a path far longer than a slot comes back whole; absent stays None."""
    r = LogRing(64)
    long = Record(3, 200, 1, 2, 0.5, ("GET", "/" + "z" * 10000, "q=é", "1.0", None, "üp€", "ab-1"))
    assert r.append(long)
    assert r.state()[2] == nl.slots_for(long.size()) == 40
    assert r.take() == [long]


def test_overflow_drops_and_counts() -> None:
    """A full ring drops (never blocks, never overwrites); a record larger than the ring too."""
    r = LogRing(2)
    small = Record(0, 200, 0, 0, 0.0, ("GET", "/", "", "1.1", None, None, None))
    assert r.append(small) and r.append(small)
    assert not r.append(small)
    assert not r.append(Record(0, 200, 0, 0, 0.0, ("GET", "/" + "x" * 600, "", "1.1", None, None, None)))
    assert r.dropped == 2
    assert r.take() == [small, small]
    assert r.append(small) and r.dropped == 2


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda b: b[:-1],  # shorter than its size says
        lambda b: b[:20] + (999).to_bytes(4, "little") + b[24:],  # size
        lambda b: b[:12] + (1 << 9).to_bytes(4, "little") + b[16:],  # a field bit past the last
        lambda b: b[:16] + (1 << 6).to_bytes(4, "little") + b[20:],  # utf8 on an absent field
        lambda b: b[:4] + (0xFFFFFFFF).to_bytes(4, "little") + b[8:],  # a pad's server id
        lambda b: b[:10],  # no whole header
    ],
)
def test_malformed_raw_refused(corrupt: Any) -> None:
    """A raw record whose header disagrees with itself is refused (-2), not counted, not stored."""
    r = LogRing(8)
    bad = corrupt(nl.pack(Record(1, 200, 0, 0, 0.0, ("GET", "/", "", "1.1", "c", None, None))))
    assert nl.lib.mu_log_append_raw(r._r, bad, len(bad)) == -2
    assert r.state() == (0, 0, 0, 0, 0)
    assert HEADER.size == nl.ffi.sizeof("mu_log_record")


def test_raw_records_bounded_fuzz() -> None:
    """Random bytes and byte flips of valid records (seeded, bounded; under ASan in
    .ci/sanitize): each is refused (-2) or stored whole, and what is taken back is exactly
    the accepted bytes (the slot count aside)."""
    rnd = random.Random(13)
    r = LogRing(16)
    accepted = 0
    for _ in range(3000):
        data = bytearray(nl.pack(_record(rnd)))
        if rnd.random() < 0.2:
            data = bytearray(rnd.randbytes(rnd.randint(0, 200)))
        for _ in range(rnd.randint(0, 3)):
            if data:
                data[rnd.randrange(len(data))] = rnd.randrange(256)
        raw = bytes(data)
        rc = nl.lib.mu_log_append_raw(r._r, raw, len(raw))
        assert rc in (0, -1, -2)
        if rc == 0:
            accepted += 1
            size = len(raw)
            out = bytearray(size + 8)
            n = nl.ffi.new("uint32_t *")
            got = nl.lib.mu_log_take(r._r, nl.ffi.from_buffer(out), len(out), n)
            assert (got, n[0]) == (size, 1)
            assert out[4:76] == raw[4:76] and out[80:size] == raw[80:]  # nslots, reserved: the ring's
        else:
            r.take()
    assert accepted > 1000


# -- the lines: today's log_access against the ring's ----------------------------------------
def _exchanges() -> list[tuple[Any, Any]]:
    """(exchange, connection) pairs with everything log_access reads, in its corner cases."""

    def req(method: str, path: str, query: str, version: str, received: int | None) -> Any:
        body = None if received is None else SimpleNamespace(received=received)
        return SimpleNamespace(method=method, path=path, query=query, version=version, body=body)

    def ctx(upstream: str | None, rid: str) -> Any:
        return SimpleNamespace(upstream=upstream, request_id=rid)

    cases = [
        (
            req("GET", "/", "", "1.1", None),
            ctx("http://127.0.0.1:8080", "1f-1"),
            200,
            512,
            ("127.0.0.1", 5555),
        ),
        (req("POST", "/up/é", "a=1&b=ÿ", "1.0", 4096), ctx(None, "1f-2"), 502, 0, ("::1", 80, 0, 0)),
        (req("PUT", "/x" * 600, "", "1.1", 0), None, 400, 11, "/tmp/sock"),
        (req("GET", "/", "q", "1.1", None), ctx("ünicode-€-label", "1f-3"), 0, 0, None),
    ]
    out = []
    for i, (r, c, status, nbytes, peer) in enumerate(cases):
        ex = SimpleNamespace(request=r, ctx=c, status=status, bytes_out=nbytes, started=100.0 - i * 0.25)
        out.append((ex, SimpleNamespace(peer=peer)))
    return out


def _today(monkeypatch: pytest.MonkeyPatch, file: Any) -> tuple[list[MutableMapping[str, Any]], list[Record]]:
    """log_access's own output for the exchanges, at a frozen monotonic clock."""
    logger = structlog.get_logger("monolake.access")
    rt = SimpleNamespace(name="edge", slot=3, _access_file=file, _access=logger)
    records = []
    with capture_logs() as logs, monkeypatch.context() as m:
        m.setattr(time, "monotonic", lambda: 101.0)
        for ex, conn in _exchanges():
            ServerRuntime.log_access(rt, ex, conn)  # type: ignore[arg-type]
            records.append(nl.record_of(0, ex, conn, now=101.0))
    return logs, records


def _ring(records: list[Record], file: Any) -> list[MutableMapping[str, Any]]:
    ring = AccessRing(nslots=64)
    sid = ring.register("edge", 3, file, structlog.get_logger("monolake.access"))
    assert sid == 0
    with capture_logs() as logs:
        for rec in records:
            assert ring.ring.append(rec)
        ring.flush()
    return logs


def test_structlog_lines_equal_todays(monkeypatch: pytest.MonkeyPatch) -> None:
    want, records = _today(monkeypatch, None)
    got = _ring(records, None)
    assert len(want) == 4
    assert [list(d.items()) for d in got] == [list(d.items()) for d in want]  # order too


def test_file_lines_equal_todays(monkeypatch: pytest.MonkeyPatch) -> None:
    today, ring = io.StringIO(), io.StringIO()
    _, records = _today(monkeypatch, today)
    _ring(records, ring)
    assert today.getvalue().count("\n") == 4
    assert ring.getvalue() == today.getvalue()


def test_flushes_on_the_loop_and_reports_drops() -> None:
    """log() on the request path only appends; the loop flushes within flush_interval;
    a full ring's drops are counted and warned about once."""

    async def run() -> tuple[list[MutableMapping[str, Any]], list[MutableMapping[str, Any]]]:
        ring = AccessRing(nslots=2, flush_interval=0.01)
        ring.register("edge", 0, None, structlog.get_logger("monolake.access"))
        with capture_logs() as logs:
            for ex, conn in _exchanges()[:1] * 4:
                ring.log(0, ex, conn)
            before = list(logs)
            for _ in range(200):  # bounded: the flush is due after 10 ms
                await asyncio.sleep(0.005)
                if any(e["event"] == "access_log_dropped" for e in logs):
                    break
        return before, logs

    before, logs = asyncio.run(run())
    assert before == []  # nothing emitted on the request path
    access = [e for e in logs if e["event"] == "access"]
    drops = [e for e in logs if e["event"] == "access_log_dropped"]
    assert len(access) == 2
    assert drops == [{"event": "access_log_dropped", "records": 2, "total": 2, "log_level": "warning"}]


def test_close_emits_what_is_left() -> None:
    """A server that stops does not lose the records its ring still holds."""

    async def run() -> list[MutableMapping[str, Any]]:
        ring = AccessRing(nslots=4, flush_interval=60.0)
        ring.register("edge", 0, None, structlog.get_logger("monolake.access"))
        ex, conn = _exchanges()[1]
        with capture_logs() as logs:
            ring.log(0, ex, conn)
            assert logs == []
            ring.close()
        return logs

    logs = asyncio.run(run())
    assert [(e["event"], e["path"], e["status"]) for e in logs] == [("access", "/up/é", 502)]
