"""Depthwise convs a row of outputs at a time as 16-lane vectors with masked loads and stores (LLVM intrinsics).

On the small maps of mobile nets a row holds 7-28 outputs: LLVM's loop vectoriser leaves loops that short scalar,
and staging each channel into a zero-padded slab, to read it without border tests, cost as much again. Here up to
16 outputs of a row are one vector: each tap is one masked load straight from the tile buffer, its lanes outside
the image (or past the row) masked off and read as zero, as the padded slab's zeros were. A stride-2 tap loads 32
columns and keeps the even ones. MobileNetV2 at 224² on one thread: its depthwise convs 2.4 → 1.6 ms
(docs/BENCHMARKS.md).

Only where the host has AVX2 and FMA (ENABLED; and LLVM 17 or later): without vector masks (NEON) LLVM turns each masked load into a
branch per lane, and conv.py's loops serve there, as they do for wide stride-1 rows everywhere (fits)"""

from __future__ import annotations

import llvmlite.binding as ll
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .threads import block

LANES = 16
_FEATURES = ll.get_host_cpu_features()
# (LLVM 17 and later: pointers without a pointee type, as the intrinsics below declare them; numba 0.62 and later)
ENABLED = bool(_FEATURES.get("avx2") and _FEATURES.get("fma")) and ll.llvm_version_info >= (17,)

_F32, _I32, _I64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
_VF, _VI, _VB = ir.VectorType(_F32, LANES), ir.VectorType(_I32, LANES), ir.VectorType(ir.IntType(1), LANES)


def _splat(builder: ir.IRBuilder, value: ir.Value, vtype: ir.VectorType) -> ir.Value:
    """A vector of `value` in every lane."""
    one = builder.insert_element(ir.Constant(vtype, ir.Undefined), value, _I32(0))
    return builder.shuffle_vector(one, ir.Constant(vtype, ir.Undefined), ir.Constant(_VI, [0] * LANES))


def _masked(builder: ir.IRBuilder, name: str, vtype: ir.Type, arg_types: list[ir.Type]) -> ir.Function:
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(vtype, arg_types), name)


def _load(builder: ir.IRBuilder, address: ir.Value, mask: ir.Value) -> ir.Value:
    """16 floats from `address` where mask is set, 0.0 elsewhere (masked-off lanes touch no memory)."""
    fn = _masked(builder, "llvm.masked.load.v16f32.p0", _VF, [ir.PointerType(), _I32, _VB, _VF])
    return builder.call(fn, [builder.inttoptr(address, ir.PointerType()), _I32(4), mask, ir.Constant(_VF, None)])


def _store(builder: ir.IRBuilder, value: ir.Value, address: ir.Value, mask: ir.Value) -> None:
    fn = _masked(builder, "llvm.masked.store.v16f32.p0", ir.VoidType(), [_VF, ir.PointerType(), _I32, _VB])
    builder.call(fn, [value, builder.inttoptr(address, ir.PointerType()), _I32(4), mask])


def _tap(builder: ir.IRBuilder, address: ir.Value, col: ir.Value, width: ir.Value, n: ir.Value, stride: int,
         row_ok: ir.Value | None) -> ir.Value:
    """Lanes j < n: the input at column col + j·stride of the row at `address` (which holds column col), 0.0 where
    that column is outside [0, width) or the row is outside the image (row_ok false; None: inside)."""
    halves = []
    for half in range(stride):  # (stride 2: columns col .. col+31 in two loads, then their even lanes)
        t = ir.Constant(_VI, [half * LANES + lane for lane in range(LANES)])
        pos = builder.add(_splat(builder, col, _VI), t)
        inside = builder.and_(builder.icmp_signed(">=", pos, ir.Constant(_VI, [0] * LANES)),
                              builder.icmp_signed("<", pos, _splat(builder, width, _VI)))
        wanted = builder.icmp_signed("<", t, _splat(builder, builder.mul(n, _I32(stride)), _VI))
        if stride == 2:
            wanted = builder.and_(wanted, ir.Constant(_VB, [lane % 2 == 0 for lane in range(LANES)]))
        mask = builder.and_(inside, wanted)
        if row_ok is not None:
            mask = builder.and_(mask, _splat(builder, row_ok, _VB))
        halves.append(_load(builder, builder.add(address, _I64(4 * half * LANES)), mask))
    if stride == 1:
        return halves[0]
    return builder.shuffle_vector(halves[0], halves[1], ir.Constant(_VI, list(range(0, 2 * LANES, 2))))


