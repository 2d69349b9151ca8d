"""The native Thrift relay's Python side (issue 13 §2): what C needs, built once per server,
and the few moments Python takes part (a decline, a pooled connection handed over or back).

``engine = "native"`` on a ``thrift`` server, on the io_uring loop, installs a C reader
(``monolake.uring._thrift.Client``, uring/mu_thrift.c) on each plain client connection. It
forwards a whole framed CALL or ONEWAY message (strict binary or compact) whose method routes
to a route this module marked as C's (one static upstream, no health check) on an idle pooled
connection of that upstream, with the seqid the Python pool would give it, and relays the
reply with the caller's seqid. Everything else is the Python engine's, which stays the
reference (docs/thrift.md "Which engine takes a message"):

- a *decline* hands ``ThriftConnection.data_received`` everything from the first message C
  does not take to the end of the read (nothing of it was sent); C takes the connection back
  when the Python deframer is empty again (``rearm``);
- a *late* decline (a reply C does not relay, the upstream closing, the read timeout) gives
  the connection back to the Python pool with the call on it, as if the pool had sent it
  (the same seqid, the same deadline, the caller as its sink), then feeds it what came: the
  Python pool answers, relays or fails it exactly as it would have.

The C decisions have twins in native_scan.py (tests/thrift/test_thrift_native_twins.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import structlog

from .framing import AUTO, FRAMED
from .message import CALL, Head
from .pool import Call

if TYPE_CHECKING:
    from .pool import EndpointPool, UpstreamConnection
    from .proxy import Route
    from .server import ThriftServer

try:
    from monolake.uring.ring import FAST, lib

    THRIFT: Any = None
    if FAST is not None and lib.mu_thrift_install() == 0:
        from monolake.uring import _thrift as THRIFT  # type: ignore[attr-defined,no-redef]
except (ImportError, AttributeError):  # no io_uring extension: the native relay is off
    THRIFT = None

log = structlog.get_logger("monolake.native")


def why_not(srv: ThriftServer) -> str | None:
    """Why a server with ``engine = "native"`` runs the Python engine alone (None: it may not)."""
    cfg = srv.cfg
    if THRIFT is None:
        return "the io_uring extension (monolake.uring._thrift) is not available"
    if not srv.direct:
        return "layers run in Python"
    if srv.tls is not None:
        return "TLS is terminated in Python"
    if srv.proxy_protocol:
        return "PROXY protocol is read in Python"
    if cfg.thrift_transport not in ("framed", "auto"):
        return f"{cfg.thrift_transport} transport is relayed in Python"
    return None


def c_route(route: Route) -> Any:
    """The one target of a route C may serve, else None (why: docs/thrift.md)."""
    items = route.balancer.items
    if len(items) != 1 or route.balancer.health is not None or route.targets.discovered:
        return None
    target = items[0]
    ep = target.endpoint
    if ep.discovered is not None or ep.group is not None:
        return None
    return target


class NativeRelay:
    """One thrift server's C relay (``_thrift.Engine``) and its pool hooks."""

    def __init__(self, srv: ThriftServer) -> None:
        self.srv = srv
        router = srv.proxy.router
        self.pools: list[EndpointPool] = []
        ep_of: dict[int, int] = {}  # id(route) -> endpoint, -1: not C's

        def endpoint(route: Route) -> int:
            got = ep_of.get(id(route))
            if got is None:
                target = c_route(route)
                if target is None:
                    got = -1
                else:
                    pool = target.pool_for(FRAMED)
                    if pool.native is None:
                        pool.native = self
                        pool.native_ep = len(self.pools)
                        self.pools.append(pool)
                    got = pool.native_ep if pool.native is self else -1
                ep_of[id(route)] = got
            return got

        table = {name.encode(): endpoint(route) for name, route in router.by_method.items()}
        default = endpoint(router.default) if router.default is not None else -1
        self.c = THRIFT.Engine(
            table,
            default,
            tuple(p.settings.max_idle for p in self.pools),
            srv.kind == FRAMED,
            srv.max_frame,
            max(p.settings.read_timeout for p in self.pools) if self.pools else 60.0,
            self._late,
        )
        self._timeouts = {p.settings.read_timeout for p in self.pools}
        self.idle = self.c.idle
        log.info(
            "thrift_native_engine",
            server=srv.name,
            routes=sum(1 for ep in ep_of.values() if ep >= 0),
            endpoints=len(self.pools),
        )

    @property
    def usable(self) -> bool:
        """C serves at least one endpoint, with one read timeout for all (the Engine's)."""
        return bool(self.pools) and len(self._timeouts) == 1

    # -- client connections ---------------------------------------------------------------
    def attach(self, proto: Any, transport: Any) -> Any:
        """The C reader for a new client connection, or None (not an io_uring transport)."""
        if not hasattr(transport, "_update_fast_reader") or type(transport.write).__name__ != "FastWriter":
            return None
        client = THRIFT.Client(self.c, proto, proto._native_declined, transport.write)
        proto.fast_reader = client
        transport._update_fast_reader()
        return client

    # -- the pool's hooks (worker/thrift/pool.py) -------------------------------------------
    def park(self, pool: EndpointPool, conn: UpstreamConnection) -> bool:
        """An idle connection the pool would keep: C holds it."""
        t = conn.transport
        if t is None or type(getattr(t, "write", None)).__name__ != "FastWriter":
            return False
        lst = self.idle[pool.native_ep]
        if len(lst) >= pool.settings.max_idle:
            return False
        u = THRIFT.Upstream(self.c, pool.native_ep, conn, t.write, conn.next_seqid)
        u.since = pool.now()
        conn.native = u
        conn.fast_reader = u
        cast(Any, t)._update_fast_reader()  # the io_uring transport (checked above)
        lst.append(u)
        return True

    def unpark(self, pool: EndpointPool) -> UpstreamConnection | None:
        """An idle connection C holds for ``pool``, handed back to the Python pool."""
        lst = self.idle[pool.native_ep]
        while lst:
            conn = lst[-1].conn
            self.take(conn, lst[-1])
            if conn is not None and not conn.closed and conn.transport is not None:
                return conn
        return None

    def take(self, conn: UpstreamConnection | None, u: Any) -> None:
        """The Python pool reads ``conn`` again; a call C had on it becomes the pool's own."""
        st = u.detach()
        if conn is None:
            return
        conn.native = None
        conn.fast_reader = None
        conn.next_seqid = u.next_seqid
        t: Any = conn.transport
        if t is not None:
            t._update_fast_reader()
        if st is None:
            return
        proto, caller, protocol, name, sent, deadline = st
        head = Head(name.decode("ascii"), CALL, caller, 0, 0, protocol, 0)
        call = Call(proto, caller, head, None)
        call.deadline = deadline
        conn.pending[sent] = call
        conn.inflight += 1
        proto.inflight += 1
        proto.server.active += 1
        if proto.deframer.kind == AUTO:
            proto.deframer.kind = FRAMED  # C read this stream's first message (error replies are framed)

    def forget(self, conn: UpstreamConnection) -> None:
        """The connection closed (the pool's on_closed): the call on it fails as the pool's."""
        u = conn.native
        if u is not None:
            self.take(conn, u)

    def check(self, conn: UpstreamConnection, now: float) -> None:
        """The read timeout of a call C sent on ``conn``: the pool times it out as its own."""
        u = conn.native
        if u is not None and u.busy and u.deadline <= now:
            self.take(conn, u)

    def sweep(self, pool: EndpointPool, now: float) -> None:
        """Idle connections past the pool's idle timeout are closed (the pool's rule)."""
        limit = pool.settings.idle_timeout
        if limit <= 0:
            return
        lst = self.idle[pool.native_ep]
        for u in [u for u in lst if now - u.since >= limit]:
            conn = u.conn
            self.take(conn, u)
            if conn is not None:
                pool.idle.counters.expired += 1
                pool.on_closed(conn)
                conn.close()

    def give_back(self, pool: EndpointPool) -> None:
        """Every idle connection C holds for ``pool`` goes back to its idle list (export,
        an in-place reload, close)."""
        lst = self.idle[pool.native_ep]
        while lst:
            u = lst[-1]
            conn = u.conn
            self.take(conn, u)
            if conn is not None and not conn.closed:
                conn.idle_since = u.since
                pool.idle.append(conn)

    def idle_count(self, pool: EndpointPool) -> int:
        return len(self.idle[pool.native_ep])

    def counters(self) -> dict[str, int]:
        return dict(self.c.counters())

    # -- a late decline (mu_thrift.c late) -------------------------------------------------
    def _late(self, u: Any, reason: int, data: bytes) -> None:
        conn = u.conn
        self.take(conn, u)
        if conn is None:
            return
        if reason == THRIFT.LATE_IDLE_FULL:
            conn.pool.on_idle(conn)
        elif data:
            conn.data_received(data)


def add_counters(out: dict[str, int], native: dict[str, int]) -> None:
    """The relay's counters in the server's stats: what C served counts as the server's, and
    each is also reported as ``native_<name>``."""
    for key in ("requests", "responses_2xx", "bytes_in", "bytes_out"):
        out[key] = out.get(key, 0) + native.get(key, 0)
    out["active_requests"] = out.get("active_requests", 0) + native.get("inflight", 0)
    for key, value in native.items():
        out["native_" + key] = value


__all__ = ["AUTO", "FRAMED", "THRIFT", "NativeRelay", "add_counters", "why_not"]
