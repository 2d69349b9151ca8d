"""The C upstream head writer (uring/mu_head.c) against its Python twin, the Python engine's
upstream_target + request_head after the header_rewrite layer's request edit
(tests/fuzz/native_targets.py python_heads): a seeded corpus of request heads and option sets
must give the same bytes, and the cases below pin the rules one by one."""

from __future__ import annotations

import random
import subprocess
import sysconfig
from pathlib import Path

import pytest

from monolake.worker.http import native_head as nh
from tests.fuzz import native_targets as nt

pytestmark = pytest.mark.skipif(nh.lib is None, reason="the codec extension is not built")

ROOT = Path(__file__).resolve().parents[2]

NAMES = [
    b"Host",
    b"host",
    b"Connection",
    b"Keep-Alive",
    b"Proxy-Connection",
    b"TE",
    b"Trailer",
    b"Transfer-Encoding",
    b"Upgrade",
    b"Content-Length",
    b"Expect",
    b"X-Forwarded-For",
    b"X-Forwarded-Proto",
    b"X-Forwarded-Host",
    b"Forwarded",
    b"Via",
    b"Accept",
    b"X-Custom",
    b"x-custom",
    b"Cookie",
    b"X-Drop",
    b"Hostname",
    b"Te2",
]
VALUES = [
    b"",
    b"a",
    b"h.example",
    b"h.example:8080",
    b"[::1]:80",
    b'q"uoted',
    b"keep-alive",
    b"close, X-Drop",
    b" X-Custom ,upgrade",
    b"Cookie",
    b"trailers",
    b"websocket",
    b"10.0.0.1, 10.0.0.2",
    b"for=192.0.2.9",
    b"1.0 proxy",
    b"\xe9t\xe9",
    b"x,,y",
    b",",
    b"\tTE\x0b",
]


def random_case(rng: random.Random) -> nt.HeadCase:
    fields = [(rng.choice(NAMES), rng.choice(VALUES)) for _ in range(rng.randrange(0, 12))]
    case = nt.HeadCase(
        method=rng.choice(["GET", "POST", "PUT", "PATCH", "HEAD", "DELETE", "OPTIONS", "X"]),
        target=rng.choice(["/", "/a", "/a/b?q=1", "/a?", "/?x", "/%2F..//x?a&b", "*", "/é"]),
        fields=fields,
        upgrade=rng.random() < 0.2,
        preserve_path=rng.random() < 0.5,
        preserve_host=rng.random() < 0.3,
        via=rng.random() < 0.5,
        uri=rng.random() < 0.8,
        up_path=rng.choice(["/", "", "/base", "/base/", "/b//", "/é"]),
        up_query=rng.choice(["", "", "k=v", "a&b"]),
        host_header=rng.choice([b"up.example", b"up:8080", b"[::1]:81", b""]),
        peer=rng.choice([("192.0.2.1", 1), ("2001:db8::1", 2), None, "unix"]),
        scheme=rng.choice(["http", "https"]),
    )
    framing = rng.randrange(4)
    case.chunked = framing == 3
    case.content_length = {0: None, 1: 0, 2: rng.choice([1, 5, 10**17]), 3: None}[framing]
    if rng.random() < 0.3:
        case.set_request = {
            rng.choice(
                ["x-set", "Host", "X-Forwarded-For", "via", "connection", "X-Custom", "upgrade"]
            ): rng.choice(["v", "", "x-custom"])
            for _ in range(rng.randrange(1, 3))
        }
    if rng.random() < 0.3:
        case.remove_request = rng.sample(
            ["accept", "X-Custom", "host", "via", "connection", "cookie", "nope"], rng.randrange(1, 3)
        )
    return case


