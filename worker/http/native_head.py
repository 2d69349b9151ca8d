"""The options the C upstream head writer reads (uring/mu_head.c), and a Python call into it.

The native exchange (issue 13 §2) writes the upstream head in C from the parsed request and
three sets of facts: the route's (preserve_path, the server's preserve_host and via, the
request side of a header_rewrite layer), the upstream's (a URI's path, query and authority)
and the connection's (client address, scheme). :class:`RouteOptions` and
:class:`UpstreamOptions` are those facts compiled once, as C structs; :func:`write_head` runs
mu_head_write on a request. Its Python twin is what the Python engine runs per request:
``upstream_target`` + ``request_head`` (worker/http/headers.py) after ``HeaderRewrite``;
tests/http/test_native_head.py compares them byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

try:
    from monolake.uring._codec import ffi, lib  # type: ignore[import-not-found,attr-defined,unused-ignore]
except ImportError:  # the codec extension is not built
    ffi = lib = None

Pairs = Sequence[tuple[bytes, bytes]]


def _fields(pairs: Pairs, keep: list[Any]) -> tuple[Any, int]:
    """A ``mu_head_field[]`` of ``pairs`` (the bytes kept alive in ``keep``)."""
    arr = ffi.new("mu_head_field[]", max(1, len(pairs)))
    for i, (name, value) in enumerate(pairs):
        keep += [name, value]
        arr[i].name, arr[i].name_len = ffi.from_buffer(name), len(name)
        arr[i].value, arr[i].value_len = ffi.from_buffer(value), len(value)
    return arr, len(pairs)


class RouteOptions:
    """``mu_head_route``: the route's and the server's head options, and the request side of
    a header_rewrite layer (its ``set_req`` pairs and ``del_req`` names, as HeaderRewrite
    computes them)."""

    __slots__ = ("_keep", "c")

    def __init__(
        self,
        *,
        preserve_path: bool,
        preserve_host: bool,
        via: bool,
        set_request: Pairs = (),
        remove_request: Iterable[bytes] = (),
    ) -> None:
        if lib is None:
            raise RuntimeError("the monolake.uring._codec extension is not built")
        self._keep: list[Any] = []
        self.c = ffi.new("mu_head_route *")
        self.c.preserve_path, self.c.preserve_host, self.c.via = preserve_path, preserve_host, via
        sets, self.c.nset = _fields(list(set_request), self._keep)
        removes, self.c.nremove = _fields([(n, b"") for n in remove_request], self._keep)
        self._keep += [sets, removes]
        self.c.set, self.c.remove = sets, removes

    @classmethod
    def of(cls, preserve_path: bool, preserve_host: bool, via: bool, rewrite: Any = None) -> RouteOptions:
        """From the config, and a ``HeaderRewrite`` layer (worker/http/layers.py) if any."""
        if rewrite is None:
            return cls(preserve_path=preserve_path, preserve_host=preserve_host, via=via)
        return cls(
            preserve_path=preserve_path,
            preserve_host=preserve_host,
            via=via,
            set_request=rewrite.set_req,
            remove_request=sorted(rewrite.del_req),
        )


class UpstreamOptions:
    """``mu_head_upstream`` of an ``Upstream`` (worker/http/upstream.py): None of
    :meth:`of` where its path or query is not latin-1 (the Python engine would fail to
    encode that head too: it is left to it)."""

    __slots__ = ("_keep", "c")

    def __init__(
        self, *, uri: bool, path: bytes = b"/", query: bytes = b"", host_header: bytes = b""
    ) -> None:
        if lib is None:
            raise RuntimeError("the monolake.uring._codec extension is not built")
        self._keep = [path, query, host_header]
        self.c = ffi.new("mu_head_upstream *")
        self.c.uri = uri
        self.c.path, self.c.path_len = ffi.from_buffer(path), len(path)
        self.c.query, self.c.query_len = ffi.from_buffer(query), len(query)
        self.c.host_header, self.c.host_header_len = ffi.from_buffer(host_header), len(host_header)

    @classmethod
    def of(cls, up: Any) -> UpstreamOptions | None:
        try:
            return cls(
                uri=up.kind == "uri",
                path=up.path.encode("latin-1"),
                query=up.query.encode("latin-1"),
                host_header=up.host_header,
            )
        except UnicodeEncodeError:
            return None


def write_head(
    method: bytes,
    target: bytes,
    fields: Pairs,
    *,
    upgrade: bool,
    chunked: bool,
    content_length: int | None,
    route: RouteOptions,
    upstream: UpstreamOptions,
    ip: bytes,
    scheme: bytes,
) -> bytes:
    """The upstream head for an origin-form request (``target`` split at its first '?'), as
    mu_head_write writes it. ``fields`` as the parser found them (names in any case)."""
    path, _, query = target.partition(b"?")
    keep: list[Any] = [method, path, query, ip, scheme]
    rq = ffi.new("mu_head_request *")
    rq.method, rq.method_len = ffi.from_buffer(method), len(method)
    rq.path, rq.path_len = ffi.from_buffer(path), len(path)
    rq.query, rq.query_len = ffi.from_buffer(query), len(query)
    arr, rq.nfields = _fields(fields, keep)
    rq.fields = arr
    rq.upgrade, rq.chunked = upgrade, chunked
    rq.content_length = -1 if content_length is None else content_length
    cn = ffi.new("mu_head_conn *")
    cn.ip, cn.ip_len = ffi.from_buffer(ip), len(ip)
    cn.scheme, cn.scheme_len = ffi.from_buffer(scheme), len(scheme)
    cap = 1024
    while True:
        out = ffi.new("char[]", cap)
        n = lib.mu_head_write(rq, route.c, upstream.c, cn, out, cap)
        if n <= cap:
            return bytes(ffi.buffer(out, n))
        cap = n
