"""Thrift timers that bound a request fire within milliseconds of their deadline (issue 16 §3),
as the HTTP ones do (tests/http/test_timer_precision.py).

The pools' sweep runs every min(timeouts)/8 (here 0.25 s for a 2 s read timeout) and the
server's every min(timeouts)/4 (0.25 s for 1 s): before, a timeout fired up to that much late.
Deadlines due before the next sweep now get a timer of their own. Six requests at staggered
times: with the sweeps alone each would be late by a uniform 0 to 250 ms, so all of them within
the bound would be luck (about 1 in 1,000)."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from thriftpy2.thrift import TApplicationException

from tests.support import staggered
from tests.thrift.thrift_support import (
    backend,
    client,
    closed_by_peer,
    connect,
    encode_call,
    endpoint,
    free_port,
    proxy,
    read_framed,
)

READ_TIMEOUT = 2.0  # the pool's sweep: 2.0 / 8 = 0.25 s
SERVER_TIMEOUT = 1.0  # the server's sweep: 1.0 / 4 = 0.25 s
LATE = 0.08  # the bound on lateness asserted (a loaded CI machine included)
N = 6


def _staggered(fn: Callable[[], Any]) -> list[tuple[Any, float]]:
    return staggered(fn, N, join=15)


class Env:
    def __init__(self, px: Any) -> None:
        self.px = px

    def addr(self, name: str) -> str:
        return str(self.px.addr(name))


@pytest.fixture(scope="module", params=["auto", "legacy"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("thrift-timers")
    with ExitStack() as stack:
        b1, _ = stack.enter_context(backend("framed", name="b1"))
        route = f"route = {{ upstreams = [{{ endpoint = {endpoint(b1)} }}] }}"

        def server(name: str, timeout: str) -> str:
            return (
                f'[servers.{name}]\nproxy_type = "thrift"\n'
                f'listener = {{ type = "socket", value = "127.0.0.1:{free_port()}" }}\n'
                f"timeout = {{ {timeout} }}\n{route}\n"
            )

        servers = server("reads", f"upstream_read_timeout_sec = {READ_TIMEOUT}") + server(
            "clients",
            f"server_keepalive_timeout_sec = {SERVER_TIMEOUT}, server_message_timeout_sec = {SERVER_TIMEOUT}",
        )
        px = stack.enter_context(proxy(tmp, servers, runtime=f'runtime_type = "{request.param}"'))
        yield Env(px)


def test_upstream_read_timeout_fires_on_time(env: Env) -> None:
    def one() -> str:
        c = client(env.addr("reads"), timeout=10)
        try:
            c.slow(5.0, "late")
        except TApplicationException as exc:
            return str(exc.message)
        finally:
            c.close()
        return "answered"

    for message, took in _staggered(one):
        assert "did not answer" in message, message
        assert READ_TIMEOUT <= took < READ_TIMEOUT + LATE, took


def test_message_timeout_fires_on_time(env: Env) -> None:
    def one() -> bool:
        sock = connect(env.addr("clients"))
        with sock:
            sock.sendall(struct.pack("!I", 100) + b"\x80\x01\x00\x01")  # a frame's first bytes
            return closed_by_peer(sock, timeout=5)

    for closed, took in _staggered(one):
        assert closed
        assert SERVER_TIMEOUT - 0.01 <= took < SERVER_TIMEOUT + LATE, took


def test_keepalive_timeout_fires_on_time(env: Env) -> None:
    def one() -> bool:
        sock = connect(env.addr("clients"))
        with sock:
            msg = encode_call("ping", 1)
            sock.sendall(struct.pack("!I", len(msg)) + msg)
            read_framed(sock)
            start = time.monotonic()
            closed = closed_by_peer(sock, timeout=5)
            return closed and time.monotonic() - start >= SERVER_TIMEOUT - 0.05

    for closed_on_time, took in _staggered(one):
        assert closed_on_time
        assert took < SERVER_TIMEOUT + LATE + 0.05, took  # the ping's round trip included
