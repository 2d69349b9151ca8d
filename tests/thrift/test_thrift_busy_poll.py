"""Busy polling (``[runtime] busy_poll_us``) in a real worker: requests still flow through the
Thrift proxy on every loop, the loop reports it, and an idle worker goes back to sleep after
the window instead of burning its core."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from monolake.uring import probe
from tests.thrift.thrift_support import backend, client, endpoint, free_port, listener, proxy


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks


@pytest.mark.parametrize("runtime_type", ["io_uring", "legacy"])
def test_busy_poll_serves_and_then_sleeps(tmp_path: Path, runtime_type: str) -> None:
    if runtime_type == "io_uring" and not probe().available:
        pytest.skip(f"io_uring unavailable: {probe().reason}")
    with backend("framed", name="bb") as (addr, _):
        servers = (
            f'[servers.tp]\nproxy_type = "thrift"\nlistener = {listener(f"127.0.0.1:{free_port()}")}\n'
            f"route = {{ upstreams = [{{ endpoint = {endpoint(addr)} }}] }}\n"
        )
        runtime = f'runtime_type = "{runtime_type}"\nbusy_poll_us = 2000'
        with proxy(tmp_path, servers, runtime=runtime) as px:
            c = client(px.addr("tp"))
            try:
                for i in range(200):
                    assert c.echo(str(i)) == str(i)
            finally:
                c.close()
            assert "busy_poll_us=2000" in px.log_path.read_text()  # the loop has it on
            time.sleep(0.2)  # past the 2 ms window
            before = cpu_seconds(px.proc.pid)
            time.sleep(1.5)
            used = cpu_seconds(px.proc.pid) - before
            assert used < 0.5, f"an idle worker used {used:.2f}s of CPU in 1.5s: still spinning"
