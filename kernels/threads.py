"""How the kernels use several cores: each parallel kernel splits its independent outer loop (output channels,
channel blocks, rows, GEMM blocks) over Numba's threads with prange, and a kernel with scratch buffers runs one
contiguous block per thread, each with its own scratch (a leading axis of `count()` copies). No loop that sums
is split: every thread count computes the same bits, but for a GEMM's blocks, which OpenBLAS's edge kernels may
round apart from the whole product.

A parallel loop's body calls a serial kernel on its block (`…_block`), or indexes with unsigned integers: in
the body itself Numba's loop index has no known sign, every index gets a negative-index fix-up, and LLVM left
the loops scalar (3×3 depthwise 3-8× and channel norm 12× slower on one thread). Helpers a block calls per
channel are inlined (window.stage, split_phases): a call that passes arrays counts references to them, atomically,
and threads doing so on the same arrays took turns for that cache line (a 1152-channel 3×3 depthwise conv at 7²
gained nothing from a second thread: 77 → 85 µs; inlined, 50-64 µs).

The GEMMs run inside the same threads (blas.py), on one BLAS thread each: one pool serves the cores."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numba
from numba import njit

_blocks: int | None = None  # (set by blocks(): a count of blocks whatever the pool's size)
_threads = 1  # (set by use(): numba.get_num_threads() cost 0.8 µs a call, several calls a conv)


def count() -> int:
    """Blocks the kernels split their work into now: one per thread they run on."""
    return _blocks or _threads


@contextlib.contextmanager
def blocks(n: int) -> Iterator[None]:
    """Inside the block, the kernels split their work into n blocks whatever the pool's size (a smaller pool runs
    them in turn). warm() compiles them so, with the buffers a run on n threads passes them, on any pool."""
    global _blocks
    before, _blocks = _blocks, n
    try:
        yield
    finally:
        _blocks = before


def use(n: int) -> None:
    """Run the kernels on n threads (at most NUMBA_NUM_THREADS, the pool's size). With more than one, BLAS is
    limited to one thread: each of ours then runs its own share of a product (BLAS's threads inside ours would
    oversubscribe the cores: Winograd's 36 products on 2 cores, 1.7 ms became 8.0)."""
    global _threads
    numba.set_num_threads(n)
    _threads = n
    if n > 1:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")


def configure() -> None:
    """At import: as many threads as NUMBA_NUM_THREADS asks for, else one (a program that sized no pool gets the
    one-thread kernels, and its BLAS as it was)."""
    use(numba.config.NUMBA_NUM_THREADS if "NUMBA_NUM_THREADS" in os.environ else 1)


LINE = 16  # floats in a cache line


def padded(n: int) -> int:
    """A row length for each thread's copy of a buffer of n floats that the threads write: n rounded up to whole
    cache lines, plus one, so that no two copies share a line (two threads writing one line take turns for it:
    a 1152-channel 5×5 depthwise conv at 7², its accumulators adjacent, took 0.27 ms on two threads and 0.18
    on one)."""
    return -(-n // LINE) * LINE + LINE


@njit(cache=True, inline="always")
def block(n, t, nt):
    """[lo, hi): thread t's share of n items split into nt contiguous blocks."""
    return t * n // nt, (t + 1) * n // nt
