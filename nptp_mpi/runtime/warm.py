"""Compile every kernel once into the Numba cache, so ranks started together never race to compile.

A tiny graph holding every op and every conv flavour runs through the reference engine; the kernels
take contiguous float32 arrays and scalar attributes of fixed types, so these calls cover every
signature a real run uses. A job whose cache is cold lets one rank per host compile while the others
wait, then they load (warm_first): one compiler's memory per board, and no ranks racing to write the cache.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from nptp_mpi.model.graph import Graph, Node, Window
from nptp_mpi.runtime.exchange import World
from nptp_mpi.runtime.reference import run


def every_op_graph(seed: int = 0) -> Graph:
    """A small network using each op and conv flavour (plain, strided, 1×1, grouped, depthwise, fused acts)."""
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.3).astype(np.float32)

    def conv(name, src, cin, cout, k, stride=1, groups=1, act="", **attrs):
        p = k // 2
        return Node("conv", name, (src,), name, {"groups": groups, "act": act, **attrs},
                    {"w": w(cout, cin // groups, k, k), "b": w(cout)}, Window((k, k), (stride, stride), (p, p, p, p)))

    nodes = [
        conv("c0", "x", 3, 16, 3),
        conv("c1", "c0", 16, 16, 3, act="relu"),  # 16 channels, 28×28 out: the Winograd path
        conv("c1x", "c1", 16, 32, 1, act="relu"),  # 32 outputs at 28²: the vector GEMM (kernels/blocked.py)
        # 1×1s between channel-blocked maps (runtime.layouts), each pair of layouts in and out: NCHW → blocked,
        # NCHW → blocked + a blocked residual, blocked → blocked + residual, blocked → blocked, blocked → NCHW
        conv("b0", "c1x", 32, 64, 1, act="relu"),
        Node("conv", "b1", ("c1x", "b0"), "b1", {"groups": 1, "act": "relu"}, {"w": w(64, 32, 1, 1), "b": w(64)},
             Window()),
        Node("conv", "b2", ("b0", "b1"), "b2", {"groups": 1}, {"w": w(64, 64, 1, 1), "b": w(64)}, Window()),
        conv("b3", "b2", 64, 64, 1, act="clip", lo=0.0, hi=6.0),
        conv("d0", "b3", 64, 64, 3, groups=64, act="clip", lo=0.0, hi=6.0),  # depthwise, blocked (kernels/depthwise.py)
        conv("b4", "d0", 64, 32, 1),
        conv("c2", "b4", 32, 8, 3, stride=2, groups=2, act="clip", lo=0.0, hi=6.0),
        conv("c3", "c2", 8, 8, 3, groups=8, act="leakyrelu", alpha=0.1),
        conv("c3b", "c3", 8, 8, 5, stride=2, groups=8, act="silu"),  # depthwise: vector rows, or phase planes
        Node("pad", "pad", ("c3b",), "pad", {"value": 0.5}, window=Window(pads=(1, 0, 0, 1))),
        conv("c4", "pad", 8, 8, 1),
        Node("maxpool", "mp", ("c4",), "mp", window=Window((3, 3), (1, 1), (1, 1, 1, 1))),
        Node("avgpool", "ap", ("c4",), "ap", {"count_include_pad": 1}, window=Window((3, 3), (1, 1), (1, 1, 1, 1))),
        Node("add", "sum", ("mp", "ap"), "sum"),
        Node("conv", "c5", ("c4", "c4"), "c5", {"groups": 1, "act": "relu"}, {"w": w(8, 8, 1, 1), "b": w(8)},
             Window()),  # a conv with a residual (here its own input): a fused residual add
        Node("mul", "prod", ("sum", "c5"), "prod"),
        Node("relu", "r", ("prod",), "r"),
        Node("sigmoid", "s", ("r",), "s"),
        Node("clip", "cl", ("s",), "cl", {"lo": 0.1, "hi": 0.9}),
        Node("leakyrelu", "lr", ("cl",), "lr", {"alpha": 0.2}),
        Node("affine", "bn", ("lr",), "bn", params={"scale": w(8), "shift": w(8)}),
        Node("chnorm", "ln", ("bn",), "ln", {"eps": 1e-6}, {"scale": w(8), "shift": w(8)}),
        Node("lrn", "lrn", ("ln",), "lrn", {"size": 3, "alpha": 1e-4, "beta": 0.75, "bias": 1.0}),
        Node("concat", "cat", ("lrn", "c4"), "cat"),
        Node("shuffle", "sh", ("cat",), "sh", {"groups": 2}),
        Node("se", "se", ("sh",), "se", {"steps": (("relu", 0.0, 0.0, 0.0), ("sigmoid", 0.0, 0.0, 0.0))},
             {"w0": w(4, 16), "b0": w(4), "w1": w(16, 4), "b1": w(16)}),  # (channel means: kernels.channel_sums)
        Node("adaptive_avgpool", "aap", ("se",), "aap", {"out": (3, 3)}),
        Node("chnorm", "hn", ("aap",), "hn", {"eps": 1e-5}, {"scale": w(16), "shift": w(16)}),  # in the head
        Node("flatten", "fl", ("hn",), "fl"),
        Node("gemm", "fc", ("fl",), "fc", {"act": "relu"}, {"w": w(10, 144), "b": w(10)}),
        Node("softmax", "sm", ("fc",), "sm"),
    ]
    return Graph("every-op", "x", (3, 28, 28), "sm", nodes)


def _cache() -> tuple[Path, str]:
    """The kernels' Numba cache folder (beside the sources, or where kernels.cache sent it) and a digest of
    every kernel source."""
    from nptp_mpi import kernels

    folder = Path(kernels.__file__).parent
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in sorted(folder.glob("*.py")))).hexdigest()
    return (Path(os.environ["NUMBA_CACHE_DIR"]) if os.environ.get("NUMBA_CACHE_DIR") else folder / "__pycache__",
            digest)


WARM_STAMP = "nptp-kernels-warm.sha256"  # written once warm() has compiled every kernel of these sources
SOURCES_STAMP = "nptp-kernel-sources.sha256"  # the sources the cached kernels were compiled from (clear_stale_cache)


def is_warm() -> bool:
    """Whether warm() has run since the kernel sources last changed (every kernel is then in the cache)."""
    cache, digest = _cache()
    try:
        return (cache / WARM_STAMP).read_text() == digest
    except OSError:
        return False


def clear_stale_cache() -> bool:
    """Drop the kernels' Numba cache when any kernel source changed since it was written; True if it did.

    Numba keys a cached function on its own file only, so a kernel that inlines a helper from another file
    (conv.py's depthwise loop inlines pointwise.act1) would otherwise load its old machine code after that
    helper changed: a new activation code ran as the identity in depthwise convs."""
    from nptp_mpi import kernels

    cache, digest = _cache()
    stamp = cache / SOURCES_STAMP
    ours = tuple(f"{f.stem}." for f in Path(kernels.__file__).parent.glob("*.py"))  # the folder may be shared
    try:
        if stamp.exists() and stamp.read_text() == digest:
            return False
        for f in (*cache.rglob("*.nbi"), *cache.rglob("*.nbc")):
            if f.name.startswith(ours):
                f.unlink()
        (cache / WARM_STAMP).unlink(missing_ok=True)
        cache.mkdir(exist_ok=True)
        stamp.write_text(digest)
    except OSError:  # a read-only install: nothing was cached there either
        return False
    return True


def warm() -> None:
    """Run every kernel once (compiling into, or loading from, the on-disk cache; a stale cache dropped first)."""
    from nptp_mpi import kernels
    from nptp_mpi.kernels.pointwise import ACTS

    clear_stale_cache()
    g = every_op_graph()
    x = np.random.default_rng(1).standard_normal(g.input_shape, dtype=np.float32)
    for vector in (True, False):  # the vector kernels (rows.py, blocked.py), and the loops and GEMMs they leave
        with kernels.vectors.enabled(vector):
            run(g, x)
            with kernels.threads.blocks(2):  # as a run on several threads calls them (its GEMMs, buffers' layouts)
                run(g, x)
    for act in ACTS:  # each activation's own vectorised pass (pointwise.finish)
        kernels.activation(np.zeros(4, np.float32), act)
    kernels.channel_sums(np.zeros((2, 3, 4), np.float32)[:, 1:, 1:])  # a tile's view: its part of a mean (engine)
    kernels.global_avgpool(np.zeros((2, 3, 4), np.float32)[:, 1:, 1:])  # a map with spare rows (the reference)
    for a in kernels.vectors.addressed():  # (the engine's output views among them: conv2d's into)
        kernels.vectors.address(a)
    cache, digest = _cache()
    try:
        (cache / WARM_STAMP).write_text(digest)
    except OSError:  # no cache to write (a read-only folder): every run compiles, as it would anyway
        pass


def warm_first(world: World) -> None:
    """On a cold cache, one rank per host compiles every kernel while that host's other ranks wait; then
    they all load from the cache. A warm cache costs one check and a host-local barrier."""
    world.first_on_each_host(lambda: None if is_warm() else warm(), "compiling the kernels (a cold Numba cache)")
