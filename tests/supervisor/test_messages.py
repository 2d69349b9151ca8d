"""Typed control messages (supervisor/messages.py): every kind round-trips, malformed frames
are refused with a reason, docs/contracts.md's table is the module's, and a live worker and
a live master both refuse malformed frames on their control channel and serve on."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from monolake.conf import Config, parse_config
from monolake.supervisor import channel, messages
from tests.config_text import http_server
from tests.harness import Monolaked, base_config, http_get
from tests.supervisor.worker_child import start_worker
from tests.support import free_port, kill_pids, wait_for

ROOT = Path(__file__).resolve().parents[2]

SAMPLE: dict[Any, Any] = {  # field type -> a valid value
    int: 3,
    float: 0.25,
    str: "x",
    bool: True,
    dict[str, Any]: {"a": [1]},
    dict[str, list[int]]: {"web": [0]},
    dict[str, list[str]]: {"web": ["127.0.0.1:1"]},
    dict[str, int]: {"requests": 1},
    dict[str, dict[str, int]]: {"web": {"requests": 1}},
    list[str]: ["e"],
    int | None: None,
    str | None: None,
    list[dict[str, Any]]: [{"server": "web", "healthy": True}],
    list[dict[str, Any]] | None: [{"server": "web", "route": "/"}],
}

# (frame, what the refusal names): each is refused by the worker's end
BAD_FOR_WORKER: list[tuple[dict[str, Any], str]] = [
    ({"type": "nonsense", "v": 1}, "unknown message type"),
    ({"type": "drain", "v": 1}, "missing field 'timeout'"),  # accepted, it would drain
    ({"type": "stop", "v": 1, "timeout": "soon"}, "stop.timeout"),
    ({"type": "stop", "v": 1, "timeout": True}, "stop.timeout"),
    ({"type": "stop", "v": 2, "timeout": 1}, "protocol version 2"),
    ({"type": "stop", "timeout": 1}, "protocol version None"),
    ({"type": "abort", "v": 1, "now": True}, "unexpected fields ['now']"),
    ({"type": "uncover", "v": 1, "slot": "0"}, "uncover.slot"),
    ({"type": "cover", "v": 1, "slot": 1, "listeners": {"web": ["0"]}}, "cover.listeners"),
    ({"type": "ready", "v": 1, "runtime": "x", "servers": {}}, "unknown message type 'ready'"),
]

BAD_FOR_MASTER: list[dict[str, Any]] = [
    {"type": "nonsense", "v": 1},
    {"type": "heartbeat", "v": 1, "lag": 0.0},  # missing fields
    {
        "type": "heartbeat",
        "v": 1,
        "lag": "slow",
        "stats": {},
        "servers": {},
        "accepting": True,
        "draining": False,
    },
    {"type": "ready", "v": 1, "runtime": "x", "servers": {}, "extra": 1},
    {"type": "failed", "v": 99, "reason": "a newer worker"},
    {"type": "state", "v": 1, "state": None, "servers": {"web": {"requests": "many"}}, "errors": []},
    {"type": "drain", "v": 1, "timeout": 1.0},  # a master -> worker kind
]


def _sample(cls: type[messages.Message]) -> messages.Message:
    hints = messages._HINTS[cls]
    return cls(**{f.name: SAMPLE[hints[f.name]] for f in dataclasses.fields(cls)})


@pytest.mark.parametrize(
    "registry,kind",
    [
        *((messages.TO_WORKER, k) for k in messages.TO_WORKER),
        *((messages.TO_MASTER, k) for k in messages.TO_MASTER),
    ],
)
def test_every_kind_round_trips_through_json(registry, kind):
    message = _sample(registry[kind])
    wire = json.loads(json.dumps({**messages.encode(message), "nfds": 0}))
    assert wire["type"] == kind and wire["v"] == messages.PROTOCOL_VERSION
    assert messages.decode(registry, wire) == message


def test_the_registries_hold_every_kind_each_end_handles():
    assert set(messages.TO_WORKER) == {
        "hello",
        "drain",
        "stop",
        "export",
        "commit",
        "abort",
        "log_level",
        "cover",
        "uncover",
        "reconfigure",
        "reconfigure_commit",
        "rollback",
        "debug",
        "upstreams",
    }
    assert set(messages.TO_MASTER) == {
        "ready",
        "failed",
        "heartbeat",
        "state",
        "committed",
        "reconfigured",
        "debug",
        "upstreams_result",
    }
    assert channel.FDS not in messages.TO_WORKER and channel.FDS not in messages.TO_MASTER


@pytest.mark.parametrize("raw,reason", BAD_FOR_WORKER)
def test_a_malformed_frame_is_refused_with_its_reason(raw, reason):
    with pytest.raises(messages.MessageError, match=re.escape(reason)):
        messages.decode(messages.TO_WORKER, raw)


@pytest.mark.parametrize("raw", BAD_FOR_MASTER)
def test_a_malformed_frame_for_the_master_is_refused(raw):
    with pytest.raises(messages.MessageError):
        messages.decode(messages.TO_MASTER, raw)


def test_contracts_md_has_the_generated_table():
    text = (ROOT / "docs" / "contracts.md").read_text()
    match = re.search(r"<!-- messages table:[^\n]*-->\n(.*?)<!-- end of messages table -->", text, re.S)
    assert match, "docs/contracts.md lost its messages table markers"
    assert match.group(1) == messages.doc_table(), (
        "docs/contracts.md is stale: regenerate it with python -m monolake.supervisor.messages"
    )
    for registry in (messages.TO_WORKER, messages.TO_MASTER):
        for kind, cls in registry.items():
            row = next(
                line for line in match.group(1).splitlines() if f"| `{kind}` | `{cls.__name__}` |" in line
            )
            for f in dataclasses.fields(cls):
                assert f"`{f.name}`" in row, (kind, f.name)


# ----- a live worker ------------------------------------------------------------------------


def _worker_config(port: int) -> Config:
    return parse_config(
        '[supervisor]\nlog_format = "json"\nheartbeat_interval = 0.2\n'
        + http_server(listen=f"127.0.0.1:{port}")
    )


def _next(
    sock: socket.socket, reader: channel.FrameReader, kind: type[messages.Message], timeout: float = 20
) -> messages.Message:
    """The next message of ``kind`` from the worker (heartbeats in between are skipped)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        got = channel.recv_message(sock, reader, timeout=left)
        assert got is not None, "the worker closed its control channel"
        raw, fds = got
        channel.close_fds(fds)
        message = messages.decode(messages.TO_MASTER, raw)
        if isinstance(message, kind):
            return message
    raise AssertionError(f"no {kind.KIND} from the worker within {timeout}s")


