"""Spatially local kernels (activations, per-channel affine, LRN, merges, head ops): any tile works as is."""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from .derived import per_arguments, per_weights
from .layout import planes
from .threads import block, count

# Fused and standalone activations. Parameters: leakyrelu, elu alpha; clip lo, hi; hardsigmoid alpha (slope) and
# lo (offset, ONNX's beta); the others none.
ACTS = {"": 0, "relu": 1, "clip": 2, "leakyrelu": 3, "sigmoid": 4, "hardsigmoid": 5, "hardswish": 6, "tanh": 7,
        "elu": 8, "softplus": 9, "gelu": 10, "silu": 11}


def act_code(act: str) -> int:
    """Numeric code of a fused activation name, for the Numba epilogues."""
    if act not in ACTS:
        raise ValueError(f"unknown activation {act!r}; expected one of {sorted(ACTS)}")
    return ACTS[act]


@intrinsic
def _float_from_bits(typingctx, i):
    """The float32 whose bits are int32 i (2**n is one shift away)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))
    return types.float32(types.int32), codegen


_F = np.float32
_EXP = tuple(_F(c) for c in (1.44269504088896341, 0.693359375, -2.12194440e-4, 1.9875691500e-4, 1.3981999507e-3,
                              8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1, -87.3365447504019,
                              88.3762626647949))


@njit(cache=True, inline="always")
def exp32(x):
    """e**x of float32 x as Cephes' expf computes it (x = n·ln2 + r, |r| ≤ ln2/2, a degree-5 polynomial in r, 2**n
    from its bits), clamped to the normal floats: within 1 ulp, and arithmetic only, so LLVM vectorises the loop
    it is in (libm's expf is a call per element: SiLU epilogues ran at 10 ns a value, EfficientNet-B0 13× slower
    than onnxruntime)."""
    log2e, c1, c2, p0, p1, p2, p3, p4, p5, lo, hi = _EXP
    x = min(max(x, lo), hi)
    n = np.floor(x * log2e + _F(0.5))
    r = x - n * c1 - n * c2
    y = (((((p0 * r + p1) * r + p2) * r + p3) * r + p4) * r + p5) * (r * r) + r + _F(1.0)
    return y * _float_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))


_TANH = tuple(_F(c) for c in (-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1,
                               -3.33332819422e-1))
# Abramowitz & Stegun 7.1.26: 1 - erf(z) = t·(a1 + t·(a2 + …)) e^(-z²), t = 1 / (1 + p·z), z ≥ 0; error ≤ 1.5e-7
_ERFC = tuple(_F(c) for c in (0.3275911, 0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429))


@njit(cache=True, inline="always")
def tanh32(v):
    """tanh as Cephes' tanhf: an odd polynomial below 0.625, 1 - 2 / (e^2|v| + 1) above (vectorises, as exp32)."""
    a = abs(v)
    z = v * v
    q0, q1, q2, q3, q4 = _TANH
    small = ((((q0 * z + q1) * z + q2) * z + q3) * z + q4) * z * v + v
    big = _F(1.0) - _F(2.0) / (exp32(_F(2.0) * a) + _F(1.0))
    return small if a < _F(0.625) else (big if v >= 0 else -big)


@njit(cache=True, inline="always")
def gelu32(v):
    """Exact (erf) GELU, 0.5·v·(1 + erf(v/√2)), with erf by A&S 7.1.26 on |v|/√2; for v < 0 the 1 + erf is the
    series' own small value, not a difference of two near-equal ones."""
    p, a1, a2, a3, a4, a5 = _ERFC
    z = abs(v) * _F(0.7071067811865476)
    t = _F(1.0) / (_F(1.0) + p * z)
    q = t * (a1 + t * (a2 + t * (a3 + t * (a4 + t * a5)))) * exp32(-z * z)  # 1 - erf(z)
    return _F(0.5) * v * ((_F(2.0) - q) if v >= 0 else q)


