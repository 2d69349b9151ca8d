"""Each flood defence against a malicious client over a real loopback socket, on the io_uring
loop and on epoll: the offender's connection is closed quickly, the server's memory and CPU stay
bounded, and a well-behaved client is served right after."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest

from tests.h2 import attack
from tests.h2.conftest import EchoServer
from tests.h2.peer import H2LibClient, stats
from tests.support import pid_alive

ENHANCE_YOUR_CALM, INTERNAL_ERROR = 0xB, 0x2
RSS_BOUND_KB = 32 * 1024  # growth allowed for the whole attack (the echo server idles at ~27 MB)
CPU_BOUND_S = 3.0


def assert_defended(
    echo: EchoServer,
    make: Callable[[], Iterable[bytes]],
    *,
    read: bool = True,
    codes: tuple[int, ...] = (ENHANCE_YOUR_CALM,),
    failure: str = "",
) -> tuple:
    before = stats(echo.port)
    rcvbuf = None if read else 4096
    out = attack.Attacker(echo.port, read=read, rcvbuf=rcvbuf).run(make(), deadline=30)
    after = stats(echo.port)
    assert out.closed, f"the server kept the flooding connection open: {out}"
    assert out.seconds < 15, out
    if read:  # a reading attacker sees why
        assert out.goaway_codes and out.goaway_codes[-1] in codes, out
    assert after["goaways_sent"] and after["goaways_sent"][-1] in codes, (out, after)
    assert failure in after["failures"][-1]
    assert after["rss_kb"] - before["rss_kb"] < RSS_BOUND_KB, (before["rss_kb"], after["rss_kb"])
    assert after["cpu"] - before["cpu"] < CPU_BOUND_S
    # the server is fine for everyone else
    assert pid_alive(echo.pid)
    c = H2LibClient(echo.port)
    try:
        r = c.request("/echo", b"still here")
        assert bytes(r.body) == b"still here" and (b"grpc-status", b"0") in r.trailers
    finally:
        c.close()
    return out, before, after


def test_rapid_reset_is_cut_off(echo: EchoServer) -> None:
    """CVE-2023-44487: 20 000 HEADERS+RST_STREAM pairs; nghttp2's reset rate limit (burst 1000)
    sends GOAWAY, and a stream reset within the read that opened it never reaches the
    application (only a pair split across two reads can)."""
    out, before, after = assert_defended(
        echo, lambda: attack.rapid_reset(20_000), codes=(INTERNAL_ERROR, ENHANCE_YOUR_CALM)
    )
    processed = after["requests"] - before["requests"] - 1  # minus the /stats request
    assert processed < 100, processed
    assert out.sent < 20_000 * 20  # it stopped reading the attack, too


def test_continuation_flood_is_cut_off(echo: EchoServer) -> None:
    """CVE-2024-28182: one header block continued by 100 000 CONTINUATION frames; nghttp2
    stops at max_continuations (8) with GOAWAY(ENHANCE_YOUR_CALM)."""
    out, before, after = assert_defended(
        echo, lambda: attack.continuation_flood(100_000), failure="CONTINUATION"
    )
    assert after["requests"] - before["requests"] == 1  # only /stats: no request was built
    assert out.sent < 1_000_000


@pytest.mark.parametrize("kind", ["settings", "ping"])
def test_control_frame_flood_without_reading_is_cut_off(echo: EchoServer, kind: str) -> None:
    """SETTINGS or PING frames each demanding an ACK, from a client that reads nothing: the
    ACK queue is bounded (max_outbound_ack) and the session fails with ERR_FLOODED."""
    assert_defended(echo, lambda: attack.control_flood(kind, 2_000_000), read=False, failure="Flooding")


def test_hpack_bomb_is_cut_off(echo: EchoServer) -> None:
    """A 40-byte header block that decodes to 120 KB (a 4 KiB table entry referenced 30 times):
    never collected past max_header_list_size, each stream reset, and after the peer-error
    budget the connection gets GOAWAY(ENHANCE_YOUR_CALM). No request reached the application."""
    out, before, after = assert_defended(
        echo, lambda: attack.hpack_bomb(5_000), failure="header list too large"
    )
    assert after["requests"] - before["requests"] == 1
    assert out.rst_streams > 0


def test_flood_close_is_lingering_and_bounded(echo: EchoServer) -> None:
    """The close after a flood is a lingering one: the GOAWAY is followed by FIN, not by the RST
    a close() with megabytes of unread attack input makes the kernel send (which failed the
    attacker's next send before it read the GOAWAY: the old flake of the HPACK bomb test).
    And bounded: an attacker that keeps sending after the FIN is reset within about a second."""
    cpu = stats(echo.port)["cpu"]
    attack.assert_lingering_close(echo.port, ENHANCE_YOUR_CALM)
    assert stats(echo.port)["cpu"] - cpu < CPU_BOUND_S
