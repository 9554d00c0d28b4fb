"""Giving memory back to the system after a burst.

glibc keeps what a process freed for its next allocations: after a burst of big requests, or
a stalled sender whose half-received tensors were dropped, an agent would sit at its peak
resident size for good. `trim` asks glibc to return free memory (malloc_trim: free pages in
the middle of the heap too); the agent calls it once a burst is over (main.py), never on the
request path. A no-op where the C library has no malloc_trim (musl, macOS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc


@functools.cache
def _malloc_trim() -> ctypes._CFuncPtr | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def trim() -> bool:
    """Collect reference cycles (a closed connection's objects may be in one), then return
    free heap memory to the system; False where the C library cannot."""
    gc.collect()
    malloc_trim = _malloc_trim()
    if malloc_trim is None:
        return False
    malloc_trim(0)
    return True
