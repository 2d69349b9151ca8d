"""Can this process have an io_uring, and with which setup flags?

Why a runtime probe and not a build-time check: io_uring can be missing or switched off at run
time (old kernel, ``kernel.io_uring_disabled``, a container seccomp profile answering ENOSYS or
EPERM), so the only reliable test is to create a real ring, in the process that will use it.
"""

from __future__ import annotations

import errno
import os
import platform
from dataclasses import dataclass

# Multishot recv (6.0) is the newest feature the loop cannot do without; DEFER_TASKRUN (6.1)
# and COOP_TASKRUN (5.19) are optional speed-ups chosen by the probe.
MIN_KERNEL = (6, 0)

# Setup flag sets in order of preference (names as they appear in logs and `status`).
FLAG_CHOICES: tuple[str, ...] = (
    "single_issuer,defer_taskrun",
    "single_issuer,coop_taskrun",
    "coop_taskrun",
    "none",
)


@dataclass(frozen=True)
class Probe:
    """The outcome of :func:`probe`: whether io_uring is usable, why not, and the best flags."""

    available: bool
    reason: str
    setup_flags: str
    kernel: str


def kernel_release() -> str:
    return platform.release()


def parse_kernel(release: str) -> tuple[int, int]:
    """``"6.18.44-fc-v657"`` -> ``(6, 18)``; unparseable -> ``(0, 0)``."""
    parts = release.split(".")
    try:
        major = int(parts[0])
        minor = int("".join(ch for ch in parts[1].split("-")[0] if ch.isdigit()) or "0")
    except (IndexError, ValueError):
        return (0, 0)
    return (major, minor)


def io_uring_disabled() -> int:
    """``kernel.io_uring_disabled``: 0 enabled, 1 only for a privileged group, 2 disabled; absent -> 0."""
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            return int(f.read().strip() or "0")
    except (OSError, ValueError):
        return 0


def extension_error() -> str | None:
    """None when the cffi extension imports, else why it does not."""
    try:
        from monolake.uring import _uring  # noqa: F401
    except ImportError as exc:
        return f"the io_uring extension monolake.uring._uring was not built ({exc})"
    return None


def _try_flags(entries: int) -> tuple[str | None, str]:
    """Create (and destroy) a real ring with each flag set in turn; the first that works wins."""
    from monolake.uring._uring import lib

    last = ""
    for name in FLAG_CHOICES:
        rc = lib.mu_try_setup(entries, lib.mu_flags_from_mask(_flag_mask(name)))
        if rc == 0:
            return name, ""
        code = -rc
        if code == errno.EOPNOTSUPP:
            last = "the kernel's io_uring lacks a needed feature (EXT_ARG, NODROP or buffer rings)"
            break
        last = f"io_uring_queue_init failed with {errno.errorcode.get(code, str(code))} ({os.strerror(code)})"
        if code in (errno.ENOSYS, errno.EPERM, errno.EACCES, errno.ENOMEM, errno.EMFILE, errno.EOPNOTSUPP):
            break  # not a flag problem: seccomp, sysctl, memlock or fd limits
    return None, last


def _flag_mask(name: str) -> int:
    """Portable bit mask understood by ``mu_flags_from_mask`` (1 single_issuer, 2 defer, 4 coop)."""
    bits = {"single_issuer": 1, "defer_taskrun": 2, "coop_taskrun": 4}
    return sum(bits[p] for p in name.split(",") if p in bits)


def flag_mask(name: str) -> int:
    return _flag_mask(name)


_cache: dict[tuple[int, int], Probe] = {}


def probe(entries: int = 64) -> Probe:
    """Probe io_uring in this process (cached per pid: a fork must probe again)."""
    key = (os.getpid(), entries)
    if key not in _cache:
        _cache[key] = _probe(entries)
    return _cache[key]


def _probe(entries: int) -> Probe:
    release = kernel_release()
    if parse_kernel(release) < MIN_KERNEL:
        return Probe(
            False,
            f"kernel {release} is older than {MIN_KERNEL[0]}.{MIN_KERNEL[1]} (multishot recv is needed)",
            "",
            release,
        )
    disabled = io_uring_disabled()
    if disabled == 2 or (disabled == 1 and os.geteuid() != 0):
        return Probe(False, f"io_uring is switched off by kernel.io_uring_disabled={disabled}", "", release)
    err = extension_error()
    if err is not None:
        return Probe(False, err + "; install liburing-dev and reinstall monolake", "", release)
    flags, why = _try_flags(entries)
    if flags is None:
        return Probe(False, why, "", release)
    return Probe(True, "ok", flags, release)
