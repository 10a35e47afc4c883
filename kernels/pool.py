"""Max / average pooling of an output region (direct Numba loops; square max pools by vector rows, rows.py);
global and adaptive average pooling."""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from . import rows
from .threads import block, count, padded
from .window import phase_buffers, phase_layout, split_phases, stage, staging, taps


def _pool_kernel(is_max: bool):
    """Max (is_max, a compile-time constant: a run-time choice inside the loop keeps it scalar) or average
    pooling over the phase planes of the slabs of a block of channels (window.phase_buffers, staging), as conv's
    _depthwise_planes but with no weights, so one loop per tap covers the whole block: tap t folds
    q[k, plane[t], offset[t] + n] into acc at channel k's n = i·width + j for every channel k at once (positions
    between channels are computed and dropped, as those past a row's end). Sums are then divided by
    div_r[i] × div_c[j]. (GoogLeNet's 3×3 stride-1 pools, 480-832 channels at 7²-14²: loops per channel ran
    4× slower.) The blocks split into a run of blocks per thread, each with its own buffers (ps[t], …)."""
    @njit(cache=True, error_model="numpy", parallel=True)  # (no test of each division for zero)
    def pool(x, copy, ps, q4s, qs, sh, sw, width, plane, offset, div_r, div_c, out, accs):
        nt, cb, oh, ow = ps.shape[0], ps.shape[1], out.shape[1], out.shape[2]
        rw = q4s.shape[3] * q4s.shape[4]
        span = q4s.shape[2] * rw  # one channel's planes in q and in acc
        m = (oh - 1) * width + ow
        blocks = -(-out.shape[0] // cb)
        for t in prange(nt):
            p, q4, q, acc = ps[t], q4s[t], qs[t], accs[t]
            b0, b1 = block(blocks, t, nt)
            for c0 in range(b0 * cb, min(out.shape[0], b1 * cb), cb):
                nk = min(cb, out.shape[0] - c0)
                for k in range(nk):
                    stage(x, c0 + k, copy, p, k)
                if sh > 1 or sw > 1:
                    split_phases(p, sh, sw, q4)
                # At stride 1 one loop spans the block; a strided pool's phase planes would make it 3/4 waste: a
                # loop per channel then.
                loops, n_loop = (1, (nk - 1) * span + m) if span == rw else (nk, m)
                for g in range(loops):
                    base = np.uint64(g * span)
                    for n in range(n_loop):
                        acc[base + np.uint64(n)] = -np.inf if is_max else 0.0
                    for tap in range(plane.size):
                        off = base + np.uint64(plane[tap] * rw + offset[tap])
                        for n in range(n_loop):  # (unsigned indices: see conv's _im2col)
                            un = np.uint64(n)
                            v, a = q[off + un], acc[base + un]
                            acc[base + un] = (v if v > a else a) if is_max else a + v  # (max: NaN as max())
                for k in range(nk):
                    for i in range(oh):
                        base = np.uint64(k * span + i * width)
                        for j in range(ow):
                            v = acc[base + np.uint64(j)]
                            out[c0 + k, i, j] = v if is_max else v / (div_r[i] * div_c[j])
    return pool


_POOL = {kind: _pool_kernel(kind == "max") for kind in ("max", "avg")}
BLOCK_BYTES = 256 << 10  # a block of channels' slabs, planes and sums: a quarter of a core's L2 here


def _divisor(o0: int, o1: int, k: int, s: int, d: int, pad0: int, pad1: int, n: int,
             with_pad: bool) -> np.ndarray:
    """Per-output count of window taps inside [0, n), or inside the padded extent [-pad0, n + pad1)."""
    pos = taps(o0, o1, k, s, d, pad0)
    lo, hi = (-pad0, n + pad1) if with_pad else (0, n)
    return ((pos >= lo) & (pos < hi)).sum(1).astype(np.float32)


def pool2d(x: np.ndarray, origin: tuple[int, int], in_hw: tuple[int, int], kind: str, kernel: tuple[int, int],
           stride: tuple[int, int], pads: tuple[int, int, int, int], dilation: tuple[int, int],
           region: tuple[int, int, int, int], count_include_pad: bool = False) -> np.ndarray:
    """Max or average pooling (ONNX semantics, ceil-mode windows included) of output `region` from tile x.

    An empty region returns an empty (C, rows, cols) array without reading x. A max window with no
    in-image tap gives -inf (ONNX forbids pads >= kernel, which is the only way to get one).
    """
    if kind not in ("max", "avg"):
        raise ValueError(f"pool kind must be 'max' or 'avg', not {kind!r}")
    y0, x0, y1, x1 = region
    out = np.empty((x.shape[0], max(0, y1 - y0), max(0, x1 - x0)), np.float32)
    if out.size == 0:
        return out
    is_max = kind == "max"
    if is_max and rows.pools(kernel, stride, dilation, x):
        rows.pool(x, origin, in_hw, kernel, stride, pads, region, out, count())  # (raises if x lacks an input)
        return out
    div = [_divisor(a, b, kernel[ax], stride[ax], dilation[ax], pads[ax], pads[ax + 2], in_hw[ax],
                    count_include_pad) for ax, a, b in ((0, y0, y1), (1, x0, x1))]
    height, width, plane, offset = phase_layout(kernel, stride, dilation, out.shape[1:])
    span = stride[0] * stride[1] * height * width
    slab_hw, copy = staging(x, origin, in_hw, kernel, stride, pads, dilation, region)
    slab = slab_hw[0] * slab_hw[1]
    cb = min(x.shape[0], max(1, BLOCK_BYTES // (4 * (slab + 2 * span))))  # slabs, planes and sums of a block
    nt = min(count(), -(-x.shape[0] // cb))
    p, q4, q = phase_buffers(slab_hw, -np.inf if is_max else 0.0, stride, height, width, cb, 0, nt)
    _POOL[kind](x, copy, p, q4, q, *stride, width, plane, offset, *div, out,
                np.empty((nt, padded(q4[0].size)), np.float32))
    return out


@njit(cache=True, fastmath={"reassoc"}, parallel=True)
def _channel_sums(x, out, n):
    """out[c] = the float64 sum of channel c of x, divided by n, stored as out's type."""
    for c in prange(x.shape[0]):
        s = 0.0
        for i in range(x.shape[1]):
            for j in range(x.shape[2]):
                s += np.float64(x[c, i, j])
        out[c] = s / n


def _rows(x: np.ndarray) -> np.ndarray:
    """x (C, H, W) float32 as _channel_sums reads it: a C-contiguous map as one row a channel (7×7 maps get long
    loops too)."""
    x = np.asarray(x, np.float32)
    return x.reshape(x.shape[0], 1, -1) if x.flags.c_contiguous else x


def channel_sums(x: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (C,) float64 sums. Reassociation lets LLVM keep vectors of partial sums: numpy's float64
    mean of float32 converted every value first (twice this loop's time), and float64 adds in order are one long
    dependency chain."""
    out = np.empty(x.shape[0], np.float64)
    _channel_sums(_rows(x), out, 1)
    return out


def global_avgpool(x: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (C, 1, 1) mean, accumulated in float64 and rounded once, in one call: inside MobileNetV2 the
    numpy steps after the sums (a division, a cast) took 38-47 µs of the node's 80-100 (its caches just swept by
    the conv before), the sums 34-46."""
    out = np.empty((x.shape[0], 1, 1), np.float32)
    _channel_sums(_rows(x), out.reshape(-1), x.shape[1] * x.shape[2])
    return out


def global_maxpool(x: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (C, 1, 1) maximum."""
    return x.max(axis=(1, 2), keepdims=True).astype(np.float32)


def adaptive_avgpool(x: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """PyTorch AdaptiveAvgPool2d: cell i averages [floor(i*H/oh), ceil((i+1)*H/oh)) (same for columns)."""
    (h, w), (oh, ow) = x.shape[1:], out_hw
    out = np.empty((x.shape[0], oh, ow), np.float32)
    for i in range(oh):
        for j in range(ow):
            cell = x[:, i * h // oh:math.ceil((i + 1) * h / oh), j * w // ow:math.ceil((j + 1) * w / ow)]
            out[:, i, j] = cell.mean(axis=(1, 2), dtype=np.float64)
    return out
