"""A thriftpy2 Echo server for the tests and the benchmark: framed, buffered (unframed) or
TTHeader transport, on TCP or a unix socket, one thread per connection.

Prints ``READY <address>`` once listening. The TTHeader transport is implemented here from
the spec (thriftpy2 has none): it echoes the request's string headers back and adds
``x-backend: <name>`` so tests can check headers survive the proxy in both directions.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import threading
import time
from pathlib import Path

import thriftpy2
from thriftpy2.protocol import TBinaryProtocolFactory, TCompactProtocolFactory
from thriftpy2.thrift import TProcessor
from thriftpy2.transport import TBufferedTransport, TFramedTransport, TMemoryBuffer, TSocket
from thriftpy2.transport.base import TTransportException

HERE = Path(__file__).resolve().parent
echo = thriftpy2.load(str(HERE / "echo.thrift"), module_name="echo_thrift")
ACCEPTED = [0]  # connections accepted so far (pool reuse tests read it through accepted())


class Handler:
    def __init__(self, name: str) -> None:
        self.name = name
        self.notes: list[str] = []
        self.lock = threading.Lock()

    def ping(self) -> str:
        return "pong"

    def echo(self, text: str) -> str:
        return text

    def roundtrip(self, item):
        if item.name == "missing":
            raise echo.NotFound(what=f"item {item.name}", code=404)
        if item.name == "invalid":
            raise echo.Invalid(reason="name is invalid")
        return item

    def add(self, a: int, b: int) -> int:
        return a + b

    def slow(self, seconds: float, tag: str) -> str:
        time.sleep(seconds)
        return tag

    def fire(self, note: str) -> None:
        with self.lock:
            self.notes.append(note)

    def fired(self) -> list[str]:
        with self.lock:
            return list(self.notes)

    def whoami(self) -> str:
        return self.name

    def where(self) -> str:
        return self.name

    def accepted(self) -> int:
        return ACCEPTED[0]

    def colors(self, cs, ids, names):
        return list(cs) + sorted(names) + [len(ids)]

    def nothing(self) -> None:
        return None

    def blob(self, data: bytes) -> bytes:
        return data[::-1]


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        got = sock.recv(n - len(buf))
        if not got:
            raise EOFError
        buf += got
    return bytes(buf)


def serve_ttheader(conn: socket.socket, processor: TProcessor, pfactory, name: str) -> None:
    """TTHeader framing around a thriftpy2 processor, written from the Kitex spec."""
    while True:
        try:
            head = recv_exact(conn, 4)
        except (EOFError, OSError):
            return
        (n,) = struct.unpack("!I", head)
        body = recv_exact(conn, n)
        magic, flags, seq_id, hsize = struct.unpack_from("!HHiH", body, 0)
        assert magic == 0x1000
        pos, hend = 10, 10 + hsize * 4
        proto_id = body[pos]
        pos += 2
        strs: dict[bytes, bytes] = {}
        ints: dict[int, bytes] = {}
        while pos < hend:
            info = body[pos]
            pos += 1
            if info == 0:
                continue
            (cnt,) = struct.unpack_from("!H", body, pos)
            pos += 2
            for _ in range(cnt):
                if info == 1:
                    (kl,) = struct.unpack_from("!H", body, pos)
                    skey = body[pos + 2 : pos + 2 + kl]
                    pos += 2 + kl
                else:
                    (ikey,) = struct.unpack_from("!H", body, pos)
                    pos += 2
                (vl,) = struct.unpack_from("!H", body, pos)
                val = body[pos + 2 : pos + 2 + vl]
                pos += 2 + vl
                if info == 1:
                    strs[skey] = val
                else:
                    ints[ikey] = val
        itrans = TMemoryBuffer(body[hend:])
        otrans = TMemoryBuffer()
        processor.process(pfactory.get_protocol(itrans), pfactory.get_protocol(otrans))
        out = otrans.getvalue()
        if not out:
            continue  # oneway
        strs[b"x-backend"] = name.encode()
        header = bytes([proto_id, 0]) + b"\x01" + struct.pack("!H", len(strs))
        for k, v in strs.items():
            header += struct.pack("!H", len(k)) + k + struct.pack("!H", len(v)) + v
        if ints:
            header += b"\x10" + struct.pack("!H", len(ints))
            for ik, v in ints.items():
                header += struct.pack("!HH", ik, len(v)) + v
        header += b"\x00" * (-len(header) % 4)
        frame = struct.pack("!HHiH", 0x1000, flags, seq_id, len(header) // 4) + header + out
        conn.sendall(struct.pack("!I", len(frame)) + frame)


def handle(conn: socket.socket, args, processor: TProcessor) -> None:
    pfactory = TCompactProtocolFactory() if args.protocol == "compact" else TBinaryProtocolFactory()
    try:
        if args.transport == "ttheader":
            serve_ttheader(conn, processor, pfactory, args.name)
            return
        sock = TSocket(sock=conn)
        trans = TFramedTransport(sock) if args.transport == "framed" else TBufferedTransport(sock)
        prot = pfactory.get_protocol(trans)
        while True:
            processor.process(prot, prot)
    except (TTransportException, EOFError, ConnectionError, OSError):
        pass
    finally:
        conn.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--transport", choices=["framed", "buffered", "ttheader"], default="framed")
    ap.add_argument("--protocol", choices=["binary", "compact"], default="binary")
    ap.add_argument("--listen", default="tcp:127.0.0.1:0")
    ap.add_argument("--name", default="b1")
    args = ap.parse_args()
    kind, _, where = args.listen.partition(":")
    if kind == "unix":
        if os.path.exists(where):
            os.unlink(where)
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(where)
        addr = where
    else:
        host, _, port = where.rpartition(":")
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((host, int(port)))
        h, p = lsock.getsockname()[:2]
        addr = f"{h}:{p}"
    lsock.listen(512)
    processor = TProcessor(echo.Echo, Handler(args.name))
    sys.stdout.write(f"READY {addr}\n")
    sys.stdout.flush()
    while True:
        conn, _ = lsock.accept()
        ACCEPTED[0] += 1
        if kind != "unix":
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=handle, args=(conn, args, processor), daemon=True).start()


if __name__ == "__main__":
    main()
