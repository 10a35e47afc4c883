"""3×3 stride-1 convolution by Winograd's minimal filtering F(4×4, 3×3) (Lavin & Gray, arXiv 1509.09308), the
way NNPACK ran it on the Raspberry Pis of DeepThings: each 6×6 input tile and each 3×3 filter is transformed,
the 36 transformed positions are 36 channel GEMMs in BLAS (2.25× fewer multiplies than im2col at 4×4 outputs
per tile, 4× with the transforms amortised), and each product is transformed back to a 4×4 output tile.

The input and output transforms run in Numba; the filter transform is computed once per weight array and kept
(4× the 3×3 weights' memory). Error: a few float32 ulps more than the direct product (the transforms' ±1/±2/±4
coefficients; tests hold it to the suite's tolerance).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import blas
from .derived import per_weights
from .pointwise import act1
from .threads import block, count

TILE_BYTES = 8 << 20  # transformed input (or output) of one chunk of tile rows

# G: filter transform (6×3); BT, AT (in the transforms below, written out): input (6×6) and output (4×6).
_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
               [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])


@per_weights
def filter_transform(w: np.ndarray) -> np.ndarray:
    """U (36, Cout, Cin) = G·w·Gᵀ per filter, computed in float64; cached for as long as w lives."""
    u = np.einsum("ai,kcij,bj->abkc", _G, w.astype(np.float64), _G).reshape(36, *w.shape[:2])
    return np.ascontiguousarray(u, np.float32)


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
def _split_block(p, c0, c1, th, tw, q):
    """q[c, r, k, ty*tw + u] = p[c, 4ty + r, 4u + k] for r < 4, k < 6, ty ≤ th, u < tw (zero past p's edge).

    Tile (ty, u) reads its 6×6 input d[r][k] = q[c, r % 4, k, g + (r // 4)·tw] at g = ty·tw + u: every tile of a
    chunk is then one index g, and the transforms run as long unit-stride loops over g (a loop over one tile
    row's tiles was too short to vectorise on 7²-56² maps; the transforms took twice the GEMMs' time)."""
    rows, cols = p.shape[1], p.shape[2]
    full = min(tw, max(0, (cols - 2) // 4))  # u whose six columns 4u..4u+5 all lie inside p
    u1, u2, u3, u4, u5 = np.uint64(1), np.uint64(2), np.uint64(3), np.uint64(4), np.uint64(5)
    for c in range(c0, c1):
        for ty in range(th + 1):
            g0 = np.uint64(ty * tw)
            for r in range(4):
                y = 4 * ty + r
                if y >= rows:
                    for k in range(6):
                        for u in range(tw):
                            q[c, r, k, g0 + np.uint64(u)] = 0.0
                    continue
                for u in range(full):  # (unsigned indices: no negative-index fix-up, as in conv's _im2col)
                    x, g = u4 * np.uint64(u), g0 + np.uint64(u)
                    q[c, r, 0, g], q[c, r, 1, g], q[c, r, 2, g] = p[c, y, x], p[c, y, x + u1], p[c, y, x + u2]
                    q[c, r, 3, g], q[c, r, 4, g], q[c, r, 5, g] = p[c, y, x + u3], p[c, y, x + u4], p[c, y, x + u5]
                for u in range(full, tw):
                    for k in range(6):
                        x = 4 * u + k
                        q[c, r, k, g0 + np.uint64(u)] = p[c, y, x] if x < cols else np.float32(0.0)


@njit(cache=True, parallel=True)
def _split(p, th, tw, q, nt):
    """_split_block on nt blocks of channels, one per thread."""
    for t in prange(nt):
        c0, c1 = block(p.shape[0], t, nt)
        _split_block(p, c0, c1, th, tw, q)


@njit(cache=True, parallel=True)
def _inputs(q, tw, g0, g1, es, v):
    """v[c, 6a+b, g - g0] = (Bᵀ·d·B)[a, b] for the tiles g0 ≤ g < g1 of q (see _split); es[t] is thread t's
    scratch (threads.block)."""
    for t in prange(es.shape[0]):
        c0, c1 = block(q.shape[0], t, es.shape[0])
        _inputs_block(q, c0, c1, tw, g0, g1 - g0, es[t], v)


@njit(cache=True)
def _inputs_block(q, c0, c1, tw, g0, n, e, v):
    """_inputs for input channels [c0, c1)."""
    for c in range(c0, c1):
        for r in range(6):  # Bᵀ along each of the tile's rows
            rp, ro = r % 4, np.uint64((r // 4) * tw + g0)
            for j in range(n):
                s = ro + np.uint64(j)
                e[r, 0, j], e[r, 1, j], e[r, 2, j], e[r, 3, j], e[r, 4, j], e[r, 5, j] = _bt(
                    q[c, rp, 0, s], q[c, rp, 1, s], q[c, rp, 2, s], q[c, rp, 3, s], q[c, rp, 4, s], q[c, rp, 5, s])
        for b in range(6):  # then down each column
            for j in range(n):
                v[c, b, j], v[c, 6 + b, j], v[c, 12 + b, j], v[c, 18 + b, j], v[c, 24 + b, j], v[c, 30 + b, j] = _bt(
                    e[0, b, j], e[1, b, j], e[2, b, j], e[3, b, j], e[4, b, j], e[5, b, j])


@njit(cache=True, parallel=True)
def _outputs(m, t0, t1, tw, b, fs, out, oh, code, alpha, lo, hi):
    """out[k, 4ty:4ty+4, 4u:4u+4] = act(Aᵀ·M·A + b[k]) for tile rows [t0, t1), clipped to out's top oh rows and its
    columns, with M[a][c] = m[k, 6a+c, (ty - t0)·tw + u]; fs[t] is thread t's scratch."""
    n = (t1 - t0) * tw
    for t in prange(fs.shape[0]):
        k0, k1 = block(m.shape[0], t, fs.shape[0])
        _outputs_block(m, k0, k1, n, t0, t1, tw, b, fs[t], out, oh, code, alpha, lo, hi)


@njit(cache=True)
def _outputs_block(m, k0, k1, n, t0, t1, tw, b, f, out, oh, code, alpha, lo, hi):
    """_outputs for output channels [k0, k1)."""
    ow = out.shape[2]
    full = ow // 4  # tiles whose 4 columns all lie inside out
    u1, u2, u3, u4 = np.uint64(1), np.uint64(2), np.uint64(3), np.uint64(4)
    for k in range(k0, k1):
        bk = b[k]
        for c in range(6):  # Aᵀ down each column, over all tiles
            for j in range(n):
                f[0, c, j], f[1, c, j], f[2, c, j], f[3, c, j] = _at(
                    m[k, c, j], m[k, 6 + c, j], m[k, 12 + c, j], m[k, 18 + c, j], m[k, 24 + c, j], m[k, 30 + c, j])
        for ty in range(t0, t1):  # then along each row, with the epilogue, into out's rows
            j0 = np.uint64((ty - t0) * tw)
            for i in range(min(4, oh - 4 * ty)):
                y = np.uint64(4 * ty + i)
                for u in range(full):
                    x, j = u4 * np.uint64(u), j0 + np.uint64(u)
                    r0, r1, r2, r3 = _at(f[i, 0, j], f[i, 1, j], f[i, 2, j], f[i, 3, j], f[i, 4, j], f[i, 5, j])
                    out[k, y, x], out[k, y, x + u1] = act1(r0 + bk, code, alpha, lo, hi), act1(r1 + bk, code, alpha,
                                                                                             lo, hi)
                    out[k, y, x + u2], out[k, y, x + u3] = act1(r2 + bk, code, alpha, lo, hi), act1(r3 + bk, code,
                                                                                                  alpha, lo, hi)
                if full < tw:  # the last, partial tile
                    j = j0 + np.uint64(full)
                    rs = _at(f[i, 0, j], f[i, 1, j], f[i, 2, j], f[i, 3, j], f[i, 4, j], f[i, 5, j])
                    for x in range(4 * full, ow):
                        out[k, y, x] = act1(rs[x - 4 * full] + bk, code, alpha, lo, hi)


def conv3x3(p: np.ndarray, w: np.ndarray, b: np.ndarray, out: np.ndarray, code: int, alpha, lo, hi,
            oh: int | None = None) -> None:
    """The top oh rows (all by default) of out (Cout, ≥ oh, ow) = act(valid 3×3 conv of slab p (Cin, ≥ oh + 2,
    ≥ ow + 2) with w + b), out C-contiguous (a buffer with spare rows: kernels.layout), in chunks of tile
    rows whose transformed input fits TILE_BYTES. Channel-major transformed tiles (v[c, 36, n], m[k, 36, n]): each
    transform then writes and reads 36 nearby rows, not 36 rows a whole matrix apart (twice as fast at 14²); the
    GEMMs take them as strided views at no cost."""
    cin, cout, (oh, ow) = p.shape[0], w.shape[0], (out.shape[1] if oh is None else oh, out.shape[2])
    th, tw = -(-oh // 4), -(-ow // 4)
    q, nt = np.empty((cin, 4, 6, (th + 1) * tw), np.float32), count()
    _split(p, th, tw, q, nt)
    u = filter_transform(w)
    step = max(1, min(th, TILE_BYTES // (36 * 4 * max(cin, cout) * tw)))
    e, f = np.empty((nt, 6, 6, step * tw), np.float32), np.empty((nt, 4, 6, step * tw), np.float32)
    for t0 in range(0, th, step):
        t1 = min(th, t0 + step)
        v = np.empty((cin, 36, (t1 - t0) * tw), np.float32)
        _inputs(q, tw, t0 * tw, t1 * tw, e, v)
        m = np.empty((cout, 36, v.shape[2]), np.float32)
        blas.batched(u, v.transpose(1, 0, 2), m.transpose(1, 0, 2))
        _outputs(m, t0, t1, tw, b, f, out, oh, code, alpha, lo, hi)
