"""3×3 stride-1 convolution by Winograd's minimal filtering F(4×4, 3×3) (Lavin & Gray, arXiv 1509.09308), the
way NNPACK ran it on the Raspberry Pis of DeepThings: each 6×6 input tile and each 3×3 filter is transformed,
the 36 transformed positions are 36 channel GEMMs in BLAS (2.25× fewer multiplies than im2col at 4×4 outputs
per tile, 4× with the transforms amortised), and each product is transformed back to a 4×4 output tile.

The input and output transforms run in Numba; the filter transform is computed once per weight array and kept
(4× the 3×3 weights' memory). Error: a few float32 ulps more than the direct product (the transforms' ±1/±2/±4
coefficients; tests hold it to the suite's tolerance).
"""

from __future__ import annotations

import weakref

import numpy as np
from numba import njit

from .pointwise import act1

TILE_BYTES = 8 << 20  # transformed input of one chunk of tile rows (im2col's column budget likewise)

# G: filter transform (6×3); BT, AT (in the transforms below, written out): input (6×6) and output (4×6).
_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
               [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
_cache: dict[int, tuple[weakref.ref, np.ndarray]] = {}


def filter_transform(w: np.ndarray) -> np.ndarray:
    """U (36, Cout, Cin) = G·w·Gᵀ per filter, computed in float64; cached for as long as w lives."""
    hit = _cache.get(id(w))
    if hit is not None and hit[0]() is w:
        return hit[1]
    u = np.einsum("ai,kcij,bj->abkc", _G, w.astype(np.float64), _G).reshape(36, *w.shape[:2])
    u = np.ascontiguousarray(u, np.float32)
    key = id(w)
    _cache[key] = (weakref.ref(w, lambda _, key=key: _cache.pop(key, None)), u)
    return u


_2, _4, _5, _8 = np.float32(2), np.float32(4), np.float32(5), np.float32(8)  # (an int would promote to float64)


@njit(cache=True, inline="always")
def _bt(d0, d1, d2, d3, d4, d5):
    """Bᵀ·d for one column (or row) of a 6×6 tile."""
    return (_4 * d0 - _5 * d2 + d4, d3 + d4 - _4 * (d1 + d2), _4 * (d1 - d2) - d3 + d4,
            _2 * (d3 - d1) - d2 + d4, _2 * (d1 - d3) - d2 + d4, _4 * d1 - _5 * d3 + d5)


@njit(cache=True, inline="always")
def _at(m0, m1, m2, m3, m4, m5):
    """Aᵀ·m for one column (or row) of a 6×6 product."""
    return m0 + m1 + m2 + m3 + m4, m1 - m2 + _2 * (m3 - m4), m1 + m2 + _4 * (m3 + m4), m1 - m2 + _8 * (m3 - m4) + m5


@njit(cache=True)
def _inputs(p, t0, t1, tw, v):
    """v[a*6+b, c, n] = (Bᵀ·d·B)[a, b] of the 6×6 tile d of channel c at tile row t0 + n // tw, column n % tw.

    A whole tile row at a time, tiles innermost, so that writes are contiguous (36 streams of tile-by-tile
    writes were 3× slower than the direct conv); its six input rows are first split into their four column
    phases (x = 4u + phase), so that the transform's loads are contiguous too."""
    t = np.empty((6, 6, tw), np.float32)
    q = np.empty((6, 4, tw + 1), np.float32)
    for c in range(p.shape[0]):
        for ty in range(t0, t1):
            y, n0 = 4 * ty, (ty - t0) * tw
            for r in range(6):
                for u in range(tw):
                    q[r, 0, u], q[r, 1, u] = p[c, y + r, 4 * u], p[c, y + r, 4 * u + 1]
                    q[r, 2, u], q[r, 3, u] = p[c, y + r, 4 * u + 2], p[c, y + r, 4 * u + 3]
                q[r, 0, tw], q[r, 1, tw] = p[c, y + r, 4 * tw], p[c, y + r, 4 * tw + 1]
            for j in range(6):  # columns: Bᵀ·d
                ph, o = j % 4, j // 4
                for tx in range(tw):
                    t[0, j, tx], t[1, j, tx], t[2, j, tx], t[3, j, tx], t[4, j, tx], t[5, j, tx] = _bt(
                        q[0, ph, tx + o], q[1, ph, tx + o], q[2, ph, tx + o], q[3, ph, tx + o], q[4, ph, tx + o],
                        q[5, ph, tx + o])
            for i in range(6):  # rows: (Bᵀ·d)·B
                for tx in range(tw):
                    r0, r1, r2, r3, r4, r5 = _bt(t[i, 0, tx], t[i, 1, tx], t[i, 2, tx], t[i, 3, tx], t[i, 4, tx],
                                                 t[i, 5, tx])
                    v[6 * i, c, n0 + tx], v[6 * i + 1, c, n0 + tx], v[6 * i + 2, c, n0 + tx] = r0, r1, r2
                    v[6 * i + 3, c, n0 + tx], v[6 * i + 4, c, n0 + tx], v[6 * i + 5, c, n0 + tx] = r3, r4, r5


@njit(cache=True)
def _outputs(m, t0, t1, tw, b, out, code, alpha, lo, hi):
    """out[k, 4ty:4ty+4, 4tx:4tx+4] = act(Aᵀ·m·A + b[k]) for the chunk's tiles, clipped to out's extent; a
    tile row at a time, tiles innermost, like _inputs."""
    oh, ow = out.shape[1], out.shape[2]
    t = np.empty((4, 6, tw), np.float32)
    for k in range(m.shape[1]):
        for ty in range(t0, t1):
            n0 = (ty - t0) * tw
            for j in range(6):  # columns: Aᵀ·m
                for tx in range(tw):
                    n = n0 + tx
                    t[0, j, tx], t[1, j, tx], t[2, j, tx], t[3, j, tx] = _at(
                        m[j, k, n], m[6 + j, k, n], m[12 + j, k, n], m[18 + j, k, n], m[24 + j, k, n], m[30 + j, k, n])
            for i in range(min(4, oh - 4 * ty)):  # rows: (Aᵀ·m)·A
                row = out[k, 4 * ty + i]
                for tx in range(tw):
                    r0, r1, r2, r3 = _at(t[i, 0, tx], t[i, 1, tx], t[i, 2, tx], t[i, 3, tx], t[i, 4, tx], t[i, 5, tx])
                    x = 4 * tx
                    if x + 3 < ow:
                        row[x], row[x + 1], row[x + 2], row[x + 3] = r0 + b[k], r1 + b[k], r2 + b[k], r3 + b[k]
                    else:  # the last, partial tile
                        rs = (r0, r1, r2, r3)
                        for q in range(ow - x):
                            row[x + q] = rs[q] + b[k]
                if code:
                    for x in range(ow):
                        row[x] = act1(row[x], code, alpha, lo, hi)


def conv3x3(p: np.ndarray, w: np.ndarray, b: np.ndarray, out: np.ndarray, code: int, alpha, lo, hi) -> None:
    """out (Cout, oh, ow) = act(valid 3×3 conv of slab p (Cin, oh + 2, ow + 2) with w + b), in chunks of tile
    rows whose transformed input fits TILE_BYTES."""
    cin, (oh, ow) = p.shape[0], out.shape[1:]
    th, tw = -(-oh // 4), -(-ow // 4)
    if p.shape[1:] != (4 * th + 2, 4 * tw + 2):  # whole tiles: zeros below and right (their outputs are dropped)
        grown = np.zeros((cin, 4 * th + 2, 4 * tw + 2), np.float32)
        grown[:, :p.shape[1], :p.shape[2]] = p
        p = grown
    u = filter_transform(w)
    step = max(1, min(th, TILE_BYTES // (36 * 4 * cin * tw)))
    for t0 in range(0, th, step):
        t1 = min(th, t0 + step)
        v = np.empty((36, cin, (t1 - t0) * tw), np.float32)
        _inputs(p, t0, t1, tw, v)
        _outputs(np.matmul(u, v), t0, t1, tw, b, out, code, alpha, lo, hi)
