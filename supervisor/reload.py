"""Zero-downtime reload: validate, prepare a new generation, commit slot by slot, drain.

Protocol (docs/architecture.md, "Reload"):

1. Parse and validate the new config; a bad one is rejected before anything starts.
2. Wait for the previous reload's draining workers to exit (never more than two generations).
3. Bind listeners the new config adds. Prepare: start the new generation, each worker on its
   slot's CPU with its slot's sockets, *not accepting*; all must report ``ready`` within
   ``reload_timeout``, else abort (new workers killed, new listeners closed, old ones serve on).
4. Commit, slot by slot: the old worker stops accepting and exports its state (with fds);
   the new one imports it and starts accepting on the same socket (the queue is never
   closed); the old one drains, up to ``drain_timeout``. A failed export or import never
   stops this: the new worker starts fresh, the old one still drains, and the reload ends
   as "state not migrated" (``StateNotMigrated``; ``monolaked reload`` exits 3).
5. Listeners the new config removed close once the old generation is gone.

Steps 3 to 5 are a plan (``plan_generation``: spawn, await ready, switch, migrate, retire,
settle), made from the slot counts alone and then run step by step (``Reloader._generation``);
a failure before the switch aborts the whole plan, one after it aborts what is left.

HUPs arriving during a reload are coalesced into one more reload with the latest config.
``in_place`` mode asks each worker to rebuild its service stacks in-process instead.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from monolake.supervisor import channel, messages, sdnotify
from monolake.supervisor.workers import EXITED, PREPARED, READY, STOPPING, Slot, WorkerProc

if TYPE_CHECKING:
    from monolake.conf.schema import Config
    from monolake.supervisor.listeners import Listeners
    from monolake.supervisor.master import MasterState

log = structlog.get_logger()

EXPORT_TIMEOUT = 3.0  # seconds the old worker has to answer ``export``
ABORT_GRACE = 2.0  # seconds an aborted new worker has to exit before it is killed


class ReloadFailed(Exception):
    pass


# ----- the plan of a generation reload ----------------------------------------------------


@dataclass(frozen=True)
class Spawn:
    """Start slot ``slot``'s new worker, not accepting (it waits for its commit)."""

    slot: int


@dataclass(frozen=True)
class AwaitReady:
    """Every spawned worker ready within ``reload_timeout``, none exited since."""


def _has_exited(pid: int | None) -> bool:
    """Has the child exited, though its SIGCHLD is still in the event queue? (``WNOWAIT``:
    nothing is reaped, ``Master.reap`` still collects it.) Asked before an old worker is told
    to export: a new worker that died right after ``ready`` must not cost the slot its old one."""
    if pid is None:
        return False
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True  # already reaped


@dataclass(frozen=True)
class Switch:
    """The new config and generation become the master's: no abort of the whole plan after."""


@dataclass(frozen=True)
class Migrate:
    """The old worker exports its state, the new one imports it and accepts, the old drains."""

    slot: int


@dataclass(frozen=True)
class Retire:
    """A slot the new config drops: covered by a new worker, its old worker drains."""

    slot: int


@dataclass(frozen=True)
class Settle:
    """The new slot list is the master's; dropped slots' sockets close once drained."""

    removed: tuple[int, ...]


Step = Spawn | AwaitReady | Switch | Migrate | Retire | Settle


def plan_generation(current: int, wanted: int) -> list[Step]:
    """The steps from ``current`` slots serving to ``wanted`` slots of a new generation."""
    removed = tuple(range(wanted, current))
    return [
        *(Spawn(i) for i in range(wanted)),
        AwaitReady(),
        Switch(),
        *(Migrate(i) for i in range(wanted)),
        *(Retire(i) for i in removed),
        Settle(removed),
    ]


class StateNotMigrated(ReloadFailed):
    """The new generation serves, but some slot's state (pools, counters) was dropped: an
    export or import failed. Reported as a failed reload with ``state_migrated: false``."""


