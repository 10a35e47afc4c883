"""Distributed output equals the single-process reference, and the wire carries exactly the plan's bytes.

`./run.sh test` runs this file under `mpiexec -n N python -m mpi4py -m pytest --with-mpi -m mpi` for
N = 2, 3 and 4; every case runs on all N ranks of the job.
"""

from __future__ import annotations

import functools

import pytest
from conftest import check_against_reference, run_or_refuse

from nptp_mpi.strategies import STRATEGIES as ALL_STRATEGIES

pytestmark = pytest.mark.mpi(min_size=2)

STRATEGIES = ("coedge", "grid", "nptp")
# A square input, and a non-square one not divisible by the cumulative stride, each with ≥ 4 cell rows so
# that 4 strips fit.
SIZES = {"default": ((128, 128), (136, 150)), "alexnet": ((160, 160), (167, 181))}
MODELS = ("vgg11", "vgg13", "vgg16", "vgg19", "resnet18", "resnet34", "resnet50", "mobilenet_v2", "alexnet")


@functools.lru_cache(maxsize=1)  # one model at a time: the VGGs hold 0.5 GB of weights each
def zoo_graph(name: str):
    from nptp_mpi.model import zoo

    return zoo.build(name, SIZES.get(name, SIZES["default"])[0])


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("size_index", range(2))
@pytest.mark.parametrize("model", MODELS)  # outermost, so each model is built once
def test_zoo_equals_reference(model: str, size_index: int, strategy: str) -> None:
    hw = SIZES.get(model, SIZES["default"])[size_index]
    check_against_reference(zoo_graph(model).with_input_hw(*hw), strategy)


@pytest.mark.parametrize("strategy,fuse", [("fused", (3, 2, 3)), ("fused", None), ("halp", (2,)), ("halp", None)])
@pytest.mark.parametrize("model", MODELS)
def test_blocks_equal_reference(model: str, strategy: str, fuse) -> None:
    """Fused blocks recompute their overlaps and exchange only at block starts; a host-assisted block has
    rank 0 compute and send the seams. Same output, the plan's bytes. fuse None: the cost model's pick."""
    hw = SIZES.get(model, SIZES["default"])[1]
    check_against_reference(zoo_graph(model).with_input_hw(*hw), strategy, fuse=fuse)


@pytest.mark.parametrize("where", ["all", "last cut", "retiled"])
@pytest.mark.parametrize("model", MODELS)
def test_tails_and_retilings_equal_reference(model: str, where: str) -> None:
    """A tail gathers the map to rank 0, which computes the rest alone (from layer 0: everything, with no
    scatter; from the last cut here after fused blocks); a retiling redistributes the map between two
    tilings (here strips, then the grid with every rank moved to another tile, then a tail): same output,
    the plan's bytes, whatever the cost model would pick."""
    from mpi4py import MPI

    from nptp_mpi.plan.plan import cuts, make_plan, plan_from_cells

    graph = zoo_graph(model).with_input_hw(*SIZES.get(model, SIZES["default"])[1])
    n, at = MPI.COMM_WORLD.size, cuts(graph)
    if where == "retiled":
        grid = make_plan(graph, n, "grid").cell_tiles
        plan = plan_from_cells(graph, make_plan(graph, n, "coedge").cell_tiles, "mixed", tail=at[-1],
                               retile=(at[len(at) // 2], grid[1:] + grid[:1]))
    else:  # the tail from the last cut after two fused blocks
        tiles = make_plan(graph, n, "nptp").cell_tiles
        plan = plan_from_cells(graph, tiles, "tail", fuse=() if where == "all" else (3, 2),
                               tail=0 if where == "all" else at[-1])
    check_against_reference(graph, plan.strategy, plan=plan)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_mixed_speeds_equal_reference(strategy: str) -> None:
    check_against_reference(zoo_graph("resnet18").with_input_hw(160, 128), strategy, [1.0, 2.0, 0.5, 1.5])


def test_onnx_file_equals_reference(tmp_path) -> None:
    from nptp_mpi.model.onnx_io import load_onnx, save_onnx

    path = tmp_path / "resnet18.onnx"  # tmp_path differs per rank: each rank writes and reads its own copy
    save_onnx(zoo_graph("resnet18").with_input_hw(128, 128), path)
    check_against_reference(load_onnx(str(path)), "nptp")


@pytest.mark.parametrize("strategy", sorted(ALL_STRATEGIES))
def test_every_op_equals_reference(strategy: str) -> None:
    """The warm-up graph holds every spatial op and conv flavour (a constant pad among them)."""
    from nptp_mpi.runtime.warm import every_op_graph

    run_or_refuse(every_op_graph().with_input_hw(40, 36), strategy)


@pytest.mark.parametrize("strategy", (*STRATEGIES, "fused", "halp", "tail", "mixed"))
@pytest.mark.parametrize("model", ("resnet18", "mobilenet_v2", "vgg11"))  # outermost: each model built once
def test_overlap_on_and_off_both_equal_the_reference(model: str, strategy: str) -> None:
    """Overlap computes a tile as core and strips, no overlap as one piece: different pieces, the same result
    within the suite's tolerance (each is checked against the reference), and the same refusals."""
    graph = zoo_graph(model).with_input_hw(136, 150)
    fuse = {"fused": (2, 3), "halp": (2,)}.get(strategy)
    on = check_against_reference(graph, strategy, overlap=True, fuse=fuse)
    off = check_against_reference(graph, strategy, overlap=False, fuse=fuse)
    assert (on is None) == (off is None)


@pytest.mark.parametrize("strategy", (*STRATEGIES, "fused", "halp", "tail"))
def test_an_image_travels_as_8_bit_pixels(strategy: str) -> None:
    """An image input is scattered as its 8-bit pixels (a quarter of the float bytes), each rank normalising
    its own part (the host of a host-assisted block the whole image, for its seams): the output equals the
    reference on the normalised image, and scatter and gather move exactly the plan's bytes."""
    graph = zoo_graph("resnet18").with_input_hw(136, 150)
    check_against_reference(graph, strategy, fuse={"fused": (2, 3), "halp": (2,)}.get(strategy), pixels=True)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("model", ["resnet18", "vgg11"])
def test_more_ranks_than_the_last_maps_cells(model: str, strategy: str) -> None:
    """At 64² the last map is 2×2 cells: from 3 strips (or 5 ranks) on, the tiles follow an earlier map and
    rank 0 runs the layers after it, the map gathered to it; same output, the plan's bytes."""
    from mpi4py import MPI

    from nptp_mpi.strategies import build

    graph = zoo_graph(model).with_input_hw(64, 64)
    plan = build(graph, MPI.COMM_WORLD.Get_size(), strategy)
    assert plan.grid is not None or plan.cells == (2, 2)
    if strategy == "coedge" and MPI.COMM_WORLD.Get_size() > 2:
        assert plan.grid is not None and plan.tail is not None
    check_against_reference(graph, strategy, plan=plan)
