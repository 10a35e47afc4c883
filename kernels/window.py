"""Input windows for spatial kernels: turn a tile's input buffer into the padded slab a region reads."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .derived import per_arguments
from .threads import block, count


def taps(o0: int, o1: int, k: int, s: int, d: int, p: int) -> np.ndarray:
    """Input positions (o1-o0, k) read along one axis by outputs [o0, o1): o*s - p + t*d."""
    return (np.arange(o0, o1) * s - p)[:, None] + np.arange(k) * d


def _inside(o0: int, o1: int, k: int, s: int, d: int, p: int, n: int) -> tuple[int, int] | None:
    """[lo, hi) spanned by the in-image positions [0, n) among those read by outputs [o0, o1), or None.

    Integer arithmetic per tap, not taps(): this runs for every region of every conv and pool, and the numpy
    version cost 6 µs a call (15 µs of a conv's 18 µs on MobileNetV2's small maps)."""
    lo = hi = None
    for t in range(k):
        off = t * d - p
        a, z = max(o0, -(off // s)), min(o1 - 1, (n - 1 - off) // s)  # outputs whose tap t lands inside
        if a <= z:
            lo = a * s + off if lo is None else min(lo, a * s + off)
            hi = z * s + off + 1 if hi is None else max(hi, z * s + off + 1)
    return None if lo is None else (lo, hi)


def _span(o0: int, o1: int, k: int, s: int, d: int, p: int, n: int, origin: int, size: int,
          axis: str) -> tuple[int, int]:
    """Unclipped input span [lo, hi) read by outputs [o0, o1); raise if the buffer lacks an in-image read."""
    inside = _inside(o0, o1, k, s, d, p, n) if o1 > o0 else None
    if inside is not None:
        lo, hi = inside
        if lo < origin or hi > origin + size:
            a, b = (lo, min(hi, origin)) if lo < origin else (max(lo, origin + size), hi)
            raise ValueError(f"input {axis} [{lo}, {hi}) are read but the buffer holds {axis} "
                             f"[{origin}, {origin + size}): missing {axis} [{a}, {b})")
    return o0 * s - p, (o1 - 1) * s - p + (k - 1) * d + 1


def pad2d(x: np.ndarray, origin: tuple[int, int], in_hw: tuple[int, int], pads: tuple[int, int, int, int],
          value: float, region: tuple[int, int, int, int]) -> np.ndarray:
    """Output region of a constant padding of H and W (ONNX Pad): the input, `value` outside the image."""
    return np.ascontiguousarray(window(x, origin, in_hw, (1, 1), (1, 1), pads, (1, 1), region, value))


def window(x: np.ndarray, origin: tuple[int, int], in_hw: tuple[int, int], kernel: tuple[int, int],
           stride: tuple[int, int], pads: tuple[int, int, int, int], dilation: tuple[int, int],
           region: tuple[int, int, int, int], fill: float) -> np.ndarray:
    """Input slab (C, rows, cols) that `region` reads, out-of-image positions set to `fill`.

    A view of `x` when the slab lies inside both image and buffer, else a filled copy; the region's output
    is then a plain unpadded ("valid") window op over the slab. x channel-blocked, (C / 16, H, W, 16): so is the
    slab.
    """
    slab_hw, copy = staging(x, origin, in_hw, kernel, stride, pads, dilation, region)
    ya, yb, xa, xb, dy, dx = copy
    if (dy, dx, yb - ya, xb - xa) == (0, 0, *slab_hw):  # (the copy is the whole slab)
        return x[:, ya:yb, xa:xb]
    if x.ndim == 4:
        slab = np.full((x.shape[0], *slab_hw, x.shape[3]), fill, np.float32)
        slab[:, dy:dy + yb - ya, dx:dx + xb - xa] = x[:, ya:yb, xa:xb]
        return slab
    slab = np.empty((x.shape[0], *slab_hw), np.float32)
    _fill(x, copy, slab, np.float32(fill), min(count(), x.shape[0]))
    return slab


@njit(cache=True, parallel=True)
def _fill(x, copy, slab, fill, nt):
    """slab[c] = channel c of x staged by `copy` (staging()), `fill` around it, for nt blocks of channels, one per
    thread. One pass: the frame is filled row by row beside the copy (numpy's five slice assignments cost twice a
    plain copy of the map at 7²-56², on one thread)."""
    for t in prange(nt):
        c0, c1 = block(x.shape[0], t, nt)
        _fill_block(x, c0, c1, copy, slab, fill)


@njit(cache=True)
def _fill_block(x, c0, c1, copy, slab, fill):
    """_fill for channels [c0, c1)."""
    ya, yb, xa, xb, dy, dx = copy
    rows, cols = slab.shape[1], slab.shape[2]
    for c in range(c0, c1):
        for r in range(rows):
            inside = dy <= r < dy + yb - ya
            for j in range(dx if inside else cols):
                slab[c, r, j] = fill
            if inside:
                for j in range(dx + xb - xa, cols):
                    slab[c, r, j] = fill
        stage(x, c, copy, slab, c)


def staging(x: np.ndarray, origin: tuple[int, int], in_hw: tuple[int, int], kernel: tuple[int, int],
            stride: tuple[int, int], pads: tuple[int, int, int, int], dilation: tuple[int, int],
            region: tuple[int, int, int, int]) -> tuple[tuple[int, int], tuple[int, ...]]:
    """window() a channel at a time, for the kernels that stream through channels (depthwise, pooling): the size
    (rows, cols) of a slab (its caller's buffer, filled with the window's fill value) and the copy
    (ya, yb, xa, xb, dy, dx) by which stage() puts a channel of x into it (x[c, ya:yb, xa:xb] to p[k, dy:, dx:]; the
    frame is never overwritten). The slab then stays in L1/L2 between its copy and its reads: a whole-map slab
    costs a pass over memory each way (96 channels at 112²: 0.37 ms, twice the depthwise conv that reads it)."""
    return _staging(x.shape[1:3], origin, in_hw, kernel, stride, pads, dilation, region)


@per_arguments
def _staging(buffer_hw: tuple[int, int], origin: tuple[int, int], in_hw: tuple[int, int], kernel: tuple[int, int],
             stride: tuple[int, int], pads: tuple[int, int, int, int], dilation: tuple[int, int],
             region: tuple[int, int, int, int]) -> tuple[tuple[int, int], tuple[int, ...]]:
    """staging() for a buffer of buffer_hw: the slab spans (r0, r1, c0, c1) of the image, its part inside both
    image and buffer is (ya, yb, xa, xb) (empty: a copy of nothing). Cached: every inference asks for the same few
    hundred windows, and working one out took 4 µs, a quarter of a small conv's set-up."""
    y0, x0, y1, x1 = region
    (oy, ox), (h, w), (bh, bw) = origin, in_hw, buffer_hw
    r0, r1 = _span(y0, y1, kernel[0], stride[0], dilation[0], pads[0], h, oy, bh, "rows")
    c0, c1 = _span(x0, x1, kernel[1], stride[1], dilation[1], pads[1], w, ox, bw, "cols")
    ya, xa = max(r0, 0, oy), max(c0, 0, ox)
    yb, xb = max(ya, min(r1, h, oy + bh)), max(xa, min(c1, w, ox + bw))
    return (r1 - r0, c1 - c0), (ya - oy, yb - oy, xa - ox, xb - ox, ya - r0, xa - c0)


