"""HALP (arXiv 2207.11294): the host computes the seams, so the other boards start at once.

Over a first block of layers, every rank but the host (rank 0, which holds the image) receives only its
own input tile and computes what it can from it alone: a core that shrinks layer by layer. The host
computes, from the whole image, everything else each rank needs of the block's output (the ring
between that core and the rank's halo'd need) and sends it; after the block, halos are exchanged layer
by layer as usual. No rank waits for a neighbour inside the block; the host pays for the seams.
"""

from __future__ import annotations

from dataclasses import replace

from nptp_mpi.errors import PartitionError
from nptp_mpi.model.graph import Graph, Node
from nptp_mpi.plan.cost import Setting, latency
from nptp_mpi.plan.geometry import Rect, area, as_rect, core, intersect, layers, reach, ring, spatial
from nptp_mpi.plan.plan import FLOAT_BYTES, HOST, Halo, Plan, Transfer, block_nodes, cuts, plan_from_cells
from nptp_mpi.strategies.fused import LONGEST_BLOCK
from nptp_mpi.strategies.options import Options
from nptp_mpi.strategies.tiles import cells_for


def shrink(graph: Graph, nodes: list[Node], plan: Plan, r: int) -> dict[str, Rect]:
    """Per tensor of the block, what rank r computes from its own input tile alone (the shrinking core)."""
    shapes = graph.shapes
    region = {graph.input: plan.own[graph.input][r]}
    for n in nodes:
        own = plan.own[n.output][r]
        if n.window is not None:
            out = core(n.window, own, region[n.inputs[0]], shapes[n.inputs[0]][1:])
            for t in n.inputs[1:]:  # a conv's residual, read pixel for pixel
                out = as_rect(intersect(out, region[t]))
            region[n.output] = out
        else:
            out = own
            for t in n.inputs:
                out = as_rect(intersect(out, region[t]))
            region[n.output] = out if area(out) else (own[0], own[1], own[0], own[1])
    return region


def halp_plan(graph: Graph, cell_tiles, speeds: tuple[float, ...], objective: str, k: int) -> Plan:
    """The plan of a host-assisted first block of k layers over the given tiling, then layer by layer."""
    nodes = block_nodes(graph, k)
    if any(n.op == "se" for n in nodes):  # the seams would need the whole map's channel means
        raise PartitionError(f"halp: a host-assisted block of {k} layers holds a squeeze-and-excitation node; "
                             "the block must end before it")
    base = plan_from_cells(graph, cell_tiles, "halp", speeds, objective, fuse=(k,))
    end = layers(spatial(graph))[k]
    halo = base.halos[end]
    comp = {t: list(rects) for t, rects in base.comp.items()}
    host = reach(graph, nodes, end, halo.need[HOST])
    for t, rect in host.items():
        comp[t][HOST] = rect
    transfers = []
    for r in range(1, base.ranks):
        for t, rect in shrink(graph, nodes, base, r).items():
            comp[t][r] = rect
        for piece in ring(halo.need[r], comp[end][r]):
            transfers.append(Transfer(HOST, r, piece, FLOAT_BYTES * halo.channels * int(area(piece))))
    scatter = (host[graph.input], *base.own[graph.input][1:])
    c_in = graph.input_shape[0]
    return replace(base, halp=k, comp={t: tuple(v) for t, v in comp.items()},
                   halos={**base.halos, end: Halo(end, halo.channels, halo.need, tuple(transfers))},
                   scatter=scatter, scatter_bytes=FLOAT_BYTES * c_in * int(sum(area(s) for s in scatter[1:])))


def choose_halp(graph: Graph, cell_tiles, speeds: tuple[float, ...], objective: str, setting: Setting,
                longest: int = LONGEST_BLOCK) -> int:
    """The host-assisted block length (a cut of the graph, at most `longest` layers) predicted fastest."""
    options = [k for k in cuts(graph) if k <= longest and not any(n.op == "se" for n in block_nodes(graph, k))]
    if not options:
        gate = " before a squeeze-and-excitation node" if any(n.op == "se" for n in graph.nodes) else ""
        raise PartitionError(f"halp: {graph.name} has no cut within its first {longest} layers{gate}")
    return min(options, key=lambda k: (latency(graph, halp_plan(graph, cell_tiles, speeds, objective, k), setting),
                                       k))


def halp(graph: Graph, ranks: int, speeds: list[float], objective: str, setting: Setting,
         options: Options = Options()) -> Plan:
    """A host-assisted first block over options.tiling: of options.fuse's one length, else choose_halp's."""
    fuse = options.fuse
    cells = cells_for(graph, ranks, speeds, objective, setting, options)
    if fuse and len(fuse) > 1:
        raise PartitionError("halp has one host-assisted block: give its length alone, e.g. --fuse 4")
    k = fuse[0] if fuse else choose_halp(graph, cells, tuple(speeds), objective, setting)
    return halp_plan(graph, cells, tuple(speeds), objective, k)
