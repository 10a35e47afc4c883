"""Which maps the engines keep channel-blocked (runtime.layouts): those between 1×1 convs and the depthwise convs
between them, on the reference and on every rank, never one that an exchange or anything but such a conv touches;
the outputs are unchanged (the distributed and reference suites run with them)."""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from nptp_mpi import api
from nptp_mpi.kernels import vectors
from nptp_mpi.model import zoo
from nptp_mpi.model.graph import Graph, Node, Window
from nptp_mpi.plan.plan import make_plan
from nptp_mpi.plan.program import INPUT, Compute, Message
from nptp_mpi.runtime import reference
from nptp_mpi.runtime.engine import Engine
from nptp_mpi.runtime.exchange import World
from nptp_mpi.runtime.layouts import MIN_CHANNELS

needs_vectors = pytest.mark.skipif(not vectors.ENABLED, reason="this host has no AVX2 and FMA: every map is NCHW")


def readers(graph: Graph, t: str) -> list[tuple[Node, int]]:
    return [(n, i) for n in graph.nodes for i, u in enumerate(n.inputs) if u == t]


def one_by_one(node: Node) -> bool:
    return node.op == "conv" and node.window.kernel == (1, 1) and node.attrs.get("groups", 1) == 1


@needs_vectors
def test_resnet50_keeps_the_maps_between_its_1x1s_channel_blocked():
    """ResNet-50: each bottleneck's output (read by the next one's first 1×1 and added in its last) and each
    downsampling 1×1's, but the last block's (global pooling reads it): 16 maps, written and read by 1×1 convs
    alone; a map a 3×3 reads stays NCHW. (At 64², whose last stages' maps of 4² and 2² the vector GEMM leaves, a
    block's output and the residual its next block adds keep one layout: layer1's alone are blocked.)"""
    graph = zoo.build("resnet50", (224, 224))
    maps = reference.blocked(graph)
    writers = {n.output: n for n in graph.nodes}
    assert len(maps) == 16
    for t in maps:
        assert one_by_one(writers[t]) and all(one_by_one(n) for n, _ in readers(graph, t)), t
        assert graph.shapes[t][0] % 16 == 0 and graph.shapes[t][0] >= MIN_CHANNELS
    for n in graph.nodes:
        if n.op == "conv" and n.window.kernel == (3, 3):
            assert n.inputs[0] not in maps and n.output not in maps, n.name
    assert graph.output not in maps and graph.input not in maps
    small = reference.blocked(zoo.build("resnet50", (64, 64)))
    assert small == {"layer1.0.bn3", *(f"layer1.{i}.relu" for i in range(3))}


@needs_vectors
def test_small_maps_and_maps_other_ops_read_stay_nchw(monkeypatch):
    """MobileNetV2 keeps a map of fewer than 64 channels blocked where depthwise convs, 1×1s onto 16 channels, or
    1×1s that write blocked maps read it (a thin 1×1 reads a blocked map only into a blocked one): its stem's and
    first depthwise conv's, features.1's projection onto 16 (features.2's expansion reads it into the map its
    depthwise conv reads), and the maps of 32 channels of features.4-6 (their projections add their residuals in
    registers); not the maps of 24 channels (no multiple of 16). VGG-16 has no 1×1 and keeps none; without the
    vectors, no map is blocked."""
    graph = zoo.build("mobilenet_v2", (224, 224))
    maps = reference.blocked(graph)
    assert maps and {t for t in maps if graph.shapes[t][0] < MIN_CHANNELS} == {
        "features.0.2", "features.1.conv.0.2", "features.1.conv.2", "features.4.conv.3", "features.5.add",
        "features.6.add"}
    for t in maps:
        assert all(depthwise(n) or n.params["w"].shape[0] == 16 or graph.shapes[t][0] >= MIN_CHANNELS
                   or n.output in maps for n, _ in readers(graph, t)), t
    assert not reference.blocked(zoo.build("vgg16", (32, 32)))
    monkeypatch.setattr(vectors, "ENABLED", False)
    assert not reference.blocked(graph)


def same_as_nchw(graph: Graph, tol: float = 1e-5) -> None:
    """The reference, with its maps blocked, equals what it computes with every map NCHW (no vectors)."""
    x = np.random.default_rng(1).standard_normal(graph.input_shape, dtype=np.float32)
    want = reference.run(graph, x)
    with vectors.enabled(False):
        plain = reference.run(graph, x)
    np.testing.assert_allclose(want, plain, rtol=tol, atol=tol * float(np.abs(plain).max()))


def depthwise(node: Node) -> bool:
    return node.op == "conv" and node.attrs.get("groups", 1) == node.params["w"].shape[0] > 1


