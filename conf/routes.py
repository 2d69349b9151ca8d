"""HTTP route matching with Monolake's (matchit's) semantics, in pure Python.

Used twice: by validation (syntax and conflicts, reported per route) and by the HTTP proxy at
request time, so :meth:`Router.match` is built for speed: a dict lookup for fully static paths
first, the segment trie only when that misses.

Semantics:
- ``/a/b`` matches exactly that path (no prefix match, no trailing-slash redirect).
- ``{name}`` is one whole, non-empty segment; ``{*name}`` a catch-all, last segment only, matching
  the non-empty rest of the path (so ``/{*p}`` does not match ``/``).
- At every segment static beats param beats catch-all, with backtracking.
- ``/a/{x}`` and ``/a/{y}`` conflict (one parameter name per position, as matchit), and so do two
  identical paths.
- ``path_prefix`` routes (ours) match the prefix and anything under it on a segment boundary;
  they are tried after the path routes, longest prefix first.
- ``host`` (ours): routes with a host are tried first for requests with that Host (port and case
  ignored), then the routes without a host. Same path with different hosts is no conflict.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class RouteLike(Protocol):
    """What the router reads from a route (read-only, so frozen dataclasses match)."""

    @property
    def path(self) -> str | None: ...
    @property
    def path_prefix(self) -> str | None: ...
    @property
    def host(self) -> str | None: ...


@dataclass(frozen=True)
class RouteSpec:
    path: str | None = None
    path_prefix: str | None = None
    host: str | None = None


@dataclass(frozen=True)
class RouteProblem:
    """``key`` is ``path``, ``path_prefix`` or ``host``; ``message`` reads "expected ..., found ..."."""

    index: int
    key: str
    message: str


class RouteConflictError(ValueError):
    def __init__(self, problems: list[RouteProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"routes[{p.index}].{p.key}: {p.message}" for p in problems))


class PatternError(ValueError):
    """``str(err)`` completes "expected ..."."""


STATIC, PARAM, CATCHALL = 0, 1, 2


def parse_pattern(path: str) -> tuple[tuple[int, str], ...]:
    """``/a/{id}/{*rest}`` -> ((STATIC, "a"), (PARAM, "id"), (CATCHALL, "rest"))."""
    if not path.startswith("/"):
        raise PatternError('a path starting with "/"')
    if "?" in path or "#" in path:
        raise PatternError("a path without ?query or #fragment (routes match the path only)")
    segments: list[tuple[int, str]] = []
    raw = path[1:].split("/")
    names: set[str] = set()
    for i, seg in enumerate(raw):
        if "{" not in seg and "}" not in seg:
            segments.append((STATIC, seg))
            continue
        if not (seg.startswith("{") and seg.endswith("}")) or seg.count("{") != 1 or seg.count("}") != 1:
            raise PatternError("a parameter that is a whole segment, such as /{id} or /{*rest}")
        inner = seg[1:-1]
        kind = CATCHALL if inner.startswith("*") else PARAM
        name = inner[1:] if kind == CATCHALL else inner
        if not _NAME.match(name):
            raise PatternError("a parameter name of letters, digits, _ . or -, such as {id}")
        if name in names:
            raise PatternError(f"distinct parameter names (the name {name!r} is used twice)")
        names.add(name)
        if kind == CATCHALL and i != len(raw) - 1:
            raise PatternError("a catch-all {*" + name + "} only as the last segment")
        segments.append((kind, name))
    return tuple(segments)


def normalize_prefix(prefix: str) -> str:
    """``/api/`` and ``/api`` are the same prefix; ``/`` stays ``/``."""
    if not prefix.startswith("/"):
        raise PatternError('a path prefix starting with "/"')
    if "{" in prefix or "}" in prefix or "?" in prefix or "#" in prefix:
        raise PatternError("a literal path prefix (no {parameters}, ?query or #fragment)")
    stripped = prefix.rstrip("/")
    return stripped or "/"


def normalize_host(host: str) -> str:
    """The host part of a Host header value, lower-case, without port, brackets or final dot."""
    if host.startswith("["):
        end = host.find("]")
        host = host[1:end] if end > 0 else host[1:]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".").lower()


class _Node:
    __slots__ = ("catchall_index", "catchall_name", "index", "param", "param_name", "param_owner", "static")

    def __init__(self) -> None:
        self.static: dict[str, _Node] = {}
        self.param: _Node | None = None
        self.param_name = ""
        self.param_owner = -1
        self.catchall_name = ""
        self.catchall_index = -1
        self.index = -1


@dataclass
class _Table:
    """The routes of one host (or of no host)."""

    static: dict[str, int] = field(default_factory=dict)
    root: _Node = field(default_factory=_Node)
    dynamic: bool = False
    prefixes: list[tuple[str, int]] = field(default_factory=list)
    prefix_owner: dict[str, int] = field(default_factory=dict)
    paths: dict[str, int] = field(default_factory=dict)

    def insert(
        self, path: str, segs: tuple[tuple[int, str], ...], index: int, label: Callable[[int], str]
    ) -> str | None:
        """Add a route; returns a conflict message instead when it cannot coexist."""
        if path in self.paths:
            return (
                f'a path no other route of this host uses, found "{path}", '
                f"the same as {label(self.paths[path])}"
            )
        node = self.root
        for kind, text in segs:
            if kind == STATIC:
                nxt = node.static.get(text)
                if nxt is None:
                    nxt = node.static[text] = _Node()
                node = nxt
            elif kind == PARAM:
                if node.param is None:
                    node.param, node.param_name, node.param_owner = _Node(), text, index
                elif node.param_name != text:
                    return (
                        f"the parameter name {{{node.param_name}}} at this position, as in "
                        f"{label(node.param_owner)} (one name per position), found {{{text}}} in "
                        f'"{path}"'
                    )
                node = node.param
            else:
                if node.catchall_index >= 0:
                    return (
                        f'a path that does not conflict with {label(node.catchall_index)}, found "{path}" '
                        f"(both end in a catch-all at the same position)"
                    )
                node.catchall_name, node.catchall_index = text, index
                self.dynamic = True
                self.paths[path] = index
                return None
        if node.index >= 0:
            return (
                f'a path that does not conflict with {label(node.index)}, found "{path}" '
                f"(they match the same requests)"
            )
        node.index = index
        self.paths[path] = index
        if all(kind == STATIC for kind, _ in segs):
            self.static[path] = index
        else:
            self.dynamic = True
        return None

    def add_prefix(self, prefix: str, index: int, label: Callable[[int], str]) -> str | None:
        if prefix in self.prefix_owner:
            return (
                f'a path_prefix no other route of this host uses, found "{prefix}", '
                f"the same as {label(self.prefix_owner[prefix])}"
            )
        self.prefix_owner[prefix] = index
        self.prefixes.append((prefix, index))
        self.prefixes.sort(key=lambda item: len(item[0]), reverse=True)
        return None

    def match(self, path: str) -> tuple[int, dict[str, str]] | None:
        index = self.static.get(path)
        if index is not None:
            return index, {}
        if self.dynamic and path.startswith("/"):
            params: dict[str, str] = {}
            found = _walk(self.root, path[1:].split("/"), 0, params)
            if found >= 0:
                return found, params
        for prefix, idx in self.prefixes:
            if prefix == "/" or path == prefix or path.startswith(prefix + "/"):
                return idx, {}
        return None


def _walk(node: _Node, segs: list[str], i: int, params: dict[str, str]) -> int:
    if i == len(segs):
        return node.index
    seg = segs[i]
    child = node.static.get(seg)
    if child is not None:
        found = _walk(child, segs, i + 1, params)
        if found >= 0:
            return found
    if node.param is not None and seg:
        params[node.param_name] = seg
        found = _walk(node.param, segs, i + 1, params)
        if found >= 0:
            return found
        del params[node.param_name]
    if node.catchall_index >= 0:
        rest = "/".join(segs[i:])
        if rest:
            params[node.catchall_name] = rest
            return node.catchall_index
    return -1


class Router:
    """Compiled routes. ``match(path, host)`` -> ``(route_index, params)`` or ``None``.

    ``path`` is the request path without the query; ``host`` the Host header value (or None).
    Routes are any objects with ``path``, ``path_prefix`` and ``host`` attributes (a
    ``RouteConfig`` or a :class:`RouteSpec`); entries with neither path nor prefix are skipped.
    """

    def __init__(self, routes: Sequence[RouteLike]) -> None:
        problems = self._build(routes, lambda i: f"routes[{i}]")
        if problems:
            raise RouteConflictError(problems)

    @classmethod
    def compile(
        cls, routes: Sequence[RouteLike], label: Callable[[int], str] = lambda i: f"routes[{i}]"
    ) -> tuple[Router, list[RouteProblem]]:
        """A router of the valid routes, and every syntax problem and conflict found."""
        router = cls.__new__(cls)
        problems = router._build(routes, label)
        return router, problems

    def _build(self, routes: Sequence[RouteLike], label: Callable[[int], str]) -> list[RouteProblem]:
        self._default = _Table()
        self._hosts: dict[str, _Table] = {}
        problems: list[RouteProblem] = []
        for index, route in enumerate(routes):
            table = self._default
            if route.host:
                table = self._hosts.setdefault(normalize_host(route.host), _Table())
            if route.path is not None:
                try:
                    segs = parse_pattern(route.path)
                except PatternError as exc:
                    problems.append(RouteProblem(index, "path", f'expected {exc}, found "{route.path}"'))
                    continue
                conflict = table.insert(route.path, segs, index, label)
                if conflict:
                    problems.append(RouteProblem(index, "path", "expected " + conflict))
            elif route.path_prefix is not None:
                try:
                    prefix = normalize_prefix(route.path_prefix)
                except PatternError as exc:
                    problems.append(
                        RouteProblem(index, "path_prefix", f'expected {exc}, found "{route.path_prefix}"')
                    )
                    continue
                conflict = table.add_prefix(prefix, index, label)
                if conflict:
                    problems.append(RouteProblem(index, "path_prefix", "expected " + conflict))
        return problems

    def match(self, path: str, host: str | None = None) -> tuple[int, dict[str, str]] | None:
        if self._hosts and host:
            table = self._hosts.get(normalize_host(host))
            if table is not None:
                found = table.match(path)
                if found is not None:
                    return found
        return self._default.match(path)
