"""Python face of the C ring: tokens, the run() call and the received-data buffer area.

Why a thin wrapper: the loop, the selector and the transports share one ring and one token space;
user_data is ``token << 8 | kind`` with tokens never reused, so a late completion can never be
mistaken for a newer operation on a reused fd.
"""

from __future__ import annotations

import os
from typing import Any

from monolake.uring._uring import ffi, lib
from monolake.uring.probing import FLAG_CHOICES, flag_mask, probe

# kinds, low 8 bits of a Python user_data (1-4 are produced by C for conns)
K_RECV = lib.MU_EV_RECV
K_SENDERR = lib.MU_EV_SENDERR
K_DRAIN = lib.MU_EV_DRAIN
K_QUIESCED = lib.MU_EV_QUIESCED
K_POLL = 16
K_ACCEPT = 17
K_TIMEOUT = 18
K_NOP = 19

F_MORE = 2  # IORING_CQE_F_MORE

# Provided receive buffers, 8 MiB either way (virtual until touched). Large, so that a whole
# 64 KiB response with its head is one completion, one bytes object and one data_received
# (16 KiB buffers made it five of each, and the HTTP engine had to stream it).
# Default: every read takes a whole buffer until the next run: 64 x 128 KiB.
# Incremental consumption (buf_inc=True or MONOLAKE_URING_BUF_INC=1, kernel 6.12+): 8 x 1 MiB,
# each shared by many reads, so a batch of many small reads never runs out of buffers; it
# measured ~8 % more CPU per 64 KiB proxied response than the default (more cache touched,
# a response split where a buffer ends), hence opt-in.
INC_NBUFS, INC_BUF_SIZE = 8, 1 << 20
PLAIN_NBUFS, PLAIN_BUF_SIZE = 64, 128 << 10
DEFAULT_BATCH = 1024

_inc_supported: bool | None = None

# tunables (mu_ring_set_option), mainly for A/B runs of scripts/bench_loop.py
_OPTIONS = {
    "direct_min": lib.MU_OPT_DIRECT_MIN,  # writes this large on an idle conn: send() first
    "reg_ring_fd": lib.MU_OPT_REG_RING_FD,  # 0: unregister the ring fd (registered by default)
}


def pbuf_inc_supported() -> bool:
    """Whether this kernel consumes provided buffers incrementally (checked once)."""
    global _inc_supported
    if _inc_supported is None:
        _inc_supported = lib.mu_pbuf_inc_supported() == 1
    return _inc_supported


def _install_fast() -> Any:
    """monolake.uring._fast (C glue for the hot path), or None where it cannot be had."""
    try:
        if lib.mu_fast_install() == 0:
            from monolake.uring import _fast  # type: ignore[attr-defined]

            return _fast
    except (AttributeError, ImportError):
        pass
    return None


FAST = None if os.environ.get("MONOLAKE_URING_NO_FAST") else _install_fast()


def _install_native() -> Any:
    """monolake.uring._native (the native HTTP exchange, mu_native.c), or None."""
    try:
        if FAST is not None and lib.mu_native_install() == 0:
            from monolake.uring import _native  # type: ignore[attr-defined]

            return _native
    except (AttributeError, ImportError):
        pass
    return None


NATIVE = _install_native()


