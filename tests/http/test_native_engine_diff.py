"""The differential test of the two engines (issue 13 §3): one corpus of client conversations
through a server with ``engine = "python"`` and the same server with ``engine = "native"``
(io_uring), each in front of its own scripted upstream. What the clients received and what
the upstreams received must be the same bytes, connection by connection; and the native
engine must have served part of it itself (its counters), or the test proves nothing."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.http.conftest import URING, Worker, run_worker
from tests.http.scripted_upstream import ScriptedUpstream
from tests.support import free_port

pytestmark = pytest.mark.skipif(not URING, reason="io_uring unavailable")

H = b"Host: t.example\r\nUser-Agent: diff\r\n"
SHUT = b"<shut>"  # a step's data ending with this: the client half-closes after sending


def get(name: str, method: bytes = b"GET", extra: bytes = b"", version: bytes = b"1.1") -> bytes:
    return method + b" /k/" + name.encode() + b"?q=1 HTTP/" + version + b"\r\n" + H + extra + b"\r\n"


def put(name: str, length: int) -> bytes:
    return b"PUT /k/" + name.encode() + b" HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % length


UP = bytes(range(251)) * 1200  # 301 KiB of upload body
HUGE_UP = bytes(range(1, 252)) * 12533  # 3 MiB and a little, cut to 3 MiB
HUGE_UP = HUGE_UP[: 3 << 20]


# each case: (name, steps); a step is (bytes to send, responses to wait for, HEAD flags)
Step = tuple[bytes, int, tuple[bool, ...]]


def s(data: bytes, n: int = 1, heads: tuple[bool, ...] = ()) -> Step:
    return (data, n, heads or (False,) * n)


CASES: list[tuple[str, list[Step]]] = [
    ("keepalive", [s(get("ok")), s(get("ok2")), s(get("ok")), s(get("split")), s(get("empty"))]),
    ("statuses", [s(get("ok")), s(get("404")), s(get("503")), s(get("hop")), s(get("named"))]),
    (
        "bodyless",
        [s(get("ok")), s(get("204")), s(get("304")), s(get("ok", b"HEAD"), 1, (True,)), s(get("ok"))],
    ),
    (
        "framing",
        [s(get("ok")), s(get("chunked")), s(get("interim")), s(get("ok")), s(get("big")), s(get("huge"))],
    ),
    (
        "pipelined",
        [s(get("ok")), s(get("ok") + get("ok2"), 2), s(get("ok")), s(get("ok2") + get("ok")[:10], 1)],
    ),
    (
        "pipelined-3",
        [
            s(get("ok")),
            s(get("ok") + get("ok2") + get("split"), 3),
            s(get("ok") + get("chunked") + get("ok2"), 3),
        ],
    ),
    (
        "pipelined-big",
        [
            s(get("ok")),
            s(b"".join(get("ok", extra=b"X-Pad: " + b"p" * 7000 + b"\r\n") for _ in range(48)), 48),
        ],
    ),
    ("malformed", [s(get("ok")), s(b"GET /k/ok HTTP/1.1\r\nHost: t\r\nBad Line\r\n\r\n")]),
    (
        "smuggle",
        [
            s(get("ok")),
            s(b"GET /k/ok HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
        ],
    ),
    ("client-close", [s(get("ok")), s(get("ok2", extra=b"Connection: close\r\n"))]),
    ("http10", [s(get("ok")), s(get("ok", version=b"1.0"))]),
    ("upstream-close", [s(get("ok")), s(get("close")), s(get("ok")), s(get("http10")), s(get("ok"))]),
    ("untilclose", [s(get("ok")), s(get("untilclose"))]),
    ("midbody", [s(get("ok")), s(get("midbody"))]),
    ("eof", [s(get("ok")), s(get("eof"))]),
    ("garbage", [s(get("ok")), s(get("garbage"))]),
    ("extra", [s(get("ok")), s(get("extra")), s(get("ok"))]),
    ("noreason", [s(get("ok")), s(get("noreason")), s(get("ok"))]),
    ("noroute", [s(get("ok")), s(b"GET /other HTTP/1.1\r\n" + H + b"\r\n"), s(get("ok"))]),
    ("nohost", [s(get("ok")), s(b"GET /k/ok HTTP/1.1\r\nX: y\r\n\r\n")]),
    (
        "xff",
        [s(get("ok")), s(get("ok", extra=b"X-Forwarded-For: 1.2.3.4\r\nForwarded: for=x\r\nVia: 1.0 a\r\n"))],
    ),
    (
        "head",
        [
            s(get("ok")),
            s(get("headonly", b"HEAD"), 1, (True,)),
            s(get("headnolen", b"HEAD"), 1, (True,)),
            s(get("204", b"HEAD"), 1, (True,)),
            s(get("304cl")),
            s(get("ok")),
        ],
    ),
    (
        "bodies",
        [
            s(get("ok")),
            s(b"POST /k/ok HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello"),
            s(b"PUT /k/chunked HTTP/1.1\r\n" + H + b"Content-Length: 3\r\n\r\nabc"),
            s(b"POST /k/ok2 HTTP/1.1\r\n" + H + b"Content-Length: 0\r\n\r\n"),
            s(b"POST /k/midbody HTTP/1.1\r\n" + H + b"Content-Length: 4\r\n\r\nabcd"),
        ],
    ),
    ("body-eof", [s(get("ok")), s(b"PUT /k/eof HTTP/1.1\r\n" + H + b"Content-Length: 2\r\n\r\nab")]),
    ("half-close", [s(get("ok")), s(get("slow") + SHUT)]),
    ("timeout", [s(get("ok")), s(get("silent")), s(get("ok"))]),
    (
        "post",
        [s(get("ok")), s(b"POST /k/ok HTTP/1.1\r\n" + H + b"Content-Length: 3\r\n\r\nabc"), s(get("ok"))],
    ),
    # chunked responses (declined late: the Python engine relays them) with extensions and
    # trailers, split across reads, then C takes the next request
    ("chunked-ext", [s(get("ok")), s(get("chunkext")), s(get("ok")), s(get("chunkext")), s(get("ok"))]),
    # uploads that span reads (a step awaiting no response is sent apart from the next)
    (
        "upload",
        [
            s(get("ok")),
            s(put("readok", 10) + b"abc", 0),
            s(b"defg", 0),
            s(b"hij", 1),
            s(put("readok", 5) + b"12345" + get("ok2"), 2),
            s(get("ok")),
        ],
    ),
    (
        "upload-big",
        [s(get("ok")), s(put("readok", 300_000) + UP[:100_000], 0), s(UP[100_000:300_000], 1), s(get("ok"))],
    ),
    (
        "upload-pipelined",
        [s(get("ok")), s(put("readok", 6) + b"abc", 0), s(b"def" + get("ok2") + get("ok"), 3)],
    ),
    # the upstream answers before the body is all there: the Python engine takes it over
    ("upload-early", [s(get("ok")), s(put("404", 10) + b"abc", 1), s(b"defghij", 0), s(get("ok"))]),
    (
        "upload-early-big",
        [s(get("ok")), s(put("ok", 200_000) + UP[:50_000], 1), s(UP[50_000:200_000], 0), s(get("ok"))],
    ),
    # ... after more than the 1 MiB of body the native engine keeps (KEEP_MAX in mu_native.c)
    (
        "upload-early-huge",
        [
            s(get("ok")),
            s(put("partial", 3 << 20) + HUGE_UP[: 1 << 20], 0),
            s(HUGE_UP[1 << 20 : 5 << 19], 1),
            s(HUGE_UP[5 << 19 :], 0),
            s(get("ok")),
        ],
    ),
    # the upstream closes mid-upload, before answering
    ("upload-upclose", [s(get("ok")), s(put("readclose", 10) + b"abc", 0), s(b"defghij", 1)]),
    # the client ends its side, or closes, mid-upload
    ("upload-eof", [s(get("ok")), s(put("readok", 10) + b"abc", 0), s(b"de" + SHUT, 1)]),
    ("upload-timeout", [s(get("ok")), s(put("silent", 4) + b"ab", 0), s(b"cd", 1)]),
]


def _responses_done(buf: bytes, n: int, heads: tuple[bool, ...]) -> bool:
    """Whether ``buf`` holds ``n`` complete responses (Content-Length, chunked or bodiless)."""
    pos = 0
    for i in range(n):
        while True:
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                return False
            head = buf[pos:end].lower()
            status = int(head[9:12])
            pos = end + 4
            if not (100 <= status < 200):
                break
        if heads[i] or status in (204, 304):
            continue
        if b"transfer-encoding: chunked" in head:
            term = buf.find(b"\r\n0\r\n\r\n", pos - 2)
            if term < 0:
                return False
            pos = term + 7
            continue
        cl = [ln for ln in head.split(b"\r\n") if ln.startswith(b"content-length:")]
        if not cl:
            return False  # delimited by the close
        pos += int(cl[0].split(b":")[1])
        if len(buf) < pos:
            return False
    return True


def converse(port: int, steps: list[Step]) -> bytes:
    """Run one conversation; everything the client received, then a marker of how it ended."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        for data, n, heads in steps:
            start = len(got)
            c.sendall(data.removesuffix(SHUT))
            if data.endswith(SHUT):
                c.shutdown(socket.SHUT_WR)
            if n == 0:
                # nothing to wait for: the next step's bytes must reach the proxy in a later
                # read (an upload spanning reads); no proxy event tells when this one was read
                time.sleep(0.05)
            deadline = time.monotonic() + 5
            while not _responses_done(got[start:], n, heads) and time.monotonic() < deadline:
                c.settimeout(max(0.05, deadline - time.monotonic()))
                try:
                    piece = c.recv(1 << 20)
                except ConnectionResetError:
                    return got + b"<reset>"
                except TimeoutError:
                    break
                if not piece:
                    return got + b"<eof>"
                got += piece
        c.settimeout(0.3)
        try:
            tail = c.recv(1 << 20)
        except ConnectionResetError:
            return got + b"<reset>"
        except TimeoutError:
            return got + b"<open>"
        return got + tail + (b"<eof>" if not tail else b"<more>")


