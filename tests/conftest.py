"""Shared test helpers: tolerances, the MPI launcher, and running the CLI as users do."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from nptp_mpi.model.graph import Graph, Node, Window
from nptp_mpi.plan.geometry import area, halo_matrix, intersect, spatial

ROOT = Path(__file__).resolve().parents[1]


def assert_close(got: np.ndarray, want: np.ndarray, rel: float = 1e-4) -> None:
    """max |got - want| <= rel * max |want|: a tolerance relative to the output's scale."""
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = float(np.max(np.abs(want))) or 1.0
    err = float(np.max(np.abs(got.astype(np.float64) - want)))
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel:g} x {scale:.3g}"


def mpiexec() -> list[str]:
    """The launcher run.sh uses, with the flags it needs (nptp_mpi.tools.launcher)."""
    from nptp_mpi.tools.launcher import find

    return find().command()


def run_cli(args: list[str], ranks: int | None = None, timeout: float = 120, env: dict | None = None):
    """`python -m nptp_mpi ARGS`, under mpiexec -n ranks when given; returns the CompletedProcess."""
    cmd = [sys.executable, "-m", "nptp_mpi", *args]
    if ranks:
        cmd = [*mpiexec(), "-n", str(ranks), *cmd]
    full_env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=full_env)


def cache_missing(module: str, into: Path, sources: Path) -> None:
    """The kernels' warm Numba cache (run.sh's `warm`) copied to where Numba looks for the kernels at `sources` under
    NUMBA_CACHE_DIR=into, but for `module`'s: a cache a rank must complete, compiling one module's kernels in
    seconds (an empty one took three minutes, every kernel). No warm cache, or a stale one: nothing is copied, or
    Numba and warm() drop what was (the kernels then compile from scratch, slower, to the same end)."""
    from numba.core.caching import UserProvidedCacheLocator

    from nptp_mpi.runtime.warm import SOURCES_STAMP, _cache

    warm, _ = _cache()
    dest = into / UserProvidedCacheLocator.get_suitable_cache_subpath(str(sources / "__init__.py"))
    dest.mkdir(parents=True, exist_ok=True)
    for f in (*warm.rglob("*.nbi"), *warm.rglob("*.nbc")):
        if not f.name.startswith(f"{module}."):
            shutil.copy(f, dest / f.name)
    stamp = warm / SOURCES_STAMP  # (without it warm() takes the copy for stale and drops it)
    if stamp.exists():
        shutil.copy(stamp, into / stamp.name)


# -- small graphs and checks several test modules share ---------------------------------------------

def conv(name, x, cin, cout, k=3, stride=1, pad=1):
    w = np.zeros((cout, cin, k, k), np.float32)
    return Node("conv", name, (x,), name, {"groups": 1}, {"w": w}, Window((k, k), (stride, stride), (pad,) * 4))


def small_net(hw=(32, 32)) -> Graph:
    """conv 3x3, maxpool 2x2 s2, a ResNet-like block with a 1x1 s2 downsample and add, a concat."""
    pool = Node("maxpool", "pool", ("c1",), "pool", window=Window((2, 2), (2, 2)))
    nodes = [conv("c1", "input", 3, 8), pool, conv("b1", "pool", 8, 16, stride=2), conv("b2", "b1", 16, 16),
             conv("down", "pool", 8, 16, k=1, stride=2, pad=0), Node("add", "add", ("b2", "down"), "add"),
             conv("c3", "add", 16, 8), Node("concat", "cat", ("add", "c3"), "cat"), conv("c4", "cat", 24, 8),
             Node("gap", "gap", ("c4",), "gap")]
    return Graph("small", "input", (3, *hw), "gap", nodes)


def check_invariants(graph, plan):
    sp = spatial(graph)
    for t, rects in plan.own.items():
        h, w = graph.shapes[t][1:]
        grid = np.zeros((h, w), int)
        for y0, x0, y1, x1 in rects:
            assert y0 < y1 and x0 < x1, t
            grid[y0:y1, x0:x1] += 1
        assert (grid == 1).all(), t  # disjoint and covering
    assert set(plan.halos) == set(sp.halo_tensors())
    for t, halo in plan.halos.items():
        own = plan.own[t]
        for r, need in enumerate(halo.need):
            assert tuple(intersect(need, own[r])) == own[r]  # need ⊇ own
        expect = {(q, r): tuple(intersect(halo.need[r], own[q])) for r in range(plan.ranks) for q in range(plan.ranks)
                  if q != r and area(intersect(halo.need[r], own[q])) > 0}
        got = {(x.src, x.dst): x.rect for x in halo.transfers}
        assert got == expect, t
        assert all(x.nbytes == 4 * halo.channels * area(x.rect) for x in halo.transfers)
        assert [(x.dst, x.src) for x in halo.transfers] == sorted((x.dst, x.src) for x in halo.transfers)
    assert plan.halo_bytes == sum(x.nbytes for h in plan.halos.values() for x in h.transfers)
    assert plan.halo_bytes == int(halo_matrix(sp, np.array(plan.cell_tiles)).sum())
    rows = plan.per_rank
    assert sum(r["bytes_sent"] for r in rows) == sum(r["bytes_recv"] for r in rows) == plan.halo_bytes


