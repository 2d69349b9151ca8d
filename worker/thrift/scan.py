"""Message boundaries in an unframed binary-protocol stream.

Unframed Thrift has no length prefix: the only way to know where a message ends is to walk
its structure, the way ``thriftpy2.protocol.binary.skip`` does. This scanner walks it
without building values, validates every type byte and length (so a hostile stream cannot
make it loop or allocate), and is *resumable*: when the buffer ends mid-message it keeps
its position and nesting stack, so a large message arriving in many chunks is scanned
once, not once per chunk.
"""

from __future__ import annotations

import struct

from thriftpy2.thrift import TType

from .errors import FrameError
from .message import MAX_NAME, Head, parse_head

UUID = 16  # Apache Thrift's 16-byte UUID type
_FIXED: dict[int, int] = {
    TType.BOOL: 1,
    TType.BYTE: 1,
    TType.DOUBLE: 8,
    TType.I16: 2,
    TType.I32: 4,
    TType.I64: 8,
    UUID: 16,
}
_VALID = frozenset((*_FIXED, TType.STRING, TType.STRUCT, TType.MAP, TType.SET, TType.LIST))
_S_STRUCT, _S_LIST, _S_MAP = 0, 1, 2
_unpack_i32 = struct.Struct("!i").unpack_from


class BinaryScanner:
    """Finds where one binary-protocol message ends; call ``reset`` before each message."""

    __slots__ = ("start", "pos", "stack", "pending", "head", "max_size", "max_depth")

    def __init__(self, max_size: int, max_depth: int = 64) -> None:
        self.max_size = max_size
        self.max_depth = max_depth
        self.reset(0)

    def reset(self, start: int) -> None:
        """Begin a new message at ``start``."""
        self.start = start
        self.pos = start
        self.stack: list[list[int]] = []
        self.pending = -1
        self.head: Head | None = None

    def rebase(self, delta: int) -> None:
        """The caller dropped ``delta`` bytes from the front of its buffer."""
        self.start -= delta
        self.pos -= delta

    def scan(self, buf: bytes | bytearray, end: int) -> int:
        """The offset just past the message, or -1 when ``buf[:end]`` does not hold all of it yet."""
        if self.head is None:
            head = self._head(buf, end)
            if head is None:
                return self._incomplete(end)
            self.head = head
            self.pos = self.start + head.size
            self.stack.append([_S_STRUCT, 0, 0, 0])
        stack = self.stack
        pos = self.pos
        while True:
            if self.pending >= 0:
                npos = self._value(buf, pos, end, self.pending)
                if npos < 0:
                    self.pos = pos
                    return self._incomplete(end)
                pos = npos
                self.pending = -1
            if not stack:
                self.pos = pos
                return pos
            top = stack[-1]
            kind = top[0]
            if kind == _S_STRUCT:
                if pos >= end:
                    self.pos = pos
                    return self._incomplete(end)
                ftype = buf[pos]
                if ftype == TType.STOP:
                    pos += 1
                    stack.pop()
                    continue
                if pos + 3 > end:
                    self.pos = pos
                    return self._incomplete(end)
                if ftype not in _VALID:
                    raise FrameError(f"bad field type {ftype} at byte {pos - self.start}")
                pos += 3
                self.pending = ftype
            elif kind == _S_LIST:
                if top[1] == 0:
                    stack.pop()
                    continue
                top[1] -= 1
                self.pending = top[2]
            else:
                if top[1] == 0:
                    stack.pop()
                    continue
                self.pending = top[2] if top[1] % 2 == 0 else top[3]
                top[1] -= 1

    def _incomplete(self, end: int) -> int:
        if end - self.start > self.max_size:
            raise FrameError(f"unframed message over max_frame_size ({self.max_size} bytes)")
        return -1

    def _head(self, buf: bytes | bytearray, end: int) -> Head | None:
        s = self.start
        avail = end - s
        if avail < 4:
            return None
        first = buf[s]
        if first == 0x80:
            if avail < 8:
                return None
            nlen = _unpack_i32(buf, s + 4)[0]
            need = 8 + nlen + 4
        elif first == 0x82:
            raise FrameError("unframed compact protocol is not supported (use framed or TTHeader)")
        else:
            nlen = _unpack_i32(buf, s)[0]
            need = 4 + nlen + 5
        if nlen < 0 or nlen > MAX_NAME:
            raise FrameError("not a thrift binary message (bad name length)")
        if avail < need:
            return None
        return parse_head(buf, s, end)

    def _check(self, upto: int) -> None:
        if upto - self.start > self.max_size:
            raise FrameError(f"unframed message over max_frame_size ({self.max_size} bytes)")

    def _value(self, buf: bytes | bytearray, pos: int, end: int, ttype: int) -> int:
        """Consume one value of ``ttype`` atomically: the new offset, or -1 (nothing consumed)."""
        size = _FIXED.get(ttype)
        if size is not None:
            return pos + size if pos + size <= end else -1
        if ttype == TType.STRING:
            if pos + 4 > end:
                return -1
            n = _unpack_i32(buf, pos)[0]
            if n < 0:
                raise FrameError("negative string length")
            self._check(pos + 4 + n)
            return pos + 4 + n if pos + 4 + n <= end else -1
        if ttype == TType.STRUCT:
            self._push([_S_STRUCT, 0, 0, 0])
            return pos
        if ttype == TType.LIST or ttype == TType.SET:
            if pos + 5 > end:
                return -1
            etype = buf[pos]
            n = _unpack_i32(buf, pos + 1)[0]
            if n < 0:
                raise FrameError("negative container size")
            if n == 0:
                return pos + 5
            if etype not in _VALID:
                raise FrameError(f"bad element type {etype}")
            esize = _FIXED.get(etype)
            if esize is not None:
                stop = pos + 5 + n * esize
                self._check(stop)
                return stop if stop <= end else -1
            self._check(pos + 5 + n)  # every element takes at least one byte
            self._push([_S_LIST, n, etype, 0])
            return pos + 5
        if ttype == TType.MAP:
            if pos + 6 > end:
                return -1
            ktype, vtype = buf[pos], buf[pos + 1]
            n = _unpack_i32(buf, pos + 2)[0]
            if n < 0:
                raise FrameError("negative map size")
            if n == 0:
                return pos + 6
            if ktype not in _VALID or vtype not in _VALID:
                raise FrameError(f"bad map types {ktype}/{vtype}")
            ks, vs = _FIXED.get(ktype), _FIXED.get(vtype)
            if ks is not None and vs is not None:
                stop = pos + 6 + n * (ks + vs)
                self._check(stop)
                return stop if stop <= end else -1
            self._check(pos + 6 + 2 * n)
            self._push([_S_MAP, 2 * n, ktype, vtype])
            return pos + 6
        raise FrameError(f"bad value type {ttype}")  # pragma: no cover - filtered by _VALID

    def _push(self, frame: list[int]) -> None:
        if len(self.stack) >= self.max_depth:
            raise FrameError(f"message nested deeper than {self.max_depth}")
        self.stack.append(frame)
