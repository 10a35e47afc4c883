"""Map buffers whose channel planes never lie a multiple of 4 KiB apart: a spare row after each plane where one helps.

An h×w float32 plane of 64², 128² or 256² (a 512² or 1024² image's maps) is a multiple of 4 KiB, so every channel's
pixel (y, x) has the same address modulo 4 KiB. A 1×1 conv reads 16-192 channels at one pixel and writes as many:
the loads fall in one set of the L1 cache, and each load waits on the stores whose low 12 address bits it shares
(4K aliasing). MobileNetV2's 32→16 1×1 at 256², into a buffer alike: 1.17 ms, 0.75 with a spare row; its 16→96,
2.35 → 2.22; 32→192 at 64², 0.73 → 0.55 (docs/BENCHMARKS.md, "planes off 4 KiB strides"). Rows of the map stay
back to back, so a 1×1 still runs over the whole map as one run; the buffer is C-contiguous, so kernels given it
whole (a tile buffer and its origin) keep their fast compiled layout.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

ALIAS = 4096  # bytes: addresses this far apart share a cache set and their low bits (Zen 4, Cortex-A72/A76 alike)


def spare_rows(h: int, w: int, itemsize: int = 4) -> int:
    """Rows to allocate after each h×w plane so that planes do not lie a multiple of ALIAS bytes apart: 1 where
    they would, 0 where they do not, or where rows are themselves a multiple of ALIAS long (no row count helps)."""
    row = w * itemsize
    return int(h * row % ALIAS == 0 and row % ALIAS != 0)


def buffer_shape(c: int, h: int, w: int) -> tuple[int, int, int]:
    """The shape of the buffer that keeps a (c, h, w) map: its spare_rows after each plane."""
    return c, h + spare_rows(h, w), w


def empty(c: int, h: int, w: int) -> np.ndarray:
    """An uninitialised (c, h, w) float32 map, a view of the top rows of a C-contiguous buffer_shape buffer."""
    return np.empty(buffer_shape(c, h, w), np.float32)[:, :h]


def whole(a: np.ndarray) -> np.ndarray | None:
    """The C-contiguous float32 array whose planes' top rows a (C, H, W) is (a itself where it is C-contiguous),
    or None where a is no such view. For the kernels that index their output: given a view, Numba compiles them
    for any strides, and their loops no longer vectorise (a depthwise conv writing a view: 1.1-1.4× slower). They
    write the top rows alone: the rows past a's own are never touched (for a's last plane, they may lie past it)."""
    c, h, w = a.shape
    if a.dtype != np.float32:
        return None
    if a.flags.c_contiguous:
        return a
    if a.strides[2] != 4 or a.strides[1] != 4 * w or a.strides[0] % a.strides[1] or a.strides[0] < 4 * h * w:
        return None
    return as_strided(a, (c, a.strides[0] // a.strides[1], w), (a.strides[0], a.strides[1], 4))


def planes(a: np.ndarray) -> tuple[np.ndarray, int] | None:
    """a (C, …) as a C-contiguous (C, pitch) array whose rows start with a's C planes of n values each, and n: for
    a C-contiguous a, or a map that is the top rows of a buffer's planes (whole); else None."""
    b = a if a.flags.c_contiguous else whole(a) if a.ndim == 3 else None
    return None if b is None else (b.reshape(b.shape[0], -1), a[0].size)