@pytest.mark.parametrize("seed", range(40))
def test_generated_heads_are_byte_identical(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(100):
        nt.compare_head(random_case(rng))


CASES = {
    "hop-by-hop and what Connection names go": nt.HeadCase(
        fields=[
            (b"Connection", b"keep-alive, X-Drop"),
            (b"X-Drop", b"1"),
            (b"Keep-Alive", b"t=5"),
            (b"TE", b"trailers"),
            (b"Proxy-Connection", b"x"),
            (b"Accept", b"*/*"),
        ]
    ),
    "an upgrade keeps Connection: upgrade and the last Upgrade": nt.HeadCase(
        upgrade=True, fields=[(b"Connection", b"Upgrade"), (b"Upgrade", b"h2c"), (b"Upgrade", b"websocket")]
    ),
    "Upgrade without an upgrade request is dropped": nt.HeadCase(fields=[(b"Upgrade", b"ws")]),
    "X-Forwarded-For and Forwarded extended, X-Forwarded-Host and host= from Host": nt.HeadCase(
        fields=[
            (b"Host", b"h.example"),
            (b"X-Forwarded-For", b"10.0.0.1"),
            (b"x-forwarded-for", b"10.0.0.2"),
            (b"Forwarded", b"for=a"),
        ]
    ),
    "a quoted Host gets no host= in Forwarded": nt.HeadCase(fields=[(b"Host", b'a"b')]),
    "an empty X-Forwarded-For gets no comma": nt.HeadCase(fields=[(b"X-Forwarded-For", b"")]),
    "Via: the client's, then ours": nt.HeadCase(via=True, fields=[(b"Via", b"1.0 a")]),
    "Via: the client's alone without via": nt.HeadCase(fields=[(b"Via", b"1.0 a")]),
    "preserve_host: the client's Host": nt.HeadCase(preserve_host=True, fields=[(b"Host", b"client")]),
    "a unix upstream without Host: localhost": nt.HeadCase(uri=False, target="/p?q"),
    "preserve_path joins the paths, the queries with &": nt.HeadCase(
        preserve_path=True, up_path="/base/", up_query="k=v", target="/x/y?z=1"
    ),
    "an IPv6 client is quoted in Forwarded": nt.HeadCase(peer=("2001:db8::1", 1)),
    "a unix client is unknown": nt.HeadCase(peer="unix"),
    "POST without a body: content-length 0": nt.HeadCase(method="POST"),
    "chunked": nt.HeadCase(method="POST", chunked=True),
    "a Content-Length": nt.HeadCase(method="PUT", content_length=1234567),
    "header_rewrite: removed, set (a set Host is the Host)": nt.HeadCase(
        fields=[(b"Accept", b"1"), (b"Host", b"h"), (b"X-Keep", b"2")],
        set_request={"Host": "rewritten", "X-New": "n"},
        remove_request=["accept"],
        preserve_host=True,
    ),
    # found by the fuzz target (regressions/head/empty-connection-token): C dropped a field
    # of empty name (a set_request "") for an empty Connection token, Python names no such
    "an empty Connection token names no field": nt.HeadCase(
        fields=[(b"Connection", b"a,,b"), (b"X", b"1")], set_request={"": "v"}
    ),
    "header_rewrite: a set Connection names a field": nt.HeadCase(
        fields=[(b"X-Gone", b"1")], set_request={"connection": "x-gone"}
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_rules(name: str) -> None:
    nt.compare_head(CASES[name])


def test_the_head_is_what_the_rules_say() -> None:
    """Not only alike: right (the twins could share a mistake)."""
    head = nt.native_head(
        nt.HeadCase(
            method="GET",
            target="/x?y=2",
            preserve_path=True,
            up_path="/base/",
            up_query="k=1",
            via=True,
            peer=("::1", 1),
            fields=[
                (b"Host", b"a.com"),
                (b"X-Forwarded-For", b"1.2.3.4"),
                (b"Connection", b"keep-alive, X-Foo"),
                (b"X-Foo", b"1"),
                (b"Accept", b"*/*"),
            ],
        )
    )
    assert head == (
        b"GET /base/x?k=1&y=2 HTTP/1.1\r\naccept: */*\r\nhost: up.example:8080\r\n"
        b"x-forwarded-for: 1.2.3.4, ::1\r\nx-forwarded-proto: http\r\n"
        b"x-forwarded-host: a.com\r\n"
        b'forwarded: for="[::1]";proto=http;host="a.com"\r\n'
        b"via: 1.1 monolake\r\n\r\n"
    )


def test_a_small_buffer_is_asked_to_grow() -> None:
    """snprintf-style: the length comes back whatever the buffer; nothing past it is written."""
    case = nt.HeadCase(fields=[(b"X-Long", b"v" * 5000)])
    head = nt.native_head(case)
    assert head is not None and len(head) > 5000
    route = nh.RouteOptions.of(False, False, False)
    up = nh.UpstreamOptions(uri=True, path=b"/", host_header=b"h")
    out = nh.ffi.new("char[]", 64)
    rq = nh.ffi.new("mu_head_request *")
    rq.method, rq.method_len = nh.ffi.from_buffer(b"GET"), 3
    rq.path, rq.path_len = nh.ffi.from_buffer(b"/"), 1
    rq.content_length = -1
    cn = nh.ffi.new("mu_head_conn *")
    need = nh.lib.mu_head_write(rq, route.c, up.c, cn, out, 10)
    assert need > 10 and nh.lib.mu_head_write(rq, route.c, up.c, cn, nh.ffi.NULL, 0) == need


def test_a_uri_that_is_not_latin1_stays_python() -> None:
    assert nt.native_head(nt.HeadCase(up_path="/€")) is None


def test_the_harness_can_fail() -> None:
    case = nt.HeadCase(fields=[(b"Accept", b"1")])
    good = nt.native_head(case)
    assert good is not None and good in nt.python_heads(case)
    assert nt.native_head(nt.HeadCase(fields=[(b"Accept", b"2")])) not in nt.python_heads(case)


def test_the_unit_compiles_alone_without_a_warning() -> None:
    cc = (sysconfig.get_config_var("CC") or "cc").split()
    flags = ["-fsyntax-only", "-std=gnu11", "-Wall", "-Wextra", "-Werror"]
    r = subprocess.run(
        [*cc, *flags, str(ROOT / "uring" / "mu_head.c")], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
