"""Upstream choice on the native engine (issue 13 §2): a multi-upstream route is C's, and both
engines pick from one C balancer table (worker/http/native_balance.py).

- end to end: the same requests through a worker with ``engine = "python"`` (the Python
  ``Balancer`` over a seeded ``SplitMix64``) and one with ``engine = "native"`` (the C
  balancer continuing that stream) choose the same upstream for every request, for each
  policy, with a request held in flight on another connection for least_conn (its count must
  include it whichever engine serves it), and C served most of them;
- in process: a mirrored balancer picks as the plain Python balancer does over the same RNG
  through ejections, restores, operator states, weights and in-flight counts, and C's table
  sees each of Python's decisions at once; a changed upstream list hands the route back.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from monolake.worker.http.stats import Stats
from monolake.worker.upstream.native_balance import SplitMix64
from tests.http.conftest import URING, Conn, run_worker
from tests.http.upstream import UpstreamServer

SEED = 0x5EED1234
POLICIES = ("random", "weighted_random", "round_robin", "first", "least_conn")
N = 24

try:
    from monolake.uring._codec import lib as _codec_lib
except ImportError:  # pragma: no cover - the codec extension is part of the build
    _codec_lib = None

SITECUSTOMIZE = f"""
# the worker's balancers draw from SplitMix64({SEED:#x}) (each its own stream, as each C
# balancer has): the test's seed, for both engines
import monolake.worker.http.upstream as _u
from monolake.worker.upstream.native_balance import SplitMix64 as _S

_init = _u.Balancer.__init__


def _seeded(self, kind, ups):
    _init(self, kind, ups)
    self._rand = _S({SEED})


_u.Balancer.__init__ = _seeded
"""


def config(ups: list[UpstreamServer], engine: str, port: int) -> str:
    routes = []
    for lb in POLICIES:
        eps = ", ".join(
            f'{{ endpoint = {{ type = "uri", value = "{u.url}" }}, weight = {w} }}'
            for u, w in zip(ups, (1, 2, 5), strict=True)
        )
        routes.append(
            f"""
[[servers.px.routes]]
path_prefix = "/{lb}"
preserve_path = true
load_balancer = "{lb}"
upstreams = [{eps}]
"""
        )
    return f"""
