"""The per-worker access-log ring (uring/mu_logring.c), its Python twin, and the emitter.

The native exchange appends one fixed-layout record per response in C (mu_log_append); Python
drains the ring in batches, off the request path, and emits each record as the line
worker/http/server.py ``log_access`` writes today: the same fields, in the same order, with
the same values (``line``), through the server's structlog logger or into its access-log
file. Overflow: an append that finds no room is dropped and counted (``dropped``), never
blocking the request and never overwriting a record not yet drained; ``AccessRing.flush``
warns with the count when it grew.

One difference is inherent in batching: structlog's TimeStamper stamps a line when it is
emitted, so a drained line's ``timestamp`` is the flush time (at most ``flush_interval``
after the response), not the response time.

``PyLogRing`` is the twin of the ring's placement decisions (slots per record, the pad at
the end, what is dropped, what one take returns), which tests/http/test_native_logring.py
compares with the C ring operation by operation.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass
from typing import Any

import structlog

try:
    from monolake.uring._codec import ffi, lib  # type: ignore[import-not-found,attr-defined,unused-ignore]
except ImportError:  # the codec extension is not built
    ffi = lib = None

SLOT = 256  # MU_LOG_SLOT
MAX_SLOTS = 1 << 20  # MU_LOG_MAX_SLOTS
PAD = 0xFFFFFFFF  # MU_LOG_PAD
FIELDS = ("method", "path", "query", "version", "client", "upstream", "request_id")
HEADER = struct.Struct("=6I2Qd7II")  # mu_log_record: nslots server status present utf8 size ...
assert HEADER.size == 80

Values = tuple[str | None, str | None, str | None, str | None, str | None, str | None, str | None]


@dataclass(frozen=True, slots=True)
class Record:
    """One access-log record as drained: what the line is made of."""

    server: int
    status: int
    bytes_in: int
    bytes_out: int
    duration: float  # seconds
    values: Values  # FIELDS, None where absent

    def size(self) -> int:
        return HEADER.size + sum(len(_encode(v)[0]) for v in self.values if v is not None)


def _encode(value: str) -> tuple[bytes, bool]:
    """latin-1 (the request line's own decoding: C appends those bytes raw), else UTF-8."""
    try:
        return value.encode("latin-1"), False
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass"), True


def pack(rec: Record) -> bytes:
    """The record as mu_log_append_raw takes it (its slot count is the ring's to set)."""
    present = utf8 = 0
    lens = [0] * len(FIELDS)
    parts = []
    for i, v in enumerate(rec.values):
        if v is None:
            continue
        b, wide = _encode(v)
        present |= 1 << i
        utf8 |= wide << i
        lens[i] = len(b)
        parts.append(b)
    text = b"".join(parts)
    size = HEADER.size + len(text)
    head = HEADER.pack(
        0, rec.server, rec.status, present, utf8, size, rec.bytes_in, rec.bytes_out, rec.duration, *lens, 0
    )
    return head + text


def unpack(buf: bytes | bytearray | memoryview, count: int) -> list[Record]:
    """The records mu_log_take wrote into ``buf`` (each at an 8-byte aligned offset)."""
    out = []
    off = 0
    view = memoryview(buf)
    for _ in range(count):
        (_, server, status, present, utf8, size, b_in, b_out, dur, *lens, _r) = HEADER.unpack_from(view, off)
        pos = off + HEADER.size
        values: list[str | None] = []
        for i, n in enumerate(lens):
            if not present >> i & 1:
                values.append(None)
                continue
            raw = bytes(view[pos : pos + n])
            values.append(raw.decode("utf-8", "surrogatepass") if utf8 >> i & 1 else raw.decode("latin-1"))
            pos += n
        out.append(Record(server, status, b_in, b_out, dur, tuple(values)))  # type: ignore[arg-type]
        off = (off + size + 7) & ~7
    return out


def slots_for(size: int) -> int:
    """mu_log_slots: whole slots a record of ``size`` bytes (header included) takes."""
    return (size + SLOT - 1) // SLOT


class LogRing:
    """One mu_logring."""

    __slots__ = ("_buf", "_cbuf", "_count", "_r")

    def __init__(self, nslots: int = 4096) -> None:
        if lib is None:
            raise RuntimeError("the monolake.uring._codec extension is not built")
        if not 1 <= nslots <= MAX_SLOTS:
            raise ValueError(f"a log ring has 1 to {MAX_SLOTS} slots, not {nslots}")
        r = lib.mu_log_new(nslots)
        if r == ffi.NULL:
            raise MemoryError("mu_log_new")
        self._r = ffi.gc(r, lib.mu_log_free)
        self._buf = bytearray(nslots * SLOT)  # room for everything the ring can hold
        self._cbuf = ffi.from_buffer(self._buf)
        self._count = ffi.new("uint32_t *")

    def append(self, rec: Record) -> bool:
        """False: dropped (no room)."""
        data = pack(rec)
        rc = lib.mu_log_append_raw(self._r, data, len(data))
        if rc == -2:
            raise ValueError("malformed access-log record")
        return rc == 0

    def append_fields(self, rec: Record) -> bool:
        """The C driver's entry point (mu_log_append with mu_log_str fields)."""
        f = ffi.new("mu_log_str[]", len(FIELDS))
        keep = []
        for i, v in enumerate(rec.values):
            if v is None:
                continue
            b, wide = _encode(v)
            cb = ffi.new("char[]", b)
            keep.append(cb)
            f[i].ptr, f[i].len, f[i].utf8 = cb, len(b), int(wide)
        return bool(
            lib.mu_log_append(self._r, rec.server, rec.status, rec.bytes_in, rec.bytes_out, rec.duration, f)
            == 0
        )

    def take(self, cap: int | None = None) -> list[Record]:
        """The records in the ring, oldest first (at most ``cap`` bytes of them)."""
        size = len(self._buf) if cap is None else min(cap, len(self._buf))
        lib.mu_log_take(self._r, self._cbuf, size, self._count)
        return unpack(self._buf, self._count[0])

    def state(self) -> tuple[int, int, int, int, int]:
        """(head, tail, used, appended, dropped)."""
        r = self._r
        return int(r.head), int(r.tail), int(r.used), int(r.appended), int(r.dropped)

    @property
    def used(self) -> int:
        return int(self._r.used)

    @property
    def dropped(self) -> int:
        return int(self._r.dropped)

    @property
    def nslots(self) -> int:
        return int(self._r.nslots)


class PyLogRing:
    """The ring's decisions in Python (placement, pads, drops, takes): the twin tests hold
    the C ring to."""

    def __init__(self, nslots: int) -> None:
        self.nslots = nslots
        self.head = self.tail = self.used = self.appended = self.dropped = 0
        self.slots: dict[int, tuple[int, Record | None]] = {}  # start slot -> (nslots, record)

    def append(self, rec: Record) -> bool:
        k = slots_for(rec.size())
        if self.used == 0:
            self.head = self.tail = 0
        pad = self.nslots - self.head if self.head + k > self.nslots else 0
        if k > self.nslots or pad + k > self.nslots - self.used:
            self.dropped += 1
            return False
        if pad:
            self.slots[self.head] = (pad, None)
            self.used += pad
            self.head = 0
        self.slots[self.head] = (k, rec)
        self.head = (self.head + k) % self.nslots
        self.used += k
        self.appended += 1
        return True

    def take(self, cap: int | None = None) -> list[Record]:
        cap = self.nslots * SLOT if cap is None else min(cap, self.nslots * SLOT)
        out: list[Record] = []
        pos = 0
        while self.used:
            k, rec = self.slots[self.tail]
            if rec is not None:
                off = (pos + 7) & ~7
                size = rec.size()
                if off > cap or size > cap - off:
                    break
                pos = off + size
                out.append(rec)
            del self.slots[self.tail]
            self.tail = (self.tail + k) % self.nslots
            self.used -= k
        return out

    def state(self) -> tuple[int, int, int, int, int]:
        return self.head, self.tail, self.used, self.appended, self.dropped


# -- the access log through the ring --------------------------------------------------------
def client_text(addr: Any) -> str | None:
    """The ``client`` field as server.py's ``_addr`` writes it."""
    from monolake.worker.http.server import _addr

    return _addr(addr)


def record_of(server: int, ex: Any, conn: Any, now: float | None = None) -> Record:
    """What log_access reads from an exchange and its connection, as a record."""
    req = ex.request
    ctx = ex.ctx
    return Record(
        server,
        ex.status,
        req.body.received if req.body is not None else 0,
        ex.bytes_out,
        (time.monotonic() if now is None else now) - ex.started,
        (
            req.method,
            req.path,
            req.query,
            req.version,
            client_text(conn.peer),
            ctx.upstream if ctx is not None else None,
            ctx.request_id if ctx is not None else None,
        ),
    )


def line(rec: Record, name: str, slot: Any) -> dict[str, Any]:
    """The access line's fields, in log_access's order and with its values."""
    v = rec.values
    return {
        "server": name,
        "worker": slot,
        "client": v[4],
        "method": v[0],
        "path": v[1],
        "query": v[2],
        "version": v[3],
        "status": rec.status,
        "bytes_in": rec.bytes_in,
        "bytes_out": rec.bytes_out,
        "duration_ms": round(rec.duration * 1000, 3),
        "upstream": v[5],
        "request_id": v[6],
    }


class AccessRing:
    """A worker's access log through one ring: servers register (name, slot, their file or
    logger), ``log`` appends, ``flush`` drains and emits, scheduled on the loop at most
    ``flush_interval`` after the first record of a batch (and at once when the ring is half
    full)."""

    def __init__(self, nslots: int = 4096, flush_interval: float = 0.05) -> None:
        self.ring = LogRing(nslots)
        self.flush_interval = flush_interval
        self._servers: list[tuple[str, Any, Any, Any]] = []
        self._handle: Any = None
        self._loop: Any = None
        self._reported = 0
        self._half = nslots // 2

    def register(self, name: str, slot: Any, file: Any, logger: Any) -> int:
        """A server's id in the records: its name, worker slot, access file (or None) and
        structlog logger."""
        self._servers.append((name, slot, file, logger))
        return len(self._servers) - 1

    def log(self, server: int, ex: Any, conn: Any) -> None:
        self.ring.append(record_of(server, ex, conn))
        if self._handle is None:
            if self._loop is None:
                import asyncio

                self._loop = asyncio.get_running_loop()
            self._handle = self._loop.call_later(self.flush_interval, self.flush)
        elif self.ring.used >= self._half:
            self._handle.cancel()
            self._handle = self._loop.call_soon(self.flush)

    def close(self) -> None:
        """The server stops: what the ring still holds is emitted now."""
        if self._handle is not None:
            self._handle.cancel()
        self.flush()

    def flush(self) -> None:
        """Emit every record in the ring: the file lines of a batch in one write."""
        self._handle = None
        records = self.ring.take()
        files: dict[int, list[str]] = {}
        for rec in records:
            name, slot, file, logger = self._servers[rec.server]
            fields = line(rec, name, slot)
            if file is not None:
                files.setdefault(rec.server, []).append(json.dumps(fields) + "\n")
            else:
                logger.info("access", **fields)
        for sid, lines in files.items():
            self._servers[sid][2].write("".join(lines))
        dropped = self.ring.dropped
        if dropped != self._reported:
            structlog.get_logger().warning(
                "access_log_dropped", records=dropped - self._reported, total=dropped
            )
            self._reported = dropped
