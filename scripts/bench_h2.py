#!/usr/bin/env python3
"""Side-by-side HTTP/2 reverse-proxy benchmark (issue 14 §6; not a timed test).

h2load (nghttp2-client) opens a few h2c connections (prior knowledge, no TLS) with 100
concurrent streams each and drives, in the same run:

- ``nginx h2>h1``: nginx ``listen ... http2`` + ``proxy_pass`` to an HTTP/1.1 upstream
  (upstream keep-alive), the way nginx is usually put in front of an HTTP/1.1 app;
- ``nginx h2>h2``: the same nginx, ``grpc_pass`` to an h2c upstream (nginx's only HTTP/2
  upstream module; it relays any h2 response, not only gRPC);
- ``monolake``: one standalone worker (io_uring) proxying to the HTTP/1.1 upstream, when it
  serves h2 prior knowledge on its HTTP port. A probe (client preface + SETTINGS, answered by a
  SETTINGS frame?) decides; otherwise its rows print ``n/a (h2 not served)``.

The upstream is nginx (HTTP/1.1 and h2c on two ports), pinned with h2load to core 1; the
proxies to core 0. The proxy's CPU time (all its processes, user+sys, /proc) over a run is
divided by the requests h2load saw succeed. Every proxy is up at once and each round runs
them back to back in a rotating order (scripts/benchrun.py, shared with bench_proxy.py); the
ratios to ``nginx h2>h1`` are medians of the per-round ratios.

    python scripts/bench_h2.py                           # 3 rounds of 4 s, 100 B and 64 KiB
    python scripts/bench_h2.py --rounds 1 --duration 2 --clients 4 --streams 100 --json h2.json
    python scripts/bench_h2.py --only monolake --sizes 100B --rounds 1 --profile   # py-spy
    python scripts/bench_h2.py --only monolake --sizes 100B --rounds 1 --perf      # perf
    python scripts/bench_h2.py --baseline /tmp/old   # + the build in /tmp/old, same rounds
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from bench_proxy import perf_summary, start_monolake
from benchrun import (
    LOAD_CPU,
    PROXY_CPU,
    CpuMeter,
    Proc,
    Procs,
    Sample,
    free_port,
    per_request_us,
    pinned,
    ratio,
    rotated,
    start_nginx,
    summarize,
    wait_port,
)
from benchtools import PACKAGES, ensure_commands, proxy_pass_location

SIZES = {"100B": 100, "64KiB": 65536}
REFERENCE = "nginx h2>h1"
PACKAGES.setdefault("h2load", "nghttp2-client")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def serves_h2(port: int, timeout: float = 2.0) -> bool:
    """True when the server on ``port`` answers an h2c prior-knowledge preface with a SETTINGS
    frame (RFC 9113 §3.4), as an HTTP/2 server must; an HTTP/1.1 server answers 400 or closes."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(PREFACE + EMPTY_SETTINGS)
            head = b""
            deadline = time.monotonic() + timeout
            while len(head) < 9 and time.monotonic() < deadline:
                chunk = s.recv(9 - len(head))
                if not chunk:
                    break
                head += chunk
    except OSError:
        return False
    return len(head) == 9 and head[3] == 0x4 and int.from_bytes(head[5:9], "big") == 0


def start_upstream(work: Path, h1_port: int, h2_port: int) -> Proc:
    root = work / "www"
    root.mkdir(exist_ok=True)
    for name, size in SIZES.items():
        (root / name).write_bytes(b"x" * size)
    return start_nginx(
        work,
        "upstream",
        f"""
        http2_max_concurrent_streams 1000;
        server {{ listen 127.0.0.1:{h1_port} reuseport backlog=4096; root {root}; }}
        server {{ listen 127.0.0.1:{h2_port} http2 reuseport backlog=4096; root {root}; }}""",
        LOAD_CPU,
    )


def start_nginx_proxy(work: Path, h1_port: int, h2_port: int, up_h1: int, up_h2: int) -> Proc:
    """One nginx (one worker) with two h2c servers: ``proxy_pass`` to HTTP/1.1 on ``h1_port``,
    ``grpc_pass`` to h2c on ``h2_port``."""
    return start_nginx(
        work,
        "nproxy",
        f"""
        http2_max_concurrent_streams 1000;
        upstream up1 {{ server 127.0.0.1:{up_h1}; keepalive 64; }}
        upstream up2 {{ server 127.0.0.1:{up_h2}; keepalive 64; }}
        server {{
            listen 127.0.0.1:{h1_port} http2 backlog=4096;
            {proxy_pass_location("up1")}
        }}
        server {{
            listen 127.0.0.1:{h2_port} http2 backlog=4096;
            location / {{ grpc_pass grpc://up2; grpc_buffer_size 64k; }}
        }}""",
        PROXY_CPU,
    )


