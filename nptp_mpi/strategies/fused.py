"""DeepThings' fused blocks over any tiling: inside a block each rank recomputes the overlaps instead of
fetching them, so only a block's first layer exchanges a halo; block lengths by dynamic programming."""

from __future__ import annotations

import bisect

from nptp_mpi.model.graph import Graph
from nptp_mpi.plan.cost import Setting, predict
from nptp_mpi.plan.geometry import layers, spatial
from nptp_mpi.plan.plan import Plan, plan_from_cells
from nptp_mpi.strategies.options import Options
from nptp_mpi.strategies.tiles import cells_for

LONGEST_BLOCK = 6  # fused blocks longer than this recompute too much to pay off on any model we run


def layer_of(graph: Graph) -> dict[str, int]:
    """Per spatial node, the layer it belongs to: the index of the tensor a window op reads (layers()),
    pointwise nodes with the window op before them."""
    index = {t: i for i, t in enumerate(layers(spatial(graph)))}
    out, current = {}, 0
    for n in graph.nodes[:graph.head_start]:
        if n.window is not None:
            current = index[n.inputs[0]]
        out[n.name] = current
    return out


def blocks(fuse: tuple[int, ...], total: int) -> list[tuple[int, int]]:
    """(first, end) layer of every block of a fuse vector (the rest one layer per block)."""
    out, i = [], 0
    for k in (*fuse, *[1] * (total - sum(fuse))):
        out.append((i, i + k))
        i += k
    return out


def block_times(graph: Graph, plan: Plan, setting: Setting, starts: list[int]) -> list[float]:
    """Predicted seconds of each block of layers starting at `starts` (sorted; the scatter counts to the
    first): a layer's step, its halo wait included, belongs to the block that holds the layer."""
    of, out = layer_of(graph), [0.0] * len(starts)
    for step in predict(graph, plan, setting.boards, setting.links, setting.overlap).layers:
        if step.name == "scatter":
            out[0] += step.time_s
        elif step.name in of:
            out[bisect.bisect_right(starts, of[step.name]) - 1] += step.time_s
    return out


def fused_prefixes(graph: Graph, cell_tiles, setting: Setting, longest: int = LONGEST_BLOCK) -> list[tuple[int, ...]]:
    """Per k, the fused block lengths over the first k layers that minimise their predicted time (trailing
    single layers dropped), by dynamic programming over block boundaries.

    A block's cost (its layers' steps, the wait for its input halo, for the first block the scatter)
    depends only on its own extent, so plans tiled with blocks of every length m ≤ longest at every
    offset price every candidate block; the DP then picks the cheapest sequence up to every layer.
    """
    total = len(layers(spatial(graph)))
    price: dict[tuple[int, int], float] = {}
    for m in range(1, min(longest, total) + 1):
        for offset in range(m):
            fuse = ((offset,) if offset else ()) + (m,) * ((total - offset) // m)
            fuse += ((total - sum(fuse),) if total > sum(fuse) else ())
            spans = blocks(fuse, total)
            cost = block_times(graph, plan_from_cells(graph, cell_tiles, fuse=fuse), setting, [a for a, _ in spans])
            for span, c in zip(spans, cost, strict=True):
                price.setdefault(span, c)
    best: list[tuple[float, tuple[int, ...]]] = [(0.0, ())]
    for j in range(1, total + 1):
        best.append(min((best[i][0] + price[(i, j)], (*best[i][1], j - i))
                        for i in range(max(0, j - longest), j) if (i, j) in price))
    out = []
    for _, fuse in best:
        while fuse and fuse[-1] == 1:  # trailing single layers are the default
            fuse = fuse[:-1]
        out.append(fuse)
    return out


def choose_fuse(graph: Graph, cell_tiles, setting: Setting, prefixes: list[tuple[int, ...]] | None = None,
                ) -> tuple[int, ...]:
    """The fused blocks over the whole network that fused_prefixes prices cheapest (prefixes: its result when
    already computed), kept only if the whole plan is predicted faster than layer-by-layer exchange (block
    prices ignore what overlap carries across blocks)."""
    fuse = (prefixes or fused_prefixes(graph, cell_tiles, setting))[-1]

    def whole(f: tuple[int, ...]) -> float:
        return predict(graph, plan_from_cells(graph, cell_tiles, fuse=f), setting.boards, setting.links,
                       setting.overlap).latency_s
    return min((fuse, ()), key=whole) if fuse else ()


def fused(graph: Graph, ranks: int, speeds: list[float], objective: str, setting: Setting,
          options: Options = Options()) -> Plan:
    """Fused blocks over options.tiling: options.fuse, else the cost model's choice (choose_fuse)."""
    cells = cells_for(graph, ranks, speeds, objective, setting, options)
    chosen = choose_fuse(graph, cells, setting, options.prefixes) if options.fuse is None else tuple(options.fuse)
    return plan_from_cells(graph, cells, "fused", tuple(speeds), objective, chosen)
