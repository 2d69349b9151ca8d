"""The master process: owns the sockets, supervises one worker per CPU slot, answers the
control socket, reloads.

The master imports no service code: workers are fresh interpreters (``python -m
monolake.worker``) handed their slot's sockets over a control channel. It is single-threaded
(asyncio), which PR_SET_PDEATHSIG in the workers relies on.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from monolake.supervisor import activation, channel, sdnotify, upstreams_api
from monolake.supervisor.accounting import Totals
from monolake.supervisor.admin import AdminServer
from monolake.supervisor.control import ControlServer
from monolake.supervisor.listeners import Listeners
from monolake.supervisor.workers import (
    DRAINING, EXITED, FLAPPING, PREPARED, READY, STARTING, STOPPING, UNRESPONSIVE, Slot,
    WorkerProc, kill_hard, spawn_worker, stop_reading)

log = structlog.get_logger()

COVER_AFTER = 0.5  # a slot whose respawn is this far away gets covered by a healthy worker
# a ready worker's event loop reads its control channel whenever it runs: one that leaves it
# full for this many heartbeat intervals (one more than `unresponsive` takes) is hung
SEND_DEADLINE_BEATS = 4
SEND_DEADLINE_MIN = 2.0
DUMP_GRACE = 2.0  # seconds between SIGABRT (stack dump) and SIGKILL for a hung worker


def allowed_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def resolve_workers(setting: Any, override: int | None) -> int:
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
        return {"time": self.started, "duration": round(self.duration, 3), "ok": self.ok,
                "reason": self.reason, "generation": self.generation, "mode": self.mode,
                "state_migrated": self.state_migrated}


@dataclass
class MasterState:
    generation: int = 1
    started: float = field(default_factory=time.time)
    reloads: list[ReloadRecord] = field(default_factory=list)  # the last 100
    reloads_ok: int = 0       # all-time counts, for /metrics
    reloads_failed: int = 0


class Master:
    def __init__(self, config: Any, config_path: str | None, workers: int | None = None,
                 pid_file: str | None = None) -> None:
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
        self.reloader: Any = None

    # ----- slots and workers --------------------------------------------------------------

    def cpu_for(self, index: int) -> int | None:
        if not self.config.runtime.cpu_affinity:
            return None
        cpus = allowed_cpus()
        return cpus[index % len(cpus)]

    def hello(self, slot: Slot, generation: int, config: Any, accept: bool = True
              ) -> tuple[dict[str, Any], list[int]]:
        mapping, fds = self.listeners.for_slot(config.servers, slot.index)
        return ({"type": "hello", "slot": slot.index, "cpu": slot.cpu, "generation": generation,
                 "config": config.to_dict(), "listeners": mapping, "accept": accept,
                 **upstreams_api.for_master(self).hello_fields(config)}, fds)

    def spawn(self, slot: Slot, generation: int | None = None, config: Any = None,
              accept: bool = True) -> WorkerProc:
        """Start a worker; it is tracked (``_by_pid``) from the moment it exists."""
        if self.stopping:
            raise RuntimeError("the master is stopping: no new workers")
        generation = generation or self.state.generation
        config = config or self.config
        hello, fds = self.hello(slot, generation, config, accept)
        # until it is ready a worker may take reload_timeout to start reading (imports)
        worker = spawn_worker(slot, generation, hello, fds, self._on_worker_message,
                              self._on_channel_stuck, config.supervisor.reload_timeout)
        self._by_pid[worker.pid] = worker
        log.info("worker spawned", slot=slot.index, cpu=slot.cpu, pid=worker.pid,
                 generation=generation)
        return worker

    def start_slot(self, slot: Slot) -> None:
        slot.respawn = None
        if self.stopping:
            return
        try:
            worker = self.spawn(slot)
        except (OSError, RuntimeError) as exc:
            log.error("cannot start a worker; retrying", slot=slot.index, error=str(exc))
            slot.respawn = asyncio.get_running_loop().call_later(
                self.config.supervisor.respawn_backoff_max, self.start_slot, slot)
            return
        self.assign(slot, worker)
        asyncio.get_running_loop().create_task(self._watch_start(worker))

    def assign(self, slot: Slot, worker: WorkerProc) -> None:
        """Make ``worker`` the one serving ``slot``. A different live worker still there (a
        respawn that landed while a reload committed, say) is retired, never dropped."""
        previous = slot.worker
        slot.worker = worker
        if previous is not None and previous is not worker and previous.state != EXITED \
                and previous not in self.retired:
            log.warning("slot had another live worker; retiring it", slot=slot.index,
                        pid=previous.pid, new_pid=worker.pid)
            self.retire(previous, self.config.supervisor.drain_timeout)

    def retire(self, worker: WorkerProc, timeout: float) -> None:
        """Drain ``worker`` (up to ``timeout``, then kill it); it stays listed until reaped.
        Once per worker: retiring a retired one does nothing."""
        if worker in self.retired or worker.state == EXITED:
            return
        self.retired.append(worker)
        if worker.state in (READY, DRAINING):
            worker.state = DRAINING
            worker.send({"type": "drain", "timeout": timeout})
        else:  # never served: nothing to drain
            worker.state = DRAINING
            kill_hard(worker)
        asyncio.get_running_loop().create_task(self._await_exit(worker, timeout + 2.0))

    async def _watch_start(self, worker: WorkerProc) -> None:
        """A worker that is not ready within reload_timeout is killed (and counts as a crash)."""
        assert worker.ready is not None
        try:
            await asyncio.wait_for(asyncio.shield(worker.ready), self.config.supervisor.reload_timeout)
        except asyncio.TimeoutError:
            log.error("worker not ready in time; killing it", slot=worker.slot, pid=worker.pid)
            kill_hard(worker)
        except Exception:  # noqa: BLE001 - failures are handled by the exit path
            pass

    def _on_worker_message(self, worker: WorkerProc) -> None:
        try:
            alive = channel.recv_into(worker.control, worker.reader)
        except (BlockingIOError, InterruptedError):
            return
        except (OSError, channel.ChannelError) as exc:
            log.warning("worker control channel broken", slot=worker.slot, pid=worker.pid,
                        error=str(exc))
            alive = False
        if not alive:
            stop_reading(worker)
            return
        while (got := worker.reader.next_message()) is not None:
            message, fds = got
            self._dispatch(worker, message, fds)

    def _dispatch(self, worker: WorkerProc, message: dict[str, Any], fds: list[int]) -> None:
        kind = message["type"]
        if kind == "heartbeat":
            worker.on_heartbeat(message)
            return
        if kind == "upstreams_result":  # the runtime upstream API (supervisor/upstreams_api.py)
            upstreams_api.for_master(self).on_result(worker, message)
            return
        if kind == "ready":
            worker.last_heartbeat = time.monotonic()  # alive now: its heartbeats start here
            if worker.outbox is not None:
                worker.outbox.deadline = self.send_deadline()
            worker.runtime = str(message.get("runtime", ""))
            if worker.state == STARTING:
                worker.state = READY if worker.accepts else PREPARED
            if worker.ready is not None and not worker.ready.done():
                worker.ready.set_result(True)
            if worker.slot < len(self.slots) and self.slots[worker.slot].worker is worker:
                self.uncover(self.slots[worker.slot])
            log.info("worker ready", slot=worker.slot, pid=worker.pid, runtime=worker.runtime,
                     generation=worker.generation)
        elif kind == "failed":
            worker.fail_reason = str(message.get("reason", "unknown"))
            log.error("worker failed", slot=worker.slot, pid=worker.pid, reason=worker.fail_reason)
            if worker.ready is not None and not worker.ready.done():
                worker.ready.set_exception(RuntimeError(worker.fail_reason))
        elif kind in ("state", "committed"):
            self._account_reload(worker, kind, message)
        fut = worker.replies.pop(kind, None)
        if fut is not None and not fut.done():
            fut.set_result((message, fds))
        elif fds:
            for fd in fds:
                os.close(fd)

    def _account_reload(self, worker: WorkerProc, kind: str, message: dict[str, Any]) -> None:
        """Counters across a reload (accounting.py): the old worker's figures at export, the
        new worker's right after it imported them."""
        servers = message.get("servers")
        if kind == "state":
            self.totals.exported(worker.pid, servers if servers is not None else worker.server_stats)
            return
        if servers is not None:
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
                self._dispatch(worker, *got)
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
            worker.ready.set_exception(RuntimeError(
                worker.fail_reason or f"worker exited with code {code} before it was ready"))
        for fut in worker.replies.values():
            if not fut.done():
                fut.set_exception(RuntimeError(f"worker exited with code {code}"))
        worker.replies.clear()
        if worker in self.retired:
            self.retired.remove(worker)
            log.info("old worker exited", slot=worker.slot, pid=worker.pid, code=code,
                     generation=worker.generation)
            return
        slot = self.slots[worker.slot] if worker.slot < len(self.slots) else None
        if slot is None or slot.worker is not worker:
            return  # a prepared worker of an aborted reload, or a retired slot
        if self.stopping or previous_state in (STOPPING, DRAINING):
            log.info("worker exited", slot=worker.slot, pid=worker.pid, code=code)
            return
        self._schedule_respawn(slot, worker, code)

    def _schedule_respawn(self, slot: Slot, worker: WorkerProc, code: int) -> None:
        sup = self.config.supervisor
        if time.monotonic() - worker.started >= max(10.0, sup.respawn_backoff_max):
            slot.consecutive_crashes = 0  # it ran fine for a while: start the backoff over
        slot.record_crash(sup.flapping_window, sup.flapping_threshold)
        delay = slot.backoff(sup.respawn_backoff_initial, sup.respawn_backoff_max)
        slot.next_respawn = time.monotonic() + delay
        log.error("worker died; respawning", slot=slot.index, cpu=slot.cpu, pid=worker.pid,
                  code=code, delay=round(delay, 3), restarts=slot.restarts,
                  flapping=slot.flapping)
        slot.respawn = asyncio.get_running_loop().call_later(delay, self.start_slot, slot)
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
            mapping, fds = self.listeners.for_slot(self.config.servers, slot.index,
                                                   existing_only=True)
            if worker.send({"type": "cover", "slot": slot.index, "listeners": mapping}, fds):
                slot.covered_by = worker
                log.info("slot covered by a healthy worker", slot=slot.index,
                         covering_slot=other.index, pid=worker.pid)
            return

    def uncover(self, slot: Slot) -> None:
        if slot.covered_by is not None:
            if slot.covered_by.state == READY:
                slot.covered_by.send({"type": "uncover", "slot": slot.index})
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
            await self._await_exit(worker, self.config.supervisor.drain_timeout + 2)
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

    async def _await_exit(self, worker: WorkerProc, timeout: float) -> None:
        assert worker.exited is not None
        try:
            await asyncio.wait_for(asyncio.shield(worker.exited), timeout)
        except asyncio.TimeoutError:
            log.warning("worker did not exit in time; killing it", slot=worker.slot, pid=worker.pid)
            kill_hard(worker)
            try:
                await asyncio.wait_for(asyncio.shield(worker.exited), 5)
            except asyncio.TimeoutError:
                log.error("worker survived SIGKILL", pid=worker.pid)

    # ----- watchdog -------------------------------------------------------------------------

    async def watchdog(self) -> None:
        """Heartbeats: a worker whose event loop stopped answering is dumped and replaced."""
        sup = self.config.supervisor
        while True:
            await asyncio.sleep(min(1.0, sup.heartbeat_interval))
            now = time.monotonic()
            for worker in self.live_workers():
                if worker.state not in (READY, PREPARED, DRAINING):
                    continue
                if now - worker.last_heartbeat > sup.heartbeat_timeout:
                    self.declare_hung(worker, "worker heartbeat missed",
                                      silent_for=round(now - worker.last_heartbeat, 2))

    def send_deadline(self) -> float:
        """How long a ready worker may leave its control channel full (``channel.Outbox``)."""
        sup = self.config.supervisor
        return min(sup.heartbeat_timeout,
                   max(SEND_DEADLINE_MIN, SEND_DEADLINE_BEATS * sup.heartbeat_interval))

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
        log.error(f"{why}; dumping its stacks and killing it", slot=worker.slot, pid=worker.pid,
                  generation=worker.generation, **fields)
        worker.signal(signal.SIGABRT)
        asyncio.get_running_loop().call_later(DUMP_GRACE, kill_hard, worker)

    def live_workers(self) -> list[WorkerProc]:
        """Every child not reaped yet, whatever its role: slot workers, draining ones, a
        reload's prepared or aborted ones (the pid table holds them all; slots and retired
        are read too, in that order, so a worker placed there directly is never missed)."""
        found: dict[int, WorkerProc] = {}
        for worker in [*(s.worker for s in self.slots if s.worker is not None), *self.retired,
                       *self._by_pid.values()]:
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
        if live and worker.unresponsive(now, beat):
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
            "lag": round(worker.current_lag(now, beat), 6) if live else 0.0,
            "heartbeat_age": round(worker.silence(now), 3) if live else None,
            "open_connections": int(worker.stats.get("open_connections", 0)) if worker else 0,
            "requests": int(worker.stats.get("requests", 0)) if worker else 0,
            "rps": round(worker.rps, 1) if worker else 0.0,
            "stats": dict(worker.stats) if worker else {},
            "health": list(getattr(worker, "health", ())) if worker else [],
        }
        if worker is not None and worker.state != EXITED:
            row.update(worker.resources())
        else:
            row.update({"rss": 0, "cpu_percent": 0.0})
        return row

    async def debug_worker(self, index: int, collect: bool, timeout: float = 10.0
                           ) -> dict[str, Any]:
        """Ask slot ``index``'s worker what it holds (worker/introspect.py)."""
        if not 0 <= index < len(self.slots):
            raise LookupError(f"no slot {index} (there are {len(self.slots)})")
        worker = self.slots[index].worker
        if worker is None or worker.state != READY:
            raise RuntimeError(f"slot {index} has no ready worker")
        if "debug" in worker.replies:
            raise RuntimeError(f"a debug request to slot {index} is already waiting")
        reply = worker.expect("debug")
        if not worker.send({"type": "debug", "collect": collect}):
            worker.replies.pop("debug", None)
            raise RuntimeError(f"slot {index}'s worker cannot be reached")
        try:
            message, _ = await asyncio.wait_for(reply, timeout)
        finally:
            worker.replies.pop("debug", None)
        message = dict(message)
        message.pop("type", None)
        return {"slot": index, "pid": worker.pid, "generation": worker.generation, **message}

    # ----- signals and stop ---------------------------------------------------------------

    def install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGCHLD, self.reap)
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, True)
        loop.add_signal_handler(signal.SIGINT, self.request_stop, True)
        loop.add_signal_handler(signal.SIGQUIT, self.request_stop, False)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        loop.add_signal_handler(signal.SIGUSR1, self.reopen_logs)
        loop.add_signal_handler(signal.SIGTTIN, self._ttin)
        loop.add_signal_handler(signal.SIGTTOU, self._ttou)

    def request_reload(self) -> None:
        log.info("SIGHUP: reload requested")
        asyncio.get_running_loop().create_task(self.reloader.reload())

    def reopen_logs(self) -> None:
        from monolake.supervisor import logs

        logs.reopen()
        for worker in self.live_workers():
            worker.signal(signal.SIGUSR1)
        log.info("log files reopened")

    def _ttin(self) -> None:
        try:
            slot = self.add_slot()
        except OSError as exc:
            log.error("cannot add a worker", error=str(exc))
            return
        log.info("SIGTTIN: adding a worker", slot=slot.index, cpu=slot.cpu)
        self.start_slot(slot)

    def _ttou(self) -> None:
        log.info("SIGTTOU: removing a worker")
        asyncio.get_running_loop().create_task(self.remove_slot())

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
                worker.send({"type": "stop", "timeout": timeout})
            else:
                worker.signal(signal.SIGQUIT)
        await asyncio.gather(*(self._await_exit(w, timeout + 2.0) for w in workers))
        late = [w for w in self.live_workers() if w not in workers]
        if late:  # started while the stop began (spawn refuses after): never left behind
            for worker in late:
                kill_hard(worker)
            await asyncio.gather(*(self._await_exit(w, 5.0) for w in late))
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(0)

    # ----- main ---------------------------------------------------------------------------

    async def run(self, started: Any = None) -> int:
        """Serve until stopped; ``started(ok, message)`` is called once the first workers are up."""
        from monolake.supervisor.reload import Reloader

        loop = asyncio.get_running_loop()
        self._stopped = loop.create_future()
        self.reloader = Reloader(self)
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
        self.slots = [Slot(index=i, cpu=self.cpu_for(i)) for i in range(nslots)]
        for slot in self.slots:
            self.start_slot(slot)
        log.info("master started", pid=os.getpid(), workers=nslots,
                 listeners=self.listeners.addresses(), config=self.config_path or "(embedded)")
        ready = [s.worker.ready for s in self.slots if s.worker is not None and s.worker.ready]
        done, _ = await asyncio.wait(ready, timeout=self.config.supervisor.reload_timeout)
        failed = sum(1 for f in done if f.exception() is not None) + (len(ready) - len(done))
        sdnotify.notify("READY=1", f"STATUS=serving with {nslots - failed} of {nslots} workers",
                        f"MAINPID={os.getpid()}")
        if started:
            started(failed < nslots, f"{nslots - failed} of {nslots} workers ready")
        watchdog = loop.create_task(self.watchdog())
        try:
            return await self._stopped
        finally:
            watchdog.cancel()
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
