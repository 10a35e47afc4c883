"""Mixed tilings: one tiling, then another from a cut on, the map redistributed there (a tiling can pay
early, where maps are large, and another late, where they are small)."""

from __future__ import annotations

import math

from nptp_mpi.errors import PartitionError
from nptp_mpi.model.graph import Graph
from nptp_mpi.plan.cost import Setting, latency
from nptp_mpi.plan.geometry import layers, spatial
from nptp_mpi.plan.plan import FLOAT_BYTES, Plan, cuts, make_plan, plan_from_cells
from nptp_mpi.strategies.fused import block_times
from nptp_mpi.strategies.options import Options, tile_cost


def mixed_plan(graph: Graph, tilings: dict[str, tuple], speeds: tuple[float, ...], objective: str, setting: Setting,
               tries: int = 3) -> Plan:
    """Halo exchange every layer over one of `tilings` (name -> cell tiles), then from a cut on over another,
    the map redistributed between them at the cut: the pair and cut predicted fastest. A tiling can pay early
    (large maps: fewest bytes) and another late (small maps: fewest messages). Each layer's step is priced
    once per tiling, a redistribution at most as the whole map sent once; the `tries` cuts these prices
    favour per pair are then predicted whole (redistribution and overlap included)."""
    distinct = list(dict.fromkeys(tilings.values()))
    if len(distinct) < 2:
        raise PartitionError("mixed: the tilings coincide, there is nothing to switch between")
    names = layers(spatial(graph))
    move = [FLOAT_BYTES * math.prod(graph.shapes[t]) / setting.links.bytes_per_s for t in names]
    # the scatter, priced into layer 0 by block_times, adds the same to every cut of a pair
    steps = {cells: block_times(graph, plan_from_cells(graph, cells), setting, list(range(len(names))))
             for cells in distinct}
    plans = []
    for a in distinct:
        for b in distinct:
            if a != b:
                ks = sorted(cuts(graph), key=lambda k: sum(steps[a][:k]) + move[k] + sum(steps[b][k:]))[:tries]
                plans += [plan_from_cells(graph, a, "mixed", speeds, objective, retile=(k, b)) for k in ks]
    return min(plans, key=lambda p: latency(graph, p, setting))


def mixed(graph: Graph, ranks: int, speeds: list[float], objective: str, setting: Setting,
          options: Options = Options()) -> Plan:
    """The switch between CoEdge's, the grid's and NPTP's tilings predicted fastest (mixed_plan)."""
    if options.fuse:
        raise PartitionError("--fuse needs --strategy fused or halp; mixed exchanges every layer")
    model = tile_cost(graph, objective, setting)
    plans = {name: make_plan(graph, ranks, name, speeds, objective, model) for name in ("coedge", "grid", "nptp")}
    tilings = {name: p.cell_tiles for name, p in plans.items() if p.grid is None}  # (same cells only)
    return mixed_plan(graph, tilings, tuple(speeds), objective, setting)
