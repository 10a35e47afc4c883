"""float32 GEMMs run by the kernels' own threads: numpy's OpenBLAS called from Numba, one product split into a
contiguous block per thread, each block one single-threaded BLAS call. The cores then serve one thread pool,
Numba's, for the loops and the GEMMs alike: with BLAS's pool beside it, one pool's threads spun on the cores the
other's needed (a GEMM then a loop, 2 cores: 9.0 ms, against 2.1 on one thread).

numpy's wheels ship OpenBLAS as scipy-openblas64 (64-bit integers, `scipy_cblas_sgemm64_`); its address is found
through threadpoolctl and handed to LLVM under a name of ours, which the cached kernels refer to. Where numpy
uses another BLAS, FOUND is False and the products run through numpy (BLAS's threads, not ours)."""

from __future__ import annotations

import ctypes

import llvmlite.binding as ll
import numpy as np
from numba import njit, prange, types

from .threads import block, count
from .vectors import address

ALIGN = 16  # blocks of rows or columns start at multiples of this (whole vectors for BLAS's micro-kernels)
SPLIT_FROM = 1 << 20  # multiply-adds from which a product is split: below, ~20 µs, the split's set-up costs more


def _find(fn: str) -> int | None:
    """The address of numpy's OpenBLAS cblas_<fn> with 64-bit integers, or None."""
    from threadpoolctl import ThreadpoolController

    for lib in ThreadpoolController().lib_controllers:
        for name in (f"scipy_cblas_{fn}64_", f"cblas_{fn}64_"):
            if lib.internal_api == "openblas" and hasattr(lib.dynlib, name):
                return ctypes.cast(getattr(lib.dynlib, name), ctypes.c_void_p).value
    return None


_ADDRESSES = {fn: _find(fn) for fn in ("sgemm", "sgemv")}
FOUND = None not in _ADDRESSES.values()
if FOUND:
    for fn, found in _ADDRESSES.items():  # (the kernels compiled against these names are cached: keep them)
        ll.add_symbol(f"nptp_cblas_{fn}64", found)

_I, _P, _F, _E = types.int64, types.intp, types.float32, types.int32  # (pointers as integers: the same registers)
_sgemm = types.ExternalFunction("nptp_cblas_sgemm64", types.void(_E, _E, _E, _I, _I, _I, _F, _P, _I, _P, _I, _F, _P,
                                                                 _I))
_sgemv = types.ExternalFunction("nptp_cblas_sgemv64", types.void(_E, _E, _I, _I, _F, _P, _I, _P, _I, _F, _P, _I))
ROW_MAJOR, NO_TRANS = 101, 111


@njit(cache=True, inline="always")
def _gemm(m, n, k, a, lda, b, ldb, c, ldc):
    """c = a @ b by one BLAS call on this thread (a matrix-vector product where n is 1): m×k at address a with
    lda floats between rows, and so on."""
    if m == 0 or n == 0:
        return
    if n == 1:
        _sgemv(ROW_MAJOR, NO_TRANS, m, k, np.float32(1.0), a, lda, b, ldb, np.float32(0.0), c, ldc)
    else:
        _sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, m, n, k, np.float32(1.0), a, lda, b, ldb, np.float32(0.0), c, ldc)


@njit(cache=True, parallel=True)
def _matmul(m, n, k, a, lda, b, ldb, c, ldc, nt, by_rows):
    """c = a @ b in nt blocks of c's rows (by_rows) or columns, one per thread. (Addresses and leading dimensions,
    not arrays: one compiled signature for every layout of view the callers pass.)"""
    units = -(-(m if by_rows else n) // ALIGN)
    for t in prange(nt):
        u0, u1 = block(units, t, nt)
        if by_rows:
            r0, r1 = u0 * ALIGN, min(m, u1 * ALIGN)
            _gemm(r1 - r0, n, k, a + 4 * r0 * lda, lda, b, ldb, c + 4 * r0 * ldc, ldc)
        else:
            j0, j1 = u0 * ALIGN, min(n, u1 * ALIGN)
            _gemm(m, j1 - j0, k, a, lda, b + 4 * j0, ldb, c + 4 * j0, ldc)


@njit(cache=True, parallel=True)
def _batched(count, m, n, k, u, su, ldu, v, sv, ldv, w, sw, ldw):
    """w_i = u_i @ v_i for i < count, the i split over the threads: matrix i of u at u + i·su bytes, and so on."""
    for i in prange(count):
        _gemm(m, n, k, u + i * su, ldu, v + i * sv, ldv, w + i * sw, ldw)


def _operand(x: np.ndarray) -> tuple[int, int] | None:
    """(address, floats between rows) of a float32 matrix BLAS can take as it lies (unit steps along its rows,
    rows a whole number of floats apart and at least a row long), else None."""
    if x.dtype != np.float32 or x.ndim != 2 or (x.strides[1] != 4 and x.shape[1] > 1) or x.strides[0] % 4:
        return None
    ld = x.strides[0] // 4
    return (address(x), ld) if ld >= max(1, x.shape[1]) else None


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = a @ b for float32 matrices (views of larger ones welcome), split over the kernels' threads along
    the longer side of out."""
    (m, k), n = a.shape, out.shape[1]
    split = count() > 1 and FOUND and m * n * k >= SPLIT_FROM  # (else numpy's own call, a few µs quicker)
    ops = [_operand(x) for x in (a, b, out)] if split else [None]
    if None in ops or k == 0:
        return np.matmul(a, b, out=out)
    by_rows = m >= n
    nt = max(1, min(count(), -(-(m if by_rows else n) // ALIGN)))
    _matmul(m, n, k, *ops[0], *ops[1], *ops[2], nt, by_rows)
    return out


def batched(u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """w[i] = u[i] @ v[i] for stacks of float32 matrices (views welcome): Winograd's 36 products, a grouped conv's
    groups. The products split over the threads whole, one per thread at a time (none packs its operands twice); a
    stack of one product (a conv of one group) splits that product (matmul)."""
    if len(u) == 1:
        matmul(u[0], v[0], w[0])
        return w
    (count_, m, k), n = u.shape, v.shape[2]
    split = count() > 1 and FOUND and count_ * m * n * k >= SPLIT_FROM
    ops = [_operand(x) for x in (u[0], v[0], w[0])] if split else [None]
    if None in ops or k == 0:
        return np.matmul(u, v, out=w)
    (pu, ldu), (pv, ldv), (pw, ldw) = ops
    _batched(count_, m, n, k, pu, u.strides[0], ldu, pv, v.strides[0], ldv, pw, w.strides[0], ldw)
    return w
