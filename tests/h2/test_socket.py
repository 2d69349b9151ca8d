"""The sessions over a real loopback socket on the io_uring loop and on epoll: an echo server
built from H2ServerSession, exercised by nghttp2's own clients (nghttp, h2load), by the h2
library, and by a client built from H2ClientSession."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.h2 import aclient
from tests.h2.conftest import EchoServer
from tests.h2.echo_server import HIGH_WATER
from tests.h2.peer import H2LibClient, stats
from tests.uring.conftest import FACTORIES, run

LOOPS = {"uring": FACTORIES["io_uring"], "epoll": FACTORIES["asyncio"]}
needs_nghttp = pytest.mark.skipif(
    not shutil.which("nghttp") or not shutil.which("h2load"),
    reason="nghttp2-client (nghttp, h2load) not installed",
)
WINDOW = 65_535


def test_h2_library_client_get_echo_and_trailers(echo: EchoServer) -> None:
    c = H2LibClient(echo.port)
    try:
        r = c.request("/")
        assert r.status == 200 and bytes(r.body) == b"hello"
        body = os.urandom(3 << 20)
        r = c.request("/echo", body)
        assert bytes(r.body) == body
        assert r.trailers == [
            (b"grpc-status", b"0"),
            (b"grpc-message", b"echoed"),
            (b"x-received", str(len(body)).encode()),
        ]
    finally:
        c.close()


def test_rst_stream_mid_body_leaves_the_connection_usable(echo: EchoServer) -> None:
    c = H2LibClient(echo.port)
    try:
        before = stats(echo.port)["resets"]
        sid = c.open("/echo", "POST", end_stream=False)
        c.send_body(sid, b"x" * 100_000, end_stream=False)
        c.conn.reset_stream(sid, 0x8)
        c.flush()
        r = c.request("/echo", b"after the reset")
        assert bytes(r.body) == b"after the reset"
        assert stats(echo.port)["resets"] == before + 1
    finally:
        c.close()


@needs_nghttp
def test_nghttp_upload_echo_with_trailers(echo: EchoServer, tmp_path: Path) -> None:
    data = tmp_path / "body.bin"
    payload = os.urandom(1 << 20)
    data.write_bytes(payload)
    url = f"http://127.0.0.1:{echo.port}/echo"
    out = subprocess.run(["nghttp", "-d", str(data), url], capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == payload
    verbose = subprocess.run(
        ["nghttp", "-v", "-d", str(data), url], capture_output=True, text=True, errors="replace", timeout=30
    )
    assert verbose.returncode == 0
    # nghttp prints each received field ("recv (stream_id=13) name: value") before its frame;
    # the trailing HEADERS frame comes after the DATA frames and ends the stream
    text = verbose.stdout
    trailer_at = text.index("grpc-status: 0")
    assert "x-received: 1048576" in text[trailer_at:]
    assert text.rindex("recv DATA frame") < trailer_at
    frame = text[text.index("recv HEADERS frame", trailer_at) :]
    assert "END_STREAM" in frame.splitlines()[1]


@needs_nghttp
def test_h2load_multiplexed_streams(echo: EchoServer, tmp_path: Path) -> None:
    """2000 requests, 50 concurrent streams on each of 4 connections; then 200 uploads of
    64 KiB to /echo: every one succeeds."""
    url = f"http://127.0.0.1:{echo.port}/"
    out = subprocess.run(
        ["h2load", "-n", "2000", "-c", "4", "-m", "50", url], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"requests: 2000 total, 2000 started, 2000 done, 2000 succeeded", out.stdout)
    body = tmp_path / "64k.bin"
    body.write_bytes(b"b" * 65536)
    out = subprocess.run(
        ["h2load", "-n", "200", "-c", "2", "-m", "10", "-d", str(body), f"{url}echo"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert re.search(r"200 done, 200 succeeded", out.stdout), out.stdout


def test_64mib_upload_and_slow_download_keep_buffers_bounded(echo: EchoServer) -> None:
    """H2ClientSession uploads 64 MiB to /echo while reading the echo slowly: the server's
    queued bytes stay under its high-water mark plus a window, the client's reader never
    holds more than the stream window, and every byte arrives."""
    total = 64 << 20

    async def main() -> tuple:
        conn = await aclient.connect(echo.port)
        sid = conn.open("/echo", slow_reader=True)
        reader = asyncio.ensure_future(conn.consume(sid, per_chunk=0.0002))
        await conn.upload(sid, total)
        st = await conn.streams[sid].done
        await reader
        conn.close()
        return st, conn.peak_buffered

    st, client_peak = run(LOOPS[echo.loop], main(), timeout=120)
    assert st.received == total
    assert (b"x-received", str(total).encode()) in st.trailers
    assert st.peak_queued <= WINDOW, st.peak_queued
    assert client_peak <= aclient.HIGH_WATER + 64 * 1024
    s = stats(echo.port)
    assert s["peak_buffered"] <= HIGH_WATER + 2 * WINDOW, s
    assert s["peak_transport"] <= 2 * HIGH_WATER, s


def test_graceful_drain_over_the_socket(echo: EchoServer) -> None:
    """A streaming request is in flight when the server drains: the client sees the notice and
    the final GOAWAY (last stream = its stream), cannot open new streams, finishes its stream,
    then the server closes the connection."""

    async def main() -> None:
        conn = await aclient.connect(echo.port)
        sid = conn.open("/echo")
        conn.h2.send_data(sid, b"first half ")
        conn.flush()
        other = await aclient.connect(echo.port)
        d = other.open("/drain", "GET", end_stream=True)
        await asyncio.wait_for(other.streams[d].done, 10)
        for _ in range(500):  # readiness polling: both GOAWAYs arrive within a round trip
            if len(conn.goaways) >= 2:
                break
            await asyncio.sleep(0.01)
        assert [g.last_stream_id for g in conn.goaways] == [2**31 - 1, sid]
        assert not conn.h2.accepting_streams
        conn.h2.send_data(sid, b"second half", end_stream=True)
        conn.flush()
        st = await asyncio.wait_for(conn.streams[sid].done, 10)
        assert bytes(st.body) == b"first half second half"
        assert (b"grpc-status", b"0") in st.trailers
        await asyncio.wait_for(conn.lost, 10)  # the server closed the drained connection
        await asyncio.wait_for(other.lost, 10)

    run(LOOPS[echo.loop], main(), timeout=30)


def test_client_session_multiplexes_within_max_concurrent_streams(echo_factory, echo_loop: str) -> None:
    """600 echo calls over one H2ClientSession connection to a server allowing 50 streams:
    the client opens streams only while available_streams > 0, all complete with their own
    body and trailers, and the server never saw more than 50 at once."""
    echo = echo_factory(echo_loop, {"max_concurrent_streams": 50})

    async def main() -> int:
        conn = await aclient.connect(echo.port)
        for _ in range(200):  # the server's SETTINGS arrive within a round trip
            if conn.h2.max_concurrent_streams == 50:
                break
            await asyncio.sleep(0.01)
        assert conn.h2.max_concurrent_streams == 50
        pending: dict[int, bytes] = {}
        done = 0
        next_call = 0
        while done < 600:
            while next_call < 600 and conn.h2.available_streams > 0:
                sid = conn.open("/echo")
                body = b"call-%d " % next_call * 50
                conn.h2.send_data(sid, body, end_stream=True)
                pending[sid] = body
                next_call += 1
            conn.flush()
            finished, _ = await asyncio.wait(
                [conn.streams[s].done for s in pending], timeout=10, return_when=asyncio.FIRST_COMPLETED
            )
            assert finished, "no stream finished within 10 s"
            for sid in [s for s in pending if conn.streams[s].done.done()]:
                st = conn.streams[sid]
                assert bytes(st.body) == pending.pop(sid)
                assert (b"grpc-status", b"0") in st.trailers
                done += 1
        conn.close()
        return done

    assert run(LOOPS[echo_loop], main(), timeout=90) == 600
    assert stats(echo.port)["peak_streams"] <= 50
