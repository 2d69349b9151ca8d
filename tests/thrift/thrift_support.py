"""Helpers for the Thrift tests: the test IDL, a TTHeader codec written from the spec (so the
proxy's own codec is checked against an independent one), and backend/proxy processes."""

from __future__ import annotations

import json
import os
import re
import select
import socket
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import thriftpy2

from tests.support import PYTHON, free_port, kill_pids, spawned, wait_for

HERE = Path(__file__).resolve().parent

IDL = HERE / "echo.thrift"
echo_thrift = thriftpy2.load(str(IDL), module_name="echo_thrift")

__all__ = [
    "IDL",
    "echo_thrift",
    "tt_frame",
    "tt_parse",
    "backend",
    "proxy",
    "free_port",
    "wait_for",
    "kill_pids",
    "encode_call",
    "decode_reply",
    "client",
    "whoami",
]
E = echo_thrift


def encode_call(method: str, seqid: int, proto: str = "binary", mtype: int | None = None, **kwargs) -> bytes:
    """A whole call message for ``Echo.method`` (strict binary, old binary or compact)."""
    from thriftpy2.protocol.binary import TBinaryProtocol
    from thriftpy2.protocol.compact import TCompactProtocol
    from thriftpy2.thrift import TMessageType
    from thriftpy2.transport import TMemoryBuffer

    buf = TMemoryBuffer()
    prot = (
        TCompactProtocol(buf)
        if proto == "compact"
        else TBinaryProtocol(buf, strict_write=(proto == "binary"))
    )
    result_cls = getattr(E.Echo, method + "_result")
    if mtype is None:
        mtype = TMessageType.ONEWAY if getattr(result_cls, "oneway", False) else TMessageType.CALL
    args = getattr(E.Echo, method + "_args")(**kwargs)
    prot.write_message_begin(method, mtype, seqid)
    args.write(prot)
    prot.write_message_end()
    return buf.getvalue()


def decode_reply(method: str, data: bytes, proto: str = "binary") -> tuple[int, object]:
    """(seqid, result) of a reply message; a TApplicationException or declared exception is
    returned (not raised) so tests can assert on it."""
    from thriftpy2.protocol.binary import TBinaryProtocol
    from thriftpy2.protocol.compact import TCompactProtocol
    from thriftpy2.thrift import TApplicationException, TMessageType
    from thriftpy2.transport import TMemoryBuffer

    buf = TMemoryBuffer(data)
    prot = TCompactProtocol(buf) if proto == "compact" else TBinaryProtocol(buf, strict_read=False)
    name, mtype, seqid = prot.read_message_begin()
    if mtype == TMessageType.EXCEPTION:
        exc = TApplicationException()
        exc.read(prot)
        return seqid, exc
    assert name == method, (name, method)
    result = getattr(E.Echo, method + "_result")()
    result.read(prot)
    for key, value in vars(result).items():
        if key != "success" and value is not None:
            return seqid, value
    return seqid, getattr(result, "success", None)


def client(addr: str, transport: str = "framed", timeout: float = 10.0):
    """A thriftpy2 Echo client to ``host:port`` or a unix socket path."""
    from thriftpy2.rpc import make_client
    from thriftpy2.transport import TBufferedTransportFactory, TFramedTransportFactory

    tf = TFramedTransportFactory() if transport == "framed" else TBufferedTransportFactory()
    ms = int(timeout * 1000)
    if addr.startswith("/"):
        return make_client(E.Echo, unix_socket=addr, trans_factory=tf, timeout=ms)
    host, _, port = addr.rpartition(":")
    return make_client(E.Echo, host.strip("[]"), int(port), trans_factory=tf, timeout=ms)


def whoami(port: int, n: int) -> list[str]:
    """The backend names that ``n`` calls on one connection to 127.0.0.1:``port`` got."""
    c = client(f"127.0.0.1:{port}")
    try:
        return [c.whoami() for _ in range(n)]
    finally:
        c.close()


def connect(addr: str, timeout: float = 10.0) -> socket.socket:
    """A raw blocking socket to the proxy (for hand-built frames)."""
    if addr.startswith("/"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(addr)
        return sock
    host, _, port = addr.rpartition(":")
    return socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)


def read_framed(sock: socket.socket) -> bytes:
    """One framed message (without its length prefix) from a blocking socket."""
    (n,) = struct.unpack("!I", _recv_exact(sock, 4))
    return _recv_exact(sock, n)


