"""The route table the C matcher reads (uring/mu_route.c), compiled from a Python ``Router``.

Python decides what the routes are; :func:`compile_routes` flattens the ``Router``'s own
tables (conf/routes.py: the static dict, the segment trie, the prefixes, one table per host)
into the blob mu_route.h describes, once per router build. :class:`NativeRoutes` is the handle
Python holds on it: ``match`` asks C for the route and keeps the captured spans; the params
dict is built only when ``params()`` is called (the native exchange never asks for a plain
proxied route). ``Router.match`` is the twin; tests/http/test_native_route.py compares them.

Strings are latin-1: the request path and Host reach the Router decoded as latin-1, so a byte
compare in C is a character compare in Python. A pattern, prefix or host that is not latin-1
can match no request and is left out. A table C would not take (a trie deeper than
MU_ROUTE_MAX_DEPTH) compiles to ``None``: the Python router keeps deciding.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from monolake.conf.routes import Router, _Node, _Table

try:
    from monolake.uring._codec import ffi, lib  # type: ignore[import-not-found,attr-defined,unused-ignore]
except ImportError:  # the codec extension is not built
    ffi = lib = None

NONE = 0xFFFFFFFF
MAGIC = 0x5452554D
VERSION = 1
HEADER_WORDS = 18
MAX_DEPTH = 128
MAX_CAPTURES = MAX_DEPTH + 1


def _latin1(text: str) -> bytes | None:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return None


def _key(item: tuple[bytes, Any]) -> tuple[int, bytes]:
    """The order mu_route.c's binary searches expect: length, then bytes."""
    return len(item[0]), item[0]


