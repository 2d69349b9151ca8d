"""Orderings of a spliced request body's end against its response, made deterministic.

The upstream can answer as soon as the kernel has written the body's last bytes to it, and the
worker may read that answer before it has seen the splice's last completion (the io-wq worker
that ran the splice posts it after the upstream, woken by the write, has already answered), or
after the completion but before the job's ``on_done`` callback has run. The response must then
still go out as the Python relay sends it (keep-alive, no ``Connection: close``), because the
whole body did reach the upstream; this once showed in CI as a client reading EOF where the
next response head was due (tests/http/test_splice_proxy.py::test_same_bytes_at_both_ends).

Here the proxy runs in the test process on the io_uring loop, and the splice's last step is
held back (its completion, or its ``on_done``) until the response has been handed to the
exchange: exactly the ordering the scheduler produced once.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from typing import Any

import pytest

from monolake.conf import parse_config
from monolake.worker.env import WorkerEnv
from tests.http.conftest import URING
from tests.http.test_splice_proxy import THRESHOLD, Client, RawUpstream, pattern

pytestmark = pytest.mark.skipif(not URING, reason="io_uring unavailable")

ENV = WorkerEnv(slot=0, cpu=None, generation=1, pid=os.getpid(), runtime="io_uring")
BODY = 4 << 20


def _config(up: RawUpstream) -> Any:
    text = f"""
[servers.px]
proxy_type = "http"
listener = {{ type = "socket", value = "127.0.0.1:1" }}
splice_threshold = {THRESHOLD}
[[servers.px.routes]]
path = "/{{*p}}"
preserve_path = true
upstreams = [{{ endpoint = {{ type = "uri", value = "{up.url}" }} }}]
"""
    return parse_config(text).servers["px"]


class Hold:
    """Holds back the last step of every request-body splice (``late`` = "cqe": its final
    completion; "done": the job's on_done) until the exchange has been given its response."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, late: str) -> None:
        from monolake.uring import splice
        from monolake.worker.http import exchange, splice_relay

        self.late = late
        self.jobs: set[Any] = set()  # the request-body jobs
        self.wanted: dict[Any, int] = {}  # what each was asked to move (go)
        self.held: list[Callable[[], None]] = []
        self.responses = 0  # responses handed to an exchange while a last step was held
        self.started = threading.Event()  # a request-body splice has started
        hold = self

        start = splice_relay.BodySplice.start

        def start_hook(relay: Any) -> bool:
            ok = start(relay)
            if ok and isinstance(relay.source, splice_relay.ClientSource):
                hold.jobs.add(relay.job)
                hold.started.set()
            return bool(ok)

        go = splice.SpliceJob.go

        def go_hook(job: Any, nbytes: int) -> None:
            hold.wanted[job] = nbytes
            go(job, nbytes)

        event = splice.SpliceJob._event

        def event_hook(job: Any, kind: int, res: int, flags: int, off: int) -> None:
            if (
                hold.late == "cqe"
                and job in hold.jobs
                and kind == splice.lib.MU_SPLICE_K_OUT
                and res > 0
                and job.moved + res == hold.wanted.get(job)
            ):
                hold.jobs.discard(job)
                hold.held.append(lambda: event(job, kind, res, flags, off))
                return
            event(job, kind, res, flags, off)

        end = splice.SpliceJob._end

        def end_hook(job: Any, rc: int, cancel: bool = False) -> None:
            cb = job.on_done
            if (
                hold.late == "done"
                and job in hold.jobs
                and rc == splice.lib.MU_SPLICE_DONE
                and cb is not None
            ):
                hold.jobs.discard(job)
                job.on_done = None
                end(job, rc, cancel)
                hold.held.append(lambda: cb(job))
                return
            end(job, rc, cancel)

        send = exchange.Exchange.send

        def send_hook(ex: Any, resp: Any) -> None:
            req = ex.request
            relay = req.body.relay if req is not None and req.body is not None else None
            job: Any = getattr(relay, "job", None)
            if hold.late == "done" and job is not None and job in hold.jobs and not job._ended:
                # the response came before the splice's last completion (the "cqe" ordering,
                # which the scheduler can produce on its own): wait for that completion, so
                # that this case always holds back an on_done
                ex.conn._loop.call_later(0.001, send_hook, ex, resp)
                return
            held, hold.held = hold.held, []
            if held:
                hold.responses += 1
            send(ex, resp)
            for fn in held:  # what the scheduler delayed arrives now, after the response
                ex.conn._loop.call_soon(fn)

        monkeypatch.setattr(splice_relay.BodySplice, "start", start_hook)
        monkeypatch.setattr(splice.SpliceJob, "go", go_hook)
        monkeypatch.setattr(splice.SpliceJob, "_event", event_hook)
        monkeypatch.setattr(splice.SpliceJob, "_end", end_hook)
        monkeypatch.setattr(exchange.Exchange, "send", send_hook)


def _upload(c: Client, hold: Hold) -> None:
    """``c.upload``, but the body follows only once its splice has started: else the worker
    may have read the whole body before the splice starts (then nothing is spliced, rightly,
    and there is no last step to hold back)."""
    hold.started.clear()
    c.sock.sendall(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % BODY)
    assert hold.started.wait(30), "the request body's splice never started"
    body = memoryview(pattern(BODY))
    for i in range(0, BODY, 1 << 16):
        c.sock.sendall(body[i : i + (1 << 16)])
        c.sent += len(body[i : i + (1 << 16)])


def _client(port: int, hold: Hold) -> list[Any]:
    """Upload, then download, then upload again on one keep-alive connection."""
    c = Client(port)
    try:
        out: list[Any] = []
        for _ in range(2):
            _upload(c, hold)
            status, fields = c.head()
            out.append((status, fields.get("connection"), c.body(int(fields["content-length"])).split()[0]))
            c.get("/dl/1000")
            out.append(c.response())
        return out
    finally:
        c.close()


@pytest.mark.parametrize("late", ["cqe", "done"])
def test_response_before_the_splice_end_is_seen(monkeypatch: pytest.MonkeyPatch, late: str) -> None:
    from monolake.uring import new_event_loop, probe
    from monolake.worker.http.server import build

    hold = Hold(monkeypatch, late)
    up = RawUpstream()

    async def scenario() -> list[Any]:
        loop = asyncio.get_running_loop()
        handle = build("px", _config(up), ENV, None)
        server = await loop.create_server(handle.protocol_factory, "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            return await asyncio.wait_for(loop.run_in_executor(None, _client, port, hold), 60)
        finally:
            server.close()
            await handle.aclose()

    try:
        with asyncio.Runner(loop_factory=lambda: new_event_loop(setup_flags=probe().setup_flags)) as r:
            got = r.run(scenario())
    finally:
        up.close()
    want_up = (200, None, str(BODY).encode())
    assert got == [want_up, (200, pattern(1000)), want_up, (200, pattern(1000))]
    assert hold.responses == 2, "the last splice step was held back while the response came"
    assert up.conns == 1  # the upstream connection was reused: the body reached it whole
