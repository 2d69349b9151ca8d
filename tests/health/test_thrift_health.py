"""Active thrift health checks end to end: a configured call (``ping``) against real thriftpy2
backends, a backend that dies, and a method every backend refuses (TApplicationException)."""

from __future__ import annotations

import subprocess
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.health.conftest import row_of, wait_health
from tests.support import PYTHON, free_port, spawned, wait_for
from tests.thrift.thrift_support import HERE, client

CHECK = "interval_sec = 0.2, timeout_sec = 0.2, fall = 2, rise = 2"


@contextmanager
def thrift_backend(port: int, name: str) -> Iterator[subprocess.Popen]:
    args = [PYTHON, str(HERE / "backend.py"), "--listen", f"tcp:127.0.0.1:{port}", "--name", name]
    with spawned(args, stdout=subprocess.PIPE, text=True) as proc:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("READY "), line
        yield proc


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


def whoami(port: int, n: int) -> list[str]:
    c = client(f"127.0.0.1:{port}")
    try:
        return [c.whoami() for _ in range(n)]
    finally:
        c.close()


def test_thrift_check_takes_out_a_dead_backend_and_rejects_when_all_fail(master_factory, tmp_path) -> None:
    u1, u2, p1, p2 = free_port(), free_port(), free_port(), free_port()
    with thrift_backend(u1, "t1"), thrift_backend(u2, "t2") as proc2:
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
