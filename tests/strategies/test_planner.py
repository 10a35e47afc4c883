"""The planner: auto takes the candidate predicted fastest, every candidate's tiling minimises the same
prediction, IOP and tails are weighed with the boards and links, and planning never starts MPI."""

import subprocess
import sys
from dataclasses import replace

import pytest
from conftest import chain

from nptp_mpi.errors import PartitionError
from nptp_mpi.model import zoo
from nptp_mpi.plan.cost import Boards, Links, Setting, describe, latency
from nptp_mpi.plan.geometry import layers, spatial
from nptp_mpi.plan.plan import cuts, make_plan, pieces, plan_from_cells, rank_params, segment_tensors
from nptp_mpi.strategies import build
from nptp_mpi.strategies.auto import CANDIDATES, auto, candidates, choose, explain, segments

SPEEDS = [1.0] * 4


@pytest.fixture(scope="module")
def vgg16():
    return zoo.build("vgg16", (224, 224))


def test_auto_is_the_cheapest_candidate(vgg16) -> None:
    setting = Setting.nominal(SPEEDS)
    rows = candidates(vgg16, 4, SPEEDS, "total", setting)
    assert [name for name, _, _ in rows] == list(CANDIDATES)
    best = min((t, i) for i, (_, plan, t) in enumerate(rows) if plan is not None)
    chosen = auto(vgg16, 4, SPEEDS, "total", setting)
    assert chosen.strategy == "auto:" + rows[best[1]][1].strategy
    assert latency(vgg16, chosen, setting) == pytest.approx(best[0], rel=1e-12)


def test_plan_explains_auto_per_scheme_and_segment(vgg16) -> None:
    """`plan --strategy auto`: every candidate's prediction, the choice marked, and the chosen plan's segments."""
    lines = explain(vgg16, 4, SPEEDS, "total", Setting.nominal(SPEEDS))
    assert lines[0].startswith("auto: predicted latency per scheme (switched 100 Mbit/s")
    assert [line.split()[0] for line in lines[1:len(CANDIDATES) + 1]] == list(CANDIDATES)
    chosen = auto(vgg16, 4, SPEEDS, "total", Setting.nominal(SPEEDS)).strategy.removeprefix("auto:")
    assert [line.split()[0] for line in lines if line.endswith("<- chosen")] == [chosen]
    assert any(line.startswith(f"chosen: {chosen} over ") for line in lines)
    segs = [line for line in lines if line.startswith("  layers ")]
    assert segs[0].startswith("  layers 0-") and all(line.endswith("s predicted") for line in segs)


def test_choose_takes_the_fastest_and_ties_to_the_simpler() -> None:
    coedge, nptp, iop = object(), object(), object()
    assert choose([("coedge", coedge, 1.02), ("nptp", nptp, 1.01), ("iop", iop, 1.0)]) is iop
    assert choose([("coedge", coedge, 1.1), ("nptp", nptp, 1.0), ("iop", iop, 1.0)]) is nptp
    assert choose([("coedge", None, "cannot run"), ("iop", iop, 2.0)]) is iop
    assert choose([("coedge", None, "cannot run")]) is None


def test_auto_searches_the_nptp_tiling_once(vgg16, monkeypatch) -> None:
    """fused, halp, iop and tail all run over NPTP's tiles: auto searches them once, not per candidate, and
    runs the fused-block DP that fused and tail start from once."""
    import nptp_mpi.plan.plan
    import nptp_mpi.strategies.auto

    searched, search = [], nptp_mpi.plan.plan.partition
    monkeypatch.setattr(nptp_mpi.plan.plan, "partition", lambda name, *a: searched.append(name) or search(name, *a))
    priced, dp = [], nptp_mpi.strategies.auto.fused_prefixes
    monkeypatch.setattr(nptp_mpi.strategies.auto, "fused_prefixes", lambda *a: priced.append(a[1]) or dp(*a))
    rows = candidates(vgg16, 4, SPEEDS, "total", Setting.nominal(SPEEDS))
    assert sorted(searched) == ["coedge", "grid", "nptp"] and priced == [rows[2][1].cell_tiles]
    assert {p.cell_tiles for name, p, _ in rows if name not in ("coedge", "grid")} == {rows[2][1].cell_tiles}


