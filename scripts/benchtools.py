"""What the benchmark scripts share: getting the load generator and the peers installed.

The scripts compare against distribution programs (wrk, nginx) and pin processes with
taskset; on a fresh Debian or Ubuntu machine they install what is missing themselves (as
root, with apt-get), as the README's benchmark instructions promise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

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
