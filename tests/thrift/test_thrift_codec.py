"""In-process tests of the Thrift codecs: message heads, seqid rewrite, TTHeader, the
unframed scanner and the per-connection deframer, checked against thriftpy2's own
serialization and a TTHeader codec written from the spec (thrift_support)."""

from __future__ import annotations

import random
import struct

import pytest
from thriftpy2.protocol import TProtocolBase
from thriftpy2.protocol.binary import TBinaryProtocol
from thriftpy2.protocol.compact import TCompactProtocol
from thriftpy2.thrift import TApplicationException, TMessageType
from thriftpy2.transport import TMemoryBuffer

from monolake.worker.thrift import message as m
from monolake.worker.thrift import ttheader as tth
from monolake.worker.thrift.errors import FrameError
from monolake.worker.thrift.framing import AUTO, FRAMED, TTHEADER, UNFRAMED, Deframer
from monolake.worker.thrift.scan import BinaryScanner
from tests.thrift.thrift_support import echo_thrift, tt_frame, tt_parse

E = echo_thrift


def big_item(i: int = 0) -> object:
    return E.Item(
        name=f"item-{i}",
        count=i,
        inner=E.Inner(id=i, label="x" * i),
        inners=[E.Inner(id=j) for j in range(i % 5)],
        scores={"a": 1, "b": i},
        tags=["t1", "t2"],
        color=E.Color.BLUE,
        blob=bytes(range(256)) * (i % 3),
        ratio=0.5 * i,
        flag=bool(i % 2),
        tiny=-3,
        small=1234,
        nested={1: ["x", "y"], 2: []},
        deep=[{"k": E.Inner(id=1, label="d")}],
        palette=[E.Color.RED],
    )


def encode_call(
    method: str, seqid: int, proto: str = "binary", mtype: int = TMessageType.CALL, **kwargs
) -> bytes:
    buf = TMemoryBuffer()
    prot: TProtocolBase
    if proto == "compact":
        prot = TCompactProtocol(buf)
    else:
        prot = TBinaryProtocol(buf, strict_write=(proto == "binary"))
    args = getattr(E.Echo, method + "_args")(**kwargs)
    prot.write_message_begin(method, mtype, seqid)
    args.write(prot)
    prot.write_message_end()
    return buf.getvalue()


def decode_msg(data: bytes, proto: str = "binary") -> tuple[str, int, int, TProtocolBase]:
    buf = TMemoryBuffer(data)
    prot: TProtocolBase = (
        TCompactProtocol(buf) if proto == "compact" else TBinaryProtocol(buf, strict_read=False)
    )
    name, mtype, seqid = prot.read_message_begin()
    return name, mtype, seqid, prot


SEQIDS = [0, 1, 127, 128, 300, 2**31 - 1, -1, -(2**31)]


# thriftpy2's compact writer loops forever on a negative seqid: compact gets non-negative ones
# here (negative compact seqids are covered by test_compact_in_ttheader_and_framed)
@pytest.mark.parametrize(
    "proto,seqid",
    [(p, s) for p in ("binary", "loose", "compact") for s in SEQIDS if p != "compact" or s >= 0],
)
def test_head_and_seqid_rewrite(proto: str, seqid: int) -> None:
    data = encode_call("roundtrip", seqid, proto, item=big_item(3))
    head = m.parse_head(data)
    assert (head.name, head.mtype, head.seqid) == ("roundtrip", TMessageType.CALL, seqid)
    assert head.proto == {"binary": m.BINARY, "loose": m.BINARY_LOOSE, "compact": m.COMPACT}[proto]
    for new in (5, -7, 2**31 - 1, 999999):
        out = m.with_seqid(data, head, new)
        name, mtype, got, prot = decode_msg(bytes(out), "compact" if proto == "compact" else "binary")
        # compact carries the i32 as an unsigned varint; thriftpy2 reads it back unsigned
        want = new & 0xFFFFFFFF if proto == "compact" else new
        assert (name, mtype, got) == ("roundtrip", TMessageType.CALL, want)
        args = E.Echo.roundtrip_args()
        args.read(prot)
        assert args.item == big_item(3)
        # only the seqid changed
        h2 = m.parse_head(out)
        assert bytes(out[h2.seqid_at + h2.seqid_len :]) == data[head.seqid_at + head.seqid_len :]


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"\x80\x02\x00\x01",
        b"\x80\x01\x00\x01\x00\x00\x00\x09ab",
        b"\x7f\xff\xff\xff",
        b"\x82\x21",
        b"\x80\x01\x00\x01\xff\xff\xff\xff\x00\x00\x00\x00",
    ],
)
def test_head_rejects_garbage(bad: bytes) -> None:
    with pytest.raises(FrameError):
        m.parse_head(bad)


