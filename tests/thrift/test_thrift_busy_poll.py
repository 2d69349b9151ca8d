"""Busy polling (``[runtime] busy_poll_us``) in a real worker: requests still flow through the
Thrift proxy on every loop, the loop reports it, and an idle worker goes back to sleep after
the window instead of burning its core.

"Asleep" is read from the kernel, not from CPU time (which depends on what else the machine
runs): the worker's main thread is blocked (state ``S``) inside the syscall its loop waits in.
A loop that polls (a zero timeout) returns from that syscall at once, so it is never seen
blocked in it however little CPU it gets."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from monolake.uring import probe
from tests.support import wait_for
from tests.thrift.thrift_support import backend, client, endpoint, free_port, listener, proxy

# The syscalls an event loop sleeps in: epoll_wait, epoll_pwait, epoll_pwait2, io_uring_enter.
POLL_SYSCALLS = {"x86_64": {232, 281, 441, 426}, "aarch64": {22, 441, 426}}.get(platform.machine())


def asleep_in_poll(pid: int) -> bool:
    """The main thread of ``pid`` is blocked in its event loop's wait (not running, not
    runnable, not in another syscall)."""
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    call = Path(f"/proc/{pid}/syscall").read_text().split()  # "running" while it runs
    return state == "S" and bool(call) and call[0].isdigit() and int(call[0]) in (POLL_SYSCALLS or ())


@pytest.mark.parametrize("runtime_type", ["io_uring", "legacy"])
def test_busy_poll_serves_and_then_sleeps(tmp_path: Path, runtime_type: str) -> None:
    if runtime_type == "io_uring" and not probe().available:
        pytest.skip(f"io_uring unavailable: {probe().reason}")
    if POLL_SYSCALLS is None:
        pytest.skip(f"no poll syscall numbers for {platform.machine()}")
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
            # past the 2 ms window the loop sleeps in its wait: seen there three samples in a
            # row (a timer may wake it between two of them; a spinning loop is never there)
            seen: list[bool] = []

            def asleep() -> bool:
                seen.append(asleep_in_poll(px.proc.pid))
                return seen[-3:] == [True] * 3

            wait_for(asleep, 15, interval=0.05, what="the idle worker asleep in its poll")