@intrinsic(prefer_literal=True)
def _row(typingctx, k, s, edge, out, n, x, pitch, rows, col, width, w, b, lo, hi):
    """depthwise_row for constants k, s and edge (literals: each combination its own code)."""
    if not all(isinstance(t, (types.IntegerLiteral, types.BooleanLiteral)) for t in (k, s, edge)):
        raise TypeError(f"rows._row: k, s and edge must be compile-time constants, not {k}, {s}, {edge}")
    sig = types.void(k, s, edge, out, n, x, pitch, rows, col, width, w, b, lo, hi)
    k, stride, edge = k.literal_value, s.literal_value, edge.literal_value

    def codegen(context, builder, signature, args):
        out, n, x, pitch, rows, col, width, w = (context.cast(builder, a, t, types.int64)
                                                 for a, t in zip(args[3:11], signature.args[3:11], strict=True))
        b, lo, hi = args[11:]
        n32, col32, width32 = (builder.trunc(v, _I32) for v in (n, col, width))
        acc = _splat(builder, b, _VF)
        fma = _masked(builder, "llvm.fma.v16f32", _VF, [_VF, _VF, _VF])
        for ky in range(k):
            row_ok = builder.icmp_unsigned("!=", builder.and_(rows, _I64(1 << ky)), _I64(0)) if edge else None
            start = builder.add(x, builder.mul(pitch, _I64(4 * ky)))
            for kx in range(k):
                v = _tap(builder, builder.add(start, _I64(4 * kx)), builder.add(col32, _I32(kx)), width32, n32,
                         stride, row_ok)
                weight = builder.load(builder.inttoptr(builder.add(w, _I64(4 * (ky * k + kx))), ir.PointerType()),
                                      typ=_F32)
                acc = builder.call(fma, [_splat(builder, weight, _VF), v, acc])
        # clamp: lo, then hi, each by compare and select, so NaN passes through (as pointwise.act1)
        for bound, op in ((lo, "<"), (hi, ">")):
            bound = _splat(builder, bound, _VF)
            acc = builder.select(builder.fcmp_ordered(op, acc, bound), bound, acc)
        _store(builder, acc, out, builder.icmp_signed("<", ir.Constant(_VI, list(range(LANES))),
                                                      _splat(builder, n32, _VI)))
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, inline="always")
def depthwise_row(k, s, edge, out, n, x, pitch, rows, col, width, w, b, lo, hi):
    """out[0:n] (address) = clamp(b + Σ w[ky·k + kx] · x[ky·pitch + j·s + kx], lo, hi) for j < n ≤ 16, a k×k
    kernel (k and s constants: 3 or 5, 1 or 2) at column stride s: x the address of the input at image column col
    (rows ky below it, `pitch` floats apart); columns outside [0, width) read 0.0, and so do rows whose bit in
    `rows` is clear if `edge` (else every row is inside, and a chunk's masks are the same for every row: LLVM
    works them out once, outside the loop over rows)."""
    if edge:
        _row(k, s, True, out, n, x, pitch, rows, col, width, w, b, lo, hi)
    else:
        _row(k, s, False, out, n, x, pitch, rows, col, width, w, b, lo, hi)


