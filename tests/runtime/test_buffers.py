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
    32² lie in buffers with a spare row (a 16² plane, 1 KiB, needs none), the one-rank engine's conv buffers alike,
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
    spared = [n.output for n in convs if layout.spare_rows(*graph.shapes[n.output][1:])]
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
