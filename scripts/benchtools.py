"""What the benchmark scripts share: getting the load generator and the peers installed, the
nginx peers' static files and proxy location, the profilers, and the reload scripts' master
(its config and its stop).

The scripts compare against distribution programs (wrk, nginx) and pin processes with
taskset; on a fresh Debian or Ubuntu machine they install what is missing themselves (as
root, with apt-get), as the README's benchmark instructions promise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.harness import Monolaked

# command -> the Debian/Ubuntu package that provides it
PACKAGES = {"wrk": "wrk", "nginx": "nginx", "taskset": "util-linux"}


def ensure_commands(*commands: str) -> list[str]:
    """Install the packages of the missing ``commands`` (root + apt-get only); returns the
    commands still missing, for the caller to report."""
    missing = [c for c in commands if shutil.which(c) is None]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        packages = sorted({PACKAGES.get(c, c) for c in missing})
        print(f"installing {' '.join(packages)} with apt-get", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-qq", *packages]
        if subprocess.run(install, env=env).returncode != 0:  # stale package lists: refresh once
            subprocess.run(["apt-get", "update", "-qq"], env=env)
            subprocess.run(install, env=env)
    return [c for c in commands if shutil.which(c) is None]


def static_files(work: Path, sizes: Mapping[str, int]) -> Path:
    """The nginx upstream's document root under ``work``: one file of ``size`` bytes per name."""
    root = work / "www"
    root.mkdir(exist_ok=True)
    for name, size in sizes.items():
        (root / name).write_bytes(b"x" * size)
    return root


def proxy_pass_location(upstream: str) -> str:
    """The nginx peer's ``location /``: proxy_pass over HTTP/1.1 keep-alive to the ``upstream``
    block, buffered in memory (no temp files)."""
    return f"""location / {{
                proxy_pass http://{upstream};
                proxy_http_version 1.1;
                proxy_set_header Connection "";
                proxy_buffering on;
                proxy_buffer_size 16k;
                proxy_buffers 8 64k;
                proxy_max_temp_file_size 0;
            }}"""


def start_profiler(
    kind: str, pid: int, out: Path, seconds: int, spy_options: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """py-spy (``profile``, with ``spy_options`` such as an output format) or perf (``perf``:
    call graphs at 999 Hz) on process ``pid`` for ``seconds``, writing ``out``."""
    if kind == "profile":
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        cmd = [spy, "record", *spy_options, "-o", str(out), "-d", str(seconds), "-p", str(pid)]
    else:
        cmd = ["perf", "record", "-F", "999", "-g", "-o", str(out), "-p", str(pid), "--"]
        cmd += ["sleep", str(seconds)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def hello_master(
    tmp: Path, runtime: str, workers: int, supervisor: str = "", routes: str = ""
) -> tuple[Monolaked, int]:
    """A master for the reload scripts, started in ``tmp`` by the tests' harness (its
    config, ``master.log`` and control socket there), and its port: ``workers`` workers on
    ``runtime``, JSON logs, and one HTTP server ``web`` on a free loopback port whose "/" is
    the builtin hello upstream; ``supervisor``: more [supervisor] lines, ``routes``: more
    [[servers.web.routes]] tables (both TOML, indented as they like). ``stop_master`` it."""
    from benchrun import free_port

    root = str(Path(__file__).resolve().parents[1])  # for the tests' harness: tests/harness.py
    if root not in sys.path:
        sys.path.insert(0, root)
    from tests.harness import Monolaked

    port = free_port()
    head = textwrap.dedent(f"""
        [runtime]
        runtime_type = "{runtime}"
        workers = {workers}

        [supervisor]
        control_socket = "{tmp}/control.sock"
        log_format = "json"
    """)
    web = textwrap.dedent(f"""
        [servers.web]
        proxy_type = "http"
        listener = {{ type = "socket", value = "127.0.0.1:{port}" }}

        [[servers.web.routes]]
        path = "/"
        upstreams = [{{ endpoint = {{ type = "builtin", value = "hello" }} }}]
    """)
    return Monolaked(tmp, head + textwrap.dedent(supervisor) + web + textwrap.dedent(routes)), port


def stop_master(master: Monolaked, timeout: float = 30) -> None:
    """SIGTERM and up to ``timeout`` s for a graceful exit; then whatever of it is left is
    killed (the harness's close)."""
    try:
        master.stop(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    finally:
        master.close()
