"""Partition strategies: coverage, balance, NPTP never worse than strips or grid, errors."""

import numpy as np
import pytest
from conftest import small_net

from nptp_mpi.errors import PartitionError
from nptp_mpi.model import zoo
from nptp_mpi.model.graph import Graph
from nptp_mpi.plan.geometry import halo_matrix, spatial
from nptp_mpi.plan.tiling import STRATEGIES, halo_cost, objective_bytes, parse_speeds, partition

MIXED = [1, 2, 0.5, 1.5]


def spatial_at(graph: Graph, hw) -> Graph:
    """The spatial prefix of a zoo model at another input size (halos do not depend on the head)."""
    sp = spatial(graph)
    return Graph(graph.name, graph.input, (3, *hw), sp.last, [n for n in graph.nodes if n.spatial])


@pytest.fixture(scope="module", params=["vgg16", "resnet18"])
def model(request):
    return zoo.build(request.param)


def speeds_for(n, mixed):
    return [float(MIXED[i % 4]) if mixed else 1.0 for i in range(n)]


def covers(rects, cells):
    grid = np.zeros(cells, int)
    for y0, x0, y1, x1 in rects:
        assert y0 < y1 and x0 < x1
        grid[y0:y1, x0:x1] += 1
    return (grid == 1).all()


def balanced(rects, speeds, cells):
    """|area - share * total| <= longer side: every tile within one cell row/column of its share."""
    total = cells[0] * cells[1]
    return all(abs((y1 - y0) * (x1 - x0) - s / sum(speeds) * total) <= max(y1 - y0, x1 - x0)
               for (y0, x0, y1, x1), s in zip(rects, speeds, strict=True))


@pytest.mark.parametrize("hw", [(224, 224), (512, 512)])
def test_nptp_never_worse_than_strips_or_grid(model, hw):
    sp = spatial(spatial_at(model, hw))
    for objective in ("total", "max"):
        cost = halo_cost(sp, objective)
        for mixed in (False, True):
            for n in range(2, 17):
                speeds = speeds_for(n, mixed)
                layouts = {}
                for name, strategy in STRATEGIES.items():
                    if name == "d3":  # d3 starts from the nptp partition (and re-cuts it at run time)
                        continue
                    try:
                        layouts[name] = strategy(sp.cells, speeds, cost)
                    except PartitionError:
                        assert name != "nptp"
                nbytes = {k: objective_bytes(halo_matrix(sp, np.array(r)), objective) for k, r in layouts.items()}
                others = [nbytes[k] for k in ("coedge", "grid") if k in nbytes]
                case = (model.name, hw, objective, mixed, n)
                assert covers(layouts["nptp"], sp.cells), case
                assert not others or nbytes["nptp"] <= min(others), (case, nbytes)
                if "coedge" in layouts:
                    assert balanced(layouts["coedge"], speeds, sp.cells), case
                if "grid" not in layouts or layouts["nptp"] != layouts["grid"]:
                    assert balanced(layouts["nptp"], speeds, sp.cells), (case, layouts["nptp"])


def test_nptp_four_equal_boards_two_thirds_of_strips(model):
    """2x2 moves 2 cut lengths instead of 3, plus the four corner blocks at the crossing."""
    sp = spatial(model)
    cost = halo_cost(sp)
    strips, nptp = (objective_bytes(halo_matrix(sp, np.array(STRATEGIES[s](sp.cells, [1.0] * 4, cost))), "total")
                    for s in ("coedge", "nptp"))
    corners = sum(4 * 4 * sp.channels[t] for t in sp.halo_tensors())  # 1-pixel halos: 4 blocks of 1x1
    assert nptp <= 2 / 3 * strips + corners


def test_three_equal_boards_make_a_t_junction():
    cost = halo_cost(spatial(spatial_at(zoo.build("resnet18"), (256, 256))))
    rects = STRATEGIES["nptp"]((8, 8), [1.0] * 3, cost)
    assert sorted(rects) == [(0, 0, 3, 8), (3, 0, 8, 4), (3, 4, 8, 8)] or \
        sorted(rects) == [(0, 0, 8, 3), (0, 3, 4, 8), (4, 3, 8, 8)] or \
        len({r[0] for r in rects} | {r[2] for r in rects}) == 3  # one full cut, one half cut
    strips = STRATEGIES["coedge"]((8, 8), [1.0] * 3, cost)
    assert cost.exact(rects) < cost.exact(strips)


def test_hand_built_graph_all_strategies():
    g = small_net()
    for strategy in STRATEGIES:
        rects = partition(strategy, g, 4)
        assert covers(rects, spatial(g).cells)


def test_too_many_ranks_names_the_largest_count():
    g = small_net((32, 32))  # stride 4: 8x8 cells
    with pytest.raises(PartitionError, match="largest rank count that works is 8"):
        partition("coedge", g, 9)
    with pytest.raises(PartitionError, match="largest rank count that works is 64"):
        partition("nptp", g, 65)
    with pytest.raises(PartitionError, match="10 ranks would fit.*largest rank count that works is 64"):
        partition("grid", g, 11)


def test_unknown_strategy_lists_valid_ones():
    with pytest.raises(PartitionError, match="coedge, grid, nptp"):
        partition("stripes", small_net(), 2)


@pytest.mark.parametrize("text", ["1,2", "1,x,1", "1,0,1", "1,-2,1", "1,nan,1", "1,inf,1"])
def test_bad_speeds(text):
    with pytest.raises(ValueError, match="--speeds"):
        parse_speeds(text, 3)


def test_parse_speeds():
    assert parse_speeds("1, 2,0.5", 3) == [1.0, 2.0, 0.5]
