"""Maps whose channel planes would lie a multiple of 4 KiB apart are kept with a spare row after each plane, by the
reference and by the engine (kernels.layout), and the results are what they were."""

from __future__ import annotations

import numpy as np
from conftest import assert_close
from mpi4py import MPI

from nptp_mpi.kernels import layout
from nptp_mpi.model import zoo
from nptp_mpi.plan.plan import make_plan
from nptp_mpi.runtime.engine import Engine
from nptp_mpi.runtime.exchange import World
from nptp_mpi.runtime.ops import run_whole
from nptp_mpi.runtime.reference import run as reference


def test_conv_maps_on_4_kib_planes_get_a_spare_row_and_the_same_values():
    """MobileNetV2 at 128² (64²-16² maps, as a 512² image's 256²-64²): the reference's conv outputs of 64² and
    32² lie in buffers with a spare row (a 16² plane, 1 KiB, needs none), the one-rank engine's NCHW conv buffers alike,
    and the engine's output equals the reference's; a spare row never holds a value of the map."""
    graph = zoo.build("mobilenet_v2", (128, 128))
    x = np.random.default_rng(0).standard_normal(graph.input_shape, dtype=np.float32)
    convs = [n for n in graph.nodes if n.op == "conv"]
    values = {graph.input: x}
    for n in graph.nodes:
        if n.spatial:
            y = values[n.output] = run_whole(n, [values[t] for t in n.inputs])
            if n.op == "conv":
                c, h, w = y.shape
                assert y.strides[0] == 4 * w * (h + layout.spare_rows(h, w)), (n.name, y.shape, y.strides)
    assert {values[n.output].shape[1] for n in convs if layout.spare_rows(*values[n.output].shape[1:])} == {64, 32}
    engine = Engine(graph, make_plan(graph, 1, "nptp"), World(MPI.COMM_SELF, timeout=30))
    spared = [n.output for n in convs if layout.spare_rows(*graph.shapes[n.output][1:]) and
              n.output not in engine.blocked]  # (a channel-blocked map's planes are its pixels': runtime.layouts)
    assert spared and all(engine.buffers[t].shape[1] == graph.shapes[t][1] + 1 for t in spared)
    for t in spared:
        engine.buffers[t][:, -1] = np.nan  # (a spare row read as if it were the map would show)
    for _ in range(2):  # (the second inference runs the calls the first prepared)
        out, _ = engine.infer(x)
        assert_close(out, reference(graph, x), 1e-5)
    assert all(np.isnan(engine.buffers[t][:, -1]).all() for t in spared)
    engine.close()


def test_a_map_output_comes_back_contiguous():
    """A model whose output is a conv's map (no head) on 4 KiB planes: the reference and the engine hand back a
    C-contiguous array, not a view of a buffer with spare rows."""
    from conftest import conv

    from nptp_mpi.model.graph import Graph

    rng = np.random.default_rng(0)
    nodes = [conv("c1", "input", 3, 8), conv("c2", "c1", 8, 8)]
    for n in nodes:
        n.params["w"] = rng.standard_normal(n.params["w"].shape, dtype=np.float32)
    graph = Graph("fcn", "input", (3, 64, 64), "c2", nodes)
    x = rng.standard_normal((3, 64, 64), dtype=np.float32)
    want = reference(graph, x)
    assert want.flags.c_contiguous and want.shape == (8, 64, 64)
    engine = Engine(graph, make_plan(graph, 1, "nptp"), World(MPI.COMM_SELF, timeout=30))
    out, _ = engine.infer(x)
    engine.close()
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, want)


def test_a_conv_node_keeps_its_call_while_nothing_it_was_made_for_changes(monkeypatch):
    """run_whole prepares a conv node's call once and reuses it; new weights, a fused activation or residual (graph
    passes rewrite nodes in place), another input layout or another thread count each get a call of their own, and
    every result equals conv2d's."""
    from conftest import conv

    from nptp_mpi import kernels as K
    from nptp_mpi.runtime import ops

    made = []
    original = ops.ConvCall
    monkeypatch.setattr(ops, "ConvCall", lambda *a, **k: made.append(1) or original(*a, **k))
    rng = np.random.default_rng(0)
    node = conv("c", "input", 8, 16, k=3)
    node.params["w"] = rng.standard_normal((16, 8, 3, 3), dtype=np.float32)
    x = rng.standard_normal((8, 64, 64), dtype=np.float32)
    res = rng.standard_normal((16, 64, 64), dtype=np.float32)

    def want(xx, act="", residual=None):
        w = node.window
        return K.conv2d(xx, (0, 0), xx.shape[1:], node.params["w"], node.params.get("b"), w.stride, w.pads,
                        w.dilation, 1, (0, 0, *xx.shape[1:]), act, residual=residual)

    for _ in range(2):
        np.testing.assert_array_equal(run_whole(node, [x]), want(x))
    assert len(made) == 1
    node.params["w"] = rng.standard_normal((16, 8, 3, 3), dtype=np.float32)
    np.testing.assert_array_equal(run_whole(node, [x]), want(x))
    node.attrs["act"] = "relu"
    np.testing.assert_array_equal(run_whole(node, [x]), want(x, "relu"))
    node.inputs = ("input", "r")
    np.testing.assert_array_equal(run_whole(node, [x, res]), want(x, "relu", res))
    wide = np.zeros((8, 64, 72), np.float32)[:, :, 4:68]  # (the same map in another layout: rows 72 apart)
    wide[...] = x
    np.testing.assert_array_equal(run_whole(node, [wide, res]), want(x, "relu", res))
    with K.threads.blocks(2):
        np.testing.assert_array_equal(run_whole(node, [wide, res]), want(x, "relu", res))
    assert len(made) == 6
