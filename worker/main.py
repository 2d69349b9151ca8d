"""The worker process: one event loop, the configured servers, a control channel to the master.

Lifecycle (see docs/architecture.md): read ``hello`` from the master (slot, CPU, config, the
slot's listening sockets), pin the CPU, pick the event loop, build every server's service
stack, start accepting (or wait for ``commit`` during a reload), report ``ready``, then send
heartbeats until told to ``drain``/``stop``. A standalone mode binds its own sockets, for
development and protocol tests.
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import faulthandler
import gc
import json
import os
import pickle
import resource
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from monolake.supervisor import channel, logs, messages
from monolake.worker import discovery, health, upstream_admin
from monolake.worker.acceptor import Acceptor
from monolake.worker.env import WorkerEnv
from monolake.worker.servers import builder_for
from monolake.worker.state import Snapshot

log = structlog.get_logger()

PR_SET_PDEATHSIG = 1
RETIRE_POLL = 0.5  # seconds between checks whether a retired stack's last connection ended


def die_with_parent(master_pid: int) -> None:
    """Have the kernel kill this process if the master dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != master_pid:  # the master died before prctl took effect
        os._exit(1)


@dataclass
class ServerSlot:
    """One configured server in this worker: its handle and its listening sockets."""

    name: str
    handle: Any
    sockets: list[socket.socket]
    servers: list[Acceptor] = field(default_factory=list)