def config(upstream: ScriptedUpstream, engine: str) -> str:
    return f"""
[servers.px]
proxy_type = "http"
listener = {{ type = "socket", value = "127.0.0.1:{free_port()}" }}
engine = "{engine}"
[servers.px.timeout]
upstream_read_timeout_sec = 1
[[servers.px.routes]]
path = "/k/{{name}}"
preserve_path = true
upstreams = [{{ endpoint = {{ type = "uri", value = "{upstream.url}" }} }}]
[[servers.px.routes]]
path = "/builtin"
upstreams = [{{ endpoint = {{ type = "builtin", value = "hello" }} }}]
"""


def run_corpus(tmp: Path, engine: str) -> tuple[list[bytes], list[bytes], dict]:
    stats = tmp / f"native-{engine}.json"
    os.environ["MONOLAKE_NATIVE_STATS_FILE"] = str(stats)
    try:
        with ScriptedUpstream() as up, run_worker(tmp, config(up, engine), loop="io_uring") as w:
            clients = [converse(w.port(), steps) for _name, steps in CASES]
            time.sleep(0.3)  # the upstream threads record the last bytes
            counters = _counters(stats, w)
            port = str(up.port).encode()
            return clients, [b.replace(port, b"<port>") for b in up.received()], counters
    finally:
        os.environ.pop("MONOLAKE_NATIVE_STATS_FILE", None)


