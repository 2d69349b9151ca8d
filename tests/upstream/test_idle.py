"""The kit's idle list and address (worker/upstream/idle.py, address.py), which the HTTP and
Thrift pools both keep their idle connections in: LIFO hand-out, the limit, expiry, closing
what is dead, and the fd hand-over to the next generation over real sockets."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator

import pytest

from monolake.worker.upstream.address import Address, adopt, host_port
from monolake.worker.upstream.idle import IdleCounters, IdleList, import_fd, peer_gone


class _Transport:
    def __init__(self, sock: socket.socket | None = None) -> None:
        self.sock = sock
        self.closing = False
        self.aborted = False

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str) -> socket.socket | None:
        return self.sock if name == "socket" else None

    def abort(self) -> None:
        self.aborted = self.closing = True


class _Conn:
    def __init__(self, name: str, sock: socket.socket | None = None) -> None:
        self.name = name
        self.idle_since = 0.0
        self.closed = False
        self.transport = _Transport(sock)

    def close(self) -> None:
        self.closed = True
        self.transport.closing = True

    def __repr__(self) -> str:
        return self.name


def test_newest_first_within_the_limit() -> None:
    counters = IdleCounters()
    idle: IdleList[_Conn] = IdleList(counters)
    a, b, c = _Conn("a"), _Conn("b"), _Conn("c")
    assert idle.park(a, 1.0, 2) and idle.park(b, 2.0, 2)
    assert not idle.park(c, 3.0, 2)  # full: the caller closes it
    assert idle == [a, b] and b.idle_since == 2.0
    assert idle.take() is b and idle.take() is a and idle.take() is None
    assert counters.reused == 2


def test_dead_connections_are_closed_and_skipped() -> None:
    idle: IdleList[_Conn] = IdleList(IdleCounters())
    live, closing, closed = _Conn("live"), _Conn("closing"), _Conn("closed")
    closing.transport.closing = True
    closed.closed = True
    idle.extend([live, closing, closed])
    assert idle.take() is live and closing.closed and not idle


def test_refused_connections_are_dropped_not_handed_out() -> None:
    idle: IdleList[_Conn] = IdleList(IdleCounters())
    a = _Conn("a")
    idle.extend([a, a])
    seen: set[int] = set()

    def refuse(conn: _Conn) -> bool:
        twice = id(conn) in seen
        seen.add(id(conn))
        return twice

    assert idle.take(refuse) is a
    seen.add(id(a))
    assert idle.take(refuse) is None and not a.closed


def test_expiry_with_one_or_per_connection_timeouts() -> None:
    counters = IdleCounters()
    idle: IdleList[_Conn] = IdleList(counters)
    old, mid, new = _Conn("old"), _Conn("mid"), _Conn("new")
    for conn, t in ((old, 0.0), (mid, 5.0), (new, 9.0)):
        idle.park(conn, t, 10)
    assert idle.expire(9.9, 5.0) == [old] and not mid.closed
    assert idle.expire(10.0, 5.0) == [mid] and old.closed and mid.closed
    assert idle == [new] and counters.expired == 2
    assert idle.expire(10.0, lambda c: 1.0 if c is new else 100.0) == [new] and not idle


def test_close_where_and_discard() -> None:
    idle: IdleList[_Conn] = IdleList(IdleCounters())
    a, b = _Conn("a"), _Conn("b")
    idle.extend([a, b])
    assert idle.close_where(lambda c: c is a) == [a] and a.closed and idle == [b]
    idle.discard(a)  # not there: no error
    idle.discard(b)
    assert not idle


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    x, y = socket.socketpair()
    yield x, y
    x.close()
    y.close()


def test_export_hands_over_a_working_fd(pair: tuple[socket.socket, socket.socket]) -> None:
    x, y = pair
    counters = IdleCounters()
    idle: IdleList[_Conn] = IdleList(counters)
    keep, tls, gone = _Conn("keep", x), _Conn("tls", x), _Conn("nosock")
    idle.extend([keep, tls, gone])
    fds: list[int] = [-1]
    moved = idle.export(fds, lambda c: c is not tls)
    assert moved == [keep] and len(fds) == 2 and idle == [tls, gone]
    assert keep.closed and keep.transport.aborted and counters.exported == 1
    sock = import_fd(fds[1])
    assert sock is not None and not sock.getblocking()
    with sock:
        sock.sendall(b"ping")
        assert y.recv(4) == b"ping"
        assert not peer_gone(sock)
        y.shutdown(socket.SHUT_WR)
        assert peer_gone(sock)


def test_import_of_something_that_is_no_socket() -> None:
    r, w = os.pipe()
    os.close(w)
    assert import_fd(r) is None
    with pytest.raises(OSError):
        os.fstat(r)  # closed, not leaked
    assert import_fd(-1) is None


def test_address_labels() -> None:
    assert Address("10.0.0.1", 80).label == "10.0.0.1:80"
    assert Address("::1", 9090).label == "[::1]:9090" == host_port("::1", 9090)
    assert Address(path="/run/u.sock").label == "unix:/run/u.sock"


class _Echo(asyncio.Protocol):
    def __init__(self) -> None:
        self.got = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if not self.got.done():
            self.got.set_result(data)


def test_connect_and_adopt_tcp_and_unix(tmp_path: object) -> None:
    async def main() -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.read(10))
            await writer.drain()
            writer.close()

        tcp = await asyncio.start_server(answer, "127.0.0.1", 0)
        path = os.path.join(str(tmp_path), "u.sock")
        unix = await asyncio.start_unix_server(answer, path)
        port = tcp.sockets[0].getsockname()[1]
        try:
            for addr in (Address("127.0.0.1", port), Address(path=path)):
                loop = asyncio.get_running_loop()
                transport, proto = await addr.connect(loop, _Echo)
                transport.write(b"hi")
                assert await asyncio.wait_for(proto.got, 5) == b"hi"
                transport.close()
                family = socket.AF_UNIX if addr.path else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.connect(addr.path or ("127.0.0.1", port))
                sock.setblocking(False)
                transport, proto = await adopt(loop, _Echo, sock)
                transport.write(b"again")
                assert await asyncio.wait_for(proto.got, 5) == b"again"
                transport.close()
        finally:
            tcp.close()
            unix.close()
            await tcp.wait_closed()
            await unix.wait_closed()

    asyncio.run(main())
