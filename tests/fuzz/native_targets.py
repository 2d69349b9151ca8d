"""Differential fuzz targets for the native exchange's per-request decisions: ``route`` (the
C route matcher, uring/mu_route.c, against conf/routes.py's Router) and ``head`` (the C
upstream head writer, uring/mu_head.c, against worker/http/headers.py's request_head).

An input is text lines (latin-1), so libFuzzer's mutations stay meaningful; the first byte of
a fuzz input is a seed (as in targets.py: the corpus replay varies it), the rest the lines.

``route``: ``p<pattern>[|host]`` a path route, ``x<prefix>[|host]`` a prefix route,
``!<host>`` the Host of the requests that follow (``!`` alone: none), ``?<path>`` a request,
``~<4 bytes>`` a corruption of the compiled table (a word index and an xor), after which the
table must be refused or matched without a fault (no comparison: it is no longer the Router's).

``head``: the seed byte picks the options, the lines the request and the rewrite (see
:func:`parse_head_input`); C's head must be the Python engine's, byte for byte.

A disagreement raises :class:`Disagreement`; a fault in C kills the process (the sanitizer
build, .ci/sanitize). Replayed by tests/fuzz/test_corpus.py, driven by tests/fuzz/run.py.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from monolake.conf.routes import Router, RouteSpec
from monolake.worker.http.body import BodyStream
from monolake.worker.http.connection import _hostname
from monolake.worker.http.headers import _request_head_py, request_head, upstream_target
from monolake.worker.http.layers import HeaderRewrite
from monolake.worker.http.message import Request, Response
from monolake.worker.http.native_head import RouteOptions, UpstreamOptions, write_head
from monolake.worker.http.native_route import NativeRoutes, compile_routes, ffi, lib

MAX_ROUTES = 64
MAX_REQUESTS = 64


class Disagreement(AssertionError):
    """C and its Python twin decided one input differently."""


def python_match(router: Router, path: bytes, host: bytes | None) -> tuple[int, dict[str, str]] | None:
    """What the Python engine decides for a request (proxy.py RouterService.serve with the
    request's path and host as connection.py makes them)."""
    return router.match(path.decode("latin-1"), _hostname(host) or None)


def compare_routes(
    router: Router, requests: Sequence[tuple[bytes, bytes | None]], native: NativeRoutes | None = None
) -> None:
    """Every request routed alike by C and Python (or C declined the table: None). ``native``:
    another table than the router's own (the test that the harness can fail)."""
    native = native or NativeRoutes.of(router)
    if native is None:
        return
    for path, host in requests:
        want = python_match(router, path, host)
        got = native.match(path, host)
        if want != got:
            raise Disagreement(
                f"path {path!r} host {host!r}: python {want}, native {got}; routes {router_specs(router)}"
            )


def router_specs(router: Router) -> list[RouteSpec]:
    return getattr(router, "_specs", [])


def build_router(specs: list[RouteSpec]) -> Router:
    """The Router of the valid specs (conflicting ones are reported and left out, as
    validation does; their partial trie nodes stay, as they do in Python)."""
    router, _problems = Router.compile(specs)
    router._specs = specs  # type: ignore[attr-defined]
    return router


def parse_route_input(text: str) -> tuple[list[RouteSpec], list[tuple[bytes, bytes | None]], list[bytes]]:
    specs: list[RouteSpec] = []
    requests: list[tuple[bytes, bytes | None]] = []
    corruptions: list[bytes] = []
    host: bytes | None = None
    for line in text.split("\n"):
        kind, rest = line[:1], line[1:]
        if kind in ("p", "x") and len(specs) < MAX_ROUTES:
            pattern, _, rhost = rest.partition("|")
            if kind == "p":
                specs.append(RouteSpec(path=pattern, host=rhost or None))
            else:
                specs.append(RouteSpec(path_prefix=pattern, host=rhost or None))
        elif kind == "!":
            host = rest.encode("latin-1") if rest else None
        elif kind == "?" and len(requests) < MAX_REQUESTS:
            requests.append((rest.encode("latin-1"), host))
        elif kind == "~" and len(rest) >= 4:
            corruptions.append(rest[:4].encode("latin-1"))
    return specs, requests, corruptions


def check_corrupted(
    blob: bytes, corruptions: list[bytes], requests: Sequence[tuple[bytes, bytes | None]]
) -> None:
    """A damaged table is refused, or matched without reading outside it (ASan says)."""
    words = bytearray(blob)
    n = len(words) // 4
    for c in corruptions:
        index, xor = struct.unpack("=HH", c)
        at = (index % n) * 4
        word = struct.unpack_from("=I", words, at)[0] ^ (xor | (xor << 16))
        struct.pack_into("=I", words, at, word)
    data = bytes(words)
    buf = ffi.from_buffer(data)
    if lib.mu_route_check(buf, len(data)) != 0:
        return
    caps = ffi.new("mu_route_capture[]", 129)
    ncaps = ffi.new("int *")
    for path, host in requests:
        lib.mu_route_match(buf, host if host else ffi.NULL, len(host or b""), path, len(path), caps, ncaps)


def route_case(raw: bytes) -> None:
    specs, requests, corruptions = parse_route_input(raw.decode("latin-1"))
    router = build_router(specs)
    compare_routes(router, requests)
    if corruptions:
        blob = compile_routes(router)
        if blob is not None:
            check_corrupted(blob, corruptions, requests)


TARGETS: dict[str, Callable[[bytes], None]] = {}


def _route_target(raw: bytes) -> None:
    """Fuzzer entry: the first byte is a seed (unused by this target), the rest the lines."""
    if raw:
        route_case(raw[1:])


TARGETS["route"] = _route_target


# -- head ---------------------------------------------------------------------------------


@dataclass
class HeadCase:
    """One upstream head to write: the request as parsed, the options, the connection."""

    method: str = "GET"
    target: str = "/"
    fields: list[tuple[bytes, bytes]] = field(default_factory=list)  # names in any case
    upgrade: bool = False
    chunked: bool = False
    content_length: int | None = None
    preserve_path: bool = False
    preserve_host: bool = False
    via: bool = False
    set_request: dict[str, str] = field(default_factory=dict)
    remove_request: list[str] = field(default_factory=list)
    uri: bool = True
    up_path: str = "/"
    up_query: str = ""
    host_header: bytes = b"up.example:8080"
    peer: Any = ("192.0.2.1", 40000)
    scheme: str = "http"


def _upstream(case: HeadCase) -> SimpleNamespace:
    """The fields of an Upstream (worker/http/upstream.py) the head reads."""
    return SimpleNamespace(
        kind="uri" if case.uri else "unix",
        path=case.up_path,
        query=case.up_query,
        host_header=case.host_header,
    )


def _rewrite(case: HeadCase) -> HeaderRewrite | None:
    if not case.set_request and not case.remove_request:
        return None
    opts = {"set_request": case.set_request, "remove_request": case.remove_request}
    return HeaderRewrite(_Answer(), opts)


class _Answer:
    """The router behind a header_rewrite layer: answers at once."""

    async def call(self, request: Request, ctx: Any) -> Response:
        return Response(200)


def python_heads(case: HeadCase) -> list[bytes]:
    """What the Python engine writes: HeaderRewrite's edit of the request (the layer's own
    code), then upstream_target and request_head, as proxy.py RouterService.serve calls
    them; both the reference (_request_head_py) and the engine's request_head."""
    headers = [(k.lower(), v) for k, v in case.fields]
    path, _, query = case.target.partition("?")
    length = case.content_length
    body = BodyStream(length) if case.chunked or length else None
    req = Request(
        case.method,
        case.target,
        path,
        query,
        "1.1",
        headers,
        body,
        upgrade=case.upgrade,
        content_length=length,
        chunked=case.chunked,
    )
    ctx = SimpleNamespace(conn=SimpleNamespace(peer=case.peer, scheme=case.scheme, forward_cache=None))
    rewrite = _rewrite(case)
    if rewrite is not None:
        coro = rewrite.call(req, ctx)
        try:
            coro.send(None)
        except StopIteration:
            pass
    up = _upstream(case)
    target = upstream_target(req, up, case.preserve_path)
    kw = {"preserve_host": case.preserve_host, "via": case.via}
    return [_request_head_py(req, ctx, up, target, **kw), request_head(req, ctx, up, target, **kw)]


def native_head(case: HeadCase) -> bytes | None:
    """What mu_head_write writes (None: C declines the options, as for a non-latin-1 URI)."""
    up = UpstreamOptions.of(_upstream(case))
    if up is None:
        return None
    route = RouteOptions.of(case.preserve_path, case.preserve_host, case.via, _rewrite(case))
    ip = case.peer[0] if isinstance(case.peer, tuple) else "unknown"
    return write_head(
        case.method.encode("latin-1"),
        case.target.encode("latin-1"),
        case.fields,
        upgrade=case.upgrade,
        chunked=case.chunked,
        content_length=case.content_length,
        route=route,
        upstream=up,
        ip=ip.encode(),
        scheme=case.scheme.encode(),
    )


def compare_head(case: HeadCase) -> None:
    got = native_head(case)
    if got is None:
        return
    for want in python_heads(case):
        if want != got:
            raise Disagreement(f"{case}:\n  python {want!r}\n  native {got!r}")


def parse_head_input(seed: int, text: str) -> HeadCase:
    """The first line ``METHOD TARGET``; then ``name: value`` request fields, ``+name: value``
    set_request, ``-name`` remove_request, ``=path?query`` the upstream URI, ``@authority``
    its Host, ``#N`` the Content-Length; the seed's bits pick the options."""
    lines = text.split("\n")
    method, _, target = lines[0].partition(" ")
    case = HeadCase(
        method=method or "GET",
        target=target or "/",
        preserve_path=bool(seed & 1),
        preserve_host=bool(seed & 2),
        via=bool(seed & 4),
        uri=not seed & 8,
        upgrade=bool(seed & 16),
        peer=("2001:db8::1", 1) if seed & 128 else ("192.0.2.1", 1),
    )
    framing = (seed >> 5) & 3
    case.chunked = framing == 3
    case.content_length = {0: None, 1: 0, 2: 5, 3: None}[framing]
    for line in lines[1:]:
        kind, rest = line[:1], line[1:]
        if kind == "+":
            name, _, value = rest.partition(":")
            case.set_request[name] = value.strip(" \t")
        elif kind == "-":
            case.remove_request.append(rest)
        elif kind == "=":
            case.up_path, _, case.up_query = rest.partition("?")
        elif kind == "@":
            case.host_header = rest.encode("latin-1")
        elif kind == "#" and rest[:18].isascii() and rest[:18].isdigit() and framing == 2:
            case.content_length = int(rest[:18])  # ASCII: "²".isdigit() too
        elif ":" in line:
            name, _, value = line.partition(":")
            case.fields.append((name.encode("latin-1"), value.strip(" \t").encode("latin-1")))
    return case


def head_case(raw: bytes) -> None:
    if raw:
        compare_head(parse_head_input(raw[0], raw[1:].decode("latin-1")))


TARGETS["head"] = head_case
