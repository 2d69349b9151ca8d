"""Runs a real ``monolaked`` master in a temporary folder and talks to it like a user would."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.support import PYTHON, children_of, free_port, kill_pids, pid_alive, wait_for

MONOLAKED = [PYTHON, "-m", "monolake.supervisor.cli"]


def base_config(
    tmp: Path, port: int, extra: str = "", supervisor: str = "", runtime: str = "", routes: str | None = None
) -> str:
    """A config with one HTTP server on ``port`` serving the builtin hello and echo."""
    if routes is None:
        routes = textwrap.dedent("""
            [[servers.web.routes]]
            path = "/"
            upstreams = [{ endpoint = { type = "builtin", value = "hello" } }]

            [[servers.web.routes]]
            path = "/echo/{*rest}"
            upstreams = [{ endpoint = { type = "builtin", value = "echo" } }]
        """)
    return (
        textwrap.dedent(f"""
        [runtime]
        runtime_type = "auto"
        {runtime}

        [supervisor]
        control_socket = "{tmp}/control.sock"
        pid_file = "{tmp}/monolaked.pid"
        log_format = "json"
        heartbeat_interval = 0.5
        heartbeat_timeout = 5
        graceful_timeout = 10
        drain_timeout = 10
        reload_timeout = 20
        {supervisor}

        [servers.web]
        proxy_type = "http"
        listener = {{ type = "socket", value = "127.0.0.1:{port}" }}
    """)
        + routes
        + textwrap.dedent(extra)
    )


def hermetic_env() -> dict[str, str]:
    """This environment without ``MONOLAKE_CONTROL_SOCKET``: set in a developer's shell, it
    would take the master and the CLI away from the control socket the test's config names."""
    return {k: v for k, v in os.environ.items() if k != "MONOLAKE_CONTROL_SOCKET"}


def monolaked_check(tmp: Path, text: str) -> subprocess.CompletedProcess[str]:
    """``monolaked check`` run on ``text`` (written to tmp/monolake.toml), in a hermetic
    environment: its exit code and output."""
    path = tmp / "monolake.toml"
    path.write_text(text)
    return subprocess.run(
        [*MONOLAKED, "check", "-c", str(path)], capture_output=True, text=True, timeout=60, env=hermetic_env()
    )


class Monolaked:
    """One master process and helpers to query it; ``close()`` kills everything it started."""

    def __init__(
        self,
        tmp: Path,
        config_text: str,
        args: Sequence[str] = (),
        env: dict | None = None,
        *,
        launcher: Sequence[str] = MONOLAKED,
        pass_fds: Sequence[int] = (),
    ) -> None:
        """``launcher``: the command that runs ``monolaked`` (its arguments follow), e.g. one that
        hands it sockets first (tests/ops/activate.py); ``pass_fds`` go to that process."""
        self.tmp = tmp
        self.config_path = tmp / "monolake.toml"
        self.config_path.write_text(config_text)
        self.log_path = tmp / "master.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - the daemon's log for its lifetime; close() closes it
        self.seen_pids: set[int] = set()
        full_env = {**hermetic_env(), **(env or {})}
        self.proc = subprocess.Popen(
            [*launcher, "start", "-c", str(self.config_path), *args],
            pass_fds=pass_fds,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
        self.seen_pids.add(self.proc.pid)

    # ----- control ------------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*MONOLAKED, *args, "-c", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=hermetic_env(),
        )

    def status(self) -> dict[str, Any]:
        result = self.cli("status", "--json", timeout=30)
        assert result.returncode == 0, result.stderr
        status = json.loads(result.stdout)
        for w in status["workers"]:
            if w.get("pid"):
                self.seen_pids.add(w["pid"])
        return status

    def ready_workers(self) -> list[dict[str, Any]]:
        return [w for w in self.status()["workers"] if w["state"] == "ready"]

    def wait_ready(self, count: int | None = None, timeout: float = 30) -> dict[str, Any]:
        """Poll status until ``count`` (default: all) workers are ready; fail fast if the
        master exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"master exited with {self.proc.returncode}:\n{self.log()}")
            try:
                status = self.status()
            except (AssertionError, ValueError, subprocess.TimeoutExpired):
                time.sleep(0.1)
                continue
            ready = [w for w in status["workers"] if w["state"] == "ready"]
            want = count if count is not None else status["master"]["workers"]
            if want > 0 and len(ready) >= want:
                return status
            time.sleep(0.1)
        raise AssertionError(f"workers not ready within {timeout}s:\n{self.log()[-4000:]}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
        return events

    def worker_pids(self) -> list[int]:
        return [w["pid"] for w in self.status()["workers"] if w.get("pid")]

    def kill_worker_and_await_respawn(self, workers: int, timeout: float = 20) -> int:
        """SIGKILL the first worker in ``status``; return once it is gone and ``workers`` are
        ready again (the master respawned it). Returns the killed pid."""
        victim = self.status()["workers"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: (
                not pid_alive(victim)
                and victim not in self.worker_pids()
                and len(self.ready_workers()) == workers
            ),
            timeout=timeout,
            what="respawn",
        )
        return int(victim)

    # ----- teardown -----------------------------------------------------------------------

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        """Stop the master fast and kill whatever is left of everything it started.

        SIGQUIT is the master's fast stop: its workers get SIGQUIT and exit at once. A graceful
        stop (SIGTERM) would wait out every keep-alive connection a test left idle (1 s grace,
        then a 2 s lingering close: 3 s a daemon) only to throw the daemon away; the tests of
        the graceful stop itself send it (``stop``). The pids are the master's live children
        (no ``status`` round trip: a CLI process a test) and every pid seen before."""
        try:
            if self.proc.poll() is None:
                self.seen_pids.update(children_of(self.proc.pid))
                self.proc.send_signal(signal.SIGQUIT)
                self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # a master stopped or hung: killed below
            pass
        finally:
            kill_pids([p for p in self.seen_pids if pid_alive(p)], timeout=5)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            self._log.close()


def http_get(
    port: int,
    path: str = "/",
    host: str = "127.0.0.1",
    timeout: float = 10,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, body, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def cpus_allowed(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    return ""


def master_monotonic_deadline(seconds: float) -> float:
    return time.monotonic() + seconds


__all__ = [
    "Monolaked",
    "base_config",
    "http_get",
    "cpus_allowed",
    "free_port",
    "wait_for",
    "pid_alive",
    "sys",
]
