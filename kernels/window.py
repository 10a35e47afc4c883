"""Input windows for spatial kernels: turn a tile's input buffer into the padded slab a region reads."""

from __future__ import annotations

import numpy as np


def taps(o0: int, o1: int, k: int, s: int, d: int, p: int) -> np.ndarray:
    """Input positions (o1-o0, k) read along one axis by outputs [o0, o1): o*s - p + t*d."""
    return (np.arange(o0, o1) * s - p)[:, None] + np.arange(k) * d


def _span(o0: int, o1: int, k: int, s: int, d: int, p: int, n: int, origin: int, size: int,
          axis: str) -> tuple[int, int]:
    """Unclipped input span [lo, hi) read by outputs [o0, o1); raise if the buffer lacks an in-image read."""
    pos = taps(o0, o1, k, s, d, p)
    inside = pos[(pos >= 0) & (pos < n)]
    if inside.size:
        lo, hi = int(inside.min()), int(inside.max()) + 1
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
    is then a plain unpadded ("valid") window op over the slab.
    """
    y0, x0, y1, x1 = region
    (oy, ox), (h, w), (bh, bw) = origin, in_hw, x.shape[1:]
    r0, r1 = _span(y0, y1, kernel[0], stride[0], dilation[0], pads[0], h, oy, bh, "rows")
    c0, c1 = _span(x0, x1, kernel[1], stride[1], dilation[1], pads[1], w, ox, bw, "cols")
    if max(0, oy) <= r0 and r1 <= min(h, oy + bh) and max(0, ox) <= c0 and c1 <= min(w, ox + bw):
        return x[:, r0 - oy:r1 - oy, c0 - ox:c1 - ox]
    slab = np.full((x.shape[0], r1 - r0, c1 - c0), fill, np.float32)
    ya, yb = max(r0, 0, oy), min(r1, h, oy + bh)
    xa, xb = max(c0, 0, ox), min(c1, w, ox + bw)
    # Positions outside the buffer but inside the slab are never read (checked above), so fill is fine.
    if ya < yb and xa < xb:
        slab[:, ya - r0:yb - r0, xa - c0:xb - c0] = x[:, ya - oy:yb - oy, xa - ox:xb - ox]
    return slab
