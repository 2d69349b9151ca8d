"""Fixtures for the HTTP proxy tests: a real standalone worker process per test (or module),
real upstream servers, and a raw HTTP/1.1 client over loopback sockets."""

from __future__ import annotations

import json
import os
import re
import resource
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import children_of, kill_pids

PY = sys.executable


# the event loops the suite runs on: plain asyncio (uvloop hidden), and io_uring when the
# kernel and the extension allow it
def _uring_available() -> bool:
    try:
        from monolake.uring import probe

        return bool(probe().available)
    except Exception:
        return False


URING = _uring_available()
LOOPS = [
    "asyncio",
    pytest.param("io_uring", marks=pytest.mark.skipif(not URING, reason="io_uring unavailable")),
]
PARSERS = ["native", "httptools", "h11"]

# The two engines (issue 13 §3). The Python engine is the default and runs on every loop; the
# native engine (engine = "native": the C exchange of uring/mu_native.c for what it accepts, the
# Python engine for the rest) runs on io_uring only. For the tests, the native engine is one
# more "loop" value, "native": the io_uring runtime with engine = "native" in every http server
# of the config, its test ids end in [native] (`pytest tests/http -k native` picks them, and
# the native parser's, `-k "native and not io_uring and not asyncio"` only them). run_worker
# checks that the engine is on, so a config it declines as a whole cannot pass quietly.
# Which tests take the dimension: docs/contributing.md, "Both engines".
NATIVE = "native"
NATIVE_PARAM = pytest.param(NATIVE, marks=pytest.mark.skipif(not URING, reason="io_uring unavailable"))
ENGINE_LOOPS = [*LOOPS, NATIVE_PARAM]
# the Python engine on asyncio and the native engine: where the loop is covered elsewhere
ENGINES = ["asyncio", NATIVE_PARAM]
# (parser, loop) of the native engine: the parser the Python engine then uses is the default one
NATIVE_VARIANT = ("auto", NATIVE)
# every (parser, loop) pair, and the native engine, for module-scoped proxy fixtures:
# params=VARIANTS, ids=VARIANT_IDS
VARIANTS = [(p, loop) for p in PARSERS for loop in ("asyncio", "io_uring")] + [NATIVE_VARIANT]
VARIANT_IDS = [f"{p}-{loop}" for p, loop in VARIANTS[:-1]] + [NATIVE]
# each parser on the asyncio loop, and the native engine: for suites where the parser decides
# and the loop does not (params=PARSER_VARIANTS, ids=PARSER_VARIANT_IDS)
PARSER_VARIANTS = [(p, "asyncio") for p in PARSERS] + [NATIVE_VARIANT]
PARSER_VARIANT_IDS = [f"{p}-asyncio" for p in PARSERS] + [NATIVE]


def variant(param: tuple[str, str]) -> tuple[str, str]:
    """The (parser, loop) of a VARIANTS param; skips io_uring variants (the native engine's
    included) where io_uring is unavailable."""
    parser, loop = param
    if loop in ("io_uring", NATIVE) and not URING:
        pytest.skip("io_uring unavailable")
    return parser, loop


@dataclass
class Worker:
    proc: subprocess.Popen
    servers: dict[str, list[str]]
    runtime: str
    log_path: Path
    engine: str = "python"  # "native": run_worker(loop=NATIVE)

    def port(self, server: str = "px") -> int:
        return int(self.servers[server][0].rsplit(":", 1)[1])

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def peak_rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return 0


# MONOLAKE_TEST_ENGINE=native: every http server any test starts runs engine = "native" (the
# ENGINE_LOOPS / VARIANTS dimension covers the tests where the engine matters; this is for
# trying the rest, or the h2 suites, on it):
#   MONOLAKE_TEST_ENGINE=native pytest tests/http/test_layered_path.py -k io_uring
TEST_ENGINE = os.environ.get("MONOLAKE_TEST_ENGINE", "")


