"""Fixtures for the HTTP/2 engine tests: skip without the extension; an echo server process
on the io_uring loop or on epoll."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from monolake.uring import probe
from monolake.worker import h2
from tests.support import PYTHON, free_port, kill_pids, listening_on, wait_for

if not h2.available():
    pytest.skip(h2.available().reason, allow_module_level=True)


@dataclass
class EchoServer:
    port: int
    pid: int
    loop: str


def start_echo(loop: str, settings: dict | None = None) -> tuple[EchoServer, subprocess.Popen]:
    port = free_port()
    proc = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "tests.h2.echo_server",
            "--port",
            str(port),
            "--loop",
            loop,
            "--settings",
            json.dumps(settings or {}),
        ]
    )
    try:
        wait_for(
            lambda: listening_on(port) or proc.poll() is not None, timeout=15, what="echo server listening"
        )
    except AssertionError:
        kill_pids([proc.pid])
        raise
    if proc.poll() is not None:
        raise AssertionError(f"echo server exited with {proc.returncode}")
    return EchoServer(port, proc.pid, loop), proc


@pytest.fixture(params=["uring", "epoll"])
def echo_loop(request: pytest.FixtureRequest) -> str:
    if request.param == "uring" and not probe().available:
        pytest.skip(f"io_uring unavailable: {probe().reason}")
    return request.param


@pytest.fixture
def echo_factory() -> Iterator:
    """``make(loop, settings=None)`` starts an echo server; all are killed by PID after."""
    procs: list[subprocess.Popen] = []

    def make(loop: str, settings: dict | None = None) -> EchoServer:
        server, proc = start_echo(loop, settings)
        procs.append(proc)
        return server

    yield make
    kill_pids([p.pid for p in procs])
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()


@pytest.fixture
def echo(echo_factory, echo_loop: str) -> EchoServer:
    return echo_factory(echo_loop)
