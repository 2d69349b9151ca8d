#!/usr/bin/env python3
"""HTTP edge cases sent byte for byte to monolake, nginx and HAProxy in the same run.

Issue 16 §3: where monolake is stricter or looser than the proxies operators know, and what
each one forwards. One upstream (a tiny Python server that records every request it receives)
sits behind all three proxies; each case opens a fresh connection to each proxy, sends the
same bytes and records the status line the client got (``-`` when none came within the wait,
``close`` when the proxy closed without answering) and what reached the upstream. The table it
prints is the one in docs/http.md ("Stricter or looser than nginx and HAProxy").

    python scripts/compare_edges.py              # all cases, a Markdown table
    python scripts/compare_edges.py --wait 5     # seconds to wait for an answer (default 3)

Needs nginx and haproxy (installed with apt-get when run as root).
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench_proxy import Proc, free_port, nginx_conf, start_monolake, wait_port
from benchtools import ensure_commands


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes


def _head(*lines: str, body: bytes = b"") -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


CASES = [
    Case("plain GET (control)", _head("GET /ok HTTP/1.1", "Host: a")),
    Case("HTTP/0.9 `GET /x`", b"GET /x\r\n"),
    Case("`HTTP/1.2`", _head("GET /v12 HTTP/1.2", "Host: a")),
    Case("`HTTP/2.0` in a request line", _head("GET /v20 HTTP/2.0", "Host: a")),
    Case("`HTTP/1.0` without Host", _head("GET /v10 HTTP/1.0")),
    Case("HTTP/1.1 without Host", _head("GET /nohost HTTP/1.1")),
    Case("two Host headers", _head("GET /twohost HTTP/1.1", "Host: a", "Host: b")),
    Case("absolute-form, other Host", _head("GET http://target.example/abs HTTP/1.1", "Host: other")),
    Case("absolute-form with userinfo", _head("GET http://u@target.example/ HTTP/1.1", "Host: a")),
    Case(
        "Content-Length and Transfer-Encoding",
        _head(
            "POST /clte HTTP/1.1",
            "Host: a",
            "Content-Length: 5",
            "Transfer-Encoding: chunked",
            body=b"0\r\n\r\n",
        ),
    ),
    Case(
        "two equal Content-Length",
        _head("POST /cl2 HTTP/1.1", "Host: a", "Content-Length: 2", "Content-Length: 2", body=b"hi"),
    ),
    Case("`Content-Length: +2`", _head("POST /clplus HTTP/1.1", "Host: a", "Content-Length: +2", body=b"hi")),
    Case(
        "`Transfer-Encoding: gzip, chunked`",
        _head("POST /tegz HTTP/1.1", "Host: a", "Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"),
    ),
    Case(
        "chunk size of 17 hex digits",
        _head(
            "POST /bigchunk HTTP/1.1",
            "Host: a",
            "Transfer-Encoding: chunked",
            body=b"00000000000000002\r\nhi\r\n0\r\n\r\n",
        ),
    ),
    Case(
        "chunk extension",
        _head(
            "POST /ext HTTP/1.1",
            "Host: a",
            "Transfer-Encoding: chunked",
            body=b"2;name=value\r\nhi\r\n0\r\n\r\n",
        ),
    ),
    Case("obs-fold header", _head("GET /fold HTTP/1.1", "Host: a", "X-A: one", " two")),
    Case("space before colon", _head("GET /spc HTTP/1.1", "Host: a", "X-A : one")),
    Case("bare LF line ends", b"GET /lf HTTP/1.1\nHost: a\n\n"),
    Case("NUL in a header value", _head("GET /nul HTTP/1.1", "Host: a", "X-A: a\x00b")),
    Case("lower-case method `get`", _head("get /lower HTTP/1.1", "Host: a")),
    Case("target without leading slash", _head("GET noslash HTTP/1.1", "Host: a")),
    Case("`CONNECT`", _head("CONNECT target.example:443 HTTP/1.1", "Host: target.example:443")),
    Case("`Expect: something`", _head("GET /expect HTTP/1.1", "Host: a", "Expect: something")),
    Case("9 KiB header line", _head("GET /line9k HTTP/1.1", "Host: a", "X-Big: " + "v" * 9216)),
    Case("120 header fields", _head("GET /many HTTP/1.1", "Host: a", *[f"X-H{i}: v" for i in range(120)])),
    Case(
        "70 KiB request head",
        _head("GET /head70k HTTP/1.1", "Host: a", *[f"X-H{i}: " + "v" * 7000 for i in range(10)]),
    ),
    Case("9 KiB request target", _head("GET /" + "u" * 9216 + " HTTP/1.1", "Host: a")),
    Case("upstream response head of 40 KiB", _head("GET /bighead/40960 HTTP/1.1", "Host: a")),
    Case("upstream response head of 70 KiB", _head("GET /bighead/71680 HTTP/1.1", "Host: a")),
]


class RecordingUpstream:
    """An HTTP/1.1 upstream that answers every request 200 and records the request lines and
    Host values it received, so a table can show what each proxy let through."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.seen: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        conn.settimeout(30)
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
                with self._lock:
                    self.seen.append((lines[0], fields.get("host", "")))
                buf = self._skip_body(conn, buf, fields)
                target = lines[0].split(" ")[1].split("?")[0] if " " in lines[0] else ""
                extra = ""
                if target.startswith("/bighead/"):
                    size = int(target.rsplit("/", 1)[1])  # in 4 KiB field lines
                    extra = "".join(f"X-Big-{i}: " + "h" * 4080 + "\r\n" for i in range(size // 4096))
                conn.sendall(f"HTTP/1.1 200 OK\r\n{extra}Content-Length: 2\r\n\r\nup".encode())
        except (OSError, ValueError):
            return
        finally:
            conn.close()

    @staticmethod
    def _skip_body(conn: socket.socket, buf: bytes, fields: dict[str, str]) -> bytes:
        if "chunked" in fields.get("transfer-encoding", ""):
            while b"0\r\n\r\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    raise ValueError("closed in a chunked body")
                buf += chunk
            return buf.split(b"0\r\n\r\n", 1)[1]
        length = int(fields.get("content-length", "0") or 0)
        while len(buf) < length:
            chunk = conn.recv(65536)
            if not chunk:
                raise ValueError("closed in a body")
            buf += chunk
        return buf[length:]


def start_haproxy(work: Path, port: int, upstream: int) -> Proc:
    conf = work / "haproxy.cfg"
    conf.write_text(
        textwrap.dedent(f"""
        global
            maxconn 1000
        defaults
            mode http
            timeout connect 5s
            timeout client 30s
            timeout server 30s
        frontend fe
            bind 127.0.0.1:{port}
            default_backend be
        backend be
            server s1 127.0.0.1:{upstream}
    """)
    )
    return Proc(["haproxy", "-db", "-f", str(conf)], None, work / "haproxy.log")


def start_nginx(work: Path, port: int, upstream: int) -> Proc:
    """nginx ``proxy_pass`` with its defaults, as an operator's first config would have it."""
    conf = nginx_conf(
        work,
        "edges",
        f"""
        server {{
            listen 127.0.0.1:{port};
            location / {{ proxy_pass http://127.0.0.1:{upstream}; proxy_http_version 1.1; }}
        }}""",
    )
    return Proc(["nginx", "-c", str(conf), "-e", str(work / "edges.stderr.log")], None, work / "nginx.log")


def exchange(port: int, data: bytes, wait: float) -> str:
    """The status line the client got, ``-`` for nothing within ``wait``, ``close`` for a
    close without an answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        s.settimeout(wait)
        got = b""
        try:
            while b"\n" not in got:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        except TimeoutError:
            return "-" if not got else got.split(b"\n", 1)[0].decode("latin-1").strip()
        except ConnectionResetError:
            return "reset" if not got else got.split(b"\n", 1)[0].decode("latin-1").strip()
    if not got:
        return "close"
    line = got.split(b"\n", 1)[0].decode("latin-1").strip()
    if not line.startswith("HTTP/"):
        return "0.9 body" if line else "close"
    return " ".join(line.split(" ", 2)[1:2])


def tagged(data: bytes, tag: str) -> bytes:
    """The case's bytes with ``t=tag`` added to the request target's query, so what reaches the
    upstream can be told apart from a late request of another case or proxy."""
    parts = data.split(b" ", 2)
    if len(parts) < 2 or b"/" not in parts[1]:
        return data
    target = parts[1]
    sep = b"&" if b"?" in target else b"?"
    end = target.find(b"\r")  # HTTP/0.9: the target ends the line
    if end >= 0:
        target = target[:end] + sep + b"t=" + tag.encode() + target[end:]
    else:
        target = target + sep + b"t=" + tag.encode()
    return b" ".join([parts[0], target, *parts[2:]])


def forwarded(upstream: RecordingUpstream, tag: str, timeout: float = 0.3) -> tuple[str, str] | None:
    """The request of ``tag`` as the upstream saw it (allowing a proxy a moment to forward)."""
    deadline = time.monotonic() + timeout
    while True:
        with upstream._lock:
            for line, host in upstream.seen:
                if f"t={tag}" in line:
                    return line, host
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wait", type=float, default=3.0, help="seconds to wait for an answer")
    args = ap.parse_args()
    missing = ensure_commands("nginx", "haproxy")
    if missing:
        print(f"missing: {' '.join(missing)}", file=sys.stderr)
        return 2
    upstream = RecordingUpstream()
    with tempfile.TemporaryDirectory(prefix="edges-") as tmp:
        work = Path(tmp)
        ports = {name: free_port() for name in ("monolake", "nginx", "haproxy")}
        procs = {
            "monolake": start_monolake(work, ports["monolake"], upstream.port, "io_uring", "native"),
            "nginx": start_nginx(work, ports["nginx"], upstream.port),
            "haproxy": start_haproxy(work, ports["haproxy"], upstream.port),
        }
        try:
            for port in ports.values():
                wait_port(port)
            print("| case | monolake | nginx 1.22 | HAProxy 2.6 |")
            print("|---|---|---|---|")
            for number, case in enumerate(CASES):
                cells = []
                for name, port in ports.items():
                    tag = f"{name}{number}"
                    status = exchange(port, tagged(case.data, tag), args.wait)
                    seen = forwarded(upstream, tag)
                    if seen and not status.startswith("2"):
                        status += " (forwarded)"
                    elif seen and "absolute" in case.name:
                        status += f" (upstream Host: {seen[1]})"
                    cells.append(status)
                print(f"| {case.name} | " + " | ".join(cells) + " |", flush=True)
        finally:
            for proc in procs.values():
                proc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
