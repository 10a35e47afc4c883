"""2-D convolution of an output region: Winograd F(4×4, 3×3) where it pays (winograd.py), else on a vector host
a GEMM micro-kernel over weights packed once (blocked.py: 1×1, 3×3 and 7×7 convs of one group; 1×1s also on
channel-blocked maps, as are depthwise 3×3 and 5×5 convs by depthwise.py, any other conv on them through NCHW:
_Unblocked), else im2col into
a bounded column buffer + float32 BLAS GEMM; depthwise convs and RGB stems by vector rows read straight from the
tile (rows.py) where they fit, else depthwise by direct loops over each channel's slab (3×3 over rows, the others
over the slab's phase planes, window.phase_layout)."""

from __future__ import annotations

import weakref

import numpy as np
from numba import njit, prange

from . import blas, blocked, depthwise, rows, vectors, winograd
from .derived import per_arguments, per_weights
from .layout import whole
from .pointwise import act1, act_code, clamp_bounds, constant, epilogue, finish, inline_code
from .threads import block, count, padded
from .vectors import LANES, rowwise
from .window import phase_buffers, phase_layout, split_phases, stage, staging, window

# im2col + GEMM run in chunks of output rows whose columns fit COL_BYTES: about the size of a core's L2, so
# the GEMM reads what im2col just wrote from cache (ResNet-50's 7×7 stem, caches cold: 1.39 ms with 8 MiB
# chunks, 1.09 with 2 MiB). Tile strips that share one GEMM (conv2d_regions) may take up to STRIPS_BYTES.
COL_BYTES, STRIPS_BYTES = 2 << 20, 8 << 20


@njit(cache=True)
def _im2col_block(p, c0, c1, kh, kw, sh, sw, dh, dw, r0, r1, cols):
    """cols[(c*kh+ky)*kw+kx, i*ow+j] = p[c, (r0+i)*sh+ky*dh, j*sw+kx*dw] for output rows [r0, r1), channels
    [c0, c1)."""
    ow = cols.shape[1] // (r1 - r0)
    usw = np.uint64(sw)
    for c in range(c0, c1):
        for ky in range(kh):
            for kx in range(kw):
                k = (c * kh + ky) * kw + kx
                for i in range(r1 - r0):
                    # Unsigned indices: Numba then adds no negative-index fix-up, which kept LLVM from
                    # vectorising the unit-stride copy. No view per row: at 7×7 a view cost as much as its row.
                    # (The stride-2 convs' columns: 2.2× faster.)
                    y, x0, d0 = np.uint64((r0 + i) * sh + ky * dh), np.uint64(kx * dw), np.uint64(i * ow)
                    if sw == 1:
                        for j in range(ow):
                            cols[k, d0 + np.uint64(j)] = p[c, y, x0 + np.uint64(j)]
                    else:
                        for j in range(ow):
                            cols[k, d0 + np.uint64(j)] = p[c, y, x0 + usw * np.uint64(j)]


@njit(cache=True, parallel=True)
def _im2col(p, kh, kw, sh, sw, dh, dw, r0, r1, cols, nt):
    """_im2col_block on nt blocks of channels, one per thread."""
    for t in prange(nt):
        c0, c1 = block(p.shape[0], t, nt)
        _im2col_block(p, c0, c1, kh, kw, sh, sw, dh, dw, r0, r1, cols)


TAPS = 7  # taps of a kernel row that one pass over a channel adds: 7×7 rows whole, 5×5 rows padded (see below)


