"""The C route matcher (uring/mu_route.c) against its Python twin, conf/routes.py's Router:
a seeded corpus of route tables and requests (percent-encoding, trailing slashes, dot
segments, case, empty and very long paths, hosts with ports, brackets and dots) must route
alike, route index and params; the compiled table's validator refuses what it must."""

from __future__ import annotations

import random
import struct
import subprocess
import sysconfig
from pathlib import Path

import pytest

from monolake.conf.routes import RouteSpec
from monolake.worker.http import native_route as nr
from tests.fuzz import native_targets as nt

pytestmark = pytest.mark.skipif(nr.lib is None, reason="the codec extension is not built")

ROOT = Path(__file__).resolve().parents[2]

SEGMENTS = [
    "a",
    "b",
    "A",
    "api",
    "v1",
    "%2F",
    "%2f",
    "a%20b",
    ".",
    "..",
    "",
    "é",
    "€",
    "x.y",
    "*",
    "B",
    "users",
    "ü",
    "~",
    "a;b",
    "a=b",
]
HOSTS = [
    "example.com",
    "Example.COM",
    "a.b",
    "[::1]",
    "::1",
    "x",
    "é.fr",
    "€.fr",
    ".",
    "h:1",
    "[v6]",
    "WWW.É.FR",
]


def _pattern(rng: random.Random, prefix: bool) -> str:
    n = rng.choice([0, 1, 1, 2, 2, 3, 4])
    segs: list[str] = []
    for i in range(n):
        r = rng.random()
        if not prefix and r < 0.25:
            segs.append(f"{{p{rng.randrange(3 if rng.random() < 0.7 else 5)}}}")
        elif not prefix and r < 0.35 and i == n - 1:
            segs.append(f"{{*rest{rng.randrange(2)}}}")
        else:
            segs.append(rng.choice(SEGMENTS))
    text = "/" + "/".join(segs)
    if prefix and rng.random() < 0.3:
        text += "/"
    return text


def random_specs(rng: random.Random) -> list[RouteSpec]:
    specs = []
    for _ in range(rng.randrange(1, 14)):
        host = rng.choice(HOSTS) if rng.random() < 0.3 else None
        if rng.random() < 0.25:
            specs.append(RouteSpec(path_prefix=_pattern(rng, True), host=host))
        else:
            specs.append(RouteSpec(path=_pattern(rng, False), host=host))
    return specs


def _mutate(rng: random.Random, path: str) -> str:
    r = rng.random()
    if r < 0.1:
        return path + "/"
    if r < 0.2:
        return path.upper()
    if r < 0.3:
        return path.replace("/", "//", 1)
    if r < 0.35:
        return path.rstrip("/")
    if r < 0.45:
        return path + "/" + rng.choice(SEGMENTS)
    if r < 0.5:
        return path.replace("%2F", "/")
    if r < 0.55:
        return path + "/./" + rng.choice(["..", ".", "x"])
    if r < 0.6:
        return "".join(c if rng.random() < 0.8 else f"%{ord(c):02X}" for c in path if ord(c) < 256)
    return path


def requests_for(rng: random.Random, specs: list[RouteSpec]) -> list[tuple[bytes, bytes | None]]:
    out = []
    for _ in range(40):
        spec = rng.choice(specs)
        base = spec.path if spec.path is not None else (spec.path_prefix or "/")
        path = "/".join(
            (rng.choice(SEGMENTS[:8]) if rng.random() < 0.5 else "z" * rng.randrange(1, 4))
            if s.startswith("{")
            else s
            for s in base.split("/")
        )
        if rng.random() < 0.7:
            path = _mutate(rng, path)
        if rng.random() < 0.05:
            path = rng.choice(["", "*", "/", "//", "?", "a"])
        hostname = spec.host if spec.host and rng.random() < 0.7 else rng.choice(HOSTS)
        host: str | None = hostname
        r = rng.random()
        if r < 0.1:
            host = None
        elif r < 0.2:
            host = hostname + ":8080"
        elif r < 0.3:
            host = hostname.upper() + "."
        elif r < 0.35:
            host = "[" + hostname
        elif r < 0.4:
            host = ""
        data = path.encode("latin-1", "replace")
        out.append((data, host.encode("latin-1", "replace") if host is not None else None))
    return out


