"""Spatially local kernels (activations, per-channel affine, LRN, merges, head ops): any tile works as is."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# Fused and standalone activations. Parameters: leakyrelu, elu alpha; clip lo, hi; hardsigmoid alpha (slope) and
# lo (offset, ONNX's beta); the others none.
ACTS = {"": 0, "relu": 1, "clip": 2, "leakyrelu": 3, "sigmoid": 4, "hardsigmoid": 5, "hardswish": 6, "tanh": 7,
        "elu": 8, "softplus": 9, "gelu": 10, "silu": 11}


def act_code(act: str) -> int:
    """Numeric code of a fused activation name, for the Numba epilogues."""
    if act not in ACTS:
        raise ValueError(f"unknown activation {act!r}; expected one of {sorted(ACTS)}")
    return ACTS[act]


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
        e = np.exp(-abs(v))
        s = np.float32(1.0) / (np.float32(1.0) + e) if v >= 0 else e / (np.float32(1.0) + e)
        return s if code == 4 else v * s
    if code == 5:
        return min(max(alpha * v + lo, np.float32(0.0)), np.float32(1.0))
    if code == 6:
        return v * min(max(v / np.float32(6.0) + np.float32(0.5), np.float32(0.0)), np.float32(1.0))
    if code == 7:
        return np.tanh(v)
    if code == 8:
        return v if v >= 0 else alpha * np.float32(math.expm1(v))
    if code == 9:  # log(1 + e^v) without overflow
        return max(v, np.float32(0.0)) + np.float32(math.log1p(math.exp(-abs(v))))
    if code == 10:  # exact (erf) GELU
        return np.float32(0.5) * v * (np.float32(1.0) + np.float32(math.erf(v * np.float32(0.7071067811865476))))
    return v


@njit(cache=True)
def epilogue(y, scale, shift, code, alpha, lo, hi):
    """In place over C-contiguous 2-D y (rows, n): y = act(y * scale[row] + shift[row])."""
    for r in range(y.shape[0]):
        s, t = scale[r], shift[r]
        for j in range(y.shape[1]):
            y[r, j] = act1(y[r, j] * s + t, code, alpha, lo, hi)


def _rows(x: np.ndarray, rows: int, code: int, scale: np.ndarray, shift: np.ndarray,
          alpha: float = 0.0, lo: float = 0.0, hi: float = 0.0) -> np.ndarray:
    """New float32 copy of x with the epilogue applied to its (rows, -1) reshape."""
    out = np.array(x, dtype=np.float32, order="C")
    epilogue(out.reshape(rows, -1), np.asarray(scale, np.float32), np.asarray(shift, np.float32),
             code, np.float32(alpha), np.float32(lo), np.float32(hi))
    return out


_ONE, _ZERO = np.ones(1, np.float32), np.zeros(1, np.float32)


def activation(x: np.ndarray, act: str, alpha: float = 0.0, lo: float = 0.0, hi: float = 0.0) -> np.ndarray:
    """A new float32 array: activation `act` (see ACTS) of every element of x."""
    return _rows(x, 1, act_code(act), _ONE, _ZERO, alpha, lo, hi)


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
    return np.where(x >= 0, x, x * slope.reshape(-1, 1, 1)).astype(np.float32)


def scale_channels(x: np.ndarray, gate: np.ndarray) -> np.ndarray:
    """(C, H, W) times one gate value per channel (squeeze-and-excitation's last step)."""
    return (np.asarray(x, np.float32) * gate.reshape(-1, 1, 1)).astype(np.float32)


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


@njit(cache=True)
def _channel_norm(x, scale, shift, eps, out):
    c_n, h, w = x.shape
    mean, var = np.zeros((h, w)), np.zeros((h, w))  # float64 sums: thousands of channels stay exact
    for c in range(c_n):
        mean += x[c]
    mean /= c_n
    for c in range(c_n):
        var += (x[c] - mean) ** 2
    inv = 1.0 / np.sqrt(var / c_n + eps)
    for c in range(c_n):
        out[c] = ((x[c] - mean) * inv * scale[c] + shift[c]).astype(np.float32)


def channel_norm(x: np.ndarray, scale: np.ndarray, shift: np.ndarray, eps: float) -> np.ndarray:
    """Each pixel of (C, H, W) normalised over its C values, then scale[c]·x + shift[c] (ONNX LayerNormalization
    over the last axis of a channels-last map)."""
    out = np.empty(x.shape, np.float32)
    _channel_norm(np.ascontiguousarray(x, np.float32), scale, shift, float(eps), out)
    return out


def _fold(op: np.ufunc, xs: tuple[np.ndarray, ...]) -> np.ndarray:
    out = np.array(xs[0], dtype=np.float32, order="C")
    for y in xs[1:]:
        op(out, y, out=out)
    return out


@njit(cache=True)
def _sum_act(a, b, out, code, alpha, lo, hi):
    """out = act(a + b) over flat arrays, in one pass."""
    for j in range(out.shape[0]):
        out[j] = act1(a[j] + b[j], code, alpha, lo, hi)


def add(*xs: np.ndarray, act: str = "", alpha: float = 0.0, lo: float = 0.0, hi: float = 0.0) -> np.ndarray:
    """act (see ACTS) of the element-wise sum of same-shaped arrays (ONNX Add / Sum, and the activation that
    follows a residual add): the last two inputs and the activation in one pass (a tile view with a halo is
    copied first: the kernels take contiguous arrays, see warm)."""
    if len(xs) == 1:
        return activation(xs[0], act, alpha, lo, hi)
    a = np.ascontiguousarray(xs[0], np.float32) if len(xs) == 2 else _fold(np.add, xs[:-1])
    b = np.ascontiguousarray(xs[-1], np.float32)
    out = np.empty(a.shape, np.float32)
    _sum_act(a.reshape(-1), b.reshape(-1), out.reshape(-1), act_code(act), np.float32(alpha), np.float32(lo),
             np.float32(hi))
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


def gemm(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, act: str = "", alpha: float = 0.0,
         lo: float = 0.0, hi: float = 0.0) -> np.ndarray:
    """Fully connected layer: act(w @ x + b) for x (K,), w (M, K), b (M,) or None."""
    y = np.dot(np.asarray(w, np.float32), np.asarray(x, np.float32))
    shift = np.zeros(w.shape[0], np.float32) if b is None else b
    return _rows(y, y.shape[0], act_code(act), np.ones(w.shape[0], np.float32), shift, alpha, lo, hi)


def softmax(x: np.ndarray) -> np.ndarray:
    """Numerically stable softmax of a 1-D vector."""
    e = np.exp(np.asarray(x, np.float32) - np.max(x))
    return (e / e.sum()).astype(np.float32)
