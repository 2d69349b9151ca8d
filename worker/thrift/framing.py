"""Per-connection deframing: bytes in, whole Thrift messages out, for each transport.

``Deframer.feed`` is called from ``data_received`` with whatever the socket produced and
returns the complete frames in it, keeping the remainder. Each ``Frame`` keeps its raw bytes
(immutable ``bytes``: when one read is exactly one frame, the received object itself), and
``encode`` builds the outgoing ``bytes`` with the new seqid spliced in: one copy per message,
and a ``bytes`` object, which the io_uring transport sends without another copy or check.
"""

from __future__ import annotations

import struct

from .errors import FrameError
from .message import COMPACT, Head, parse_head, varint
from .scan import BinaryScanner
from .ttheader import TTHeader
from .ttheader import decode as tt_decode
from .ttheader import encode_prefix as tt_prefix

AUTO, FRAMED, TTHEADER, UNFRAMED = 0, 1, 2, 3
KIND_NAMES = {AUTO: "auto", FRAMED: "framed", TTHEADER: "ttheader", UNFRAMED: "unframed"}
KINDS = {v: k for k, v in KIND_NAMES.items()}

_U32 = struct.Struct("!I")
_I32 = struct.Struct("!i")
_unpack_u32 = _U32.unpack_from
_pack_i32 = _I32.pack
_join = b"".join


class Frame:
    """One message as received: ``raw[off:]`` is the Thrift message, ``raw[:off]`` its framing."""

    __slots__ = ("kind", "raw", "off", "head", "tt")

    def __init__(self, kind: int, raw: bytes, off: int, head: Head, tt: TTHeader | None) -> None:
        self.kind = kind
        self.raw = raw
        self.off = off
        self.head = head
        self.tt = tt

    @classmethod
    def from_message(cls, kind: int, msg: bytes | bytearray, tt: TTHeader | None = None) -> Frame:
        """A frame around a message built locally (the gateway's requests)."""
        head = parse_head(msg)
        if kind == FRAMED:
            return cls(FRAMED, _U32.pack(len(msg)) + msg, 4, head, None)
        if kind == TTHEADER:
            return cls(TTHEADER, bytes(msg), 0, head, tt or TTHeader())
        return cls(UNFRAMED, bytes(msg), 0, head, None)

    @property
    def message(self) -> bytes:
        """The Thrift message bytes (a copy; not for the hot path)."""
        return bytes(self.raw[self.off :])

    def encode(self, seqid: int, header_seqid: int | None = None) -> bytes:
        """The frame as it goes out on the wire, with ``seqid`` in place of the received one.

        Framed and unframed binary frames keep their bytes around the new seqid. TTHeader
        frames get their header re-encoded, with ``header_seqid`` (default ``seqid``) in the
        TTHeader's own seq_id field.
        """
        head = self.head
        raw = self.raw
        if self.kind == TTHEADER:
            off = self.off
            if head.proto == COMPACT:
                msg = _splice_varint(raw[off:], head, seqid)
            else:
                at = off + head.seqid_at
                msg = _join((raw[off:at], _pack_i32(seqid), raw[at + 4 :]))
            assert self.tt is not None
            return tt_prefix(self.tt, seqid if header_seqid is None else header_seqid, len(msg)) + msg
        if head.proto == COMPACT:
            msg = _splice_varint(raw[self.off :], head, seqid)
            if self.kind == FRAMED:
                return _U32.pack(len(msg)) + msg
            return msg
        at = self.off + head.seqid_at
        return _join((raw[:at], _pack_i32(seqid), raw[at + 4 :]))


def _splice_varint(msg: bytes, head: Head, seqid: int) -> bytes:
    at = head.seqid_at
    return _join((msg[:at], varint(seqid), msg[at + head.seqid_len :]))


def frame_message(kind: int, msg: bytes | bytearray, tt: TTHeader | None = None, seqid: int = 0) -> bytes:
    """Put a whole Thrift message (built by the caller) on the wire in ``kind`` framing."""
    if kind == FRAMED:
        return _U32.pack(len(msg)) + bytes(msg)
    if kind == TTHEADER:
        return tt_prefix(tt or TTHeader(), seqid, len(msg)) + bytes(msg)
    return bytes(msg)


