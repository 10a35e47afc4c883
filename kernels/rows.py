"""Depthwise convs, RGB stems and max pools a row of outputs at a time, as 16-lane vectors (8 for depthwise regions
of 8 columns or fewer) with masked loads and stores (LLVM intrinsics).

On the small maps of mobile nets a row holds 7-28 outputs: LLVM's loop vectoriser leaves loops that short scalar,
and staging each channel into a zero-padded slab, to read it without border tests, cost as much again. Here up to
16 outputs of a row are one vector: a kernel row's input columns are masked loads straight from the tile buffer,
their lanes outside the image (or past what the row reads) masked off and read as zero (-inf for a max pool), as
the padded slab's fill was, and each tap is shuffled out of them (at stride 2, their even or odd columns). A stem
(3 input channels, 3×3, stride 2) computes 8 output channels at once from each tap, in place of im2col and a GEMM
of 27 columns. MobileNetV2 at 224² on one thread: depthwise convs 2.4 → 1.6 ms, the stem 0.42 → 0.29; VGG-16's max
pools 2.3 → 0.7 ms (docs/BENCHMARKS.md).

Only on hosts with the vectors (vectors.ENABLED): elsewhere conv.py's and pool.py's paths serve, as they do for
wide depthwise rows everywhere (kind)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from . import vectors
from .derived import per_arguments
from .threads import block
from .vectors import I32, I64, LANES, address, clamp, dest, fma, inside, load, rowwise, scalar, splat, store, types_of
from .window import staging


def _taps(builder: ir.IRBuilder, address: ir.Value, col: ir.Value, width: ir.Value, n: ir.Value, k: int, stride: int,
          row_ok: ir.Value | None, fill: float, lanes: int) -> list[ir.Value]:
    """A kernel row's k taps, vectors of `lanes`: tap kx's lanes j < n hold the input at column col + j·stride + kx
    of the row at `address` (which holds column col), `fill` where that column is outside [0, width) or the row is
    outside the image (row_ok false; None: inside). The row's columns are loaded once, `lanes` at a time (the
    n·stride + k - stride that the taps read), and each tap shuffled out of them: at stride 1 shifted by kx, at
    stride 2 the even or odd columns shifted by kx // 2. A load (of 32 columns at stride 2, then its even lanes) a
    tap cost, warm, 3.5 cycles a tap at stride 2 and 2.2 at stride 1: MobileNetV2's 144 channels at stride 2 from
    56², 0.091 → 0.064 ms; 384 at stride 1 on 14², 0.041 → 0.035; 5×5 at stride 2, 0.5-0.6 of the time."""
    _, vi, vb = types_of(lanes)
    lane = list(range(lanes))
    spans = -(-(stride * (lanes - 1) + k) // lanes)  # (the loads of `lanes` columns the row reads)
    wanted_below = builder.add(builder.mul(n, I32(stride)), I32(k - stride))  # (columns past col the taps read)

    def columns(offset: int) -> ir.Value:
        """Lanes t: column col + offset + t, where a tap reads it (t < wanted_below - offset) and it is inside."""
        t = ir.Constant(vi, [offset + j for j in lane])
        pos = builder.add(splat(builder, col, vi), t)
        mask = builder.and_(builder.and_(builder.icmp_signed(">=", pos, ir.Constant(vi, [0] * lanes)),
                                         builder.icmp_signed("<", pos, splat(builder, width, vi))),
                            builder.icmp_signed("<", t, splat(builder, wanted_below, vi)))
        if row_ok is not None:
            mask = builder.and_(mask, splat(builder, row_ok, vb))
        return load(builder, builder.add(address, I64(4 * offset)), mask, fill)

    loaded = [columns(lanes * h) for h in range(spans)]
    if stride == 1:
        return [loaded[0]] + [builder.shuffle_vector(loaded[0], loaded[1], ir.Constant(vi, [j + kx for j in lane]))
                              for kx in range(1, k)]
    # parities[p][h]: the columns of parity p among loads 2h and 2h + 1 (one vector of `lanes`, the last partly fill)
    parities = [[builder.shuffle_vector(loaded[h], loaded[h + 1] if h + 1 < spans else loaded[h],
                                        ir.Constant(vi, [2 * j + p for j in lane]))
                 for h in range(0, spans, 2)] for p in (0, 1)]
    taps = []
    for kx in range(k):
        first, *more = parities[kx % 2]
        shift = kx // 2
        taps.append(first if shift == 0 else
                    builder.shuffle_vector(first, more[0], ir.Constant(vi, [j + shift for j in lane])))
    return taps


@intrinsic(prefer_literal=True)
def _row(typingctx, lanes, k, s, edge, ob, cin, op, out, opitch, n, x, cpitch, pitch, rows, col, width, w, wpitch, b,
         lo, hi):
    """row() for constants lanes, k, s, edge, ob, cin and op (literals: each combination its own code)."""
    constants = (lanes, k, s, edge, ob, cin, op)
    if not all(isinstance(t, (types.IntegerLiteral, types.BooleanLiteral)) for t in constants):
        raise TypeError(f"rows._row: lanes, k, s, edge, ob, cin and op must be compile-time constants, not {constants}")
    sig = types.void(*constants, out, opitch, n, x, cpitch, pitch, rows, col, width, w, wpitch, b, lo, hi)
    lanes, k, stride, edge, ob, cin, op = (t.literal_value for t in constants)
    fill = -np.inf if op == MAX else 0.0
    vf, vi, _ = types_of(lanes)

    def codegen(context, builder, signature, args):
        out, opitch, n, x, cpitch, pitch, rows, col, width, w, wpitch, b = (
            context.cast(builder, a, t, types.int64) for a, t in zip(args[7:19], signature.args[7:19], strict=True))
        lo, hi = args[19:]
        n32, col32, width32 = (builder.trunc(v, I32) for v in (n, col, width))

        weights = [builder.add(w, builder.mul(wpitch, I64(4 * q))) for q in range(ob)]
        # One output channel's weights and bias (ob = 1), invariant loads, stay in registers across a chunk's rows;
        # a stem's 8 × 27 would not (hoisted, they spilled: 0.25 → 0.37 ms at 224²), and are loaded a row at a time.
        fixed = ob == 1
        accs = [ir.Constant(vf, [fill] * lanes) if op == MAX else splat(builder, scalar(builder, b, q, fixed), vf)
                for q in range(ob)]
        for ci in range(cin):
            for ky in range(k):
                row_ok = builder.icmp_unsigned("!=", builder.and_(rows, I64(1 << ky)), I64(0)) if edge else None
                start = builder.add(x, builder.add(builder.mul(cpitch, I64(4 * ci)), builder.mul(pitch, I64(4 * ky))))
                for kx, v in enumerate(_taps(builder, start, col32, width32, n32, k, stride, row_ok, fill, lanes)):
                    tap = (ci * k + ky) * k + kx
                    if op == MAX:  # (v if v > acc else acc: a NaN tap is passed over, as pool.py's loops do)
                        accs = [builder.select(builder.fcmp_ordered(">", v, a), v, a) for a in accs]
                    else:
                        accs = [fma(builder, splat(builder, scalar(builder, weights[q], tap, fixed), vf), v, accs[q])
                                for q in range(ob)]
        stored = builder.icmp_signed("<", ir.Constant(vi, list(range(lanes))), splat(builder, n32, vi))
        for q, acc in enumerate(accs):
            store(builder, clamp(builder, acc, lo, hi), builder.add(out, builder.mul(opitch, I64(4 * q))), stored)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, inline="always")
def row(lanes, k, s, ob, cin, op, out, opitch, n, x, cpitch, pitch, rows, full, col, width, w, wpitch, b, lo, hi):
    """For q < ob and j < n ≤ lanes (16, or NARROW): out[q·opitch + j] (addresses) = clamp(b[q]
    + Σ w[q·wpitch + (c·k + ky)·k + kx] · x[c·cpitch + ky·pitch + j·s + kx], lo, hi), summed over c < cin, ky, kx < k:
    a k×k kernel at column stride s (lanes, k, s, ob, cin and op constants), x the address of the input at image
    column col (channels cpitch floats apart, rows pitch). Columns outside [0, width) read 0.0, and so do rows whose
    bit in `rows` is clear. With op MAX: the largest of those k×k inputs instead (outside the image: -inf), no
    weights, bias or clamp. A row with every bit set (full) has code without those tests, and then a chunk's masks
    are the same for every row: LLVM works them out once, outside the loop over rows."""
    if rows == full:
        _row(lanes, k, s, False, ob, cin, op, out, opitch, n, x, cpitch, pitch, rows, col, width, w, wpitch, b, lo, hi)
    else:
        _row(lanes, k, s, True, ob, cin, op, out, opitch, n, x, cpitch, pitch, rows, col, width, w, wpitch, b, lo, hi)


@njit(cache=True, inline="always")
def _rows(x, b0, b1, top, left, in_h, in_w, lanes, k, sh, sw, ob, cin, op, w, b, out, lo, hi):
    """Conv (k×k, cin = w.shape[1] input channels per group) of output channels [b0·ob, b1·ob) of out (a dest()),
    ob at a time, from x: output (o, i, j) has its taps start at row top + i·sh and column left + j·sw of x (C, bh, bw;
    rows contiguous), whose rows and columns inside the image are [in_h[0], in_h[1]) and [in_w[0], in_w[1]). Each
    output row in chunks of `lanes`, in bands of BAND rows, rows inner: a chunk's column masks are then worked out once
    a band, and a band's input stays in cache from one chunk to the next (walking a 256² map a chunk at a time
    from top to bottom was 1.9× slower). A region of one band (a 7²-14² map, a tile's border strip) runs its
    channels inside the chunk too, so that a chunk's masks serve every channel: a 1-row strip of 960 channels at
    7², 16 → 11 µs (on taller regions, within the spread or slower: 192 channels at 28², 75 → 80-84 µs). So does a
    conv of several input channels per group (an RGB stem) on any region: its blocks all read the chunk's inputs,
    which then stay in cache (MobileNetV2's stem at 512², caches cold / warm: 4.0 → 2.3 / 2.9 → 1.6 ms)."""
    oa, cout, oh, ow, ocs, ors = out
    cout_g = cout // (x.shape[0] // cin)
    cs, rs = x.strides[0] // 4, x.strides[1] // 4
    xa, wa, ba = x.ctypes.data, w.ctypes.data, b.ctypes.data
    (r_lo, r_hi), (c_lo, c_hi) = in_h, in_w
    full = (1 << k) - 1
    group = max(1, b1 - b0) if oh <= BAND or cin > 1 else 1  # (blocks a chunk's masks serve, each over the band)
    for g0 in range(b0, b1, group):
        for i0 in range(0, oh, BAND):
            for j0 in range(0, ow, lanes):
                col, n = left + j0 * sw, min(lanes, ow - j0)
                for blk in range(g0, min(b1, g0 + group)):
                    o = blk * ob
                    c = o // cout_g * cin
                    for i in range(i0, min(oh, i0 + BAND)):
                        r = top + i * sh
                        row(lanes, k, sw, ob, cin, op, oa + 4 * (o * ocs + i * ors + j0), ocs, n,
                            xa + 4 * (c * cs + r * rs + col), cs, rs, inside(r, k, r_lo, r_hi), full, col - c_lo,
                            c_hi - c_lo, wa + 4 * o * cin * k * k, cin * k * k, ba + 4 * o, lo, hi)


BAND = 16  # output rows a chunk's masks serve (_rows)
# Output columns up to which a depthwise conv's region runs in vectors of this many lanes: lanes past a row are
# wasted, and a 16-lane operation costs two of 8 on Zen 4. Warm, one thread: MobileNetV2's 960 channels at 7²,
# 0.041 → 0.033 ms; 576 at stride 2 onto 7², 0.034 → 0.024; 5×5, 0.72 and 0.43 of the time. (So do a tile's
# 7-column share of a 14² map and a 1-column border strip.)
NARROW = 8
FMA, MAX = 0, 1  # what a row does with its taps: weighted sums (convs), or their largest (max pooling)
# (k, column stride, ob, cin, op): depthwise 3×3 and 5×5 convs, a network's RGB stem (3×3 at stride 2), max pools
KINDS = ((3, 1, 1, 1, FMA), (3, 2, 1, 1, FMA), (5, 1, 1, 1, FMA), (5, 2, 1, 1, FMA), (3, 2, 8, 3, FMA),
         (2, 2, 1, 1, MAX), (3, 1, 1, 1, MAX), (3, 2, 1, 1, MAX))
_SIZES = frozenset(k for k, *_ in KINDS)


@njit(cache=True, inline="always")
def _depthwise(x, b0, b1, top, left, in_h, in_w, lanes, k, sh, sw, w, b, out, lo, hi):
    """_rows of a depthwise 3×3 or 5×5 conv with k and sw as constants too, one branch (a copy of the loops) each."""
    if k == 3 and sw == 1:
        _rows(x, b0, b1, top, left, in_h, in_w, lanes, 3, sh, 1, 1, 1, FMA, w, b, out, lo, hi)
    elif k == 3:
        _rows(x, b0, b1, top, left, in_h, in_w, lanes, 3, sh, 2, 1, 1, FMA, w, b, out, lo, hi)
    elif sw == 1:
        _rows(x, b0, b1, top, left, in_h, in_w, lanes, 5, sh, 1, 1, 1, FMA, w, b, out, lo, hi)
    else:
        _rows(x, b0, b1, top, left, in_h, in_w, lanes, 5, sh, 2, 1, 1, FMA, w, b, out, lo, hi)


@njit(cache=True)
def _block(x, b0, b1, top, left, in_h, in_w, k, sh, sw, ob, op, narrow, w, b, out, lo, hi):
    """_rows with lanes, k, sw, ob, cin and op as constants, one branch per KINDS entry, each a copy of its loops
    (LLVM then drops the choice of row code from the innermost loop: 15-30% of the time on 7²-56² maps); narrow: a
    depthwise conv's rows of NARROW outputs or fewer, in vectors of NARROW lanes."""
    if narrow:
        _depthwise(x, b0, b1, top, left, in_h, in_w, NARROW, k, sh, sw, w, b, out, lo, hi)
    elif op == FMA and ob == 1:
        _depthwise(x, b0, b1, top, left, in_h, in_w, LANES, k, sh, sw, w, b, out, lo, hi)
    elif op == FMA:
        _rows(x, b0, b1, top, left, in_h, in_w, LANES, 3, sh, 2, 8, 3, FMA, w, b, out, lo, hi)
    elif k == 2:
        _rows(x, b0, b1, top, left, in_h, in_w, LANES, 2, sh, 2, 1, 1, MAX, w, b, out, lo, hi)
    elif sw == 1:
        _rows(x, b0, b1, top, left, in_h, in_w, LANES, 3, sh, 1, 1, 1, MAX, w, b, out, lo, hi)
    else:
        _rows(x, b0, b1, top, left, in_h, in_w, LANES, 3, sh, 2, 1, 1, MAX, w, b, out, lo, hi)


@njit(cache=True, parallel=True)
def _run(x, top, left, in_h, in_w, k, sh, sw, ob, op, narrow, w, b, out, lo, hi, nt):
    """_block on nt blocks of output channels (of ob each), one per thread."""
    for t in prange(nt):
        b0, b1 = block(out[1] // ob, t, nt)
        _block(x, b0, b1, top, left, in_h, in_w, k, sh, sw, ob, op, narrow, w, b, out, lo, hi)


WIDE = 2 * LANES  # depthwise rows wider than this (times the column stride) keep conv.py's loops (kind)


def kind(w_shape: tuple[int, ...], groups: int, stride: tuple[int, int], dilation: tuple[int, int], x: np.ndarray,
         out_w: int) -> int:
    """ob, the output channels conv() computes at a time for this conv (a KINDS entry), or 0 where it does not:
    on a vector host, with no dilation and x float32 with its rows contiguous, a depthwise 3×3 or 5×5 conv at
    strides of 1 or 2, its rows at most WIDE·stride outputs (beyond, conv.py's loops over a staged slab ran as fast
    or faster: 3×3 at stride 1 on 56² maps, 0.24 ms against 0.20; at stride 2 on 256², 3.3 against 2.5, and since
    the taps share their loads still 3.6 against 3.2 inside MobileNetV2 at 512²); and a
    3×3 conv at column stride 2 of 3 input channels to a multiple of 8 outputs (a network's RGB stem: im2col's
    GEMM of 27 columns ran at half the speed; 7×7 stems and stride 1 ran no faster here)."""
    if not (vectors.ENABLED and w_shape[2] in _SIZES and rowwise(x)):  # (a 1×1 conv leaves at once)
        return 0
    return _kind(tuple(w_shape), groups, stride, dilation, x.shape[0], out_w)


@per_arguments  # (asked for every conv of every inference: 1.5 µs a call worked out each time)
def _kind(w_shape: tuple[int, ...], groups: int, stride: tuple[int, int], dilation: tuple[int, int], channels: int,
          out_w: int) -> int:
    """kind() for an x of `channels` channels, float32 with its rows contiguous, on a vector host."""
    cout, cin_g, kh, kw = w_shape
    if not (kh == kw and stride[0] in (1, 2) and tuple(dilation) == (1, 1)):
        return 0
    for k, s, ob, cin, op in KINDS:
        if op != FMA or (k, s, cin) != (kh, stride[1], cin_g):
            continue
        if ob == 1 and groups == channels and out_w <= WIDE * stride[1]:
            return 1
        if ob > 1 and groups == 1 and cout % ob == 0:
            return ob
    return 0


def pools(kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int], x: np.ndarray) -> bool:
    """Whether pool() computes this max pool: on a vector host, 2×2 at stride 2 or 3×3 at strides of 1 or 2, no
    dilation, x float32 with its rows contiguous."""
    return (vectors.ENABLED and kernel[0] == kernel[1] and stride[0] in (1, 2) and tuple(dilation) == (1, 1)
            and rowwise(x) and (kernel[0], stride[1], 1, 1, MAX) in KINDS)


def launcher(x: np.ndarray, origin: tuple[int, int], in_hw: tuple[int, int], k: int, stride: tuple[int, int],
             pads: tuple[int, int, int, int], region: tuple[int, int, int, int], ob: int, op: int, w: np.ndarray,
             b: np.ndarray, out: np.ndarray, lo: np.float32, hi: np.float32, nt: int
             ) -> Callable[[np.ndarray, np.ndarray], None]:
    """launch(x, out): output `region` of a k×k conv (ob output channels at a time: kind()) or max pool from tile x
    into out, for any x and out laid out as these (out's rows contiguous: dest()); its geometry is worked out
    here, once. Raises if x lacks an input the region reads (window.staging)."""
    staging(x, origin, in_hw, (k, k), stride, pads, (1, 1), region)
    (oy, ox), (h, wd), (y0, x0) = origin, in_hw, region[:2]
    narrow = op == FMA and ob == 1 and region[3] - region[1] <= NARROW
    head = (y0 * stride[0] - pads[0] - oy, x0 * stride[1] - pads[1] - ox, (-oy, h - oy), (-ox, wd - ox), k, *stride,
            ob, op, narrow, np.ascontiguousarray(w), np.ascontiguousarray(b))
    shape, blocks = dest(out)[1:], out.shape[0] // ob
    nt = min(nt, blocks)
    if nt == 1:  # (no parallel loop to launch on one thread, as blocked.py: ~1 µs a call)
        def launch(x: np.ndarray, out: np.ndarray) -> None:
            _block(x, 0, blocks, *head, (address(out), *shape), lo, hi)
    else:
        def launch(x: np.ndarray, out: np.ndarray) -> None:
            _run(x, *head, (address(out), *shape), lo, hi, nt)
    return launch


_NONE_W, _NONE_B = np.zeros((1, 1, 1, 1), np.float32), np.zeros(1, np.float32)  # (a pool's: never read; shaped as
# a conv's, so that pools and convs share one compiled _run)


def pool(x: np.ndarray, origin: tuple[int, int], in_hw: tuple[int, int], kernel: tuple[int, int],
         stride: tuple[int, int], pads: tuple[int, int, int, int], region: tuple[int, int, int, int],
         out: np.ndarray, nt: int) -> None:
    """out = max pool of output `region` from tile x (pools()); a window with no tap in the image gives -inf."""
    inf = np.float32(np.inf)
    launcher(x, origin, in_hw, kernel[0], stride, pads, region, 1, MAX, _NONE_W, _NONE_B, out, -inf, inf, nt)(x, out)
