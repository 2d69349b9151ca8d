"""Build the two cffi API-mode extensions: ``monolake.uring._uring`` (io_uring, over liburing)
and ``monolake.uring._codec`` (the native HTTP/1.1 parsers, CPython only).

Why API mode and a C shim (``mu_ring.c``) rather than a 1:1 binding: Python never touches an SQE
or a CQE; one ``mu_run`` per loop iteration submits, waits and reaps a whole batch, which is what
made io_uring beat epoll in the probe.

Why two extensions: the HTTP codec needs no liburing, and the epoll runtime uses it too, so it
must not disappear with liburing's headers (or with an io_uring the kernel refuses). Each C unit
is its own translation unit with its own header; the cffi declarations are read from the
headers' ``cdef-begin`` / ``cdef-end`` sections (:func:`cdef_from_header`), so the C compiler
checks the same prototypes cffi binds. Units are compiled with ``-Wall -Wextra -Werror``.

``setup.py`` calls :func:`extensions`; both are optional so a machine without a compiler still
installs (the workers then log why io_uring is off and the parser falls back to httptools).
Environment knobs:
  MONOLAKE_NO_LIBURING=1        build as if liburing's headers were missing (codec only)
  MONOLAKE_URING_SHARED=1       link liburing.so instead of liburing.a
  MONOLAKE_NO_WERROR=1          warnings stay warnings (a newer compiler than CI's)
  MONOLAKE_REQUIRE_EXTENSIONS=1 a failed extension build fails the install (CI sets it)
Run this file directly to build both modules in place for development.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from typing import TypedDict

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

WARNINGS = ["-Wall", "-Wextra"]


@dataclass(frozen=True)
class Unit:
    """One extension: its module, the headers cffi reads, the C units it compiles."""

    module: str
    headers: tuple[str, ...]
    sources: tuple[str, ...]
    liburing: bool

    @property
    def generated(self) -> str:
        """cffi's generated module source (git-ignored)."""
        return os.path.join(HERE, "_monolake_" + self.module.rsplit(".", 1)[1].lstrip("_") + ".c")


# mu_native / mu_nx: the native exchange (issue 13 §2); it writes through mu_fast's writers and
# runs from the completion walk, so it lives here, with its own copies of mu_route, mu_head and
# mu_balance (the balancer tables are made through _codec: same source, same layout);
# mu_thrift / mu_thrift_frame: the native Thrift relay on the same machinery (worker/thrift/native.py)
URING = Unit(
    "monolake.uring._uring",
    ("mu_ring.h", "mu_fast.h", "mu_splice.h", "mu_native.h", "mu_nx.h", "mu_thrift.h", "mu_thrift_frame.h"),
    (
        "mu_ring.c",
        "mu_fast.c",
        "mu_pytype.c",
        "mu_lend.c",
        "mu_splice.c",
        "mu_native.c",
        "mu_nx.c",
        "mu_route.c",
        "mu_head.c",
        "mu_balance.c",
        "mu_thrift.c",
        "mu_thrift_frame.c",
    ),
    liburing=True,
)
# mu_route / mu_head / mu_balance / mu_logring / mu_counters: the per-request decisions and
# records of the native exchange (route match, upstream head, upstream choice, access-log ring,
# stats counters), plain C, no CPython API: tested through cffi against their Python twins
CODEC = Unit(
    "monolake.uring._codec",
    ("mu_http.h", "mu_route.h", "mu_head.h", "mu_balance.h", "mu_logring.h", "mu_counters.h"),
    ("mu_http.c", "mu_lend.c", "mu_route.c", "mu_head.c", "mu_balance.c", "mu_logring.c", "mu_counters.c"),
    liburing=False,
)
UNITS = (URING, CODEC)

LIB_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
    "/usr/local/lib64",
)

_SECTION = re.compile(r"/\* cdef-begin \*/\n(.*?)/\* cdef-end \*/", re.S)
_PRIVATE = re.compile(r"[ \t]*/\* private \{ \*/\n.*?/\* \} private \*/\n", re.S)
_DIRECTIVE = re.compile(r"/\* cdef: (.*?) \*/")
_COMMENT = re.compile(r"/\*.*?\*/", re.S)
_INT_DEFINE = re.compile(r"#define\s+\w+\s+(0x[0-9a-fA-F]+|\d+)[uUlL]*\s*$")


def cdef_from_header(text: str) -> str:
    """The cffi declarations of a header: the text between ``/* cdef-begin */`` and
    ``/* cdef-end */``, with three rewrites, because cffi's dialect is not quite C:
    a ``/* private { */ ... /* } private */`` run of struct members becomes ``...;`` (cffi
    learns the layout from the compiler); a ``/* cdef: TEXT */`` comment becomes TEXT (e.g.
    ``#define POLLIN ...`` for a system constant); other comments and preprocessor lines are
    dropped, except ``#define NAME <integer>``."""
    sections = _SECTION.findall(text)
    if not sections:
        raise ValueError("no /* cdef-begin */ ... /* cdef-end */ section")
    out: list[str] = []
    for body in sections:
        body = _PRIVATE.sub("    ...;\n", body)
        body = _DIRECTIVE.sub(lambda m: "\n" + m.group(1) + "\n", body)
        body = _COMMENT.sub("", body)
        for line in body.splitlines():
            stripped = line.strip()
            if stripped.startswith("#") and not (_INT_DEFINE.match(stripped) or stripped.endswith("...")):
                continue
            if stripped:
                out.append(line.rstrip())
    return "\n".join(out) + "\n"