@pytest.mark.parametrize("proto", ["binary", "loose", "compact"])
def test_app_exception_is_read_by_thriftpy2(proto: str) -> None:
    pid = {"binary": m.BINARY, "loose": m.BINARY_LOOSE, "compact": m.COMPACT}[proto]
    data = m.app_exception(pid, "echo", 4242, m.APP_INTERNAL_ERROR, "upstream down: é")
    name, mtype, seqid, prot = decode_msg(data, "compact" if proto == "compact" else "binary")
    assert (name, mtype, seqid) == ("echo", TMessageType.EXCEPTION, 4242)
    exc = TApplicationException()
    exc.read(prot)
    assert exc.type == TApplicationException.INTERNAL_ERROR
    assert exc.message == "upstream down: é"


def test_ttheader_decode_reencode_matches_spec() -> None:
    payload = encode_call("echo", 77, text="hi")
    frame = tt_frame(payload, seq_id=77, strs={"k1": "v1", "svc": "echo"}, ints={1: "x", 9: "yz"}, flags=3)
    hdr, off = tth.decode(frame, 0, len(frame))
    assert hdr.flags == 3 and hdr.seq_id == 77 and hdr.protocol_id == 0
    assert hdr.str_headers == {b"k1": b"v1", b"svc": b"echo"}
    assert hdr.int_headers == {1: b"x", 9: b"yz"}
    assert frame[off:] == payload
    again = tth.encode(hdr, payload, seq_id=5)
    parsed = tt_parse(again)
    assert parsed["seq_id"] == 5 and parsed["flags"] == 3
    assert parsed["strs"] == {"k1": "v1", "svc": "echo"} and parsed["ints"] == {1: "x", 9: "yz"}
    assert parsed["payload"] == payload
    assert (len(again) - 14 - len(payload)) % 4 == 0  # padded to 32-bit words


def test_ttheader_acl_token_and_empty_headers() -> None:
    hdr = tth.TTHeader(acl_token=b"secret")
    frame = tth.encode(hdr, b"\x80\x01\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00")
    back, off = tth.decode(frame, 0, len(frame))
    assert back.acl_token == b"secret" and back.str_headers == {} and back.int_headers == {}
    assert frame[off:] == b"\x80\x01\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00"


@pytest.mark.parametrize(
    "mutate,why",
    [
        (lambda f: f[:15] + b"\x01" + f[16:], "transforms"),  # n_transforms = 1
        (lambda f: f[:14] + b"\x05" + f[15:], "protocol id"),
        (lambda f: f[:12] + b"\x00\x00" + f[14:], "header size"),
        (lambda f: f[:12] + b"\x7f\x00" + f[14:], "header size"),
        (lambda f: f[:16] + b"\x42" + f[17:], "info id"),
    ],
)
def test_ttheader_rejects(mutate, why: str) -> None:
    frame = tt_frame(encode_call("ping", 1), strs={"a": "b"})
    bad = mutate(bytearray(frame))
    with pytest.raises(FrameError):
        tth.decode(bytes(bad), 0, len(bad))


def scan_all(stream: bytes, chunks: list[int], max_size: int = 1 << 20) -> list[bytes]:
    """Feed ``stream`` to a Deframer(UNFRAMED) in chunks of the given sizes."""
    d = Deframer(UNFRAMED, max_size)
    out: list[bytes] = []
    pos = 0
    sizes = iter(chunks)
    while pos < len(stream):
        n = next(sizes, len(stream))
        out += [bytes(f.raw) for f in d.feed(stream[pos : pos + n])]
        pos += n
    assert not d.partial
    return out


