"""A Thrift upstream connection with bytes nobody asked for is closed, never pooled.

Pooled Thrift connections are matched by seqid, but a partial message left after the last
awaited reply (or bytes on a connection with nothing in flight) would prefix the next reply
read on it: such a connection fails instead of going back to the idle list (issue 16 §1)."""

from __future__ import annotations

import struct

from monolake.worker.thrift.framing import FRAMED, Deframer
from monolake.worker.thrift.pool import Call, Endpoint, EndpointPool, PoolSettings, UpstreamConnection
from monolake.worker.thrift.stats import Counters
from tests.thrift.thrift_support import encode_call


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True

    close = abort


class _Sink:
    def __init__(self) -> None:
        self.replies: list[int] = []
        self.errors: list[str] = []

    def on_reply(self, call: Call, frame: object) -> None:
        self.replies.append(call.seqid)

    def on_error(self, call: Call, error: Exception) -> None:
        self.errors.append(str(error))


def _framed(message: bytes) -> bytes:
    return struct.pack("!I", len(message)) + message


def _connection() -> tuple[EndpointPool, UpstreamConnection, _Transport, _Sink, int]:
    """A connected upstream connection with one call in flight; returns the seqid it was sent as."""
    pool = EndpointPool(Endpoint("socket", "127.0.0.1", 9), FRAMED, PoolSettings(), Counters(), loop=None)
    pool.clock = 1.0
    conn = UpstreamConnection(pool)
    pool.conns.append(conn)
    transport = _Transport()
    conn.transport = transport  # type: ignore[assignment]
    sink = _Sink()
    request = Deframer(FRAMED, 1 << 20).feed(_framed(encode_call("echo", 7, text="hi")))[0]
    conn.send(request, Call(sink, 7, None, None), now=0.0)
    sent = Deframer(FRAMED, 1 << 20).feed(transport.written[-1])[0]
    return pool, conn, transport, sink, sent.head.seqid


def _reply(seqid: int) -> bytes:
    return _framed(encode_call("echo", seqid, mtype=2, text="hi"))  # REPLY


def test_a_clean_reply_returns_the_connection_to_the_idle_list():
    pool, conn, transport, sink, seqid = _connection()
    conn.data_received(_reply(seqid))
    assert sink.replies == [7] and pool.idle == [conn] and not transport.aborted


def test_half_a_message_after_the_last_reply_closes_the_connection():
    pool, conn, transport, sink, seqid = _connection()
    conn.data_received(_reply(seqid) + _reply(seqid + 1)[:9])
    assert sink.replies == [7]  # the awaited reply is delivered
    assert transport.aborted and pool.idle == [] and conn not in pool.conns
    assert pool.counters.upstream_unsolicited == 1


def test_bytes_with_nothing_in_flight_close_the_connection():
    pool, conn, transport, _sink, seqid = _connection()
    conn.data_received(_reply(seqid))
    conn.data_received(b"\x00\x00")
    assert transport.aborted and pool.idle == [] and pool.counters.upstream_unsolicited == 1
