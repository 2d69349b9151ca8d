"""``max_h2_connections_per_upstream``: the H2Pool opens another connection to an endpoint when
the ones it has are at the peer's MAX_CONCURRENT_STREAMS, up to the cap; beyond it a request
waits (FIFO) for a stream slot, bounded by the upstream connect timeout, then gets 503. Real
worker, the ``h2``-library peer with ``--max-streams 1`` (one stream per connection makes the
count exact), http.client clients in threads."""

from __future__ import annotations

import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from monolake.conf import ConfigError, load_config
from tests.h2.test_upstream_h2 import Peer, get, parallel, proxy_config, start_peer
from tests.http.conftest import run_worker
from tests.support import kill_pids


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Peer]:
    p = start_peer(tmp_path, "--max-streams", "1")
    yield p
    kill_pids([p.proc.pid])


def test_cap_bounds_connections_and_queues_the_rest(tmp_path: Path, peer: Peer) -> None:
    """6 concurrent 400 ms requests, 1 stream per connection, cap 2: exactly 2 connections,
    every request answered (the queued ones once a slot frees: three rounds)."""
    cfg = proxy_config(peer.port, route_extra="max_h2_connections_per_upstream = 2")
    with run_worker(tmp_path, cfg) as w:
        t0 = time.monotonic()
        replies = parallel(w.port(), ["/delay/400"] * 6)
        took = time.monotonic() - t0
        assert [r[0] for r in replies] == [200] * 6, replies
    st = peer.stats()
    assert st["connections"] == 2 and st["max_open"] == 1 and st["streams"] == 6, st
    assert took >= 1.1, took  # 6 requests through 2 slots: at least 3 × 400 ms


def test_cap_full_past_the_connect_timeout_is_503(tmp_path: Path, peer: Peer) -> None:
    """Cap 1, the one stream busy for 2.5 s, connect timeout 0.5 s: the second request gets 503
    after ~0.5 s; the upstream is not ejected (the next request is served on the same
    connection)."""
    cfg = proxy_config(
        peer.port,
        route_extra="max_h2_connections_per_upstream = 1\neject_after_failures = 1",
        server_extra="timeout = { upstream_connect_timeout_sec = 0.5 }",
    )
    with run_worker(tmp_path, cfg) as w:
        slow: list = []
        t = threading.Thread(target=lambda: slow.append(get(w.port(), "/delay/2500")))
        t.start()
        deadline = time.monotonic() + 10
        while peer.stats()["streams"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        t0 = time.monotonic()
        status, body, _ = get(w.port(), "/delay/10")
        took = time.monotonic() - t0
        assert status == 503 and b"max_h2_connections_per_upstream" in body, (status, body)
        assert 0.4 <= took < 2.0, took
        t.join(20)
        assert slow and slow[0][0] == 200
        status, _, headers = get(w.port(), "/delay/10")
        assert status == 200 and headers["x-conn"] == "1", headers
        assert "h2_upstream_cap_timeout" in w.log()
    st = peer.stats()
    assert st["connections"] == 1 and st["streams"] == 2, st


CONF = textwrap.dedent("""
    [servers.web]
    proxy_type = "http"
    listener = { type = "socket", value = "127.0.0.1:8080" }

    [[servers.web.routes]]
    path = "/"
    upstream_http_version = "http2"
    LINE
    upstreams = [{ endpoint = { type = "uri", value = "http://127.0.0.1:50051" } }]
""")


def test_config_default_and_validation(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(CONF.replace("LINE", ""))
    assert load_config(path).servers["web"].routes[0].max_h2_connections_per_upstream == 16
    path.write_text(CONF.replace("LINE", "max_h2_connections_per_upstream = 4"))
    assert load_config(path).servers["web"].routes[0].max_h2_connections_per_upstream == 4
    for bad in ("0", "5000", '"8"'):
        path.write_text(CONF.replace("LINE", f"max_h2_connections_per_upstream = {bad}"))
        with pytest.raises(ConfigError) as err:
            load_config(path)
        assert "servers.web.routes[0].max_h2_connections_per_upstream" in str(err.value), err.value


def test_thrift_routes_refuse_the_key(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(
        textwrap.dedent("""
        [servers.rpc]
        proxy_type = "thrift"
        listener = { type = "socket", value = "127.0.0.1:9090" }
        [servers.rpc.route]
        max_h2_connections_per_upstream = 2
        upstreams = [{ endpoint = { type = "uri", value = "tcp://127.0.0.1:9091" } }]
    """)
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "max_h2_connections_per_upstream" in str(err.value) and "http routes only" in str(err.value)