class _Pool:
    """The blob's strings, each stored once."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.at: dict[bytes, int] = {}

    def add(self, s: bytes) -> tuple[int, int]:
        off = self.at.get(s)
        if off is None:
            off = self.at[s] = len(self.data)
            self.data += s
        return off, len(s)


class _Compiler:
    def __init__(self) -> None:
        self.pool = _Pool()
        self.tables: list[tuple[int, ...]] = []
        self.statics: list[tuple[int, ...]] = []
        self.nodes: list[list[int]] = []
        self.edges: list[tuple[int, ...]] = []
        self.prefixes: list[tuple[int, ...]] = []
        self.names: list[tuple[int, int]] = []
        self.name_index: dict[str, int] = {}
        self.routes = 0

    def route(self, index: int) -> int:
        if index < 0:
            return NONE
        self.routes = max(self.routes, index + 1)
        return index

    def name(self, text: str) -> int:
        i = self.name_index.get(text)
        if i is None:
            i = self.name_index[text] = len(self.names)
            self.names.append(self.pool.add(text.encode("utf-8")))
        return i

    def node(self, node: _Node, depth: int) -> int:
        """Preorder: a node's index is below its children's (mu_route_check's tree rule)."""
        if depth > MAX_DEPTH:
            raise _TooDeep
        me = len(self.nodes)
        rec = [0, 0, NONE, 0, NONE, 0, self.route(node.index)]
        self.nodes.append(rec)
        children = sorted(
            ((k, v) for k, v in ((_latin1(s), n) for s, n in node.static.items()) if k is not None), key=_key
        )
        kids = [(self.pool.add(k), self.node(child, depth + 1)) for k, child in children]
        if node.param is not None:
            rec[2] = self.node(node.param, depth + 1)
            rec[3] = self.name(node.param_name)
        if node.catchall_index >= 0:
            rec[4] = self.route(node.catchall_index)
            rec[5] = self.name(node.catchall_name)
        rec[0], rec[1] = len(self.edges), len(kids)
        self.edges += [(off, n, child) for (off, n), child in kids]
        return me

    def table(self, host: bytes, table: _Table) -> None:
        statics = sorted(
            ((k, i) for k, i in ((_latin1(p), i) for p, i in table.static.items()) if k is not None), key=_key
        )
        prefixes = [(k, i) for k, i in ((_latin1(p), i) for p, i in table.prefixes) if k is not None]
        root = self.node(table.root, 0)
        hoff, hlen = self.pool.add(host)
        self.tables.append(
            (
                hoff,
                hlen,
                len(self.statics),
                len(statics),
                root,
                int(table.dynamic),
                len(self.prefixes),
                len(prefixes),
            )
        )
        self.statics += [(*self.pool.add(k), self.route(i)) for k, i in statics]
        self.prefixes += [(*self.pool.add(k), self.route(i)) for k, i in prefixes]

    def blob(self) -> bytes:
        arrays: list[Sequence[Sequence[int]]] = [
            self.tables,
            self.statics,
            self.nodes,
            self.edges,
            self.prefixes,
            self.names,
        ]
        words: list[int] = []
        header = [MAGIC, VERSION, 0]
        at = HEADER_WORDS * 4
        for recs in arrays:
            flat = [w for rec in recs for w in rec]
            header += [len(recs), at]
            words += flat
            at += 4 * len(flat)
        pool = bytes(self.pool.data) + b"\0" * (-len(self.pool.data) % 4)
        header += [at, len(self.pool.data), self.routes]
        header[2] = at + len(pool)
        return struct.pack(f"={len(header) + len(words)}I", *header, *words) + pool


class _TooDeep(Exception):
    pass


def compile_routes(router: Router) -> bytes | None:
    """The blob of ``router`` for mu_route_match, or None when C cannot take it."""
    c = _Compiler()
    hosts = sorted(
        ((k, t) for k, t in ((_latin1(h), t) for h, t in router._hosts.items()) if k is not None), key=_key
    )
    try:
        c.table(b"", router._default)
        for host, table in hosts:
            c.table(host, table)
    except _TooDeep:
        return None
    return c.blob()


class NativeRoutes:
    """A compiled table loaded for C; ``match`` is ``Router.match`` done by mu_route_match."""

    __slots__ = ("_buf", "_caps", "_names", "_ncaps", "_path", "blob")

    def __init__(self, blob: bytes) -> None:
        if lib is None:
            raise RuntimeError("the monolake.uring._codec extension is not built")
        self.blob = blob
        self._buf = ffi.from_buffer(blob)
        rc = lib.mu_route_check(self._buf, len(blob))
        if rc != 0:
            raise ValueError("route table refused: " + ffi.string(lib.mu_route_error(rc)).decode())
        self._caps = ffi.new("mu_route_capture[]", MAX_CAPTURES)
        self._ncaps = ffi.new("int *")
        self._names: dict[int, str] = {}
        self._path = b""

    @classmethod
    def of(cls, router: Router) -> NativeRoutes | None:
        blob = compile_routes(router) if lib is not None else None
        return cls(blob) if blob is not None else None

    def match_index(self, path: bytes, host: bytes | None) -> int:
        """The route index (or -1); the params stay spans until ``params`` is called."""
        self._path = path
        return int(
            lib.mu_route_match(
                self._buf,
                host if host else ffi.NULL,
                len(host or b""),
                path,
                len(path),
                self._caps,
                self._ncaps,
            )
        )

    def params(self) -> dict[str, str]:
        """The params of the last match, materialised now."""
        out: dict[str, str] = {}
        path = self._path
        for i in range(self._ncaps[0]):
            cap = self._caps[i]
            out[self._name(cap.name)] = path[cap.off : cap.off + cap.len].decode("latin-1")
        return out

    def match(self, path: bytes, host: bytes | None) -> tuple[int, dict[str, str]] | None:
        """``Router.match(path, _hostname(host) or None)``, decided in C."""
        index = self.match_index(path, host)
        return None if index < 0 else (index, self.params())

    def _name(self, index: int) -> str:
        name = self._names.get(index)
        if name is None:
            n = ffi.new("uint32_t *")
            p = lib.mu_route_name(self._buf, index, n)
            name = self._names[index] = ffi.unpack(p, n[0]).decode("utf-8")
        return name
