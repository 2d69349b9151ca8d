"""The native engine's Python side (issue 13 §2): what C needs, built once per server, and the
few moments Python takes part (a late decline, a pooled connection handed over or back).

``engine = "native"`` on an ``http`` server, on the io_uring loop, installs a C reader
(``monolake.uring._native.Client``, uring/mu_native.c) on each plain client connection. It
serves a keep-alive request head that mu_nx accepts, for a route this module marked as C's
(plain HTTP/1.1 static upstreams, any of the five balancers, no builtin, no h2, no active
checks, no DNS discovery, no layers, no Via), picks the upstream from the route's C balancer
(the table the Python engine picks from too: native_balance.py), takes an idle pooled
connection to it, and relays a Content-Length response. Everything else goes to
the Python engine, which stays the reference:

- an *early* decline hands the request's bytes to ``HttpServerProtocol.data_received`` as
  they came (nothing was sent upstream);
- a *late* decline (the head went upstream, nothing reached the client: a response C does not
  relay, the upstream closing first, the read timeout) hands the Python engine the request
  and the connection it went out on: the connection is pinned in the pool with the head C
  sent (``presend``: the Python exchange's identical head is not written again), the request
  bytes are fed to the protocol, then the response bytes so far to the connection. The
  Python engine answers exactly as if it had served the request from the start.

The C decisions have twins here (:func:`parse_request`, :func:`parse_response`,
:func:`client_head`); tests/http/test_native_engine_twins.py compares them.
"""

from __future__ import annotations

import functools
import json
import os
import re
import weakref
from dataclasses import dataclass
from time import monotonic as _now
from typing import TYPE_CHECKING, Any

import structlog

from monolake.worker.http import native_balance
from monolake.worker.http.headers import _forward_facts
from monolake.worker.http.native_head import RouteOptions, UpstreamOptions
from monolake.worker.http.native_route import compile_routes
from monolake.worker.http.parser import COLLECT_MAX

if TYPE_CHECKING:
    from monolake.worker.http.client import UpstreamConnection
    from monolake.worker.http.pool import UpstreamPool
    from monolake.worker.http.proxy import RouterService

try:
    from monolake.uring.ring import NATIVE, ffi
except ImportError:  # no io_uring extension: the native engine is off
    NATIVE = ffi = None

log = structlog.get_logger("monolake.native")

# the balancers C picks for (every policy needs no Python: worker/upstream/balance.py POLICIES)
_POLICIES = ("random", "weighted_random", "round_robin", "first", "least_conn")
# a response body C relays (the upstream's reading follows the client's pause_writing /
# resume_writing): any length below the server's splice_threshold, whose bodies Python splices
MAX_BODY = 1 << 62
# a request body C forwards (as it comes, over any number of reads, with backpressure: the
# client's reading pauses while the upstream connection is above its high-water mark): any
# length below the server's max_body_size (the Python engine answers 413) and its
# splice_threshold (the Python engine splices it)
REQUEST_BODY_MAX = MAX_BODY
# diagnostics: the engine's counters written here at each timeout sweep (tests read them from a
# standalone worker, which has no stats endpoint)
STATS_FILE_ENV = "MONOLAKE_NATIVE_STATS_FILE"


def available() -> bool:
    """The C module is there (io_uring extension with the CPython glue)."""
    return NATIVE is not None


def why_not(cfg: Any) -> str | None:
    """Why a server with ``engine = "native"`` runs the Python engine anyway (None: it may
    not). Decided per server; per request the C side declines the rest."""
    if NATIVE is None:
        return "the io_uring extension (monolake.uring._native) is not available"
    if cfg.layers:
        return "layers run in Python"
    if cfg.tls is not None:
        return "TLS is terminated in Python"
    if cfg.proxy_protocol:
        return "PROXY protocol is read in Python"
    if cfg.access_log:
        return "the access log is written by the Python engine"
    if cfg.via:
        return "Via is merged into responses by the Python engine"
    return None


