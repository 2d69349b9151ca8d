#!/usr/bin/env python3
"""Side-by-side reverse-proxy benchmark (not a timed test).

nginx serves the bodies (the upstream); the proxies under test forward to it:

- nginx ``proxy_pass`` (1 worker, upstream keep-alive),
- an aiohttp + uvloop reverse proxy with a pooled ``ClientSession`` (``pip install -e '.[bench]'``),
- monolake, one standalone worker (``python -m monolake.worker --standalone``), per runtime.

The proxy is pinned to core 0, wrk and the upstream to core 1. For each body size (100 B,
4 KiB, 64 KiB) it reports requests/s, p50/p99 latency, the proxy's CPU µs per request (from
/proc utime+stime over the run) and the ratios to nginx and to the aiohttp peer. All proxies
run at once and each round measures them back to back in a rotating order: the reported
ratio is the median of the per-round ratios, because this shared machine drifts by 20 % over
minutes while two runs a few seconds apart see the same machine.

nginx, wrk and taskset are installed with apt-get when missing (as root; see benchtools.py).

    python scripts/bench_proxy.py                      # all proxies, 3 rounds of 4 s per run
    python scripts/bench_proxy.py --duration 10 --runtimes io_uring,legacy --json out.json
    python scripts/bench_proxy.py --only monolake --profile   # py-spy the monolake worker
    python scripts/bench_proxy.py --only monolake --runtimes io_uring --sizes 100B --perf
    python scripts/bench_proxy.py --only nginx,monolake --runtimes io_uring --engines python,native
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

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
from benchrun import cpu_seconds as cpu_seconds  # re-exported: other scripts import them from here
from benchrun import nginx_conf as nginx_conf
from benchrun import tree_pids as tree_pids
from benchtools import ensure_commands, proxy_pass_location, start_profiler, static_files

SIZES = {"100B": 100, "4KiB": 4096, "64KiB": 65536, "1MiB": 1 << 20}
# on request only (--sizes): large bodies, for the splice threshold (docs/http.md)
LARGE = {"4MiB": 4 << 20, "16MiB": 16 << 20}


# -- the upstream and the proxies ------------------------------------------------------------
def start_upstream(work: Path, port: int) -> Proc:
    root = static_files(work, {**SIZES, **LARGE})
    return start_nginx(
        work,
        "upstream",
        f"""
        server {{ listen 127.0.0.1:{port} reuseport backlog=4096; root {root}; }}""",
        LOAD_CPU,
    )


# --chunked N: the bodies chunked (chunks of N bytes) by a small asyncio upstream instead of
# nginx's static files (which always carry a Content-Length), for the chunked splice
CHUNKED_UPSTREAM = r"""
import asyncio, sys
port, chunk, sizes = int(sys.argv[1]), int(sys.argv[2]), dict(a.split("=") for a in sys.argv[3:])
def body(n):
    parts = [b"%x\r\n%s\r\n" % (min(chunk, n - i), b"x" * min(chunk, n - i)) for i in range(0, n, chunk)]
    return b"".join(parts) + b"0\r\n\r\n"
bodies = {name.encode(): body(int(n)) for name, n in sizes.items()}
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
async def serve(r, w):
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            w.write(HEAD)
            w.write(bodies[head.split(b" ", 2)[1].lstrip(b"/")])
            await w.drain()
    except (asyncio.IncompleteReadError, ConnectionError, KeyError):
        w.close()
async def main():
    srv = await asyncio.start_server(serve, "127.0.0.1", port, backlog=4096)
    await srv.serve_forever()
asyncio.run(main())
"""


def start_chunked_upstream(work: Path, port: int, chunk: int) -> Proc:
    script = work / "chunked_upstream.py"
    script.write_text(CHUNKED_UPSTREAM)
    sizes = [f"{name}={n}" for name, n in {**SIZES, **LARGE}.items()]
    return Proc([sys.executable, str(script), str(port), str(chunk), *sizes], LOAD_CPU, work / "chunked.log")


def start_nginx_proxy(work: Path, port: int, upstream: int) -> Proc:
    return start_nginx(
        work,
        "nproxy",
        f"""
        upstream up {{ server 127.0.0.1:{upstream}; keepalive 64; }}
        server {{
            listen 127.0.0.1:{port} backlog=4096;
            {proxy_pass_location("up")}
        }}""",
        PROXY_CPU,
    )


AIOHTTP_PROXY = r"""
import sys, asyncio, uvloop
from aiohttp import web, ClientSession, TCPConnector
UP = sys.argv[2]
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection", "host", "content-length"}
async def handler(request):
    s = request.app["session"]
    async with s.request(request.method, UP + request.rel_url.path_qs,
                         headers={k: v for k, v in request.headers.items() if k.lower() not in HOP},
                         data=await request.read() if request.can_read_body else None) as r:
        body = await r.read()
        return web.Response(body=body, status=r.status,
                            headers={k: v for k, v in r.headers.items() if k.lower() not in HOP})