class Deframer:
    """Splits one connection's byte stream into ``Frame``s; raises ``FrameError`` on bad input."""

    __slots__ = ("kind", "max_frame", "buf", "scanner", "names")

    def __init__(self, kind: int, max_frame_size: int, names: bool = True) -> None:
        self.kind = kind
        self.names = names  # decode method names (requests); replies need only the seqid
        self.max_frame = max_frame_size
        self.buf = bytearray()
        self.scanner: BinaryScanner | None = BinaryScanner(max_frame_size) if kind == UNFRAMED else None

    @property
    def partial(self) -> bool:
        """Whether bytes of an incomplete message are buffered."""
        return bool(self.buf)

    @property
    def buffered(self) -> int:
        return len(self.buf)

    def feed(self, data: bytes | bytearray) -> list[Frame]:
        """Take the next bytes of the stream; return the frames they complete, in order."""
        buf = self.buf
        if not buf and self.kind == FRAMED and data.__class__ is bytes and len(data) > 4:
            # the common case: one read is exactly one frame, which keeps the read's bytes
            n = _unpack_u32(data, 0)[0]
            if n + 4 == len(data) and n <= self.max_frame:
                return [Frame(FRAMED, data, 4, parse_head(data, 4, n + 4, self.names), None)]
        if buf:
            buf += data
            src: bytes | bytearray = buf
        else:
            src = data
        end = len(src)
        frames: list[Frame] = []
        pos = 0
        try:
            while pos < end:
                if self.kind == AUTO:
                    kind = self._detect(src, pos, end)
                    if kind == AUTO:
                        break
                    self.kind = kind
                    if kind == UNFRAMED:
                        self.scanner = BinaryScanner(self.max_frame)
                        self.scanner.reset(pos)
                if self.kind == UNFRAMED:
                    npos = self._unframed(src, pos, end, frames)
                else:
                    npos = self._sized(src, pos, end, frames)
                if npos < 0:
                    break
                pos = npos
        finally:
            # keep the unconsumed tail, and shift the scanner's offsets by what was dropped
            if src is buf:
                if pos:
                    del buf[:pos]
            elif pos < end:
                buf += data[pos:] if pos else data
            if pos and self.scanner is not None:
                self.scanner.rebase(pos)
        return frames

    def _detect(self, src: bytes | bytearray, pos: int, end: int) -> int:
        if src[pos] == 0x80:
            return UNFRAMED
        if end - pos < 6:
            return AUTO
        if src[pos + 4] == 0x10 and src[pos + 5] == 0x00:
            return TTHEADER
        return FRAMED

    def _sized(self, src: bytes | bytearray, pos: int, end: int, frames: list[Frame]) -> int:
        if end - pos < 4:
            return -1
        n = _unpack_u32(src, pos)[0]
        if n > self.max_frame:
            raise FrameError(f"frame of {n} bytes over max_frame_size ({self.max_frame})")
        stop = pos + 4 + n
        if stop > end:
            return -1
        if self.kind == TTHEADER:
            if n < 10 or src[pos + 4] != 0x10 or src[pos + 5] != 0x00:
                raise FrameError("illegal TTHeader frame (no 0x1000 magic)")
            tt, poff = tt_decode(src, pos, stop)
            head = parse_head(src, poff, stop, self.names)
            frames.append(Frame(TTHEADER, _bytes(src, pos, stop), poff - pos, head, tt))
        else:
            head = parse_head(src, pos + 4, stop, self.names)
            frames.append(Frame(FRAMED, _bytes(src, pos, stop), 4, head, None))
        return stop

    def _unframed(self, src: bytes | bytearray, pos: int, end: int, frames: list[Frame]) -> int:
        sc = self.scanner
        assert sc is not None
        stop = sc.scan(src, end)
        if stop < 0:
            return -1
        head = sc.head
        assert head is not None
        frames.append(Frame(UNFRAMED, _bytes(src, pos, stop), 0, head, None))
        sc.reset(stop)
        return stop


def _bytes(src: bytes | bytearray, pos: int, stop: int) -> bytes:
    """``src[pos:stop]`` as ``bytes`` (the object itself when it is all of a ``bytes``)."""
    raw = src[pos:stop]
    return raw if raw.__class__ is bytes else bytes(raw)