def request_body_max(cfg: Any) -> int:
    """The largest request body C forwards: REQUEST_BODY_MAX, below the server's
    max_body_size (the Python engine answers 413) and its splice threshold (spliced)."""
    limit = REQUEST_BODY_MAX
    if cfg.max_body_size:
        limit = min(limit, cfg.max_body_size)
    if cfg.splice_threshold:
        limit = min(limit, cfg.splice_threshold - 1)
    return limit


def response_body_max(cfg: Any) -> int:
    """The largest response body C relays: below the splice threshold (a body at or above it
    is declined late, and the Python engine splices it), else any."""
    return cfg.splice_threshold - 1 if cfg.splice_threshold else MAX_BODY


def _addr(obj: Any) -> int:
    return int(ffi.cast("uintptr_t", obj))


class NativeEngine:
    """One server's C engine (``_native.Engine``) and its pool hooks."""

    def __init__(self, service: RouterService, pool: UpstreamPool, rt: Any) -> None:
        cfg = rt.settings
        self.pool = pool
        self.rt = rt
        self.read_timeout = service.read_timeout
        blob = compile_routes(service.router)
        if blob is None:
            raise ValueError("route table not compilable")
        self.eps: dict[tuple, int] = {}
        self._idle_timeout: list[float] = []
        refs: list[Any] = []
        routes: list[Any] = []
        self.c: Any = None
        me = weakref.ref(self)
        for i, handler in enumerate(service.routes):
            entry = self._route_entry(handler, service, refs, functools.partial(_drop_route, me, i))
            routes.append(entry)
        self.c = NATIVE.Engine(
            blob,
            routes,
            len(self.eps),
            self._late,
            _facts,
            (
                cfg.max_header_size,
                cfg.max_uri_size,
                cfg.max_headers,
                response_body_max(cfg),
                COLLECT_MAX,
                request_body_max(cfg),
            ),
            (rt.keepalive_timeout, self.read_timeout),
            refs,
        )
        self.idle = self.c.idle
        log.info(
            "native_engine",
            server=rt.name,
            routes=sum(r is not None for r in routes),
            endpoints=len(self.eps),
        )

    def _route_entry(self, handler: Any, service: RouterService, refs: list[Any], drop: Any) -> Any:
        """(balancer, route options, ((endpoint, upstream options), ...)) of a route C may
        serve, else None. The route's balancer is mirrored (native_balance.py): from here
        both engines pick its upstreams from one C table."""
        balancer = handler.balancer
        ups = getattr(balancer, "upstreams", None)
        if handler.builtin is not None or handler.h2 or not ups or handler.cfg.health_check is not None:
            return None
        if balancer.policy not in _POLICIES:
            return None
        opts: list[Any] = []
        for up in ups:
            if up.ssl is not None or up.discovered is not None or up.group is not None:
                return None
            if up.kind not in ("uri", "unix") or getattr(up, "scheme", "http") == "https":
                return None
            uopts = UpstreamOptions.of(up)
            if uopts is None:
                return None
            opts.append(uopts)
        nb = native_balance.mirror(balancer, drop)
        if nb is None:
            return None
        ropts = RouteOptions.of(handler.preserve_path, service.preserve_host, service.via)
        refs += [nb, ropts, *opts]
        eps: list[tuple[int, int]] = []
        for up, uopts in zip(ups, opts, strict=True):
            ep = self.eps.get(up.key)
            if ep is None:
                ep = self.eps[up.key] = len(self.eps)
                self._idle_timeout.append(up.idle_timeout)
            eps.append((ep, _addr(uopts.c)))
        return (native_balance.address(nb), _addr(ropts.c), tuple(eps))

    # -- client connections ---------------------------------------------------------------
    def attach(self, proto: Any, transport: Any) -> Any:
        """The C reader for a new client connection, or None (not an io_uring transport)."""
        if not hasattr(transport, "_update_fast_reader") or type(transport.write).__name__ != "FastWriter":
            return None
        return NATIVE.Client(self.c, proto, proto.data_received, transport.write, proto._reader, transport)

    # -- the pool's hooks (worker/http/pool.py) ---------------------------------------------
    def park(self, conn: UpstreamConnection) -> bool:
        """An idle connection the pool would keep: C holds it if its endpoint is C's."""
        ep = self.eps.get(conn.key)
        t = conn.transport
        if ep is None or t is None or type(getattr(t, "write", None)).__name__ != "FastWriter":
            return False
        if len(self.idle[ep]) >= conn.upstream.max_idle:
            return False
        u = NATIVE.Upstream(self.c, ep, conn, t.write)
        u.since = _now()
        conn.native = u
        conn.fast_reader = u
        t._update_fast_reader()
        self.idle[ep].append(u)
        return True

    def idle_for(self, key: tuple) -> int:
        """How many idle connections C holds for ``key``."""
        ep = self.eps.get(key)
        return len(self.idle[ep]) if ep is not None else 0

    def unpark(self, key: tuple) -> UpstreamConnection | None:
        """An idle connection C holds for ``key``, handed back to the Python engine."""
        ep = self.eps.get(key)
        if ep is None:
            return None
        lst = self.idle[ep]
        while lst:
            u = lst.pop()
            conn = u.conn
            if conn is not None and not conn.closed:
                self._release(conn)
                return conn
        return None

    def _release(self, conn: UpstreamConnection) -> None:
        """Python reads this connection again."""
        conn.native = None
        conn.fast_reader = None
        t = conn.transport
        if t is not None:
            t._update_fast_reader()

    def forget(self, conn: UpstreamConnection) -> None:
        """The connection closed (the pool's forget)."""
        u = getattr(conn, "native", None)
        if u is not None:
            conn.native = None
            conn.fast_reader = None
            u.lost()

    def sweep(self, now: float) -> None:
        """Idle connections past their upstream's idle timeout are closed (the pool's rule)."""
        path = os.environ.get(STATS_FILE_ENV)
        if path:
            with open(path + ".tmp", "w") as f:
                json.dump(self.counters(), f)
            os.replace(path + ".tmp", path)
        for ep, lst in enumerate(self.idle):
            limit = self._idle_timeout[ep]
            expired = [u for u in lst if limit > 0 and now - u.since >= limit]
            for u in expired:
                lst.remove(u)
                conn = u.conn
                if conn is not None:
                    self._release(conn)
                    conn.close()

    def give_back(self) -> list[UpstreamConnection]:
        """Every idle connection C holds, handed back (export, close, a new engine)."""
        out: list[UpstreamConnection] = []
        for lst in self.idle:
            while lst:
                conn = lst.pop().conn
                if conn is not None and not conn.closed:
                    self._release(conn)
                    out.append(conn)
        return out

    def idle_count(self) -> int:
        return sum(len(lst) for lst in self.idle)

    def counters(self) -> dict[str, int]:
        return dict(self.c.counters())

    # -- a late decline (mu_native.c late_decline) -------------------------------------------
    def _late(
        self,
        client: Any,
        u: Any,
        reason: int,
        request: bytes,
        head: bytes,
        body_len: int,
        response: bytes,
        started: float,
    ) -> None:
        conn = u.conn
        proto = client.proto
        if conn is not None:
            self._release(conn)
        if proto is None:
            if conn is not None:
                conn.abort()
            return
        if reason == NATIVE.LATE_MIDBODY:
            self.rt.log.info("response_body_aborted", error="upstream closed the connection mid-response")
            if conn is not None:
                conn.abort()
            proto._abort()
            return
        if conn is None:
            proto.data_received(request)
            return
        # the connection closed (LATE_EOF): we are inside its connection_lost (the pool's
        # forget). It takes the exchange open for the moment, and the rest of that
        # connection_lost ends it as the Python engine's would have: a retry elsewhere when
        # nothing came back from a reused connection, a 502 otherwise
        closed = conn.closed
        conn.closed = False
        pool = self.pool
        conn.presend = head
        conn.presend_body = body_len
        pool.pinned = conn
        try:
            proto.data_received(request)
        finally:
            conn.closed = closed
        if pool.pinned is conn:  # the Python engine did not take it (it answered itself)
            pool.pinned = None
            conn.presend = None
            conn.presend_body = 0
            conn.abort()
            return
        conn.deadline = started + self.read_timeout
        if response:
            conn.data_received(response)
        if reason == NATIVE.LATE_TIMEOUT:
            conn.check_timeout(started + self.read_timeout)


