"""1×1 convs by a 16-lane GEMM micro-kernel over weights packed once (LLVM intrinsics, vectors.py).

BLAS vectorises a 1×1 conv's product along the pixels and packs the weights on every call: on the 7²-14² maps of
MobileNets and of ResNet's last stages, the weights read cold, that ran 1.2-1.5× onnxruntime's conv. Here the
lanes run along output channels, as onnxruntime's channel-blocked (NCHWc) convs do, over weights packed once per
weight array as [block][cin][16·cb]: a tile is PIX pixels × 16·cb channels in PIX·cb registers, each input one
broadcast, each weight row cb loads. The bias starts the sums, the clamp is applied in registers, and the tile is
transposed in registers (8 pixels × 16 channels into 16 rows of 8) and stored into the NCHW output with masks. The
input is read where it lies, at any row pitch and a column stride of 1 or 2: a strided 1×1 conv copies nothing.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from . import vectors
from .derived import per_weights
from .threads import block
from .vectors import I32, I64, LANES, VB, VF, VI, clamp, fma, rowwise, scalar, splat, store, vector

PIX = 7  # pixels a tile computes: rows of 7²-112² maps are whole tiles; a longer run's last tile shifts back
CBS = (3, 2, 1)  # channel vectors a tile may compute (cb): the one that pads the output channels least
_HALF, _HALF_MASK = ir.VectorType(I32, 8), ir.VectorType(VB.element, 8)  # (a row of 8 pixels: its lanes, its mask)


def _transpose(builder: ir.IRBuilder, columns: list[ir.Value]) -> list[ir.Value]:
    """16 rows of 8 floats (channel c's 8 pixels) from 8 vectors of 16 (pixel q's 16 channels): three rounds of
    two-vector shuffles, each doubling the pixels a vector holds of each of its channels."""
    vals = [(v, [(q, c) for c in range(LANES)]) for q, v in enumerate(columns)]  # (vector, (pixel, channel) by lane)
    while len({c for _, c in vals[0][1]}) > 2:
        by_channels: dict[tuple, list] = {}
        for v, held in vals:
            by_channels.setdefault(tuple(sorted({c for _, c in held})), []).append((v, held))
        vals = []
        for chans, members in by_channels.items():
            members.sort(key=lambda m: min(q for q, _ in m[1]))
            for (a, ha), (b, hb) in zip(members[::2], members[1::2], strict=True):
                pixels = sorted({q for q, _ in ha + hb})
                for half in (chans[:len(chans) // 2], chans[len(chans) // 2:]):
                    want = [(q, c) for c in half for q in pixels]
                    lanes = [ha.index(x) if x in ha else LANES + hb.index(x) for x in want]
                    vals.append((builder.shuffle_vector(a, b, ir.Constant(VI, lanes)), want))
    rows = {}
    for v, held in vals:  # (each: two channels' 8 pixels)
        for h in (0, 1):
            rows[held[8 * h][1]] = builder.shuffle_vector(v, v, ir.Constant(_HALF, list(range(8 * h, 8 * h + 8))))
    return [rows[c] for c in range(LANES)]


@intrinsic(prefer_literal=True)
def _tile(typingctx, cb, s, edge, w, x, cpitch, k, b, out, opitch, n, cn, lo, hi):
    """tile() for constants cb, s and edge (literals: each combination its own code)."""
    constants = (cb, s, edge)
    if not all(isinstance(t, (types.IntegerLiteral, types.BooleanLiteral)) for t in constants):
        raise TypeError(f"conv1x1._tile: cb, s and edge must be compile-time constants, not {constants}")
    sig = types.void(*constants, w, x, cpitch, k, b, out, opitch, n, cn, lo, hi)
    cb, s, edge = (t.literal_value for t in constants)

    def codegen(context, builder, signature, args):
        w, x, cpitch, k, b, out, opitch, n, cn = (
            context.cast(builder, a, t, types.int64) for a, t in zip(args[3:12], signature.args[3:12], strict=True))
        lo, hi = args[12:]
        # Pixel q's input is column q·s of the run; on an edge tile (n < PIX) pixels past n read the last one
        # (nothing past the run is read) and are not stored.
        last = builder.sub(n, I64(1))
        offsets = [builder.mul(builder.select(builder.icmp_signed("<", I64(q), n), I64(q), last), I64(4 * s))
                   if edge else I64(4 * q * s) for q in range(PIX)]
        start = [vector(builder, builder.add(b, I64(4 * LANES * v))) for v in range(cb)]
        entry, loop, done = builder.block, builder.append_basic_block("k"), builder.append_basic_block("done")
        builder.branch(loop)
        builder.position_at_end(loop)  # for i < k: acc[q][v] += w[i, 16v:16v+16] · x[i, q]
        i = builder.phi(I64)
        accs = [[builder.phi(VF) for _ in range(cb)] for _ in range(PIX)]
        row_w = builder.add(w, builder.mul(i, I64(4 * LANES * cb)))
        row_x = builder.add(x, builder.mul(i, builder.mul(cpitch, I64(4))))
        weights = [vector(builder, builder.add(row_w, I64(4 * LANES * v))) for v in range(cb)]
        sums = []
        for q in range(PIX):
            pixel = splat(builder, scalar(builder, builder.add(row_x, offsets[q])), VF)
            sums.append([fma(builder, pixel, weights[v], accs[q][v]) for v in range(cb)])
        following = builder.add(i, I64(1))
        i.add_incoming(I64(0), entry)
        i.add_incoming(following, builder.block)
        for q in range(PIX):
            for v in range(cb):
                accs[q][v].add_incoming(start[v], entry)
                accs[q][v].add_incoming(sums[q][v], builder.block)
        builder.cbranch(builder.icmp_signed("<", following, k), loop, done)
        builder.position_at_end(done)
        pixels = builder.icmp_signed("<", ir.Constant(_HALF, list(range(8))), splat(builder, builder.trunc(n, I32),
                                                                                     _HALF))
        for v in range(cb):
            rows = _transpose(builder, [clamp(builder, sums[min(q, PIX - 1)][v], lo, hi) for q in range(8)])
            for c, row in enumerate(rows):
                channel = LANES * v + c
                inside = builder.icmp_signed("<", I64(channel), cn)
                mask = builder.and_(pixels, splat(builder, inside, _HALF_MASK))
                store(builder, row, builder.add(out, builder.mul(opitch, I64(4 * channel))), mask)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, inline="always")
def tile(cb, s, w, x, cpitch, k, b, out, opitch, n, cn, lo, hi):
    """For c < cn ≤ 16·cb and q < n ≤ PIX: out[c·opitch + q] = clamp(b[c] + Σ_i w[i·16·cb + c] · x[i·cpitch + q·s],
    lo, hi), i < k (addresses; cb and s constants): output channels c of one block, pixels q of one run."""
    if n == PIX:
        _tile(cb, s, False, w, x, cpitch, k, b, out, opitch, n, cn, lo, hi)
    else:
        _tile(cb, s, True, w, x, cpitch, k, b, out, opitch, n, cn, lo, hi)


@njit(cache=True, inline="always")
def _tiles(cb, s, w, b, x, cs, k, out, ohw, cout, b0, b1, start, rstep, run, r0, r1, q0, q1, lo, hi):
    """Output channel blocks [b0, b1) (16·cb channels each), pixels [q0, q1) of runs [r0, r1): pixel q of run r
    reads x at start + r·rstep + q·s floats (channels cs apart) and writes out at r·run + q (channels ohw apart).
    The last tile of a run of PIX or more starts PIX before its end (its pixels computed twice, to the same bits)."""
    lanes = LANES * cb
    for blk in range(b0, b1):
        c0 = blk * lanes
        cn, wb, bb = min(lanes, cout - c0), w + 4 * blk * k * lanes, b + 4 * c0
        for r in range(r0, r1):
            xr, orow = x + 4 * (start + r * rstep), out + 4 * (c0 * ohw + r * run)
            if q1 - q0 < PIX:
                tile(cb, s, wb, xr + 4 * q0 * s, cs, k, bb, orow + 4 * q0, ohw, q1 - q0, cn, lo, hi)
                continue
            for p in range(q0, q1, PIX):
                q = min(p, q1 - PIX)
                tile(cb, s, wb, xr + 4 * q * s, cs, k, bb, orow + 4 * q, ohw, PIX, cn, lo, hi)


@njit(cache=True)
def _work(cb, s, w, b, x, cs, k, out, ohw, cout, b0, b1, start, rstep, run, r0, r1, q0, q1, lo, hi):
    """_tiles with cb and s as constants, one branch (a copy of the loops) per pair."""
    if cb == 3 and s == 1:
        _tiles(3, 1, w, b, x, cs, k, out, ohw, cout, b0, b1, start, rstep, run, r0, r1, q0, q1, lo, hi)
    elif cb == 3:
        _tiles(3, 2, w, b, x, cs, k, out, ohw, cout, b0, b1, start, rstep, run, r0, r1, q0, q1, lo, hi)
    elif cb == 2 and s == 1:
        _tiles(2, 1, w, b, x, cs, k, out, ohw, cout, b0, b1, start, rstep, run, r0, r1, q0, q1, lo, hi)
    elif cb == 2:
        _tiles(2, 2, w, b, x, cs, k, out, ohw, cout, b0, b1, start, rstep, run, r0, r1, q0, q1, lo, hi)
    elif s == 1:
        _tiles(1, 1, w, b, x, cs, k, out, ohw, cout, b0, b1, start, rstep, run, r0, r1, q0, q1, lo, hi)
    else:
        _tiles(1, 2, w, b, x, cs, k, out, ohw, cout, b0, b1, start, rstep, run, r0, r1, q0, q1, lo, hi)


@njit(cache=True, parallel=True)
def _run(cb, s, w, b, x, cs, k, out, ohw, cout, start, rstep, runs, run, ntb, ntp, lo, hi):
    """_work on ntb blocks of output channel blocks × ntp blocks of the runs (or of the one run's pixels), one per
    thread."""
    nb = -(-cout // (LANES * cb))
    for t in prange(ntb * ntp):
        b0, b1 = block(nb, t % ntb, ntb)
        r0, r1, q0, q1 = 0, runs, 0, run
        if runs > 1:
            r0, r1 = block(runs, t // ntb, ntp)
        else:
            q0, q1 = block(run, t // ntb, ntp)
        _work(cb, s, w, b, x, cs, k, out, ohw, cout, b0, b1, start, rstep, run, r0, r1, q0, q1, lo, hi)


def _cb(cout: int) -> int:
    """The channel vectors a tile computes for cout output channels: the fewest padded channels, then the most
    vectors (64 → 2, 960 → 3, 24 → 2)."""
    return min(CBS, key=lambda cb: (-(-cout // (LANES * cb)) * cb, -cb))


@per_weights
def _packed(w: np.ndarray) -> np.ndarray:
    """Weights (cout, cin, 1, 1) as (blocks, cin, 16·cb): a block's weight rows contiguous, zero past cout."""
    cout, cin = w.shape[:2]
    lanes = LANES * _cb(cout)
    blocks = -(-cout // lanes)
    padded = np.zeros((blocks * lanes, cin), np.float32)
    padded[:cout] = w.reshape(cout, cin)
    return np.ascontiguousarray(padded.reshape(blocks, lanes, cin).transpose(0, 2, 1))


@per_weights
def _padded(b: np.ndarray) -> np.ndarray:
    """Bias b with zeros past its end for a last, partial block (reads never pass 16·max(CBS) floats beyond)."""
    return np.concatenate([np.asarray(b, np.float32), np.zeros(LANES * max(CBS), np.float32)])


def takes(w_shape: tuple[int, ...], groups: int, stride: tuple[int, int], pads: tuple[int, int, int, int],
          x: np.ndarray, out_hw: tuple[int, int]) -> bool:
    """Whether conv() computes this conv: on a vector host, a 1×1 conv of one group, no padding, column stride 1 or
    2, x float32 with its rows contiguous; output channels a multiple of 16, and 32 input channels or more or an
    output of 28² or more. Elsewhere BLAS ran faster (bench in docs/BENCHMARKS.md): 24 output channels, their
    vectors a quarter empty, 1.1-1.4× its time; 16 input channels at 14², the transposed stores outweighing the
    sums, 1.15×."""
    cout, cin = w_shape[:2]
    return (vectors.ENABLED and tuple(w_shape[2:]) == (1, 1) and groups == 1 and not any(pads)
            and stride[1] in (1, 2) and cout % LANES == 0 and (cin >= 32 or out_hw[0] * out_hw[1] >= 28 * 28)
            and x.shape[0] > 0 and rowwise(x))


def conv(x: np.ndarray, origin: tuple[int, int], w: np.ndarray, b: np.ndarray, stride: tuple[int, int],
         region: tuple[int, int, int, int], out: np.ndarray, lo: np.float32, hi: np.float32, nt: int) -> None:
    """out (C-contiguous) = clamp(1×1 conv of output `region` from tile x + b, lo, hi) (takes(); the caller has
    checked that x holds every input the region reads: window.staging)."""
    cout, cin = w.shape[:2]
    (oy, ox), (y0, x0), (oh, ow) = origin, region[:2], out.shape[1:]
    cs, rs = x.strides[0] // 4, x.strides[1] // 4
    top, left = y0 * stride[0] - oy, x0 * stride[1] - ox
    if tuple(stride) == (1, 1) and left == 0 and ow == x.shape[2] == rs:  # (rows back to back: one run)
        runs, run, rstep = 1, oh * ow, 0
    else:
        runs, run, rstep = oh, ow, stride[0] * rs
    wp, bp = _packed(w), _padded(b)
    cb = wp.shape[2] // LANES  # (_cb(cout), as packed)
    ntb = max(1, min(nt, len(wp)))
    ntp = max(1, min(nt // ntb, runs if runs > 1 else -(-run // PIX)))
    args = (cb, stride[1], wp.ctypes.data, bp.ctypes.data, x.ctypes.data, cs, cin, out.ctypes.data, oh * ow, cout)
    if ntb * ntp == 1:  # (a parallel loop's launch costs ~8 µs even on one thread: 8% of a 7² conv)
        _work(*args, 0, len(wp), top * rs + left, rstep, run, 0, runs, 0, run, lo, hi)
    else:
        _run(*args, top * rs + left, rstep, runs, run, ntb, ntp, lo, hi)