def cdef(unit: Unit) -> str:
    parts = []
    for name in unit.headers:
        with open(os.path.join(HERE, name)) as f:
            parts.append(cdef_from_header(f.read()))
    return "".join(parts)


def _compiler() -> list[str]:
    return (sysconfig.get_config_var("CC") or "cc").split()


def has_liburing() -> bool:
    """Can ``#include <liburing.h>`` be compiled here? (MONOLAKE_NO_LIBURING=1: pretend not.)"""
    if os.environ.get("MONOLAKE_NO_LIBURING"):
        return False
    try:
        r = subprocess.run(
            [*_compiler(), "-E", "-x", "c", "-"],
            input="#include <liburing.h>\n",
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


def static_liburing() -> str | None:
    """Path of liburing.a (linked statically so the module needs no liburing.so at run time)."""
    if os.environ.get("MONOLAKE_URING_SHARED"):
        return None
    try:
        out = subprocess.run(
            ["cc", "-print-file-name=liburing.a"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        if os.path.isabs(out) and os.path.exists(out):
            return out
    except (OSError, subprocess.SubprocessError):
        pass
    for d in LIB_DIRS:
        p = os.path.join(d, "liburing.a")
        if os.path.exists(p):
            return p
    return None


def compile_args() -> list[str]:
    """-O2 unless CFLAGS already picks a level (the sanitizer build uses -O1), the warnings,
    and -Werror unless MONOLAKE_NO_WERROR is set."""
    args = ["-std=gnu11", *WARNINGS]
    if not re.search(r"(^|\s)-O", os.environ.get("CFLAGS", "")):
        args.insert(0, "-O2")
    if not os.environ.get("MONOLAKE_NO_WERROR"):
        args.append("-Werror")
    return args


class LinkKwargs(TypedDict, total=False):
    """What both cffi's ``set_source`` and setuptools' ``Extension`` take from link_kwargs."""

    extra_compile_args: list[str]
    define_macros: list[tuple[str, str | None]]
    extra_objects: list[str]
    libraries: list[str]


def link_kwargs(unit: Unit) -> LinkKwargs:
    # mu_fast.c and mu_http.c use the full CPython API (vectorcall, bytes internals): no
    # limited API
    kwargs: LinkKwargs = {
        "extra_compile_args": compile_args(),
        "define_macros": [("_CFFI_NO_LIMITED_API", None)],
    }
    if unit.liburing:
        static = static_liburing()
        if static:
            kwargs["extra_objects"] = [static]
        else:
            kwargs["libraries"] = ["uring"]
    return kwargs


def ffibuilder(unit: Unit, sources: list[str]):  # type: ignore[no-untyped-def]
    """The cffi builder of one extension; ``sources`` are the C units as the caller's build
    wants them spelled (relative to the project root for setuptools, absolute in place)."""
    from cffi import FFI

    ffi = FFI()
    ffi.cdef(cdef(unit))
    preamble = "".join(f'#include "{h}"\n' for h in unit.headers)
    ffi.set_source(unit.module, preamble, sources=sources, include_dirs=[HERE], **link_kwargs(unit))
    return ffi


def wanted_units() -> list[Unit]:
    if has_liburing():
        return list(UNITS)
    sys.stderr.write(
        "monolake: liburing headers not found (install liburing-dev): building "
        "the HTTP codec only; the workers will run on epoll\n"
    )
    return [CODEC]


def extensions() -> list:
    """setuptools Extensions for setup.py; optional (unless MONOLAKE_REQUIRE_EXTENSIONS), so
    a failed build only warns."""
    from setuptools import Extension

    optional = not os.environ.get("MONOLAKE_REQUIRE_EXTENSIONS")
    exts = []
    for unit in wanted_units():
        # setuptools wants paths relative to setup.py's folder (the project root)
        sources = [os.path.relpath(os.path.join(HERE, s), ROOT) for s in unit.sources]
        gen = os.path.relpath(unit.generated, ROOT)
        kwargs = link_kwargs(unit)
        try:
            ffibuilder(unit, sources).emit_c_code(unit.generated)
        except Exception as exc:  # no cffi at build time: nothing to build
            sys.stderr.write(f"monolake: not building {unit.module}: {exc}\n")
            continue
        exts.append(
            Extension(
                unit.module,
                sources=[gen, *sources],
                include_dirs=[os.path.relpath(HERE, ROOT)],
                optional=optional,
                **kwargs,
            )
        )
    return exts


def build_in_place() -> None:
    """Development: build the modules next to this file (monolake.uring._uring*.so, ...)."""
    for unit in wanted_units():
        builder = ffibuilder(unit, [os.path.join(HERE, s) for s in unit.sources])
        with tempfile.TemporaryDirectory() as tmp:
            target = builder.compile(tmpdir=tmp, verbose=True)
            # a new file renamed into place: a running process keeps its mapping of the old
            # one (copying over it in place changes the pages under the running server)
            dest = os.path.join(HERE, os.path.basename(target))
            shutil.copy(target, dest + ".new")
            os.replace(dest + ".new", dest)
            sys.stderr.write(f"{target} -> {dest}\n")


if __name__ == "__main__":
    build_in_place()