def _counters(path: Path, w: Worker) -> dict:
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            time.sleep(0.1)
    return {}


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, tuple[list[bytes], list[bytes], dict]]]:
    tmp = tmp_path_factory.mktemp("diff")
    yield {engine: run_corpus(tmp, engine) for engine in ("python", "native")}


@pytest.mark.parametrize("index", range(len(CASES)), ids=[name for name, _ in CASES])
def test_client_bytes(runs: dict, index: int) -> None:
    assert runs["native"][0][index] == runs["python"][0][index]


def test_upstream_bytes(runs: dict) -> None:
    py, nat = runs["python"][1], runs["native"][1]
    assert [_requests(b) for b in nat] == [_requests(b) for b in py], "requests per upstream connection"
    for i, (a, b) in enumerate(zip(py, nat, strict=True)):
        assert b == a, f"upstream connection {i}"


def _requests(data: bytes) -> list[bytes]:
    """The request lines of one upstream connection's bytes (for a readable diff)."""
    return [head.split(b"\r\n", 1)[0] for head in data.split(b"\r\n\r\n") if head]


def test_native_served(runs: dict) -> None:
    """The native run served requests in C and declined some late (the corpus has both)."""
    c = runs["native"][2]
    assert c.get("requests", 0) >= 10, c
    assert c.get("declined_late", 0) >= 5, c
    assert runs["python"][2] == {}, "the python engine has no native counters"