@needs_vectors
def test_mobilenet_v2_keeps_its_depthwise_convs_maps_blocked_where_its_1x1s_do():
    """MobileNetV2 at 224²: each inverted residual's expanded maps, in and out of its depthwise conv, are blocked, as
    onnxruntime's NCHWc chain is: its expanding 1×1 writes a blocked map from an NCHW one of 24 channels or a blocked
    one of 16 or 32, its projection reads one, onto 24 channels too (features.2-3: the last of its two vectors of 16
    half empty, written NCHW, so the map it writes stays NCHW). So are the first block's (features.1: the stem writes
    them, the projection onto 16 channels reads them). A depthwise conv's input and output always share a layout.
    The model computes what it computes with every map NCHW."""
    graph = zoo.build("mobilenet_v2", (224, 224))
    maps = reference.blocked(graph)
    dws = [n for n in graph.nodes if depthwise(n)]
    assert len(dws) == 17
    for n in dws:
        assert (n.inputs[0] in maps) == (n.output in maps), n.name
    assert {n.name for n in dws if n.output in maps} == {"features.1.conv.0.0",
                                                         *(f"features.{i}.conv.1.0" for i in range(2, 18))}
    assert not {n.output for n in graph.nodes if n.name in ("features.2.conv.2", "features.3.conv.2")} & maps
    same_as_nchw(graph, 1e-4)


@needs_vectors
def test_a_depthwise_conv_takes_its_maps_layout_only_where_its_kernel_and_its_neighbours_can():
    """Between blocked 1×1s a depthwise conv with a clamp (relu, clip, none) is blocked; one with an activation its
    kernel leaves (hardswish), or whose output a 3×3 reads, or 8 channels, keeps both its maps NCHW; its input's
    writer then writes NCHW too. The reference equals what it computes with every map NCHW."""
    nodes = [conv("a", ("x",), 32, 64), dwconv("d", "a", 64), conv("e", ("d",), 64, 64),
             dwconv("h", "e", 64, act="hardswish"), conv("f", ("h",), 64, 64),
             dwconv("g", "f", 64), conv("t", ("g",), 64, 64, 3), conv("u", ("t",), 64, 64)]
    graph = Graph("depthwise", "x", (32, 14, 14), "u", nodes)
    assert reference.blocked(graph) == {"a", "d"}
    same_as_nchw(graph)


@needs_vectors
def test_an_rgb_stem_writes_a_blocked_map_for_a_depthwise_conv_and_a_projection_onto_16_channels():
    """A 3×3 of 3 input channels writes a blocked map that a depthwise conv reads, whose output a 1×1 onto 16
    channels reads blocked; a 1×1 onto more channels whose output a 3×3 reads (NCHW) reads those 16 from NCHW, and a
    3×3 of 16 inputs writes NCHW (Winograd reads it). The reference equals what it computes with every map NCHW."""
    nodes = [conv("s", ("x",), 3, 32, 3), dwconv("d", "s", 32), conv("p", ("d",), 32, 16), conv("e", ("p",), 16, 32),
             conv("t", ("e",), 32, 16, 3), conv("f", ("t",), 16, 16, 3), dwconv("g", "f", 16)]
    graph = Graph("stem", "x", (3, 28, 28), "g", nodes)
    assert reference.blocked(graph) == {"s", "d"}
    same_as_nchw(graph)


@needs_vectors
def test_a_thin_1x1_reads_a_blocked_map_only_into_a_blocked_one():
    """A 1×1 of 32 inputs onto 64 reads the blocked map of 32 channels that a 1×1 writes where a depthwise conv reads
    its own output blocked (reading it blocked ran faster than from NCHW); where a 3×3 reads its output (NCHW), the
    map of 32 stays NCHW. The reference equals what it computes with every map NCHW."""
    for reader, want in ((dwconv("d", "e", 64), {"a", "e", "d"}), (conv("d", ("e",), 64, 64, 3), set())):
        nodes = [conv("a", ("x",), 64, 32), conv("e", ("a",), 32, 64), reader, conv("f", ("d",), 64, 64)]
        graph = Graph("thin", "x", (64, 14, 14), "f", nodes)
        assert reference.blocked(graph) == want
        same_as_nchw(graph)


