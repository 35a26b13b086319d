"""A CPU run keeps its large freed buffers for reuse, instead of page-faulting them in again.

glibc's malloc serves every block above a threshold (at most 32 MiB by default) with a fresh mmap
and gives it back to the kernel when freed; a convnet step allocates and frees the same large
buffers at every step (docs/benchmarks.md measures the cost). Raising the mmap and trim thresholds
keeps them in the heap. It changes where memory comes from, not what is computed; the price is
that the process keeps its peak memory until it exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import platform

log = logging.getLogger("sweeper")

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_BYTES = 1 << 30  # blocks up to 1 GiB come from the heap; up to 1 GiB of free heap is kept


def available() -> bool:
    """Whether this process's C library is glibc, whose thresholds keep_freed_buffers sets."""
    return platform.libc_ver()[0] == "glibc"


@functools.cache
def keep_freed_buffers() -> bool:
    """Set glibc's thresholds once per process; False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt): its own defaults
        return False
    # glibc before 2.35 or so refuses an mmap threshold above 32 MiB: keep what it allows.
    mmap_ok = any(mallopt(M_MMAP_THRESHOLD, size) == 1 for size in (KEEP_BYTES, 32 << 20))
    trim_ok = mallopt(M_TRIM_THRESHOLD, KEEP_BYTES) == 1
    if not (mmap_ok and trim_ok):
        log.info("the C library refused malloc thresholds (mmap %s, trim %s): large buffers are "
                 "page-faulted in at each step", mmap_ok, trim_ok)  # fmt: skip
    return mmap_ok and trim_ok
