"""Helpers shared by the test suites: free ports, bounded polling, processes cleaned up by PID."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from typing import Any, TypeVar

T = TypeVar("T")

PYTHON = sys.executable


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to 0, read, close)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def keep(items: list[T], item: T) -> T:
    """``item``, appended to ``items`` first: a protocol factory that remembers what it made."""
    items.append(item)
    return item


def settle(fut: asyncio.Future[T], value: Callable[[], T]) -> None:
    """Set ``fut`` to ``value()`` unless it is done (``value`` is not called then): a callback
    that may run again before it is removed."""
    if not fut.done():
        fut.set_result(value())


# ASYNC109: the deadline fails the test with ``what`` (asyncio.timeout would say less)
async def until(cond: Callable[[], object], what: str, timeout: float = 10.0) -> None:  # noqa: ASYNC109
    """Poll ``cond`` on the running loop until it holds; fail the test after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, f"timed out waiting: {what}"
        await asyncio.sleep(0.005)


def wait_for(
    predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = "condition"
) -> T:
    """Poll ``predicate`` until it returns a truthy value, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as exc:  # polled conditions may raise until ready
            last_exc = exc
        else:
            if value:
                return value
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what}"
        + (f" (last error: {last_exc!r})" if last_exc else "")
    )


def staggered(fn: Callable[[], T], n: int, join: float) -> list[tuple[T, float]]:
    """``fn()`` in ``n`` threads started 37 ms apart (deadlines spread over a 0.25 s sweep
    interval): each one's result and how long it took. Each thread is joined for ``join`` s."""
    results: list[Any] = [None] * n

    def timed(i: int) -> None:
        start = time.monotonic()
        outcome = fn()
        results[i] = (outcome, time.monotonic() - start)

    threads = []
    for i in range(n):
        t = threading.Thread(target=timed, args=(i,))
        t.start()
        threads.append(t)
        time.sleep(0.037)  # spread the deadlines over the sweep interval
    for t in threads:
        t.join(join)
    return results


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:  # gone between the two checks (ENOENT, or ESRCH while being reaped)
        return False


def kill_pids(pids: list[int], timeout: float = 5.0) -> None:
    """TERM then KILL every pid still alive; bounded in time."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.02)
    for pid in pids:
        if pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


@contextmanager
def spawned(args: list[str], **kw) -> Iterator[subprocess.Popen]:
    """Run a process for the duration of a block; it and its children are killed by PID after."""
    proc = subprocess.Popen(args, **kw)
    try:
        yield proc
    finally:
        pids = [proc.pid, *children_of(proc.pid)]
        kill_pids(pids)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


def listening_on(port: int) -> bool:
    """Whether any socket on this machine is in LISTEN state on ``port`` (IPv4 or IPv6)."""
    return bool(listening_inodes(port))


def tcp_sockets() -> Iterator[tuple[int, str, int]]:
    """(local port, state as the kernel writes it: "0A" LISTEN, "01" ESTABLISHED, ...,
    inode) of every TCP socket on this machine, IPv4 and IPv6 (/proc/net/tcp, tcp6)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    yield int(fields[1].rsplit(":", 1)[1], 16), fields[3], int(fields[9])
        except FileNotFoundError:
            continue


def listening_inodes(port: int) -> set[int]:
    """The inodes of the sockets in LISTEN state on ``port``: they identify the sockets."""
    return {inode for local, state, inode in tcp_sockets() if state == "0A" and local == port}


def raise_nofile(need: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE to ``need`` (children inherit it); skip the
    test if the hard limit is lower."""
    import resource

    import pytest

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


class QuietHandler(BaseHTTPRequestHandler):
    """The base of the tests' HTTP/1.1 backends: keep-alive capable, no access log on stderr."""

    protocol_version = "HTTP/1.1"
    # head and body in one send: written apart, Nagle holds the body back until the proxy's
    # delayed ACK (~40 ms a request, a closed-loop client at ~20 requests/s)
    wbufsize = 1 << 16

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def reply(self, body: bytes, status: int = 200, headers: tuple[tuple[str, str], ...] = ()) -> None:
        """A whole response: ``status``, ``headers``, a Content-Length and ``body``."""
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def close_listener(sock: socket.socket) -> None:
    """Close a listening socket so that a thread blocked in its ``accept()`` wakes (close()
    alone leaves it blocked until the thread's join times out)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
