"""Freed feature maps stay in the process, so the next layer and the next inference reuse their pages (the arena
onnxruntime keeps, at the allocator's level: every kernel's np.empty benefits, none changes).

glibc hands every block above its mmap threshold (adaptive, at most 32 MiB) back to the kernel when it is freed,
and trims the heap's free top. The next map of that size then takes a page fault per page, and the kernel zeroes
each page again. VGG-16 at 512² has 64 MiB maps: on a quarter-core board that was 0.22–0.35 s of every
inference's 0.9 s of CPU, and the latency fell from 3.4–3.8 s to 2.3 s without it (docs/BENCHMARKS.md). The
peak stays what it was: only what a later inference allocates again is kept.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
BIG = (1 << 30, 32 << 20)  # mmap thresholds to try: glibc 2.31 refuses above 32 MiB (HEAP_MAX_SIZE / 2)
NEVER = (1 << 31) - 1  # trim threshold: an int's largest value


def keep_freed_memory() -> bool:
    """Ask glibc to serve blocks up to 1 GiB (or its limit) from the heap and never to trim it; False where the C
    library has no mallopt (musl, macOS: their own policy stands)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if not any(mallopt(M_MMAP_THRESHOLD, size) for size in BIG):
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, NEVER))