def chain(hw: int = 3) -> Graph:
    """input (8, hw, hw) -> conv pre -> conv a (64) -> conv b (64) -> conv c (64) -> global pool -> FC: the pairs
    (a, b) and (b, c) can be split (pre reads the scattered input)."""
    rng = np.random.default_rng(0)
    nodes, x = [], "input"
    for name, cin, cout in (("pre", 8, 8), ("a", 8, 64), ("b", 64, 64), ("c", 64, 64)):
        w = rng.standard_normal((cout, cin, 3, 3), dtype=np.float32) * np.float32(np.sqrt(2 / (9 * cin)))
        nodes.append(Node("conv", name, (x,), name, {"groups": 1, "act": "relu"},
                          {"w": w, "b": np.zeros(cout, np.float32)}, Window((3, 3), (1, 1), (1, 1, 1, 1))))
        x = name
    nodes += [Node("gap", "gap", (x,), "gap"), Node("flatten", "flatten", ("gap",), "flat"),
              Node("gemm", "fc", ("flat",), "fc", {}, {"w": rng.standard_normal((10, 64), dtype=np.float32)})]
    return Graph("chain", "input", (8, hw, hw), "fc", nodes)


def ort_run(model, x: np.ndarray) -> np.ndarray:
    """Output for one image x (no batch axis) from a one-thread, unoptimised onnxruntime session."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x[None]})[0][0]


# -- ONNX models built by hand -------------------------------------------------------------------

def make_model(nodes, inits: dict, shape=(1, 3, 16, 16), opset: int = 17, ir: int | None = None):
    """A one-input ('x') one-output ('y') model; IR 3 lists initializers as graph inputs, as old exporters did."""
    from onnx import TensorProto, helper, numpy_helper

    tensors = [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)]
    if ir == 3:
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in tensors]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(helper.make_graph(nodes, "t", inputs, [y], tensors), opset_imports=opsets)
    model.ir_version = ir or helper.find_min_ir_version_for(opsets)
    return model


def import_and_compare(tmp_path, model, size=None) -> Graph:
    """Save model, import it, and check the reference engine against onnxruntime on a random input."""
    path = str(tmp_path / "model.onnx")
    import onnx

    from nptp_mpi.model.onnx_io import load_onnx
    from nptp_mpi.runtime import reference

    onnx.save(model, path)
    graph = load_onnx(path, size)
    x = np.random.default_rng(0).standard_normal(graph.input_shape, dtype=np.float32)
    assert_close(reference.run(graph, x), ort_run(model, x))
    return graph


# -- under MPI ----------------------------------------------------------------------------------------

def check_against_reference(graph, strategy: str, speeds=None, overlap: bool = True, fuse=None,
                            plan=None, pixels: bool = False) -> np.ndarray | None:
    """Run the strategy's plan (or the plan given) on every rank of the job, twice (another input first: the
    second inference runs the kernel calls the first prepared); rank 0 checks its output and bytes,
    then everyone learns the verdict. pixels: the input is an image's 8-bit pixels (plan.with_pixel_input),
    and the scatter and gather must also move exactly the plan's bytes."""
    from mpi4py import MPI

    from nptp_mpi.io.inputs import pixels_to_tensor
    from nptp_mpi.plan.plan import with_pixel_input
    from nptp_mpi.runtime.engine import Engine
    from nptp_mpi.runtime.exchange import World
    from nptp_mpi.runtime.reference import run as reference
    from nptp_mpi.strategies import build

    world = World(MPI.COMM_WORLD)
    rng = np.random.default_rng(1)
    first, x = (rng.integers(0, 256, graph.input_shape, dtype=np.uint8) if pixels else
                rng.standard_normal(graph.input_shape, dtype=np.float32) for _ in range(2))
    plan = plan or build(graph, world.size, strategy, speeds and speeds[: world.size], fuse=fuse)
    plan = with_pixel_input(plan) if pixels else plan
    engine = Engine(graph, plan, world, overlap=overlap)
    engine.infer(first if world.rank == 0 else None)  # (the second inference runs the kernel calls the first made)
    out, stats = engine.infer(x if world.rank == 0 else None)
    engine.close()
    comm = world.comm
    recv, sent, other = comm.reduce(stats.halo_recv), comm.reduce(stats.halo_sent), comm.reduce(stats.other_sent)
    failure = None
    if world.rank == 0:
        try:
            assert_close(out, reference(graph, pixels_to_tensor(x) if pixels else x), 1e-5)
            assert recv == sent == plan.halo_bytes, (recv, sent, plan.halo_bytes)
            if pixels:
                assert other == plan.scatter_bytes + plan.gather_bytes, (other, plan.scatter_bytes, plan.gather_bytes)
        except AssertionError as e:
            failure = str(e)
    failure = world.bcast(failure)  # every rank passes or fails the same test: no rank runs ahead
    assert failure is None, failure
    return out


def run_or_refuse(graph, strategy: str) -> None:
    """Equal to the reference, or refused in one line by every rank alike (the plan is deterministic)."""
    from nptp_mpi.errors import ModelError, PartitionError

    try:
        check_against_reference(graph, strategy)
    except (PartitionError, ModelError) as e:
        assert "\n" not in str(e) and str(e), repr(e)
