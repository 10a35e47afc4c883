"""Freed feature maps stay in the process, so the next layer and the next inference reuse their pages (the arena
onnxruntime keeps, at the allocator's level: every kernel's np.empty benefits, none changes).

glibc hands every block above its mmap threshold (adaptive, at most 32 MiB) back to the kernel when it is freed,
and trims the heap's free top. The next map of that size then takes a page fault per page, and the kernel zeroes
each page again. VGG-16 at 512² has 64 MiB maps: on a quarter-core board that was 0.26–0.35 s of every
inference's 0.9–1.05 s of CPU, and the latency fell from 3.75–4.22 s to 2.24–2.34 s without it
(docs/BENCHMARKS.md, "Freed memory kept"). The
peak stays what it was once set-up hands back what it freed (return_free_memory: the model's full weights,
which a rank that computes with a part of them drops).
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
BIG = (1 << 30, 32 << 20)  # mmap thresholds to try: older glibc refuses above HEAP_MAX_SIZE / 2 (32 MiB)
NEVER = (1 << 31) - 1  # trim threshold: an int's largest value


def _libc():
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Ask glibc to serve blocks up to 1 GiB (or its limit) from the heap and never to trim it; False where the C
    library has no mallopt (musl, macOS: their own policy stands)."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if not any(mallopt(M_MMAP_THRESHOLD, size) for size in BIG):
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, NEVER))


def return_free_memory() -> None:
    """Hand every free page of the heap back to the kernel (glibc's malloc_trim; elsewhere nothing): once set-up
    is done, so that a board holds what inference uses, not also the weights it loaded and dropped."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim.argtypes, trim.restype = (ctypes.c_size_t,), ctypes.c_int
        trim(0)