@njit(cache=True, error_model="numpy")
def _depthwise_planes_block(x, c0, c1, copy, p, q4, qf, sh, sw, width, flat, wt, b, out, oh, acc, code, alpha, lo,
                            hi):
    """Direct conv with one input channel per group (output o reads channel o // multiplier), over the phase planes
    of each channel's slab (window.phase_layout; staged one channel at a time, window.staging; qf is the planes
    flat with a zero tail, window.phase_buffers). Each pass adds TAPS taps of a kernel row to every acc[n],
    n = i·width + j: tap t reads qf[flat[ky, t] + n] with weight wt[o, ky, t]; a row is padded to a multiple of
    TAPS with taps of weight 0 that read the zero tail (0 × 0 adds nothing, exactly). One loop per tap made
    acc's loads and stores, and each short loop's set-up, the cost: ConvNeXt's 7×7 at 14², 384 channels:
    0.53 → 0.21 ms (0.16 with _row_taps kept). The ow first values of each row of acc are the output row.
    Channels [c0, c1) (_depthwise_planes splits them over the threads), into the top oh rows of out's planes."""
    cout, ow = out.shape[0], out.shape[2]
    mult = cout // x.shape[0]
    kh, kt = flat.shape
    m = (oh - 1) * width + ow
    for c in range(c0, c1):
        stage(x, c, copy, p, 0)
        if sh > 1 or sw > 1:
            split_phases(p, sh, sw, q4)
        for o in range(c * mult, (c + 1) * mult):
            bo = b[o]
            for n in range(m):
                acc[n] = bo
            for ky in range(kh):
                for t in range(0, kt, TAPS):  # (the weights and offsets as scalars: LLVM then keeps them in registers)
                    w0, w1, w2, w3 = wt[o, ky, t], wt[o, ky, t + 1], wt[o, ky, t + 2], wt[o, ky, t + 3]
                    w4, w5, w6 = wt[o, ky, t + 4], wt[o, ky, t + 5], wt[o, ky, t + 6]
                    f0, f1, f2, f3 = (np.uint64(flat[ky, t]), np.uint64(flat[ky, t + 1]), np.uint64(flat[ky, t + 2]),
                                      np.uint64(flat[ky, t + 3]))
                    f4, f5, f6 = np.uint64(flat[ky, t + 4]), np.uint64(flat[ky, t + 5]), np.uint64(flat[ky, t + 6])
                    for n in range(m):  # (unsigned indices: see _im2col)
                        un = np.uint64(n)
                        acc[un] = (acc[un] + w0 * qf[f0 + un] + w1 * qf[f1 + un] + w2 * qf[f2 + un]
                                   + w3 * qf[f3 + un] + w4 * qf[f4 + un] + w5 * qf[f5 + un] + w6 * qf[f6 + un])
            for i in range(oh):
                base = np.uint64(i * width)
                for j in range(ow):
                    out[o, i, j] = act1(acc[base + np.uint64(j)], code, alpha, lo, hi)


@njit(cache=True, parallel=True)
def _depthwise_planes(x, copy, ps, q4s, qfs, sh, sw, width, flat, wt, b, out, oh, accs, code, alpha, lo, hi):
    """_depthwise_planes_block on a block of channels per thread, each with its own buffers (ps[t], …)."""
    nt = ps.shape[0]
    for t in prange(nt):
        c0, c1 = block(x.shape[0], t, nt)
        _depthwise_planes_block(x, c0, c1, copy, ps[t], q4s[t], qfs[t], sh, sw, width, flat, wt, b, out, oh, accs[t],
                                code, alpha, lo, hi)


def _depthwise(x: np.ndarray, origin: tuple[int, int], in_hw: tuple[int, int], w: np.ndarray, b: np.ndarray,
               stride: tuple[int, int], pads: tuple[int, int, int, int], dilation: tuple[int, int],
               region: tuple[int, int, int, int], out: np.ndarray, code: int, alpha, lo, hi) -> None:
    """Depthwise conv of output `region` from tile x into the top rows of out's planes (C-contiguous: layout.whole):
    3×3 at stride 1 or 2 by _depthwise3x3, any other kernel, stride and dilation over phase planes
    (_depthwise_planes)."""
    kernel = w.shape[2:]
    slab_hw, copy = staging(x, origin, in_hw, kernel, stride, pads, dilation, region)
    (oh, ow), nt = (region[2] - region[0], region[3] - region[1]), min(count(), x.shape[0])
    if kernel == (3, 3) and stride[0] == stride[1] in (1, 2) and dilation == (1, 1):
        split = stride[0] == 2 and ow >= SPLIT_FROM
        e = np.empty((nt, 1, 2, slab_hw[0], ow + 1) if split else (nt, 1, 2, 0, 0), np.float32)
        _depthwise3x3(x, copy, np.zeros((nt, 1, *slab_hw), np.float32), e, w, b, stride[0], out, oh, code, alpha, lo,
                      hi)
        return
    kh, kw = kernel
    height, width, plane, offset = phase_layout(kernel, stride, dilation, (oh, ow))
    m = (oh - 1) * width + ow
    p, q4, qf = phase_buffers(slab_hw, 0.0, stride, height, width, 1, m, nt)  # (zero tail: what padding taps read)
    wt = _row_taps(w)
    flat = np.full(wt.shape[1:], q4[0].size, np.int64)
    flat[:, :kw] = (plane * (height * width) + offset).reshape(kh, kw)
    _depthwise_planes(x, copy, p, q4, qf, *stride, width, flat, wt, b, out, oh, np.empty((nt, padded(m)), np.float32),
                      code, alpha, lo, hi)


