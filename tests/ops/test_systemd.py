"""systemd integration: sd_notify to a fake $NOTIFY_SOCKET, and the unit file."""

from __future__ import annotations

import shutil
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness import base_config, http_get
from tests.support import free_port

REPO = Path(__file__).resolve().parents[2]
UCRED = struct.Struct("iII")  # pid, uid, gid


class FakeSystemd:
    """A datagram socket like systemd's notify socket; records each message and its sender pid."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.messages: list[tuple[int, dict[str, str]]] = []

    def receive(self, timeout: float) -> tuple[int, dict[str, str]] | None:
        self.sock.settimeout(timeout)
        try:
            data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(UCRED.size))
        except (TimeoutError, BlockingIOError):
            return None
        pid = -1
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = UCRED.unpack(cdata[: UCRED.size])[0]
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.messages.append((pid, fields))
        return pid, fields

    def expect(self, key: str, timeout: float = 30) -> tuple[int, dict[str, str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.receive(max(0.01, deadline - time.monotonic()))
            if got is not None and key in got[1]:
                return got
        raise AssertionError(f"no {key} within {timeout}s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


def test_sd_notify_ready_reloading_stopping(master_factory, tmp_path):
    fake = FakeSystemd(tmp_path / "notify.sock")
    try:
        port = free_port()
        m = master_factory(base_config(tmp_path, port), env={"NOTIFY_SOCKET": str(fake.path)})
        pid, ready = fake.expect("READY")
        assert pid == m.proc.pid
        assert ready["READY"] == "1" and ready["MAINPID"] == str(m.proc.pid)
        assert ready["STATUS"].startswith("serving with")
        assert http_get(port)[0] == 200  # READY=1 means serving

        result = m.cli("reload")
        assert result.returncode == 0, result.stderr
        pid, reloading = fake.expect("RELOADING")
        assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
        _, ready_again = fake.expect("READY")
        assert "generation 2" in ready_again["STATUS"]

        m.stop(signal.SIGTERM)
        _, stopping = fake.expect("STOPPING", timeout=10)
        assert stopping["STOPPING"] == "1"
        # only the master speaks to systemd (NotifyAccess=main): never a worker
        assert {p for p, _ in fake.messages} == {m.proc.pid}
    finally:
        fake.close()


def unit_file() -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in (REPO / "scripts" / "monolaked.service").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        assert current is not None
        current.setdefault(key, []).append(value)
    return sections


def test_unit_file_matches_the_master():
    unit = unit_file()
    service = unit["Service"]
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert any("monolaked start" in v for v in service["ExecStart"])
    assert not any("--daemon" in v for v in service["ExecStart"])  # Type=notify: foreground
    assert any("monolaked reload" in v or "kill -HUP $MAINPID" in v for v in service["ExecReload"])
    assert service["KillMode"] == ["mixed"]  # TERM to the master only; it drains the workers
    assert int(service["LimitNOFILE"][0]) >= 65536
    # systemd must wait longer than the master's own graceful_timeout (30 s by default)
    assert int(service["TimeoutStopSec"][0].rstrip("s")) > 30


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_unit_file_verifies(tmp_path):
    unit = tmp_path / "monolaked.service"
    text = (REPO / "scripts" / "monolaked.service").read_text()
    # verify resolves ExecStart binaries: point them at something that exists here
    unit.write_text(text.replace("/usr/local/bin/monolaked", shutil.which("true") or "/bin/true"))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    problems = [line for line in (result.stdout + result.stderr).splitlines() if "monolaked.service" in line]
    assert not problems, problems
