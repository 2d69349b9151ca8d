#!/usr/bin/env python3
"""Thrift proxy and HTTP gateway benchmark: the same thriftpy2 client load sent directly to a
thriftpy2 server and through the monolake Thrift proxy, side by side, plus the gateway's
requests/s (wrk, POST with a JSON body).

The proxy (a standalone monolake worker) is pinned to one CPU; the backend and the load
generators share another, so in the proxied run the proxy adds a hop but no CPU contention
with the load, and the comparison asks: is the proxy fast enough not to be the bottleneck?

    python scripts/bench_thrift.py                # 3 rounds of 5 s per mode, 4 client processes
    python scripts/bench_thrift.py --duration 10 --clients 8 --transport buffered
    python scripts/bench_thrift.py --engines python,native --busy-poll-us 0 --no-gateway

``--engines`` runs one worker per engine of the thrift server (``engine = "python"`` or
``"native"``: the C relay, docs/thrift.md), each against the same direct run of every round.

Per run it prints the proxy's CPU per request, the load CPU's busy time per request (the load
CPU is saturated, so this is what sets the rate) and each CPU's IPIs per request
(/proc/interrupts RES + CAL: a cross-CPU wake-up of a sleeping task costs one), which is
where the proxied path's extra cost shows (docs/thrift.md, *What bounds the ratio*).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BACKEND = ROOT / "tests" / "thrift" / "backend.py"
IDL = ROOT / "tests" / "thrift" / "echo.thrift"
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pin(pid: int, cpu: int | None) -> None:
    if cpu is not None:
        try:
            os.sched_setaffinity(pid, {cpu})
        except OSError as exc:
            print(f"warning: cannot pin pid {pid} to cpu {cpu}: {exc}", file=sys.stderr)


def read_ready(proc: subprocess.Popen, timeout: float = 30.0) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("READY "):
        raise RuntimeError(f"process {proc.args!r} did not become ready: {line!r}")
    return line[len("READY ") :].strip()


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + 5
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# -- load generator (runs as a child process) --------------------------------------------------


def load_main(args: argparse.Namespace) -> None:
    """One client connection calling ``echo`` in a loop; prints a JSON result line.

    After the warm-up it prints ``GO`` and waits for a line on stdin, so that every client's
    measured part starts at once and the parent samples the CPUs over exactly that window."""
    import thriftpy2
    from thriftpy2.rpc import make_client
    from thriftpy2.transport import TBufferedTransportFactory, TFramedTransportFactory

    echo = thriftpy2.load(str(IDL), module_name="echo_thrift")
    tf = TFramedTransportFactory() if args.transport == "framed" else TBufferedTransportFactory()
    c = make_client(echo.Echo, "127.0.0.1", args.port, trans_factory=tf, timeout=10000)
    text = "x" * args.size
    end_warm = time.monotonic() + args.warmup
    while time.monotonic() < end_warm:
        c.echo(text)
    print("GO", flush=True)
    sys.stdin.readline()
    n = 0
    lat: list[float] = []
    cpu0 = time.process_time()
    t0 = time.monotonic()
    end = t0 + args.duration
    now = t0
    while now < end:
        c.echo(text)
        after = time.monotonic()
        if n % 16 == 0:
            lat.append(after - now)
        now = after
        n += 1
    elapsed = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    c.close()
    lat.sort()
    print(
        json.dumps(
            {
                "requests": n,
                "seconds": elapsed,
                "cpu": cpu,
                "p50_ms": 1000 * lat[len(lat) // 2] if lat else 0.0,
                "p99_ms": 1000 * lat[int(len(lat) * 0.99)] if lat else 0.0,
            }
        )
    )


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (from /proc, in clock ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_times() -> dict[int, tuple[float, float]]:
    """Per CPU: (busy, idle) seconds since boot, from /proc/stat (steal counts as busy)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *vals = line.split()
            if name.startswith("cpu") and name != "cpu":
                v = [int(x) for x in vals]
                idle = v[3] + v[4]  # idle + iowait
                out[int(name[3:])] = ((sum(v[:8]) - idle) / tick, idle / tick)
    return out


def busy_seconds() -> float:
    """CPU seconds all CPUs have been busy since boot."""
    return sum(busy for busy, _idle in cpu_times().values())


def ipis() -> dict[int, int]:
    """Per CPU: the inter-processor interrupts received so far (rescheduling and function-call
    IPIs, /proc/interrupts RES and CAL): a cross-CPU wakeup of a sleeping task costs one. Empty
    where the file is not readable."""
    out: dict[int, int] = {}
    try:
        with open("/proc/interrupts") as f:
            cpus = [int(c[3:]) for c in f.readline().split()]
            for line in f:
                parts = line.split()
                if parts and parts[0] in ("RES:", "CAL:"):
                    for cpu, v in zip(cpus, parts[1 : 1 + len(cpus)], strict=False):
                        out[cpu] = out.get(cpu, 0) + int(v)
    except (OSError, ValueError):
        return {}
    return out


