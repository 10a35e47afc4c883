"""CoEdge strips, a grid, or NPTP's non-penetrative tiles: the maps tiled once, every halo exchanged
layer by layer (d3 starts from NPTP's and re-cuts it at run time)."""

from __future__ import annotations

from nptp_mpi.errors import PartitionError
from nptp_mpi.model.graph import Graph
from nptp_mpi.plan.cost import Setting
from nptp_mpi.plan.plan import Plan, make_plan
from nptp_mpi.plan.tiling import STRATEGIES as TILINGS
from nptp_mpi.strategies.options import Options, tile_cost


def tiles(graph: Graph, ranks: int, speeds: list[float], objective: str, setting: Setting,
          options: Options = Options()) -> Plan:
    """The plan of the tiling options.tiling names, tiles picked by the cost model where the setting was given."""
    if options.fuse:
        raise PartitionError(f"--fuse needs --strategy fused (strategy {options.tiling} exchanges every layer)")
    return make_plan(graph, ranks, options.tiling, speeds, objective, tile_cost(graph, objective, setting))


def cells_for(graph: Graph, ranks: int, speeds: list[float], objective: str, setting: Setting,
              options: Options) -> tuple:
    """The cell tiles fused blocks, HALP and a tail build on: options.cells, else options.tiling's."""
    if options.tiling not in TILINGS:
        raise PartitionError(f"unknown --partition {options.tiling!r}; choose one of {', '.join(TILINGS)}")
    if options.cells is not None:
        return options.cells
    return make_plan(graph, ranks, options.tiling, speeds, objective, tile_cost(graph, objective, setting)).cell_tiles