async def session(app):
    app["session"] = ClientSession(connector=TCPConnector(limit=256, limit_per_host=256, keepalive_timeout=60), auto_decompress=False)
    yield
    await app["session"].close()
app = web.Application()
app.cleanup_ctx.append(session)
app.router.add_route("*", "/{tail:.*}", handler)
uvloop.install()
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, backlog=4096)
"""


def start_aiohttp_proxy(work: Path, port: int, upstream: int) -> Proc:
    script = work / "aiohttp_proxy.py"
    script.write_text(AIOHTTP_PROXY)
    return Proc(
        [sys.executable, str(script), str(port), f"http://127.0.0.1:{upstream}"],
        PROXY_CPU,
        work / "aiohttp.log",
    )


def start_monolake(
    work: Path,
    port: int,
    upstream: int,
    runtime: str,
    parser: str,
    busy_poll_us: int = 0,
    splice_threshold: int | None = None,
    access_log: str = "off",
    engine: str = "python",
) -> Proc:
    cfg = work / f"monolake-{runtime}-{busy_poll_us}-{splice_threshold}-{engine}.toml"
    splice = "" if splice_threshold is None else f"splice_threshold = {splice_threshold}"
    # the access log: off, through structlog (log_level info: a line per request), or a file
    alog = {"off": "", "log": "access_log = true", "file": f'access_log = "{cfg}.access"'}[access_log]
    level = "info" if access_log == "log" else "warning"
    cfg.write_text(
        textwrap.dedent(f"""
        [runtime]
        runtime_type = "{runtime}"
        busy_poll_us = {busy_poll_us}
        workers = 1
        [supervisor]
        log_level = "{level}"
        [servers.bench]
        proxy_type = "http"
        listener = {{ type = "socket", value = "127.0.0.1:{port}" }}
        backlog = 4096
        http_parser = "{parser}"
        engine = "{engine}"
        {splice}
        {alog}
        [[servers.bench.routes]]
        path = "/{{*rest}}"
        preserve_path = true
        max_idle_per_upstream = 256
        upstreams = [{{ endpoint = {{ type = "uri", value = "http://127.0.0.1:{upstream}" }} }}]
    """)
    )
    return Proc(
        [sys.executable, "-m", "monolake.worker", "--standalone", "-c", str(cfg)],
        PROXY_CPU,
        work / f"monolake-{runtime}-{engine}.log",
        # the allocator a master gives its workers (supervisor/workers.py), unless set here
        env={**os.environ, "PYTHONMALLOC": os.environ.get("PYTHONMALLOC", "malloc")},
    )


# -- wrk -------------------------------------------------------------------------------------
def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v


def run_wrk(port: int, path: str, duration: float, conns: int, meter: CpuMeter) -> tuple[dict, float]:
    url = f"http://127.0.0.1:{port}{path}"
    # warm up (pool, caches), then measure
    subprocess.run(
        pinned(LOAD_CPU, ["wrk", "-t1", f"-c{conns}", "-d1s", url]), capture_output=True, timeout=30
    )
    meter.start()
    proc = subprocess.run(
        pinned(LOAD_CPU, ["wrk", "-t1", f"-c{conns}", f"-d{int(duration)}s", "--latency", url]),
        capture_output=True,
        text=True,
        timeout=duration + 30,
    )
    out = proc.stdout
    if "requests in" not in out:
        print(f"  wrk failed: {proc.stdout} {proc.stderr}", file=sys.stderr)
    cpu = meter.stop()
    stats = {"rps": 0.0, "p50": float("nan"), "p99": float("nan"), "errors": 0, "requests": 0}
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Requests/sec:"):
            stats["rps"] = float(line.split()[1])
        elif line.startswith("50%"):
            stats["p50"] = _ms(line.split()[1])
        elif line.startswith("99%"):
            stats["p99"] = _ms(line.split()[1])
        elif "requests in" in line:
            stats["requests"] = int(line.split()[0])
        elif line.startswith(("Non-2xx", "Socket errors")):
            stats["errors"] += sum(int(x) for x in re.findall(r"\d+", line.split(":", 1)[1]))
    return stats, cpu


def perf_summary(data: Path, top: int = 25) -> str:
    """Where the profiled worker's samples went: by DSO, then by symbol (self time)."""
    out = []
    for sort in ("dso", "dso,sym"):
        done = subprocess.run(
            ["perf", "report", "-i", str(data), "--no-children", "--stdio", "--sort", sort, "-g", "none"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        rows = [line for line in done.stdout.splitlines() if line.strip() and not line.startswith("#")]
        out.append("\n".join(rows[:top]))
    return "\n\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=4, help="seconds per wrk run (default 4)")
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of every size on every proxy (default 3); ratios are per round",
    )
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument(
        "--runtimes",
        default="io_uring,legacy",
        help="monolake runtimes to run, comma-separated (io_uring, legacy)",
    )
    ap.add_argument("--parser", default="auto", help="monolake http_parser (auto = native when built)")
    ap.add_argument(
        "--engines",
        default="python",
        help="monolake engines, comma-separated (python, native: the C exchange, io_uring only; "
        "docs/http.md, Engines): one monolake per runtime and engine, in the same rounds",
    )
    ap.add_argument(
        "--busy-poll-us",
        type=int,
        default=0,
        help="also run each monolake runtime with [runtime] busy_poll_us = N",
    )
    ap.add_argument(
        "--splice-thresholds",
        default="",
        help="comma-separated splice_threshold values (bytes, 0 = off): one monolake run per "
        "runtime and value instead of the default (docs/http.md, Spliced bodies)",
    )
    ap.add_argument(
        "--access-log",
        choices=["off", "log", "file"],
        default="off",
        help="monolake's access log: off, through structlog (log_level info), or into a file",
    )
    ap.add_argument(
        "--chunked",
        type=int,
        default=0,
        help="serve the bodies chunked, in chunks of N bytes, from a small asyncio upstream "
        "instead of nginx's static files (docs/http.md, Spliced bodies)",
    )
    ap.add_argument("--only", default="", help="comma-separated subset: nginx,aiohttp,monolake")
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--json", default="", help="write the results here")
    ap.add_argument(
        "--chart",
        default="",
        help="write a PNG chart (req/s by body size) here (needs the chart extra: pip install -e '.[chart]')",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="py-spy record the monolake worker during the 100B run (needs py-spy)",
    )
    ap.add_argument(
        "--perf",
        action="store_true",
        help="perf record the monolake worker during the first size's first run; prints the "
        "share of samples by DSO (interpreter, kernel, native extension, liburing, libc) and "
        "the top symbols, and keeps the perf.data in the work directory",
    )
    args = ap.parse_args()
    missing = ensure_commands("nginx", "wrk", "taskset")
    if missing:
        print(f"{', '.join(missing)} required (apt-get install nginx wrk util-linux)", file=sys.stderr)
        return 2
    only = set(filter(None, args.only.split(",")))
    sizes = [s for s in args.sizes.split(",") if s in SIZES or s in LARGE]
    work = Path(tempfile.mkdtemp(prefix="monolake-bench-"))
    work.chmod(0o755)  # nginx workers run as an unprivileged user
    up_port = free_port()
    results: list[Sample] = []
    contenders: list[tuple[str, Callable[[int], Proc]]] = []
    with Procs() as procs:
        if args.chunked:
            procs.add(start_chunked_upstream(work, up_port, args.chunked))
        else:
            procs.add(start_upstream(work, up_port))
        wait_port(up_port)
        if not only or "nginx" in only:
            contenders.append(("nginx", lambda p: start_nginx_proxy(work, p, up_port)))
        if not only or "aiohttp" in only:
            contenders.append(("aiohttp+uvloop", lambda p: start_aiohttp_proxy(work, p, up_port)))
        if not only or "monolake" in only:
            for rt in filter(None, args.runtimes.split(",")):
                mono = functools.partial(
                    start_monolake,
                    work,
                    upstream=up_port,
                    runtime=rt,
                    parser=args.parser,
                    access_log=args.access_log,
                )
                splices = [int(x) for x in filter(None, args.splice_thresholds.split(","))]
                for n in splices:
                    contenders.append(
                        (f"monolake/{rt}+splice={n}", functools.partial(mono, splice_threshold=n))
                    )
                if not splices:
                    for engine in filter(None, args.engines.split(",")):
                        if engine == "python":
                            contenders.append((f"monolake/{rt}", mono))
                        elif rt == "io_uring":
                            native = functools.partial(mono, engine=engine)
                            contenders.append((f"monolake/{rt}+{engine}", native))
                if args.busy_poll_us:
                    poll = functools.partial(mono, busy_poll_us=args.busy_poll_us)
                    contenders.append((f"monolake/{rt}+poll", poll))
        # every proxy up at once (an idle one costs nothing); each round runs every size on
        # every proxy back to back, in a rotating order, so a ratio compares runs minutes apart
        # at most, not a whole benchmark apart (this shared machine's speed drifts by 20 %)
        running: list[tuple[str, int, CpuMeter]] = []
        for name, start in contenders:
            port = free_port()
            running.append((name, port, CpuMeter(procs.add(start(port)).pid)))
        for _name, port, _meter in running:
            wait_port(port)
        time.sleep(0.3)
        for rnd in range(args.rounds):
            for size in sizes:
                for name, port, meter in rotated(running, rnd):
                    prof = out = None
                    first = name.startswith("monolake") and size == sizes[0] and rnd == 0
                    if (args.profile or args.perf) and first:
                        # py-spy's flame graph, or perf on the worker only (the launcher is
                        # the same process: --standalone)
                        kind = "profile" if args.profile else "perf"
                        suffix, seconds = (".svg", 2) if args.profile else (".perf", 1)
                        out = work / (name.replace("/", "-") + suffix)
                        prof = start_profiler(kind, meter.root, out, int(args.duration) + seconds)
                    stats, cpu = run_wrk(port, f"/{size}", args.duration, args.connections, meter)
                    if prof is not None and out is not None:
                        prof.wait(30)
                        print(f"  profile: {out}", file=sys.stderr)
                        if out.suffix == ".perf":
                            print(perf_summary(out), file=sys.stderr)
                    r = Sample(
                        name,
                        size,
                        stats["rps"],
                        per_request_us(cpu, stats["requests"]),
                        stats["requests"],
                        stats["errors"],
                        rnd,
                        stats["p50"],
                        stats["p99"],
                    )
                    results.append(r)
                    print(
                        f"  r{rnd} {name:22} {size:6} {r.rps:10.0f} rps  p50 {r.p50_ms:7.2f} ms  "
                        f"p99 {r.p99_ms:7.2f} ms  cpu {r.cpu_us_per_req:7.1f} µs/req  errors {r.errors}",
                        file=sys.stderr,
                    )
    names = [name for name, _ in contenders]
    peers = {"nginx": "nginx", "aiohttp": next((p for p in names if p.startswith("aiohttp")), "")}
    summary = summarize(results, names, sizes, peers)
    print(
        f"\n{args.rounds} round(s) of {args.duration} s; medians over rounds; CPU = the proxy's "
        "processes, user+sys, per request served; ratios are medians of the per-round ratios "
        "(range in brackets); 'cpu × nginx' < 1 means less CPU per request than nginx"
    )
    print(
        f"{'proxy':22} {'body':6} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'cpu µs/req':>11} "
        f"{'cpu × nginx':>18} {'rps × nginx':>18} {'rps × aiohttp':>18}"
    )
    for row in summary:
        print(
            f"{row['proxy']:22} {row['body']:6} {row['rps']:9.0f} {row['p50_ms']:8.2f} "
            f"{row['p99_ms']:8.2f} {row['cpu_us_per_req']:11.1f} {ratio(row, 'cpu_x_nginx'):>18} "
            f"{ratio(row, 'x_nginx'):>18} {ratio(row, 'x_aiohttp'):>18}"
        )
    title = "HTTP reverse proxy, one core: requests/s and proxy CPU per request by body size"
    subtitle = (
        f"wrk -c{args.connections}, median of {args.rounds} x {args.duration:g} s; "
        "proxy on core 0, wrk and the nginx upstream on core 1"
    )
    chart_rows = [
        {
            "server": r["proxy"],
            "body_size": {**SIZES, **LARGE}[r["body"]],
            "rps": r["rps"],
            "cpu_us_per_req": r["cpu_us_per_req"],
        }
        for r in summary
        if r["rps"] > 0 and r["cpu_us_per_req"] == r["cpu_us_per_req"]
    ]
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "title": title,
                    "subtitle": subtitle,
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "results": chart_rows,
                    "summary": summary,
                    "runs": [asdict(r) for r in results],
                },
                indent=2,
            )
        )
    if args.chart:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from chart import write_chart

        write_chart(chart_rows, args.chart, title, subtitle=subtitle)
        print(f"chart written to {args.chart}")
    shutil.rmtree(work, ignore_errors=True) if not (args.profile or args.perf) else None
    return 0


if __name__ == "__main__":
    sys.exit(main())
