"""The master's view of its worker processes and slots.

A *slot* is a CPU and that CPU's listening sockets; it outlives the worker processes that
serve it. A *worker* is one process in one generation serving one slot; its control channel
is a socketpair read by the master's event loop.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psutil
import structlog

from monolake.supervisor import channel, messages

log = structlog.get_logger()

R = TypeVar("R", bound=messages.Message)

STARTING, READY, DRAINING, STOPPING, FLAPPING, EXITED = (
    "starting",
    "ready",
    "draining",
    "stopping",
    "flapping",
    "exited",
)
# a reload's new worker that is ready but not accepting yet: it waits for its commit
PREPARED = "prepared"
# shown (status, metrics) for a ready worker silent for this many heartbeat intervals: stopped,
# hung or starved, well before the watchdog (heartbeat_timeout) replaces it
UNRESPONSIVE = "unresponsive"
UNRESPONSIVE_AFTER_BEATS = 3


@dataclass
class WorkerProc:
    """One worker process and its control channel."""

    slot: int
    cpu: int | None
    generation: int
    proc: subprocess.Popen[bytes]
    control: socket.socket
    state: str = STARTING
    started: float = field(default_factory=time.monotonic)
    started_wall: float = field(default_factory=time.time)
    last_heartbeat: float = field(default_factory=time.monotonic)
    lag: float = 0.0
    runtime: str = ""
    stats: dict[str, int] = field(default_factory=dict)
    server_stats: dict[str, dict[str, int]] = field(default_factory=dict)
    health: list[dict[str, Any]] = field(default_factory=list)  # per upstream (worker/health)
    upstreams: list[dict[str, Any]] = field(default_factory=list)  # per endpoint, with its state
    rps: float = 0.0
    exit_code: int | None = None
    reader: channel.FrameReader = field(default_factory=channel.FrameReader)
    ready: asyncio.Future[bool] | None = None
    # reply type -> the future its next message resolves, with the message's fds
    replies: dict[type[messages.Message], asyncio.Future[tuple[Any, list[int]]]] = field(default_factory=dict)
    exited: asyncio.Future[int] | None = None
    outbox: channel.Outbox | None = None  # every send goes through it: never blocks the master
    read_queued: bool = False  # a WorkerReadable event waits in the master's queue
    hung: bool = False  # declared hung (watchdog or outbox): being dumped and killed
    accepts: bool = True  # False: spawned for a reload, accepting only once committed
    fail_reason: str = ""
    _ps: psutil.Process | None = None
    _last_rate: tuple[float, int] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, message: messages.Message, fds: list[int] | tuple[int, ...] = ()) -> bool:
        """Write or queue ``message`` without blocking (``channel.Outbox``); False if it will
        not be delivered. The caller keeps its fds either way."""
        if self.outbox is not None and self.outbox.send(messages.encode(message), list(fds)):
            return True
        log.warning(
            "cannot reach worker",
            slot=self.slot,
            pid=self.pid,
            type=message.KIND,
            why="stuck" if self.outbox is not None and self.outbox.stuck else "gone",
        )
        return False

    def expect(self, kind: type[R]) -> asyncio.Future[tuple[R, list[int]]]:
        """A future resolved by the next message of type ``kind`` from this worker, with
        its fds."""
        fut: asyncio.Future[tuple[R, list[int]]] = asyncio.get_running_loop().create_future()
        self.replies[kind] = fut  # keyed by the type it resolves with
        return fut

    def signal(self, signum: int) -> None:
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def on_heartbeat(self, message: messages.Heartbeat) -> None:
        now = time.monotonic()
        self.last_heartbeat = now
        self.lag = message.lag
        self.stats = dict(message.stats)
        self.server_stats = dict(message.servers)
        self.health = list(message.health)
        self.upstreams = list(message.upstreams)
        requests = int(self.stats.get("requests", 0))
        if self._last_rate is not None:
            then, before = self._last_rate
            if now > then:
                self.rps = max(0.0, (requests - before) / (now - then))
        self._last_rate = (now, requests)

    def silence(self, now: float) -> float:
        """Seconds since the last heartbeat (monotonic ``now``)."""
        return max(0.0, now - self.last_heartbeat)

    def current_lag(self, now: float, interval: float) -> float:
        """The lag the worker reported, or, once its next heartbeat is overdue, how overdue it
        is: a worker that stops answering shows a lag that keeps growing, not a frozen one."""
        return max(self.lag, self.silence(now) - interval)

    def unresponsive(self, now: float, interval: float) -> bool:
        return self.state == READY and self.silence(now) > UNRESPONSIVE_AFTER_BEATS * interval

    def resources(self) -> dict[str, Any]:
        """RSS and CPU% from psutil (CPU% is measured since the previous call)."""
        try:
            if self._ps is None:
                self._ps = psutil.Process(self.pid)
                self._ps.cpu_percent(None)
            with self._ps.oneshot():
                return {"rss": self._ps.memory_info().rss, "cpu_percent": self._ps.cpu_percent(None)}
        except (psutil.Error, OSError):
            return {"rss": 0, "cpu_percent": 0.0}


@dataclass
class Slot:
    """A CPU slot: its sockets outlive the workers that serve it."""

    index: int
    cpu: int | None
    sockets: dict[str, socket.socket] = field(default_factory=dict)  # server name -> socket
    worker: WorkerProc | None = None
    restarts: int = 0
    crashes: deque[float] = field(default_factory=lambda: deque(maxlen=64))
    consecutive_crashes: int = 0
    flapping: bool = False
    respawn: asyncio.TimerHandle | None = None
    covered_by: WorkerProc | None = None  # a healthy worker accepting on this slot's sockets

    def backoff(self, initial: float, maximum: float) -> float:
        """Exponential backoff with ±20 % jitter, from the run of consecutive crashes."""
        exp = min(maximum, initial * (2 ** max(0, self.consecutive_crashes - 1)))
        return float(exp * random.uniform(0.8, 1.2))

    def record_crash(self, window: float, threshold: int) -> None:
        now = time.monotonic()
        self.crashes.append(now)
        self.restarts += 1
        self.consecutive_crashes += 1
        recent = [t for t in self.crashes if now - t <= window]
        self.flapping = len(recent) >= threshold


def worker_argv(control_fd: int) -> list[str]:
    """The command line of a worker whose control channel is ``control_fd`` and whose master
    is this process. -P: no working directory on sys.path, so a checkout's monolake/ (the
    symlink package for tools) cannot shadow the installed package and its extensions."""
    return [
        sys.executable,
        "-P",
        "-m",
        "monolake.worker",
        "--control-fd",
        str(control_fd),
        "--master-pid",
        str(os.getpid()),
    ]


def spawn_worker(
    slot: Slot,
    generation: int,
    hello: messages.Hello,
    fds: list[int],
    on_message: Callable[[WorkerProc], None],
    on_stuck: Callable[[WorkerProc, str], None],
    send_deadline: float,
) -> WorkerProc:
    """Start a fresh interpreter for ``slot`` and send it ``hello`` with the slot's fds.
    ``on_stuck(worker, reason)``: its control channel did not drain within ``send_deadline``.

    Either the worker is returned, or no child is left behind: a failure after the process
    started kills and reaps it before the error is raised."""
    master_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)  # only the master talks to systemd
    # glibc malloc, not pymalloc: after a burst of connections it gives the memory back
    # (worker/memtrim.py; docs/http.md "Memory per idle connection"). The operator's own
    # PYTHONMALLOC wins.
    env.setdefault("PYTHONMALLOC", "malloc")
    try:
        proc = subprocess.Popen(
            worker_argv(worker_end.fileno()),
            pass_fds=[worker_end.fileno()],
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=False,
        )
    except BaseException:
        master_end.close()
        raise
    finally:
        worker_end.close()
    try:
        worker = WorkerProc(
            slot=slot.index,
            cpu=slot.cpu,
            generation=generation,
            proc=proc,
            control=master_end,
            accepts=hello.accept,
        )
        loop = asyncio.get_running_loop()
        worker.ready = loop.create_future()
        worker.exited = loop.create_future()
        master_end.setblocking(False)
        worker.outbox = channel.Outbox(master_end, send_deadline, lambda reason: on_stuck(worker, reason))
        worker.send(hello, fds)
        loop.add_reader(master_end.fileno(), on_message, worker)
    except BaseException:
        log.error("worker set-up failed; killing it", pid=proc.pid, slot=slot.index)
        proc.kill()
        proc.wait()
        master_end.close()
        raise
    return worker


def stop_reading(worker: WorkerProc) -> None:
    """Drop the worker's control channel: queued sends, the reader, the socket."""
    if worker.outbox is not None:
        worker.outbox.close()
    loop = asyncio.get_running_loop()
    try:
        loop.remove_reader(worker.control.fileno())
    except (ValueError, OSError):
        pass
    worker.control.close()
    worker.reader.close_fds()


def kill_hard(worker: WorkerProc) -> None:
    if worker.proc.returncode is not None:
        return  # reaped: the pid may belong to another process by now
    worker.signal(signal.SIGKILL)
    try:
        os.kill(worker.pid, signal.SIGCONT)  # a SIGSTOPped process must run to die
    except ProcessLookupError:
        pass
