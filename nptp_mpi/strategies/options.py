"""What every scheme takes besides the graph, the boards and the cost model's setting."""

from __future__ import annotations

from dataclasses import dataclass

from nptp_mpi.model.graph import Graph
from nptp_mpi.plan.cost import Setting, model_cost


@dataclass(frozen=True)
class Options:
    """fuse: fixed fused blocks (None: the cost model's choice); tiling: the partition the maps are tiled by
    (a tiling scheme's own name, or what fused, halp, tail and iop build on); cells and prefixes: that
    tiling's cell tiles and the fused-block DP over them, when already computed (auto shares them)."""

    fuse: tuple[int, ...] | None = None
    tiling: str = "nptp"
    cells: tuple | None = None
    prefixes: list[tuple[int, ...]] | None = None


def tile_cost(graph: Graph, objective: str, setting: Setting):
    """The partition search's cost hook: predicted seconds where the setting was given (a calibration or a
    link rate), else None (halo bytes decide)."""
    if not setting.given:
        return None
    return model_cost(graph, setting.boards, setting.links, setting.overlap, objective=objective)