[servers.px]
proxy_type = "http"
listener = {{ type = "socket", value = "127.0.0.1:{port}" }}
engine = "{engine}"
""" + "".join(routes)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _counters(path: Path) -> dict:
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            time.sleep(0.1)
    return {}


def run(tmp: Path, engine: str) -> tuple[dict[str, list[str]], dict]:
    """Per policy, which upstream answered each request (by its name); the native counters."""
    site = tmp / f"site-{engine}"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    stats = tmp / f"native-{engine}.json"
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "MONOLAKE_NATIVE_STATS_FILE")}
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), saved["PYTHONPATH"]) if p)
    os.environ["MONOLAKE_NATIVE_STATS_FILE"] = str(stats)
    chosen: dict[str, list[str]] = {}
    try:
        with UpstreamServer("a") as a, UpstreamServer("b") as b, UpstreamServer("c") as c:
            ups = [a, b, c]
            with run_worker(tmp, config(ups, engine, _free_port()), loop="io_uring") as w:
                for lb in POLICIES:
                    with Conn(w.port()) as conn:
                        names = []
                        for i in range(N):
                            r = conn.request("GET", f"/{lb}/x{i}")
                            assert r.status == 200, r
                            names.append(r.body.split(b" ", 1)[0].decode())
                        chosen[lb] = names
                # least_conn with one request held in flight on another connection: the
                # endpoint it went to is never the least loaded while it runs
                held = Conn(w.port(), timeout=15)
                held.send(b"GET /least_conn/slow?delay=3 HTTP/1.1\r\nHost: test\r\n\r\n")
                deadline = time.monotonic() + 5
                while not any(p.endswith("/slow?delay=3") for u in ups for p in u.paths):
                    assert time.monotonic() < deadline, "the held request did not arrive"
                    time.sleep(0.01)
                busy = next(u.name for u in ups if any(p.endswith("/slow?delay=3") for p in u.paths))
                with Conn(w.port()) as conn:
                    names = []
                    for i in range(8):
                        r = conn.request("GET", f"/least_conn/h{i}")
                        names.append(r.body.split(b" ", 1)[0].decode())
                chosen["least_conn-held"] = [busy, *names]
                assert held.read_response().status == 200
                held.close()
                counters = _counters(stats)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return chosen, counters


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    if not URING:
        pytest.skip("io_uring unavailable")
    tmp = tmp_path_factory.mktemp("bal")
    yield {engine: run(tmp, engine) for engine in ("python", "native")}


@pytest.mark.parametrize("policy", [*POLICIES, "least_conn-held"])
def test_same_choices(runs: dict, policy: str) -> None:
    py, nat = runs["python"][0][policy], runs["native"][0][policy]
    assert nat == py
    if policy == "least_conn-held":
        assert py[0] not in py[1:], "a request in flight counts in least_conn's load"
    elif policy in ("random", "weighted_random", "round_robin", "least_conn"):
        assert len(set(py)) > 1, "the policy spread the requests"


def test_native_picked(runs: dict) -> None:
    """C served most requests of the multi-upstream routes (it picked their upstreams)."""
    c = runs["native"][1]
    total = N * len(POLICIES) + 8
    assert c.get("requests", 0) >= total // 2, c


# -- in process: the mirrored balancer ---------------------------------------------------------
pytestmark = pytest.mark.skipif(_codec_lib is None, reason="codec extension not built")


def _balancer(policy: str, seed: int, n: int = 4):
    from monolake.conf.schema import EndpointConfig
    from monolake.worker.http.upstream import Balancer, Upstream

    class _Route:
        max_idle_per_upstream = 4
        idle_timeout_sec = 30.0
        eject_after_failures = 2
        eject_duration_sec = 5.0

    ups = [
        Upstream(
            EndpointConfig(type="uri", value="", scheme="http", host=f"127.0.0.{i + 1}", port=80, path="/"),
            i + 1,
            _Route(),
            None,
        )
        for i in range(n)
    ]
    bal = Balancer(policy, ups)
    bal._rand = SplitMix64(seed)
    return bal


@pytest.mark.parametrize("policy", POLICIES)
def test_mirror_picks_as_python(policy: str) -> None:
    """Same seed, same events: the mirrored balancer (C table) and a plain one agree on every
    pick; ejections, restores, operator states, weights and in-flight counts reach C."""
    from monolake.worker.http import native_balance

    dropped: list[int] = []
    ref, mir = _balancer(policy, 7), _balancer(policy, 7)
    nb = native_balance.mirror(mir, lambda: dropped.append(1))
    assert nb is not None and type(mir).__name__ == "MirroredBalancer"
    stats = Stats()
    for step in range(300):
        k = step % 4
        if step % 37 == 5:  # two failed connects: ejected (Python's decision)
            for bal in (ref, mir):
                bal.items[k].connect_failed(stats)
                bal.items[k].connect_failed(stats)
            assert not _codec_lib.mu_bal_available(nb._b, k, time.monotonic()), "C sees the ejection"
        if step % 53 == 9:  # back at once
            for bal in (ref, mir):
                bal.items[k].ejected_until = 0.0
        if step % 41 == 3:
            for bal in (ref, mir):
                bal.items[k].admin = "" if bal.items[k].admin else "disabled"
        if step % 29 == 1:
            for bal in (ref, mir):
                bal.items[k].weight = 1 + step % 7
                bal.reweigh()
        a, b = ref.pick(), mir.pick()
        assert (None if a is None else ref.items.index(a)) == (None if b is None else mir.items.index(b))
        if a is not None and step % 3 == 0:  # a request left in flight for a while
            a.active += 1
            b.active += 1
        if step % 5 == 0:
            for bal in (ref, mir):
                for up in bal.items:
                    if up.active:
                        up.active -= 1
        assert ref.position == mir.position
    for i, up in enumerate(mir.items):
        row = nb._b.eps[i]
        assert row.active == up.active == ref.items[i].active
        assert bool(row.flags) == bool(up.admin)
        assert row.ejected_until == up.ejected_until
    assert not dropped


def test_mirror_handed_back_on_replace() -> None:
    """A changed upstream list: the balancer is plain Python again, the position kept, the
    engine told to drop the route."""
    from monolake.worker.http import native_balance

    bal = _balancer("round_robin", 1)
    dropped: list[int] = []
    native_balance.mirror(bal, lambda: dropped.append(1))
    for _ in range(3):
        bal.pick()
    assert bal.position == 3
    bal.replace(bal.items[:3])
    assert type(bal).__name__ == "Balancer"
    assert all(type(u).__name__ == "Upstream" for u in bal.items)
    assert bal.position == 0  # 3 % 3, as Balancer.replace does
    assert dropped == [1]


def test_c_counts_are_seen_by_python() -> None:
    """In-flight requests C counts (mu_bal_acquire) are part of ``active`` for Python."""
    from monolake.worker.http import native_balance

    bal = _balancer("least_conn", 3)
    nb = native_balance.mirror(bal, lambda: None)
    assert nb is not None
    nb.acquire(0)
    nb.acquire(0)
    bal.items[0].active += 1  # the Python engine's request on the same endpoint
    assert bal.items[0].active == 3 and bal.items[0].load() == 3
    for _ in range(20):
        assert bal.pick() is not bal.items[0]
    nb.release(0)
    nb.release(0)
    bal.items[0].active -= 1
    assert bal.items[0].active == 0


def test_engine_routes_and_drop_on_replace() -> None:
    """A native engine built over a router: its multi-upstream and single-upstream routes are
    C's (their balancers mirrored), a builtin one is not; a changed upstream list drops the
    route from the engine and hands its balancer back to Python."""
    if not URING:
        pytest.skip("io_uring unavailable")
    from monolake.conf import parse_config
    from monolake.worker.env import WorkerEnv
    from monolake.worker.http import native_engine
    from monolake.worker.http.proxy import RouterService
    from monolake.worker.http.server import build

    if not native_engine.available():
        pytest.skip("the native module is not built")
    cfg = parse_config("""
