"""The Thrift proxy as a real process (``python -m monolake.worker --standalone``) between real
thriftpy2 clients and servers: transports, unix sockets, routing, pipelining, errors, timeouts.

One worker runs every server these tests need (one ``[servers.X]`` table each), in front of a
handful of backend processes, so the module starts four processes in all.
"""

from __future__ import annotations

import random
import shutil
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from thriftpy2.thrift import TApplicationException

from tests.http.certs import self_signed
from tests.thrift.thrift_support import (
    E,
    Proxy,
    backend,
    client,
    closed_by_peer,
    connect,
    decode_reply,
    encode_call,
    endpoint,
    free_port,
    listener,
    proxy,
    read_framed,
    read_tt_frame,
    tt_frame,
    tt_parse,
    wait_for,
)


def _has_v6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


HAS_V6 = _has_v6()


class Env:
    def __init__(self, px: Proxy, backends: dict[str, str], tmp: Path) -> None:
        self.px = px
        self.backends = backends
        self.tmp = tmp

    def addr(self, server: str) -> str:
        return self.px.addr(server)


@pytest.fixture(scope="module", params=["auto", "legacy"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """Every test runs on the default loop (io_uring where available) and on the legacy one."""
    tmp = tmp_path_factory.mktemp("thrift")
    with ExitStack() as stack:
        b: dict[str, str] = {}
        b["b1"], _ = stack.enter_context(backend("framed", name="b1"))
        b["b2"], _ = stack.enter_context(backend("framed", name="b2"))
        b["bp"], _ = stack.enter_context(backend("framed", name="bp"))
        b["bu"], _ = stack.enter_context(backend("buffered", name="bu"))
        b["bt"], _ = stack.enter_context(backend("ttheader", name="bt"))
        b["bx"], _ = stack.enter_context(backend("framed", name="bx", unix=str(tmp / "bx.sock")))
        # a listener whose accept queue is full: connects to it hang (connect timeout test)
        hole = stack.enter_context(socket.socket())
        hole.bind(("127.0.0.1", 0))
        hole.listen(0)
        filler = stack.enter_context(socket.create_connection(hole.getsockname()))
        assert filler
        b["hole"] = "{}:{}".format(*hole.getsockname())
        dead = free_port()
        cert = tmp / "cert.pem"
        if shutil.which("openssl"):
            self_signed(tmp, "127.0.0.1", ["127.0.0.1"])

        def server(name: str, body: str, lst: str | None = None) -> str:
            lst = lst or listener(f"127.0.0.1:{free_port()}")
            return f'[servers.{name}]\nproxy_type = "thrift"\nlistener = {lst}\n{body}\n'

        def route(*names: str, extra: str = "") -> str:
            ups = ", ".join(f"{{ endpoint = {endpoint(b[n])} }}" for n in names)
            return f"route = {{ upstreams = [{ups}] {extra} }}"

        servers = "\n".join(
            [
                server("auto", route("b1")),
                server("unframed", 'thrift_transport = "unframed"\n' + route("bu")),
                server("auto_unframed", route("bu")),
                server("tt", 'thrift_transport = "ttheader"\n' + route("bt")),
                server("tt_auto", route("bt")),
                server("unix", route("bx"), lst=listener(str(tmp / "proxy.sock"))),
                server(
                    "routed",
                    route("b1")
                    + f"""
[[servers.routed.routes]]
methods = ["whoami", "accepted"]
upstreams = [{{ endpoint = {endpoint(b["b2"])} }}]
""",
                ),
                server(
                    "nodefault",
                    f"""
[[servers.nodefault.routes]]
methods = ["ping"]
upstreams = [{{ endpoint = {endpoint(b["b1"])} }}]
""",
                ),
                server(
                    "down", f"route = {{ upstreams = [{{ endpoint = {endpoint(f'127.0.0.1:{dead}')} }}] }}"
                ),
                server("slowpoke", "timeout = { upstream_read_timeout_sec = 0.5 }\n" + route("b1")),
                server("blackhole", "timeout = { upstream_connect_timeout_sec = 0.3 }\n" + route("hole")),
                server(
                    "strict",
                    "max_frame_size = 4096\ntimeout = { server_keepalive_timeout_sec = 1, "
                    "server_message_timeout_sec = 0.5 }\n" + route("b1"),
                ),
                server("reuse", route("bp")),
                server(
                    "failover",
                    'route = { load_balancer = "round_robin", eject_after_failures = 1, '
                    f"upstreams = [{{ endpoint = {endpoint(f'127.0.0.1:{dead}')} }}, "
                    f"{{ endpoint = {endpoint(b['b2'])} }}] }}",
                ),
                server("pp", "proxy_protocol = true\n" + route("b1")),
                (server("v6", route("b1"), lst=listener(f"[::1]:{free_port('::1')}")) if HAS_V6 else ""),
                (
                    server("tls", f'tls = {{ chain = "{cert}", key = "{tmp / "key.pem"}" }}\n' + route("b1"))
                    if cert.exists()
                    else ""
                ),
                server(
                    "layered",
                    route("b1")
                    + """
[[servers.layered.layers]]
factory = "tests.thrift.layers:GuardFactory"
options = { deny = ["where"] }
""",
                ),
            ]
        )
        px = stack.enter_context(proxy(tmp, servers, runtime=f'runtime_type = "{request.param}"'))
        yield Env(px, b, tmp)


def big_item(i: int) -> object:
    return E.Item(
        name=f"item-{i}",
        count=i,
        inner=E.Inner(id=i, label="é" * i),
        inners=[E.Inner(id=j) for j in range(i % 4)],
        scores={"a": 1, "b": i},
        tags=["t1", "t2"],
        color=E.Color.BLUE,
        blob=bytes(range(256)),
        ratio=0.25 * i,
        flag=True,
        tiny=-3,
        small=1234,
        nested={1: ["x"], 2: []},
        deep=[{"k": E.Inner(id=1, label="d")}],
        palette=[E.Color.RED],
    )


def test_framed_round_trip_every_call(env: Env) -> None:
    c = client(env.addr("auto"))
    try:
        assert c.ping() == "pong"
        assert c.echo("héllo ✓") == "héllo ✓"
        assert c.add(2, 2**40) == 2**40 + 2
        assert c.roundtrip(big_item(3)) == big_item(3)
        with pytest.raises(E.NotFound) as nf:
            c.roundtrip(E.Item(name="missing"))
        assert nf.value.code == 404
        with pytest.raises(E.Invalid):
            c.roundtrip(E.Item(name="invalid"))
        assert c.nothing() is None
        assert c.blob(b"\x00\x01\xff") == b"\xff\x01\x00"
        c.fire("note-framed")  # oneway: no reply comes back
        assert "note-framed" in c.fired()
        assert c.colors([E.Color.RED], {1, 2}, {E.Color.BLUE: "b"}) == [E.Color.RED, E.Color.BLUE, 2]
    finally:
        c.close()


@pytest.mark.parametrize("server", ["unframed", "auto_unframed"])
def test_unframed_round_trip(env: Env, server: str) -> None:
    c = client(env.addr(server), transport="buffered")
    try:
        assert c.whoami() == "bu"
        for i in range(20):
            assert c.roundtrip(big_item(i)) == big_item(i)
        c.fire(f"note-{server}")
        assert f"note-{server}" in c.fired()
    finally:
        c.close()


@pytest.mark.parametrize("server", ["tt", "tt_auto"])
def test_ttheader_headers_and_seqids_survive(env: Env, server: str) -> None:
    sock = connect(env.addr(server))
    with sock:
        frames = []
        for i in range(10):
            payload = encode_call("echo", 500 + i, text=f"tt-{i}")
            frames.append(
                tt_frame(
                    payload,
                    seq_id=900 + i,
                    strs={"req": str(i), "caller": "test"},
                    ints={2: f"log-{i}", 7: "x"},
                    flags=1,
                )
            )
        sock.sendall(b"".join(frames))  # pipelined on one connection
        got = {}
        for _ in range(10):
            parsed = tt_parse(read_tt_frame(sock))
            seqid, result = decode_reply("echo", parsed["payload"])
            got[seqid] = (parsed, result)
    assert sorted(got) == [500 + i for i in range(10)]
    for i in range(10):
        parsed, result = got[500 + i]
        assert result == f"tt-{i}"
        assert parsed["seq_id"] == 900 + i  # the TTHeader's own seq_id is restored too
        assert parsed["strs"]["req"] == str(i) and parsed["strs"]["caller"] == "test"
        assert parsed["strs"]["x-backend"] == "bt"
        assert parsed["ints"] == {2: f"log-{i}", 7: "x"}
        assert parsed["flags"] == 1


def test_unix_listener_and_unix_upstream(env: Env) -> None:
    c = client(str(env.tmp / "proxy.sock"))
    try:
        assert c.whoami() == "bx"
        assert c.roundtrip(big_item(5)) == big_item(5)
    finally:
        c.close()


def test_routing_by_method_name(env: Env) -> None:
    c = client(env.addr("routed"))
    try:
        assert c.whoami() == "b2"  # the methods route
        assert c.where() == "b1"  # the default route
        assert c.echo("x") == "x"
    finally:
        c.close()


def test_no_route_is_an_unknown_method_reply(env: Env) -> None:
    c = client(env.addr("nodefault"))
    try:
        assert c.ping() == "pong"
        with pytest.raises(TApplicationException) as exc:
            c.echo("nope")
        assert exc.value.type == TApplicationException.UNKNOWN_METHOD
        assert "no route" in str(exc.value.message)
        assert c.ping() == "pong"  # the connection survived
    finally:
        c.close()


def test_upstream_down_answers_each_request_with_an_exception(env: Env) -> None:
    c = client(env.addr("down"))
    try:
        for _ in range(3):
            with pytest.raises(TApplicationException) as exc:
                c.echo("x")
            assert exc.value.type == TApplicationException.INTERNAL_ERROR
            assert "cannot connect" in str(exc.value.message)
    finally:
        c.close()
    assert env.px.proc.poll() is None


def test_upstream_read_timeout_then_the_connection_goes_on(env: Env) -> None:
    c = client(env.addr("slowpoke"))
    try:
        t0 = time.monotonic()
        with pytest.raises(TApplicationException) as exc:
            c.slow(3.0, "late")
        elapsed = time.monotonic() - t0
        assert exc.value.type == TApplicationException.INTERNAL_ERROR
        assert "did not answer" in str(exc.value.message)
        assert 0.4 < elapsed < 6, elapsed
        assert c.slow(0.0, "quick") == "quick"
    finally:
        c.close()


def test_upstream_connect_timeout(env: Env) -> None:
    c = client(env.addr("blackhole"))
    try:
        t0 = time.monotonic()
        with pytest.raises(TApplicationException) as exc:
            c.ping()
        assert "timed out" in str(exc.value.message)
        assert time.monotonic() - t0 < 6
    finally:
        c.close()


def test_many_requests_in_flight_on_one_connection(env: Env) -> None:
    """100 pipelined calls with their own seqids: all answered, matched by seqid, in parallel."""
    sock = connect(env.addr("auto"), timeout=20)
    rnd = random.Random(1)
    seqids = rnd.sample(range(1, 10**6), 100)
    with sock:
        t0 = time.monotonic()
        out = b""
        for i, sid in enumerate(seqids):
            msg = encode_call("slow", sid, seconds=0.4 if i % 2 else 0.0, tag=f"tag-{sid}")
            out += struct.pack("!I", len(msg)) + msg
        sock.sendall(out)
        replies = {}
        order = []
        for _ in seqids:
            sid, result = decode_reply("slow", read_framed(sock))
            replies[sid] = result
            order.append(sid)
        elapsed = time.monotonic() - t0
    assert replies == {sid: f"tag-{sid}" for sid in seqids}
    assert elapsed < 12.0, f"100 calls of which 50 sleep 0.4 s took {elapsed:.1f}s: not concurrent"
    # the quick ones overtook the slow ones: replies go out as they complete
    assert order != seqids


def test_concurrent_clients(env: Env) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            c = client(env.addr("auto"))
            try:
                for i in range(40):
                    text = f"client-{n}-call-{i}"
                    assert c.echo(text) == text
            finally:
                c.close()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


def test_malformed_frame_closes_only_that_connection(env: Env) -> None:
    sock = connect(env.addr("auto"))
    with sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
        assert closed_by_peer(sock)
    wait_for(
        lambda: any(e.get("event") == "thrift_bad_frame" for e in env.px.log_events()),
        what="a thrift_bad_frame log line",
    )
    c = client(env.addr("auto"))
    try:
        assert c.ping() == "pong"
    finally:
        c.close()


def test_frame_over_max_frame_size_closes_the_connection(env: Env) -> None:
    sock = connect(env.addr("strict"))
    with sock:
        sock.sendall(struct.pack("!I", 5000) + b"\x80\x01\x00\x01")
        assert closed_by_peer(sock)
    events = wait_for(
        lambda: [
            e
            for e in env.px.log_events()
            if e.get("event") == "thrift_bad_frame" and "max_frame_size" in e.get("error", "")
        ],
        what="an oversized-frame log line",
    )
    assert events
    c = client(env.addr("strict"))
    try:
        assert c.echo("a" * 1000) == "a" * 1000  # under the limit: fine
    finally:
        c.close()


def test_partial_message_times_out(env: Env) -> None:
    sock = connect(env.addr("strict"))
    with sock:
        sock.sendall(struct.pack("!I", 100) + b"\x80\x01\x00\x01")
        t0 = time.monotonic()
        assert closed_by_peer(sock, timeout=8)
        assert time.monotonic() - t0 < 7


def test_idle_connection_closed_after_keepalive_timeout(env: Env) -> None:
    sock = connect(env.addr("strict"))
    with sock:
        msg = encode_call("ping", 1)
        sock.sendall(struct.pack("!I", len(msg)) + msg)
        assert decode_reply("ping", read_framed(sock)) == (1, "pong")
        t0 = time.monotonic()
        assert closed_by_peer(sock, timeout=6)
        assert time.monotonic() - t0 > 0.5


def test_upstream_connections_are_pooled(env: Env) -> None:
    c = client(env.addr("reuse"))
    try:
        for i in range(50):
            assert c.echo(str(i)) == str(i)
        assert c.accepted() == 1  # fifty calls (and this one) on one pooled connection
    finally:
        c.close()
    c = client(env.addr("reuse"))
    try:
        assert c.accepted() == 1  # a new client connection still reuses the idle one
    finally:
        c.close()


def test_ejected_upstream_is_skipped(env: Env) -> None:
    c = client(env.addr("failover"))
    try:
        outcomes = []
        for _ in range(6):
            try:
                outcomes.append(c.whoami())
            except TApplicationException as exc:
                assert "cannot connect" in str(exc.message)
                outcomes.append("error")
        # at most the first pick of the dead upstream fails; once ejected, b2 takes everything
        assert outcomes.count("error") <= 1 and outcomes[-4:] == ["b2"] * 4, outcomes
    finally:
        c.close()


def test_custom_layer_sees_every_request(env: Env) -> None:
    c = client(env.addr("layered"))
    try:
        assert c.echo("through the stack") == "through the stack"
        c.fire("layered-oneway")
        assert "layered-oneway" in c.fired()
        with pytest.raises(TApplicationException) as exc:
            c.where()
        assert "refused by the guard layer" in str(exc.value.message)
        assert c.ping() == "pong"
    finally:
        c.close()


def test_tls_termination(env: Env) -> None:
    if "tls" not in env.px.servers:
        pytest.skip("the openssl CLI is not installed: no test certificate")
    from thriftpy2.rpc import make_client
    from thriftpy2.transport import TFramedTransportFactory

    ctx = ssl.create_default_context(cafile=str(env.tmp / "cert.pem"))
    host, _, port = env.addr("tls").rpartition(":")
    c = make_client(
        E.Echo, host, int(port), trans_factory=TFramedTransportFactory(), ssl_context=ctx, timeout=10000
    )
    try:
        assert c.echo("over tls") == "over tls"
        assert c.roundtrip(big_item(2)) == big_item(2)
    finally:
        c.close()


def test_proxy_protocol_header(env: Env) -> None:
    msg = encode_call("echo", 42, text="behind a balancer")
    sock = connect(env.addr("pp"))
    with sock:
        sock.sendall(b"PROXY TCP4 127.0.0.9 127.0.0.1 5555 9090\r\n" + struct.pack("!I", len(msg)) + msg)
        assert decode_reply("echo", read_framed(sock)) == (42, "behind a balancer")
        sock.sendall(b"not thrift at all")
        assert closed_by_peer(sock)
    # the client address of the PROXY header is the one logged
    wait_for(
        lambda: any(
            e.get("event") == "thrift_bad_frame" and e.get("peer") == "127.0.0.9:5555"
            for e in env.px.log_events()
        ),
        what="a log line with the PROXY protocol peer",
    )
    sock = connect(env.addr("pp"))
    with sock:
        sock.sendall(struct.pack("!I", len(msg)) + msg)  # no PROXY header: refused
        assert closed_by_peer(sock)


@pytest.mark.skipif(not HAS_V6, reason="no IPv6 loopback")
def test_ipv6_listener(env: Env) -> None:
    addr = env.addr("v6")
    assert addr.startswith("[::1]:")
    msg = encode_call("whoami", 3)
    sock = connect(addr)
    with sock:
        sock.sendall(struct.pack("!I", len(msg)) + msg)
        assert decode_reply("whoami", read_framed(sock)) == (3, "b1")
