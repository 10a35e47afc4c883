"""IOP: the split head (and conv pairs) give the reference's output, move exactly the plan's bytes and hold
fewer weights per rank.

The MPI tests run under `mpiexec -n N python -m mpi4py -m pytest --with-mpi -m mpi` for N = 2, 3, 4; the
others are plain tests.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from conftest import assert_close, chain

MODELS = ("vgg11", "vgg13", "vgg16", "vgg19", "resnet18", "resnet34", "resnet50", "mobilenet_v2", "alexnet")
SIZES = {"default": (64, 64), "alexnet": (160, 160)}  # VGG at 64: its 2x2 map is pooled up to 7x7


@functools.lru_cache(maxsize=1)  # one model at a time: the VGGs hold 0.5 GB of weights each
def zoo_graph(name: str):
    from nptp_mpi.model import zoo

    return zoo.build(name, SIZES.get(name, SIZES["default"]))


def tail_pairs(graph, plan) -> list[tuple[str, str]]:
    """The conv pairs IOP's greedy pairing takes when the later a pair, the larger its gain."""
    from nptp_mpi.strategies.iop import candidates, pick

    return pick(graph, {c: i for i, c in enumerate(candidates(graph, plan))})


def check_iop(graph, paired: bool = True, speeds=None, overlap: bool = True) -> None:
    """Run the iop plan (with every tail pair IOP can take, when paired) on every rank of the job; rank 0
    checks output, bytes and weights, then every rank learns the verdict."""
    from mpi4py import MPI

    from nptp_mpi.plan.plan import weight_bytes
    from nptp_mpi.runtime.engine import Engine
    from nptp_mpi.runtime.exchange import World
    from nptp_mpi.runtime.reference import run as reference
    from nptp_mpi.strategies.iop import iop_plan, with_pairs

    world = World(MPI.COMM_WORLD)
    x = np.random.default_rng(1).standard_normal(graph.input_shape, dtype=np.float32)
    plan = iop_plan(graph, world.size, speeds and speeds[: world.size])
    plan = with_pairs(graph, plan, tail_pairs(graph, plan) if paired else [])
    engine = Engine(graph, plan, world, overlap=overlap)
    out, stats = engine.infer(x if world.rank == 0 else None)
    engine.close()
    comm = world.comm
    recv, sent, other = comm.reduce(stats.halo_recv), comm.reduce(stats.halo_sent), comm.reduce(stats.other_sent)
    held = comm.gather(engine.weight_bytes)
    failure = None
    if world.rank == 0:
        try:
            assert_close(out, reference(graph, x), 1e-5)
            assert recv == sent == plan.halo_bytes, (recv, sent, plan.halo_bytes)
            assert other == plan.scatter_bytes + plan.gather_bytes, (other, plan.scatter_bytes, plan.gather_bytes)
            assert held == weight_bytes(graph, plan), (held, weight_bytes(graph, plan))
        except AssertionError as e:
            failure = str(e)
    failure = world.bcast(failure)  # every rank passes or fails the same test: no rank runs ahead
    assert failure is None, failure


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("model", MODELS)
def test_iop_equals_reference(model: str) -> None:
    check_iop(zoo_graph(model))


@pytest.mark.mpi(min_size=2)
def test_unpooled_head_split_equals_reference() -> None:
    """At 224 AlexNet's last map is 6x6 and the adaptive pool is dropped: the flatten reads the tiles directly."""
    from nptp_mpi.model import zoo

    check_iop(zoo.build("alexnet", (224, 224)), paired=False)


def test_bins_cover_what_a_tile_touches() -> None:
    from nptp_mpi.strategies.iop import _bins

    # A 4x4 map pooled up to 7x7: bin i reads rows [floor(4i/7), ceil(4(i+1)/7)).
    assert _bins((0, 0, 2, 4), (4, 4), (7, 7)) == (0, 0, 4, 7)
    assert _bins((2, 0, 4, 4), (4, 4), (7, 7)) == (3, 0, 7, 7)
    assert _bins((1, 2, 3, 4), (7, 7), (7, 7)) == (1, 2, 3, 4)  # no pooling: a pixel is a bin
    assert _bins((0, 0, 8, 3), (8, 8), (2, 2)) == (0, 0, 2, 1)  # pooled down: 4x4 bins


@pytest.mark.parametrize("ranks", (2, 3, 4))
def test_vgg16_iop_holds_less_weight_per_rank(ranks: int) -> None:
    from nptp_mpi.plan.plan import make_plan, weight_bytes
    from nptp_mpi.strategies.iop import iop_plan

    graph = zoo_graph("vgg16").with_input_hw(224, 224)
    iop = weight_bytes(graph, iop_plan(graph, ranks))
    for strategy in ("coedge", "grid", "nptp"):
        spatial = weight_bytes(graph, make_plan(graph, ranks, strategy))
        assert max(iop) < 0.6 * max(spatial), (iop, spatial)  # the largest board (rank 0, with the head) holds far less
        assert sum(iop) == sum(spatial)  # split, not copied: at 224 the 7x7 map is not pooled, so bins are disjoint


