"""A real DNS server for the discovery tests: dnsmasq on 127.0.0.1 and a random high port.

Its A/AAAA records come from a hosts file that ``set_hosts`` rewrites and reloads with SIGHUP;
SRV records and per-record TTLs are command-line options, so ``restart`` starts it again on
the same port with new ones. Every process is killed by PID in ``close``.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from tests.support import kill_pids, pid_alive

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


def free_udp_tcp_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                    t.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


class Dnsmasq:
    def __init__(
        self, tmp: Path, hosts: list[str] | None = None, ttl: int = 1, extra: list[str] | None = None
    ) -> None:
        if not os.path.exists(DNSMASQ):
            pytest.skip("dnsmasq is not installed (apt-get install -y dnsmasq)")
        self.tmp = tmp
        self.port = free_udp_tcp_port()
        self.hosts_path = tmp / "dns.hosts"
        self.hosts_path.write_text("\n".join(hosts or []) + "\n")
        self.log_path = tmp / "dnsmasq.log"
        self.ttl = ttl
        self.extra = list(extra or [])
        self.proc: subprocess.Popen[bytes] | None = None
        self.pids: set[int] = set()
        self.start()

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def args(self) -> list[str]:
        return [
            DNSMASQ,
            "--no-daemon",
            f"--port={self.port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            f"--addn-hosts={self.hosts_path}",
            "--local=/test/",
            f"--local-ttl={self.ttl}",
            "--pid-file=",
            "--log-queries",
            f"--log-facility={self.log_path}",
            f"--user={getpass.getuser()}",
            "--cache-size=0",
            *self.extra,
        ]

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.pids.add(self.proc.pid)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise AssertionError(f"dnsmasq exited with {self.proc.returncode}: {err}")
            if self.query("ready.invalid.test", "A") is not None:
                return
            time.sleep(0.05)
        raise AssertionError("dnsmasq did not answer within 10s")

    def query(self, name: str, rdtype: str) -> dns.message.Message | None:
        try:
            return dns.query.udp(
                dns.message.make_query(name, rdtype), "127.0.0.1", port=self.port, timeout=0.5
            )
        except (dns.exception.Timeout, OSError):
            return None

    def addresses(self, name: str) -> set[str]:
        out: set[str] = set()
        for rdtype in ("A", "AAAA"):
            msg = self.query(name, rdtype)
            if msg is not None and msg.rcode() == dns.rcode.NOERROR:
                for rrset in msg.answer:
                    out.update(str(r) for r in rrset)
        return out

    def set_hosts(self, lines: list[str], expect: dict[str, set[str]] | None = None) -> None:
        """Rewrite the hosts file and reload it (SIGHUP); with ``expect``, wait until dnsmasq
        itself answers so (name -> addresses)."""
        tmp = self.hosts_path.with_suffix(".new")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.hosts_path)
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        for name, want in (expect or {}).items():
            while self.addresses(name) != want:
                assert time.monotonic() < deadline, f"dnsmasq never answered {want} for {name}"
                time.sleep(0.02)

    def restart(self, extra: list[str] | None = None, ttl: int | None = None) -> None:
        """Stop and start again on the same port with new options (SRV records, TTL)."""
        self.stop()
        if extra is not None:
            self.extra = list(extra)
        if ttl is not None:
            self.ttl = ttl
        self.start()

    def stop(self) -> None:
        if self.proc is not None:
            kill_pids([self.proc.pid])
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            if self.proc.stderr is not None:
                self.proc.stderr.close()
            self.proc = None

    def queries_for(self, name: str, rdtype: str = "A") -> int:
        """How many queries dnsmasq logged for ``name`` (``--log-queries``)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return 0
        return sum(1 for line in text.splitlines() if f"query[{rdtype}] {name} from" in line)

    def close(self) -> None:
        self.stop()
        left = [p for p in self.pids if pid_alive(p)]
        if left:
            kill_pids(left)