def _drop_route(engine: weakref.ref[NativeEngine], index: int) -> None:
    """A mirrored balancer's list changed: route ``index`` is the Python engine's."""
    e = engine()
    if e is not None and e.c is not None:
        e.c.drop_route(index)


def _facts(proto: Any) -> tuple[bytes, bytes]:
    """(client ip, scheme) as the Python engine's forwarding headers take them."""
    ip, scheme, _node = _forward_facts(proto._ctx)
    return ip, scheme


# -- the twins of mu_nx.c ---------------------------------------------------------------------

_TCHAR = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"/[-._~!$&'()*+,;=:@/?A-Za-z0-9]*")
_HOST = re.compile(rb"[A-Za-z0-9.\-]+(:[0-9]{1,5})?")
_DECLINED_FIELDS = {
    b"connection",
    b"upgrade",
    b"expect",
    b"proxy-connection",
    b"keep-alive",
    b"http2-settings",
}
_DROPPED = {
    b"te",
    b"trailer",
    b"upgrade",
    b"connection",
    b"keep-alive",
    b"content-length",
    b"proxy-connection",
    b"transfer-encoding",
}
MAX_FIELDS = 64
MAX_HEAD = 8192


@dataclass(frozen=True)
class ParsedRequest:
    method: bytes
    path: bytes
    query: bytes
    host: bytes
    fields: tuple[tuple[bytes, bytes], ...]
    content_length: int = -1  # -1: none
    head_len: int = 0
    total: int = 0  # head and body (what of it is here); pipelined bytes may follow
    body_missing: int = 0  # body bytes still to come (later reads)


