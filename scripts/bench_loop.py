#!/usr/bin/env python3
"""Benchmark the event loops: io_uring (monolake.uring) vs uvloop vs asyncio.

Not a test. Two apps, both Protocol-style (the shape the loop is built for):
  http  hello-world HTTP/1.1 keep-alive with the httptools parser, loaded by wrk;
  echo  a TCP echo, loaded by a ping-pong client (uvloop if installed) with many connections.
Each server runs pinned to one core (default 0), the load generator to another (default 1).
Runs are interleaved round-robin over the loops so that noise from a shared machine spreads
evenly; medians are reported. Server CPU per request comes from /proc/<pid>/stat (utime+stime).

    python scripts/bench_loop.py                       # http + echo, 3 rounds of 5 s
    python scripts/bench_loop.py --apps http --rounds 5 --duration 10
    python scripts/bench_loop.py serve --loop io_uring --app http --port 8080   # one server
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from benchtools import ensure_commands

BODY = b"x" * 100
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(BODY)) + BODY
LOOPS = ("io_uring", "uvloop", "asyncio")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- servers


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """ "io_uring", "uvloop", "asyncio", or "io_uring:key=value,..." (new_event_loop options,
    e.g. io_uring:nbufs=64 or io_uring:setup_flags=coop_taskrun) for A/B runs."""
    if name.startswith("io_uring"):
        import functools

        from monolake.uring import new_event_loop

        opts: dict[str, Any] = {}
        for item in filter(None, name.partition(":")[2].split(",")):
            key, _, value = item.partition("=")
            opts[key] = int(value) if value.isdigit() else value
        return functools.partial(new_event_loop, **opts)
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.SelectorEventLoop


class HttpProtocol(asyncio.Protocol):
    """Hello world over keep-alive HTTP/1.1, parsed by httptools."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        import httptools

        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.error = httptools.HttpParserError

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except self.error:
            self.transport.close()

    def on_message_complete(self) -> None:
        self.transport.write(RESPONSE)  # type: ignore[attr-defined]


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