@pytest.mark.parametrize("seed", range(60))
def test_generated_tables_route_alike(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(25):
        specs = random_specs(rng)
        nt.compare_routes(nt.build_router(specs), requests_for(rng, specs))


# found by the generated corpus or written for a rule: each one a table and its requests
REGRESSIONS: list[tuple[list[RouteSpec], list[tuple[bytes, bytes | None]]]] = [
    # static beats param beats catch-all, with backtracking out of a param
    (
        [RouteSpec(path="/a/{x}/c"), RouteSpec(path="/a/b/{*r}"), RouteSpec(path="/{*all}")],
        [(b"/a/b/c", None), (b"/a/z/c", None), (b"/a/b/", None), (b"/a/", None), (b"/", None)],
    ),
    # a prefix after the paths, longest first, on a segment boundary; "/" takes all
    (
        [RouteSpec(path_prefix="/api/"), RouteSpec(path_prefix="/api/v1"), RouteSpec(path_prefix="/")],
        [(b"/api", None), (b"/apiv1", None), (b"/api/v1/x", None), (b"", None), (b"*", None)],
    ),
    # a host table first (case, port, trailing dot, brackets), the default after it
    (
        [
            RouteSpec(path="/x", host="Example.com"),
            RouteSpec(path="/y", host="[::1]"),
            RouteSpec(path="/x"),
            RouteSpec(path="/z", host="."),
        ],
        [
            (b"/x", b"EXAMPLE.com.:80"),
            (b"/y", b"[::1]:443"),
            (b"/y", b"::1"),
            (b"/x", None),
            (b"/z", b"."),
            (b"/z", b"[.]"),
            (b"/z", b"[]"),
            (b"/z", b"[:x"),
            (b"/z", b":80"),
        ],
    ),
    # percent-encoding and dot segments are not decoded: byte for byte
    (
        [RouteSpec(path="/a%2Fb"), RouteSpec(path="/a/./b"), RouteSpec(path="/{x}")],
        [(b"/a%2Fb", None), (b"/a%2fb", None), (b"/a/./b", None), (b"/a/b", None), (b"/..", None)],
    ),
    # latin-1 bytes in the path and host; a pattern that is not latin-1 matches nothing
    (
        [RouteSpec(path="/é"), RouteSpec(path="/€"), RouteSpec(path="/h", host="É.fr")],
        [(b"/\xe9", None), ("/€".encode(), None), (b"/h", b"\xc9.FR"), (b"/h", b"\xe9.fr")],
    ),
    # a partial trie branch of a conflicting route stays, without a route
    (
        [RouteSpec(path="/s/{a}/t"), RouteSpec(path="/s/{b}/u"), RouteSpec(path="/s/{*r}")],
        [(b"/s/1/u", None), (b"/s/1/t", None)],
    ),
]


@pytest.mark.parametrize("case", range(len(REGRESSIONS)))
def test_regressions(case: int) -> None:
    specs, requests = REGRESSIONS[case]
    nt.compare_routes(nt.build_router(specs), requests)


def test_every_host_byte_folds_as_python_lowers_it() -> None:
    """Python lower-cases the latin-1 decoded Host (ÀÉ... too); C's fold must be the same."""
    specs = [
        RouteSpec(path="/", host=bytes([c]).decode("latin-1") + "h")
        for c in range(0x21, 0x100)
        if c not in (0x3A, 0x5B, 0x2E)
    ]
    router = nt.build_router(specs)
    requests = [(b"/", bytes([c]) + b"H") for c in range(0x21, 0x100)]
    nt.compare_routes(router, requests)


def test_a_very_long_path_and_a_deep_table() -> None:
    deep = "/" + "/".join([f"{{p{i}}}" if i % 2 else "s" for i in range(120)])
    specs = [RouteSpec(path=deep), RouteSpec(path="/{*rest}")]
    router = nt.build_router(specs)
    long_path = ("/" + "/".join(["s" if i % 2 == 0 else "v" for i in range(120)])).encode()
    nt.compare_routes(router, [(long_path, None), (b"/" + b"a" * 100_000, None), (b"/s" * 20_000, None)])


def test_a_table_deeper_than_c_takes_stays_python() -> None:
    router = nt.build_router([RouteSpec(path="/" + "/".join(["a"] * (nr.MAX_DEPTH + 2)))])
    assert nr.compile_routes(router) is None and nr.NativeRoutes.of(router) is None


def test_params_are_materialised_only_when_asked() -> None:
    native = nr.NativeRoutes.of(nt.build_router([RouteSpec(path="/u/{id}/{*rest}")]))
    assert native is not None
    assert native.match_index(b"/u/42/a/b", None) == 0
    assert native.params() == {"id": "42", "rest": "a/b"}
    assert native.match_index(b"/v", None) == -1


def _corrupt(blob: bytes, word: int, value: int) -> bytes:
    b = bytearray(blob)
    struct.pack_into("=I", b, word * 4, value)
    return bytes(b)


def _check(blob: bytes) -> int:
    buf = nr.ffi.from_buffer(blob)
    return int(nr.lib.mu_route_check(buf, len(blob)))


def test_the_validator_refuses_a_damaged_table() -> None:
    router = nt.build_router(
        [RouteSpec(path="/a/{x}"), RouteSpec(path="/b", host="h"), RouteSpec(path_prefix="/p")]
    )
    blob = nr.compile_routes(router)
    assert blob is not None and _check(blob) == 0
    words = struct.unpack(f"={len(blob) // 4}I", blob)
    nodes_off = words[8] // 4
    assert _check(blob[:-4]) == -3  # size
    assert _check(_corrupt(blob, 0, 0)) == -2  # magic
    assert _check(_corrupt(blob, 4, len(blob))) == -4  # tables past the end
    assert _check(_corrupt(blob, nodes_off + 2, 0)) == -11  # root's param: a cycle
    assert _check(_corrupt(blob, nodes_off + 6, 99)) == -9  # route out of range
    # every single-word corruption is refused or matched without a fault (ASan checks)
    for w in range(len(words)):
        for v in (0, 1, 0xFFFFFFFF, 0x7FFFFFFF, len(blob)):
            nt.check_corrupted(blob, [struct.pack("=HH", w, 0)], [(b"/a/1", b"h"), (b"/p/x", None)])
            bad = _corrupt(blob, w, v)
            if _check(bad) == 0:
                nt.check_corrupted(bad, [], [(b"/a/1", b"h"), (b"/b", b"h"), (b"/p", None)])


def test_the_harness_can_fail() -> None:
    """A C table that routes differently is reported."""
    router = nt.build_router([RouteSpec(path="/b"), RouteSpec(path="/a")])
    other = nr.NativeRoutes.of(nt.build_router([RouteSpec(path="/a"), RouteSpec(path="/b")]))
    with pytest.raises(nt.Disagreement):
        nt.compare_routes(router, [(b"/a", None)], other)


def test_the_unit_compiles_alone_without_a_warning() -> None:
    inc = sysconfig.get_paths()["include"]
    cc = (sysconfig.get_config_var("CC") or "cc").split()
    r = subprocess.run(
        [
            *cc,
            "-fsyntax-only",
            "-std=gnu11",
            "-Wall",
            "-Wextra",
            "-Werror",
            f"-I{inc}",
            str(ROOT / "uring" / "mu_route.c"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
