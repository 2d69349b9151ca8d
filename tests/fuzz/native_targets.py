"""Differential fuzz targets for the native exchange's per-request decisions: ``route`` (the
C route matcher, uring/mu_route.c, against conf/routes.py's Router) and ``head`` (the C
upstream head writer, uring/mu_head.c, against worker/http/headers.py's request_head).

An input is text lines (latin-1), so libFuzzer's mutations stay meaningful; the first byte of
a fuzz input is a seed (as in targets.py: the corpus replay varies it), the rest the lines.

``route``: ``p<pattern>[|host]`` a path route, ``x<prefix>[|host]`` a prefix route,
``!<host>`` the Host of the requests that follow (``!`` alone: none), ``?<path>`` a request,
``~<4 bytes>`` a corruption of the compiled table (a word index and an xor), after which the
table must be refused or matched without a fault (no comparison: it is no longer the Router's).

``head``: see :func:`head_case`.

A disagreement raises :class:`Disagreement`; a fault in C kills the process (the sanitizer
build, .ci/sanitize). Replayed by tests/fuzz/test_corpus.py, driven by tests/fuzz/run.py.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

from monolake.conf.routes import Router, RouteSpec
from monolake.worker.http.connection import _hostname
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
