"""HALP (arXiv 2207.11294): the host computes the seams, so the other boards start at once.

Over a first block of layers, every rank but the host (rank 0, which holds the image) receives only its
own input tile and computes what it can from it alone: a core that shrinks layer by layer. The host
computes, from the whole image, everything else each rank needs of the block's output (the ring
between that core and the rank's halo'd need) and sends it; after the block, halos are exchanged layer
by layer as usual. No rank waits for a neighbour inside the block; the host pays for the seams.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .geometry import Rect, area, as_rect, core, intersect, layers, need, ring, spatial, union
from .graph import Graph, Node
from .ops import Tile, run_spatial
from .plan import FLOAT_BYTES, Halo, Plan, Transfer, block_nodes, plan_from_cells

HOST = 0


def reach(graph: Graph, nodes: list[Node], tensor: str, rect: Rect) -> dict[str, Rect]:
    """Per tensor, the rect that computing `rect` of `tensor` reads through the block's nodes."""
    shapes = graph.shapes
    region = {tensor: rect}
    for n in reversed(nodes):
        if n.output not in region or not area(region[n.output]):
            continue
        out = region[n.output]
        for t in n.inputs:
            read = as_rect(out if n.window is None else need(n.window, out, shapes[t][1:]))
            region[t] = as_rect(union(region[t], read)) if t in region else read
    return region


def shrink(graph: Graph, nodes: list[Node], plan: Plan, r: int) -> dict[str, Rect]:
    """Per tensor of the block, what rank r computes from its own input tile alone (the shrinking core)."""
    shapes = graph.shapes
    region = {graph.input: plan.own[graph.input][r]}
    for n in nodes:
        own = plan.own[n.output][r]
        if n.window is not None:
            region[n.output] = core(n.window, own, region[n.inputs[0]], shapes[n.inputs[0]][1:])
        else:
            out = own
            for t in n.inputs:
                out = as_rect(intersect(out, region[t]))
            region[n.output] = out if area(out) else (own[0], own[1], own[0], own[1])
    return region


def halp_plan(graph: Graph, cell_tiles, speeds: tuple[float, ...], objective: str, k: int) -> Plan:
    """The plan of a host-assisted first block of k layers over the given tiling, then layer by layer."""
    nodes = block_nodes(graph, k)
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


def seam_flops(graph: Graph, plan: Plan) -> float:
    """FLOPs the host spends on the seams (each piece's chain through the block), on top of its own tile."""
    from .cost import node_flops

    nodes = block_nodes(graph, plan.halp)
    end = layers(spatial(graph))[plan.halp]
    total = 0.0
    for t in plan.halos[end].transfers:
        chain = reach(graph, nodes, end, t.rect)
        total += sum(node_flops(n, graph, chain[n.output]) for n in nodes if n.output in chain)
    return total


class Seams:
    """The host's share of a host-assisted block: each ring piece it sends, computed from the whole image
    through the block, into one flat buffer (piece i at offsets[i])."""

    def __init__(self, graph: Graph, plan: Plan) -> None:
        self.graph = graph
        self.nodes = block_nodes(graph, plan.halp)
        self.end = layers(spatial(graph))[plan.halp]
        self.transfers = [t for t in plan.halos[self.end].transfers if t.src == HOST]
        self.chains = [reach(graph, self.nodes, self.end, t.rect) for t in self.transfers]
        sizes = [t.nbytes // FLOAT_BYTES for t in self.transfers]
        self.offsets = [int(v) for v in np.cumsum([0, *sizes])]
        self.buffer = np.zeros(self.offsets[-1], np.float32)

    def compute(self, x: np.ndarray) -> None:
        """Fill the buffer from the whole input x (C, H, W)."""
        full = (0, 0, x.shape[1], x.shape[2])
        for i, chain in enumerate(self.chains):
            tiles = {self.graph.input: Tile(x, full)}
            for n in self.nodes:
                rect = chain.get(n.output)
                if rect is None or not area(rect):
                    continue
                ins = [tiles[t] for t in n.inputs]
                tiles[n.output] = Tile(run_spatial(n, ins, self.graph.shapes[n.inputs[0]][1:], rect), rect)
            piece = tiles[self.end].data
            self.buffer[self.offsets[i]:self.offsets[i + 1]] = piece.reshape(-1)
