"""Types of the cffi extension monolake.uring._uring, which uring/_build.py compiles from the
C units and whose cdef it reads from mu_ring.h, mu_fast.h, mu_splice.h. A stub, because the built .so is not
there for every checker (.ci/lint installs no extension) and says nothing typed when it is.

Both names are Any on purpose: they are the C boundary, and their members are exactly the
declarations in those headers (the build fails when the two disagree).
"""

from typing import Any

ffi: Any
lib: Any
