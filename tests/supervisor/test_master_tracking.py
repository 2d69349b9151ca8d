"""The master's child table in process (issue 17): a slot given a new worker while another
live one is still on it retires that one (drain, listed until reaped) instead of dropping it,
and every live child is listed by ``status``, whatever list it is in."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

from monolake.conf import parse_config
from monolake.supervisor import channel, messages
from monolake.supervisor.master import Master
from monolake.supervisor.workers import DRAINING, PREPARED, READY, Slot, WorkerProc
from tests.config_text import http_server

CONFIG = "[supervisor]\ndrain_timeout = 7\n" + http_server(listen="127.0.0.1:1")


def _child(master: Master, slot: int, state: str) -> tuple[WorkerProc, socket.socket]:
    """A real child (it sleeps) with a control channel whose far end the test reads."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    worker = WorkerProc(slot=slot, cpu=None, generation=1, proc=proc, control=ours, state=state)
    worker.exited = asyncio.get_running_loop().create_future()
    worker.outbox = channel.Outbox(ours, 10, lambda reason: None)
    master._by_pid[proc.pid] = worker
    return worker, theirs


def test_assign_retires_a_live_worker_it_replaces_and_status_lists_every_child():
    async def scenario() -> None:
        master = Master(parse_config(CONFIG, source="test.toml"), None)
        slot = Slot(index=0, cpu=None)
        master.slots = [slot]
        respawned, respawned_end = _child(master, 0, READY)  # landed during a commit
        committed, _ = _child(master, 0, READY)
        prepared, _ = _child(master, 0, PREPARED)  # a reload's, not on any slot yet
        slot.worker = respawned
        try:
            master.assign(slot, committed)
            assert slot.worker is committed
            assert respawned in master.retired and respawned.state == DRAINING
            got = channel.recv_message(respawned_end, channel.FrameReader(), timeout=5)
            assert got is not None and got[0] == messages.encode(messages.Drain(timeout=7))
            master.assign(slot, committed)  # again: nothing more to retire
            assert master.retired == [respawned]
            listed = {row["pid"]: row["state"] for row in master.status()["workers"]}
            assert listed == {committed.pid: READY, respawned.pid: DRAINING, prepared.pid: PREPARED}
        finally:
            for worker in (respawned, committed, prepared):
                worker.proc.kill()
                worker.proc.wait()
                worker.control.close()
            respawned_end.close()

    asyncio.run(scenario())