def test_unframed_scanner_finds_every_boundary() -> None:
    msgs = [encode_call("roundtrip", i, item=big_item(i)) for i in range(6)]
    msgs += [
        encode_call("ping", 9),
        encode_call("nothing", 10, "loose"),
        encode_call("colors", 11, cs=[1, 2], ids={1, 2, 3}, names={1: "r"}),
        encode_call("add", 12, a=1, b=2),
        encode_call("fire", 13, mtype=TMessageType.ONEWAY, note="n"),
    ]
    stream = b"".join(msgs)
    rnd = random.Random(7)
    assert scan_all(stream, [len(stream)]) == msgs
    assert scan_all(stream, [1] * len(stream)) == msgs
    for _ in range(20):
        assert scan_all(stream, [rnd.randint(1, 60) for _ in range(len(stream))]) == msgs


def test_unframed_scanner_is_resumable_not_quadratic() -> None:
    msg = encode_call("roundtrip", 1, item=E.Item(name="x", inners=[E.Inner(id=i) for i in range(20000)]))
    sc = BinaryScanner(1 << 24)
    sc.reset(0)
    buf = bytearray()
    for i in range(0, len(msg), 512):
        buf += msg[i : i + 512]
        end = sc.scan(buf, len(buf))
    assert end == len(msg)


@pytest.mark.parametrize(
    "body,why",
    [
        (b"\x0d\x00\x01\x0b\x08\xff\xff\xff\xff", "negative map size"),
        (b"\x0f\x00\x01\x00\x00\x00\x00\x05", "list of STOP"),
        (b"\x0f\x00\x01\x01\x00\x00\x00\x05", "list of VOID"),
        (b"\x0b\x00\x01\xff\xff\xff\xfe", "negative string"),
        (b"\x09\x00\x01", "bad field type"),
        (b"\x0c\x00\x01" * 100, "too deep"),
        (b"\x0f\x00\x01\x0a\x10\x00\x00\x00", "oversized list"),
    ],
)
def test_unframed_scanner_rejects(body: bytes, why: str) -> None:
    head = b"\x80\x01\x00\x01\x00\x00\x00\x01x\x00\x00\x00\x01"
    d = Deframer(UNFRAMED, 1 << 20)
    with pytest.raises(FrameError):
        d.feed(head + body + b"\x00" * 64)


def test_unframed_oversized_partial_message() -> None:
    head = b"\x80\x01\x00\x01\x00\x00\x00\x01x\x00\x00\x00\x01"
    d = Deframer(UNFRAMED, 1000)
    d.feed(head + b"\x0b\x00\x01\x00\x00\x01\x00")  # a 256-byte string is still fine
    with pytest.raises(FrameError):
        d.feed(b"s" * 256 + b"\x0b\x00\x02\x00\x00\x10\x00")  # a 4 KiB string is not
    d = Deframer(UNFRAMED, 1000)
    d.feed(head)
    with pytest.raises(FrameError):  # many small fields, never a STOP
        for _ in range(200):
            d.feed(b"\x08\x00\x01\x00\x00\x00\x01")


@pytest.mark.parametrize("kind", [FRAMED, TTHEADER, AUTO])
def test_deframer_sized(kind: int) -> None:
    msgs = [encode_call("echo", i, text="a" * i) for i in range(1, 30)]
    if kind == FRAMED:
        frames = [struct.pack("!I", len(x)) + x for x in msgs]
    else:
        frames = [tt_frame(x, seq_id=i, strs={"i": str(i)}) for i, x in enumerate(msgs)]
    stream = b"".join(frames)
    rnd = random.Random(kind)
    for trial in range(10):
        d = Deframer(kind, 1 << 20)
        got = []
        pos = 0
        while pos < len(stream):
            n = rnd.randint(1, 200) if trial else len(stream)
            got += d.feed(stream[pos : pos + n])
            pos += n
        assert [f.message for f in got] == msgs
        assert [f.head.seqid for f in got] == list(range(1, 30))
        assert d.kind == (FRAMED if kind == FRAMED else TTHEADER)
        if kind != FRAMED:
            assert [f.tt.str_headers if f.tt else None for f in got] == [
                {b"i": str(i).encode()} for i in range(29)
            ]


def test_deframer_auto_detects_unframed_binary() -> None:
    msgs = [encode_call("add", i, a=i, b=2) for i in range(5)]
    d = Deframer(AUTO, 1 << 20)
    got = d.feed(b"".join(msgs))
    assert d.kind == UNFRAMED and [f.message for f in got] == msgs


