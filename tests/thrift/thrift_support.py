"""Helpers for the Thrift tests: the test IDL, a TTHeader codec written from the spec (so the
proxy's own codec is checked against an independent one), and backend/proxy processes."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import thriftpy2

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from support import PYTHON, free_port, kill_pids, spawned, wait_for  # noqa: E402

IDL = HERE / "echo.thrift"
echo_thrift = thriftpy2.load(str(IDL), module_name="echo_thrift")

__all__ = ["IDL", "echo_thrift", "tt_frame", "tt_parse", "backend", "free_port", "wait_for", "kill_pids"]


def tt_frame(payload: bytes, seq_id: int = 0, strs: dict[str, str] | None = None,
             ints: dict[int, str] | None = None, flags: int = 0, protocol_id: int = 0) -> bytes:
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
                key = frame[pos + 2:pos + 2 + kl].decode()
                pos += 2 + kl
                store = out["strs"]
            else:
                (key,) = struct.unpack_from("!H", frame, pos)
                pos += 2
                store = out["ints"]
            (vl,) = struct.unpack_from("!H", frame, pos)
            store[key] = frame[pos + 2:pos + 2 + vl].decode()
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
def backend(transport: str = "framed", *, unix: str | None = None, name: str = "b1",
            protocol: str = "binary") -> Iterator[tuple[str, subprocess.Popen]]:
    """A real thriftpy2 Echo server process; yields its address ("127.0.0.1:port" or a unix path)."""
    listen = f"unix:{unix}" if unix else "tcp:127.0.0.1:0"
    args = [PYTHON, str(HERE / "backend.py"), "--transport", transport, "--listen", listen,
            "--name", name, "--protocol", protocol]
    with spawned(args, stdout=subprocess.PIPE, text=True) as proc:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("READY "):
            raise RuntimeError(f"backend did not start: {line!r}")
        yield line.split(" ", 1)[1].strip(), proc