@per_weights
def _row_taps(w: np.ndarray) -> np.ndarray:
    """Depthwise weights (Cout, 1, kh, kw) as (Cout, kh, kt): each kernel row padded with zero weights to a
    multiple of TAPS (_depthwise_planes)."""
    cout, _, kh, kw = w.shape
    wt = np.zeros((cout, kh, -(-kw // TAPS) * TAPS), np.float32)
    wt[:, :, :kw] = w[:, 0]
    return wt


SPLIT_FROM = 10  # output columns from which a stride-2 3×3 depthwise conv reads its input split (bench kernels)


@njit(cache=True)
def _depthwise3x3_block(x, c0, c1, copy, p, e, w, b, s, out, oh, code, alpha, lo, hi):
    """3×3 depthwise at stride 1 or 2 (no dilation), each channel's slab staged in p (window.staging): the nine
    taps in one pass over each output row (no accumulator traffic between taps). Wide stride-2 rows read e, p's
    even and odd columns (window.split_phases), so that every load is unit-stride; otherwise (e empty) p itself:
    on rows under SPLIT_FROM outputs the split costs more than it saves (MobileNetV2's 576 channels at 14² → 7²:
    0.076 against 0.050 ms). Unsigned indices and no row views, as in _im2col. Channels [c0, c1), into the top oh
    rows of out's planes."""
    cout, ow = out.shape[0], out.shape[2]
    mult = cout // x.shape[0]
    split = e.shape[2] > 0
    us, u0, u1, u2 = np.uint64(s), np.uint64(0), np.uint64(1), np.uint64(2)
    for c in range(c0, c1):
        stage(x, c, copy, p, 0)
        if split:
            split_phases(p, 1, 2, e)
        for o in range(c * mult, (c + 1) * mult):
            w00, w01, w02 = w[o, 0, 0, 0], w[o, 0, 0, 1], w[o, 0, 0, 2]
            w10, w11, w12 = w[o, 0, 1, 0], w[o, 0, 1, 1], w[o, 0, 1, 2]
            w20, w21, w22 = w[o, 0, 2, 0], w[o, 0, 2, 1], w[o, 0, 2, 2]
            bo = b[o]
            for i in range(oh):
                r = np.uint64(s * i)
                if split:
                    for j in range(ow):
                        out[o, i, j] = act1(bo + w00 * e[u0, 0, r, j] + w01 * e[u0, 1, r, j]
                                            + w02 * e[u0, 0, r, j + 1] + w10 * e[u0, 0, r + u1, j]
                                            + w11 * e[u0, 1, r + u1, j] + w12 * e[u0, 0, r + u1, j + 1]
                                            + w20 * e[u0, 0, r + u2, j] + w21 * e[u0, 1, r + u2, j]
                                            + w22 * e[u0, 0, r + u2, j + 1], code, alpha, lo, hi)
                else:
                    for j in range(ow):
                        q = us * np.uint64(j)
                        out[o, i, j] = act1(bo + w00 * p[u0, r, q] + w01 * p[u0, r, q + u1] + w02 * p[u0, r, q + u2]
                                            + w10 * p[u0, r + u1, q] + w11 * p[u0, r + u1, q + u1]
                                            + w12 * p[u0, r + u1, q + u2] + w20 * p[u0, r + u2, q]
                                            + w21 * p[u0, r + u2, q + u1] + w22 * p[u0, r + u2, q + u2], code, alpha,
                                            lo, hi)


@njit(cache=True, parallel=True)
def _depthwise3x3(x, copy, ps, es, w, b, s, out, oh, code, alpha, lo, hi):
    """_depthwise3x3_block on a block of channels per thread, each with its own p and e (ps[t], es[t])."""
    nt = ps.shape[0]
    for t in prange(nt):
        c0, c1 = block(x.shape[0], t, nt)
        _depthwise3x3_block(x, c0, c1, copy, ps[t], es[t], w, b, s, out, oh, code, alpha, lo, hi)


def _gemm_conv(p: np.ndarray, wm: np.ndarray, out: np.ndarray, kernel: tuple[int, int],
               stride: tuple[int, int], dilation: tuple[int, int], step: int, cols: np.ndarray | None) -> None:
    """out (Cout, oh, ow) = wm[g] @ im2col(group g of p) for each group g (wm (groups, Cout/groups, k)), `step`
    output rows at a time: one im2col and one batch of products per step, whatever the groups (a loop over the
    groups cost ~8 µs a group: RegNetY's 55-group 3×3 convs at 7², 0.42 ms each).

    cols is the flat column buffer, or None for a 1x1 stride-1 conv whose slab already is the column matrix.
    """
    groups, cout_g, k = wm.shape
    oh, ow = out.shape[1:]
    flat = out.reshape(groups, cout_g, oh * ow)
    for r0 in range(0, oh, step):
        r1 = min(oh, r0 + step)
        n = (r1 - r0) * ow
        if cols is None:
            col = p[:, r0:r1].reshape(groups, k, n)
        else:
            col = cols[:groups * k * n].reshape(groups, k, n)
            _im2col(p, *kernel, *stride, *dilation, r0, r1, col.reshape(groups * k, n), count())
        blas.batched(wm, col, flat[:, :, r0 * ow:r1 * ow])


@per_arguments
def winograd_pays(w_shape: tuple, stride: tuple, dilation: tuple, out_hw: tuple, gemm: bool = False) -> bool:
    """Whether a 3×3 stride-1 conv runs faster by Winograd F(4×4, 3×3) than by im2col (measured with caches
    cold, one thread, docs/BENCHMARKS.md): from 16 input channels, 14 output rows and columns, and an output of
    16·28² pixel-channels (min(cin, cout) × rows × cols: 64 channels from 14², 16 from 28²). Below, the
    transforms and the GEMMs' short rows eat the saving; a thinner region wastes most of its 4×4 tiles, as a
    halo strip would. gemm: the vector GEMM takes the conv (blocked.takes); then from WINOGRAD_BESIDE_GEMM rows
    and columns."""
    least = WINOGRAD_BESIDE_GEMM if gemm else 14
    return (tuple(w_shape[2:]) == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)
            and w_shape[1] >= 16 and min(out_hw) >= least
            and min(w_shape[:2]) * out_hw[0] * out_hw[1] >= 16 * 28 * 28)


# Output rows and columns from which Winograd runs a 3×3 the vector GEMM takes. Inside a model its transformed weights
# (4× the weights) and its transform buffers come from memory each call, and pay only over enough 4×4 tiles; the
# GEMM's tiles of 14 pixels waste none on rows of 14 or 28. With 14 here, one thread, ResNet-50 at 224² (its third
# stage's 256→256 at 14²) took 1.04-1.08× this rule's time and VGG-16 (512→512 at 14²) 1.03-1.04× (bench models
# --against). Alone, weights cold, the two tie at 14² (256→256: 1.61 against 1.75 ms; 512→512: 7.3 against 7.6) and
# Winograd wins from 21² (256→256 at 21²: 3.8 against 4.5; at 24², 3.9 against 5.1; 128→128 at 28², 1.28 against 1.44).
WINOGRAD_BESIDE_GEMM = 21


def _slab(x: np.ndarray, origin: tuple[int, int], in_hw: tuple[int, int], kernel: tuple[int, int],
          stride: tuple[int, int], pads: tuple[int, int, int, int], dilation: tuple[int, int],
          region: tuple[int, int, int, int]) -> np.ndarray:
    """The contiguous zero-padded input slab that output `region` reads."""
    return np.ascontiguousarray(window(x, origin, in_hw, kernel, stride, pads, dilation, region, 0.0))


def _operands(w: np.ndarray, b: np.ndarray | None, act: str, alpha: float, lo: float, hi: float) -> tuple:
    """float32 weights, the bias (zeros for none) and the activation's arguments, as the kernels take them: those
    with the activation the kernels' loops apply themselves (pointwise.inline_code), and the whole ones."""
    return *_weights(w, b), *_activation(act, alpha, lo, hi)


def _weights(w: np.ndarray, b: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """float32 weights and bias (zeros for none)."""
    return np.asarray(w, np.float32), constant(w.shape[0], 0.0) if b is None else np.asarray(b, np.float32)


@per_arguments
def _activation(act: str, alpha: float, lo: float, hi: float) -> tuple[tuple, tuple]:
    """(code, alpha, lo, hi) of the part of activation `act` a kernel's loop applies (inline_code), and of all of it."""
    whole = (act_code(act), np.float32(alpha), np.float32(lo), np.float32(hi))
    return (inline_code(whole[0]), *whole[1:]), whole


class ConvCall:
    """conv2d of one output region for an input laid out as x and a destination laid out as into: the path, the
    packed weights and a vector kernel's arguments worked out once, so that a call passes its arrays alone. Every
    inference runs the same regions on buffers of the same layouts, and working it all out on every call took
    8 µs of a 7² 1×1 conv's 10 (more than the conv on a rank's thin border strips). It holds no reference to w or
    b (conv2d keeps calls as long as w lives): the kernels' copies of them, and a weak reference to b."""

    def __init__(self, x: np.ndarray, origin: tuple[int, int], in_hw: tuple[int, int], w: np.ndarray,
                 b: np.ndarray | None, stride: tuple[int, int], pads: tuple[int, int, int, int],
                 dilation: tuple[int, int], groups: int, region: tuple[int, int, int, int], act: str, alpha: float,
                 lo: float, hi: float, residual: bool, into: np.ndarray | None) -> None:
        cout, cin_g, kh, kw = w.shape
        xin, bout = blocked.blocked(x), into is not None and into.ndim == 4
        if x.shape[0] * (LANES if xin else 1) != cin_g * groups or cout % groups:
            raise ValueError(f"conv: input has {x.shape[0]} channels, weights {w.shape} with {groups} groups")
        y0, x0, y1, x1 = region
        self.shape = (cout, max(0, y1 - y0), max(0, x1 - x0))
        if bout:  # (channel-blocked: blocked.blocked)
            if cout % LANES:
                raise ValueError(f"conv: {cout} output channels cannot be channel-blocked in blocks of {LANES}")
            self.shape = (cout // LANES, *self.shape[1:], LANES)
        if into is not None and (into.shape != self.shape or not (blocked.blocked(into) if bout else rowwise(into))):
            raise ValueError(f"conv: output {self.shape} cannot go to a {into.dtype} array {into.shape}, strides "
                             f"{into.strides}")
        self.layout, self.bias = _layout(x), None if b is None else weakref.ref(b)
        self.args = (origin, in_hw, stride, pads, dilation, groups, region)
        w, b, epi, self.whole = _operands(w, b, act, alpha, lo, hi)
        # (the launch adds the residual: a channel-blocked output's, in the vector GEMM's registers, or _Unblocked)
        self.fused = residual and bout
        if residual and not self.fused:  # the kernels' own loops then apply the bias alone; _finish does the rest
            epi = (0, *epi[1:])
        self.epi, self.launch, self.direct, self.wino = epi, None, False, False
        if 0 in self.shape:
            return
        layouts = xin or bout  # (the vector GEMM and depthwise.py alone read and write channel-blocked maps)
        if xin and bout and not residual and epi == self.whole and depthwise.takes(w.shape, groups, stride, dilation):
            self.launch, self.direct = depthwise.launcher(x, origin, in_hw, w, b, stride, pads, region, into,
                                                          *clamp_bounds(*epi), count()), True
            return
        ob = 0 if layouts else rows.kind(w.shape, groups, stride, dilation, x, self.shape[2])
        lanes = -1 if ob else blocked.lanes(w.shape, groups, stride, pads, dilation, x, self.shape[1:3], bout=bout)
        # (a region the vector GEMM does not take, or a 3×3 writing a blocked map with a residual, which it adds to a
        # 1×1's sums alone: NCHW, on its window alone)
        if layouts and (lanes <= 0 or self.fused and (kh, kw) != (1, 1)):
            self.launch = _Unblocked(x, origin, in_hw, w, b, stride, pads, dilation, groups, region, act, alpha, lo,
                                     hi, residual, into)
            self.direct, self.fused, self.whole = into is not None, True, (0, *self.whole[1:])  # (all done in it)
            return
        self.wino = not layouts and groups == 1 and winograd_pays(w.shape, stride, dilation, self.shape[1:], lanes >= 0)
        lanes = -1 if self.wino else lanes
        # Straight into `into` where the kernel can write it and what is left after it (a residual, the rest of an
        # activation: _finish) can be added there in place, on into's planes (layout.planes): the vector kernels at
        # into's row pitch, if the vector GEMM also takes the conv with into's rows apart (a 1×1 it runs over the
        # map's rows as one run: rows of 10, not; of 14 or more, yes); the depthwise and Winograd loops, which index
        # their output, into the C-contiguous buffer whose planes' top rows into is (layout.whole).
        planar = into is not None and (into.flags.c_contiguous if bout else whole(into) is not None)
        direct = into is not None and ((not residual or self.fused) and epi == self.whole or planar)
        if direct and lanes >= 0:
            pitched = blocked.lanes(w.shape, groups, stride, pads, dilation, x, self.shape[1:3],
                                    into.strides[1] // into.strides[2], bout)
            direct, lanes = (True, pitched) if pitched >= 0 else (False, lanes)
        self.dw = groups > 1 and w.shape[1] == 1 and not ob
        self.direct = direct and (lanes >= 0 or ob > 0 or ((self.dw or self.wino) and planar))
        out = into if self.direct else np.empty(self.shape, np.float32)
        bounds, nt = clamp_bounds(*epi), count()
        if lanes >= 0:
            self.launch = blocked.launcher(x, origin, in_hw, w, b, stride, pads, region, out, *bounds, lanes, nt,
                                           self.fused)
        elif ob:
            self.launch = rows.launcher(x, origin, in_hw, kh, stride, pads, region, ob, rows.FMA, _held(w), _held(b),
                                        out, *bounds, nt)

    def __call__(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, residual: np.ndarray | None = None,
                 into: np.ndarray | None = None) -> np.ndarray:
        """The conv of x by w and b (those this call was made with), x laid out as the x it was made for, residual
        added if it was made for one, into `into` (laid out as its into) or a new array."""
        if _layout(x) != self.layout:  # (the kernels read x by address)
            raise ValueError(f"conv: this call reads a {self.layout} input, not a {_layout(x)} one")
        if residual is not None and residual.ndim != len(self.shape):
            raise ValueError(f"conv: a residual {residual.shape} to add to an output {self.shape}")
        if 0 in self.shape:
            return np.empty(self.shape, np.float32) if into is None else into
        if self.launch is not None:
            out = into if self.direct else np.empty(self.shape, np.float32)
            if self.fused:  # (the kernel adds it)
                self.launch(x, out, residual)
                residual = None
            else:
                self.launch(x, out)
            return _finish(out, self.whole, residual) if self.direct else _placed(_finish(out, self.whole, residual),
                                                                                   into)
        origin, in_hw, stride, pads, dilation, groups, region = self.args
        w, b = _weights(w, b)
        (cout, _, kh, kw), (oh, ow) = w.shape, self.shape[1:]
        out = into if self.direct else np.empty(self.shape, np.float32)
        if self.dw:
            _depthwise(x, origin, in_hw, w, b, stride, pads, dilation, region, whole(out), *self.epi)
            _finish(out, self.whole, residual)
            return out if self.direct else _placed(out, into)
        p = _slab(x, origin, in_hw, (kh, kw), stride, pads, dilation, region)
        if self.wino:
            winograd.conv3x3(p, w, b, whole(out), *self.epi, oh)
            _finish(out, self.whole, residual)
            return out if self.direct else _placed(out, into)
        k = w[0].size
        step = min(oh, max(1, COL_BYTES // (4 * groups * k * ow)))
        cols = None if (kh, kw, *stride) == (1, 1, 1, 1) else np.empty(groups * k * step * ow, np.float32)
        _gemm_conv(p, w.reshape(groups, cout // groups, k), out, (kh, kw), stride, dilation, step, cols)
        epilogue(out, constant(cout, 1.0), b, *self.whole, residual)
        return _placed(out, into)


class _Unblocked:
    """launch(x, out[, residual]) for a conv ConvCall would run on a channel-blocked input or output, but the vector
    GEMM, which alone reads and writes them, does not take (a thin border strip of a tile, a padded 1×1): its window
    of x and its residual as NCHW, the conv by a ConvCall on them, its output blocked where `into` is."""

    def __init__(self, x: np.ndarray, origin: tuple[int, int], in_hw: tuple[int, int], w: np.ndarray,
                 b: np.ndarray | None, stride: tuple[int, int], pads: tuple[int, int, int, int],
                 dilation: tuple[int, int], groups: int, region: tuple[int, int, int, int], act: str, alpha: float,
                 lo: float, hi: float, residual: bool, into: np.ndarray | None) -> None:
        self.window = (origin, in_hw, w.shape[2:], stride, pads, dilation, region)
        slab = self.nchw(x)
        self.blocked_out = into is not None and into.ndim == 4
        self.call = ConvCall(slab, (0, 0), slab.shape[1:], w, b, stride, (0,) * 4, dilation, groups,
                             (0, 0, region[2] - region[0], region[3] - region[1]), act, alpha, lo, hi, residual, None)
        self.w, self.b = weakref.ref(w), None if b is None else weakref.ref(b)

    def nchw(self, x: np.ndarray) -> np.ndarray:
        """The (padded) window of x the region reads, NCHW."""
        slab = window(x, *self.window, 0.0)
        return blocked.from_blocked(slab) if slab.ndim == 4 else np.ascontiguousarray(slab)

    def __call__(self, x: np.ndarray, out: np.ndarray, residual: np.ndarray | None = None) -> None:
        r = None if residual is None else blocked.from_blocked(residual) if residual.ndim == 4 else residual
        y = self.call(self.nchw(x), self.w(), None if self.b is None else self.b(), r)
        out[...] = blocked.to_blocked(y) if self.blocked_out else y


def _layout(a: np.ndarray) -> tuple:
    """What a prepared call relies on in an array: its shape, strides and type."""
    return a.shape, a.strides, a.dtype


def conv2d(x: np.ndarray, origin: tuple[int, int], in_hw: tuple[int, int], w: np.ndarray,
           b: np.ndarray | None, stride: tuple[int, int], pads: tuple[int, int, int, int],
           dilation: tuple[int, int], groups: int, region: tuple[int, int, int, int], act: str = "",
           alpha: float = 0.0, lo: float = 0.0, hi: float = 0.0, residual: np.ndarray | None = None,
           into: np.ndarray | None = None) -> np.ndarray:
    """Conv (+ bias + residual + fused activation) of output `region` from an input tile buffer x (Cin, bh, bw);
    residual: None, or the region of a map added before the activation (a fused residual add).

    into: None (a new C-contiguous array is returned), or the float32 array the output goes to and is returned, its
    rows contiguous (a view of a tile buffer with room for a halo): the vector kernels write it where nothing is
    left to add after them, the others' result is copied in (a rank's layer otherwise copied each output whole).
    An empty region returns an empty (Cout, rows, cols) array without reading x.

    The call is prepared once per weights, geometry and layouts (ConvCall), and kept while w lives.
    """
    key = (_layout(x), tuple(origin), tuple(in_hw), id(b), tuple(stride), tuple(pads), tuple(dilation), groups,
           tuple(region), act, alpha, lo, hi, residual is not None, None if into is None else _layout(into), count(),
           vectors.ENABLED)
    calls = _calls(w)
    call = calls.get(key)
    if call is None or (b is not None and call.bias() is not b):  # (an id once b's, now another array's)
        if len(calls) >= CALLS_PER_WEIGHTS:  # (D3 moves the cuts at run time: its old regions' calls go)
            del calls[next(iter(calls))]
        call = calls[key] = ConvCall(x, origin, in_hw, w, b, stride, pads, dilation, groups, region, act, alpha, lo,
                                     hi, residual is not None, into)
    return call(x, w, b, residual, into)


CALLS_PER_WEIGHTS = 64  # calls kept per weight array, the oldest dropped first (a rank's layer runs 1-5 regions)


@per_weights
def _calls(w: np.ndarray) -> dict:
    """The conv calls prepared with weights w (conv2d), dropped with w."""
    return {}


@per_weights
def _held(a: np.ndarray) -> np.ndarray:
    """A copy of weights a, kept while a lives: what a prepared call's kernels read (the call holds no reference
    to a, which would keep a and its calls alive for good)."""
    return a.copy()


def _placed(out: np.ndarray, into: np.ndarray | None) -> np.ndarray:
    """out, or into with out copied in."""
    if into is None:
        return out
    into[...] = out
    return into


def _finish(out: np.ndarray, whole: tuple, residual: np.ndarray | None) -> np.ndarray:
    """After a kernel that added the bias and the activation its loop applies (inline_code): the rest of the
    activation, or the residual and then the whole activation (one pass either way)."""
    if residual is None:
        finish(out, *whole)
    else:
        epilogue(out, constant(out.shape[0], 1.0), constant(out.shape[0], 0.0), *whole, residual)
    return out


class ConvRegions:
    """conv2d_regions prepared, as ConvCall is conv2d: for an input laid out as x, the regions that share one GEMM
    worked out once and the others' ConvCalls made once (a rank's every conv step, each inference)."""

    def __init__(self, x: np.ndarray, origin: tuple[int, int], in_hw: tuple[int, int], w: np.ndarray,
                 b: np.ndarray | None, stride: tuple[int, int], pads: tuple[int, int, int, int],
                 dilation: tuple[int, int], groups: int, regions: list[tuple[int, int, int, int]], act: str = "",
                 alpha: float = 0.0, lo: float = 0.0, hi: float = 0.0, residual: bool = False,
                 into: list[np.ndarray] | None = None) -> None:
        cout, cin_g, kh, kw = w.shape
        self.regions, self.geometry, self.activation = regions, (origin, in_hw, stride, pads, dilation), (act, alpha,
                                                                                                           lo, hi)
        self.hw = [(max(0, r[2] - r[0]), max(0, r[3] - r[1])) for r in regions]
        k, n = cin_g * kh * kw, [h * wd for h, wd in self.hw]
        im2col = groups == 1 and cin_g == x.shape[0] and (kh, kw, *stride) != (1, 1, 1, 1)  # (1×1: no columns)
        shared = [i for i, (h, wd) in enumerate(self.hw) if im2col and h * wd
                  and not winograd_pays(w.shape, stride, dilation, (h, wd))
                  and not blocked.takes(w.shape, groups, stride, pads, dilation, x, (h, wd))]
        if len(shared) < 2 or 4 * k * sum(n[i] for i in shared) > STRIPS_BYTES:
            shared = []
        self.shared, self.offsets = shared, np.cumsum([0] + [n[i] for i in shared])
        dst = into or [None] * len(regions)
        self.calls = [None if i in shared else ConvCall(x, origin, in_hw, w, b, stride, pads, dilation, groups, r, act,
                                                        alpha, lo, hi, residual, dst[i]) for i, r in enumerate(regions)]

    def __call__(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None,
                 residuals: list[np.ndarray] | None = None, into: list[np.ndarray] | None = None
                 ) -> list[np.ndarray]:
        """Each region's conv of x by w and b, with its residual, into its destination (as the calls were made)."""
        res, dst = residuals or [None] * len(self.regions), into or [None] * len(self.regions)
        outs = [None if call is None else call(x, w, b, res[i], dst[i]) for i, call in enumerate(self.calls)]
        if not self.shared:
            return outs
        (origin, in_hw, stride, pads, dilation), (cout, cin_g, kh, kw) = self.geometry, w.shape
        k = cin_g * kh * kw
        cols = np.empty((k, self.offsets[-1]), np.float32)
        for i, c0, c1 in zip(self.shared, self.offsets[:-1], self.offsets[1:], strict=True):
            col = np.empty((k, c1 - c0), np.float32)
            _im2col(_slab(x, origin, in_hw, (kh, kw), stride, pads, dilation, self.regions[i]), kh, kw, *stride,
                    *dilation, 0, self.hw[i][0], col, count())
            cols[:, c0:c1] = col
        w, b, _, whole = _operands(w, b, *self.activation)
        y = blas.matmul(w.reshape(cout, k), cols, np.empty((cout, cols.shape[1]), np.float32))
        for i, c0, c1 in zip(self.shared, self.offsets[:-1], self.offsets[1:], strict=True):
            out = np.ascontiguousarray(y[:, c0:c1]).reshape(cout, *self.hw[i])
            epilogue(out, constant(cout, 1.0), b, *whole, res[i])
            outs[i] = _placed(out, dst[i])
        return outs


def conv2d_regions(x: np.ndarray, origin: tuple[int, int], in_hw: tuple[int, int], w: np.ndarray,
                   b: np.ndarray | None, stride: tuple[int, int], pads: tuple[int, int, int, int],
                   dilation: tuple[int, int], groups: int, regions: list[tuple[int, int, int, int]], act: str = "",
                   alpha: float = 0.0, lo: float = 0.0, hi: float = 0.0,
                   residuals: list[np.ndarray] | None = None, into: list[np.ndarray] | None = None
                   ) -> list[np.ndarray]:
    """conv2d of several output regions of one tile (an overlap's border strips around its core), with each
    region's residual and destination (conv2d's into) if given. The regions on the im2col path share one GEMM: the
    weights then stream from memory once, not once per region (at 8 ranks, VGG-16's 512-channel layers spent more
    time streaming weights for four 1-pixel strips than on the tile's core). Every output is C-contiguous or its
    destination, as conv2d's. A caller that runs the same regions again keeps a ConvRegions instead."""
    if len(regions) == 1:  # (nothing to share: the reference's every call, a tile's core without borders)
        return [conv2d(x, origin, in_hw, w, b, stride, pads, dilation, groups, regions[0], act, alpha, lo, hi,
                       residuals[0] if residuals else None, into[0] if into else None)]
    return ConvRegions(x, origin, in_hw, w, b, stride, pads, dilation, groups, regions, act, alpha, lo, hi,
                       residuals is not None, into)(x, w, b, residuals, into)