def with_engine(config: str, engine: str = "") -> str:
    """``config`` with ``engine = ENGINE`` (default: TEST_ENGINE) in each http server table
    that names none."""
    engine = engine or TEST_ENGINE
    if not engine or "engine =" in config:
        return config
    return re.sub(r'(?m)^(proxy_type = "http"\s*)$', rf'\1\nengine = "{engine}"', config)


def runtime_line(loop: str) -> str:
    return 'runtime_type = "io_uring"' if loop in ("io_uring", NATIVE) else 'runtime_type = "legacy"'


@contextmanager
def run_worker(
    tmp: Path, config: str, loop: str = "asyncio", timeout: float = 15.0, nofile: int | None = None
) -> Iterator[Worker]:
    """Start ``python -m monolake.worker --standalone -c CONFIG``; wait for its READY line.
    ``loop``: "asyncio", "io_uring", or NATIVE (io_uring with engine = "native": the worker
    must then say that the native engine is on). ``nofile``: the worker's RLIMIT_NOFILE (soft
    and hard)."""
    cfg = tmp / f"monolake-{time.monotonic_ns()}.toml"
    engine = "native" if loop == NATIVE else ""
    cfg.write_text(f"[runtime]\n{runtime_line(loop)}\nworkers = 1\n\n" + with_engine(config, engine))
    log_path = tmp / (cfg.stem + ".log")
    if loop == "asyncio":
        code = (
            "import sys, runpy; sys.modules['uvloop'] = None; "
            f"sys.argv = ['monolake.worker', '--standalone', '-c', {str(cfg)!r}]; "
            "runpy.run_module('monolake.worker', run_name='__main__', alter_sys=True)"
        )
        args = [PY, "-c", code]
    else:
        args = [PY, "-m", "monolake.worker", "--standalone", "-c", str(cfg)]
    with open(log_path, "wb") as err:
        limit = (
            None if nofile is None else (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)))
        )
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, preexec_fn=limit)
    try:
        deadline = time.monotonic() + timeout
        line = b""
        stdout = proc.stdout
        assert stdout is not None  # stdout=PIPE
        while time.monotonic() < deadline:
            r, _, _ = select.select([stdout], [], [], 0.1)
            if r:
                line = stdout.readline()
                if line.startswith(b"READY ") or not line:
                    break
            if proc.poll() is not None:
                break
        if not line.startswith(b"READY "):
            raise AssertionError(f"worker did not become ready: {line!r}\n{log_path.read_text()[-4000:]}")
        info = json.loads(line[6:])
        if loop == NATIVE:
            text = log_path.read_text()
            assert '"event": "native_engine"' in text and "native_engine_off" not in text, (
                f"the native engine is not on: {text[-4000:]}"
            )
        yield Worker(proc, info["servers"], info.get("runtime", ""), log_path, engine or "python")
    finally:
        kill_pids([proc.pid, *children_of(proc.pid)])
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
        if proc.stdout:
            proc.stdout.close()


# -- a raw HTTP/1.1 client -------------------------------------------------------------------
@dataclass
class Reply:
    status: int
    reason: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def json(self) -> dict:
        return json.loads(self.body)


