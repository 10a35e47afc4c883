"""D3 run-time re-partitioning: cut moves on injected timings (plain tests), and a slowed rank under MPI.

The MPI test runs under `mpiexec -n N python -m mpi4py -m pytest --with-mpi -m mpi` (N = 2, 3, 4); the
others are plain pytest and simulate a rank's time as its tile's area / its true speed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_close, run_cli

from nptp_mpi.model import zoo
from nptp_mpi.plan.geometry import spatial
from nptp_mpi.plan.tiling import STRATEGIES, check, halo_cost, partition
from nptp_mpi.strategies.d3 import imbalance, predicted, rebalance, segments


@pytest.fixture(scope="module")
def graph():
    return zoo.build("resnet18", (512, 512))  # 16x16 cells


def area(r) -> int:
    return (r[2] - r[0]) * (r[3] - r[1])


def converge(sp, tiles, true, rounds=4):
    """Feed simulated times (area / true speed) back until rebalance is satisfied: the tiles each round."""
    history = [tiles]
    for _ in range(rounds):
        new = rebalance(sp, history[-1], predicted(history[-1], true))
        if new is None:
            break
        check(new, sp)
        history.append(new)
    return history


def true_speed_max(sp, true) -> float:
    """The slowest rank's time on the NPTP plan made with the true speeds: what d3 should reach."""
    return max(predicted(STRATEGIES["nptp"](sp.cells, true, halo_cost(sp)), true))


def test_slow_rank_moves_only_its_cuts_and_converges(graph):
    sp = spatial(graph)
    tiles = partition("nptp", graph, 4, [1, 1, 1, 2])  # planned for these speeds: a T-junction layout
    assert any(len(s.before) > 1 or len(s.after) > 1 for s in segments(tiles))
    true = [1, 1, 0.5, 2]  # rank 2 runs at half the speed the plan assumed
    new = rebalance(sp, tiles, predicted(tiles, true))
    assert new is not None and new != tiles
    check(new, sp)
    lines = {(s.axis, s.at) for s in segments(tiles) if 2 in s.before + s.after}  # cut lines bounding rank 2
    for old, moved in zip(tiles, new, strict=True):
        for k in range(4):
            if old[k] != moved[k]:
                assert (k % 2, old[k]) in lines, (old, moved)
    ideal = np.array(true) / sum(true)
    before, after = (np.array([area(r) for r in t]) / area((0, 0, *sp.cells)) for t in (tiles, new))
    assert after[2] < before[2] and np.abs(after - ideal).sum() < np.abs(before - ideal).sum()
    history = converge(sp, new, true)
    final = predicted(history[-1], true)
    assert len(history) <= 3 and imbalance(final) <= 1.1, history
    assert max(final) <= 1.1 * true_speed_max(sp, true)


def test_balanced_times_change_nothing(graph):
    sp = spatial(graph)
    tiles = partition("nptp", graph, 4)
    assert rebalance(sp, tiles, [1.0, 1.05, 0.97, 1.02]) is None
    assert rebalance(sp, [(0, 0, 16, 16)], [3.0]) is None