def closed_by_peer(sock: socket.socket, timeout: float = 5.0) -> bool:
    """Whether the peer closes the connection within ``timeout`` (reads until EOF/reset)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def endpoint(addr: str) -> str:
    """An upstream endpoint table for an address from ``backend()``."""
    if addr.startswith("/"):
        return f'{{ type = "unix", value = "{addr}" }}'
    return f'{{ type = "socket", value = "{addr}" }}'


def listener(addr: str) -> str:
    if addr.startswith("/"):
        return f'{{ type = "unix", value = "{addr}" }}'
    return f'{{ type = "socket", value = "{addr}" }}'


class Proxy:
    """A running standalone worker: its addresses and its log."""

    def __init__(self, proc: subprocess.Popen, servers: dict[str, list[str]], log_path: Path) -> None:
        self.proc = proc
        self.servers = servers
        self.log_path = log_path

    def addr(self, name: str) -> str:
        return self.servers[name][0]

    def log(self) -> str:
        return self.log_path.read_text()

    def log_events(self) -> list[dict]:
        out = []
        for line in self.log().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out


# MONOLAKE_TEST_ENGINE=native: every thrift server a test starts runs engine = "native" (the C
# relay on io_uring, worker/thrift/native.py; on the legacy loop it logs why it is off), so the
# suite checks both engines:  MONOLAKE_TEST_ENGINE=native pytest tests/thrift
TEST_ENGINE = os.environ.get("MONOLAKE_TEST_ENGINE", "")


def with_engine(servers: str, engine: str = TEST_ENGINE) -> str:
    """``servers`` with ``engine = ENGINE`` in each thrift server table that names none."""
    if not engine:
        return servers
    out: list[str] = []
    for table in re.split(r"(?m)^(?=\[)", servers):
        if re.search(r'(?m)^proxy_type = "thrift"\s*$', table) and not re.search(r"(?m)^engine =", table):
            table = re.sub(r'(?m)^(proxy_type = "thrift")\s*$', rf'\1\nengine = "{engine}"', table, count=1)
        out.append(table)
    return "".join(out)


@contextmanager
def proxy(tmp: Path, servers: str, runtime: str = "", env: dict[str, str] | None = None) -> Iterator[Proxy]:
    """Run ``python -m monolake.worker --standalone`` on a config made of ``servers`` tables."""
    cfg = tmp / "monolake.toml"
    cfg.write_text(
        f'[runtime]\n{runtime}\n[supervisor]\nlog_format = "json"\nlog_level = "debug"\n'
        f"graceful_timeout = 2\n\n{with_engine(servers)}\n"
    )
    log_path = tmp / "worker.log"
    with (
        open(log_path, "w") as err,
        spawned(
            [PYTHON, "-m", "monolake.worker", "--standalone", "-c", str(cfg)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, **(env or {})},
        ) as proc,
    ):
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else ""
        if not line.startswith("READY "):
            raise RuntimeError(f"worker did not start ({line!r}):\n{log_path.read_text()[-3000:]}")
        info = json.loads(line[len("READY ") :])
        yield Proxy(proc, info["servers"], log_path)
        if proc.poll() is not None:  # the worker must outlive every test
            raise RuntimeError(f"worker exited early ({proc.returncode}):\n{log_path.read_text()[-3000:]}")


def tt_frame(
    payload: bytes,
    seq_id: int = 0,
    strs: dict[str, str] | None = None,
    ints: dict[int, str] | None = None,
    flags: int = 0,
    protocol_id: int = 0,
) -> bytes:
    """One TTHeader frame, per https://www.cloudwego.io/docs/kitex/reference/transport_protocol_ttheader/."""
    info = bytes([protocol_id, 0])
    if strs:
        info += b"\x01" + struct.pack("!H", len(strs))
        for k, v in strs.items():
            kb, vb = k.encode(), v.encode()
            info += struct.pack("!H", len(kb)) + kb + struct.pack("!H", len(vb)) + vb
    if ints:
        info += b"\x10" + struct.pack("!H", len(ints))
        for ik, v in ints.items():
            vb = v.encode()
            info += struct.pack("!HH", ik, len(vb)) + vb
    info += b"\x00" * (-len(info) % 4)
    body = struct.pack("!HHiH", 0x1000, flags, seq_id, len(info) // 4) + info + payload
    return struct.pack("!I", len(body)) + body


def tt_parse(frame: bytes) -> dict:
    """Decode one whole TTHeader frame into its fields (spec-level, for assertions)."""
    length, magic, flags, seq_id, hsize = struct.unpack_from("!IHHiH", frame, 0)
    assert magic == 0x1000, hex(magic)
    assert length == len(frame) - 4
    pos, hend = 14, 14 + hsize * 4
    out: dict = {"flags": flags, "seq_id": seq_id, "protocol_id": frame[pos], "strs": {}, "ints": {}}
    assert frame[pos + 1] == 0, "transforms"
    pos += 2
    while pos < hend:
        info = frame[pos]
        pos += 1
        if info == 0:
            continue
        (n,) = struct.unpack_from("!H", frame, pos)
        pos += 2
        for _ in range(n):
            if info == 0x01:
                (kl,) = struct.unpack_from("!H", frame, pos)
                key = frame[pos + 2 : pos + 2 + kl].decode()
                pos += 2 + kl
                store = out["strs"]
            else:
                (key,) = struct.unpack_from("!H", frame, pos)
                pos += 2
                store = out["ints"]
            (vl,) = struct.unpack_from("!H", frame, pos)
            store[key] = frame[pos + 2 : pos + 2 + vl].decode()
            pos += 2 + vl
    out["payload"] = frame[hend:]
    return out


def read_tt_frame(sock: socket.socket) -> bytes:
    """Read exactly one TTHeader frame (length prefix included) from a blocking socket."""
    head = _recv_exact(sock, 4)
    (n,) = struct.unpack("!I", head)
    return head + _recv_exact(sock, n)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        got = sock.recv(n - len(chunks))
        if not got:
            raise ConnectionError(f"peer closed after {len(chunks)} of {n} bytes")
        chunks += got
    return bytes(chunks)


@contextmanager
def backend(
    transport: str = "framed",
    *,
    unix: str | None = None,
    tcp: str = "127.0.0.1:0",
    name: str = "b1",
    protocol: str = "binary",
) -> Iterator[tuple[str, subprocess.Popen]]:
    """A real thriftpy2 Echo server process on ``tcp`` ("host:port", port 0: any) or the unix
    socket ``unix``; yields its address ("127.0.0.1:port" or a unix path)."""
    listen = f"unix:{unix}" if unix else f"tcp:{tcp}"
    args = [
        PYTHON,
        str(HERE / "backend.py"),
        "--transport",
        transport,
        "--listen",
        listen,
        "--name",
        name,
        "--protocol",
        protocol,
    ]
    with spawned(args, stdout=subprocess.PIPE, text=True) as proc:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("READY "):
            raise RuntimeError(f"backend did not start: {line!r}")
        yield line.split(" ", 1)[1].strip(), proc