def test_a_live_worker_refuses_malformed_messages_and_serves_on(tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    ours, theirs = socket.socketpair()
    hello = messages.Hello(
        slot=0,
        cpu=None,
        generation=1,
        config=Config.to_dict(_worker_config(port)),
        listeners={"web": [0]},
        accept=True,
    )
    channel.send(ours, messages.encode(hello), [listener.fileno()])
    log_path = tmp_path / "worker.log"
    proc = start_worker(theirs, log_path)
    listener.close()
    reader = channel.FrameReader()
    try:
        _next(ours, reader, messages.Ready)
        spare_r, spare_w = os.pipe()  # an fd riding on a refused frame: the worker closes it
        for raw, _ in BAD_FOR_WORKER:
            channel.send(ours, raw)
        channel.send(ours, {"type": "nonsense", "v": 1}, [spare_r])
        os.close(spare_r)
        channel.send(ours, messages.encode(messages.DebugRequest(collect=False)))
        report = _next(ours, reader, messages.DebugReport)
        assert isinstance(report, messages.DebugReport) and report.report["rss"] > 0
        assert http_get(port)[0] == 200
        assert proc.poll() is None
        beat = _next(ours, reader, messages.Heartbeat)
        assert isinstance(beat, messages.Heartbeat) and beat.accepting
        # the pipe's read end went with the refused frame: its write end sees no reader
        os.set_blocking(spare_w, False)
        wait_for(lambda: _reader_gone(spare_w), 10, what="the refused frame's fd closed")
        os.close(spare_w)

        channel.send(ours, messages.encode(messages.Stop(timeout=1.0)))
        assert proc.wait(timeout=30) == 0
    finally:
        kill_pids([proc.pid])
        proc.wait(timeout=10)
        ours.close()
    refused = [
        json.loads(line) for line in log_path.read_text().splitlines() if '"control message refused"' in line
    ]
    assert len(refused) == len(BAD_FOR_WORKER) + 1, log_path.read_text()[-3000:]
    for event, (_, reason) in zip(refused, BAD_FOR_WORKER, strict=False):
        assert reason in event["error"], event


def _reader_gone(fd: int) -> bool:
    try:
        os.write(fd, b"x")
    except BrokenPipeError:
        return True
    except BlockingIOError:
        return False
    return False


# ----- a live master ------------------------------------------------------------------------

# a layer that, while the worker builds, writes malformed frames on the worker's own control
# channel (its fd is on the command line): the real master reads them from a real worker
INJECT = """
import os, sys, json
from monolake.supervisor import channel

FRAMES = json.loads(os.environ["MONOLAKE_TEST_FRAMES"])


class Inject:
    def __init__(self, options):
        fd = int(sys.argv[sys.argv.index("--control-fd") + 1])
        sock = channel.socket.socket(fileno=os.dup(fd))
        try:
            for frame in FRAMES:
                channel.send(sock, frame)
            r, w = os.pipe()
            channel.send(sock, {"type": "nonsense", "v": 1}, [r])
            os.close(r)
            os.close(w)
        finally:
            sock.close()

    def make(self, inner, previous):
        return inner
"""


def test_a_live_master_refuses_malformed_messages_and_serves_on(tmp_path):
    (tmp_path / "inject_frames.py").write_text(INJECT)
    port = free_port()
    config = base_config(
        tmp_path,
        port,
        extra="""
        [[servers.web.layers]]
        factory = "inject_frames:Inject"
    """,
    )
    env = {
        "PYTHONPATH": f"{tmp_path}:{os.environ.get('PYTHONPATH', '')}",
        "MONOLAKE_TEST_FRAMES": json.dumps(BAD_FOR_MASTER),
    }
    m = Monolaked(tmp_path, config, ["--workers", "1"], env)
    try:
        status = m.wait_ready(1)
        pid = status["workers"][0]["pid"]
        assert http_get(port)[0] == 200

        def refused() -> list[dict[str, Any]]:
            return [e for e in m.log_events() if e.get("event") == "control message refused"]

        wait_for(lambda: len(refused()) == len(BAD_FOR_MASTER) + 1, 10, what="every injected frame refused")
        assert {e["pid"] for e in refused()} == {pid}
        # still counted as alive: heartbeats after the garbage are read and applied
        wait_for(lambda: m.status()["workers"][0]["heartbeat_age"] < 1.0, 10, what="a fresh heartbeat")
        row = m.status()["workers"][0]
        assert row["pid"] == pid and row["state"] == "ready" and row["restarts"] == 0
        assert m.proc.poll() is None
        result = m.cli("debug", "--slot", "0")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["pid"] == pid
    finally:
        m.close()