def run_h2load(
    port: int, path: str, duration: float, clients: int, streams: int, meter: CpuMeter
) -> tuple[dict, float]:
    url = f"http://127.0.0.1:{port}{path}"
    base = ["h2load", "-t1", f"-c{clients}", f"-m{streams}"]
    # warm up (connections, pools, caches), then measure
    subprocess.run(pinned(LOAD_CPU, [*base, "-D1", url]), capture_output=True, timeout=30)
    meter.start()
    proc = subprocess.run(
        pinned(LOAD_CPU, [*base, f"-D{int(duration)}", url]),
        capture_output=True,
        text=True,
        timeout=duration + 30,
    )
    cpu = meter.stop()
    stats = {"rps": 0.0, "requests": 0, "errors": 0}
    m = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", proc.stdout)
    if m:
        stats["rps"] = float(m.group(1))
    m = re.search(
        r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored",
        proc.stdout,
    )
    if m:
        stats["requests"] = int(m.group(1))
        stats["errors"] = int(m.group(2)) + int(m.group(3))
    m = re.search(r"status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", proc.stdout)
    if m:
        stats["errors"] += sum(int(x) for x in m.groups())
    if not stats["requests"]:
        print(f"  h2load failed: {proc.stdout[-800:]} {proc.stderr[-400:]}", file=sys.stderr)
    return stats, cpu