def _field(line: bytes, strict: bool) -> tuple[bytes, bytes] | None:
    m = _TCHAR.match(line)
    if m is None or m.end() >= len(line) or line[m.end()] != 0x3A:
        return None
    value = line[m.end() + 1 :].strip(b" \t")
    if any((c < 0x20 and c != 9) or c == 0x7F or (strict and c >= 0x80) for c in value):
        return None
    return m.group(), value


class _Lines:
    """mu_nx.c line_at: CRLF-ended lines of ``data[:end]`` in order; a reason string for a
    missing line end (incomplete) or a bare LF / stray CR (field)."""

    def __init__(self, data: bytes, end: int) -> None:
        self.data, self.end, self.pos = data, end, 0

    def next(self) -> bytes | str:
        d, pos = self.data, self.pos
        nl = d.find(b"\n", pos, self.end)
        if nl < 0:
            return "incomplete"
        if nl == pos or d[nl - 1] != 0x0D or b"\r" in d[pos : nl - 1]:
            return "field"
        self.pos = nl + 1
        return d[pos : nl - 1]

    def field(self, seen: int, strict: bool) -> tuple[bytes, bytes] | str | None:
        """The next field line parsed (name, value), ``seen`` fields before it; None at the
        blank line that ends the head; a reason string for a bad line or one field too many."""
        line = self.next()
        if isinstance(line, str):
            return line
        if not line:
            return None
        if seen == MAX_FIELDS:
            return "fields"
        f = _field(line, strict)
        return "field" if f is None else f


_METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH")