@njit(cache=True, inline="always")
def stage(x, c, copy, p, k):
    """Channel c of x into slab k of p (staging())."""
    ya, yb, xa, xb, dy, dx = copy
    for i in range(yb - ya):
        s, d = np.uint64(ya + i), np.uint64(dy + i)
        for j in range(xb - xa):  # (unsigned indices: see conv's _im2col)
            p[k, d, np.uint64(dx + j)] = x[c, s, np.uint64(xa + j)]


@per_arguments  # (its arrays are shared by every caller: read, never written)
def phase_layout(kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
                 out_hw: tuple[int, int]) -> tuple[int, int, np.ndarray, np.ndarray]:
    """A valid window op of stride s over a slab as a stride-1 one over the slab's s×s phase planes (phase_buffers),
    flattened: (rows, width, plane, offset), where tap t = ky·kw + kx of output (i, j) reads plane plane[t] at
    offset[t] + i·width + j. One long loop per tap then covers every output of a channel (a loop per output row
    and tap is too short to vectorise on 7²-28² maps); the values computed past an output row's end read past the
    plane's data and are dropped."""
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dilation, out_hw
    rows, width = oh + (kh - 1) * dh // sh, ow + (kw - 1) * dw // sw
    ky, kx = np.divmod(np.arange(kh * kw), kw)
    return rows, width, (ky * dh % sh) * sw + kx * dw % sw, (ky * dh // sh) * width + kx * dw // sw


def phase_buffers(slab_hw: tuple[int, int], fill: float, stride: tuple[int, int], rows: int, width: int,
                  channels: int, tail: int, copies: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`copies` sets (one per thread, threads.py) of buffers for `channels` slabs of slab_hw filled with `fill`
    (staging()) and their phase planes (phase_layout): (slabs, q4, qf), qf the planes flat with `tail` zeros after
    them, q4 its (channels, sh·sw, rows, width) view, each with a leading axis of copies. At stride 1 the planes are
    the slabs themselves (staged straight into qf); else split_phases(slabs, sh, sw, q4) fills the planes."""
    size = channels * stride[0] * stride[1] * rows * width
    qf = np.zeros((copies, size + tail), np.float32)
    q4 = qf[:, :size].reshape(copies, channels, stride[0] * stride[1], rows, width)  # (views: the rows split)
    if stride != (1, 1):
        return np.full((copies, channels, *slab_hw), fill, np.float32), q4, qf
    slabs = qf[:, :size].reshape(copies, channels, *slab_hw)
    slabs[:] = fill
    return slabs, q4, qf


@njit(cache=True, inline="always")
def split_phases(p, sh, sw, q):
    """q[c, a·sw + b, r, u] = p[c, r·sh + a, u·sw + b] where that lies inside p (the rest is left as it is).
    Column stride 2 has its own loop, both phases at once: with the stride a constant LLVM vectorises the
    de-interleaving (numpy's strided copies took 1.2 ms for a 64-channel 224² map, 3× the pooling after them)."""
    rows, cols = p.shape[1], p.shape[2]
    width = q.shape[3]
    u1, u2, usw = np.uint64(1), np.uint64(2), np.uint64(sw)
    for c in range(p.shape[0]):
        for a in range(sh):
            for r in range(min(q.shape[2], (rows - a + sh - 1) // sh)):
                y = np.uint64(r * sh + a)
                if sw == 2:
                    pairs = min(width, cols // 2)
                    for u in range(pairs):
                        x = u2 * np.uint64(u)
                        q[c, a * 2, r, u], q[c, a * 2 + 1, r, u] = p[c, y, x], p[c, y, x + u1]
                    if pairs < width and 2 * pairs < cols:  # an odd row's last (even) column
                        q[c, a * 2, r, pairs] = p[c, y, 2 * pairs]
                    continue
                for b in range(sw):
                    ub = np.uint64(b)
                    for u in range(min(width, (cols - b + sw - 1) // sw)):
                        q[c, a * sw + b, r, u] = p[c, y, usw * np.uint64(u) + ub]
