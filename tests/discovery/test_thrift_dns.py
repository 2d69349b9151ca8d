"""Thrift upstreams found by DNS: a socket endpoint with a host name and an srv endpoint,
against real thriftpy2 backends on 127.0.0.2/3 and a real dnsmasq, without a reload."""

from __future__ import annotations

import socket
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support import free_port, wait_for
from tests.thrift.thrift_support import backend, whoami


def shared_port() -> int:
    """A port free on 127.0.0.2 and 127.0.0.3."""
    for _ in range(50):
        port = free_port("127.0.0.2")
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.3", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no shared free port")


def config(tmp_path, port: int, ns: str, upstreams: str, runtime_type: str) -> str:
    return textwrap.dedent(f"""
        [resolver]
        nameservers = ["{ns}"]

        [runtime]
        workers = 1
        runtime_type = "{runtime_type}"

        [supervisor]
        control_socket = "{tmp_path}/control.sock"
        log_format = "json"

        [servers.rpc]
        proxy_type = "thrift"
        listener = {{ type = "socket", value = "127.0.0.1:{port}" }}
        route = {{ load_balancer = "round_robin", upstreams = [{upstreams}] }}
    """)


def name_socket(port: int) -> str:
    """A socket endpoint to every address DNS gives app.test, on ``port``."""
    return f'{{ endpoint = {{ type = "socket", value = "app.test:{port}" }} }}'


@contextmanager
def both_backends(port: int) -> Iterator[None]:
    """Backends t2 on 127.0.0.2 and t3 on 127.0.0.3, both on ``port``."""
    with backend(tcp=f"127.0.0.2:{port}", name="t2"), backend(tcp=f"127.0.0.3:{port}", name="t3"):
        yield


def start(master_factory: Any, tmp_path: Path, d: Any, upstreams: str, runtime_type: str) -> tuple[Any, int]:
    """A ready monolaked with one thrift server resolving through dnsmasq ``d``, and its port."""
    port = free_port()
    m = master_factory(config(tmp_path, port, d.nameserver, upstreams, runtime_type))
    m.wait_ready()
    return m, port


def test_thrift_addresses_join_and_leave(master_factory, tmp_path, dnsmasq, runtime_type) -> None:
    up = shared_port()
    d = dnsmasq(["127.0.0.2 app.test"], ttl=1)
    with both_backends(up):
        _m, port = start(master_factory, tmp_path, d, name_socket(up), runtime_type)
        assert set(whoami(port, 6)) == {"t2"}
        d.set_hosts(["127.0.0.2 app.test", "127.0.0.3 app.test"], {"app.test": {"127.0.0.2", "127.0.0.3"}})
        wait_for(lambda: set(whoami(port, 6)) == {"t2", "t3"}, timeout=5, what="t3 to join")
        d.set_hosts(["127.0.0.3 app.test"], {"app.test": {"127.0.0.3"}})
        wait_for(lambda: set(whoami(port, 6)) == {"t3"}, timeout=5, what="t2 to leave")
        assert set(whoami(port, 20)) == {"t3"}


def test_thrift_srv_priorities(master_factory, tmp_path, dnsmasq, runtime_type) -> None:
    up = shared_port()
    d = dnsmasq(
        ["127.0.0.2 a.test", "127.0.0.3 b.test"],
        ttl=1,
        extra=[
            f"--srv-host=_thrift._tcp.app.test,a.test,{up},10,1",
            f"--srv-host=_thrift._tcp.app.test,b.test,{up},20,1",
        ],
    )
    with both_backends(up):
        _m, port = start(
            master_factory,
            tmp_path,
            d,
            '{ endpoint = { type = "srv", value = "_thrift._tcp.app.test" } }',
            runtime_type,
        )
        assert set(whoami(port, 10)) == {"t2"}  # priority 20 unused while 10 is up
        # the records swap priorities: the traffic follows, no reload
        d.restart(
            extra=[
                f"--srv-host=_thrift._tcp.app.test,a.test,{up},20,1",
                f"--srv-host=_thrift._tcp.app.test,b.test,{up},10,1",
            ]
        )
        wait_for(lambda: set(whoami(port, 6)) == {"t3"}, timeout=6, what="priority swap")


def test_thrift_dead_address_of_a_name_fails_no_call(master_factory, tmp_path, dnsmasq, runtime_type) -> None:
    """A refused connect to one address moves the connection, with the calls queued on it, to
    another address of the name, and ejects the dead one."""
    up = shared_port()
    d = dnsmasq(["127.0.0.2 app.test", "127.0.0.3 app.test"], ttl=1)  # nothing on 127.0.0.3
    with backend(tcp=f"127.0.0.2:{up}", name="t2"):
        m, port = start(master_factory, tmp_path, d, name_socket(up), runtime_type)
        assert whoami(port, 20) == ["t2"] * 20
        ejected = [e for e in m.log_events() if e.get("event") == "thrift_upstream_ejected"]
        assert [e["upstream"] for e in ejected] == [f"127.0.0.3:{up}"]
