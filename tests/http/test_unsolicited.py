"""Bytes an upstream sends after a complete response never reach another client.

An unsolicited second response, a stray head or half of one, a body after a 204/304 or a HEAD
answer, or more bytes after a long body: the connection that carried them is closed, never
pooled, so the next request cannot be answered with them (issue 16 §1), for every parser and
both loops. The upstream keeps serving on such a connection, so a proxy that pooled it would
hand the stray bytes, or the connection twice, to the next clients: the tests would see it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from monolake.worker.http.pool import UpstreamPool
from monolake.worker.http.stats import Stats
from monolake.worker.upstream.idle import IdleList
from tests.http.conftest import VARIANT_IDS, VARIANTS, Conn, Reply, proxy_config, run_worker, variant
from tests.http.upstream import FAULTS, UpstreamServer

# kind -> (status, body) the client of the faulty response itself gets
EXPECTED = {
    "second": (200, b"hello"),
    "head": (200, b"hello"),
    "half": (200, b"hello"),
    "garbage": (200, b"hello"),
    "after204": (204, b""),
    "after304": (304, b""),
    "long": (200, None),
    "chunked": (200, b"hello"),
    "empty": (200, b""),
}
assert set(EXPECTED) == {k for k in FAULTS if not k.startswith("ok")}


@pytest.fixture(scope="module", params=VARIANTS, ids=VARIANT_IDS)
def proxy(request, tmp_path_factory):
    parser, loop = variant(request.param)
    with UpstreamServer("f") as up:
        config = proxy_config(
            f"""
[servers.px.timeout]
upstream_read_timeout_sec = 5

[[servers.px.routes]]
path_prefix = "/"
preserve_path = true
upstreams = [{{ endpoint = {{ type = "uri", value = "{up.url}" }} }}]
""",
            parser,
        )
        with run_worker(tmp_path_factory.mktemp("unsolicited"), config, loop) as w:
            yield w, up


def _get(port: int, target: str, method: str = "GET") -> Reply:
    with Conn(port) as c:
        c.send(f"{method} {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        return c.read_response(method)


def _served_on(up: UpstreamServer, target: str) -> tuple[int, int]:
    """(index in ``up.served``, connection number) of the last request for ``target``."""
    for i in range(len(up.served) - 1, -1, -1):
        if up.served[i][1] == target:
            return i, up.served[i][0]
    raise AssertionError(f"{target} never reached the upstream: {up.served[-5:]}")


def _check_nobody_gets_it(w, up: UpstreamServer, fault_target: str, tag: str) -> None:
    index, conn = _served_on(up, fault_target)
    # three clients at once, each answered after 0.3 s: with the faulty connection pooled
    # (once, or twice), one of them would get the stray bytes or another client's answer
    tags = [f"c{i}-{tag}" for i in range(3)]
    with ThreadPoolExecutor(3) as ex:
        replies = list(ex.map(lambda t: _get(w.port(), f"/delay/{t}"), tags))
    for t, r in zip(tags, replies, strict=True):
        assert (r.status, r.body, r.header("x-up")) == (200, t.encode(), None), (t, r)
    r = _get(w.port(), f"/delay/seq-{tag}?s=0")
    assert (r.status, r.body, r.header("x-up")) == (200, f"seq-{tag}".encode(), None)
    later = [t for c, t in up.served[index + 1 :] if c == conn]
    assert later == [], f"the connection that sent stray bytes was reused for {later}"
    assert "upstream_unsolicited_bytes" in w.log()


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_bytes_after_a_complete_response_close_the_connection(proxy, kind):
    w, up = proxy
    assert _get(w.port(), "/warm").status == 200  # a pooled connection the fault then takes
    target = f"/fault?kind={kind}"
    r = _get(w.port(), target)
    status, body = EXPECTED[kind]
    assert r.status == status
    if body is not None:
        assert r.body == body
    else:
        assert len(r.body) == 100_000
    _check_nobody_gets_it(w, up, target, kind)


def test_a_body_after_a_head_answer_closes_the_connection(proxy):
    w, up = proxy
    assert _get(w.port(), "/warm").status == 200
    r = _get(w.port(), "/fault?kind=headbody", method="HEAD")
    assert (r.status, r.body) == (200, b"")
    _check_nobody_gets_it(w, up, "/fault?kind=headbody", "headbody")


@pytest.mark.parametrize("kind", ["ok", "ok-interim"])
def test_a_clean_response_keeps_its_connection_pooled(proxy, kind):
    """No false alarm: a response with nothing after it (an interim 100 first included) leaves
    its connection in the pool, and the next request goes out on it."""
    w, up = proxy
    target = f"/fault?kind={kind}"
    assert _get(w.port(), target).body == b"hello"
    _index, conn = _served_on(up, target)
    r = _get(w.port(), f"/delay/after-{kind}?s=0")
    assert r.body == f"after-{kind}".encode()
    assert _served_on(up, f"/delay/after-{kind}?s=0")[1] == conn


# -- the pool's ownership rule, in process ----------------------------------------------------


class _Conn:
    """Just what the pool reads of a connection (hashable by identity, as the real one)."""

    def __init__(self, **attrs: object) -> None:
        self.__dict__.update(attrs)

    def close(self) -> None:
        self.closed = True


def _pool() -> tuple[UpstreamPool, list[tuple[str, dict]]]:
    events: list[tuple[str, dict]] = []
    log = SimpleNamespace(error=lambda ev, **kw: events.append((ev, kw)))
    return UpstreamPool(parser_kind="h11", connect_timeout=1, read_timeout=1, stats=Stats(), log=log), events


def _conn() -> _Conn:
    up = SimpleNamespace(key=("k",), label="up:1", max_idle=8, idle_timeout=60, draining=False)
    transport = SimpleNamespace(is_closing=lambda: False)
    return _Conn(key=up.key, upstream=up, closed=False, poisoned="", transport=transport, idle_since=0.0)


def test_a_second_release_closes_the_connection_instead_of_pooling_it_twice():
    pool, events = _pool()
    conn = _conn()
    pool.busy.add(conn)
    pool.release(conn)
    assert list(pool.idle[conn.key]) == [conn] and not conn.closed
    pool.release(conn)  # a bug elsewhere: it must not be queued (and handed out) twice
    assert conn.closed and list(pool.idle[conn.key]) == []
    assert [ev for ev, _ in events] == ["pool_double_release"]


def test_a_connection_checked_out_is_never_handed_out_again():
    pool, events = _pool()
    conn = _conn()
    pool.idle[conn.key] = IdleList(pool.counters, [conn, conn])  # a corrupt idle list
    assert pool.take_idle(conn.upstream) is conn
    assert pool.take_idle(conn.upstream) is None
    assert [ev for ev, _ in events] == ["pool_double_checkout"]


def test_a_poisoned_connection_is_closed_on_release():
    pool, _events = _pool()
    conn = _conn()
    conn.poisoned = "stray bytes"
    pool.busy.add(conn)
    pool.release(conn)
    assert conn.closed and not pool.idle.get(conn.key)