def test_auto_tilings_follow_the_model(vgg16) -> None:
    """At 224² VGG-16 has 7x7 cells: a 2x2 NPTP grid balances 16:12:12:9 cells, strips 14:14:14:7. Picked by
    halo bytes NPTP takes the grid and is predicted slower than strips; auto's candidates pick their tiles
    by the prediction, so NPTP (whose search holds strips) is never predicted slower than CoEdge."""
    setting = Setting.nominal(SPEEDS)
    by_bytes = {s: latency(vgg16, build(vgg16, 4, s, SPEEDS, setting=setting), setting) for s in ("coedge", "nptp")}
    assert by_bytes["nptp"] > by_bytes["coedge"]
    rows = {name: t for name, plan, t in candidates(vgg16, 4, SPEEDS, "total", setting)}
    assert rows["nptp"] <= rows["coedge"] + 1e-12
    assert rows["fused"] <= rows["nptp"] + 1e-12  # no blocks is one of fused's choices


def test_auto_weighs_iop_with_the_boards_and_links(vgg16) -> None:
    """Slow boards and fast links: splitting the 4096x25088 classifier four ways saves three quarters of it."""
    setting = Setting(Boards((1e8,) * 4, 0.0), Links(0.0, 1e12))
    rows = {name: t for name, _, t in candidates(vgg16, 4, SPEEDS, "total", setting)}
    assert rows["iop"] < min(t for name, t in rows.items() if name != "iop")
    plan = auto(vgg16, 4, SPEEDS, "total", setting)
    assert plan.strategy == "auto:iop" and plan.head is not None


def test_tails_where_messages_are_dear() -> None:
    """With 20 ms per message, VGG-11's last layers at 224² (14x14 and 7x7 maps) cost more in halo
    exchanges than rank 0 takes to compute them alone: the tail gathers the map there and is predicted
    faster than exchanging to the end (fused blocks, which send fewer messages still, are faster again:
    auto takes them); with the nominal 0.3 ms no tail pays. MobileNetV2's 52 small layers on a 20 Mbit/s
    link with 5 ms per message: distributing does not pay at all, and auto has rank 0 run everything."""
    g = zoo.build("vgg11", (224, 224))
    dear = Setting(Boards((1e10,) * 4, 1e-4), Links(2e-2, 12.5e6, shared=True), given=True)
    rows = {name: (plan, t) for name, plan, t in candidates(g, 4, SPEEDS, "total", dear)}
    tail, total = rows["tail"][0], len(layers(spatial(g)))
    assert tail.tail in cuts(g) and total - tail.tail <= 6 and rows["tail"][1] < rows["nptp"][1]
    assert segments(g, tail)[-1] == (tail.tail, total, "tail on rank 0 alone (the map gathered to it first)")
    assert auto(g, 4, SPEEDS, "total", dear).strategy == "auto:fused"
    assert build(g, 4, "tail", setting=replace(dear, links=Links(3e-4, 12.5e6, shared=True))).tail == total - 1
    g = zoo.build("mobilenet_v2", (224, 224))
    alone = auto(g, 4, SPEEDS, "total", replace(dear, links=Links(5e-3, 2.5e6, shared=True)))
    assert alone.strategy == "auto:tail" and alone.tail == 0
    assert alone.scatter_bytes == alone.halo_bytes == 0 and alone.tiles[1:] == ((0, 0, 0, 0),) * 3


def test_fused_blocks_then_a_tail() -> None:
    """Fast boards, 20 ms per message: fused blocks save messages over VGG-11's early layers and a tail
    over its last ones; together they are predicted faster than either, and auto runs them."""
    g = zoo.build("vgg11", (224, 224))
    setting = Setting(Boards((2e10,) * 4, 1e-4), Links(2e-2, 12.5e6, shared=True), given=True)
    rows = {name: (plan, t) for name, plan, t in candidates(g, 4, SPEEDS, "total", setting)}
    both, t = rows["tail"]
    assert both.fuse and both.tail and t < rows["fused"][1]
    assert t < latency(g, plan_from_cells(g, both.cell_tiles, "tail", tail=both.tail), setting)
    chosen = auto(g, 4, SPEEDS, "total", setting)
    assert chosen.strategy == "auto:tail" and chosen.fingerprint() == both.fingerprint()
    kinds = [scheme.split(" (")[0] for _, _, scheme in segments(g, both)]
    assert kinds[0].startswith("fused block") and kinds[-1] == "tail on rank 0 alone"


def funnel():
    """Three 3x3 convs on a 256² map of 16 channels, five 2x2 pools down to 8², then ten convs there."""
    from nptp_mpi.model.graph import Graph
    from nptp_mpi.model.zoo import _Net

    net = _Net(0)
    for i, cin in enumerate((3, 16, 16)):
        net.conv(f"early{i}", cin, 16, 3)
    for i in range(5):
        net.maxpool(f"pool{i}", 2, 2)
    for i in range(10):
        net.conv(f"late{i}", 16, 16, 3)
    return Graph("funnel", "input", (3, 256, 256), net.x, net.nodes)


