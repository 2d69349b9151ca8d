"""Build the cffi API-mode extension ``monolake.uring._uring`` over liburing.

Why API mode and a C shim (``mu_ring.c``) rather than a 1:1 binding: Python never touches an SQE
or a CQE; one ``mu_run`` per loop iteration submits, waits and reaps a whole batch, which is what
made io_uring beat epoll in the probe. ``setup.py`` calls :func:`extensions`; the extension is
optional so a machine without liburing headers still installs (and falls back to epoll).
Run this file directly to build the module in place for development.
"""

from __future__ import annotations

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MODULE = "monolake.uring._uring"
GENERATED = os.path.join(HERE, "_monolake_uring.c")  # git-ignored
SOURCES = ("mu_ring.c", "mu_fast.c", "mu_http.c")  # the liburing shim, the CPython fast-path
# glue, the native HTTP/1.1 parsers

CDEF = """
typedef struct mu_ring mu_ring;
typedef struct {
    int64_t pending;
    int64_t notify_below;
    int64_t error;
    ...;
} mu_conn;

#define MU_EV_RECV 1
#define MU_EV_SENDERR 2
#define MU_EV_DRAIN 3
#define MU_EV_QUIESCED 4

#define POLLIN ...
#define POLLOUT ...
#define POLLERR ...
#define POLLHUP ...
#define POLLRDHUP ...

unsigned mu_flags_from_mask(unsigned mask);
int mu_try_setup(unsigned entries, unsigned flags);
mu_ring *mu_ring_new(unsigned entries, unsigned flags, unsigned nbufs, unsigned buf_size,
                     int buf_inc, int *err);
int mu_ring_buf_inc(mu_ring *r);
int mu_pbuf_inc_supported(void);
int64_t mu_ring_free(mu_ring *r, int timeout_ms);
int mu_ring_set_option(mu_ring *r, int opt, int64_t value);
#define MU_OPT_DIRECT_MIN 1
#define MU_OPT_REG_RING_FD 2
int mu_ring_eventfd(mu_ring *r);
int mu_ring_fd(mu_ring *r);
unsigned mu_ring_setup_flags(mu_ring *r);
char *mu_arena(mu_ring *r);
size_t mu_arena_size(mu_ring *r);
int64_t mu_ring_inflight(mu_ring *r);
int mu_wake(mu_ring *r);

int mu_run(mu_ring *r, int wait_nr, int64_t timeout_ns, int64_t *out, int max);

int mu_nop(mu_ring *r, uint64_t ud);
int mu_poll_add(mu_ring *r, int fd, unsigned mask, uint64_t ud);
int mu_accept(mu_ring *r, int fd, uint64_t ud);
int mu_poll_multishot(mu_ring *r, int fd, unsigned mask, uint64_t ud);
int mu_accept_many(int fd, int *out, int max, int *err);
int mu_cancel(mu_ring *r, uint64_t ud);
int mu_cancel_fd(mu_ring *r, int fd);
int mu_timeout(mu_ring *r, int64_t ns, uint64_t ud);
int mu_close_fd(mu_ring *r, int fd, uint64_t ud);
int mu_shutdown_fd(mu_ring *r, int fd, int how, uint64_t ud);

mu_conn *mu_conn_new(mu_ring *r, int fd, uint64_t ud_base);
int mu_conn_recv_start(mu_conn *c);
int mu_conn_recv_stop(mu_conn *c);
int64_t mu_conn_send(mu_conn *c, const char *data, size_t len);
int64_t mu_conn_send2(mu_conn *c, const char *a, size_t alen, const char *b, size_t blen);
int mu_conn_shutdown(mu_conn *c);
int mu_conn_close(mu_conn *c, int abort);

int mu_fast_install(void);
int mu_http_install(void);
"""

LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
            "/usr/local/lib", "/usr/local/lib64")


def static_liburing() -> str | None:
    """Path of liburing.a (linked statically so the module needs no liburing.so at run time)."""
    if os.environ.get("MONOLAKE_URING_SHARED"):
        return None
    try:
        out = subprocess.run(["cc", "-print-file-name=liburing.a"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        if os.path.isabs(out) and os.path.exists(out):
            return out
    except (OSError, subprocess.SubprocessError):
        pass
    for d in LIB_DIRS:
        p = os.path.join(d, "liburing.a")
        if os.path.exists(p):
            return p
    return None


def ffibuilder():  # type: ignore[no-untyped-def]
    """The cffi builder: the C shim plus liburing, static when liburing.a exists."""
    from cffi import FFI

    ffi = FFI()
    ffi.cdef(CDEF)
    source = ""
    for name in SOURCES:
        with open(os.path.join(HERE, name)) as f:
            source += f.read() + "\n"
    ffi.set_source(MODULE, source, **link_kwargs())
    return ffi


def link_kwargs() -> dict[str, list]:
    # mu_fast.c uses the full CPython API (vectorcall, bytes internals): no limited API
    kwargs: dict[str, list] = {"extra_compile_args": ["-O2", "-std=gnu11", "-Wno-unused-function"],
                               "define_macros": [("_CFFI_NO_LIMITED_API", None)]}
    static = static_liburing()
    if static:
        kwargs["extra_objects"] = [static]
    else:
        kwargs["libraries"] = ["uring"]
    return kwargs


def extensions() -> list:
    """setuptools Extensions for setup.py; optional, so a failed build only warns."""
    from setuptools import Extension

    # setuptools wants source paths relative to setup.py's folder (the project root)
    rel = os.path.relpath(GENERATED, os.path.dirname(HERE))
    if not os.path.exists(os.path.join(HERE, "mu_ring.c")) and os.path.exists(GENERATED):
        # an sdist without the shim source still carries the generated module source
        return [Extension(MODULE, sources=[rel], optional=True, **link_kwargs())]
    try:
        ffi = ffibuilder()
    except Exception as exc:  # noqa: BLE001 - no cffi at build time: nothing to build
        sys.stderr.write(f"monolake: not building the io_uring extension: {exc}\n")
        return []
    ffi.emit_c_code(GENERATED)
    return [Extension(MODULE, sources=[rel], optional=True, **link_kwargs())]


if __name__ == "__main__":
    # development: build the module next to this file (monolake.uring._uring*.so)
    builder = ffibuilder()
    target = builder.compile(tmpdir=os.path.join(HERE, "..", "build", "cffi-dev"), verbose=True)
    import glob
    import shutil

    for so in glob.glob(os.path.join(os.path.dirname(target), "monolake", "uring", "_uring*.so")) or [target]:
        # a new file renamed into place: a running process keeps its mapping of the old one
        # (copying over it in place changes the pages under the running server and crashes it)
        dest = os.path.join(HERE, os.path.basename(so))
        shutil.copy(so, dest + ".new")
        os.replace(dest + ".new", dest)
        print(so, "->", dest)