def test_frame_encode_remaps_seqid_for_every_transport() -> None:
    payload = encode_call("echo", 7, text="hello")
    for kind, wire in [
        (FRAMED, struct.pack("!I", len(payload)) + payload),
        (TTHEADER, tt_frame(payload, seq_id=7, strs={"a": "b"}, ints={3: "c"})),
        (UNFRAMED, payload),
    ]:
        (frame,) = Deframer(kind, 1 << 20).feed(wire)
        out = bytes(frame.encode(123456))
        if kind == FRAMED:
            assert struct.unpack_from("!I", out)[0] == len(out) - 4
            out_msg = out[4:]
        elif kind == TTHEADER:
            parsed = tt_parse(out)
            assert parsed["seq_id"] == 123456 and parsed["strs"] == {"a": "b"} and parsed["ints"] == {3: "c"}
            out_msg = parsed["payload"]
        else:
            out_msg = out
        name, _mtype, seqid, prot = decode_msg(out_msg)
        assert (name, seqid) == ("echo", 123456)
        args = E.Echo.echo_args()
        args.read(prot)
        assert args.text == "hello"


def test_compact_in_ttheader_and_framed() -> None:
    payload = encode_call("echo", 300, "compact", text="zz")
    for kind, wire in [
        (FRAMED, struct.pack("!I", len(payload)) + payload),
        (TTHEADER, tt_frame(payload, seq_id=300, protocol_id=2)),
    ]:
        (frame,) = Deframer(kind, 1 << 20).feed(wire)
        assert frame.head.proto == m.COMPACT and frame.head.seqid == 300
        out = bytes(frame.encode(-5))
        out_msg = tt_parse(out)["payload"] if kind == TTHEADER else out[4:]
        if kind == FRAMED:
            assert struct.unpack_from("!I", out)[0] == len(out) - 4
        name, _, seqid, _ = decode_msg(out_msg, "compact")
        assert (name, seqid) == ("echo", -5 & 0xFFFFFFFF)
        assert m.parse_head(out_msg).seqid == -5


@pytest.mark.parametrize("kind", [FRAMED, TTHEADER])
def test_deframer_rejects_oversized_and_malformed(kind: int) -> None:
    d = Deframer(kind, 100)
    with pytest.raises(FrameError):
        d.feed(struct.pack("!I", 101) + b"\x00" * 10)
    d = Deframer(kind, 1 << 20)
    with pytest.raises(FrameError):
        d.feed(struct.pack("!I", 12) + b"GET / HTTP/1.1"[:12])


def test_framed_one_read_one_frame_fast_path() -> None:
    """One read holding exactly one frame: the frame keeps the read's own bytes, encodes to
    fresh bytes (the input is not mutated, a frame can be encoded twice), and the size limit
    and malformed-head checks still apply."""
    payload = encode_call("echo", 7, text="hello")
    wire = struct.pack("!I", len(payload)) + payload
    (frame,) = Deframer(FRAMED, 1 << 20).feed(wire)
    assert frame.raw is wire and frame.head.name == "echo" and frame.head.seqid == 7
    first, second = frame.encode(99), frame.encode(100)
    assert type(first) is bytes and wire == struct.pack("!I", len(payload)) + payload
    assert m.parse_head(first, 4).seqid == 99 and m.parse_head(second, 4).seqid == 100
    assert first[:4] == wire[:4] and first[m.parse_head(first, 4).size + 4 :] == wire[frame.head.size + 4 :]
    with pytest.raises(FrameError, match="max_frame_size"):
        Deframer(FRAMED, len(payload) - 1).feed(wire)
    with pytest.raises(FrameError):
        Deframer(FRAMED, 1 << 20).feed(struct.pack("!I", 5) + b"\x80\x07\x00\x01\x00")
    # a frame split over reads, then two frames in one read, go through the buffer
    d = Deframer(FRAMED, 1 << 20)
    assert d.feed(wire[:9]) == [] and d.partial
    got = d.feed(wire[9:] + wire)
    assert [f.head.seqid for f in got] == [7, 7] and not d.partial
    assert all(type(f.raw) is bytes and f.raw == wire for f in got)
