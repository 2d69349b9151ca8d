"""Build script: maps the top-level folders into the ``monolake`` namespace and builds the
optional io_uring and HTTP/2 (libnghttp2) extensions.

Why a setup.py beside pyproject.toml: cffi's extension has to be declared to setuptools at
build time, and it must be *optional* (a machine without liburing headers still installs
monolake and falls back to epoll), which only an ``Extension(optional=True)`` expresses.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
# top-level folder -> import name under the monolake namespace
FOLDERS = {"supervisor": "supervisor", "worker": "worker", "uring": "uring", "conf": "conf"}


def find_packages() -> tuple[list[str], dict[str, str]]:
    packages: list[str] = []
    package_dir: dict[str, str] = {}
    for folder, name in FOLDERS.items():
        root = os.path.join(HERE, folder)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith((".", "__pycache__"))]
            if "__init__.py" not in filenames:
                continue
            rel = os.path.relpath(dirpath, HERE)
            parts = rel.split(os.sep)
            pkg = ".".join(["monolake", name, *parts[1:]])
            packages.append(pkg)
            package_dir[pkg] = rel.replace(os.sep, "/")
    return packages, package_dir


def uring_extensions() -> list:
    """The cffi extension for io_uring, or none when the build script is absent."""
    sys.path.insert(0, os.path.join(HERE, "uring"))
    try:
        import _build  # type: ignore[import-not-found]
    except ImportError:
        return []
    finally:
        sys.path.pop(0)
    return _build.extensions()


def h2_extensions() -> list:
    """The optional cffi extension over libnghttp2 (worker/h2/_build.py), loaded under its own
    module name so it cannot collide with uring's ``_build``."""
    import importlib.util

    path = os.path.join(HERE, "worker", "h2", "_build.py")
    if not os.path.exists(path):
        return []
    spec = importlib.util.spec_from_file_location("monolake_h2_build", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.extensions()


packages, package_dir = find_packages()
setup(
    packages=packages,
    package_dir=package_dir,
    package_data={"monolake.conf": ["*.toml"], "monolake.worker": ["*.thrift"]},
    ext_modules=uring_extensions() + h2_extensions(),
    zip_safe=False,
)
