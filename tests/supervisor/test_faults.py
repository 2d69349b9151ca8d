"""Control-plane faults (issue 17, section 4), each against a real master over loopback.

- garbage, half-open, idle and never-reading clients on the control socket;
- a user other than the master's is refused by the control socket;
- kill -9 of the master, then a new ``monolaked start`` on the same config and socket;
- a reload soak for each reload mode under light load: no failed request, and fds, threads
  and RSS of the master and of the workers flat;
- a SIGSTOPped worker: ``unresponsive`` in status, replaced by the watchdog, and reaped.

Covered elsewhere (tests/supervisor/test_master.py, test_reload.py, tests/ops): HUP storm,
SIGTERM during a reload, SIGTERM and `stop` draining slow in-flight requests, blocked event loop watchdog,
``unresponsive`` status with the watchdog off.

Every wait polls a condition under a deadline; no fixed sleeps.
"""

from __future__ import annotations

import array
import http.client
import json
import os
import select
import shutil
import signal
import socket
import stat
import statistics
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from monolake.supervisor import channel
from monolake.supervisor.control import request as control_request
from tests.harness import Monolaked, base_config, http_get
from tests.support import children_of, free_port, listening_on, pid_alive, tcp_sockets, wait_for
from tests.upstreams import Upstream, proxy_routes

SOAK = os.environ.get("MONOLAKE_SOAK") == "1"
NOBODY = 65534
STATUS_LATENCY_BOUND = 2.0  # s for one raw `status` round trip, on a loaded 2-core CI box


# ----- /proc readings ---------------------------------------------------------------------


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def quiet_fd_count(pid: int, timeout: float = 5) -> int:
    """The fd count once it holds still (three equal readings 20 ms apart): the master
    closes a control connection in the loop iteration after its reply went out."""
    readings = [fd_count(pid)]

    def still() -> bool:
        readings.append(fd_count(pid))
        return len(readings) >= 3 and len(set(readings[-3:])) == 1

    wait_for(still, timeout, interval=0.02, what=f"fd count of {pid} still")
    return readings[-1]


def fds_at_most(pid: int, bound: int, timeout: float = 5) -> None:
    wait_for(
        lambda: fd_count(pid) <= bound,
        timeout,
        interval=0.02,
        what=f"{pid} back to at most {bound} fds (has {fd_count(pid)})",
    )


