"""Types of the cffi extension monolake.worker.h2._nghttp2, which worker/h2/_build.py compiles
from mh2.c against the system's nghttp2/nghttp2.h, with the cdef (CDEF) kept in _build.py. A
stub, because the built .so is not there for every checker (.ci/lint installs no extension, and
h2 is optional where nghttp2 is missing) and says nothing typed when it is.

Both names are Any on purpose: they are the C boundary, and their members are exactly the
declarations in that cdef (the build fails when the cdef and the header disagree).
"""

from typing import Any

ffi: Any
lib: Any
