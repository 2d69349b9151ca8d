"""Unmodified asyncio libraries on the loop (skipped when the library is not installed)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tests.uring.conftest import run

Factory = Callable[[], asyncio.AbstractEventLoop]


def test_aiohttp_server_client_and_websocket(loop_factory: Factory) -> None:
    aiohttp = pytest.importorskip("aiohttp")
    from aiohttp import web

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hi " + request.match_info["name"])

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"b" * 3_000_000)

    async def echo_ws(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(msg.data.upper())
        return ws

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/h/{name}", hello)
        app.router.add_get("/big", big)
        app.router.add_get("/ws", echo_ws)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            async with aiohttp.ClientSession() as session:
                responses = await asyncio.gather(
                    *(session.get(f"http://127.0.0.1:{port}/h/{i}") for i in range(50))
                )
                assert [await r.text() for r in responses] == [f"hi {i}" for i in range(50)]
                r = await session.get(f"http://127.0.0.1:{port}/big")
                assert len(await r.read()) == 3_000_000
                async with session.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
                    await ws.send_str("ping")
                    assert (await ws.receive()).data == "PING"
        finally:
            await runner.cleanup()

    run(loop_factory, main(), timeout=60)


def test_streams_http_client_server(loop_factory: Factory) -> None:
    """asyncio streams (StreamReader/Writer, drain, readuntil) under a small HTTP exchange."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            body = b"path=" + head.split(b" ")[1]
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in range(100):
            writer.write(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            assert await reader.readexactly(length) == b"path=/%d" % i
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop_factory, main())