class Conn:
    """A blocking loopback connection that can send raw bytes and read whole responses."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0, rcvbuf: int = 0) -> None:
        """``rcvbuf``: SO_RCVBUF set before the connect, so the window the handshake offers
        is that small from the start (set after it, the window shrinks under a scale chosen
        for the default size, and each 64 KiB then takes ~1.7 s of persist-timer probes)."""
        if rcvbuf:
            family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            self.sock = socket.socket(family, kind, proto)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(timeout)
            self.sock.connect(addr)
        else:
            # getaddrinfo picks the family (::1 too); a 4-tuple address would not unpack here
            self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(1 << 20)
        if not data:
            return False
        self.buf += data
        return True

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError("closed while reading a line")
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def read_head(self) -> tuple[int, str, str, list[tuple[str, str]]]:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError(f"closed while reading a head: {self.buf[:200]!r}")
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        version, status, *reason = lines[0].decode("latin-1").split(" ", 2)
        headers = []
        for line in lines[1:]:
            k, _, v = line.decode("latin-1").partition(":")
            headers.append((k.strip().lower(), v.strip()))
        return int(status), (reason[0] if reason else ""), version, headers

    def read_response(self, method: str = "GET", sink: Callable[[bytes], object] | None = None) -> Reply:
        """One response; 1xx interim responses are skipped. ``sink(chunk)`` streams the body."""
        while True:
            status, reason, version, headers = self.read_head()
            if not (100 <= status < 200) or status == 101:
                break
        hd = {k: v for k, v in headers}
        parts: list[bytes] = []

        def take(data: bytes) -> None:
            if sink is not None:
                sink(data)
            else:
                parts.append(data)

        if method == "HEAD" or status in (204, 304) or status == 101:
            pass
        elif hd.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line() != b"":
                        pass
                    break
                while len(self.buf) < size + 2:
                    if not self._fill():
                        raise ConnectionError("closed inside a chunk")
                take(self.buf[:size])
                self.buf = self.buf[size + 2 :]
        elif "content-length" in hd:
            left = int(hd["content-length"])
            while left:
                if not self.buf and not self._fill():
                    raise ConnectionError(f"closed with {left} body bytes missing")
                piece = self.buf[:left]
                self.buf = self.buf[len(piece) :]
                left -= len(piece)
                take(piece)
        else:
            while True:
                if self.buf:
                    take(self.buf)
                    self.buf = b""
                if not self._fill():
                    break
        return Reply(status, reason, version, headers, b"".join(parts))

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        host: str = "test",
    ) -> Reply:
        h = {"Host": host}
        h.update(headers or {})
        if body and "Content-Length" not in h and "Transfer-Encoding" not in h:
            h["Content-Length"] = str(len(body))
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
        self.send(head.encode("latin-1") + body)
        return self.read_response(method)

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True when the server closes the connection (EOF or reset) within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.buf += data
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def proxy_config(tables: str, parser: str | None = None) -> str:
    """The config of one HTTP proxy server ``px`` on a free loopback port (with ``parser``, when
    given); ``tables`` are the rest of it ([servers.px.timeout], [[servers.px.routes]], ...)."""
    from tests.support import free_port

    head = f'[servers.px]\nproxy_type = "http"\nlistener = {{ type = "socket", value = "127.0.0.1:{free_port()}" }}\n'
    if parser is not None:
        head += f'http_parser = "{parser}"\n'
    return head + tables


def serve_proxy(param: tuple[str, str], tmp: Path, tables: str) -> Iterator[Worker]:
    """The body of a module's ``proxy`` fixture: proxy_config(tables) run with the VARIANTS
    ``param``'s parser and loop (or engine)."""
    parser, loop = variant(param)
    with run_worker(tmp, proxy_config(tables, parser), loop=loop) as w:
        yield w


def proxy_fixture(tables: Callable[[Any], str]) -> Any:
    """A module-scoped ``proxy`` fixture over VARIANTS: ``serve_proxy`` of ``tables(upstream)``,
    the module's ``upstream`` (``upstream_fixture``) passed in."""

    @pytest.fixture(scope="module", params=VARIANTS, ids=VARIANT_IDS)
    def proxy(request: pytest.FixtureRequest, upstream: Any, tmp_path_factory: Any) -> Iterator[Worker]:
        yield from serve_proxy(request.param, tmp_path_factory.mktemp("w"), tables(upstream))

    return proxy


def upstream_fixture(name: str) -> Any:
    """A module-scoped ``upstream`` fixture: one tests/http/upstream.py server for the module."""
    from tests.http.upstream import UpstreamServer

    @pytest.fixture(scope="module")
    def upstream() -> Iterator[UpstreamServer]:
        with UpstreamServer(name) as up:
            yield up

    return upstream


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path