def start_tree(tree: str, work: Path, port: int, upstream: int, runtime: str) -> Proc:
    """A monolake worker from this checkout, or (``tree``) from another one with its extensions
    built in place (``python setup.py build_ext --inplace``): its ``monolake`` package comes
    first on PYTHONPATH, so a paired A/B runs both builds in the same rounds."""
    if not tree:
        return start_monolake(work, port, upstream, runtime, "auto")
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(Path(tree).resolve()) + (os.pathsep + saved if saved else "")
    try:
        sub = work / "baseline"
        sub.mkdir(exist_ok=True)
        return start_monolake(sub, port, upstream, runtime, "auto")
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def start_profiler(kind: str, pid: int, out: Path, seconds: int) -> subprocess.Popen:
    """py-spy (``profile``: collapsed stacks, one ``frame;frame;... count`` line per stack) or
    perf (``perf``: samples by DSO and symbol) on the monolake worker for ``seconds``."""
    if kind == "profile":
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        cmd = [spy, "record", "-r", "250", "--format", "raw", "-o", str(out)]
        cmd += ["-d", str(seconds), "-p", str(pid)]
    else:
        cmd = ["perf", "record", "-F", "999", "-g", "-o", str(out), "-p", str(pid), "--"]
        cmd += ["sleep", str(seconds)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def spy_summary(out: Path, top: int = 40) -> str:
    """The py-spy samples as two tables: functions by self time, by inclusive time (%)."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        # by function, not by line: "name (path/file.py:line)" -> "name file.py"
        frames = [f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].split(":")[0] for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n
    rows = []
    for title, table in (("self", own), ("inclusive", incl)):
        rows.append(f"-- {title} ({total} samples)")
        for f, n in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            rows.append(f"{100 * n / max(total, 1):6.1f}%  {f}")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=4, help="seconds per h2load run (default 4)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every size on every proxy (default 3)")
    ap.add_argument("--clients", type=int, default=4, help="h2 connections (default 4)")
    ap.add_argument(
        "--streams", type=int, default=100, help="concurrent streams per connection (default 100)"
    )
    ap.add_argument("--runtime", default="io_uring", help="monolake runtime (io_uring or legacy)")
    ap.add_argument("--only", default="", help="comma-separated subset: nginx,grpc,monolake")
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--json", default="", help="write the results here")
    ap.add_argument(
        "--baseline",
        default="",
        help="also run monolake from this other source tree (extensions built in place, e.g. a "
        "git archive of an older commit): a paired A/B in the same rounds",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="py-spy record the monolake worker during its first run (needs py-spy); prints "
        "the top functions by self and inclusive time, keeps the collapsed stacks in the work "
        "directory",
    )
    ap.add_argument(
        "--perf",
        action="store_true",
        help="perf record the monolake worker during its first run; prints the share of samples "
        "by DSO and the top symbols, and keeps the perf.data in the work directory",
    )
    args = ap.parse_args()
    missing = ensure_commands("nginx", "h2load", "taskset")
    if missing:
        print(
            f"{', '.join(missing)} required (apt-get install nginx nghttp2-client util-linux)",
            file=sys.stderr,
        )
        return 2
    only = set(filter(None, args.only.split(",")))
    sizes = [s for s in args.sizes.split(",") if s in SIZES]
    work = Path(tempfile.mkdtemp(prefix="monolake-bench-h2-"))
    work.chmod(0o755)  # nginx workers run as an unprivileged user
    up_h1, up_h2 = free_port(), free_port()
    samples: list[Sample] = []
    not_served: list[str] = []
    with Procs() as procs:
        procs.add(start_upstream(work, up_h1, up_h2))
        wait_port(up_h1)
        wait_port(up_h2)
        running: list[tuple[str, int, CpuMeter]] = []
        if not only or "nginx" in only or "grpc" in only:
            p1, p2 = free_port(), free_port()
            nginx = procs.add(start_nginx_proxy(work, p1, p2, up_h1, up_h2))
            wait_port(p1)
            wait_port(p2)
            if not only or "nginx" in only:
                running.append((REFERENCE, p1, CpuMeter(nginx.pid)))
            if not only or "grpc" in only:
                running.append(("nginx h2>h2 (grpc_pass)", p2, CpuMeter(nginx.pid)))
        if not only or "monolake" in only:
            contenders = [(f"monolake/{args.runtime}", "")]
            if args.baseline:
                contenders.append((f"monolake/{args.runtime} (baseline)", args.baseline))
            for name, tree in contenders:
                port = free_port()
                mono = procs.add(start_tree(tree, work, port, up_h1, args.runtime))
                wait_port(port)
                if serves_h2(port):
                    running.append((name, port, CpuMeter(mono.pid)))
                else:
                    not_served.append(name)
                    print(
                        f"  {name}: no SETTINGS in answer to an h2c preface: h2 not served", file=sys.stderr
                    )
        names = [n for n, _, _ in running]
        time.sleep(0.3)
        for rnd in range(args.rounds):
            for size in sizes:
                for name, port, meter in rotated(running, rnd):
                    prof = out = None
                    kind = "profile" if args.profile else "perf" if args.perf else ""
                    if kind and name.startswith("monolake") and size == sizes[0] and rnd == 0:
                        out = work / f"{name.replace('/', '-')}-{size}.{'spy' if args.profile else 'perf'}"
                        # h2load's 1 s warm-up first, then the measured run
                        prof = start_profiler(kind, meter.root, out, args.duration + 2)
                    stats, cpu = run_h2load(
                        port, f"/{size}", args.duration, args.clients, args.streams, meter
                    )
                    if prof is not None and out is not None:
                        prof.wait(60)
                        print(f"  profile: {out}", file=sys.stderr)
                        print(perf_summary(out) if args.perf else spy_summary(out), file=sys.stderr)
                    s = Sample(
                        name,
                        size,
                        stats["rps"],
                        per_request_us(cpu, stats["requests"]),
                        stats["requests"],
                        stats["errors"],
                        rnd,
                    )
                    samples.append(s)
                    print(
                        f"  r{rnd} {name:26} {size:6} {s.rps:10.0f} rps  cpu {s.cpu_us_per_req:7.1f} µs/req  "
                        f"errors {s.errors}",
                        file=sys.stderr,
                    )
    summary = summarize(samples, names, sizes, {"nginx": REFERENCE}, keys=("rps", "cpu_us_per_req"))
    print(
        f"\nh2load -c{args.clients} -m{args.streams}, {args.rounds} round(s) of {args.duration} s; medians "
        "over rounds; CPU = the proxy's processes, user+sys, per request served; ratios to "
        f"'{REFERENCE}' are medians of the per-round ratios (range in brackets)"
    )
    print(
        f"{'proxy':26} {'body':6} {'req/s':>9} {'cpu µs/req':>11} {'cpu × nginx':>18} {'rps × nginx':>18} {'errors':>7}"
    )
    for row in summary:
        print(
            f"{row['proxy']:26} {row['body']:6} {row['rps']:9.0f} {row['cpu_us_per_req']:11.1f} "
            f"{ratio(row, 'cpu_x_nginx'):>18} {ratio(row, 'x_nginx'):>18} {row['errors']:7}"
        )
    for name in not_served:
        for size in sizes:
            print(f"{name:26} {size:6} {'n/a (h2 not served)':>9}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "h2load": {"clients": args.clients, "streams": args.streams, "duration": args.duration},
                    "summary": summary,
                    "not_served": not_served,
                    "runs": [asdict(s) for s in samples],
                },
                indent=2,
            )
        )
    if not (args.profile or args.perf):
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
