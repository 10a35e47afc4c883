"""Depthwise 3×3 and 5×5 convs at strides of 1 or 2 on channel-blocked maps (blocked.blocked: (C / 16, H, W, 16),
onnxruntime's NCHWc), their lanes along the channels.

On NCHW (rows.py) a depthwise conv reads each channel's rows in turn, and inside MobileNetV2 its expanded inputs come
from memory: its convs ran at 1.4-2.4× their time with the input in cache, where onnxruntime's, on NCHWc, did not.
Here a pixel's 16 channels are one vector: a strip of PIX output pixels of a row, each tap column of a kernel row
loaded once (masked off outside the image: the padding's zeros) and added into every pixel of the strip it serves,
the kernel's k·k weight vectors loaded once a strip. A map's channel block is one stream of whole pixels, which the
hardware prefetcher follows. The sums run in rows.py's order (the bias, then the taps row by row), so the results
equal its to the bit."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from . import vectors
from .blocked import blocked
from .derived import per_weights
from .threads import block
from .vectors import I64, LANES, VB, address, clamp, fma, inside, load, splat, store, vector
from .window import staging

PIX = 8  # output pixels a strip computes (8 sums and a kernel's 9 weights in registers; 25 for 5×5 reloaded)
SIZES, STRIDES = (3, 5), (1, 2)
# Output rows ahead whose inputs a strip at stride 2 prefetches (its last kernel row's columns, that far down): each
# input row is read by one or two output rows, so the map streams from memory. One thread, input just written by its
# expanding 1×1, ms, four runs: 144 at 128² → 64², 0.67-1.08 → 0.53-0.62; 96 at 256² → 128², 1.99-3.01 → 1.72-2.14;
# 144 at 56² → 28², 0.09-0.19 → 0.09-0.13. At stride 1 (each row read by three output rows) slower: 384 at 32²,
# 0.19 → 0.21-0.24; 192 at 64², 0.35-0.37 → 0.42-0.48.
AHEAD = 2


@intrinsic(prefer_literal=True)
def _strip(typingctx, k, s, out, x, rs, cols, rows, n, w, b, lo, hi):
    """For p < n ≤ PIX: out[16·p:16·p + 16] (addresses) = clamp(b + Σ w[16·(ky·k + kx):…+16] ·
    x[ky·rs + 16·(p·s + kx):…+16], lo, hi) over ky, kx < k (k, s constants): PIX output pixels of a row of a
    channel block, x the address of the pixel the first pixel's first tap reads, rows rs floats apart. A tap column
    t (p·s + kx) whose bit in `cols` is clear, or a kernel row ky whose bit in `rows` is clear, reads 0.0."""
    if not all(isinstance(t, types.IntegerLiteral) for t in (k, s)):
        raise TypeError(f"depthwise._strip: k and s must be compile-time constants, not {k}, {s}")
    sig = types.void(k, s, out, x, rs, cols, rows, n, w, b, lo, hi)
    k, s = k.literal_value, s.literal_value
    span = (PIX - 1) * s + k

    def codegen(context, builder, signature, args):
        out, x, rs, cols, rows, n, w, b = (context.cast(builder, a, t, types.int64)
                                           for a, t in zip(args[2:10], signature.args[2:10], strict=True))
        lo, hi = args[10:]
        weights = [vector(builder, builder.add(w, I64(4 * LANES * q))) for q in range(k * k)]
        accs = [vector(builder, b)] * PIX
        for ky in range(k):
            row_ok = builder.icmp_unsigned("!=", builder.and_(rows, I64(1 << ky)), I64(0))
            start = builder.add(x, builder.mul(rs, I64(4 * ky)))
            for t in range(span):
                ok = builder.and_(row_ok, builder.icmp_unsigned("!=", builder.and_(cols, I64(1 << t)), I64(0)))
                column = builder.add(start, I64(4 * LANES * t))
                v = load(builder, column, splat(builder, ok, VB), 0.0)
                if s == 2 and ky == k - 1:  # (the same column AHEAD output rows down: prefetched, never faulting)
                    vectors.prefetch(builder, builder.add(column, builder.mul(rs, I64(4 * AHEAD * s))))
                for p in range(PIX):
                    kx = t - p * s
                    if 0 <= kx < k:
                        accs[p] = fma(builder, weights[ky * k + kx], v, accs[p])
        for p, acc in enumerate(accs):
            keep = splat(builder, builder.icmp_signed("<", I64(p), n), VB)
            store(builder, clamp(builder, acc, lo, hi), builder.add(out, I64(4 * LANES * p)), keep)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, inline="always")
def _blocks(k, s, b0, b1, x, xbs, xrs, top, left, r_lo, r_hi, c_lo, c_hi, w, b, out, obs, ors, oh, ow, lo, hi):
    """Channel blocks [b0, b1) of a region oh × ow: output pixel (i, j) at out + i·ors + 16·j (floats; blocks obs
    apart) from the k×k taps starting at row top + i·s and column left + j·s of x (blocks xbs apart, rows xrs),
    whose rows and columns inside the image are [r_lo, r_hi) and [c_lo, c_hi); w packed (packed()), b padded."""
    for cb in range(b0, b1):
        wb, bb = w + 4 * cb * k * k * LANES, b + 4 * cb * LANES
        for i in range(oh):
            r = top + i * s
            rows = inside(r, k, r_lo, r_hi)
            for j0 in range(0, ow, PIX):
                n = min(PIX, ow - j0)
                c = left + j0 * s
                _strip(k, s, out + 4 * (cb * obs + i * ors + j0 * LANES), x + 4 * (cb * xbs + r * xrs + c * LANES),
                       xrs, inside(c, (n - 1) * s + k, c_lo, c_hi), rows, n, wb, bb, lo, hi)


@njit(cache=True)
def _work(k, s, b0, b1, x, xbs, xrs, top, left, r_lo, r_hi, c_lo, c_hi, w, b, out, obs, ors, oh, ow, lo, hi):
    """_blocks with k and s constants, one copy of its loops each."""
    if k == 3 and s == 1:
        _blocks(3, 1, b0, b1, x, xbs, xrs, top, left, r_lo, r_hi, c_lo, c_hi, w, b, out, obs, ors, oh, ow, lo, hi)
    elif k == 3:
        _blocks(3, 2, b0, b1, x, xbs, xrs, top, left, r_lo, r_hi, c_lo, c_hi, w, b, out, obs, ors, oh, ow, lo, hi)
    elif s == 1:
        _blocks(5, 1, b0, b1, x, xbs, xrs, top, left, r_lo, r_hi, c_lo, c_hi, w, b, out, obs, ors, oh, ow, lo, hi)
    else:
        _blocks(5, 2, b0, b1, x, xbs, xrs, top, left, r_lo, r_hi, c_lo, c_hi, w, b, out, obs, ors, oh, ow, lo, hi)


@njit(cache=True, parallel=True)
def _run(k, s, nb, x, xbs, xrs, top, left, r_lo, r_hi, c_lo, c_hi, w, b, out, obs, ors, oh, ow, lo, hi, nt):
    """_work on nt blocks of the nb channel blocks, one per thread."""
    for t in prange(nt):
        b0, b1 = block(nb, t, nt)
        _work(k, s, b0, b1, x, xbs, xrs, top, left, r_lo, r_hi, c_lo, c_hi, w, b, out, obs, ors, oh, ow, lo, hi)


def takes(w_shape: tuple[int, ...], groups: int, stride: tuple[int, int], dilation: tuple[int, int]) -> bool:
    """Whether launcher() computes this conv (on channel-blocked maps): on a vector host, a depthwise 3×3 or 5×5
    (one input channel a group, as many outputs) at equal strides of 1 or 2, no dilation, channels a multiple of 16."""
    cout, cin_g, kh, kw = w_shape
    return (vectors.ENABLED and cin_g == 1 and groups == cout and cout % LANES == 0 and kh == kw and kh in SIZES
            and stride[0] == stride[1] and stride[0] in STRIDES and tuple(dilation) == (1, 1))


@per_weights
def packed(w: np.ndarray) -> np.ndarray:
    """Depthwise weights (C, 1, k, k) as (C / 16, k, k, 16): a tap's 16 channels one vector."""
    c, _, kh, kw = w.shape
    return np.ascontiguousarray(np.asarray(w, np.float32).reshape(c // LANES, LANES, kh, kw).transpose(0, 2, 3, 1))


def launcher(x: np.ndarray, origin: tuple[int, int], in_hw: tuple[int, int], w: np.ndarray, b: np.ndarray,
             stride: tuple[int, int], pads: tuple[int, int, int, int], region: tuple[int, int, int, int],
             out: np.ndarray, lo: np.float32, hi: np.float32, nt: int) -> Callable[[np.ndarray, np.ndarray], None]:
    """launch(x, out): out = clamp(depthwise conv of output `region` from tile x + b, lo, hi), x and out
    channel-blocked (any views laid out as these; x holding the image's rows and columns from `origin` on), for a
    conv takes(). Its geometry and packed weights are worked out here, once. Raises if x lacks an input the region
    reads."""
    k, s = w.shape[2], stride[0]
    (oy, ox), (h, wd), (y0, x0, y1, x1) = origin, in_hw, region
    oh, ow = y1 - y0, x1 - x0
    if not (blocked(x) and blocked(out)) or out.shape != (w.shape[0] // LANES, oh, ow, LANES) or \
            x.shape[0] != out.shape[0]:
        raise ValueError(f"depthwise: a channel-blocked {x.shape} into {out.shape} for weights {w.shape}, region "
                         f"{region}")
    staging(x, origin, in_hw, (k, k), stride, pads, (1, 1), region)  # (raises if x lacks a row or column it reads)
    wp, bp = packed(w), np.ascontiguousarray(b, np.float32)
    geometry = (x.strides[0] // 4, x.strides[1] // 4, y0 * s - pads[0] - oy, x0 * s - pads[1] - ox, -oy, h - oy,
                -ox, wd - ox, address(wp), address(bp))
    obs, ors, nb = out.strides[0] // 4, out.strides[1] // 4, out.shape[0]
    nt = max(1, min(nt, nb))
    held = (wp, bp)

    if nt == 1:
        def launch(x: np.ndarray, out: np.ndarray, held: tuple = held) -> None:
            _work(k, s, 0, nb, address(x), *geometry, address(out), obs, ors, oh, ow, lo, hi)
    else:
        def launch(x: np.ndarray, out: np.ndarray, held: tuple = held) -> None:
            _run(k, s, nb, address(x), *geometry, address(out), obs, ors, oh, ow, lo, hi, nt)
    return launch
