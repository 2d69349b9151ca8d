"""Socket activation (LISTEN_FDS): inherited sockets matched to listeners, as real processes."""

from __future__ import annotations

import os
import socket
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

from monolake.conf import parse_config
from monolake.supervisor import activation
from monolake.supervisor.listeners import Listeners
from tests.config_text import http_server
from tests.harness import Monolaked, base_config, http_get
from tests.support import PYTHON, free_port

HERE = Path(__file__).resolve().parent
NCPU = len(os.sched_getaffinity(0))


def listening_socket(port: int, reuseport: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    return sock


def unix_listening_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(64)
    return sock


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


class Activated(Monolaked):
    """A master started through tests/ops/activate.py with the given sockets."""

    def __init__(
        self,
        tmp: Path,
        config_text: str,
        socks: list[tuple[socket.socket, str]],
        args: Sequence[str] = (),
        env: dict | None = None,
    ) -> None:
        specs = [f"{s.fileno()}={name}" for s, name in socks]
        super().__init__(
            tmp,
            config_text,
            args,
            env,
            launcher=[PYTHON, str(HERE / "activate.py"), *specs, "--"],
            pass_fds=[s.fileno() for s, _ in socks],
        )


@pytest.fixture
def launched():
    started: list[Monolaked] = []
    yield started
    for m in started:
        m.close()


@pytest.mark.skipif(NCPU < 2, reason="two worker slots show the SO_REUSEPORT handling")
def test_activated_tcp_socket_without_reuseport_is_shared_by_all_slots(launched, tmp_path):
    port = free_port()
    sock = listening_socket(port, reuseport=False)  # a fresh bind on this port would fail
    inode = os.fstat(sock.fileno()).st_ino
    m = Activated(tmp_path, base_config(tmp_path, port), [(sock, "")], args=["--workers", "2"])
    launched.append(m)
    m.wait_ready(2)
    sock.close()  # from now on only the master's copy serves
    assert inode in socket_inodes(m.proc.pid)
    for pid in m.worker_pids():  # every slot serves the activated socket
        assert inode in socket_inodes(pid)
    assert all(http_get(port)[0] == 200 for _ in range(10))
    events = m.log_events()
    assert any(e.get("event") == "sockets inherited (socket activation)" for e in events)
    assert any("no SO_REUSEPORT" in e.get("event", "") for e in events)
    for pid in m.worker_pids():  # the variables are for the master only
        assert "LISTEN_FDS" not in Path(f"/proc/{pid}/environ").read_text()


@pytest.mark.skipif(NCPU < 2, reason="two worker slots show the SO_REUSEPORT handling")
def test_activated_sockets_matched_by_name_and_address(launched, tmp_path):
    port = free_port()
    tcp = listening_socket(port, reuseport=True)
    local = tmp_path / "local.sock"
    unix = unix_listening_socket(local)
    inodes = {os.fstat(tcp.fileno()).st_ino, os.fstat(unix.fileno()).st_ino}
    extra = textwrap.dedent(f"""
        [servers.local]
        proxy_type = "http"
        listener = {{ type = "unix", value = "{local}" }}
        [[servers.local.routes]]
        path = "/"
        upstreams = [{{ endpoint = {{ type = "builtin", value = "hello" }} }}]
    """)
    # the unix socket comes first and is matched by address; the TCP one by its name
    m = Activated(
        tmp_path,
        base_config(tmp_path, port, extra=extra),
        [(unix, ""), (tcp, "web")],
        args=["--workers", "2"],
    )
    launched.append(m)
    m.wait_ready(2)
    tcp.close()
    unix.close()
    master_sockets = socket_inodes(m.proc.pid)
    assert inodes <= master_sockets
    assert all(http_get(port)[0] == 200 for _ in range(10))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(10)
        c.connect(str(local))
        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert c.recv(100).startswith(b"HTTP/1.1 200")
    assert not any("no SO_REUSEPORT" in e.get("event", "") for e in m.log_events())
    assert m.stop() == 0
    # systemd owns an activated unix socket's file: the master leaves it in place
    assert local.exists()


def test_listen_pid_of_another_process_is_ignored(launched, tmp_path):
    port = free_port()
    # on another port: an ignored socket on the served port would take half the connections
    sock = listening_socket(free_port(), reuseport=True)
    inode = os.fstat(sock.fileno()).st_ino
    m = Activated(
        tmp_path,
        base_config(tmp_path, port),
        [(sock, "")],
        args=["--workers", "1"],
        env={"FAKE_LISTEN_PID": "1"},
    )
    launched.append(m)
    m.wait_ready(1)
    assert http_get(port)[0] == 200
    for pid in m.worker_pids():  # the master bound its own socket and handed that out
        assert inode not in socket_inodes(pid)
    assert any(e.get("event") == "LISTEN_FDS ignored: LISTEN_PID is not this process" for e in m.log_events())
    sock.close()


# ----- in-process units ----------------------------------------------------------------------

SERVERS = http_server("a", "127.0.0.1:PORT_A") + http_server("b", "localhost:PORT_B")


def test_inherited_sockets_from_environ(tmp_path):
    sock = listening_socket(0, reuseport=True)
    reader, writer = os.pipe()
    base = 900
    os.dup2(sock.fileno(), base)
    os.dup2(reader, base + 1)  # not a socket: closed, with a warning
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "web:junk"}
    try:
        got = activation.inherited_sockets(env, start=base)
        assert env == {}  # never passed on to the workers
        assert [(a.name, a.address) for a in got] == [("web", ("socket", "127.0.0.1", sock.getsockname()[1]))]
        assert got[0].reuseport
        with pytest.raises(OSError):
            os.fstat(base + 1)
        assert os.get_inheritable(base) is False
        got[0].sock.close()
    finally:
        for fd in (reader, writer):
            os.close(fd)
        sock.close()
    other = {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
    assert activation.inherited_sockets(other, start=base) == [] and other == {}


def test_match_by_name_then_address_and_slots(tmp_path):
    a, b = listening_socket(0, True), listening_socket(0, False)
    stray = listening_socket(0, True)
    port_a, port_b = a.getsockname()[1], b.getsockname()[1]
    cfg = parse_config(SERVERS.replace("PORT_A", str(port_a)).replace("PORT_B", str(port_b)), source="t.toml")
    found = [activation.Activated(s, "", activation.bound_key(s)) for s in (stray, b, a)]
    matched = activation.match(found, cfg.servers)
    assert set(matched) == {("socket", "127.0.0.1", port_a), ("socket", "localhost", port_b)}
    assert stray.fileno() == -1  # unmatched: closed
    listeners = Listeners()
    listeners.adopt(matched)
    listeners.ensure(cfg.servers, 3)
    try:
        sa = listeners.tcp[("socket", "127.0.0.1", port_a)]
        sb = listeners.tcp[("socket", "localhost", port_b)]
        assert sa[0] is a and sb[0] is b
        # a has SO_REUSEPORT: slots 1-2 are new sockets in its group; b lacks it: dups of b
        assert all(os.fstat(sa[i].fileno()).st_ino != os.fstat(a.fileno()).st_ino for i in (1, 2))
        assert all(os.fstat(sb[i].fileno()).st_ino == os.fstat(b.fileno()).st_ino for i in (1, 2))
        assert all(s.getsockname()[1] == port_a for s in sa.values())
    finally:
        listeners.close_all()
    assert a.fileno() == -1 and not listeners.activated