def test_heads_without_flatten_fc_keep_their_reduction() -> None:
    from nptp_mpi.strategies.iop import iop_plan

    plan = iop_plan(zoo_graph("resnet18"), 3)
    assert plan.head is None and plan.gather == "reduce"


@pytest.mark.mpi(min_size=2)
def test_freed_weights_are_gone_and_the_engine_still_runs() -> None:
    """After free_unused_weights no full FC matrix is alive on any rank (only rank 0 keeps the later FC
    layers), and the engine gives the same output as before."""
    import dataclasses
    import gc
    import weakref

    from mpi4py import MPI

    from nptp_mpi.model.graph import Graph
    from nptp_mpi.runtime.engine import Engine
    from nptp_mpi.runtime.exchange import World
    from nptp_mpi.strategies.iop import iop_plan

    world = World(MPI.COMM_WORLD)
    base = zoo_graph("alexnet")
    nodes = [dataclasses.replace(n, params={k: np.array(v) for k, v in n.params.items()}) for n in base.nodes]
    graph = Graph(base.name, base.input, base.input_shape, base.output, nodes)
    fcs = [weakref.ref(n.params["w"]) for n in nodes if n.op == "gemm"]
    x = np.random.default_rng(2).standard_normal(graph.input_shape, dtype=np.float32)
    engine = Engine(graph, iop_plan(graph, world.size), world)
    before, _ = engine.infer(x if world.rank == 0 else None)
    engine.free_unused_weights()
    del nodes
    gc.collect()
    alive = [ref() is not None for ref in fcs]
    after, _ = engine.infer(x if world.rank == 0 else None)
    engine.close()
    verdict = world.allgather((alive, world.rank != 0 or bool(np.array_equal(before, after))))
    assert all(same for _, same in verdict)
    assert [a for a, _ in verdict] == [[False, True, True]] + [[False, False, False]] * (world.size - 1)


def test_pairs_are_taken_where_they_are_predicted_faster() -> None:
    """On 3x3 cells two equal boards get 3 and 6 cells, but 32 channels each: with free links the pair wins
    by balance; on a slow link the pair's allgather and reduce-scatter cost more than the halos they replace."""
    from nptp_mpi.plan.cost import Boards, Links
    from nptp_mpi.strategies.iop import iop_plan

    graph, boards = chain(), Boards((1e9, 1e9), 0.0)
    fast = iop_plan(graph, 2, boards=boards, links=Links(0.0, 1e15))
    slow = iop_plan(graph, 2, boards=boards, links=Links(0.0, 1e3))
    assert [(p.a, p.b) for p in fast.pairs] == [("b", "c")]  # (a, b) gains less (a is cheaper) and shares b
    assert slow.pairs == ()
    assert iop_plan(graph, 2).pairs == ()  # nothing to predict with: no pairs


def test_pick_takes_the_largest_gains_that_share_no_tensor() -> None:
    from nptp_mpi.plan.plan import make_plan
    from nptp_mpi.strategies.iop import candidates, pick

    graph = chain()
    assert candidates(graph, make_plan(graph, 2)) == [("a", "b"), ("b", "c")]
    assert pick(graph, {("a", "b"): 1.0, ("b", "c"): 2.0}) == [("b", "c")]
    assert pick(graph, {("a", "b"): 2.0, ("b", "c"): 1.0}) == [("a", "b")]
    assert pick(graph, {("a", "b"): -1.0, ("b", "c"): 0.0}) == []


def test_pair_bytes_are_an_allgather_and_a_reduce_scatter() -> None:
    from nptp_mpi.plan.plan import make_plan
    from nptp_mpi.strategies.iop import with_pairs

    graph = chain(6)
    for ranks in (2, 3, 4):
        plan = with_pairs(graph, make_plan(graph, ranks), [("a", "b")])
        held = plan.halos["b"].need  # b's output is read by conv c: each rank's tile with its halo
        assert plan.halos["pre"].nbytes == 4 * 8 * 36 * (ranks - 1)  # every rank gets all of a's input
        assert plan.halos["b"].nbytes == 4 * 64 * (ranks - 1) * sum((y1 - y0) * (x1 - x0) for y0, x0, y1, x1 in held)
        assert "a" not in plan.halos  # a's channels never leave their rank
        edges = [c for c0, c1 in plan.pairs[0].channels for c in (c0, c1)]
        assert edges[0] == 0 and edges[-1] == 64 and edges == sorted(edges)  # a's channels, split in rank order


def test_channels_follow_speeds_with_one_each_at_least() -> None:
    from nptp_mpi.strategies.iop import _channels

    assert _channels(64, (1.0, 1.0)) == ((0, 32), (32, 64))
    assert _channels(10, (1.0, 3.0)) == ((0, 2), (2, 10))  # round(2.5) is 2
    assert _channels(3, (100.0, 1.0, 1.0)) == ((0, 1), (1, 2), (2, 3))


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("overlap", (True, False))
def test_pairs_on_unequal_boards_equal_reference(overlap: bool) -> None:
    """Channels and tiles in proportion to unequal speeds; with overlap the allgather is waited for by the pair."""
    check_iop(chain(12), speeds=[1.0, 2.0, 0.5, 1.5], overlap=overlap)