def others_load(ours: list[int], seconds: float = 0.5) -> float:
    """Cores' worth of CPU used by processes other than ``ours`` over ``seconds``."""
    b0, o0 = busy_seconds(), sum(cpu_seconds(p) for p in ours)
    time.sleep(seconds)
    return ((busy_seconds() - b0) - (sum(cpu_seconds(p) for p in ours) - o0)) / seconds


def wait_quiet(ours: list[int], limit: float, timeout: float = 60.0) -> float:
    """Wait (bounded) until other processes use under ``limit`` cores; returns the last reading."""
    deadline = time.monotonic() + timeout
    load = others_load(ours)
    while load > limit and time.monotonic() < deadline:
        load = others_load(ours)
    return load


def run_load(
    port: int,
    args: argparse.Namespace,
    cpu: int | None,
    server_pid: int | None = None,
    ours: Sequence[int] = (),
) -> dict:
    """One measured run (redone, up to ``args.retries`` times, if other processes used more
    than ``args.noise`` cores meanwhile: the machine is shared); with ``server_pid``, also that
    process's CPU per request (µs)."""
    for attempt in range(1 + args.retries):  # noqa: B007 - read after the loop
        r = _run_load_once(port, args, cpu, server_pid, list(ours))
        if r["noise"] <= args.noise:
            break
    r["attempts"] = attempt + 1
    return r


def _run_load_once(
    port: int, args: argparse.Namespace, cpu: int | None, server_pid: int | None, ours: list[int]
) -> dict:
    wait_quiet(ours, args.noise * 2 / 3)
    cmd = [
        PY,
        __file__,
        "--load",
        "--port",
        str(port),
        "--transport",
        args.transport,
        "--duration",
        str(args.duration),
        "--warmup",
        str(args.warmup),
        "--size",
        str(args.size),
    ]
    procs = [
        subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(args.clients)
    ]
    for p in procs:
        pin(p.pid, cpu)
    for p in procs:  # every client is warm: start the measured part of all of them at once
        assert p.stdout is not None
        if p.stdout.readline().strip() != "GO":
            raise RuntimeError("a load client failed during its warm-up")
    cpu0 = cpu_seconds(server_pid) if server_pid else 0.0
    ours0 = sum(cpu_seconds(p) for p in ours)
    sys0 = cpu_times()
    irq0 = ipis()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("\n")
        p.stdin.flush()
    time.sleep(args.duration)
    cpu1 = cpu_seconds(server_pid) if server_pid else 0.0
    ours1 = sum(cpu_seconds(p) for p in ours)
    sys1 = cpu_times()
    irq1 = ipis()
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=args.duration + args.warmup + 60)
        results.append(json.loads(out.strip().splitlines()[-1]))
    total = sum(r["requests"] for r in results)
    seconds = max(r["seconds"] for r in results)
    busy = {
        c: (sys1[c][0] - sys0[c][0], (sys1[c][0] - sys0[c][0]) + (sys1[c][1] - sys0[c][1]))
        for c in sys1
        if c in sys0
    }
    window = max(1e-9, sum(w for _b, w in busy.values()) / max(1, len(busy)))
    noise = (sum(b for b, _w in busy.values()) - (ours1 - ours0) - sum(r["cpu"] for r in results)) / window
    return {
        "rps": total / seconds,
        "p50_ms": sorted(r["p50_ms"] for r in results)[len(results) // 2],
        "p99_ms": max(r["p99_ms"] for r in results),
        "cpu_us": 1e6 * (cpu1 - cpu0) / total if server_pid and total else 0.0,
        # the load CPU's busy time per request (backend and clients share it: with it saturated,
        # this is what sets the rate), and each CPU's IPIs per request
        "load_us": 1e6 * (sys1[cpu][0] - sys0[cpu][0]) / total
        if cpu in sys1 and cpu in sys0 and total
        else 0.0,
        "ipi": {c: round((irq1[c] - irq0[c]) / max(1, total), 2) for c in irq1 if c in irq0},
        # each CPU's busy fraction over the measured part (all processes, not only ours)
        "busy": {c: round(b / max(1e-9, w), 3) for c, (b, w) in busy.items()},
        # cores' worth of CPU other processes used meanwhile
        "noise": round(max(0.0, noise), 3),
    }


def run_wrk(port: int, args: argparse.Namespace, cpu: int | None, tmp: Path) -> dict | None:
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk not found: skipping the gateway run", file=sys.stderr)
        return None
    script = tmp / "post.lua"
    body = json.dumps({"text": "x" * args.size})
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(body)}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    cmd = [
        wrk,
        "-t1",
        f"-c{args.http_connections}",
        f"-d{max(1, round(args.duration))}s",
        "--latency",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}/Echo/echo",
    ]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pin(p.pid, cpu)
    out, _ = p.communicate(timeout=args.duration + 60)
    if p.returncode != 0 or "Requests/sec:" not in out:
        print(f"wrk failed (exit {p.returncode}):\n{out}", file=sys.stderr)
        return None
    rps = 0.0
    p50 = p99 = ""
    non2xx = 0
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            rps = float(parts[1])
        elif parts[:1] == ["50%"]:
            p50 = parts[1]
        elif parts[:1] == ["99%"]:
            p99 = parts[1]
        elif "Non-2xx" in line:
            non2xx = int(parts[-1])
    return {"rps": rps, "p50": p50, "p99": p99, "non_2xx": non2xx}