def serve(loop_name: str, app: str, port: int, cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    proto = HttpProtocol if app == "http" else EchoProtocol

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        server = await loop.create_server(proto, "127.0.0.1", port, backlog=1024, reuse_address=True)
        sys.stdout.write("READY\n")
        sys.stdout.flush()
        await stop
        server.close()

    with asyncio.Runner(loop_factory=loop_factory(loop_name)) as runner:
        runner.run(main())


# ---------------------------------------------------------------- load generators


def echo_client(port: int, conns: int, duration: float, size: int, cpu: int | None) -> None:
    """Ping-pong on `conns` connections for `duration` s; prints JSON {requests, p99_ms}."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    except ImportError:
        factory = asyncio.SelectorEventLoop
    msg = b"e" * size

    class Pinger(asyncio.Protocol):
        def __init__(self, stats: dict[str, Any]) -> None:
            self.stats = stats
            self.got = 0

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.sent_at = time.perf_counter()
            transport.write(msg)  # type: ignore[attr-defined]

        def data_received(self, data: bytes) -> None:
            self.got += len(data)
            if self.got < size:
                return
            self.got -= size
            now = time.perf_counter()
            st = self.stats
            st["n"] += 1
            if st["n"] % 16 == 0:
                st["lat"].append(now - self.sent_at)
            if now < st["end"]:
                self.sent_at = now
                self.transport.write(msg)  # type: ignore[attr-defined]

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        stats: dict[str, Any] = {"n": 0, "lat": [], "end": time.perf_counter() + 1e9}
        trs = [
            (await loop.create_connection(lambda: Pinger(stats), "127.0.0.1", port))[0] for _ in range(conns)
        ]
        start = time.perf_counter()
        stats["end"] = start + duration
        await asyncio.sleep(duration + 0.2)
        for t in trs:
            t.close()
        lat = sorted(stats["lat"]) or [0.0]
        return {
            "requests": stats["n"],
            "seconds": duration,
            "p99_ms": lat[int(len(lat) * 0.99) - 1 if len(lat) > 1 else 0] * 1000,
        }

    with asyncio.Runner(loop_factory=factory) as runner:
        print(json.dumps(runner.run(main())))


def parse_wrk(out: str) -> dict[str, float]:
    if "Requests/sec" not in out:
        raise RuntimeError(f"unexpected wrk output: {out!r}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    p99 = 0.0
    if m:
        p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    return {"rps": rps, "requests": total, "p99_ms": p99}


# ---------------------------------------------------------------- orchestration


def cpu_ticks(pid: int) -> tuple[int, int]:
    """(utime, stime) of the whole process, in clock ticks (fields 14 and 15 of stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def busy_ticks() -> tuple[int, int]:
    """(busy, steal) clock ticks of the whole machine, all CPUs: busy = user+nice+system+irq+
    softirq; steal = time the hypervisor gave our vCPUs to someone else."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[0] + v[1] + v[2] + v[5] + v[6], v[7]


def wait_quiet(limit: float, max_wait: float) -> float:
    """Wait (at most max_wait s) until the rest of the machine uses less than `limit` cores,
    sampled over 0.5 s; returns the last sample. A shared box: start runs in quiet moments."""
    deadline = time.monotonic() + max_wait
    while True:
        b0, st0 = busy_ticks()
        time.sleep(0.5)
        b1, st1 = busy_ticks()
        used = (b1 - b0 + st1 - st0) / CLK_TCK / 0.5
        if used < limit or time.monotonic() >= deadline:
            return used


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(loop_name: str, app: str, cpu: int) -> tuple[subprocess.Popen, int]:
    """Start one server. ``LOOP@/path/to/python`` runs it with another interpreter (e.g. a venv
    with the code before a change installed), for before/after runs side by side."""
    port = free_port()
    loop_name, _, python = loop_name.partition("@")
    proc = subprocess.Popen(
        [
            python or sys.executable,
            os.path.abspath(__file__),
            "serve",
            "--loop",
            loop_name,
            "--app",
            app,
            "--port",
            str(port),
            "--cpu",
            str(cpu),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "READY":
        proc.kill()
        raise RuntimeError(f"{loop_name} server did not start: {line!r}")
    return proc, port


def children_cpu() -> float:
    """CPU seconds (user + sys) of the reaped children so far: the load generator's cost."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def load(app: str, port: int, duration: float, conns: int, cpu: int, threads: int = 1) -> dict[str, float]:
    """One load run; also returns `load_cpu`, the generator's CPU in cores (1.0 = its core saturated,
    i.e. the load generator, not the server, may be what limits req/s)."""
    c0 = children_cpu()
    if app == "http":
        secs = max(1, round(duration))
        out = subprocess.run(
            [
                "taskset",
                "-c",
                str(cpu),
                "wrk",
                f"-t{threads}",
                f"-c{conns}",
                f"-d{secs}s",
                "--latency",
                f"http://127.0.0.1:{port}/",
            ],
            capture_output=True,
            text=True,
            timeout=duration + 30,
        ).stdout
        r = parse_wrk(out)
        r["load_cpu_s"] = children_cpu() - c0
        r["load_cpu"] = r["load_cpu_s"] / secs
        return r
    out = subprocess.run(
        [
            sys.executable,
            os.path.abspath(__file__),
            "echo-client",
            "--port",
            str(port),
            "--conns",
            str(conns),
            "--duration",
            str(duration),
            "--cpu",
            str(cpu),
        ],
        capture_output=True,
        text=True,
        timeout=duration + 60,
    ).stdout
    res = json.loads(out.strip().splitlines()[-1])
    used = children_cpu() - c0
    return {
        "rps": res["requests"] / res["seconds"],
        "requests": res["requests"],
        "p99_ms": res["p99_ms"],
        "load_cpu_s": used,
        "load_cpu": used / (duration + 0.2),
    }


def bench(args: argparse.Namespace) -> None:
    loops = [name for name in args.loops if available(name)]
    if args.apps and "http" in args.apps and ensure_commands("wrk"):
        sys.exit("wrk is not installed (apt-get install wrk)")
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for app in args.apps:
        servers = {name: start_server(name, app, args.server_cpu) for name in loops}
        try:
            for rnd in range(args.rounds):
                order = loops[rnd % len(loops) :] + loops[: rnd % len(loops)]  # rotate the start
                for name in order:
                    proc, port = servers[name]
                    load(app, port, args.warmup, args.conns, args.client_cpu, args.threads)  # warm-up
                    for _attempt in range(args.retries + 1):
                        wait_quiet(args.max_other, args.quiet_wait)
                        u0, s0 = cpu_ticks(proc.pid)
                        b0, st0 = busy_ticks()
                        t0 = time.monotonic()
                        r = load(app, port, args.duration, args.conns, args.client_cpu, args.threads)
                        elapsed = time.monotonic() - t0
                        u1, s1 = cpu_ticks(proc.pid)
                        b1, st1 = busy_ticks()
                        # CPU other processes took meanwhile, and vCPU time the host stole (the box
                        # is shared): redo a disturbed run
                        r["other_cpu"] = max(
                            0.0, ((b1 - b0 - (u1 - u0 + s1 - s0)) / CLK_TCK - r["load_cpu_s"]) / elapsed
                        )
                        r["steal"] = (st1 - st0) / CLK_TCK / elapsed
                        if r["other_cpu"] <= args.max_other and r["steal"] <= args.max_other:
                            break
                        print(
                            f"round {rnd + 1} {app:4} {name:8} disturbed (other processes used "
                            f"{r['other_cpu']:.2f} cores, steal {r['steal']:.2f}), redoing",
                            flush=True,
                        )
                    per_req = 1e6 / CLK_TCK / max(r["requests"], 1)
                    r["user_us"] = (u1 - u0) * per_req
                    r["sys_us"] = (s1 - s0) * per_req
                    r["cpu_us"] = r["user_us"] + r["sys_us"]
                    # share of its core the server used: well below 1.0 = the server was not the limit
                    r["server_cpu"] = (u1 - u0 + s1 - s0) / CLK_TCK / elapsed
                    results.setdefault((app, name), []).append(r)
                    print(
                        f"round {rnd + 1} {app:4} {name:8} {r['rps']:10.0f} req/s  p99 {r['p99_ms']:6.2f} ms"
                        f"  cpu {r['cpu_us']:6.2f} us/req (user {r['user_us']:.2f} sys {r['sys_us']:.2f})"
                        f"  busy: server {r['server_cpu']:.2f} load {r['load_cpu']:.2f}"
                        f" other {r['other_cpu']:.2f} steal {r['steal']:.2f}",
                        flush=True,
                    )
        finally:
            for proc, _ in servers.values():
                proc.send_signal(signal.SIGTERM)
            for proc, _ in servers.values():
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
    print()
    print(
        f"medians over {args.rounds} interleaved rounds of {args.duration:g} s "
        f"(server on cpu {args.server_cpu}, load on cpu {args.client_cpu}, {args.conns} connections, "
        f"{args.threads} wrk thread(s))"
    )
    print(
        f"{'app':5} {'loop':9} {'req/s':>10} {'p99 ms':>8} {'cpu us/req':>11} {'user/sys':>11} "
        f"{'rps/uvloop':>11} {'cpu/uvloop':>11} {'srv busy':>9} {'load busy':>9}"
    )
    keys = ("rps", "p99_ms", "cpu_us", "user_us", "sys_us", "server_cpu", "load_cpu")
    for app in args.apps:
        med = {
            name: {k: statistics.median(r[k] for r in results[(app, name)]) for k in keys}
            for name in loops
            if (app, name) in results
        }
        base = med.get("uvloop")
        for name, m in med.items():
            ratio_rps = f"{m['rps'] / base['rps']:.2f}x" if base else "-"
            ratio_cpu = f"{m['cpu_us'] / base['cpu_us']:.2f}x" if base else "-"
            split = f"{m['user_us']:.2f}/{m['sys_us']:.2f}"
            print(
                f"{app:5} {name:9} {m['rps']:10.0f} {m['p99_ms']:8.2f} {m['cpu_us']:11.2f} {split:>11} "
                f"{ratio_rps:>11} {ratio_cpu:>11} {m['server_cpu']:9.2f} {m['load_cpu']:9.2f}"
            )


def available(name: str) -> bool:
    try:
        if name == "uvloop":
            import uvloop  # noqa: F401
        elif name.startswith("io_uring") and "@" not in name:
            from monolake.uring import probe

            if not probe().available:
                print(f"skipping io_uring: {probe().reason}", file=sys.stderr)
                return False
    except ImportError:
        print(f"skipping {name}: not installed", file=sys.stderr)
        return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    s = sub.add_parser("serve")
    s.add_argument("--loop", required=True, help="io_uring[:opts] | uvloop | asyncio")
    s.add_argument("--app", choices=("http", "echo"), default="http")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--cpu", type=int, default=None)
    c = sub.add_parser("echo-client")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--conns", type=int, default=64)
    c.add_argument("--duration", type=float, default=5)
    c.add_argument("--size", type=int, default=64)
    c.add_argument("--cpu", type=int, default=None)
    ap.add_argument("--apps", nargs="+", default=["http", "echo"], choices=("http", "echo"))
    ap.add_argument(
        "--loops",
        nargs="+",
        default=list(LOOPS),
        help="io_uring[:key=value,...] uvloop asyncio (default: all three); "
        "NAME@/path/to/python runs that server with another interpreter",
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="wrk threads (http)")
    ap.add_argument(
        "--max-other",
        type=float,
        default=0.15,
        help="redo a run when other processes (or the host: steal) took more than this many cores",
    )
    ap.add_argument("--retries", type=int, default=2, help="redos per disturbed run")
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=20.0,
        help="before each run, wait up to this many s for the machine to be quiet",
    )
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    args = ap.parse_args()
    if args.cmd == "serve":
        serve(args.loop, args.app, args.port, args.cpu)
    elif args.cmd == "echo-client":
        echo_client(args.port, args.conns, args.duration, args.size, args.cpu)
    else:
        bench(args)


if __name__ == "__main__":
    main()
