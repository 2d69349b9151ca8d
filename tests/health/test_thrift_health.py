"""Active thrift health checks end to end: a configured call (``ping``) against real thriftpy2
backends, a backend that dies, and a method every backend refuses (TApplicationException)."""

from __future__ import annotations

import textwrap

import pytest

from tests.health.conftest import row_of, wait_health
from tests.support import free_port, wait_for
from tests.thrift.thrift_support import backend, whoami

CHECK = "interval_sec = 0.2, timeout_sec = 0.2, fall = 2, rise = 2"


def config(tmp_path, p1: int, p2: int, u1: int, u2: int) -> str:
    ups = (
        f'{{ endpoint = {{ type = "socket", value = "127.0.0.1:{u1}" }} }}, '
        f'{{ endpoint = {{ type = "socket", value = "127.0.0.1:{u2}" }} }}'
    )
    return textwrap.dedent(f"""
        [runtime]
        workers = 1

        [supervisor]
        control_socket = "{tmp_path}/control.sock"
        log_format = "json"
        heartbeat_interval = 0.5

        [servers.rpc]
        proxy_type = "thrift"
        listener = {{ type = "socket", value = "127.0.0.1:{p1}" }}
        route = {{ load_balancer = "round_robin", health_check = {{ type = "thrift", method = "ping", {CHECK} }}, upstreams = [{ups}] }}

        [servers.strict]
        proxy_type = "thrift"
        listener = {{ type = "socket", value = "127.0.0.1:{p2}" }}
        route = {{ health_check = {{ method = "no_such_method", all_unhealthy = "reject", {CHECK} }}, upstreams = [{ups}] }}
    """)


def test_thrift_check_takes_out_a_dead_backend_and_rejects_when_all_fail(master_factory, tmp_path) -> None:
    u1, u2, p1, p2 = free_port(), free_port(), free_port(), free_port()
    with backend(tcp=f"127.0.0.1:{u1}", name="t1"), backend(tcp=f"127.0.0.1:{u2}", name="t2") as (_, proc2):
        m = master_factory(config(tmp_path, p1, p2, u1, u2))
        m.wait_ready()
        wait_for(
            lambda: (row_of(m, f"127.0.0.1:{u2}", "(default)", "rpc") or {}).get("checks_ok", 0) >= 2,
            timeout=10,
            interval=0.2,
            what="ping checks passing",
        )
        assert (row_of(m, f"127.0.0.1:{u2}", "(default)", "rpc") or {}).get("healthy")
        assert set(whoami(p1, 6)) == {"t1", "t2"}
        # every backend answers no_such_method with a TApplicationException: all unhealthy,
        # and all_unhealthy = "reject" gives the usual no-upstream error
        rows = [wait_health(m, f"127.0.0.1:{u}", False, route="(default)", server="strict") for u in (u1, u2)]
        assert all("TApplicationException" in r["last_error"] for r in rows), rows
        with pytest.raises(Exception) as failed:
            whoami(p2, 1)
        assert "every upstream fails its health checks" in str(failed.value), failed.value

        proc2.kill()
        proc2.wait(timeout=5)
        wait_health(m, f"127.0.0.1:{u2}", False, route="(default)", server="rpc")
        assert whoami(p1, 20) == ["t1"] * 20