def test_mixed_switches_tiling_where_maps_turn_small() -> None:
    """With 1 ms per message on a 1 MB/s link the 256² layers want the 2x2 grid's fewer bytes, the 8² layers
    the strips' fewer neighbours: mixed switches right after the pools, where redistributing moves an 8²
    map, and is predicted faster than either tiling alone."""
    g = funnel()
    setting = Setting(Boards((1e11,) * 4, 0.0), Links(1e-3, 1e6), given=True)
    rows = {name: (plan, t) for name, plan, t in candidates(g, 4, SPEEDS, "total", setting)}
    mixed, t = rows["mixed"]
    assert t < min(rows[name][1] for name in ("coedge", "grid", "nptp"))
    assert mixed.cell_tiles == rows["grid"][0].cell_tiles and mixed.retile == (8, rows["coedge"][0].cell_tiles)
    redistributed = mixed.halos[layers(spatial(g))[8]]
    # what the strips read of others' quadrants, halo rows included: no more than the 8² map (the bounding
    # boxes of own and read tiles would move 5 KB)
    assert redistributed.nbytes <= 4 * 16 * 8 * 8
    assert [(a, b) for a, b, _ in segments(g, mixed)] == [(0, 8), (8, 18)]
    assert build(g, 4, "mixed", setting=setting).retile == mixed.retile


def test_tail_is_gathered_to_rank_0_which_computes_it_alone() -> None:
    g = zoo.build("resnet18", (96, 96))
    base = make_plan(g, 3, "nptp")
    k = cuts(g)[-2]
    plan = plan_from_cells(g, base.cell_tiles, tail=k)
    first, later = layers(spatial(g))[k], segment_tensors(g, k)
    assert later and first not in later
    for t in later:
        _, h, w = g.shapes[t]
        assert plan.own[t] == ((0, 0, h, w), (0, 0, 0, 0), (0, 0, 0, 0))
        assert t not in plan.halos or not plan.halos[t].transfers
    gather = plan.halos[first]
    assert gather.need[0] == (0, 0, *g.shapes[first][1:])
    assert {(x.src, x.dst, x.rect) for x in gather.transfers} == {(r, 0, plan.own[first][r]) for r in (1, 2)}
    tail_nodes = [n for n in g.nodes if n.spatial and n.output in later]
    assert all(pieces(plan, g, n, r) == ([], []) for n in tail_nodes for r in (1, 2))
    kept = rank_params(g, plan, 1)
    assert not any(n.name in kept for n in tail_nodes) and all(n.name in rank_params(g, plan, 0) for n in tail_nodes
                                                               if n.params)
    assert base.halo_bytes - plan.halo_bytes == sum(base.halos[t].nbytes for t in base.halos if t in later) \
        + base.halos[first].nbytes - gather.nbytes
    with pytest.raises(PartitionError, match="no cut"):
        plan_from_cells(g, base.cell_tiles, tail=3)  # inside a residual block


def test_build_iop_takes_pairs_by_the_setting() -> None:
    graph, boards = chain(), Boards((1e9, 1e9), 0.0)
    assert [(p.a, p.b) for p in build(graph, 2, "iop", setting=Setting(boards, Links(0.0, 1e15))).pairs] == [("b", "c")]
    assert build(graph, 2, "iop", setting=Setting(boards, Links(0.0, 1e3))).pairs == ()


def test_no_candidate_fits() -> None:
    from conftest import conv

    from nptp_mpi.model.graph import Graph, Node

    g = Graph("dot", "input", (3, 1, 1), "gap", [conv("c1", "input", 3, 8, k=1, pad=0),  # one pixel: no map
                                                  Node("gap", "gap", ("c1",), "gap")])   # carries two tiles
    rows = candidates(g, 2, [1.0, 1.0], "total", Setting.nominal([1.0, 1.0]))
    assert all(plan is None and isinstance(why, str) for _, plan, why in rows)
    with pytest.raises(PartitionError, match="cell"):
        auto(g, 2, [1.0, 1.0], "total", Setting.nominal([1.0, 1.0]))


def test_describe_says_where_board_speeds_come_from() -> None:
    setting = Setting.nominal([1.0, 2.0])
    assert "10.0, 20.0 GFLOP/s" in describe(setting)
    layered = replace(setting, boards=replace(setting.boards, s_per_px=({"c": 1e-9},) * 2))
    assert "GFLOP/s" not in describe(layered) and "per-layer times" in describe(layered)


def test_planning_does_not_start_mpi() -> None:
    code = ("import sys; from nptp_mpi.cli import main, plan; from nptp_mpi.strategies import build; "
            "from nptp_mpi.model import zoo; build(zoo.build('resnet18', (64, 64)), 2, 'auto'); "
            "print('mpi4py.MPI' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