@njit(cache=True, inline="always")
def act1(v, code, alpha, lo, hi):
    """Activation `code` of one float32 value (shared by every epilogue so fused and standalone ops agree).

    None, relu and clip are one branch-free clamp behind one test, which LLVM hoists out of a caller's loop and
    then vectorises the loop (tested one by one, some of them left a loop scalar, 2-3× slower: the epilogue of
    every conv without an activation, the residual add's relu). NaN passes through as it is."""
    if code <= 2:
        a = lo if code == 2 else (np.float32(0.0) if code == 1 else np.float32(-np.inf))
        return min(max(v, a), hi if code == 2 else np.float32(np.inf))
    if code == 3:
        return v if v >= 0 else v * alpha
    if code == 4 or code == 11:  # split by sign so exp never overflows
        e = exp32(-abs(v))
        s = np.float32(1.0) / (np.float32(1.0) + e) if v >= 0 else e / (np.float32(1.0) + e)
        return s if code == 4 else v * s
    if code == 5:
        return min(max(alpha * v + lo, np.float32(0.0)), np.float32(1.0))
    if code == 6:
        return v * min(max(v / np.float32(6.0) + np.float32(0.5), np.float32(0.0)), np.float32(1.0))
    if code == 7:
        return tanh32(v)
    if code == 8:  # (e^v - 1 in float32 is within 1e-7 of expm1 in absolute terms)
        return v if v >= 0 else alpha * (exp32(v) - np.float32(1.0))
    if code == 9:  # log(1 + e^v) without overflow
        return max(v, np.float32(0.0)) + np.float32(math.log1p(math.exp(-abs(v))))
    if code == 10:
        return gelu32(v)
    return v