class Worker:
    """Runs the servers of one slot on one event loop."""

    def __init__(
        self,
        env: WorkerEnv,
        config: Any,
        sockets: dict[str, list[socket.socket]],
        control: socket.socket | None,
        reader: channel.FrameReader | None = None,
    ) -> None:
        self.env = env
        self.config = config
        discovery.configure(config.resolver)  # routes built from here on resolve with it
        self.sockets = sockets
        self.control = control
        self.slots: dict[str, ServerSlot] = {}
        self.accepting = False
        self.draining = False
        # the reader that took ``hello`` off the channel: what it read past hello is ours
        self._reader = reader if reader is not None else channel.FrameReader()
        self._done: asyncio.Future[int] | None = None
        self._lag = 0.0
        self._staged: tuple[Any, dict[str, Any]] | None = None
        self.covered: dict[int, list[Acceptor]] = {}
        # stacks replaced by an in-place reload that still serve the connections they had
        self._retired_handles: list[Any] = []
        self._retiring: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()  # discarded staged stacks closing

    # ----- building and accepting -------------------------------------------------------

    def build(self, previous: dict[str, Any] | None = None) -> None:
        """Build every server's stack; ``previous`` maps server name to a handle or Snapshot."""
        slots: dict[str, ServerSlot] = {}
        for name, server_cfg in self.config.servers.items():
            build = builder_for(server_cfg.proxy_type)
            prev = (previous or {}).get(name)
            handle = build(name, server_cfg, self.env, prev)
            if isinstance(prev, Snapshot):
                prev.close_untaken()
            slots[name] = ServerSlot(name, handle, self.sockets.get(name, []))
        self.slots = slots

    async def start_accepting(self) -> None:
        loop = asyncio.get_running_loop()
        for slot in self.slots.values():
            for sock in slot.sockets:
                slot.servers.append(
                    Acceptor(loop, sock, self._protocol_factory(slot.name), self.reclaim_idle)
                )
        self.accepting = True
        log.info("accepting", servers=sorted(self.slots))

    def reclaim_idle(self) -> int:
        """Out of fds: close the oldest idle keep-alive client connections of every server
        (retired generations' included), as nginx's ngx_drain_connections: an eighth of them,
        at least 1, at most 32. Handles without ``idle_connections`` have none to give."""
        idle: list[tuple[float, Any]] = []
        for handle in [slot.handle for slot in self.slots.values()] + self._retired_handles:
            listing = getattr(handle, "idle_connections", None)
            if listing is not None:
                idle.extend(listing())
        if not idle:
            return 0
        idle.sort(key=lambda item: item[0])
        n = max(1, min(32, len(idle) // 8))
        for _since, close in idle[:n]:
            close()
        return n

    def _protocol_factory(self, name: str) -> Any:
        """New connections get the server's *current* stack (in-place reload swaps it);
        a connection keeps the stack it started with."""

        def factory() -> asyncio.BaseProtocol:
            return self.slots[name].handle.protocol_factory()

        return factory

    def stop_accepting(self, *, keep_sockets: bool = False) -> None:
        """Stop accepting; the master keeps its copy of each socket, so queued connections
        stay in the kernel's accept queue for the successor. ``keep_sockets`` (an export):
        this worker keeps its own copies too, to accept again if the master resumes it."""
        for slot in self.slots.values():
            for server in slot.servers:
                server.close(keep_socket=keep_sockets)
            slot.servers.clear()
        for index in list(self.covered):
            self.uncover(index)
        self.accepting = False

    async def cover(self, message: messages.Cover, fds: list[int]) -> None:
        """Also accept on another slot's sockets while that slot has no live worker (it
        crashes at start, say), so connections hashed to its queue are not left waiting."""
        index = message.slot
        self.uncover(index)
        loop = asyncio.get_running_loop()
        servers: list[Acceptor] = []
        if not valid_indexes(message.listeners, fds):
            channel.close_fds(fds)
            log.warning("cover refused: listener indexes do not match its fds", nfds=len(fds))
            return
        for name, indexes in message.listeners.items():
            for i in indexes:
                sock = socket.socket(fileno=fds[i])
                if name not in self.slots or not self.accepting:
                    sock.close()
                    continue
                servers.append(Acceptor(loop, sock, self._protocol_factory(name), self.reclaim_idle))
        self.covered[index] = servers
        log.info("covering for a slot without a live worker", covered_slot=index)

    def uncover(self, index: int) -> None:
        servers = self.covered.pop(index, [])
        for server in servers:
            server.close()
        if servers:
            log.info("stopped covering", covered_slot=index)

    def handles(self) -> list[Any]:
        """Every live handle: the current stacks and the retired ones still serving."""
        return [slot.handle for slot in self.slots.values()] + self._retired_handles

    def open_connections(self) -> int:
        return sum(handle.open_connections() for handle in self.handles())

    # ASYNC109: past the timeout the drain goes on (it closes what is left): a budget, not a cancel
    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109
        """Stop accepting, end keep-alive, wait for in-flight requests up to ``timeout``."""
        self.draining = True
        self.rollback_in_place()
        self.stop_accepting()
        # connections accepted just before the stop are still being set up (asyncio creates
        # their protocol in a task); let them register so the drain waits for them
        await asyncio.sleep(0.05)
        for handle in self.handles():
            handle.begin_drain()
        deadline = time.monotonic() + timeout
        # a poll: the count falls as any of many connections close, no one event says it is 0
        while self.open_connections() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        left = self.open_connections()
        if left:
            log.warning("drain timeout, closing connections", open_connections=left, timeout=timeout)
        retired, self._retired_handles = self._retired_handles, []  # the closer task ends
        for name, handle in [(slot.name, slot.handle) for slot in self.slots.values()] + [
            ("(retired)", handle) for handle in retired
        ]:
            await close_handle(handle, name)
        if self._closing:  # discarded staged stacks still closing
            await asyncio.gather(*self._closing, return_exceptions=True)

    # ----- stats and heartbeat ----------------------------------------------------------

    def stats(self) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
        per_server = {name: dict(slot.handle.stats()) for name, slot in self.slots.items()}
        total: dict[str, int] = {}
        for stats in per_server.values():
            for key, value in stats.items():
                total[key] = total.get(key, 0) + value
        return total, per_server

    async def heartbeat(self, interval: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + interval
            await asyncio.sleep(interval)
            self._lag = max(0.0, loop.time() - expected)
            self.send_heartbeat()

    def send_heartbeat(self) -> None:
        total, per_server = self.stats()
        self.send(
            messages.Heartbeat(
                lag=round(self._lag, 6),
                stats=total,
                servers=per_server,
                accepting=self.accepting,
                draining=self.draining,
                health=health.report(),
                upstreams=upstream_admin.rows(time.monotonic()),
            )
        )

    # ----- control channel --------------------------------------------------------------

    def send(self, message: messages.Message, fds: Sequence[int] = ()) -> None:
        if self.control is None:
            return
        try:
            channel.send(self.control, messages.encode(message), list(fds))
        except OSError:
            self._finish(1)  # the master is gone

    def _on_control_readable(self) -> None:
        assert self.control is not None
        try:
            alive = channel.recv_into(self.control, self._reader)
        except (BlockingIOError, InterruptedError):
            return
        except (OSError, channel.ChannelError) as exc:
            log.error("control channel broken", error=str(exc))
            alive = False
        if not alive:
            log.warning("master closed the control channel; exiting")
            self._finish(1)
            return
        self._dispatch_buffered()

    def _dispatch_buffered(self) -> None:
        """Handle every complete message the reader holds, in order."""
        while (got := self._reader.next_message()) is not None:
            raw, fds = got
            try:
                message = messages.decode(messages.TO_WORKER, raw)
            except messages.MessageError as exc:
                # logged and refused: the worker serves on (a newer master, a bug, garbage)
                log.warning("control message refused", type=str(raw.get("type"))[:64], error=str(exc)[:500])
                channel.close_fds(fds)
                continue
            asyncio.get_running_loop().create_task(self._handle(message, fds))

    async def _handle(self, message: messages.Message, fds: list[int]) -> None:
        kind = message.KIND
        try:
            if isinstance(message, (messages.Drain, messages.Stop)):
                await self.drain(message.timeout)
                try:
                    self.send_heartbeat()  # final figures: the master carries them past our exit
                finally:
                    self._finish(0)
            elif isinstance(message, messages.Export):
                self.stop_accepting(keep_sockets=True)
                self.send_state()
            elif isinstance(message, messages.Commit):
                await self.commit(message, fds)
            elif isinstance(message, messages.Abort):
                self._finish(0)
            elif isinstance(message, messages.Cover):
                await self.cover(message, fds)
            elif isinstance(message, messages.Uncover):
                self.uncover(message.slot)
            elif isinstance(message, messages.Reconfigure):
                self.prepare_in_place(message)
            elif isinstance(message, messages.ReconfigureCommit):
                self.commit_in_place()
            elif isinstance(message, messages.Rollback):
                self.rollback_in_place()
                discovery.configure(self.config.resolver)
            elif isinstance(message, messages.DebugRequest):
                self.send(messages.DebugReport(report=self.debug_report(message.collect)))
            elif isinstance(message, messages.Upstreams):  # the runtime upstream API
                upstream_admin.handle(self, message)
            elif isinstance(message, messages.LogLevel):
                logs.set_level(message.level)
                log.info("log level changed", new_level=message.level)
            else:  # decoded but not handled here (a hello after the first)
                log.warning("control message ignored", type=kind)
                channel.close_fds(fds)
        except Exception as exc:  # report, never die silently
            log.exception("control message failed", type=kind)
            self.send(messages.Failed(reason=f"{kind}: {exc!r}"))

    def send_state(self) -> None:
        """Export every server's state; each server's fds follow one another in one list.

        Never raises and never ends the worker: whatever fails (a server's export, pickling,
        the send itself) is reported in the reply's ``errors`` and the successor starts
        fresh, while this worker goes on to drain as told. Only a master that is gone ends
        it (``send``)."""
        fds: list[int] = []
        errors: list[str] = []
        exported: dict[str, Any] = {}
        for name, slot in self.slots.items():
            own: list[int] = []
            try:
                exported[name] = {"data": slot.handle.export_state(own), "nfds": len(own)}
                fds.extend(own)
            except Exception as exc:  # a failed export means the successor starts fresh
                log.exception("state export failed; the successor starts fresh", server=name)
                errors.append(f"server {name}: export failed: {exc!r}")
                channel.close_fds(own)
        blob: str | None = None
        try:
            blob = base64.b64encode(pickle.dumps(exported, protocol=4)).decode()
        except Exception as exc:  # unpicklable state: nothing can be carried
            log.exception("state could not be serialized; the successor starts fresh")
            errors.append(f"state could not be serialized: {exc!r}")
            channel.close_fds(fds)
            fds = []
        # with the stats the export captured: the master's counter accounting (accounting.py)
        servers = self.stats()[1]
        if self.control is None:
            channel.close_fds(fds)
            return
        try:
            channel.send(
                self.control, messages.encode(messages.State(state=blob, servers=servers, errors=errors)), fds
            )
            return
        except (OSError, channel.ChannelError) as exc:
            log.error("state could not be sent; the successor starts fresh", nfds=len(fds), error=str(exc))
            errors.append(f"state could not be sent ({len(fds)} fds): {exc!r}")
        finally:
            channel.close_fds(fds)  # sent or not, this worker's copies go: the master dup'ed its own
        # nothing big, no fds: this fails only if the master is gone
        self.send(messages.State(state=None, servers=servers, errors=errors))

    async def commit(self, message: messages.Commit, fds: list[int]) -> None:
        """Import the previous generation's state and start accepting. An import that fails
        leaves the fresh stacks serving and is reported (``state_error``): the reload then
        fails loudly rather than silently losing pools and counters."""
        previous, error = unpack_state(message.state, fds)
        if previous:
            fresh = self.slots
            try:
                self.build(previous)
            except Exception as exc:
                log.exception("building with the previous state failed; starting fresh")
                error = f"importing the previous generation's state failed: {exc!r}"
                self.slots = fresh
            else:
                for slot in fresh.values():
                    await slot.handle.aclose()
            for snapshot in previous.values():
                snapshot.close_untaken()  # servers that no longer exist, or a failed build
        if not self.accepting:
            await self.start_accepting()
        self.send(messages.Committed(servers=self.stats()[1], state_error=error))

    def prepare_in_place(self, message: messages.Reconfigure) -> None:
        """In-place reload, phase one: build new stacks from the live ones (make(previous))."""
        from monolake.conf import Config

        self.rollback_in_place()  # a stale staged set (never committed nor rolled back)
        staged: dict[str, Any] = {}
        try:
            config = Config.from_dict(message.config)
            discovery.configure(config.resolver)  # the new stacks resolve with the new settings
            for name, server_cfg in config.servers.items():
                live = self.slots.get(name)
                build = builder_for(server_cfg.proxy_type)
                staged[name] = build(name, server_cfg, self.env, live.handle if live else None)
        except Exception as exc:  # reported to the master, which aborts
            log.exception("in-place build failed")
            self._discard(list(staged.values()))  # the servers built before the failure
            discovery.configure(self.config.resolver)
            self.send(messages.Reconfigured(ok=False, reason=repr(exc)))
            return
        self._staged = (config, staged)
        self.send(messages.Reconfigured(ok=True, reason=""))

    def rollback_in_place(self) -> None:
        """The in-place reload is off: the staged stacks go, the live ones serve on as they
        were (what building the staged ones borrowed from them is given back)."""
        if self._staged is not None:
            _config, staged = self._staged
            self._staged = None
            self._discard(list(staged.values()))
            log.info("in-place reload rolled back", servers=sorted(staged))

    def _discard(self, handles: list[Any]) -> None:
        """Undo each staged handle's hold on the live one (``discard()``, when it has one)
        now, then close it (``aclose()``: timers, files) in the background."""
        for handle in handles:
            undo = getattr(handle, "discard", None)
            if undo is not None:
                try:
                    undo()
                except Exception:  # the others must still be given back
                    log.exception("discarding a staged server failed")
        if not handles:
            return

        async def close_all() -> None:
            for handle in handles:
                await close_handle(handle, "(staged)")

        task = asyncio.get_running_loop().create_task(close_all())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def commit_in_place(self) -> None:
        """Phase two: new connections get the new stacks; old ones finish on theirs."""
        if self._staged is None:
            return
        config, staged = self._staged
        self._staged = None
        for name, handle in staged.items():
            old = self.slots[name].handle
            self.slots[name].handle = handle
            self._retired_handles.append(old)
            retire = getattr(old, "retire", None)  # h2 connections drain off the old stack
            if retire is not None:
                retire()
        if config.runtime.busy_poll_us != self.config.runtime.busy_poll_us:
            from monolake.uring.busypoll import set_busy_poll

            if set_busy_poll(asyncio.get_running_loop(), config.runtime.busy_poll_us):
                log.info("busy polling changed", busy_poll_us=config.runtime.busy_poll_us)
            else:
                log.warning(
                    "busy_poll_us needs a generation reload with this event loop",
                    busy_poll_us=config.runtime.busy_poll_us,
                )
        self.config = config
        log.info("in-place reload committed", servers=sorted(staged))
        if self._retiring is None or self._retiring.done():  # one closer for every retired stack
            self._retiring = asyncio.get_running_loop().create_task(self._close_retired_handles())

    async def _close_retired_handles(self) -> None:
        """Close each retired stack once its last connection has ended: ``aclose()`` cancels
        its timers (the sweep) and releases what it alone holds (files, its own pools); what
        it shares with its successor (the HTTP upstream pool) was handed over at build."""
        while self._retired_handles:
            for handle in [h for h in self._retired_handles if h.open_connections() == 0]:
                self._retired_handles.remove(handle)
                await close_handle(handle, "(retired)")
            if self._retired_handles:
                await asyncio.sleep(RETIRE_POLL)
        collect_retired()

    def debug_report(self, collect: bool) -> dict[str, Any]:
        from monolake.worker.introspect import report

        staged = len(self._staged[1]) if self._staged is not None else 0
        return report(
            {"live": len(self.slots), "retired": len(self._retired_handles), "staged": staged}, collect
        )

    def _finish(self, code: int) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(code)

    # ----- main -------------------------------------------------------------------------

    async def serve(self, accept: bool, heartbeat_interval: float, ready_line: bool) -> int:
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        for signame in ("SIGTERM", "SIGINT"):
            loop.add_signal_handler(getattr(signal, signame), self._on_stop_signal)
        loop.add_signal_handler(signal.SIGQUIT, lambda: self._finish(0))
        loop.add_signal_handler(signal.SIGUSR1, logs.reopen)
        if self.control is not None:
            self.control.setblocking(False)
            loop.add_reader(self.control.fileno(), self._on_control_readable)
            self._dispatch_buffered()  # what arrived with hello (read ahead with it)
        try:
            self.build()
        except Exception as exc:  # the master reports it and keeps serving
            log.exception("building servers failed")
            self.send(messages.Failed(reason=f"building servers failed: {exc!r}"))
            return 3
        if accept:
            await self.start_accepting()
        addresses = {name: [channel_address(s) for s in slot.sockets] for name, slot in self.slots.items()}
        self.send(messages.Ready(runtime=self.env.runtime, servers=addresses))
        log.info("worker ready", runtime=self.env.runtime, accepting=self.accepting)
        if ready_line:
            sys.stdout.write(
                "READY " + json.dumps({"servers": addresses, "runtime": self.env.runtime}) + "\n"
            )
            sys.stdout.flush()
        beat = loop.create_task(self.heartbeat(heartbeat_interval))
        try:
            return await self._done
        finally:
            beat.cancel()

    def _on_stop_signal(self) -> None:
        if self.control is not None:
            return  # under a master, stop comes over the control channel (with its timeout)
        asyncio.get_running_loop().create_task(self._stop_standalone())

    async def _stop_standalone(self) -> None:
        await self.drain(float(self.config.supervisor.graceful_timeout))
        self._finish(0)


def collect_retired() -> None:
    """A full collection once retired stacks are closed. A stack is a web of cycles
    (handle, runtime, protocols, routers) that only the collector frees, and by the time it
    retires it sits in the oldest generation, which the worker's GC policy (gcpolicy.py)
    rarely collects: each in-place reload left ~80 objects and ~8 KiB of RSS waiting for a
    full collection (issue 17). One pause per reload (milliseconds), never per request."""
    started = time.perf_counter()
    freed = gc.collect()
    log.debug("retired stacks collected", objects=freed, ms=round((time.perf_counter() - started) * 1000, 2))


async def close_handle(handle: Any, name: str) -> None:
    """``aclose()`` one server handle; a failure is logged so the others still close."""
    try:
        await handle.aclose()
    except Exception:  # closing must go on for the other servers
        log.exception("server close failed", server=name)


def unpack_state(blob: str | None, fds: list[int]) -> tuple[dict[str, Snapshot], str]:
    """Turn a ``state`` blob and its fds back into one Snapshot per server (and an error)."""
    if not blob:
        channel.close_fds(fds)
        return {}, ""
    try:
        exported = pickle.loads(base64.b64decode(blob))
        snapshots: dict[str, Snapshot] = {}
        start = 0
        for name, item in exported.items():
            count = int(item.get("nfds", 0))
            snapshots[name] = Snapshot(item["data"], list(fds[start : start + count]))
            start += count
        channel.close_fds(fds[start:])
        return snapshots, ""
    except Exception as exc:  # a broken snapshot means starting fresh
        log.exception("state import failed; starting fresh")
        channel.close_fds(fds)
        return {}, f"the previous generation's state could not be read: {exc!r}"


def valid_indexes(listeners: dict[str, list[int]], fds: list[int]) -> bool:
    """Every listener index names one of the message's fds."""
    return all(0 <= i < len(fds) for indexes in listeners.values() for i in indexes)


def channel_address(sock: socket.socket) -> str:
    from monolake.supervisor.sockets import bound_address

    return bound_address(sock)


def run_worker(
    env: WorkerEnv,
    config: Any,
    sockets: dict[str, list[socket.socket]],
    control: socket.socket | None,
    accept: bool,
    ready_line: bool,
    reader: channel.FrameReader | None = None,
) -> int:
    from monolake.uring.busypoll import with_busy_poll
    from monolake.uring.runtime import RuntimeUnavailable, choose_loop
    from monolake.worker.gcpolicy import apply_gc_policy

    apply_gc_policy()
    from monolake.worker.introspect import start_tracing_if_asked

    start_tracing_if_asked()
    try:
        choice = with_busy_poll(
            choose_loop(config.runtime.runtime_type, config.runtime.entries), config.runtime.busy_poll_us
        )
    except RuntimeUnavailable as exc:
        log.error("event loop unavailable", runtime_type=config.runtime.runtime_type, reason=str(exc))
        if control is not None:
            channel.send(control, messages.encode(messages.Failed(reason=f"runtime: {exc}")))
        return 3
    env = WorkerEnv(
        slot=env.slot,
        cpu=env.cpu,
        generation=env.generation,
        pid=env.pid,
        runtime=choice.name,
        logger=env.logger,
    )
    log.info("event loop chosen", runtime=choice.name, detail=choice.detail)
    worker = Worker(env, config, sockets, control, reader)
    with asyncio.Runner(loop_factory=choice.factory) as runner:
        return runner.run(worker.serve(accept, config.supervisor.heartbeat_interval, ready_line))


def main_controlled(control_fd: int, master_pid: int) -> int:
    """Worker under a master: everything arrives over the control channel."""
    die_with_parent(master_pid)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGABRT stack dumps, no core files
    control = socket.socket(fileno=control_fd)
    reader = channel.FrameReader()
    got = channel.recv_message(control, reader, timeout=30)
    if got is None:
        return 1
    raw, fds = got
    try:
        hello = messages.decode(messages.TO_WORKER, raw)
        if not isinstance(hello, messages.Hello) or not valid_indexes(hello.listeners, fds):
            raise messages.MessageError(f"expected a hello matching its fds, got {raw.get('type')!r}")
    except messages.MessageError as exc:
        channel.close_fds(fds)
        sys.stderr.write(f"monolake worker: first control message refused: {exc}\n")
        return 1
    from monolake.conf import Config

    config = Config.from_dict(hello.config)
    slot, cpu, generation = hello.slot, hello.cpu, hello.generation
    logs.configure(
        config.supervisor.log_format,
        config.supervisor.log_level,
        config.supervisor.error_log,
        proc="worker",
        slot=slot,
        pid=os.getpid(),
        gen=generation,
    )
    faulthandler.enable(file=logs.output_fd(), all_threads=True)
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {int(cpu)})
        except OSError as exc:
            log.warning("cannot pin to cpu", cpu=cpu, error=str(exc))
    sockets: dict[str, list[socket.socket]] = {}
    for name, indexes in hello.listeners.items():
        sockets[name] = [socket.socket(fileno=fds[i]) for i in indexes]
    env = WorkerEnv(slot=slot, cpu=cpu, generation=generation, pid=os.getpid(), runtime="")
    upstream_admin.load(list(hello.upstream_overrides))  # before the stacks are built
    return run_worker(env, config, sockets, control, hello.accept, ready_line=False, reader=reader)


def main_standalone(config_path: str | None) -> int:
    """One worker that binds its own sockets: development and protocol tests."""
    from monolake.conf import ConfigError, load_config
    from monolake.supervisor.sockets import bind_tcp, bind_unix

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    logs.configure(
        config.supervisor.log_format,
        config.supervisor.log_level,
        config.supervisor.error_log,
        proc="worker",
        slot=0,
        pid=os.getpid(),
    )
    sockets: dict[str, list[socket.socket]] = {}
    for name, server in config.servers.items():
        listener = server.listener
        if listener.type == "unix":
            sockets[name] = [bind_unix(listener.path, server.backlog)]
        else:
            sockets[name] = [bind_tcp(listener.host, listener.port, server.backlog, reuseport=False)]
    env = WorkerEnv(slot=0, cpu=None, generation=1, pid=os.getpid(), runtime="")
    try:
        return run_worker(env, config, sockets, None, accept=True, ready_line=True)
    finally:
        for server in config.servers.values():
            if server.listener.type == "unix":
                try:
                    os.unlink(server.listener.path)
                except OSError:
                    pass
