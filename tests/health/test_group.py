"""A health group in-process, against real HTTP servers on loopback: rise/fall counting, the
first-check rule, and what the real HTTP balancer picks (held down, fail-open, reject)."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace

import pytest

from monolake.conf.health import HealthCheckConfig
from monolake.conf.schema import EndpointConfig, RouteConfig, UpstreamConfig
from monolake.worker.health import watch_http
from monolake.worker.health.state import EndpointHealth
from monolake.worker.http.upstream import Balancer, Upstream
from monolake.worker.upstream.endpoint import UNHEALTHY
from tests.support import until

CHECK = HealthCheckConfig(path="/health", interval_sec=0.05, timeout_sec=0.05, fall=2, rise=2)


def test_fall_and_rise_count_consecutive_results_and_a_first_failure_counts_at_once() -> None:
    st = EndpointHealth(0.0)
    assert st.record(None, rise=2, fall=3) is False and st.healthy
    assert [st.record("x", 2, 3) for _ in range(3)] == [False, False, True] and not st.healthy
    assert [st.record(None, 2, 3) for _ in range(2)] == [False, True] and st.healthy
    st.record("x", 2, 3)
    st.record(None, 2, 3)  # a pass in between restarts the count of failures
    assert [st.record("x", 2, 3) for _ in range(2)] == [False, False] and st.healthy
    fresh = EndpointHealth(0.0)
    assert fresh.record("refused", 2, 3) is True and not fresh.healthy
    assert (fresh.checks_ok, fresh.checks_failed, fresh.last_error) == (0, 1, "refused")


async def serve(status: dict[int, int]) -> asyncio.Server:
    """Answers /health with ``status[port]``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        code = status[writer.get_extra_info("sockname")[1]]
        writer.write(f"HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def upstream(port: int, route: RouteConfig) -> Upstream:
    ep = EndpointConfig("uri", f"http://127.0.0.1:{port}", scheme="http", host="127.0.0.1", port=port)
    return Upstream(ep, 1, route, None)


def held(up: Upstream) -> bool:
    """Held down by its active checks: the kit's verdict (worker/upstream/endpoint.py)."""
    return up.checked == UNHEALTHY


@pytest.mark.parametrize("behaviour", ["fail_open", "reject"])
def test_balancer_skips_held_down_and_all_unhealthy_follows_the_config(behaviour: str) -> None:
    async def main() -> None:
        status: dict[int, int] = {}
        servers = [await serve(status), await serve(status)]
        ports = [s.sockets[0].getsockname()[1] for s in servers]
        status.update({p: 200 for p in ports})
        cfg = replace(CHECK, all_unhealthy=behaviour)
        route = RouteConfig(upstreams=(UpstreamConfig(EndpointConfig("uri", "x")),), health_check=cfg)
        ups = [upstream(p, route) for p in ports]
        balancer = Balancer("round_robin", ups)
        group = watch_http(balancer, cfg, "web", "/*")
        await until(lambda: all(r["checks_ok"] >= 2 for r in group.rows()), "checks passing")
        assert Counter(getattr(balancer.pick(), "port", None) for _ in range(10)) == {
            ports[0]: 5,
            ports[1]: 5,
        }

        status[ports[1]] = 503
        await until(lambda: held(ups[1]), "b held down")
        assert {getattr(balancer.pick(), "port", None) for _ in range(10)} == {ports[0]}
        status[ports[0]] = 503
        await until(lambda: group.panic, "every upstream unhealthy")
        picks = {getattr(balancer.pick(), "port", None) for _ in range(10)}
        assert picks == ({ports[0], ports[1]} if behaviour == "fail_open" else {None}), picks
        status[ports[1]] = 200
        await until(lambda: not held(ups[1]) and held(ups[0]), "b back, a out")
        assert {getattr(balancer.pick(), "port", None) for _ in range(10)} == {ports[1]}
        assert not group.panic and not group.rejecting
        group.stop()
        for s in servers:
            s.close()

    asyncio.run(main())