[servers.px]
proxy_type = "http"
listener = { type = "socket", value = "127.0.0.1:1" }
engine = "native"
[[servers.px.routes]]
path_prefix = "/many"
load_balancer = "round_robin"
upstreams = [{ endpoint = { type = "uri", value = "http://127.0.0.1:9" } },
             { endpoint = { type = "uri", value = "http://127.0.0.2:9" } }]
[[servers.px.routes]]
path_prefix = "/one"
upstreams = [{ endpoint = { type = "uri", value = "http://127.0.0.3:9" } }]
[[servers.px.routes]]
path = "/hello"
upstreams = [{ endpoint = { type = "builtin", value = "hello" } }]
""").servers["px"]
    handle = build(
        "px", cfg, WorkerEnv(slot=0, cpu=None, generation=1, pid=os.getpid(), runtime="io_uring"), None
    )
    router = handle.stack.services["router"]
    assert isinstance(router, RouterService)
    engine = native_engine.NativeEngine(router, handle.pool, handle.rt)
    assert engine.c.ours == (True, True, False)
    many = router.routes[0].balancer
    assert type(many).__name__ == "MirroredBalancer"
    picks = [many.pick() for _ in range(3)]
    assert [p.host if p is not None else None for p in picks] == ["127.0.0.1", "127.0.0.2", "127.0.0.1"]
    many.replace(many.items[:1])
    assert engine.c.ours == (False, True, False)
    assert type(many).__name__ == "Balancer" and many.position == 0