def _status_field(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {name} in /proc/{pid}/status")


def thread_count(pid: int) -> int:
    return _status_field(pid, "Threads")


def rss_kib(pid: int) -> int:
    return _status_field(pid, "VmRSS")


def resources(pid: int) -> dict[str, int]:
    return {"fds": quiet_fd_count(pid), "threads": thread_count(pid), "rss_kib": rss_kib(pid)}


def server_connections(port: int) -> int:
    """Accepted connections on ``port`` that still hold an fd (ESTABLISHED or CLOSE_WAIT)."""
    return sum(1 for local, state, _ in tcp_sockets() if local == port and state in ("01", "08"))


def live_children(pid: int) -> list[int]:
    return [p for p in children_of(pid) if pid_alive(p)]


# ----- control socket clients -------------------------------------------------------------


def timed_status(path: str) -> float:
    """One raw ``status`` round trip (no CLI interpreter start-up in the figure)."""
    t0 = time.monotonic()
    reply = control_request(path, {"type": "status"}, timeout=STATUS_LATENCY_BOUND * 5)
    elapsed = time.monotonic() - t0
    assert reply.get("type") == "status", reply
    return elapsed


def assert_status_prompt(path: str, samples: int = 5) -> float:
    worst = max(timed_status(path) for _ in range(samples))
    assert worst < STATUS_LATENCY_BOUND, f"status took {worst:.2f}s"
    return worst


def connect(path: str, timeout: float = 10) -> socket.socket:
    """A connected client; a full accept queue (EAGAIN on a unix socket) is retried until
    ``timeout``, as the master may not have caught up with a burst of connections."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(path)
            return s
        except BlockingIOError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)
        except BaseException:
            s.close()
            raise


def read_reply(s: socket.socket, timeout: float = 10) -> bytes:
    """Everything the master writes until it closes its end (bounded)."""
    s.settimeout(timeout)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        out += chunk
    return out


def decode_reply(data: bytes) -> dict[str, Any]:
    reader = channel.FrameReader()
    reader.feed(data)
    got = reader.next_message()
    assert got is not None, f"no complete reply frame in {data[:80]!r}"
    return got[0]


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def closed_by_peer(s: socket.socket) -> bool:
    """True once the master closed its end (EOF or reset); data it sent first is skipped."""
    while True:
        r, _, _ = select.select([s], [], [], 0)
        if not r:
            return False
        try:
            if not s.recv(65536):
                return True
        except ConnectionResetError:
            return True
        except BlockingIOError:
            return False


# ----- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def masters(master_factory):
    """``master_factory``, whose masters are fast-stopped (SIGQUIT) at the end of the test:
    the harness's teardown then has no status to ask (a CLI start-up per master)."""
    started: list[Monolaked] = []

    def make(*args: Any, **kw: Any) -> Monolaked:
        m = master_factory(*args, **kw)
        started.append(m)
        return m

    yield make
    for m in started:
        if m.proc.poll() is None:
            try:
                m.seen_pids.update(children_of(m.proc.pid))
                m.stop(signal.SIGQUIT, timeout=10)
            except Exception:
                pass


# ----- load -------------------------------------------------------------------------------


class LightLoad(threading.Thread):
    """A closed loop of requests (a new connection each, then keep-alive ones, alternately)
    with a short pause between them, so it leaves CPU to the box; records every failure."""

    def __init__(self, port: int, paths: tuple[str, ...] = ("/",)) -> None:
        super().__init__(daemon=True)
        self.port, self.paths = port, paths
        self.stop = threading.Event()
        self._hold, self._held = threading.Event(), threading.Event()
        self.ok = 0
        self.errors: list[str] = []

    def pause(self) -> None:
        """Stop sending, with no connection of ours left open, until ``resume()``."""
        self._hold.set()
        wait_for(self._held.is_set, 15, what="load paused")

    def resume(self) -> None:
        self._held.clear()
        self._hold.clear()

    def run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        i = 0
        while not self.stop.is_set():
            if self._hold.is_set():
                if conn is not None:
                    conn.close()
                    conn = None
                self._held.set()
                self.stop.wait(0.01)
                continue
            path = self.paths[i % len(self.paths)]
            keepalive = (i // len(self.paths)) % 2 == 1
            i += 1
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
                conn.request("GET", path, headers={} if keepalive else {"Connection": "close"})
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    self.ok += 1
                else:
                    self.errors.append(f"{path}: status {resp.status}")
                if not keepalive or resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except http.client.RemoteDisconnected:
                # a draining worker closing an idle keep-alive connection between requests is
                # normal HTTP: a client retries on a new connection. Only a reused connection
                # may end like this; a fresh one may not.
                if not keepalive:
                    self.errors.append(f"{path}: fresh connection closed without a response")
                conn = None
            except OSError as exc:
                self.errors.append(f"{path}: {exc!r}")
                conn = None
            self.stop.wait(0.01)
        if conn is not None:
            conn.close()


# ======================================================================================
# 1. garbage and half-open connections on the control socket
# ======================================================================================


def test_garbage_and_half_open_control_clients_leave_the_master_serving(masters, tmp_path):
    port = free_port()
    m = masters(base_config(tmp_path, port), args=["--workers", "1"])
    m.wait_ready(1)
    path = str(tmp_path / "control.sock")
    master = m.proc.pid
    pids = m.worker_pids()
    assert_status_prompt(path)
    baseline = quiet_fd_count(master)

    # garbage that gets an answer at once: each is refused with an error reply
    answered = {
        "random bytes": os.urandom(4096),
        "huge length": b"\xff\xff\xff\xff" + b"x" * 100,
        "a text line": b"status\n",
        "JSON, not an object": frame(b'["status"]'),
        "not JSON": frame(b"\xff\xfe{not json"),
        "no type": frame(b'{"kind":"status"}'),
        "unknown type": frame(b'{"type":"format_disk"}'),
        "bad log level": frame(b'{"type":"log_level","level":{"a":1}}'),
        "announces fds it never sends": frame(b'{"type":"status","nfds":3}'),
    }
    for what, data in answered.items():
        with connect(path) as s:
            s.sendall(data)
            reply = decode_reply(read_reply(s))
        assert reply.get("type") == "error" and reply.get("error"), (what, reply)

    # a huge line with no framing at all: the master must not buffer it
    with connect(path) as s:
        s.setblocking(False)
        sent = 0
        try:
            while sent < 4 * 1024 * 1024:
                sent += s.send(b"status " * 8192)
        except (BlockingIOError, BrokenPipeError, ConnectionResetError):
            pass
        s.setblocking(True)
        data = read_reply(s)
        assert data == b"" or decode_reply(data).get("type") == "error"

    # a valid request carrying fds (SCM_RIGHTS) the master never asked for
    with open(os.devnull, "rb") as devnull, connect(path) as s:
        body = frame(b'{"type":"status"}')
        s.sendmsg([body], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [devnull.fileno()] * 8))])
        assert decode_reply(read_reply(s)).get("type") == "status"

    # clients that stay: half a valid command, 200 idle connections, a client that sends a
    # command and never reads the answer, a header with no body
    held: list[socket.socket] = []
    try:
        request = channel.encode({"type": "status"})
        half = connect(path)
        half.sendall(request[: len(request) // 2])
        held.append(half)
        header_only = connect(path)
        header_only.sendall(struct.pack(">I", 1000))
        held.append(header_only)
        never_reads = connect(path)
        never_reads.sendall(request)
        held.append(never_reads)
        for _ in range(200):
            held.append(connect(path))

        # the master took them all (so the fd count can see a leak) and still answers promptly
        wait_for(lambda: fd_count(master) >= baseline + 200, 10, what="master accepted the clients")
        assert_status_prompt(path)
        assert m.cli("status", "--json").returncode == 0
        assert http_get(port)[0] == 200

        # a client that asks for a reload and hangs up at once: the reload still happens
        with connect(path) as s:
            s.sendall(channel.encode({"type": "reload"}))
        wait_for(
            lambda: (
                [r["ok"] for r in control_request(path, {"type": "status"})["master"]["reloads"]] == [True]
            ),
            30,
            interval=0.1,
            what="the abandoned reload done",
        )
        pids = wait_for(
            lambda: len(live_children(master)) == 1 and m.worker_pids(), 20, what="the old generation gone"
        )

        # it gives up on silent clients by itself: every fd is back although none of them left
        for s in held:
            s.setblocking(False)
        wait_for(
            lambda: fd_count(master) <= baseline,
            20,
            interval=0.1,
            what=f"master fds back to {baseline} (now {fd_count(master)})",
        )
        assert all(closed_by_peer(s) for s in held)
    finally:
        for s in held:
            s.close()

    assert_status_prompt(path)
    fds_at_most(master, baseline)
    assert m.proc.poll() is None and m.worker_pids() == pids
    assert http_get(port)[0] == 200


def test_control_request_that_breaks_the_json_decoder_gets_an_error_reply(masters, tmp_path):
    port = free_port()
    m = masters(base_config(tmp_path, port), args=["--workers", "1"])
    m.wait_ready(1)
    path = str(tmp_path / "control.sock")
    baseline = quiet_fd_count(m.proc.pid)
    with connect(path) as s:
        s.sendall(frame(b"[" * 200_000))  # within the 1 MiB request limit
        data = read_reply(s)
    assert m.proc.poll() is None
    assert_status_prompt(path)
    fds_at_most(m.proc.pid, baseline)
    assert data, "the master closed the connection without a reply"
    assert decode_reply(data).get("type") == "error"
    assert "Traceback" not in m.log()


def test_a_command_waits_for_a_busy_master_instead_of_failing(masters, tmp_path):
    """The master's accept queue is full (it is busy: here, stopped for a moment): a command
    waits within its timeout, as it does for a master that is slow to answer."""
    port = free_port()
    m = masters(base_config(tmp_path, port), args=["--workers", "1"])
    m.wait_ready(1)
    path = str(tmp_path / "control.sock")
    master = m.proc.pid
    fillers: list[socket.socket] = []
    outcome: dict[str, Any] = {}

    def command() -> None:
        try:
            outcome["reply"] = control_request(path, {"type": "status"}, timeout=20)
        except BaseException as exc:
            outcome["error"] = exc

    client = threading.Thread(target=command)
    os.kill(master, signal.SIGSTOP)
    try:
        for _ in range(4096):  # the queue holds backlog + 1 connections
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(path)
            except BlockingIOError:
                s.close()
                break
            fillers.append(s)
        else:
            pytest.fail("the control socket's accept queue never filled")
        client.start()
        client.join(1.0)  # the master stays stopped this long: the fault's duration
    finally:
        os.kill(master, signal.SIGCONT)
        for s in fillers:
            s.close()
    client.join(25)
    assert not client.is_alive()
    assert m.proc.poll() is None
    if "error" in outcome:
        raise outcome["error"]
    assert outcome["reply"]["type"] == "status"


# ======================================================================================
# 2. a user other than the master's is refused
# ======================================================================================


def _as_nobody(fn, timeout: float = 20) -> dict[str, Any]:
    """Run ``fn()`` in a forked child as uid/gid 65534 (nobody); its JSON-able result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 0
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            out = fn()
        except BaseException as exc:
            out, code = {"child_error": repr(exc)}, 1
        try:
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(code)
    os.close(w)
    try:
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(r)
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    assert data, "the child running as nobody reported nothing"
    return json.loads(data)


def _nobody_probe(control: str, open_sock: str) -> dict[str, Any]:
    """In the child, as nobody: what a stranger sees of the control socket."""
    import contextlib
    import io

    from monolake.supervisor import cli

    out: dict[str, Any] = {"uid": os.getuid(), "gid": os.getgid()}
    out["stat_ok"] = stat.S_ISSOCK(os.stat(control).st_mode)  # the folder lets us in
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:  # the positive control
        s.settimeout(5)
        s.connect(open_sock)
        out["open_socket_connects"] = True
    try:
        reply = control_request(control, {"type": "stop", "fast": True}, timeout=5)
        out["raw"] = {"reply": reply}
    except OSError as exc:
        out["raw"] = {"errno": exc.errno, "error": str(exc)}
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = cli.main(["stop", "--fast", "--control-socket", control])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    out["cli"] = {"code": code, "stderr": err.getvalue()}
    return out


def test_another_user_is_refused_by_the_control_socket(masters, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("acting as another user (nobody) needs root")
    # the socket lives in a folder anybody may enter, so only the socket's own mode stands in
    # the way (pytest's tmp_path is 0700 and would refuse the stranger by itself)
    folder = Path(tempfile.mkdtemp(prefix="monolake-ctl-"))
    try:
        folder.chmod(0o755)
        control = folder / "control.sock"
        port = free_port()
        cfg = base_config(tmp_path, port).replace(
            f'control_socket = "{tmp_path}/control.sock"', f'control_socket = "{control}"'
        )
        assert str(control) in cfg
        m = masters(cfg, args=["--workers", "1"])
        m.wait_ready(1)
        pids = m.worker_pids()
        master_fds = quiet_fd_count(m.proc.pid)

        # as docs/configuration.md and architecture.md promise: a socket, mode 0600, owned by
        # the master's user
        st = os.stat(control)
        master_uid = _status_field(m.proc.pid, "Uid")
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
        assert st.st_uid == master_uid

        # a socket anybody may use, next to it: shows the stranger can connect at all
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as open_sock:
            open_path = folder / "open.sock"
            open_sock.bind(str(open_path))
            open_path.chmod(0o666)
            open_sock.listen(4)
            seen = _as_nobody(lambda: _nobody_probe(str(control), str(open_path)))

        assert "child_error" not in seen, seen
        assert seen["uid"] == NOBODY and seen["gid"] == NOBODY
        assert seen["stat_ok"] and seen["open_socket_connects"]
        # refused by the kernel before the master reads a byte
        assert seen["raw"].get("errno") == 13, seen["raw"]  # EACCES
        # and the command line says so, naming the socket
        assert seen["cli"]["code"] == 2, seen["cli"]
        stderr = seen["cli"]["stderr"]
        assert str(control) in stderr and "Permission denied" in stderr, stderr

        # the master did not notice: same workers, serving, nothing logged about a stop
        assert m.proc.poll() is None
        assert_status_prompt(str(control))
        assert m.worker_pids() == pids and http_get(port)[0] == 200
        fds_at_most(m.proc.pid, master_fds)
        assert not [e for e in m.log_events() if e.get("event") == "stopping"]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ======================================================================================
# 3. kill -9 the master, then start again on the same config and control socket
# ======================================================================================


def _logged(m: Monolaked, name: str) -> bool:
    return any(e.get("event") == name for e in m.log_events())


def test_master_sigkill_frees_everything_and_a_new_start_binds_at_once(masters, tmp_path):
    port = free_port()
    cfg = base_config(tmp_path, port)
    t0 = time.monotonic()
    m = masters(cfg)
    wait_for(lambda: _logged(m, "master started"), 30, interval=0.05, what="first master bound")
    first_bound = time.monotonic() - t0
    m.wait_ready()
    pids = m.worker_pids()
    master = m.proc.pid
    # established keep-alive connections at the moment of death: their server ends go to
    # TIME_WAIT / FIN_WAIT, which a new bind must not trip over
    clients = []
    for _ in range(4):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/")
        assert c.getresponse().read()
        clients.append(c)

    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait(5)
    wait_for(lambda: not any(pid_alive(p) for p in pids), 2.0, what="workers gone after master death")
    wait_for(lambda: not listening_on(port), 2.0, what="listening sockets released")
    with socket.socket() as probe:  # free for anybody, not only for SO_REUSEPORT siblings
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
        probe.listen(1)
    for c in clients:  # each client sees its connection end, not a hang
        c.sock.settimeout(5)
        try:
            assert c.sock.recv(1) == b""
        except ConnectionResetError:
            pass
        c.close()
    # the dead master left its control socket and pid file behind
    assert (tmp_path / "control.sock").exists()
    assert (tmp_path / "monolaked.pid").read_text().strip() == str(master)

    t0 = time.monotonic()
    again = masters(cfg)
    # its sockets bound at the first attempt, as fast as on a clean machine: no retry, no
    # wait for the old sockets or the stale control socket
    wait_for(
        lambda: again.proc.poll() is None and _logged(again, "master started"),
        30,
        interval=0.05,
        what="new master bound its sockets",
    )
    bound_after = time.monotonic() - t0
    assert listening_on(port) and (tmp_path / "control.sock").exists()
    st = again.wait_ready(timeout=30)
    assert st["master"]["pid"] == again.proc.pid != master
    assert http_get(port)[0] == 200
    assert (tmp_path / "monolaked.pid").read_text().strip() == str(again.proc.pid)
    assert not [e for e in again.log_events() if e.get("event") == "cannot start"]
    assert bound_after < first_bound + 5, (first_bound, bound_after)


# ======================================================================================
# 4. reload soak, each mode
# ======================================================================================

# Warm-up, not sampled: the worker's RSS grows ~150 KiB over its first few dozen requests
# and ~80 KiB at each of its first in-place reloads, then settles. (In generation mode each
# sample is of a fresh worker, and the master's growth is in the allowance below.)
WARMUP_REQUESTS = 30
WARMUP_RELOADS = {"generation": 0, "in_place": 4}
# Flatness of fds, threads and RSS over the sampled reloads: the second half of the samples
# is compared with the first half.
# - fds and threads are counts, taken with the load paused and its connections closed: the
#   largest of the second half may not exceed the largest of the first;
# - RSS of one process (the master; the worker in place): the median of the second half may
#   exceed the first half's by the process's allowance per reload times the N/2 reloads
#   between the halves, or by its floor if that is larger. The worker's floor covers the
#   allocator's page-sized steps; the master's bounds are the same. (On pymalloc the master's
#   RSS rose 2-8 KiB per generation reload, still rising after 200, while its Python heap
#   stayed flat (tracemalloc): the arenas' fragmentation. It re-executes itself on glibc
#   malloc, supervisor/allocator.py, and stays flat to the KiB over 120 reloads.) The
#   in-place worker grows ~10-12 KiB per reload for ~30
#   reloads, then levels off: ~50-60 KiB between the halves of 10 reloads, ~200 of 50,
#   above its bound either way.
# - in generation mode each worker sample is a different, fresh process: RSS varies by
#   ~200 KiB between them, hence RSS_FRESH_KIB; growth there would be handed-over state
#   growing with each generation.
WORKER_FLOOR_KIB, WORKER_SLOPE_KIB = 32, 2
MASTER_FLOOR_KIB, MASTER_SLOPE_KIB = 32, 2
RSS_FRESH_KIB = 256


class ResourceGrew(AssertionError):
    """fds or threads grew over the reloads."""


class RssGrew(AssertionError):
    """RSS grew over the reloads beyond the tolerance."""


def _flat(samples: list[dict[str, int]], what: str, rss: tuple[int, int] | None) -> None:
    """Raise ResourceGrew / RssGrew unless the second half of ``samples`` is flat against the
    first; ``rss`` is (floor, per-reload allowance) in KiB, None for samples of different
    processes."""
    half = len(samples) // 2
    first, second = samples[:half], samples[half:]
    for key in ("fds", "threads"):
        a, b = max(s[key] for s in first), max(s[key] for s in second)
        if b > a:
            raise ResourceGrew(f"{what}: {key} grew from {a} to {b}: {[s[key] for s in samples]}")
    rss_a = statistics.median(s["rss_kib"] for s in first)
    rss_b = statistics.median(s["rss_kib"] for s in second)
    bound = RSS_FRESH_KIB if rss is None else max(rss[0], rss[1] * (len(samples) - half))
    if rss_b - rss_a > bound:
        raise RssGrew(
            f"{what}: RSS grew {rss_b - rss_a:.0f} KiB (bound {bound}) over "
            f"{len(samples)} reloads: {[s['rss_kib'] for s in samples]}"
        )


def _settled(m: Monolaked, path: str, nslots: int, generation: int) -> dict[str, Any] | None:
    """The status once the reload's old workers have exited and been reaped, else None."""
    st = control_request(path, {"type": "status"}, timeout=10)
    rows = st["workers"]
    if st["master"]["reloading"] or st["master"]["generation"] != generation:
        return None
    if len(rows) != nslots or not all(w["state"] == "ready" and w.get("pid") for w in rows):
        return None
    if sorted(children_of(m.proc.pid)) != sorted(w["pid"] for w in rows):
        return None  # an old worker still draining, or a zombie not reaped yet
    m.seen_pids.update(w["pid"] for w in rows)
    return st


@pytest.mark.slow
@pytest.mark.timeout(900 if SOAK else 120)
@pytest.mark.parametrize("mode", ["generation", "in_place"])
def test_reload_soak_loses_no_request_and_keeps_resources_flat(masters, tmp_path, mode):
    reloads = 50 if SOAK else 10
    warmup = WARMUP_RELOADS[mode]
    upstream = Upstream("soak")
    try:
        port = free_port()
        cfg = base_config(
            tmp_path,
            port,
            supervisor=f'reload_mode = "{mode}"',
            routes=proxy_routes(upstream),
        )
        m = masters(cfg, args=["--workers", "1"])
        m.wait_ready(1)
        path = str(tmp_path / "control.sock")
        nslots = 1
        master = m.proc.pid
        first_pids = m.worker_pids()
        load = LightLoad(port, ("/", "/up/id"))
        load.start()
        master_samples: list[dict[str, int]] = []
        worker_samples: list[dict[str, int]] = []
        durations: list[float] = []
        rss_failures: list[RssGrew] = []
        try:
            wait_for(lambda: load.ok > WARMUP_REQUESTS, 30, what="load warmed the worker up")
            for i in range(warmup + reloads):
                t0 = time.monotonic()
                reply = control_request(path, {"type": "reload"}, timeout=60)
                durations.append(time.monotonic() - t0)
                assert reply.get("ok"), reply
                st = wait_for(
                    lambda i=i: _settled(m, path, nslots, 2 + i),
                    30,
                    interval=0.05,
                    what=f"reload {i + 1} settled",
                )
                pids = [w["pid"] for w in st["workers"]]
                if mode == "in_place":
                    assert pids == first_pids  # the same processes, rebuilt in place
                before = load.ok
                wait_for(lambda b=before: load.ok > b + 2, 15, what="requests after the reload")
                if i >= warmup:
                    # sampled between requests, once the load's connection is closed on both
                    # ends: the counts are then the worker's own, not the load's
                    load.pause()
                    wait_for(
                        lambda: server_connections(port) == 0,
                        10,
                        what="the load's connections closed by the worker",
                    )
                    master_samples.append(resources(master))
                    worker_samples.append(resources(pids[0]))
                    load.resume()
        finally:
            load.stop.set()
            load.join(20)
        assert not load.is_alive()
        assert load.errors == [], load.errors[:5]
        assert load.ok > reloads * 2
        print(
            f"{mode}: {reloads} reloads, {load.ok} requests, reload "
            f"{statistics.median(durations):.2f}s median; master {master_samples}; "
            f"worker {worker_samples}"
        )
        st = m.status()
        assert st["master"]["generation"] == 1 + warmup + reloads
        assert all(r["ok"] for r in st["master"]["reloads"])
        # the exact counts first: a leak of fds or threads is never the expected failure
        in_place = (WORKER_FLOOR_KIB, WORKER_SLOPE_KIB)
        for samples, name, rss in (
            (master_samples, "master", (MASTER_FLOOR_KIB, MASTER_SLOPE_KIB)),
            (worker_samples, "worker", in_place if mode == "in_place" else None),
        ):
            try:
                _flat(samples, name, rss)
            except RssGrew as exc:
                rss_failures.append(exc)
        if rss_failures:
            raise rss_failures[0]
    finally:
        upstream.close()


# ======================================================================================
# 5. SIGSTOP a worker
# ======================================================================================


def test_sigstopped_worker_is_reported_replaced_and_reaped(masters, tmp_path):
    port = free_port()
    cfg = base_config(tmp_path, port).replace("heartbeat_timeout = 5", "heartbeat_timeout = 2")
    assert "heartbeat_timeout = 2" in cfg
    m = masters(cfg)
    st = m.wait_ready()
    path = str(tmp_path / "control.sock")
    master = m.proc.pid
    victim = st["workers"][0]
    others = {w["slot"]: w["pid"] for w in st["workers"][1:]}
    victim_started = psutil.Process(victim["pid"]).create_time()

    def row() -> dict[str, Any]:
        rows = control_request(path, {"type": "status"}, timeout=10)["workers"]
        m.seen_pids.update(w["pid"] for w in rows if w.get("pid"))
        return next(w for w in rows if w["slot"] == victim["slot"])

    seen: list[tuple[int | None, str]] = []

    def replaced() -> dict[str, Any] | None:
        r = row()
        if not seen or seen[-1] != (r["pid"], r["state"]):
            seen.append((r["pid"], r["state"]))
        return r if r["pid"] not in (None, victim["pid"]) and r["state"] == "ready" else None

    os.kill(victim["pid"], signal.SIGSTOP)
    try:
        new = wait_for(replaced, 30, interval=0.05, what="stopped worker replaced")
    finally:
        try:
            os.kill(victim["pid"], signal.SIGCONT)
        except ProcessLookupError:
            pass
    # status said so, in order: ready, then unresponsive, and only then another process
    states_of_victim = [s for p, s in seen if p == victim["pid"]]
    assert "unresponsive" in states_of_victim, seen
    first_other = next(i for i, (p, _) in enumerate(seen) if p != victim["pid"])
    assert seen.index((victim["pid"], "unresponsive")) < first_other, seen
    assert new["restarts"] >= 1 and new["cpu"] == victim["cpu"]

    # the stopped process was killed and reaped: no zombie, no stopped orphan left behind
    def gone() -> bool:
        try:
            proc = psutil.Process(victim["pid"])
            return proc.create_time() != victim_started  # the pid was reused by somebody else
        except psutil.NoSuchProcess:
            return True

    wait_for(gone, 10, what="stopped worker killed and reaped")
    assert victim["pid"] not in children_of(master)
    assert any(
        e.get("event", "").startswith("worker heartbeat missed") and e.get("pid") == victim["pid"]
        for e in m.log_events()
    )
    # the other slots never noticed
    rows = {w["slot"]: w for w in m.status()["workers"]}
    for slot, pid in others.items():
        assert rows[slot]["pid"] == pid and rows[slot]["state"] == "ready"
    assert http_get(port)[0] == 200
