"""The Python twin of uring/mu_thrift_frame.c: what the native Thrift relay decides about the
framed message at the front of a buffer, restated over the Python engine's own head parser
(worker/thrift/message.py), so the C decision can be compared with both (tests/thrift/
test_thrift_native_twins.py, the fuzz target ``thrift``).

A frame is ``ok`` (a :class:`Msg`), ``incomplete``, or declined for a reason: ``oversize``
and ``head`` are the Python engine's FrameErrors (it closes the connection), ``loose`` (old
non-strict binary) and ``name`` (a method name byte >= 0x80, whose UTF-8 the Python engine
checks) are messages the Python engine takes as they are.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .errors import FrameError
from .framing import FRAMED, Frame
from .message import COMPACT, parse_head

INCOMPLETE = "incomplete"
_U32 = struct.Struct("!I")


class Msg(NamedTuple):
    """mu_thrift_msg: offsets are relative to the message (after the 4 length bytes)."""

    total: int
    proto: int
    mtype: int
    seqid: int
    seqid_at: int
    seqid_len: int
    name_at: int
    name_len: int


def scan_frame(data: bytes, max_frame: int, names: bool) -> Msg | str:
    """mu_thrift_frame's twin."""
    if len(data) < 4:
        return INCOMPLETE
    n = _U32.unpack_from(data, 0)[0]
    if n > max_frame:
        return "oversize"
    if len(data) - 4 < n:
        return INCOMPLETE
    if n < 1:
        return "head"
    first = data[4]
    if first not in (0x80, 0x82):
        return "loose"
    try:
        head = parse_head(data, 4, 4 + n, names=False)
    except FrameError:
        # message.py decodes a compact name before its bounds are all checked only in the
        # UTF-8 step: an error there on a non-ASCII name is the "name" decline in C
        return _compact_name(data, n) or "head"
    if head.proto == COMPACT:
        name_at, name_len = _compact_name_span(data, n)
    else:
        name_at, name_len = 8, head.seqid_at - 8
    name = data[4 + name_at : 4 + name_at + name_len]
    if (names or head.proto == COMPACT) and any(b >= 0x80 for b in name):
        return "name"
    return Msg(n + 4, head.proto, head.mtype, head.seqid, head.seqid_at, head.seqid_len, name_at, name_len)


def _varint_end(data: bytes, pos: int, end: int) -> tuple[int, int] | None:
    value = 0
    for i in range(5):
        if pos >= end:
            return None
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            return value & 0xFFFFFFFF, pos
    return None


def _compact_name_span(data: bytes, n: int) -> tuple[int, int]:
    """(offset, length) of a compact head's name, in the message (the head parsed)."""
    end = 4 + n
    seq = _varint_end(data, 6, end)
    assert seq is not None
    nl = _varint_end(data, seq[1], end)
    assert nl is not None
    return nl[1] - 4, nl[0]


def _compact_name(data: bytes, n: int) -> str | None:
    """ "name" when a compact head failed only on its name's UTF-8 (its bounds are fine)."""
    end = 4 + n
    if data[4] != 0x82 or n < 4 or data[5] & 0x1F != 1:
        return None
    seq = _varint_end(data, 6, end)
    nl = _varint_end(data, seq[1], end) if seq is not None else None
    if nl is None or nl[0] > 65536 or nl[1] + nl[0] > end:
        return None
    return "name" if any(b >= 0x80 for b in data[nl[1] : nl[1] + nl[0]]) else None


def encode_frame(data: bytes, msg: Msg, seqid: int) -> bytes:
    """mu_thrift_encode's twin: the Python engine's own Frame.encode for that frame."""
    raw = bytes(data[: msg.total])
    return Frame(FRAMED, raw, 4, parse_head(raw, 4, msg.total, names=False), None).encode(seqid)


def route(table: dict[bytes, int], default: int, name: bytes) -> int:
    """mu_thrift.c route_of's twin (proxy.py MethodRouter.route on a compiled table)."""
    ep = table.get(name)
    if ep is None and b":" in name:
        ep = table.get(name.rpartition(b":")[2])
    return default if ep is None else ep
