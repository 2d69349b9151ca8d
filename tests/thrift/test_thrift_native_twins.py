"""The native Thrift relay's C decisions against their Python twins (worker/thrift/
native_scan.py) and the Python engine itself, on generated inputs: the frame scan and seqid
rewrite (uring/mu_thrift_frame.c) and the method route (mu_thrift.c route_of)."""

from __future__ import annotations

import random
import struct

import pytest

from monolake.worker.thrift import native_scan as ns
from tests.fuzz import thrift_target as tt

pytestmark = pytest.mark.skipif(tt.lib is None, reason="the io_uring extension is not built")

NAMES = [b"ping", b"echo", b"Echo:ping", b"a:b:c", b"", b"x" * 300, "é".encode(), b"\xc3\x28", b":", b"ping:"]


def _varint(v: int) -> bytes:
    v &= 0xFFFFFFFF
    out = bytearray()
    while v > 0x7F:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def message(rng: random.Random) -> bytes:
    """A message head of any of the three encodings, a random body after it."""
    name = rng.choice(NAMES)
    mtype = rng.choice([1, 2, 3, 4, 0, 7])
    seqid = rng.choice([0, 1, 7, -1, 0x7FFFFFFF, -(2**31), rng.randrange(-(2**31), 2**31)])
    body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 12)))
    kind = rng.randrange(3)
    if kind == 0:
        return struct.pack("!Ii", 0x80010000 | mtype, len(name)) + name + struct.pack("!i", seqid) + body
    if kind == 1:
        return bytes([0x82, (mtype << 5) | 1]) + _varint(seqid) + _varint(len(name)) + name + body
    return struct.pack("!i", len(name)) + name + bytes([mtype]) + struct.pack("!i", seqid) + body


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(4)
        if op == 0 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1 and b:
            del b[rng.randrange(len(b)) :]
        elif op == 2:
            b[rng.randrange(len(b) + 1) : 0] = bytes([rng.randrange(256)])
        elif op == 3 and len(b) >= 4:
            b[0:4] = struct.pack("!I", rng.choice([0, 1, len(b), len(b) - 4, len(b) + 3, 1 << 30]))
    return bytes(b)


def generated(seed: int, n: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        msg = message(rng)
        data = struct.pack("!I", len(msg)) + msg + (message(rng) if rng.random() < 0.2 else b"")
        out.append(mutate(rng, data) if rng.random() < 0.5 else data)
    return out


@pytest.mark.parametrize("names", [True, False])
@pytest.mark.parametrize("max_frame", [64, 1 << 24])
def test_frame_scan_and_encode_agree(names: bool, max_frame: int) -> None:
    rng = random.Random(7)
    seen: dict[str, int] = {}
    for data in generated(max_frame + names, 4000):
        seqid = rng.choice([1, 127, 128, 16384, 0x7FFFFFFF, -1, rng.randrange(-(2**31), 2**31)])
        got = tt.check(data, max_frame, names, seqid)  # Disagreement on failure
        key = "ok" if isinstance(got, ns.Msg) else got
        seen[key] = seen.get(key, 0) + 1
    # the generator reaches every decision (so the comparison above is not vacuous)
    want = {"ok", "incomplete", "head", "loose"} | ({"oversize"} if max_frame == 64 else set())
    if names:
        want.add("name")
    assert want <= set(seen), seen


def test_a_wrong_twin_is_caught() -> None:
    """The comparison can fail: a twin that gets the seqid offset wrong disagrees."""
    msg = b"\x80\x01\x00\x01\x00\x00\x00\x04ping\x00\x00\x00\x05"
    data = struct.pack("!I", len(msg)) + msg
    got = tt.c_scan(data, 1 << 20, True)
    assert isinstance(got, ns.Msg)
    assert got != got._replace(seqid_at=got.seqid_at + 1)
    assert tt.c_encode(data, got, 9) != tt.c_encode(data, got, 10)


def test_compact_seqid_rewrite_changes_the_frame_length() -> None:
    msg = b"\x82\x21\x01\x04ping\x00"
    data = struct.pack("!I", len(msg)) + msg
    got = tt.c_scan(data, 1 << 20, True)
    assert isinstance(got, ns.Msg) and got.seqid_len == 1
    out = tt.c_encode(data, got, 300)
    assert out == struct.pack("!I", len(msg) + 1) + b"\x82\x21\xac\x02\x04ping\x00"
    assert out == ns.encode_frame(data, got, 300)


def test_route_agrees_with_its_twin() -> None:
    from monolake.worker.thrift import native

    if native.THRIFT is None:
        pytest.skip("monolake.uring._thrift is not available")
    rng = random.Random(3)
    table = {b"ping": 0, b"echo": 1, b"Svc:whoami": -1, b"whoami": 2, b"": 1}
    for default in (-1, 0, 2):
        eng = native.THRIFT.Engine(table, default, (4, 4, 4), True, 1 << 20, 1.0, lambda *a: None)
        names = [b"ping", b"Svc:ping", b"A:B:echo", b"Svc:whoami", b"X:whoami", b"nope", b":", b"", b"ping:"]
        names += [bytes(rng.choice(b"pingechowamiSvc:") for _ in range(rng.randrange(8))) for _ in range(300)]
        for name in names:
            assert eng.route(name) == ns.route(table, default, name), (name, default)


def test_route_twin_is_the_method_router() -> None:
    """native_scan.route on the table NativeRelay compiles answers as MethodRouter.route."""

    class R:
        def __init__(self, by_method: dict, default: object) -> None:
            self.by_method, self.default = by_method, default

    from monolake.worker.thrift.proxy import MethodRouter

    a, b, d = object(), object(), object()
    router = R({"ping": a, "Svc:echo": b, "echo": a}, d)
    ids = {id(a): 0, id(b): 1, id(d): 2}
    table = {k.encode(): ids[id(v)] for k, v in router.by_method.items()}
    for name in ["ping", "Svc:ping", "Svc:echo", "X:echo", "echo", "zzz", "A:B:ping", ":"]:
        want = MethodRouter.route(router, name)  # type: ignore[arg-type]
        assert ns.route(table, 2, name.encode()) == ids[id(want)], name