def conv(name: str, inputs: tuple[str, ...], cin: int, cout: int, k: int = 1) -> Node:
    rng = np.random.default_rng(len(name))
    return Node("conv", name, inputs, name, {"groups": 1, "act": "relu"},
                {"w": rng.standard_normal((cout, cin, k, k), dtype=np.float32) * 0.1,
                 "b": rng.standard_normal(cout, dtype=np.float32)}, Window((k, k), (1, 1), (k // 2,) * 4))


def dwconv(name: str, src: str, c: int, act: str = "clip", k: int = 3) -> Node:
    rng = np.random.default_rng(len(name) + 7)
    return Node("conv", name, (src,), name, {"groups": c, "act": act, "lo": 0.0, "hi": 6.0},
                {"w": rng.standard_normal((c, 1, k, k), dtype=np.float32),
                 "b": rng.standard_normal(c, dtype=np.float32)}, Window((k, k), (1, 1), (k // 2,) * 4))


@needs_vectors
def test_a_residual_takes_the_layout_of_the_conv_that_adds_it():
    """m is written and read by 1×1s alone, but the 1×1 that adds it writes a map a 3×3 reads (NCHW): m stays NCHW
    too, as the kernel that adds a residual in its registers reads it laid out as its output; n, between 1×1s, is
    blocked. The reference equals what it computes with every map NCHW."""
    nodes = [conv("a", ("x",), 32, 64), conv("m", ("a",), 64, 64), conv("n", ("a",), 64, 64),
             conv("r", ("n", "m"), 64, 64), conv("t", ("r",), 64, 32, 3), conv("u", ("t",), 32, 64),
             conv("v", ("u",), 64, 64), conv("w", ("v",), 64, 16)]
    graph = Graph("residual", "x", (32, 14, 14), "w", nodes)
    assert reference.blocked(graph) == {"a", "n", "u", "v"}
    same_as_nchw(graph)


@needs_vectors
def test_the_references_maps_are_worked_out_again_when_a_node_changes():
    """reference.blocked keeps its answer per graph (every inference asks) until a node changes in place, as graph
    passes rewrite them: the 3×3 rewritten as a 1×1 unblocks nothing and lets the residual pair through, and its
    own map of 32 channels, which a 1×1 reads into a blocked map."""
    nodes = [conv("a", ("x",), 32, 64), conv("m", ("a",), 64, 64), conv("n", ("a",), 64, 64),
             conv("r", ("n", "m"), 64, 64), conv("t", ("r",), 64, 32, 3), conv("u", ("t",), 32, 64),
             conv("v", ("u",), 64, 64), conv("w", ("v",), 64, 16)]
    graph = Graph("rewritten", "x", (32, 14, 14), "w", nodes)
    first = reference.blocked(graph)
    assert reference.blocked(graph) is first and first == {"a", "n", "u", "v"}
    t = nodes[4]
    t.params["w"], t.window = t.params["w"][:, :, 1:2, 1:2].copy(), Window()
    assert reference.blocked(graph) == {"a", "m", "n", "r", "t", "u", "v"}


def touched(engine: Engine) -> set[str]:
    """Every name a step but a compute holds (its fields, its messages' buffers, its parts' buffers)."""
    names = set()
    for step in engine.program.steps:
        if isinstance(step, Compute):
            continue
        for value in vars(step).values():
            for item in value if isinstance(value, tuple) else (value,):
                if isinstance(item, Message):
                    names.add(item.buffer)
                elif isinstance(item, str) or isinstance(item, tuple) and item and isinstance(item[0], str):
                    names.add(item if isinstance(item, str) else item[0])
    return names


@needs_vectors
@pytest.mark.parametrize("model", ["resnet50", "mobilenet_v2"])
def test_one_rank_keeps_the_references_maps_blocked(model):
    """On one rank the engine keeps the reference's maps blocked, allocated as (C / 16, h, w, 16) (MobileNetV2's
    stem's among them), and computes what the reference does."""
    graph = zoo.build(model, (64, 64))
    engine = Engine(graph, make_plan(graph, 1, "nptp"), World(MPI.COMM_SELF, timeout=30))
    assert engine.blocked == reference.blocked(graph)
    for t in engine.blocked:
        c, h, w = graph.shapes[t]
        assert engine.buffers[t].shape == (c // 16, h, w, 16), t
    x = np.random.default_rng(2).standard_normal(graph.input_shape, dtype=np.float32)
    assert model != "mobilenet_v2" or "features.0.2" in engine.blocked
    out, _ = engine.infer(x)
    engine.close()
    np.testing.assert_array_equal(out, reference.run(graph, x))


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("strategy", ["nptp", "grid", "iop", "d3"])
@pytest.mark.parametrize("model", ["resnet50", "mobilenet_v2"])
def test_a_rank_never_blocks_a_map_an_exchange_touches(strategy, model):
    """On every rank and scheme, the blocked buffers of ResNet-50 and of MobileNetV2 are maps between 1×1s (and
    depthwise convs and a stem) that no exchange, copy, sum, reduction or head touches (the wire carries NCHW, the
    plan's bytes); ResNet-50's ranks block some."""
    graph = zoo.build(model, (64, 64))
    comm = MPI.COMM_WORLD
    engine = Engine(graph, api.plan(graph, comm.size, strategy), World(comm, timeout=60))
    nodes = {n.name: n for n in graph.nodes}
    try:
        assert not engine.blocked & (touched(engine) | {INPUT})
        assert engine.blocked or model != "resnet50" or not vectors.ENABLED
        for s in engine.program.steps:
            if isinstance(s, Compute) and ({s.output, *s.inputs} & engine.blocked):
                assert (one_by_one(nodes[s.node]) or model != "resnet50" and nodes[s.node].op == "conv") \
                    and not s.linear, s
    finally:
        engine.close()
