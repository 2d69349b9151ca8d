"""The monolake/ symlink layout (docs/contributing.md): every package folder is reachable as
``monolake.<folder>`` through a relative link, and no module is loaded twice under two names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Top-level folders that are not part of the monolake namespace.
NOT_PACKAGES = {"tests", "monolake"}


def package_folders() -> list[str]:
    """Top-level folders with an ``__init__.py``: the ones that install as monolake.<name>."""
    return sorted(
        p.name
        for p in REPO.iterdir()
        if p.is_dir() and not p.is_symlink() and (p / "__init__.py").is_file() and p.name not in NOT_PACKAGES
    )


def test_every_package_folder_has_a_relative_link_under_monolake() -> None:
    folders = package_folders()
    assert {"conf", "supervisor", "uring", "worker"} <= set(folders)
    for name in folders:
        link = REPO / "monolake" / name
        assert link.is_symlink(), (
            f"monolake/{name} is missing or not a symlink: ln -s ../{name} monolake/{name}"
        )
        # relative, so that clones, worktrees and CI's fresh checkout resolve it
        assert os.readlink(link) == f"../{name}"
    extra = {p.name for p in (REPO / "monolake").iterdir() if p.is_symlink()} - set(folders)
    assert not extra, f"monolake/ links to folders that are not packages: {sorted(extra)}"


# Imports every monolake module with the repository root first on sys.path (as pytest and the
# scripts run) and reports project files loaded under more than one module name, and any
# top-level module named after a package folder (a bare `import conf`).
_IMPORT_ALL = r"""
import importlib, json, os, pkgutil, sys
root, folders = sys.argv[1], sys.argv[2].split(",")
sys.path.insert(0, root)
import monolake
for info in pkgutil.walk_packages(monolake.__path__, "monolake."):
    if not info.name.endswith("__main__"):
        importlib.import_module(info.name)
names = {}
for name, module in list(sys.modules.items()):
    path = getattr(module, "__file__", None)
    if path and os.path.realpath(path).startswith(root + os.sep):
        names.setdefault(os.path.realpath(path), []).append(name)
print(json.dumps({
    "modules": sum(1 for n in sys.modules if n.startswith("monolake.")),
    "twice": {p: n for p, n in names.items() if len(n) > 1},
    "bare": sorted(n for n in sys.modules if n.split(".")[0] in folders),
}))
"""


def test_no_module_is_loaded_under_two_names() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL, str(REPO), ",".join(package_folders())],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["modules"] > 50, result  # the walk really imported the packages
    assert result["twice"] == {}
    assert result["bare"] == []
