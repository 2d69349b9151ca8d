"""The native Thrift relay's steady state (issue 13 §2: zero Python calls per message).

In process: the C objects (uring/mu_thrift.c) driven by hand, with Python callables as the
writers, under ``sys.setprofile``: a relayed CALL and its REPLY run exactly the two writes
and no other Python function (no decline, no late hand-back, no pool hook), and the pooled
connection is back on the idle list after each reply. Through a worker: concurrent thriftpy2
clients against a thriftpy2 backend, after the warm-up every message is the relay's (the
Python engine serves only the declined first messages, nothing goes back late)."""

from __future__ import annotations

import json
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from monolake.worker.thrift import native
from monolake.worker.thrift.server import STATS_FILE_ENV
from tests.thrift.thrift_support import backend, client, endpoint, free_port, listener, proxy, wait_for

pytestmark = pytest.mark.skipif(native.THRIFT is None, reason="monolake.uring._thrift is not available")


def frame(msg: bytes) -> bytes:
    return struct.pack("!I", len(msg)) + msg


def binary(name: bytes, mtype: int, seqid: int, body: bytes = b"\x00") -> bytes:
    return frame(struct.pack("!Ii", 0x80010000 | mtype, len(name)) + name + struct.pack("!i", seqid) + body)


def seqid_of(data: bytes) -> int:
    (n,) = struct.unpack_from("!i", data, 8)
    return struct.unpack_from("!i", data, 12 + n)[0]


class Sink:
    """A writer (the role of the transport's C FastWriter): keeps what it is given."""

    def __init__(self) -> None:
        self.got: list[bytes] = []

    def __call__(self, data: bytes) -> None:
        self.got.append(data)


def test_a_relayed_message_runs_only_the_two_writes() -> None:
    T = native.THRIFT
    surprises: list[str] = []
    eng = T.Engine({b"echo": 0}, -1, (4,), True, 1 << 20, 30.0, lambda *a: surprises.append(f"late {a[1]}"))
    client_out, up_out = Sink(), Sink()
    cli = T.Client(eng, None, lambda data: surprises.append("decline"), client_out)
    up = T.Upstream(eng, 0, object(), up_out, 0)
    eng.idle[0].append(up)
    calls: dict[str, int] = {}

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            calls[frame.f_code.co_name] = calls.get(frame.f_code.co_name, 0) + 1

    n = 200
    # the upstream seqids are the pool's rule (1, 2, ...): each reply is made beforehand, so
    # the profiled part runs nothing of this test's
    reply_body = b"\x0b\x00\x00\x00\x00\x00\x00\x00\x02hi\x00"
    steps = [(binary(b"echo", 1, 1000 + i), binary(b"echo", 2, i + 1, reply_body)) for i in range(n)]
    sys.setprofile(profile)
    try:
        for call, answer in steps:
            cli(call)
            up(answer)
    finally:
        sys.setprofile(None)
    assert surprises == []
    assert calls == {"__call__": 2 * n}, calls  # per message: one write upstream, one to the client
    assert [seqid_of(b) for b in client_out.got] == [1000 + i for i in range(n)]  # the caller's seqids back
    assert [seqid_of(b) for b in up_out.got] == list(range(1, n + 1))  # the pool's seqids on the wire
    assert list(eng.idle[0]) == [up] and not up.busy
    k = eng.counters()
    assert (k["requests"], k["responses_2xx"], k["declined"], k["declined_late"], k["inflight"]) == (
        n,
        n,
        0,
        0,
        0,
    )


def test_a_message_c_does_not_take_is_seen_by_the_profile() -> None:
    """The check above can fail: a decline (no idle connection) is a Python call."""
    T = native.THRIFT
    eng = T.Engine({b"echo": 0}, -1, (4,), True, 1 << 20, 30.0, lambda *a: None)
    declined: list[bytes] = []
    cli = T.Client(eng, None, declined.append, Sink())
    calls: list[str] = []
    sys.setprofile(lambda f, e, a: calls.append(f.f_code.co_name) if e == "c_call" or e == "call" else None)
    try:
        cli(binary(b"echo", 1, 5))
    finally:
        sys.setprofile(None)
    assert declined and calls, calls
    assert eng.counters()["declined"] == 1


def test_concurrent_clients_run_in_c_after_the_warm_up(tmp_path: Path) -> None:
    stats = tmp_path / "stats"
    clients, calls = 4, 150
    with backend() as (addr, _proc):
        px = f"127.0.0.1:{free_port()}"
        servers = f"""
[servers.px]
proxy_type = "thrift"
engine = "native"
thrift_transport = "framed"
listener = {listener(px)}
[servers.px.route]
upstreams = [{{ endpoint = {endpoint(addr)} }}]
"""
        with proxy(tmp_path, servers, runtime='runtime_type = "io_uring"', env={STATS_FILE_ENV: str(stats)}):
            errors: list[BaseException] = []
            go = threading.Barrier(clients)

            def run() -> None:
                try:
                    c = client(px)
                    go.wait(10)
                    for i in range(calls):
                        assert c.echo(f"m{i}") == f"m{i}"
                    c.close()
                except BaseException as exc:  # reported by the test thread
                    errors.append(exc)

            threads = [threading.Thread(target=run) for _ in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not errors, errors
            done = time.time()
            path = Path(str(stats) + ".px")

            def settled() -> dict:
                if not path.exists() or path.stat().st_mtime <= done:
                    return {}
                got = json.loads(path.read_text())
                return (
                    got if got.get("requests") == clients * calls and got.get("active_requests") == 0 else {}
                )

            s = wait_for(settled, 15)
    assert s["native_declined_late"] == 0, s
    # a decline hands one message to the Python engine (the client waits for its reply): the
    # Python engine served exactly the declined ones, at most one per upstream connection it
    # had to open while the others were busy
    assert s["requests"] - s["native_requests"] == s["native_declined"] <= 2 * clients, s
    assert s["native_responses_2xx"] == s["native_requests"] >= clients * calls - 2 * clients, s
