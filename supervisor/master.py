"""The master process: owns the sockets, supervises one worker per CPU slot, answers the
control socket, reloads.

The master imports no service code: workers are fresh interpreters (``python -m
monolake.worker``) handed their slot's sockets over a control channel. It is single-threaded
(asyncio), which PR_SET_PDEATHSIG in the workers relies on.

Everything it reacts to is an event on one queue (events.py): signals, control commands,
worker channels, timers (respawns, kills, the watchdog's tick). ``Master.handle`` is the
whole lifecycle on one screen; after each event ``reconcile`` moves the actual slots toward
the desired count. A reload is a task that runs a plan (reload.py) and posts ``Reconcile``
when it is done.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from monolake.supervisor import activation, channel, messages, sdnotify, upstreams_api
from monolake.supervisor.accounting import Totals
from monolake.supervisor.admin import AdminServer
from monolake.supervisor.control import ControlServer, run_command
from monolake.supervisor.events import (
    CommandReceived,
    Event,
    Events,
    KillDue,
    Reconcile,
    RespawnDue,
    SignalReceived,
    Tick,
    WorkerReadable,
)
from monolake.supervisor.listeners import Listeners
from monolake.supervisor.workers import (
    DRAINING,
    EXITED,
    FLAPPING,
    PREPARED,
    READY,
    STARTING,
    STOPPING,
    UNRESPONSIVE,
    Slot,
    WorkerProc,
    kill_hard,
    spawn_worker,
    stop_reading,
)

if TYPE_CHECKING:
    from monolake.conf.schema import Config
    from monolake.supervisor.reload import Reloader

log = structlog.get_logger()

COVER_AFTER = 0.5  # a slot whose respawn is this far away gets covered by a healthy worker
# a ready worker's event loop reads its control channel whenever it runs: one that leaves it
# full for this many heartbeat intervals (one more than `unresponsive` takes) is hung
SEND_DEADLINE_BEATS = 4
SEND_DEADLINE_MIN = 2.0
DUMP_GRACE = 2.0  # seconds between SIGABRT (stack dump) and SIGKILL for a hung worker


def allowed_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def resolve_workers(setting: int | str | None, override: int | None) -> int:
    if override:
        return override
    if setting in (None, "auto"):
        return len(allowed_cpus())
    return int(setting)


@dataclass
class ReloadRecord:
    started: float
    duration: float
    ok: bool
    reason: str
    generation: int
    mode: str
    # True: carried over; False: the new generation serves without some slot's state;
    # None: not applicable (the reload failed before a new generation took over)
    state_migrated: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": self.started,
            "duration": round(self.duration, 3),
            "ok": self.ok,
            "reason": self.reason,
            "generation": self.generation,
            "mode": self.mode,
            "state_migrated": self.state_migrated,
        }


@dataclass
class MasterState:
    generation: int = 1
    started: float = field(default_factory=time.time)
    reloads: list[ReloadRecord] = field(default_factory=list)  # the last 100
    reloads_ok: int = 0  # all-time counts, for /metrics
    reloads_failed: int = 0


class Master:
    def __init__(
        self, config: Config, config_path: str | None, workers: int | None = None, pid_file: str | None = None
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.workers_override = workers
        self.pid_file = pid_file if pid_file is not None else config.supervisor.pid_file
        self.listeners = Listeners()
        self.slots: list[Slot] = []
        self.retired: list[WorkerProc] = []  # old generations draining
        self.state = MasterState()
        self.control: ControlServer | None = None
        self.admin: AdminServer | None = None
        self.totals = Totals()  # counters of exited workers, per slot (accounting.py)
        # before any event loop opens fds: LISTEN_FDS names fds 3, 4, ... (activation.py)
        self.inherited = activation.inherited_sockets()
        self.stopping = False
        self._stopped: asyncio.Future[int] | None = None
        # every child this master started and has not reaped yet: the one list of children
        # (status, stop and the watchdog read it), so none can be lost track of
        self._by_pid: dict[int, WorkerProc] = {}
        self.reloader: Reloader | None = None
        self.runtime_upstreams: upstreams_api.UpstreamsApi | None = None  # upstreams_api.for_master
        self.events = Events()
        self.desired = 0  # slots wanted: the config's count, moved by TTIN/TTOU and reloads
        self._removing = False  # a slot removal is draining its worker
        self._tasks: set[asyncio.Task[Any]] = set()  # started by events; kept from the GC

    # ----- slots and workers --------------------------------------------------------------

    def cpu_for(self, index: int) -> int | None:
        if not self.config.runtime.cpu_affinity:
            return None
        cpus = allowed_cpus()
        return cpus[index % len(cpus)]

    def hello(
        self, slot: Slot, generation: int, config: Config, accept: bool = True
    ) -> tuple[messages.Hello, list[int]]:
        mapping, fds = self.listeners.for_slot(config.servers, slot.index)
        return (
            messages.Hello(
                slot=slot.index,
                cpu=slot.cpu,
                generation=generation,
                config=config.to_dict(),
                listeners=mapping,
                accept=accept,
                upstream_overrides=upstreams_api.for_master(self).kept_for(config),
            ),
            fds,
        )

    def spawn(
        self, slot: Slot, generation: int | None = None, config: Config | None = None, accept: bool = True
    ) -> WorkerProc:
        """Start a worker; it is tracked (``_by_pid``) from the moment it exists."""
        if self.stopping:
            raise RuntimeError("the master is stopping: no new workers")
        generation = generation or self.state.generation
        config = config or self.config
        hello, fds = self.hello(slot, generation, config, accept)
        # until it is ready a worker may take reload_timeout to start reading (imports)
        worker = spawn_worker(
            slot,
            generation,
            hello,
            fds,
            self._on_worker_readable,
            self._on_channel_stuck,
            config.supervisor.reload_timeout,
        )
        self._by_pid[worker.pid] = worker
        log.info("worker spawned", slot=slot.index, cpu=slot.cpu, pid=worker.pid, generation=generation)
        return worker

    def start_slot(self, slot: Slot) -> None:
        slot.respawn = None
        if self.stopping:
            return
        try:
            worker = self.spawn(slot)
        except (OSError, RuntimeError) as exc:
            log.error("cannot start a worker; retrying", slot=slot.index, error=str(exc))
            slot.respawn = self.events.later(self.config.supervisor.respawn_backoff_max, RespawnDue(slot))
            return
        self.assign(slot, worker)
        asyncio.get_running_loop().create_task(self._watch_start(worker))

    def assign(self, slot: Slot, worker: WorkerProc) -> None:
        """Make ``worker`` the one serving ``slot``. A different live worker still there (a
        respawn that landed while a reload committed, say) is retired, never dropped."""
        previous = slot.worker
        slot.worker = worker
        if (
            previous is not None
            and previous is not worker
            and previous.state != EXITED
            and previous not in self.retired
        ):
            log.warning(
                "slot had another live worker; retiring it",
                slot=slot.index,
                pid=previous.pid,
                new_pid=worker.pid,
            )
            self.retire(previous, self.config.supervisor.drain_timeout)

    def retire(self, worker: WorkerProc, timeout: float) -> None:
        """Drain ``worker`` (up to ``timeout``, then kill it); it stays listed until reaped.
        Once per worker: retiring a retired one does nothing."""
        if worker in self.retired or worker.state == EXITED:
            return
        self.retired.append(worker)
        if worker.state in (READY, DRAINING):
            worker.state = DRAINING
            worker.send(messages.Drain(timeout=timeout))
        else:  # never served: nothing to drain
            worker.state = DRAINING
            kill_hard(worker)
        asyncio.get_running_loop().create_task(self.await_exit(worker, timeout + 2.0))

    async def _watch_start(self, worker: WorkerProc) -> None:
        """A worker that is not ready within reload_timeout is killed (and counts as a crash)."""
        assert worker.ready is not None
        try:
            await asyncio.wait_for(asyncio.shield(worker.ready), self.config.supervisor.reload_timeout)
        except TimeoutError:
            log.error("worker not ready in time; killing it", slot=worker.slot, pid=worker.pid)
            kill_hard(worker)
        except Exception:
            pass

    def _on_worker_readable(self, worker: WorkerProc) -> None:
        """The loop's reader callback: queue one read (the consumer does it, in order with
        every other event; level-triggered, so nothing is lost meanwhile)."""
        if not worker.read_queued:
            worker.read_queued = True
            self.events.post(WorkerReadable(worker))

    def _read_worker(self, worker: WorkerProc) -> None:
        worker.read_queued = False
        if worker.control.fileno() < 0:
            return  # its exit was handled first (and read what was left)
        try:
            alive = channel.recv_into(worker.control, worker.reader)
        except (BlockingIOError, InterruptedError):
            return
        except (OSError, channel.ChannelError) as exc:
            log.warning("worker control channel broken", slot=worker.slot, pid=worker.pid, error=str(exc))
            alive = False
        if not alive:
            stop_reading(worker)
            return
        while (got := worker.reader.next_message()) is not None:
            self._receive(worker, *got)

    def _receive(self, worker: WorkerProc, raw: dict[str, Any], fds: list[int]) -> None:
        """Decode one frame from ``worker``; one that is not a valid message is logged and
        refused (its fds closed), and the worker is served on."""
        try:
            message = messages.decode(messages.TO_MASTER, raw)
        except messages.MessageError as exc:
            log.warning(
                "control message refused",
                slot=worker.slot,
                pid=worker.pid,
                type=str(raw.get("type"))[:64],
                error=str(exc)[:500],
            )
            channel.close_fds(fds)
            return
        self._dispatch(worker, message, fds)

    def _dispatch(self, worker: WorkerProc, message: messages.Message, fds: list[int]) -> None:
        if isinstance(message, messages.Heartbeat):
            worker.on_heartbeat(message)
            return
        if isinstance(message, messages.UpstreamsResult):  # the runtime upstream API
            upstreams_api.for_master(self).on_result(worker, messages.as_dict(message))
            return
        if isinstance(message, messages.Ready):
            worker.last_heartbeat = time.monotonic()  # alive now: its heartbeats start here
            if worker.outbox is not None:
                worker.outbox.deadline = self.send_deadline()
            worker.runtime = message.runtime
            if worker.state == STARTING:
                worker.state = READY if worker.accepts else PREPARED
            if worker.ready is not None and not worker.ready.done():
                worker.ready.set_result(True)
            if worker.slot < len(self.slots) and self.slots[worker.slot].worker is worker:
                self.uncover(self.slots[worker.slot])
            log.info(
                "worker ready",
                slot=worker.slot,
                pid=worker.pid,
                runtime=worker.runtime,
                generation=worker.generation,
            )
        elif isinstance(message, messages.Failed):
            worker.fail_reason = message.reason or "unknown"
            log.error("worker failed", slot=worker.slot, pid=worker.pid, reason=worker.fail_reason)
            if worker.ready is not None and not worker.ready.done():
                worker.ready.set_exception(RuntimeError(worker.fail_reason))
        elif isinstance(message, (messages.State, messages.Committed)):
            self._account_reload(worker, message)
        fut = worker.replies.pop(type(message), None)
        if fut is not None and not fut.done():
            fut.set_result((message, fds))
        else:
            channel.close_fds(fds)

    def _account_reload(self, worker: WorkerProc, message: messages.State | messages.Committed) -> None:
        """Counters across a reload (accounting.py): the old worker's figures at export, the
        new worker's right after it imported them."""
        servers = message.servers
        if isinstance(message, messages.State):
            self.totals.exported(worker.pid, servers)
            return
        worker.server_stats = dict(servers)
        worker.stats = {}
        for stats in servers.values():
            for key, value in stats.items():
                worker.stats[key] = worker.stats.get(key, 0) + value
        worker._last_rate = (time.monotonic(), int(worker.stats.get("requests", 0)))
        old = self.slots[worker.slot].worker if worker.slot < len(self.slots) else None
        if old is not None and old is not worker:
            self.totals.committed(old.pid, servers)

    def _read_remaining(self, worker: WorkerProc) -> None:
        """What an exiting worker sent last (its final stats) may still be unread."""
        for _ in range(64):
            if worker.control.fileno() < 0:
                return
            try:
                alive = channel.recv_into(worker.control, worker.reader)
            except (OSError, channel.ChannelError):
                return
            while (got := worker.reader.next_message()) is not None:
                self._receive(worker, *got)
            if not alive:
                return

    def reap(self) -> None:
        """SIGCHLD: collect every exited child and decide what its slot needs."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self._by_pid.pop(pid, None)
            if worker is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            worker.proc.returncode = code
            self._on_exit(worker, code)

    def _on_exit(self, worker: WorkerProc, code: int) -> None:
        self._read_remaining(worker)
        self.totals.worker_exited(worker.slot, worker.pid, worker.server_stats)
        previous_state = worker.state
        worker.state = EXITED
        worker.exit_code = code
        stop_reading(worker)
        if worker.exited is not None and not worker.exited.done():
            worker.exited.set_result(code)
        if worker.ready is not None and not worker.ready.done():
            worker.ready.set_exception(
                RuntimeError(worker.fail_reason or f"worker exited with code {code} before it was ready")
            )
        for fut in worker.replies.values():
            if not fut.done():
                fut.set_exception(RuntimeError(f"worker exited with code {code}"))
        worker.replies.clear()
        if worker in self.retired:
            self.retired.remove(worker)
            log.info(
                "old worker exited", slot=worker.slot, pid=worker.pid, code=code, generation=worker.generation
            )
            return
        slot = self.slots[worker.slot] if worker.slot < len(self.slots) else None
        if slot is None or slot.worker is not worker:
            return  # a prepared worker of an aborted reload, or a retired slot
        if self.stopping or previous_state in (STOPPING, DRAINING):
            log.info("worker exited", slot=worker.slot, pid=worker.pid, code=code)
            return
        self.schedule_respawn(slot, worker, code)

    def schedule_respawn(self, slot: Slot, worker: WorkerProc, code: int) -> None:
        sup = self.config.supervisor
        if time.monotonic() - worker.started >= max(10.0, sup.respawn_backoff_max):
            slot.consecutive_crashes = 0  # it ran fine for a while: start the backoff over
        slot.record_crash(sup.flapping_window, sup.flapping_threshold)
        delay = slot.backoff(sup.respawn_backoff_initial, sup.respawn_backoff_max)
        log.error(
            "worker died; respawning",
            slot=slot.index,
            cpu=slot.cpu,
            pid=worker.pid,
            code=code,
            delay=round(delay, 3),
            restarts=slot.restarts,
            flapping=slot.flapping,
        )
        slot.respawn = self.events.later(delay, RespawnDue(slot))
        if delay >= COVER_AFTER or slot.flapping:
            self.cover(slot)

    def cover(self, slot: Slot) -> None:
        """Have a healthy worker accept on ``slot``'s sockets until ``slot`` is back, so the
        connections the kernel hashes to its queue are served, not left waiting."""
        if slot.covered_by is not None and slot.covered_by.state == READY:
            return
        for other in self.slots:
            worker = other.worker
            if other is slot or worker is None or worker.state != READY:
                continue
            mapping, fds = self.listeners.for_slot(self.config.servers, slot.index, existing_only=True)
            if worker.send(messages.Cover(slot=slot.index, listeners=mapping), fds):
                slot.covered_by = worker
                log.info(
                    "slot covered by a healthy worker",
                    slot=slot.index,
                    covering_slot=other.index,
                    pid=worker.pid,
                )
            return

    def uncover(self, slot: Slot) -> None:
        if slot.covered_by is not None:
            if slot.covered_by.state == READY:
                slot.covered_by.send(messages.Uncover(slot=slot.index))
            slot.covered_by = None

    def add_slot(self) -> Slot:
        index = len(self.slots)
        slot = Slot(index=index, cpu=self.cpu_for(index))
        self.listeners.ensure(self.config.servers, index + 1)
        self.slots.append(slot)
        return slot

    async def remove_slot(self) -> None:
        if len(self.slots) <= 1:
            log.warning("refusing to remove the last worker")
            return
        slot = self.slots[-1]
        if slot.respawn is not None:
            slot.respawn.cancel()
        # a healthy worker serves the retired slot's queue until its socket closes
        self.cover(slot)
        self.slots.pop()
        if slot.worker is not None and slot.worker.state != EXITED:
            worker = slot.worker
            self.retire(worker, self.config.supervisor.drain_timeout)
            await self.await_exit(worker, self.config.supervisor.drain_timeout + 2)
        self.close_retired_slots([slot])
        log.info("worker slot removed", slot=slot.index)

    def close_retired_slots(self, retired: list[Slot]) -> None:
        """Close the sockets of slots that no longer exist. The master's copy goes first and
        the covering worker's last, so the socket lives until nobody can accept on it. A
        connection that lands in the queue in that last instant is reset unless the kernel
        migrates it (``net.ipv4.tcp_migrate_req = 1``)."""
        self.listeners.prune(self.config.servers, len(self.slots))
        for slot in retired:
            self.uncover(slot)

    async def await_exit(self, worker: WorkerProc, within: float) -> None:
        assert worker.exited is not None
        try:
            await asyncio.wait_for(asyncio.shield(worker.exited), within)
        except TimeoutError:
            log.warning("worker did not exit in time; killing it", slot=worker.slot, pid=worker.pid)
            kill_hard(worker)
            try:
                await asyncio.wait_for(asyncio.shield(worker.exited), 5)
            except TimeoutError:
                log.error("worker survived SIGKILL", pid=worker.pid)

    # ----- watchdog -------------------------------------------------------------------------

    async def watchdog(self) -> None:
        """The watchdog's clock: a ``Tick`` every heartbeat interval (at most 1 s)."""
        while True:
            await asyncio.sleep(min(1.0, self.config.supervisor.heartbeat_interval))
            self.events.post(Tick())

    def check_heartbeats(self) -> None:
        """A worker whose event loop stopped answering is dumped and replaced."""
        sup = self.config.supervisor
        now = time.monotonic()
        for worker in self.live_workers():
            if worker.state not in (READY, PREPARED, DRAINING):
                continue
            if now - worker.last_heartbeat > sup.heartbeat_timeout:
                self.declare_hung(
                    worker, "worker heartbeat missed", silent_for=round(now - worker.last_heartbeat, 2)
                )

    def send_deadline(self) -> float:
        """How long a ready worker may leave its control channel full (``channel.Outbox``)."""
        sup = self.config.supervisor
        return float(
            min(sup.heartbeat_timeout, max(SEND_DEADLINE_MIN, SEND_DEADLINE_BEATS * sup.heartbeat_interval))
        )

    def _on_channel_stuck(self, worker: WorkerProc, reason: str) -> None:
        """The worker does not read what the master sends it: hung, like a silent one."""
        self.declare_hung(worker, "worker does not drain its control channel", reason=reason)

    def declare_hung(self, worker: WorkerProc, why: str, **fields: Any) -> None:
        """The one path for a hung worker: dump its stacks (SIGABRT: faulthandler writes every
        thread's), SIGKILL it ``DUMP_GRACE`` s later; its exit is then handled like any other
        (a slot's worker is respawned). Never waits on it."""
        if worker.hung or worker.state == EXITED:
            return
        worker.hung = True
        log.error(
            f"{why}; dumping its stacks and killing it",
            slot=worker.slot,
            pid=worker.pid,
            generation=worker.generation,
            **fields,
        )
        worker.signal(signal.SIGABRT)
        self.events.later(DUMP_GRACE, KillDue(worker))

    def live_workers(self) -> list[WorkerProc]:
        """Every child not reaped yet, whatever its role: slot workers, draining ones, a
        reload's prepared or aborted ones (the pid table holds them all; slots and retired
        are read too, in that order, so a worker placed there directly is never missed)."""
        found: dict[int, WorkerProc] = {}
        for worker in [
            *(s.worker for s in self.slots if s.worker is not None),
            *self.retired,
            *self._by_pid.values(),
        ]:
            if worker.state != EXITED:
                found.setdefault(id(worker), worker)
        return list(found.values())

    # ----- status -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        rows = [self._row(slot, slot.worker, now) for slot in self.slots]
        serving = {id(slot.worker) for slot in self.slots if slot.worker is not None}
        for worker in self.live_workers():  # draining, or a reload's: listed until reaped
            if id(worker) not in serving:
                rows.append(self._row(None, worker, now))
        return {
            "master": {
                "pid": os.getpid(),
                "uptime": round(time.time() - self.state.started, 3),
                "config": self.config_path or "(embedded default)",
                "generation": self.state.generation,
                "workers": len(self.slots),
                "listeners": self.listeners.addresses(),
                "reloading": bool(self.reloader and self.reloader.busy),
                "admin": self.admin.address if self.admin is not None else "",
                "reloads": [r.to_dict() for r in self.state.reloads[-20:]],
            },
            "workers": rows,
        }

    def _row(self, slot: Slot | None, worker: WorkerProc | None, now: float) -> dict[str, Any]:
        state = worker.state if worker is not None else EXITED
        if slot is not None and slot.flapping and (worker is None or worker.state in (EXITED, STARTING)):
            state = FLAPPING
        beat = self.config.supervisor.heartbeat_interval
        live = worker is not None and worker.state != EXITED
        if live and worker is not None and worker.unresponsive(now, beat):
            state = UNRESPONSIVE
        row: dict[str, Any] = {
            "slot": slot.index if slot is not None else (worker.slot if worker else None),
            "cpu": slot.cpu if slot is not None else (worker.cpu if worker else None),
            "pid": worker.pid if worker is not None and worker.state != EXITED else None,
            "generation": worker.generation if worker is not None else None,
            "state": state,
            "uptime": round(now - worker.started, 3) if worker is not None and worker.state != EXITED else 0,
            "restarts": slot.restarts if slot is not None else 0,
            "runtime": worker.runtime if worker is not None else "",
            "lag": round(worker.current_lag(now, beat), 6) if live and worker else 0.0,
            "heartbeat_age": round(worker.silence(now), 3) if live and worker else None,
            "open_connections": int(worker.stats.get("open_connections", 0)) if worker else 0,
            "requests": int(worker.stats.get("requests", 0)) if worker else 0,
            "rps": round(worker.rps, 1) if worker else 0.0,
            "stats": dict(worker.stats) if worker else {},
            "health": list(getattr(worker, "health", ())) if worker else [],
            "upstreams": list(getattr(worker, "upstreams", ())) if worker else [],
        }
        if worker is not None and worker.state != EXITED:
            row.update(worker.resources())
        else:
            row.update({"rss": 0, "cpu_percent": 0.0})
        return row

    async def debug_worker(self, index: int, collect: bool, within: float = 10.0) -> dict[str, Any]:
        """Ask slot ``index``'s worker what it holds (worker/introspect.py)."""
        if not 0 <= index < len(self.slots):
            raise LookupError(f"no slot {index} (there are {len(self.slots)})")
        worker = self.slots[index].worker
        if worker is None or worker.state != READY:
            raise RuntimeError(f"slot {index} has no ready worker")
        if messages.DebugReport in worker.replies:
            raise RuntimeError(f"a debug request to slot {index} is already waiting")
        reply = worker.expect(messages.DebugReport)
        if not worker.send(messages.DebugRequest(collect=collect)):
            worker.replies.pop(messages.DebugReport, None)
            raise RuntimeError(f"slot {index}'s worker cannot be reached")
        try:
            message, _ = await asyncio.wait_for(reply, within)
        finally:
            worker.replies.pop(messages.DebugReport, None)
        return {"slot": index, "pid": worker.pid, "generation": worker.generation, **message.report}

    # ----- signals and stop ---------------------------------------------------------------

    # ----- the event loop: the whole lifecycle ---------------------------------------------

    SIGNALS = (
        signal.SIGCHLD,
        signal.SIGTERM,
        signal.SIGINT,
        signal.SIGQUIT,
        signal.SIGHUP,
        signal.SIGUSR1,
        signal.SIGTTIN,
        signal.SIGTTOU,
    )

    def install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in self.SIGNALS:
            loop.add_signal_handler(signum, self.events.post, SignalReceived(signum))

    async def consume(self) -> None:
        """The one consumer of the event queue."""
        while True:
            event = await self.events.get()
            try:
                self.handle(event)
            except Exception:
                log.exception("event handling failed", event=type(event).__name__)

    def handle(self, event: Event) -> None:
        """One event: what the master does about it, then reconcile."""
        match event:
            case SignalReceived(signal.SIGCHLD):
                self.reap()  # each exited child: respawn its slot, or forget it
            case SignalReceived(signal.SIGTERM | signal.SIGINT):
                self.request_stop(True)  # drain every worker, then exit
            case SignalReceived(signal.SIGQUIT):
                self.request_stop(False)
            case SignalReceived(signal.SIGHUP):
                self.request_reload()  # a task running reload.py's plan
            case SignalReceived(signal.SIGUSR1):
                self.reopen_logs()
            case SignalReceived(signal.SIGTTIN):
                self.desired = max(self.desired, len(self.slots)) + 1
                log.info("SIGTTIN: adding a worker", desired=self.desired)
            case SignalReceived(signal.SIGTTOU):
                self.desired = max(1, min(self.desired, len(self.slots)) - 1)
                log.info("SIGTTOU: removing a worker", desired=self.desired)
            case CommandReceived(request, reply):
                self._spawn_task(self._answer(request, reply))  # control.py's commands
            case WorkerReadable(worker):
                self._read_worker(worker)  # ready, heartbeat, replies (messages.py)
            case RespawnDue(slot):
                self.start_slot(slot)
            case KillDue(worker):
                kill_hard(worker)
            case Tick():
                self.check_heartbeats()
            case Reconcile():
                pass
        self.reconcile()

    def reconcile(self) -> None:
        """Desired vs actual slot count: add a slot, or start removing one. Not while a reload
        or a stop runs (they set the slots themselves) or a removal drains."""
        if self.stopping or self._removing or (self.reloader and self.reloader.busy):
            return
        while len(self.slots) < self.desired:
            try:
                slot = self.add_slot()
            except OSError as exc:
                log.error("cannot add a worker", error=str(exc))
                self.desired = len(self.slots)
                return
            log.info("worker slot added", slot=slot.index, cpu=slot.cpu)
            self.start_slot(slot)
        if len(self.slots) > max(1, self.desired):
            self._removing = True
            self._spawn_task(self._remove_one())

    async def _remove_one(self) -> None:
        try:
            await self.remove_slot()
        finally:
            self._removing = False
            self.events.post(Reconcile())

    async def command(self, request: dict[str, Any]) -> dict[str, Any]:
        """A control-socket request, through the queue; its reply."""
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.events.post(CommandReceived(request, reply))
        return await reply

    async def _answer(self, request: dict[str, Any], reply: asyncio.Future[dict[str, Any]]) -> None:
        try:
            result = await run_command(self, request)
        except Exception as exc:
            if not reply.done():
                reply.set_exception(exc)
            return
        if not reply.done():
            reply.set_result(result)

    def _spawn_task(self, coro: Coroutine[Any, Any, object]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def broadcast(self, message: messages.Message) -> None:
        """Send ``message`` to every live worker (a runtime command for all of them)."""
        for worker in self.live_workers():
            worker.send(message)

    def request_reload(self) -> None:
        log.info("SIGHUP: reload requested")
        if self.reloader is None:  # run() makes it; a signal cannot come earlier
            log.warning("reload requested before the master runs; ignored")
            return
        self._spawn_task(self.reloader.reload())

    def reopen_logs(self) -> None:
        from monolake.supervisor import logs

        logs.reopen()
        for worker in self.live_workers():
            worker.signal(signal.SIGUSR1)
        log.info("log files reopened")

    def request_stop(self, graceful: bool = True) -> None:
        if self.stopping:
            if not graceful:
                for worker in self.live_workers():
                    kill_hard(worker)
            return
        self.stopping = True
        asyncio.get_running_loop().create_task(self._stop(graceful))

    async def _stop(self, graceful: bool) -> None:
        sdnotify.notify("STOPPING=1")
        timeout = self.config.supervisor.graceful_timeout if graceful else 0.0
        log.info("stopping", graceful=graceful, timeout=timeout)
        for slot in self.slots:
            if slot.respawn is not None:
                slot.respawn.cancel()
        workers = self.live_workers()
        for worker in workers:
            worker.state = STOPPING
            if graceful:
                worker.send(messages.Stop(timeout=timeout))
            else:
                worker.signal(signal.SIGQUIT)
        await asyncio.gather(*(self.await_exit(w, timeout + 2.0) for w in workers))
        late = [w for w in self.live_workers() if w not in workers]
        if late:  # started while the stop began (spawn refuses after): never left behind
            for worker in late:
                kill_hard(worker)
            await asyncio.gather(*(self.await_exit(w, 5.0) for w in late))
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(0)

    # ----- main ---------------------------------------------------------------------------

    async def run(self, started: Callable[[bool, str], None] | None = None) -> int:
        """Serve until stopped; ``started(ok, message)`` is called once the first workers are up."""
        from monolake.supervisor.reload import Reloader

        loop = asyncio.get_running_loop()
        self._stopped = loop.create_future()
        self.reloader = Reloader(self, on_done=lambda: self.events.post(Reconcile()))
        nslots = resolve_workers(self.config.runtime.workers, self.workers_override)
        try:
            self.listeners.adopt(activation.match(self.inherited, self.config.servers))
            self.listeners.ensure(self.config.servers, nslots)
            self.control = ControlServer(self.config.supervisor.control_socket, self)
            await self.control.start()
            self.admin = AdminServer(self)
            await self.admin.start()
        except OSError as exc:
            log.error("cannot start", error=str(exc))
            if self.control is not None:
                await self.control.close()
            self.listeners.close_all()
            if started:
                started(False, str(exc))
            return 1
        self.write_pid_file()
        self.install_signals()
        consumer = loop.create_task(self.consume())
        self.desired = nslots
        self.slots = [Slot(index=i, cpu=self.cpu_for(i)) for i in range(nslots)]
        for slot in self.slots:
            self.start_slot(slot)
        log.info(
            "master started",
            pid=os.getpid(),
            workers=nslots,
            listeners=self.listeners.addresses(),
            config=self.config_path or "(embedded)",
        )
        ready = [s.worker.ready for s in self.slots if s.worker is not None and s.worker.ready]
        done, _ = await asyncio.wait(ready, timeout=self.config.supervisor.reload_timeout)
        failed = sum(1 for f in done if f.exception() is not None) + (len(ready) - len(done))
        sdnotify.notify(
            "READY=1", f"STATUS=serving with {nslots - failed} of {nslots} workers", f"MAINPID={os.getpid()}"
        )
        if started:
            started(failed < nslots, f"{nslots - failed} of {nslots} workers ready")
        watchdog = loop.create_task(self.watchdog())
        try:
            return await self._stopped
        finally:
            watchdog.cancel()
            consumer.cancel()
            await self.cleanup()

    async def cleanup(self) -> None:
        if self.admin is not None:
            await self.admin.close()
        if self.control is not None:
            await self.control.close()
        self.listeners.close_all()
        self.remove_pid_file()
        log.info("master stopped")

    def write_pid_file(self) -> None:
        if not self.pid_file:
            return
        tmp = f"{self.pid_file}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, self.pid_file)

    def remove_pid_file(self) -> None:
        if self.pid_file:
            try:
                os.unlink(self.pid_file)
            except OSError:
                pass