@njit(cache=True, inline="always")
def _rows(x, c0, c1, top, left, in_h, in_w, k, sh, sw, w, b, out, lo, hi):
    """Depthwise conv (k×k) of channels [c0, c1) of x into out: output (o, i, j) has its taps start at row
    top + i·sh and column left + j·sw of x (C, bh, bw; rows contiguous), whose rows and columns inside the image
    are [in_h[0], in_h[1]) and [in_w[0], in_w[1]). Each output row in chunks of 16, rows inner (a chunk's column
    masks are then worked out once)."""
    cout, oh, ow = out.shape
    mult = cout // x.shape[0]
    cs, rs = x.strides[0] // 4, x.strides[1] // 4
    xa, oa, wa = x.ctypes.data, out.ctypes.data, w.ctypes.data
    (r_lo, r_hi), (c_lo, c_hi) = in_h, in_w
    full = (1 << k) - 1
    for c in range(c0, c1):
        for o in range(c * mult, (c + 1) * mult):
            for j0 in range(0, ow, LANES):
                col, n = left + j0 * sw, min(LANES, ow - j0)
                for i in range(oh):
                    r = top + i * sh
                    rows = full
                    if r < r_lo or r + k > r_hi:
                        rows = 0
                        for ky in range(k):
                            if r_lo <= r + ky < r_hi:
                                rows |= 1 << ky
                    depthwise_row(k, sw, rows != full, oa + 4 * ((o * oh + i) * ow + j0), n,
                                  xa + 4 * (c * cs + r * rs + col), rs, rows, col - c_lo, c_hi - c_lo,
                                  wa + 4 * o * k * k, b[o], lo, hi)


@njit(cache=True)
def _depthwise_block(x, c0, c1, top, left, in_h, in_w, k, sh, sw, w, b, out, lo, hi):
    """_rows with k and sw as constants, each of the four a copy of its loops (LLVM then drops the choice of row
    intrinsic from the innermost loop: 15-30% of the time on 7²-56² maps)."""
    if k == 3:
        if sw == 1:
            _rows(x, c0, c1, top, left, in_h, in_w, 3, sh, 1, w, b, out, lo, hi)
        else:
            _rows(x, c0, c1, top, left, in_h, in_w, 3, sh, 2, w, b, out, lo, hi)
    elif sw == 1:
        _rows(x, c0, c1, top, left, in_h, in_w, 5, sh, 1, w, b, out, lo, hi)
    else:
        _rows(x, c0, c1, top, left, in_h, in_w, 5, sh, 2, w, b, out, lo, hi)


@njit(cache=True, parallel=True)
def _depthwise(x, top, left, in_h, in_w, k, sh, sw, w, b, out, lo, hi, nt):
    """_depthwise_block on nt blocks of channels, one per thread."""
    for t in prange(nt):
        c0, c1 = block(x.shape[0], t, nt)
        _depthwise_block(x, c0, c1, top, left, in_h, in_w, k, sh, sw, w, b, out, lo, hi)


WIDE = 2 * LANES  # stride-1 output rows wider than this keep conv.py's loops, which LLVM vectorises unmasked


def fits(kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int], x: np.ndarray,
         out_w: int) -> bool:
    """Whether depthwise() computes this conv: on a vector host, a 3×3 or 5×5 kernel at strides of 1 or 2, no
    dilation, x's rows contiguous, and at stride 1 an output row of at most WIDE (3×3 on 56² maps: 0.24 ms
    against the loops' 0.20)."""
    return (ENABLED and kernel[0] == kernel[1] in (3, 5) and stride[0] in (1, 2) and stride[1] in (1, 2)
            and tuple(dilation) == (1, 1) and x.strides[2] == 4 and x.strides[0] % 4 == 0 and x.strides[1] % 4 == 0
            and (tuple(stride) != (1, 1) or out_w <= WIDE))


def depthwise(x: np.ndarray, origin: tuple[int, int], in_hw: tuple[int, int], w: np.ndarray, b: np.ndarray,
              stride: tuple[int, int], pads: tuple[int, int, int, int], region: tuple[int, int, int, int],
              out: np.ndarray, lo: np.float32, hi: np.float32, nt: int) -> None:
    """out = clamp(depthwise conv of output `region` from tile x, lo, hi); the caller has checked that x holds
    every in-image input the region reads (window.staging)."""
    (oy, ox), (h, wd), (y0, x0) = origin, in_hw, region[:2]
    _depthwise(x, y0 * stride[0] - pads[0] - oy, x0 * stride[1] - pads[1] - ox, (-oy, h - oy), (-ox, wd - ox),
               w.shape[2], *stride, w, b, out, lo, hi, nt)
