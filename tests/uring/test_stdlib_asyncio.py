"""CPython's own ``test.test_asyncio`` suite on the io_uring loop, through
scripts/run_stdlib_asyncio.py (the loop installed as the default policy and as
``asyncio.SelectorEventLoop``; a per-test timeout; the expected failures listed, each with its
reason, in scripts/stdlib_asyncio_xfail.txt).

By default the I/O-heavy modules run (the ones that exercise transports, servers, TLS,
sendfile, streams and subprocesses), their per-selector classes once (on io_uring the
Select/Poll/EPoll variants are the same loop); ``MONOLAKE_SOAK=1`` runs the whole suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from monolake.uring import probe

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNNER = os.path.join(ROOT, "scripts", "run_stdlib_asyncio.py")
SOAK = os.environ.get("MONOLAKE_SOAK") == "1"
# the modules where the loop (not asyncio's pure-Python machinery) is under test
IO_MODULES = (
    "test_events",
    "test_sock_lowlevel",
    "test_sendfile",
    "test_ssl",
    "test_sslproto",
    "test_streams",
    "test_server",
    "test_buffered_proto",
    "test_subprocess",
    "test_unix_events",
)


def _suite_importable() -> str | None:
    proc = subprocess.run(
        [sys.executable, "-c", "import test.test_asyncio"], capture_output=True, text=True, timeout=60
    )
    if proc.returncode == 0:
        return None
    v = sys.version_info
    return (
        f"CPython's test suite is not installed for {sys.executable} (Debian/Ubuntu: "
        f"apt-get install libpython{v.major}.{v.minor}-testsuite)"
    )


@pytest.mark.timeout(900)
def test_stdlib_asyncio_on_io_uring(tmp_path: Any) -> None:
    if not probe().available:
        pytest.skip(f"io_uring unavailable: {probe().reason}")
    missing = _suite_importable()
    if missing:
        pytest.skip(missing)
    out = tmp_path / "summary.json"
    cmd = [sys.executable, RUNNER, "--json", str(out), "--jobs", "2", "--timeout", "60"]
    if not SOAK:
        cmd.append("--one-selector")
        for m in IO_MODULES:
            cmd += ["-k", f"test_asyncio.{m}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=840, cwd=ROOT)
    assert out.exists(), f"runner produced no summary (rc {proc.returncode}): {proc.stderr[-3000:]}"
    summary = json.loads(out.read_text())
    assert summary["tests"] > 400, summary["counts"]
    unexpected = [
        f"{u['outcome']} {u['id']} ({u['secs']} s)\n{u['detail'][-1500:]}"
        for u in summary["unexpected_failures"]
    ]
    assert not unexpected, "\n\n".join(unexpected)
    assert not summary["unexpected_passes"], (
        f"listed as expected failures but passed (remove them): {summary['unexpected_passes']}"
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
