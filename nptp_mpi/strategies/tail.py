"""A tail: the last layers on rank 0 alone, the map gathered to it at a cut (from layer 0: no
distribution at all, where distributing does not pay)."""

from __future__ import annotations

from nptp_mpi.errors import PartitionError
from nptp_mpi.model.graph import Graph
from nptp_mpi.plan.cost import Setting, latency
from nptp_mpi.plan.geometry import layers, spatial
from nptp_mpi.plan.plan import Plan, cuts, plan_from_cells
from nptp_mpi.strategies.fused import LONGEST_BLOCK, fused_prefixes
from nptp_mpi.strategies.options import Options
from nptp_mpi.strategies.tiles import cells_for


def tail_plan(graph: Graph, cell_tiles, speeds: tuple[float, ...], objective: str, setting: Setting,
              prefixes: list[tuple[int, ...]] | None = None, longest: int = LONGEST_BLOCK) -> Plan:
    """Halo exchange over cell_tiles, layer by layer or in the fused blocks fused_prefixes picks for the
    layers before the tail (prefixes: its result when already computed), then a tail on rank 0 alone: of
    the cuts within the last `longest` layers, and layer 0 (rank 0 runs everything), the one predicted
    fastest (ties to the shorter tail, then to fewer blocks). Pays where the last maps are small and
    messages costly: the gather replaces their halo exchanges, rank 0 their parallel compute; from layer 0
    where distributing does not pay at all."""
    total = len(layers(spatial(graph)))
    options = [0] + [k for k in cuts(graph) if total - k <= longest]
    prefixes = prefixes or fused_prefixes(graph, cell_tiles, setting, longest)
    plans = [plan_from_cells(graph, cell_tiles, "tail", speeds, objective, fuse, tail=k)
             for k in options for fuse in dict.fromkeys(((), prefixes[k]))]
    return min(plans, key=lambda p: (latency(graph, p, setting), -p.tail, len(p.fuse)))


def tail(graph: Graph, ranks: int, speeds: list[float], objective: str, setting: Setting,
         options: Options = Options()) -> Plan:
    """The tail predicted fastest over options.tiling (tail_plan)."""
    if options.fuse:
        raise PartitionError("--fuse needs --strategy fused or halp; tail chooses its own length")
    cells = cells_for(graph, ranks, speeds, objective, setting, options)
    return tail_plan(graph, cells, tuple(speeds), objective, setting, options.prefixes)