@pytest.mark.parametrize("strategy,ranks", [("coedge", 4), ("grid", 4), ("grid", 6), ("nptp", 3), ("nptp", 5)])
def test_strips_grids_and_nptp_converge(graph, strategy, ranks):
    sp = spatial(graph)
    true = [1.0] * ranks
    true[ranks // 2] = 0.5
    history = converge(sp, partition(strategy, graph, ranks), true)
    assert len(history) > 1
    assert max(predicted(history[-1], true)) <= 1.1 * true_speed_max(sp, true), history


def test_falls_back_to_a_full_repartition_when_no_cut_can_move():
    g = zoo.build("resnet18", (128, 128))  # 4x4 cells: four strips of one row each, no cut can move
    sp = spatial(g)
    strips = partition("coedge", g, 4)
    true = [1, 1, 0.25, 1]
    new = rebalance(sp, strips, predicted(strips, true))
    assert new is not None and any(r[3] - r[1] < 4 for r in new)  # no longer strips
    assert max(predicted(new, true)) < max(predicted(strips, true))


def test_deterministic(graph):
    sp = spatial(graph)
    tiles = partition("nptp", graph, 5, [1, 2, 0.5, 1.5, 1])
    times = [0.31, 0.52, 0.4, 0.2, 0.33]
    first = rebalance(sp, tiles, times)
    assert first is not None
    assert all(rebalance(sp, [list(r) for r in tiles], list(times)) == first for _ in range(3))


def test_plan_command_knows_d3():
    p = run_cli(["plan", "--model", "resnet18", "--size", "128", "--ranks", "3", "--strategy", "d3", "--json"])
    assert p.returncode == 0, p.stderr
    plan = json.loads(p.stdout)
    assert plan["strategy"] == "d3" and plan["cell_tiles"] == [list(r) for r in partition("nptp", zoo.build(
        "resnet18", (128, 128)), 3)]


def test_run_reports_the_trace(tmp_path):
    rep = tmp_path / "r.json"
    p = run_cli(["run", "--model", "resnet18", "--size", "192", "--strategy", "d3", "--warmup", "1", "--repeat", "3",
                 "--verify", "--report", str(rep)], ranks=2, env={"NPTP_SLOW": "1:4"})
    assert p.returncode == 0, p.stderr
    report = json.loads(rep.read_text())
    trace = report["d3_trace"]
    assert [e["inference"] for e in trace] == [1, 2, 3, 4]  # the warm-up run first
    assert report["verify_rel_error"] <= 1e-5 and report["halo_bytes"] == report["plan_halo_bytes"]
    layouts = [e["tiles"] for e in trace if "tiles" in e]  # the first run's, then each one re-partitioned to
    assert len(layouts) >= 2 and area(layouts[-1][1]) < area(layouts[0][1]), trace
    assert "d3: after inference 1: compute max/mean" in p.stderr and report["strategy"] == "d3"


@pytest.mark.mpi(min_size=2)
def test_slowed_rank_gets_less_area_and_every_output_is_exact(monkeypatch):
    from mpi4py import MPI

    from nptp_mpi.cli.run import Runner
    from nptp_mpi.plan.plan import make_plan
    from nptp_mpi.runtime.exchange import World
    from nptp_mpi.runtime.reference import run as reference

    world = World(MPI.COMM_WORLD)
    slow = world.size - 1
    monkeypatch.setenv("NPTP_SLOW", f"{slow}:3")
    g = zoo.build("resnet18", (192, 192))  # 6x6 cells
    x = np.random.default_rng(2).standard_normal(g.input_shape, dtype=np.float32)
    want = reference(g, x) if world.rank == 0 else None
    runner = Runner(g, make_plan(g, world.size, "d3"), world)
    first, failure = runner.plan.cell_tiles, None
    try:
        for _ in range(5):
            out, stats, _ = runner.infer(x if world.rank == 0 else None)
            recv, sent = world.comm.reduce(stats.halo_recv), world.comm.reduce(stats.halo_sent)
            if world.rank == 0 and failure is None:
                try:
                    assert_close(out, want, 1e-5)
                    assert recv == sent == runner.plan.halo_bytes, (recv, sent, runner.plan.halo_bytes)
                except AssertionError as e:
                    failure = str(e)
        last = runner.plan.cell_tiles
    finally:
        runner.close()
    if world.rank == 0 and failure is None and not area(last[slow]) < area(first[slow]):
        failure = f"rank {slow} slowed 3x kept its area: {first} -> {last}; trace {runner.trace}"
    failure = world.bcast(failure)  # every rank passes or fails together
    assert failure is None, failure
    assert len(runner.trace) == 5 and "tiles" in runner.trace[0]