def parse_request(data: bytes, max_body: int = REQUEST_BODY_MAX) -> ParsedRequest | str:
    """mu_nx_parse_request's twin: the request C serves, or why it is declined."""
    blank = data.find(b"\r\n\r\n", 0, MAX_HEAD)
    if blank < 0:
        return "too big" if len(data) > MAX_HEAD else "incomplete"
    n = blank + 4
    lines = _Lines(data, n)
    first = lines.next()
    if isinstance(first, str):
        return first
    method = next((m for m in _METHODS if first.startswith(m + b" ")), b"")
    if not method:
        return "method"
    if len(first) < len(method) + 11 or not first.endswith(b" HTTP/1.1"):
        return "version"
    target = first[len(method) + 1 : -9]
    if not _TARGET.fullmatch(target):
        return "target"
    path, _, query = target.partition(b"?")
    if b"//" in path or b"/." in path:
        return "target"
    fields: list[tuple[bytes, bytes]] = []
    host: bytes | None = None
    clen = -1
    while (f := lines.field(len(fields), True)) is not None:
        if isinstance(f, str):
            return f
        name = f[0].lower()
        if name == b"content-length":
            v = f[1]
            if clen >= 0 or not v or len(v) > 15 or not v.isdigit():
                return "framing"
            clen = int(v)
        if name == b"transfer-encoding":
            return "framing"
        if name in _DECLINED_FIELDS:
            return "connection"
        if name == b"host":
            if host is not None or not _HOST.fullmatch(f[1]):
                return "host"
            host = f[1]
        fields.append(f)
    if host is None:
        return "host"
    body = max(clen, 0)
    if body > max_body:
        return "framing"
    have = min(len(data) - n, body)
    return ParsedRequest(method, path, query, host, tuple(fields), clen, n, n + have, body - have)


@dataclass(frozen=True)
class ParsedResponse:
    status: int
    keep_alive: bool
    content_length: int  # body bytes that follow the head
    announce: int  # the client's content-length line (-1: none)
    head_len: int


def _conn_bits(value: bytes) -> int | None:
    bits = 0
    for tok in value.split(b","):
        t = tok.strip(b" \t").lower()
        if t == b"close":
            bits |= 1
        elif t == b"keep-alive":
            bits |= 2
        elif t:
            return None
    return bits


def parse_response(data: bytes, head_only: bool) -> ParsedResponse | str | None:
    """mu_nx_parse_response's twin: the response head C relays, None while incomplete, or
    why it is declined."""
    window = data[:MAX_HEAD]
    end = -1
    i = window.find(b"\n")
    while i >= 0:
        if window[i + 1 : i + 3] == b"\r\n":
            end = i + 3
            break
        if window[i + 1 : i + 2] == b"\n":
            return "field"
        i = window.find(b"\n", i + 1)
    if end < 0:
        return "too big" if len(data) >= MAX_HEAD else None
    lines = _Lines(data, end)
    first = lines.next()
    if isinstance(first, str):
        return first
    if (
        len(first) < 14
        or first[:9] not in (b"HTTP/1.1 ", b"HTTP/1.0 ")
        or not (0x32 <= first[9] <= 0x35 and first[10:12].isdigit() and first[12] == 0x20)
        or any((c < 0x20 and c != 9) or c == 0x7F for c in first[13:])
    ):
        return "status"
    status = int(first[9:12])
    no_body = status in (204, 304) or head_only
    clen = -1
    conn = 0
    nf = 0
    while (f := lines.field(nf, False)) is not None:
        if isinstance(f, str):
            return f
        nf += 1
        name, value = f[0].lower(), f[1]
        if name == b"content-length":
            if not value or len(value) > 15 or not value.isdigit():
                return "response framing"
            x = int(value)
            if clen >= 0 and x != clen:
                return "response framing"
            clen = x
        elif name == b"transfer-encoding":
            return "response framing"
        elif name == b"connection":
            bits = _conn_bits(value)
            if bits is None:
                return "connection"
            conn |= bits
    if clen < 0 and not no_body:
        return "response framing"
    keep = not conn & 1 if first[7] == 0x31 else bool(conn & 2)
    announce = -1 if status in (204, 304) else clen
    return ParsedResponse(status, keep, 0 if no_body else clen, announce, end)


def client_head(data: bytes, rs: ParsedResponse) -> bytes:
    """mu_nx_client_head's twin: what the client gets for that response head."""
    lines = data[: rs.head_len - 4].split(b"\r\n")
    out = [b"HTTP/1.1 " + lines[0][9:] + b"\r\n"]
    for line in lines[1:]:
        f = _field(line, False)
        assert f is not None
        if f[0].lower() in _DROPPED:
            continue
        out.append(f[0].lower() + b": " + f[1] + b"\r\n")
    if rs.announce >= 0:
        out.append(b"content-length: %d\r\n" % rs.announce)
    out.append(b"\r\n")
    return b"".join(out)
