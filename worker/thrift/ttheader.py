"""TTHeader (CloudWeGo's Thrift transport header): decode and re-encode, as Monolake does.

Layout of one frame (all big-endian)::

    u32 length (of everything after it) | u16 magic 0x1000 | u16 flags | i32 seq_id
    | u16 header_size / 4 | u8 protocol_id | u8 n_transforms | transform ids
    | info blocks: 0x01 string KV, 0x10 int KV, 0x11 ACL token, 0x00 padding
    | payload (a Thrift message in protocol ``protocol_id``)

The header is parsed into a ``TTHeader`` and encoded again on the way out (string and int
info headers and the ACL token kept, padding recomputed); the payload is opaque bytes.
Transforms (payload compression) are refused: the proxy must read the payload's message
head, which a transformed payload hides.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from .errors import FrameError

MAGIC = 0x1000
MAGIC_BYTES = b"\x10\x00"
MIN_FRAME = 14  # length + magic + flags + seq_id + header size
MAX_HEADERS = 1024
_Buf = bytes | bytearray | memoryview
K = TypeVar("K", int, bytes)  # an info block's key: an int or a string

INFO_PADDING = 0x00
INFO_KEY_VALUE = 0x01
INFO_INT_KEY_VALUE = 0x10
INFO_ACL_TOKEN = 0x11

PROTOCOL_BINARY = 0
PROTOCOL_COMPACT = 2

_FIXED = struct.Struct("!IHHiH")  # length, magic, flags, seq_id, header_size/4
_U16 = struct.Struct("!H")
_unpack_u16 = _U16.unpack_from


@dataclass(slots=True)
class TTHeader:
    """The decoded header of one TTHeader frame (strings kept as raw bytes)."""

    flags: int = 0
    seq_id: int = 0
    protocol_id: int = PROTOCOL_BINARY
    str_headers: dict[bytes, bytes] = field(default_factory=dict)
    int_headers: dict[int, bytes] = field(default_factory=dict)
    acl_token: bytes | None = None


def decode(buf: _Buf, start: int, end: int) -> tuple[TTHeader, int]:
    """Decode the header of the complete frame ``buf[start:end]``; return it and the payload offset."""
    if end - start < MIN_FRAME:
        raise FrameError("truncated TTHeader frame")
    _length, magic, flags, seq_id, hsize = _FIXED.unpack_from(buf, start)
    if magic != MAGIC:
        raise FrameError(f"bad TTHeader magic 0x{magic:04x}")
    hlen = hsize * 4
    pos = start + MIN_FRAME
    hend = pos + hlen
    if hsize < 1 or hend > end:
        raise FrameError(f"bad TTHeader header size {hlen}")
    hdr = TTHeader(flags=flags, seq_id=seq_id, protocol_id=buf[pos])
    if hdr.protocol_id not in (PROTOCOL_BINARY, PROTOCOL_COMPACT):
        raise FrameError(f"unsupported TTHeader protocol id {hdr.protocol_id}")
    if buf[pos + 1]:
        raise FrameError("TTHeader transforms are not supported")
    pos += 2
    while pos < hend:
        info = buf[pos]
        pos += 1
        if info == INFO_PADDING:
            continue
        if info == INFO_KEY_VALUE:
            pos = _key_values(buf, pos, hend, _string, hdr.str_headers)
        elif info == INFO_INT_KEY_VALUE:
            pos = _key_values(buf, pos, hend, _u16, hdr.int_headers)
        elif info == INFO_ACL_TOKEN:
            hdr.acl_token, pos = _string(buf, pos, hend)
        else:
            raise FrameError(f"unexpected TTHeader info id 0x{info:02x}")
    return hdr, hend


def _key_values(
    buf: _Buf, pos: int, end: int, read_key: Callable[[_Buf, int, int], tuple[K, int]], into: dict[K, bytes]
) -> int:
    """A key-value info block (its u16 count, then keys read by ``read_key``, each with a
    string value) into ``into``; the position after it."""
    count, pos = _u16(buf, pos, end)
    if count > MAX_HEADERS:
        raise FrameError(f"too many TTHeader headers: {count}")
    for _ in range(count):
        key, pos = read_key(buf, pos, end)
        val, pos = _string(buf, pos, end)
        into[key] = val
    return pos


def _u16(buf: _Buf, pos: int, end: int) -> tuple[int, int]:
    if pos + 2 > end:
        raise FrameError("truncated TTHeader info block")
    return _unpack_u16(buf, pos)[0], pos + 2


def _string(buf: _Buf, pos: int, end: int) -> tuple[bytes, int]:
    n, pos = _u16(buf, pos, end)
    if pos + n > end:
        raise FrameError("truncated TTHeader string")
    return bytes(buf[pos : pos + n]), pos + n


def encode_prefix(hdr: TTHeader, seq_id: int, payload_len: int) -> bytes:
    """Everything of a frame before its payload: length, fixed fields and the info blocks."""
    info = bytearray((hdr.protocol_id, 0))
    if hdr.str_headers:
        info.append(INFO_KEY_VALUE)
        info += _U16.pack(len(hdr.str_headers))
        for k, v in hdr.str_headers.items():
            info += _U16.pack(len(k)) + k + _U16.pack(len(v)) + v
    if hdr.int_headers:
        info.append(INFO_INT_KEY_VALUE)
        info += _U16.pack(len(hdr.int_headers))
        for ik, v in hdr.int_headers.items():
            info += _U16.pack(ik) + _U16.pack(len(v)) + v
    if hdr.acl_token is not None:
        info.append(INFO_ACL_TOKEN)
        info += _U16.pack(len(hdr.acl_token)) + hdr.acl_token
    pad = -len(info) % 4
    if pad:
        info += bytes(pad)
    if len(info) > 0xFFFF * 4:
        raise FrameError("TTHeader header too large to encode")
    length = 10 + len(info) + payload_len
    return _FIXED.pack(length, MAGIC, hdr.flags, seq_id, len(info) // 4) + bytes(info)


def encode(hdr: TTHeader, payload: bytes | bytearray, seq_id: int | None = None) -> bytes:
    """One whole TTHeader frame (tests and the gateway's TTHeader client use it)."""
    sid = hdr.seq_id if seq_id is None else seq_id
    return encode_prefix(hdr, sid, len(payload)) + bytes(payload)
