"""Thrift message heads: what the proxy reads of a message, and the few bytes it rewrites.

A proxy needs the method name (routing), the message type (oneway requests get no reply)
and the seqid (remapping, so responses of many callers sharing one upstream connection find
their way back). Everything after the head is passed through untouched. Three encodings of
the head are understood: strict binary (``0x8001`` version word), old non-strict binary
(name first) and compact (``0x82`` protocol id).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .errors import FrameError

BINARY = 0  # strict binary: i32 version|type, string name, i32 seqid
BINARY_LOOSE = 1  # old binary: string name, i8 type, i32 seqid
COMPACT = 2  # compact: 0x82, type<<5|1, varint seqid, varint name length, name

CALL, REPLY, EXCEPTION, ONEWAY = 1, 2, 3, 4

# TApplicationException.type values (thriftpy2.thrift.TApplicationException)
APP_UNKNOWN = 0
APP_UNKNOWN_METHOD = 1
APP_INTERNAL_ERROR = 6
APP_PROTOCOL_ERROR = 7

MAX_NAME = 64 * 1024  # a longer method name is malformed input, not a method

_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_unpack_i32 = _I32.unpack_from
_pack_i32 = _I32.pack


class Head(NamedTuple):
    """The parsed head of one message; offsets are relative to the message start."""

    name: str
    mtype: int
    seqid: int
    seqid_at: int  # offset of the seqid field
    seqid_len: int  # its size in bytes (4, or 1-5 for a compact varint)
    proto: int  # BINARY, BINARY_LOOSE or COMPACT
    size: int  # bytes of the whole head


def parse_head(
    buf: bytes | bytearray | memoryview, start: int = 0, end: int | None = None, names: bool = True
) -> Head:
    """Parse a message head at ``buf[start:end]``; ``FrameError`` if it is not a complete, valid head.

    ``names=False`` skips decoding the method name (replies are matched by seqid alone).
    """
    if end is None:
        end = len(buf)
    avail = end - start
    if avail < 1:
        raise FrameError("empty message")
    first = buf[start]
    try:
        if first == 0x80:
            if avail < 8:
                raise FrameError("truncated message head")
            if buf[start + 1] != 0x01:
                raise FrameError(f"bad binary protocol version 0x80{buf[start + 1]:02x}")
            mtype = buf[start + 3]
            nlen = _unpack_i32(buf, start + 4)[0]
            if nlen < 0 or nlen > MAX_NAME or 8 + nlen + 4 > avail:
                raise FrameError("bad method name length")
            name = str(buf[start + 8 : start + 8 + nlen], "utf-8") if names else ""
            at = 8 + nlen
            seqid = _unpack_i32(buf, start + at)[0]
            return Head(name, mtype, seqid, at, 4, BINARY, at + 4)
        if first == 0x82:
            return _parse_compact(buf, start, end)
        if avail < 4:
            raise FrameError("truncated message head")
        nlen = _unpack_i32(buf, start)[0]
        if nlen < 0 or nlen > MAX_NAME or 4 + nlen + 5 > avail:
            raise FrameError("not a thrift message (bad name length)")
        name = str(buf[start + 4 : start + 4 + nlen], "utf-8") if names else ""
        at = 4 + nlen + 1
        mtype = buf[start + at - 1]
        seqid = _unpack_i32(buf, start + at)[0]
        return Head(name, mtype, seqid, at, 4, BINARY_LOOSE, at + 4)
    except UnicodeDecodeError:
        raise FrameError("method name is not UTF-8") from None
    except struct.error as exc:  # pragma: no cover - lengths are checked above
        raise FrameError(f"truncated message head: {exc}") from None


def _read_varint(buf: bytes | bytearray | memoryview, pos: int, end: int) -> tuple[int, int]:
    """An unsigned varint (at most 5 bytes, 32 bits) and the position after it."""
    result = shift = 0
    for _ in range(5):
        if pos >= end:
            raise FrameError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result & 0xFFFFFFFF, pos
        shift += 7
    raise FrameError("varint too long")


def varint(value: int) -> bytes:
    """Encode an unsigned 32-bit varint (negative i32 values as their two's complement)."""
    value &= 0xFFFFFFFF
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _parse_compact(buf: bytes | bytearray | memoryview, start: int, end: int) -> Head:
    if end - start < 4:
        raise FrameError("truncated compact message head")
    vt = buf[start + 1]
    if vt & 0x1F != 1:
        raise FrameError(f"bad compact protocol version {vt & 0x1F}")
    mtype = vt >> 5
    seq_u, pos = _read_varint(buf, start + 2, end)
    at = 2
    seqlen = pos - start - 2
    nlen, pos = _read_varint(buf, pos, end)
    if nlen > MAX_NAME or pos + nlen > end:
        raise FrameError("bad method name length")
    name = str(buf[pos : pos + nlen], "utf-8")
    seqid = seq_u - 0x100000000 if seq_u & 0x80000000 else seq_u
    return Head(name, mtype, seqid, at, seqlen, COMPACT, pos + nlen - start)


def with_seqid(msg: bytes | bytearray, head: Head, seqid: int) -> bytearray:
    """A copy of message ``msg`` with its seqid replaced; the rest is byte-identical."""
    if head.proto == COMPACT:
        at = head.seqid_at
        out = bytearray(msg[:at])
        out += varint(seqid)
        out += msg[at + head.seqid_len :]
        return out
    out = bytearray(msg)
    _I32.pack_into(out, head.seqid_at, seqid)
    return out


def app_exception(proto: int, name: str, seqid: int, kind: int, message: str) -> bytes:
    """A TApplicationException reply in the caller's protocol, for ``seqid``.

    Written by hand (it is a two-field struct) so the proxy needs no thriftpy2 objects on
    the error path either.
    """
    bname = name.encode()
    bmsg = message.encode()
    if proto == COMPACT:
        head = b"\x82" + bytes([(EXCEPTION << 5) | 1]) + varint(seqid) + varint(len(bname)) + bname
        zig = ((kind << 1) ^ (kind >> 31)) & 0xFFFFFFFF
        body = b"\x18" + varint(len(bmsg)) + bmsg + b"\x15" + varint(zig) + b"\x00"
        return head + body
    if proto == BINARY_LOOSE:
        head = _pack_i32(len(bname)) + bname + bytes([EXCEPTION]) + _pack_i32(seqid)
    else:
        head = _U32.pack(0x80010000 | EXCEPTION) + _pack_i32(len(bname)) + bname + _pack_i32(seqid)
    body = b"\x0b\x00\x01" + _pack_i32(len(bmsg)) + bmsg + b"\x08\x00\x02" + _pack_i32(kind) + b"\x00"
    return head + body