class Ring:
    """One io_uring owned by one loop, created in the process that uses it."""

    def __init__(
        self,
        entries: int = 1024,
        setup_flags: str | None = None,
        nbufs: int | None = None,
        buf_size: int | None = None,
        batch: int = DEFAULT_BATCH,
        buf_inc: bool | None = None,
        **options: int,
    ) -> None:
        if setup_flags is None:
            p = probe(min(entries, 64))
            if not p.available:
                raise OSError(f"io_uring unavailable: {p.reason}")
            setup_flags = p.setup_flags
        if setup_flags not in FLAG_CHOICES:
            raise ValueError(f"setup_flags must be one of {FLAG_CHOICES}, got {setup_flags!r}")
        if buf_inc is None:
            buf_inc = os.environ.get("MONOLAKE_URING_BUF_INC", "") not in ("", "0")
        buf_inc = buf_inc and pbuf_inc_supported()
        if nbufs is None:
            nbufs = INC_NBUFS if buf_inc else PLAIN_NBUFS
        if buf_size is None:
            buf_size = INC_BUF_SIZE if buf_inc else PLAIN_BUF_SIZE
        err = ffi.new("int *")
        ptr = lib.mu_ring_new(
            entries, lib.mu_flags_from_mask(flag_mask(setup_flags)), nbufs, buf_size, int(buf_inc), err
        )
        if ptr == ffi.NULL:
            code = -err[0]
            raise OSError(code, f"io_uring setup failed ({setup_flags}): {os.strerror(code)}")
        self.ptr: Any = ptr
        for name, value in options.items():
            key = _OPTIONS.get(name)
            if key is None:
                lib.mu_ring_free(ptr, 1000)
                raise TypeError(f"unknown ring option {name!r} (known: {sorted(_OPTIONS)})")
            rc = lib.mu_ring_set_option(ptr, key, int(value))
            if rc < 0:
                lib.mu_ring_free(ptr, 1000)
                raise OSError(-rc, f"ring option {name}={value}: {os.strerror(-rc)}")
        self.pid = os.getpid()
        self.setup_flags = setup_flags
        self.entries = entries
        self.buf_inc = bool(lib.mu_ring_buf_inc(ptr))
        self.nbufs, self.buf_size = nbufs, buf_size
        self.efd: int = lib.mu_ring_eventfd(ptr)
        self.batch = batch
        self._out = ffi.new("int64_t[]", 4 * batch)
        self._view = memoryview(ffi.buffer(self._out)).cast("q")
        # the provided buffers: a payload is lent until the next run(); slices are copied out
        # with tobytes() (the C dispatcher makes the bytes straight from it)
        self.arena = memoryview(ffi.buffer(lib.mu_arena(ptr), lib.mu_arena_size(ptr)))
        self.out_addr = int(ffi.cast("uintptr_t", self._out))
        self.addr = int(ffi.cast("uintptr_t", ptr))  # for _fast.run; 0 once closed
        self.arena_addr = int(ffi.cast("uintptr_t", lib.mu_arena(ptr)))
        self._next_token = 1
        self.closed = False

    def token(self) -> int:
        """A fresh token (never reused within this ring)."""
        t = self._next_token
        self._next_token = t + 1
        return t

    def run(self, timeout: float | None) -> list[int]:
        """Submit, wait up to ``timeout`` (None = until something completes), reap.

        Returns a flat list ``[ud, res, flags, off, ud, res, ...]``.
        """
        if timeout is None:
            n = lib.mu_run(self.ptr, 1, -1, self._out, self.batch)
        elif timeout <= 0:
            n = lib.mu_run(self.ptr, 0, 0, self._out, self.batch)
        else:
            n = lib.mu_run(self.ptr, 1, int(timeout * 1e9) or 1, self._out, self.batch)
        if n <= 0:
            if n < 0:
                raise OSError(-n, f"io_uring_enter: {os.strerror(-n)}")
            return []
        return self._view[: 4 * n].tolist()

    def dispatcher(self, readers: dict[int, Any], handlers: dict[int, Any], on_reader_error: Any) -> Any:
        """``run(timeout) -> n`` for the loop: one C call (``_fast.run``) that runs the ring and
        dispatches the batch (data to ``readers[ud]``, the rest to ``handlers[ud >> 8]``), so an
        iteration crosses into C once instead of twice through cffi and two Python frames.
        None without the C fast path (or with a module built before it had ``run``): the loop
        then takes its Python path."""
        fast_run = getattr(FAST, "run", None)
        if fast_run is None:
            return None
        out_addr, arena_addr, batch = self.out_addr, self.arena_addr, self.batch

        def run(timeout: float | None) -> int:
            addr = self.addr
            if timeout is None:
                return fast_run(addr, 1, -1, out_addr, batch, arena_addr, readers, handlers, on_reader_error)
            if timeout <= 0:
                return fast_run(addr, 0, 0, out_addr, batch, arena_addr, readers, handlers, on_reader_error)
            return fast_run(
                addr,
                1,
                int(timeout * 1e9) or 1,
                out_addr,
                batch,
                arena_addr,
                readers,
                handlers,
                on_reader_error,
            )

        return run

    def close(self, timeout_ms: int = 1000) -> int:
        """Cancel everything, wait for the kernel to let go of our memory, free the ring.

        Returns how many operations were still in flight at the deadline (0 normally)."""
        if self.closed:
            return 0
        self.closed = True
        self.efd = -1
        self.addr = 0
        if os.getpid() != self.pid:
            # a forked child's copy: submitting (even a cancel) would act on the parent's ring
            self.ptr = ffi.NULL
            return 0
        left = lib.mu_ring_free(self.ptr, timeout_ms)
        self.ptr = ffi.NULL
        return int(left)
