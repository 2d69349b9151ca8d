"""The master's allocator: glibc malloc, as for the workers, unless the operator chose one.

CPython's pymalloc never gives back a 1 MiB arena while a single object lives in it, and
each reload leaves a few survivors (its record, log caches) scattered over pools that the
next reload's temporaries then miss: the master's RSS rose 2-8 KiB per generation reload
and kept rising past 200 reloads, while its Python heap stayed flat (tracemalloc). On glibc
malloc the same 120 reloads leave it flat to the KiB (`tests/supervisor/test_faults.py`,
the reload soak). The allocator is fixed when the interpreter starts, so ``monolaked
start`` re-executes itself once with ``PYTHONMALLOC=malloc``: same PID, same arguments,
same inherited fds (socket activation), before it has opened or read anything.
"""

from __future__ import annotations

import os
import sys


def reexec_on_malloc() -> None:
    """Replace this process by itself on glibc malloc, unless ``PYTHONMALLOC`` is set (the
    operator's choice, or this very re-exec) or the interpreter ignores the environment
    (``-E``/``-I``: the variable would not take and the exec would repeat)."""
    if "PYTHONMALLOC" in os.environ or sys.flags.ignore_environment:
        return
    if not sys.orig_argv or not sys.executable:
        return  # embedded: nothing to re-execute
    env = dict(os.environ, PYTHONMALLOC="malloc")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
