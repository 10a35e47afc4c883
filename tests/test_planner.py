"""The planner: auto takes the candidate predicted fastest, every candidate's tiling minimises the same
prediction, IOP is weighed with the boards and links, and planning never starts MPI."""

import subprocess
import sys
from dataclasses import replace

import pytest
from test_iop import chain

from nptp_mpi import zoo
from nptp_mpi.cost import Boards, Links
from nptp_mpi.partition import PartitionError
from nptp_mpi.planner import CANDIDATES, Setting, auto, build, candidates, describe, latency

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


def test_build_iop_takes_pairs_by_the_setting() -> None:
    graph, boards = chain(), Boards((1e9, 1e9), 0.0)
    assert [(p.a, p.b) for p in build(graph, 2, "iop", setting=Setting(boards, Links(0.0, 1e15))).pairs] == [("b", "c")]
    assert build(graph, 2, "iop", setting=Setting(boards, Links(0.0, 1e3))).pairs == ()


def test_no_candidate_fits() -> None:
    g = zoo.build("resnet18", (32, 32))  # 1x1 cells
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
    code = ("import sys; from nptp_mpi import cli, planner, zoo; "
            "planner.build(zoo.build('resnet18', (64, 64)), 2, 'auto'); print('mpi4py.MPI' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