class ReloadHost(Protocol):
    """All a reload may read or change on the master: the config, the slots and their
    sockets, the generation record, and the worker lifecycle steps (spawn, cover, assign,
    retire, wait for an exit). The master satisfies it; a test may pass a fake."""

    config: Config
    config_path: str | None
    workers_override: int | None
    slots: list[Slot]
    retired: list[WorkerProc]
    desired: int
    stopping: bool
    state: MasterState
    listeners: Listeners

    def cpu_for(self, index: int) -> int | None: ...
    def spawn(self, slot: Slot, generation: int, config: Config, accept: bool = True) -> WorkerProc: ...
    def cover(self, slot: Slot) -> None: ...
    def uncover(self, slot: Slot) -> None: ...
    def assign(self, slot: Slot, worker: WorkerProc) -> None: ...
    def retire(self, worker: WorkerProc, timeout: float) -> None: ...
    def close_retired_slots(self, retired: list[Slot]) -> None: ...
    def schedule_respawn(self, slot: Slot, worker: WorkerProc, code: int) -> None: ...
    async def await_exit(self, worker: WorkerProc, within: float) -> None: ...


class Reloader:
    def __init__(self, master: ReloadHost, on_done: Callable[[], None] | None = None) -> None:
        self.master = master
        self.on_done = on_done  # after each run of reloads (the master reconciles)
        self.busy = False
        self._waiters: list[asyncio.Future[dict[str, Any]]] = []

    async def reload(self, wait: bool = True) -> dict[str, Any]:
        """Request a reload; with ``wait``, return its outcome. Requests made while one runs
        are served together by the next one."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        if not self.busy:
            self.busy = True
            asyncio.get_running_loop().create_task(self._run())
        if not wait:
            return {}
        return await fut

    async def _run(self) -> None:
        try:
            while self._waiters:
                waiters, self._waiters = self._waiters, []
                result = await self._reload_once()
                for fut in waiters:
                    if not fut.done():
                        fut.set_result(result)
        finally:
            self.busy = False
            if self.on_done is not None:
                self.on_done()

    async def _reload_once(self) -> dict[str, Any]:
        from monolake.supervisor.master import ReloadRecord

        master = self.master
        started_wall, started = time.time(), time.monotonic()
        sdnotify.notify("RELOADING=1", "STATUS=reloading")
        mode = "generation"
        try:
            new = self._load()
            mode = new.supervisor.reload_mode
            if mode == "in_place" and not self._in_place_possible(new):
                log.info("in-place reload cannot change listeners or worker count; doing a generation reload")
                mode = "generation"
            if mode == "in_place":
                await self._in_place(new)
            else:
                await self._generation(new)
            ok, reason, migrated = True, "", True
        except StateNotMigrated as exc:
            ok, reason, migrated = False, str(exc), False
        except ReloadFailed as exc:
            ok, reason, migrated = False, str(exc), None
        except Exception as exc:
            log.exception("reload crashed")
            ok, reason, migrated = False, f"internal error: {exc!r}", None
        duration = time.monotonic() - started
        record = ReloadRecord(started_wall, duration, ok, reason, master.state.generation, mode, migrated)
        master.state.reloads.append(record)
        if ok:
            master.state.reloads_ok += 1
        else:
            master.state.reloads_failed += 1
        del master.state.reloads[:-100]
        if ok:
            log.info(
                "reload done", generation=master.state.generation, mode=mode, duration=round(duration, 3)
            )
        elif migrated is False:
            log.error(
                "reload done, but state was not migrated; the new generation serves without it",
                reason=reason,
                generation=master.state.generation,
                state_migrated=False,
                duration=round(duration, 3),
            )
        else:
            log.error(
                "reload failed; the running generation keeps serving",
                reason=reason,
                generation=master.state.generation,
                duration=round(duration, 3),
            )
        sdnotify.notify(
            "READY=1",
            f"STATUS=generation {master.state.generation}"
            + ("" if ok else f"; last reload failed: {reason}"),
        )
        return {
            "ok": ok,
            "reason": reason,
            "generation": master.state.generation,
            "duration": round(duration, 3),
            "mode": mode,
            "state_migrated": migrated,
        }

    def _load(self) -> Config:
        from monolake.conf import ConfigError, load_config

        try:
            return load_config(self.master.config_path)
        except ConfigError as exc:
            raise ReloadFailed(f"invalid config:\n{exc}") from None
        except OSError as exc:
            raise ReloadFailed(f"cannot read config: {exc}") from None

    def _in_place_possible(self, new: Config) -> bool:
        from monolake.supervisor.listeners import listener_key
        from monolake.supervisor.master import resolve_workers

        master = self.master
        old_keys = {n: listener_key(s.listener) for n, s in master.config.servers.items()}
        new_keys = {n: listener_key(s.listener) for n, s in new.servers.items()}
        nslots = resolve_workers(new.runtime.workers, master.workers_override)
        return old_keys == new_keys and nslots == len(master.slots)

    # ----- generation mode ----------------------------------------------------------------

    async def _wait_retired(self) -> None:
        """At most two generations: the previous reload's drainers must be gone first."""
        master = self.master
        draining = [w for w in master.retired if w.state != EXITED]
        if draining:
            log.info(
                "waiting for the previous generation to finish draining", workers=[w.pid for w in draining]
            )
            timeout = master.config.supervisor.drain_timeout + 5
            await asyncio.gather(*(master.await_exit(w, timeout) for w in draining))

    async def _generation(self, new: Config) -> None:
        from monolake.supervisor.master import resolve_workers

        master = self.master
        await self._wait_retired()
        if master.stopping:
            raise ReloadFailed("the master is stopping")
        nslots = resolve_workers(new.runtime.workers, master.workers_override)
        try:
            created = master.listeners.ensure(new.servers, nslots)
        except OSError as exc:
            raise ReloadFailed(str(exc)) from None
        generation = master.state.generation + 1
        before = len(master.slots)
        slots = [
            master.slots[i] if i < len(master.slots) else Slot(index=i, cpu=master.cpu_for(i))
            for i in range(nslots)
        ]
        plan = plan_generation(before, nslots)
        prepared: dict[int, WorkerProc] = {}
        self._state_errors: list[str] = []
        self._kept: list[str] = []
        switched = False
        committed: set[int] = set()
        try:
            for step in plan:
                match step:
                    case Spawn(i):
                        prepared[i] = master.spawn(slots[i], generation, new, accept=False)
                    case AwaitReady():
                        await self._await_ready(list(prepared.values()), new.supervisor.reload_timeout)
                        if master.stopping:
                            raise ReloadFailed("the master is stopping")
                        gone = [w.slot for w in prepared.values() if w.state == EXITED]
                        if gone:
                            raise ReloadFailed(f"new workers exited after they were ready (slots {gone})")
                    case Switch():
                        master.config = new
                        master.state.generation = generation
                        switched = True
                    case Migrate(i):
                        if i >= len(master.slots):
                            master.slots.append(slots[i])  # a slot the new config adds
                        await self._commit_slot(slots[i], prepared[i], new)
                        committed.add(i)
                    case Retire(i):
                        slot = master.slots[i]
                        if slot.respawn is not None:
                            slot.respawn.cancel()
                        master.cover(slot)  # a new worker serves its queue until it closes
                        if slot.worker is not None:
                            self._retire(slot.worker, new)
                    case Settle(removed):
                        dropped = [master.slots[i] for i in removed]
                        master.slots = slots
                        master.desired += nslots - before  # TTIN/TTOU meanwhile still count
                        asyncio.get_running_loop().create_task(self._close_after_drain(dropped))
        except BaseException as exc:
            if not switched:
                # every worker this reload started is gone before it reports: none is left
                # running outside the master's slots
                await self._abort(list(prepared.values()))
                master.listeners.discard(created)
                if isinstance(exc, (ReloadFailed, asyncio.CancelledError)):
                    raise
                raise ReloadFailed(f"cannot start the new generation: {exc}") from exc
            # a commit crashed: the rest never get to serve
            serving = {id(s.worker) for s in master.slots}
            await self._abort([w for i, w in prepared.items() if i not in committed and id(w) not in serving])
            raise
        if self._kept:
            raise ReloadFailed(f"generation {generation} serves only in part: " + "; ".join(self._kept))
        if self._state_errors:
            raise StateNotMigrated(
                f"state not migrated: generation {generation} is serving "
                "without the previous generation's state: " + "; ".join(self._state_errors)
            )

    async def _await_ready(self, workers: list[WorkerProc], within: float) -> None:
        futures = [w.ready for w in workers if w.ready is not None]
        _done, pending = await asyncio.wait(futures, timeout=within)
        if pending:
            slow = [w.slot for w in workers if w.ready in pending]
            raise ReloadFailed(f"new workers not ready within reload_timeout={within}s (slots {slow})")
        for worker in workers:
            exc = worker.ready.exception() if worker.ready is not None else None
            if exc is not None:
                raise ReloadFailed(f"new worker for slot {worker.slot} failed to start: {exc}")

    async def _abort(self, prepared: list[WorkerProc]) -> None:
        """Tell each new worker to exit, kill those that do not within ``ABORT_GRACE``, and
        return once all are reaped: they are listed (``stopping``) until then."""
        live = [w for w in prepared if w.state != EXITED]
        for worker in live:
            worker.state = STOPPING
            worker.send(messages.Abort())
        await asyncio.gather(*(self.master.await_exit(w, ABORT_GRACE) for w in live))

    def _keep_old(self, slot: Slot, new_worker: WorkerProc, old: WorkerProc, what: str) -> None:
        """The slot keeps its old worker; the reload then fails as 'serves only in part'."""
        self._kept.append(f"slot {slot.index}: {what}; generation {old.generation} serves on")
        log.error(f"{what}; the old worker serves on", slot=slot.index, pid=new_worker.pid, old_pid=old.pid)

    async def _commit_slot(self, slot: Slot, new_worker: WorkerProc, config: Config) -> None:
        """Hand ``slot`` from its old worker to ``new_worker``. The old worker is retired only
        once the new one has committed: until then it has only stopped accepting, so a new
        worker that dies or hangs at any point before ``committed`` (before the export, during
        it, or while importing) gives the slot back to the old worker (a commit without
        state: it accepts again). Only a slot without a live old worker is left to the new
        worker's crash handling."""
        master = self.master
        old = slot.worker
        if old is not None and old.state != READY:
            old = None  # nothing serving to fall back to (or to carry state from)
        if old is not None and (new_worker.state == EXITED or _has_exited(new_worker.pid)):
            self._keep_old(slot, new_worker, old, "the new worker exited before its commit")
            return
        state, fds = await self._export(slot, old)
        if slot.respawn is not None:  # after the export: an old worker that died during it
            slot.respawn.cancel()  # must not get a replacement besides the new one
            slot.respawn = None
        failure = await self._hand_over(new_worker, state, fds, config)
        if failure is not None and old is not None and old.state == READY:
            old.send(messages.Commit(state=None))  # whatever it exported is lost with the new one
            await self._abort([new_worker])  # one that hangs is killed; reaped before we go on
            self._keep_old(slot, new_worker, old, failure)
            return
        if failure is not None:
            log.error("new worker failed to commit", slot=slot.index, pid=new_worker.pid, error=failure)
            self._state_errors.append(f"slot {slot.index}: {failure}; the slot starts afresh")
        if new_worker.state == PREPARED:
            new_worker.state = READY
        if old is not None and old.state != EXITED:
            self._retire(old, config)
        master.assign(slot, new_worker)  # a respawn that landed meanwhile is retired too
        master.uncover(slot)  # the new worker accepts on the slot's sockets itself
        slot.flapping = False
        slot.consecutive_crashes = 0
        if new_worker.state == EXITED:
            master.schedule_respawn(slot, new_worker, new_worker.exit_code or 1)

    async def _hand_over(
        self, new_worker: WorkerProc, state: str | None, fds: list[int], config: Config
    ) -> str | None:
        """Send the exported state (and fds: closed here, sent or not) to the new worker and
        wait for its ``committed``; None when it committed, else why it did not."""
        try:
            if _has_exited(new_worker.pid):
                return "the new worker exited during the export"
            committed = new_worker.expect(messages.Committed)
            if not new_worker.send(messages.Commit(state=state), fds):
                new_worker.replies.pop(messages.Committed, None)
                return "the new worker could not be reached for its commit"
        finally:
            channel.close_fds(fds)
        try:
            reply, _ = await asyncio.wait_for(committed, config.supervisor.reload_timeout)
        except TimeoutError:
            return f"the new worker did not commit within reload_timeout={config.supervisor.reload_timeout}s"
        except RuntimeError as exc:  # it exited (``_on_exit`` fails what it was waiting for)
            return f"the new worker failed to commit ({exc})"
        if reply.state_error:
            self._state_errors.append(f"slot {new_worker.slot}: {reply.state_error}")
        return None

    async def _export(self, slot: Slot, old: WorkerProc | None) -> tuple[str | None, list[int]]:
        """Ask the old worker for its state (and fds). Whatever goes wrong is recorded as a
        state error (the reload then reports that state was not migrated) and never ends the
        old worker: it drains next, as it would without state. One that is really hung is
        the watchdog's, or the drain deadline's, to kill."""
        if old is None or old.state != READY:
            return None, []  # nothing serving, nothing to carry
        reply = old.expect(messages.State)
        if not old.send(messages.Export()):
            error = "the old worker could not be asked for its state"
        else:
            try:
                message, fds = await asyncio.wait_for(reply, EXPORT_TIMEOUT)
            except (TimeoutError, RuntimeError) as exc:
                error = (
                    f"the old worker exported no state: {str(exc) or f'no answer within {EXPORT_TIMEOUT}s'}"
                )
            else:
                errors = message.errors
                if errors:
                    self._state_error(slot, old, "the old worker's export failed: " + "; ".join(errors))
                return message.state, fds
        self._state_error(slot, old, error)
        return None, []

    def _state_error(self, slot: Slot, old: WorkerProc, error: str) -> None:
        log.warning(
            "state not migrated; the new worker starts fresh", slot=slot.index, pid=old.pid, error=error
        )
        self._state_errors.append(f"slot {slot.index}: {error}")

    def _retire(self, worker: WorkerProc, config: Config) -> None:
        self.master.retire(worker, config.supervisor.drain_timeout)

    async def _close_after_drain(self, removed: list[Slot]) -> None:
        """Listeners and slots the new config dropped close once the old generation is gone."""
        await self._wait_retired()
        self.master.close_retired_slots(removed)

    # ----- in-place mode ------------------------------------------------------------------

    async def _in_place(self, new: Config) -> None:
        master = self.master
        workers = [s.worker for s in master.slots if s.worker is not None and s.worker.state == READY]
        replies = []
        for worker in workers:
            reply = worker.expect(messages.Reconfigured)
            worker.send(messages.Reconfigure(config=new.to_dict()))
            replies.append(reply)
        results = await asyncio.gather(
            *(asyncio.wait_for(r, new.supervisor.reload_timeout) for r in replies), return_exceptions=True
        )
        failures = []
        for worker, result in zip(workers, results, strict=True):
            if isinstance(result, BaseException):
                failures.append(f"slot {worker.slot}: {result!r}")
            elif not result[0].ok:
                failures.append(f"slot {worker.slot}: {result[0].reason}")
        if failures:
            for worker in workers:
                worker.send(messages.Rollback())
            raise ReloadFailed("in-place reload failed; workers kept their stacks: " + "; ".join(failures))
        for worker in workers:
            worker.send(messages.ReconfigureCommit())
        master.config = new
        master.state.generation += 1
        for worker in workers:
            worker.generation = master.state.generation
