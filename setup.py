"""Build script: lists the ``monolake`` packages and builds the optional io_uring and
HTTP/2 (libnghttp2) extensions.

The top-level folders (supervisor/, worker/, uring/, conf/) appear under the ``monolake``
namespace through the checked-in ``monolake/`` package, whose subfolders are relative symlinks
to them. The packages are found by walking ``monolake/`` (following the links), with no
``package_dir`` mapping: an editable install is then one path entry on ``sys.path`` rather than
an import hook, so static tools and the interpreter see the same files (docs/contributing.md).

Why a setup.py beside pyproject.toml: cffi's extension has to be declared to setuptools at
build time, and it must be *optional* (a machine without liburing headers still installs
monolake and falls back to epoll), which only an ``Extension(optional=True)`` expresses.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
NAMESPACE = "monolake"


def find_packages() -> list[str]:
    """Every folder under ``monolake/`` with an ``__init__.py``, symlinks followed."""
    packages: list[str] = []
    root = os.path.join(HERE, NAMESPACE)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith((".", "__pycache__"))]
        if "__init__.py" in filenames:
            packages.append(os.path.relpath(dirpath, HERE).replace(os.sep, "."))
    return sorted(packages)


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


setup(
    packages=find_packages(),
    package_data={"monolake.conf": ["*.toml"], "monolake.worker": ["*.thrift"]},
    ext_modules=uring_extensions() + h2_extensions(),
    zip_safe=False,
)
