"""The control channel carries any number of fds: above SCM_MAX_FD (253 per ``sendmsg``) they
ride on continuation frames and arrive in order, attached to their message (issue 17)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import textwrap

import pytest

from monolake.supervisor import channel
from tests.support import PYTHON, raise_nofile

# The child receives every message, reports what each fd is, echoes it back with the same
# fds, then closes them all and reports how many fds it still has open.
CHILD = textwrap.dedent("""
    import json, os, socket, sys
    from monolake.supervisor import channel

    sock = socket.socket(fileno=int(sys.argv[1]))
    reader = channel.FrameReader()
    baseline = len(os.listdir("/proc/self/fd"))
    received = []
    while True:
        got = channel.recv_message(sock, reader, timeout=30)
        if got is None or got[0]["type"] == "done":
            break
        received.append(got)
    report = []
    for message, fds in received:
        seen = [[os.fstat(fd).st_ino, os.pread(fd, 16, 0).decode()] for fd in fds]
        report.append({"type": message["type"], "nfds": message.get("nfds", 0), "fds": seen})
        channel.send(sock, {"type": "echo", "of": message["type"]}, fds)
        for fd in fds:
            os.close(fd)
    reader.close_fds()
    channel.send(sock, {"type": "report", "messages": report,
                        "leaked": len(os.listdir("/proc/self/fd")) - baseline})
""")


def _memfds(count: int, tag: str) -> list[int]:
    """Distinct files (one inode each) whose content names them."""
    fds = []
    for i in range(count):
        fd = os.memfd_create(f"chan-{tag}-{i}")
        os.write(fd, f"{tag}{i}".encode())
        fds.append(fd)
    return fds


def _identity(fds: list[int]) -> list[list]:
    return [[os.fstat(fd).st_ino, os.pread(fd, 16, 0).decode()] for fd in fds]


def test_thousands_of_fds_cross_the_channel_in_order_both_ways():
    plan = [("many", 1200), ("none", 0), ("just_over", 254), ("exactly_max", 253), ("one", 1)]
    raise_nofile(8 * sum(n for _, n in plan) + 256)
    sent = {kind: _memfds(n, kind) for kind, n in plan}
    parent, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    child = subprocess.Popen([PYTHON, "-c", CHILD, str(child_end.fileno())], pass_fds=[child_end.fileno()])
    child_end.close()
    try:
        for kind, _ in plan:
            channel.send(parent, {"type": kind}, sent[kind])
        channel.send(parent, {"type": "done"})
        reader = channel.FrameReader()
        echoes: dict[str, list[int]] = {}
        while True:
            got = channel.recv_message(parent, reader, timeout=60)
            assert got is not None, "the child closed the channel early"
            message, fds = got
            if message["type"] == "report":
                break
            echoes[message["of"]] = fds
        assert child.wait(timeout=30) == 0
        report = {m["type"]: m for m in message["messages"]}
        assert [m["type"] for m in message["messages"]] == [kind for kind, _ in plan]
        for kind, n in plan:
            want = _identity(sent[kind])
            assert report[kind]["fds"] == want, f"{kind}: the child got other fds or order"
            assert report[kind]["nfds"] == n
            assert _identity(echoes[kind]) == want, f"{kind}: the echo came back different"
        assert message["leaked"] == 0, "the child kept fds it did not use"
        assert reader.next_message() is None
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        parent.close()
        for fds in [*sent.values(), *locals().get("echoes", {}).values()]:
            for fd in fds:
                os.close(fd)


def _closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def _frame(message: dict) -> bytes:
    return channel.encode(message)


def test_reader_closes_fds_of_a_cancelled_or_abandoned_message():
    r1, w1 = os.pipe()
    reader = channel.FrameReader()
    reader.feed(_frame({"type": "fds", "nfds": 2}), [r1, w1])
    reader.feed(_frame({"type": "fds", "nfds": 0, "cancel": True}))
    r2, w2 = os.pipe()
    reader.feed(_frame({"type": "state", "nfds": 1}), [r2])
    message, fds = reader.next_message()
    assert message["type"] == "state" and fds == [r2], "cancelled fds are not handed out"
    assert _closed(r1) and _closed(w1)
    os.close(r2)
    reader.feed(_frame({"type": "fds", "nfds": 1}), [w2])
    assert reader.next_message() is None
    reader.close_fds()  # the channel is dropped mid-message
    assert _closed(w2)


@pytest.mark.parametrize(
    "frames",
    [
        [{"type": "fds", "nfds": 254}],  # over SCM_MAX_FD on one frame
        [{"type": "fds", "nfds": 3}, {"type": "state", "nfds": 2}],  # fewer than announced
        [{"type": "state", "nfds": 300}],  # no continuation frames
        [{"type": "state", "nfds": "many"}],
    ],
)
def test_reader_refuses_inconsistent_fd_counts(frames):
    reader = channel.FrameReader()
    with pytest.raises(channel.ChannelError):
        for frame in frames:
            reader.feed(_frame(frame))


def test_a_refused_chunk_leaves_the_channel_usable():
    """A chunk the kernel refuses (here: an fd that is not open) is cancelled; the caller
    gets the error and the next message arrives clean."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    fds = _memfds(300, "x")
    bad = [*fds[:253], fds[253], 10**6, *fds[254:]]  # the second chunk holds a bad fd
    try:
        with pytest.raises(OSError):
            channel.send(a, {"type": "state"}, bad)
        channel.send(a, {"type": "state", "n": 2}, fds[:2])
        reader = channel.FrameReader()
        message, got = channel.recv_message(b, reader, timeout=10)
        assert message["n"] == 2 and _identity(got) == _identity(fds[:2])
        for fd in got:
            os.close(fd)
        assert reader.next_message() is None
        assert json.loads(json.dumps(message))["nfds"] == 2
    finally:
        a.close()
        b.close()
        for fd in fds:
            os.close(fd)