def _activation_pass(code: int):
    """y = act(y) in place over the first n values of each row of 2-D y, for one activation `code`, a compile-time
    constant here: act1 folds to that activation's branch, and the loop vectorises (with the code a run-time value,
    it stays scalar). The threads share the rows' n values, in order."""
    @njit(cache=True, error_model="numpy", parallel=True)  # (Python's error model: a test per division, no vectors)
    def run(y, n, alpha, lo, hi, nt):
        for t in prange(nt):
            j0, j1 = block(y.shape[0] * n, t, nt)
            for r in range(j0 // n, -(-j1 // n)):
                k0, k1 = max(j0 - r * n, 0), min(j1 - r * n, n)
                for k in range(np.uint64(k0), np.uint64(k1)):  # (see threads.py)
                    y[r, k] = act1(y[r, k], code, alpha, lo, hi)
    return run


_PASSES = {code: _activation_pass(code) for code in ACTS.values() if code > 2}


def clamp_bounds(code: int, alpha: np.float32, lo: np.float32, hi: np.float32) -> tuple[np.float32, np.float32]:
    """The bounds act1 clamps to for an inline activation `code` (none, relu, clip; alpha unused): for kernels that
    clamp whole vectors themselves (rows.py, blocked.py)."""
    return (np.float32(-np.inf) if code == 0 else (np.float32(0.0) if code == 1 else lo),
            hi if code == 2 else np.float32(np.inf))


def inline_code(code: int) -> int:
    """The activation a producing loop applies itself: none, relu and clip (one branch-free clamp, vectorised
    with the code a run-time value); the others finish() applies after it."""
    return code if code <= 2 else 0


def finish(y: np.ndarray, code: int, alpha, lo, hi) -> None:
    """Apply activation `code` in place to y (C-contiguous, or a buffer's map: layout.planes), if it is one its
    producer left out (inline_code): one vectorised pass (EfficientNet-B0's SiLU epilogues ran at 10 ns a value
    inside the producers' loops)."""
    if code > 2 and y.size:
        _PASSES[code](*_planes(y), np.float32(alpha), np.float32(lo), np.float32(hi), count())


def _planes(y: np.ndarray) -> tuple[np.ndarray, int]:
    """layout.planes(y), which an in-place pass needs (a reshaped copy would take its results)."""
    p = planes(y)
    if p is None:
        raise ValueError(f"an in-place pass takes a C-contiguous array or a buffer's map, not strides {y.strides}")
    return p


def _epilogue_kernel(residual: bool):
    """y = act(y · scale[row] + shift[row]), plus res when `residual` (a compile-time constant: a run-time test
    in the loop would keep it scalar), in place over the first n values of each row of 2-D y (and of res)."""
    @njit(cache=True, parallel=True)
    def run(y, n, scale, shift, res, code, alpha, lo, hi):
        for r in prange(y.shape[0]):
            s, t = scale[r], shift[r]
            for j in range(n):
                v = y[r, j] * s + t
                y[r, j] = act1(v + res[r, j] if residual else v, code, alpha, lo, hi)
    return run


_EPILOGUES = {residual: _epilogue_kernel(residual) for residual in (False, True)}


@per_arguments
def constant(n: int, value: float) -> np.ndarray:
    """n float32 values `value`: an epilogue's scale of ones, a missing bias's zeros. Shared by every caller (read,
    never written): made once, not per call (a small conv's set-up is a few µs, each array ~0.7 of them)."""
    return np.full(n, value, np.float32)


_NO_RESIDUAL = np.zeros((0, 0), np.float32)


def epilogue(y: np.ndarray, scale: np.ndarray, shift: np.ndarray, code: int, alpha, lo, hi,
             residual: np.ndarray | None = None) -> None:
    """In place over y (rows, …): y = act(y · scale[row] + shift[row] + residual), residual (y's shape) left out
    when None; y C-contiguous or a buffer's map (layout.planes), residual any view (copied where it is neither)."""
    y2, n = _planes(y)
    if residual is not None and planes(residual) is None:  # (a tile's view with a halo: copied, as add's)
        residual = np.ascontiguousarray(residual, np.float32)
    res = _NO_RESIDUAL if residual is None else planes(residual)[0]
    _EPILOGUES[residual is not None](y2, n, scale, shift, res, inline_code(code), alpha, lo, hi)
    finish(y, code, alpha, lo, hi)


def _rows(x: np.ndarray, rows: int, code: int, scale: np.ndarray, shift: np.ndarray,
          alpha: float = 0.0, lo: float = 0.0, hi: float = 0.0) -> np.ndarray:
    """New float32 copy of x with the epilogue applied to its (rows, -1) reshape."""
    out = np.array(x, dtype=np.float32, order="C")
    epilogue(out.reshape(rows, -1), np.asarray(scale, np.float32), np.asarray(shift, np.float32),
             code, np.float32(alpha), np.float32(lo), np.float32(hi))
    return out


def activation(x: np.ndarray, act: str, alpha: float = 0.0, lo: float = 0.0, hi: float = 0.0) -> np.ndarray:
    """A new float32 array: activation `act` (see ACTS) of every element of x (row by row: the rows are what the
    threads share)."""
    rows = x.shape[0] if np.ndim(x) > 1 else 1
    return _rows(x, rows, act_code(act), constant(rows, 1.0), constant(rows, 0.0), alpha, lo, hi)


def relu(x: np.ndarray) -> np.ndarray:
    return activation(x, "relu")


def clip(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return activation(x, "clip", lo=lo, hi=hi)


def leakyrelu(x: np.ndarray, alpha: float) -> np.ndarray:
    return activation(x, "leakyrelu", alpha=alpha)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return activation(x, "sigmoid")


def prelu(x: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """PRelu of (C, H, W) with one slope per channel: x where x >= 0, slope[c]·x elsewhere."""
    x = np.asarray(x, np.float32)
    return np.where(x >= 0, x, x * np.asarray(slope, np.float32).reshape(-1, 1, 1))


def scale_channels(x: np.ndarray, gate: np.ndarray) -> np.ndarray:
    """(C, H, W) times one gate value per channel (squeeze-and-excitation's last step), in one pass."""
    return np.multiply(x, np.asarray(gate, np.float32).reshape(-1, 1, 1), dtype=np.float32)


def channels(x: np.ndarray, c0: int, c1: int) -> np.ndarray:
    """Channels c0:c1 of (C, H, W), contiguous (a Split or Slice along channels)."""
    return np.ascontiguousarray(x[c0:c1], np.float32)


def affine(x: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Per-channel x*scale[c] + shift[c] on (C, H, W): batch-norm folded at load time."""
    return _rows(x, x.shape[0], 0, scale, shift)


@njit(cache=True)
def _lrn(x, size, alpha, beta, bias, out):
    c_n = x.shape[0]
    below, above = (size - 1) // 2, size // 2  # floor and ceil of (size-1)/2
    sq = np.empty(x.shape[1:], np.float32)
    for c in range(c_n):
        sq[:] = 0.0
        for k in range(max(0, c - below), min(c_n, c + above + 1)):
            sq += x[k] * x[k]
        out[c] = x[c] / (bias + alpha / size * sq) ** beta


def lrn(x: np.ndarray, size: int, alpha: float, beta: float, bias: float) -> np.ndarray:
    """ONNX LRN across channels of (C, H, W)."""
    out = np.empty(x.shape, np.float32)
    f = np.float32
    _lrn(np.ascontiguousarray(x, f), size, f(alpha), f(beta), f(bias), out)
    return out


@njit(cache=True, error_model="numpy")
def _channel_norm_block(x, scale, shift, eps, out, mean, inv, j0, j1):
    """Over pixels [j0, j1) of x (C, n): loops across the pixels, each with its own float64 sums (thousands of
    channels stay exact), so every loop vectorises (array expressions made a temporary per channel: 4× slower)."""
    c_n, u0, u1 = x.shape[0], np.uint64(j0), np.uint64(j1)  # (unsigned: see threads.py)
    for j in range(u0, u1):
        mean[j], inv[j] = 0.0, 0.0
    for c in range(c_n):
        for j in range(u0, u1):
            mean[j] += x[c, j]
    for j in range(u0, u1):
        mean[j] /= c_n
    for c in range(c_n):
        for j in range(u0, u1):
            d = x[c, j] - mean[j]
            inv[j] += d * d
    for j in range(u0, u1):
        inv[j] = 1.0 / np.sqrt(inv[j] / c_n + eps)
    for c in range(c_n):
        s, t = np.float64(scale[c]), np.float64(shift[c])
        for j in range(u0, u1):
            out[c, j] = np.float32((x[c, j] - mean[j]) * inv[j] * s + t)


@njit(cache=True, parallel=True)
def _channel_norm(x, scale, shift, eps, out, mean, inv, nt):
    """_channel_norm_block on nt blocks of pixels, one per thread."""
    for t in prange(nt):
        j0, j1 = block(x.shape[1], t, nt)
        _channel_norm_block(x, scale, shift, eps, out, mean, inv, j0, j1)


def channel_norm(x: np.ndarray, scale: np.ndarray, shift: np.ndarray, eps: float) -> np.ndarray:
    """Each pixel of (C, H, W) normalised over its C values, then scale[c]·x + shift[c] (ONNX LayerNormalization
    over the last axis of a channels-last map)."""
    out = np.empty(x.shape, np.float32)
    n = x.shape[1] * x.shape[2]
    _channel_norm(np.ascontiguousarray(x, np.float32).reshape(x.shape[0], n), np.asarray(scale, np.float32),
                  np.asarray(shift, np.float32), float(eps), out.reshape(x.shape[0], n), np.empty(n), np.empty(n),
                  count())
    return out


def _fold(op: np.ufunc, xs: tuple[np.ndarray, ...]) -> np.ndarray:
    out = op(xs[0], xs[1], dtype=np.float32)  # (a new C-contiguous array: the first step writes it)
    for y in xs[2:]:
        op(out, y, out=out)
    return out


@njit(cache=True, parallel=True)
def _sum_act(a, b, out, code, alpha, lo, hi, nt):
    """out = act(a + b) over flat arrays, in one pass."""
    for t in prange(nt):
        j0, j1 = block(out.shape[0], t, nt)
        for j in range(np.uint64(j0), np.uint64(j1)):  # (see threads.py)
            out[j] = act1(a[j] + b[j], code, alpha, lo, hi)


def add(*xs: np.ndarray, act: str = "", alpha: float = 0.0, lo: float = 0.0, hi: float = 0.0) -> np.ndarray:
    """act (see ACTS) of the element-wise sum of same-shaped arrays (ONNX Add / Sum, and the activation that
    follows a residual add): the last two inputs and the activation in one pass (a tile view with a halo is
    copied first: the kernels take contiguous arrays, see warm)."""
    if len(xs) == 1:
        return activation(xs[0], act, alpha, lo, hi)
    a = np.ascontiguousarray(xs[0], np.float32) if len(xs) == 2 else _fold(np.add, xs[:-1])
    b = np.ascontiguousarray(xs[-1], np.float32)
    out, code = np.empty(a.shape, np.float32), act_code(act)
    _sum_act(a.reshape(-1), b.reshape(-1), out.reshape(-1), inline_code(code), np.float32(alpha), np.float32(lo),
             np.float32(hi), count())
    finish(out, code, alpha, lo, hi)
    return out


def mul(*xs: np.ndarray) -> np.ndarray:
    """Element-wise product of same-shaped arrays."""
    return _fold(np.multiply, xs)


def concat(xs: list[np.ndarray]) -> np.ndarray:
    """Concatenate (C_i, H, W) maps along channels."""
    return np.concatenate(xs, axis=0).astype(np.float32, copy=False)


def shuffle(x: np.ndarray, groups: int) -> np.ndarray:
    """Channel shuffle (ShuffleNet): (g, C/g, H, W) -> transpose -> (C/g, g, H, W), flattened back."""
    c = x.shape[0]
    y = x.reshape(groups, c // groups, *x.shape[1:]).swapaxes(0, 1)
    return np.ascontiguousarray(y, np.float32).reshape(x.shape)


@njit(cache=True, fastmath={"reassoc", "contract"})
def _dot(w, i, x):
    """Row i of w · x, reassociated (LLVM keeps vectors of partial sums)."""
    s = np.float32(0.0)
    for k in range(x.shape[0]):
        s += w[i, k] * x[k]
    return s


@njit(cache=True, parallel=True)
def _gemv(w, x, b, y, code, alpha, lo, hi, nt):
    """y = act1(w @ x + b) over nt blocks of rows, one per thread (each row's sum in one thread's order, whatever
    nt)."""
    for t in prange(nt):
        r0, r1 = block(w.shape[0], t, nt)
        for i in range(r0, r1):
            y[i] = act1(_dot(w, i, x) + b[i], code, alpha, lo, hi)


@per_weights
def _rowwise(w: np.ndarray) -> np.ndarray:
    """Weights w as a C-contiguous copy, made once per weight array (_gemv then reads each row as one stream, and
    compiles for one layout)."""
    return np.ascontiguousarray(w)


GEMV_ROWS = 64  # rows a thread's share holds at least (an SE block's 24→96 runs on one)


def gemm(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, act: str = "", alpha: float = 0.0,
         lo: float = 0.0, hi: float = 0.0) -> np.ndarray:
    """Fully connected layer: act(w @ x + b) for x (K,), w (M, K), b (M,) or None, in one call (_gemv). Inside
    MobileNetV2, after the conv before had swept the caches, BLAS's product and numpy's bias and clamp took 0.37-0.44
    ms of its classifier (1280→1000), where the product alone took 0.20 with its weights cold; in one call 0.25-0.27.
    MobileNetV3-Large's squeeze-and-excitation gates (two such calls each) 52-250 µs → 16-111."""
    w = np.asarray(w, np.float32)
    if not w.flags.c_contiguous:  # (an exporter's Gemm without transB: its weights transposed, column-major)
        w = _rowwise(w)
    y = np.empty(w.shape[0], np.float32)
    bias = constant(w.shape[0], 0.0) if b is None else np.asarray(b, np.float32)
    _gemv(w, np.ascontiguousarray(x, np.float32).reshape(-1), bias, y, act_code(act), np.float32(alpha),
          np.float32(lo), np.float32(hi), max(1, min(count(), w.shape[0] // GEMV_ROWS)))
    return y


def softmax(x: np.ndarray) -> np.ndarray:
    """Numerically stable softmax of a 1-D vector."""
    e = np.exp(np.asarray(x, np.float32) - np.max(x))
    return (e / e.sum()).astype(np.float32)