def median(runs: list[dict]) -> dict:
    """The run with the median requests/s (with its own latencies), plus every round's rate."""
    ranked = sorted(runs, key=lambda r: r["rps"])
    cpu = sorted(r["cpu_us"] for r in runs)
    load = sorted(r["load_us"] for r in runs)
    return {
        **ranked[len(ranked) // 2],
        "rounds": [round(r["rps"]) for r in runs],
        "cpu_us": cpu[len(cpu) // 2],
        "load_us": load[len(load) // 2],
        "busy_rounds": [r["busy"] for r in runs],
        "noise_rounds": [r["noise"] for r in runs],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measured run")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3, help="direct/proxied pairs; the medians are compared")
    ap.add_argument("--clients", type=int, default=4, help="client processes (one connection each)")
    ap.add_argument("--http-connections", type=int, default=16, help="wrk connections for the gateway")
    ap.add_argument("--transport", choices=["framed", "buffered"], default="framed")
    ap.add_argument("--size", type=int, default=64, help="bytes of the echoed string")
    ap.add_argument("--runtime", default="auto", help="runtime_type of the monolake worker")
    ap.add_argument("--proxy-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--no-gateway", dest="gateway", action="store_false", help="skip the wrk gateway runs")
    ap.add_argument(
        "--noise",
        type=float,
        default=0.15,
        help="redo a run in which other processes used more than this many cores",
    )
    ap.add_argument("--retries", type=int, default=2, help="redos per run at most")
    ap.add_argument(
        "--engines",
        default="python,native",
        help="comma-separated engines of the thrift server, one worker each (python, native)",
    )
    ap.add_argument(
        "--busy-poll-us",
        type=int,
        default=300,
        help="also run a worker with [runtime] busy_poll_us = N (0: only the plain one)",
    )
    args = ap.parse_args()
    if args.load:
        load_main(args)
        return

    proxy_cpu = None if args.no_pin else args.proxy_cpu
    load_cpu = None if args.no_pin else args.load_cpu
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="bench-thrift-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            backend_kind = "framed" if args.transport == "framed" else "buffered"
            be = subprocess.Popen(
                [PY, str(BACKEND), "--transport", backend_kind, "--name", "bench"],
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(be)
            pin(be.pid, load_cpu)
            be_addr = read_ready(be)
            be_port = int(be_addr.rpartition(":")[2])

            transport = "framed" if args.transport == "framed" else "unframed"
            workers = {}
            runtimes: dict[str, str] = {}
            engines = [e.strip() for e in args.engines.split(",") if e.strip()]
            modes = [
                (mode if engine == "python" else f"{mode}-{engine}", poll_us, engine)
                for engine in engines
                for mode, poll_us in (("plain", 0), ("busy_poll", args.busy_poll_us))
                if mode == "plain" or poll_us > 0
            ]
            for label, poll_us, engine in modes:
                tp_port, gw_port = free_port(), free_port()
                cfg = tmp / f"bench-{label}.toml"
                cfg.write_text(f"""
[runtime]
runtime_type = "{args.runtime}"
busy_poll_us = {poll_us}

[supervisor]
log_level = "warning"

[servers.tp]
proxy_type = "thrift"
engine = "{engine}"
thrift_transport = "{transport}"
listener = {{ type = "socket", value = "127.0.0.1:{tp_port}" }}
route = {{ upstreams = [{{ endpoint = {{ type = "socket", value = "{be_addr}" }} }}] }}

[servers.gw]
proxy_type = "http_thrift"
thrift_transport = "{transport}"
idl = "{IDL}"
listener = {{ type = "socket", value = "127.0.0.1:{gw_port}" }}
route = {{ upstreams = [{{ endpoint = {{ type = "socket", value = "{be_addr}" }} }}] }}
""")
                with open(tmp / "worker.log", "a") as worker_log:  # the child keeps its own copy
                    worker = subprocess.Popen(
                        [PY, "-m", "monolake.worker", "--standalone", "-c", str(cfg)],
                        stdout=subprocess.PIPE,
                        stderr=worker_log,
                        text=True,
                        cwd=str(ROOT),
                    )
                procs.append(worker)
                pin(worker.pid, proxy_cpu)
                runtimes[label] = json.loads(read_ready(worker)).get("runtime")
                workers[label] = (tp_port, gw_port, worker.pid)

            loops = ", ".join(f"{label} {rt}" for label, rt in runtimes.items())
            print(
                f"monolake workers: {loops}, cpu={proxy_cpu}; backend and load: cpu={load_cpu}; "
                f"{args.clients} thriftpy2 clients ({args.transport}), echo of {args.size} bytes, "
                f"{args.duration:g}s per run",
                flush=True,
            )
            runs: dict[str, list[dict]] = {"direct": [], **{k: [] for k in workers}}
            for _ in range(args.rounds):  # interleaved, so background load hits every mode alike
                ours = [be.pid] + [pid for _tp, _gw, pid in workers.values()]
                runs["direct"].append(run_load(be_port, args, load_cpu, None, ours))
                for label, (tp_port, _gw, pid) in workers.items():
                    runs[label].append(run_load(tp_port, args, load_cpu, pid, ours))
            results = {k: median(v) for k, v in runs.items()}
            gateway = (
                {label: run_wrk(gw, args, load_cpu, tmp) for label, (_tp, gw, _pid) in workers.items()}
                if args.gateway
                else {}
            )
        except Exception:
            log = tmp / "worker.log"
            if log.exists():
                sys.stderr.write(log.read_text()[-4000:])
            raise
        finally:
            stop(procs)

    direct = results["direct"]
    names = {"direct": "direct (thriftpy2)"}
    for label in results:
        if label != "direct":
            mode, _, engine = label.partition("-")
            names[label] = f"via proxy{', ' + engine if engine else ''}" + (
                f", poll {args.busy_poll_us}us" if mode == "busy_poll" else ""
            )
    print()
    print(
        f"{'run':<28}{'req/s':>9}{'p50':>10}{'p99':>10}{'x direct':>10}{'proxy CPU':>12}{'load CPU':>12}"
        f"{'IPI/req':>10}   rounds"
    )
    for label, r in results.items():
        ratio = r["rps"] / direct["rps"] if direct["rps"] else 0.0
        cpu = f"{r['cpu_us']:.1f}us/req" if r.get("cpu_us") else ""
        load = f"{r['load_us']:.1f}us/req" if r.get("load_us") else ""
        ipi = "/".join(f"{r['ipi'][c]:.2f}" for c in sorted(r["ipi"]))
        busy = " ".join("/".join(f"{b[c]:.0%}" for c in sorted(b)) for b in r["busy_rounds"])
        print(
            f"{names[label]:<28}{r['rps']:>9.0f}{r['p50_ms']:>8.2f}ms{r['p99_ms']:>8.2f}ms{ratio:>10.2f}{cpu:>12}{load:>12}"
            f"{ipi:>10}   "
            f"{r['rounds']}  cpu busy {busy}  others {r['noise_rounds']}"
        )
    # each round ran direct and proxied back to back: their ratio is what drifts least
    paired = {}
    for label in results:
        if label != "direct":
            ratios = sorted(
                p / d for p, d in zip(results[label]["rounds"], direct["rounds"], strict=True) if d
            )
            paired[label] = ratios
            print(
                f"{names[label]:<28}paired x direct per round: {', '.join(f'{x:.2f}' for x in ratios)}; "
                f"median {ratios[len(ratios) // 2]:.2f}"
            )
    print("target: proxy >= 0.80 x direct (native engine: >= 0.90 x direct, issue 13)")
    for label, g in gateway.items():
        if g is not None:
            print(
                f"{'gateway (wrk) ' + ('' if label == 'plain' else label):<28}{g['rps']:>9.0f}{g['p50']:>10}{g['p99']:>10}"
                + (f"  non-2xx: {g['non_2xx']}" if g["non_2xx"] else "")
            )
    print(json.dumps({"results": results, "paired": paired, "gateway": gateway}))


if __name__ == "__main__":
    main()
