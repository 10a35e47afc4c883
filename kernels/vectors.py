"""16-lane float32 vectors in LLVM IR, for kernels that LLVM's loop vectoriser leaves scalar (rows.py, blocked.py):
helpers that build masked loads and stores, splats and FMAs inside Numba intrinsics.

Only where the host has AVX2 and FMA (ENABLED; and LLVM 17 or later): without vector masks (NEON) LLVM turns each
masked load into a branch per lane, and the kernels' plain loops and BLAS serve there."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import llvmlite.binding as ll
import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils

LANES = 16
_FEATURES = ll.get_host_cpu_features()
# (LLVM 17 and later: pointers without a pointee type, as the intrinsics below declare them; numba 0.62 and later)
ENABLED = bool(_FEATURES.get("avx2") and _FEATURES.get("fma")) and ll.llvm_version_info >= (17,)


@contextlib.contextmanager
def enabled(on: bool) -> Iterator[None]:
    """Inside the block the vector kernels run only if `on` (and the host has them): warm() compiles the plain
    loops and GEMMs too, which take what the vector kernels leave."""
    global ENABLED
    before, ENABLED = ENABLED, ENABLED and on
    try:
        yield
    finally:
        ENABLED = before


def rowwise(x: np.ndarray) -> bool:
    """Whether x (C, H, W) is float32 with contiguous rows (a vector load reads a row's lanes at once)."""
    return x.dtype == np.float32 and x.strides[2] == 4 and x.strides[0] % 4 == 0 and x.strides[1] % 4 == 0


@njit(cache=True)
def address(a: np.ndarray) -> int:
    """The address of an array's first element, for kernels that take addresses (one compiled signature for every
    layout of view): a Numba call takes 0.15 µs, where ndarray.ctypes.data took 0.95 (four a conv: 4% of a 7²
    conv)."""
    return a.ctypes.data


@njit(cache=True, inline="always")
def inside(start, n, lo, hi):
    """Bit t set for each t < n with start + t in [lo, hi): which of n rows or columns from `start` on lie inside the
    image (the kernels' masks), every bit at once where all do."""
    if lo <= start and start + n <= hi:
        return (1 << n) - 1
    bits = 0
    for t in range(n):
        if lo <= start + t < hi:
            bits |= 1 << t
    return bits


def addressed() -> list[np.ndarray]:
    """Arrays of every type address() is given (float32, 1-3 dimensions, contiguous or a view, writable or not):
    warm() compiles it for each."""
    arrays = []
    for n in (1, 2, 3):
        a = np.zeros((2,) * n, np.float32)
        for v in (a, a[..., :1]):
            arrays.append(v)
            arrays.append(v.view())
            arrays[-1].flags.writeable = False
    return arrays


def dest(out: np.ndarray) -> tuple[int, int, int, int, int, int]:
    """Output array out (C, H, W; float32, rows contiguous: a view of a larger buffer welcome) as the kernels take
    it: (address, C, H, W, floats between channels, floats between rows)."""
    return (address(out), *out.shape, out.strides[0] // 4, out.strides[1] // 4)


F32, I32, I64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
VF, VI, VB = ir.VectorType(F32, LANES), ir.VectorType(I32, LANES), ir.VectorType(ir.IntType(1), LANES)
PTR = ir.PointerType()


def splat(builder: ir.IRBuilder, value: ir.Value, vtype: ir.VectorType) -> ir.Value:
    """A vector of `value` in every lane."""
    one = builder.insert_element(ir.Constant(vtype, ir.Undefined), value, I32(0))
    return builder.shuffle_vector(one, ir.Constant(vtype, ir.Undefined),
                                  ir.Constant(ir.VectorType(I32, vtype.count), [0] * vtype.count))


def declare(builder: ir.IRBuilder, name: str, vtype: ir.Type, arg_types: list[ir.Type]) -> ir.Function:
    """LLVM intrinsic `name` (vtype (arg_types)), declared once in the module being built."""
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(vtype, arg_types), name)


def scalar(builder: ir.IRBuilder, address: ir.Value, offset: int = 0, invariant: bool = False) -> ir.Value:
    """The float at `address` (an integer) + offset floats; invariant: memory that never changes while the kernels
    may read it (a prepared call's copy of its weights), which LLVM may then load once outside a loop, across the
    stores it cannot tell apart from it."""
    value = builder.load(builder.inttoptr(builder.add(address, I64(4 * offset)), PTR), typ=F32)
    if invariant:
        value.set_metadata("invariant.load", builder.module.add_metadata([]))
    return value


def vector(builder: ir.IRBuilder, address: ir.Value) -> ir.Value:
    """16 floats from `address` (any alignment)."""
    return builder.load(builder.inttoptr(address, PTR), typ=VF, align=4)


def types_of(lanes: int) -> tuple[ir.VectorType, ir.VectorType, ir.VectorType]:
    """Vectors of `lanes` floats, 32-bit integers and booleans (VF, VI, VB for 16)."""
    return ir.VectorType(F32, lanes), ir.VectorType(I32, lanes), ir.VectorType(ir.IntType(1), lanes)


def load(builder: ir.IRBuilder, address: ir.Value, mask: ir.Value, fill: float) -> ir.Value:
    """As many floats as mask has lanes from `address` where mask is set, `fill` elsewhere (masked-off lanes touch
    no memory)."""
    n = mask.type.count
    vf = ir.VectorType(F32, n)
    fn = declare(builder, f"llvm.masked.load.v{n}f32.p0", vf, [PTR, I32, mask.type, vf])
    return builder.call(fn, [builder.inttoptr(address, PTR), I32(4), mask, ir.Constant(vf, [fill] * n)])


def prefetch(builder: ir.IRBuilder, address: ir.Value) -> None:
    """A hint to bring the cache line at `address` (an integer) into every cache level: it never faults."""
    fn = declare(builder, "llvm.prefetch.p0", ir.VoidType(), [PTR, I32, I32, I32])
    builder.call(fn, [builder.inttoptr(address, PTR), I32(0), I32(3), I32(1)])


def store(builder: ir.IRBuilder, value: ir.Value, address: ir.Value, mask: ir.Value) -> None:
    """value's lanes where mask is set to `address` onwards (lanes of any count: 16, or 8 for half rows)."""
    n = value.type.count
    fn = declare(builder, f"llvm.masked.store.v{n}f32.p0", ir.VoidType(),
                 [value.type, PTR, I32, ir.VectorType(ir.IntType(1), n)])
    builder.call(fn, [value, builder.inttoptr(address, PTR), I32(4), mask])


def fma(builder: ir.IRBuilder, a: ir.Value, b: ir.Value, c: ir.Value) -> ir.Value:
    """a·b + c, lane by lane, rounded once."""
    return builder.call(declare(builder, f"llvm.fma.v{a.type.count}f32", a.type, [a.type] * 3), [a, b, c])


def clamp(builder: ir.IRBuilder, v: ir.Value, lo: ir.Value, hi: ir.Value) -> ir.Value:
    """v clamped to [lo, hi] (scalars) by compare and select: NaN passes through, as pointwise.act1."""
    for bound, cmp in ((lo, "<"), (hi, ">")):
        bound = splat(builder, bound, v.type)
        v = builder.select(builder.fcmp_ordered(cmp, v, bound), bound, v)
    return v
