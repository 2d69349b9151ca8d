"""The fuzz target ``thrift``: mu_thrift_frame.c's frame decision and seqid rewrite
(uring/mu_thrift_frame.c) against their Python twins (worker/thrift/native_scan.py), and
every accepted frame against the Python engine's own deframer (worker/thrift/framing.py).
The first byte of an input picks the mode: bit 0 a request (names checked, else a reply),
bit 1 a small max_frame (64 bytes, so oversize frames are reached). The next four bytes are
the seqid the frame is rewritten with. A disagreement raises Disagreement; a fault in C kills
the process (the sanitizer build, .ci/sanitize). Replayed by tests/fuzz/test_corpus.py,
driven by tests/fuzz/run.py; tests/thrift/test_thrift_native_twins.py runs generated inputs."""

from __future__ import annotations

import struct
from typing import Any

from monolake.worker.thrift import native_scan as ns
from monolake.worker.thrift.errors import FrameError
from monolake.worker.thrift.framing import FRAMED, Deframer

try:
    from monolake.uring._uring import ffi, lib  # type: ignore[import-not-found,attr-defined,unused-ignore]
except ImportError:
    ffi = lib = None

BIG = 1 << 24
SMALL = 64


class Disagreement(AssertionError):
    """C and its Python twin decided one frame differently."""


def c_scan(data: bytes, max_frame: int, names: bool) -> ns.Msg | str:
    """mu_thrift_frame on ``data``, as native_scan.scan_frame answers."""
    m = ffi.new("mu_thrift_msg *")
    rc = lib.mu_thrift_frame(ffi.from_buffer(data), len(data), max_frame, names, m)
    if rc != 0:
        return ffi.string(lib.mu_thrift_reason(rc)).decode()
    return ns.Msg(m.total, m.proto, m.mtype, m.seqid, m.seqid_at, m.seqid_len, m.name_at, m.name_len)


def c_encode(data: bytes, msg: ns.Msg, seqid: int) -> bytes:
    m = ffi.new("mu_thrift_msg *")
    (
        m.total,
        m.proto,
        m.mtype,
        m.seqid,
        m.seqid_at,
        m.seqid_len,
        m.name_at,
        m.name_len,
    ) = msg
    n = lib.mu_thrift_encoded_len(m, seqid)
    out = ffi.new("char[]", max(1, n))
    lib.mu_thrift_encode(ffi.from_buffer(data), m, seqid, out)
    return bytes(ffi.buffer(out, n))


def check(data: bytes, max_frame: int, names: bool, seqid: int) -> Any:
    """Compare C, its twin and the Python engine on one buffer; returns the decision."""
    got, want = c_scan(data, max_frame, names), ns.scan_frame(data, max_frame, names)
    if got != want:
        raise Disagreement(f"C {got!r} != Python {want!r} for {data!r}")
    if got in ("oversize", "head"):  # the Python engine refuses it: it closes the connection
        try:
            Deframer(FRAMED, max_frame, names=names).feed(data)
        except FrameError:
            return got
        raise Disagreement(f"C declines {data!r} as {got} but the Python engine takes it")
    if isinstance(got, ns.Msg):
        frames = Deframer(FRAMED, max_frame, names=names).feed(data[: got.total])
        if len(frames) != 1:
            raise Disagreement(f"the Python engine reads {len(frames)} frames in {data!r}")
        head = frames[0].head
        if (head.mtype, head.seqid, head.seqid_at, head.seqid_len, head.proto) != (
            got.mtype,
            got.seqid,
            got.seqid_at,
            got.seqid_len,
            got.proto,
        ):
            raise Disagreement(f"head {head!r} != C {got!r} for {data!r}")
        if names and head.name.encode() != data[4 + got.name_at : 4 + got.name_at + got.name_len]:
            raise Disagreement(f"name {head.name!r} != C's for {data!r}")
        a, b = c_encode(data, got, seqid), ns.encode_frame(data, got, seqid)
        if a != b:
            raise Disagreement(f"encode: C {a!r} != Python {b!r} for {data!r} seqid {seqid}")
    return got


def one_input(raw: bytes) -> None:
    """Fuzzer entry (see the module doc)."""
    if len(raw) < 5 or lib is None:
        return
    seqid = struct.unpack_from("!i", raw, 1)[0]
    check(raw[5:], SMALL if raw[0] & 2 else BIG, bool(raw[0] & 1), seqid)


TARGETS = {"thrift": one_input}
