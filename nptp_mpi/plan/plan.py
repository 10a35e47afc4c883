"""The plan: everything a rank does, as one pure value computed identically on every rank.

Per spatial tensor: the rect each rank owns, the rect it computes (its own tile, or more inside a fused
block, where overlaps are recomputed instead of fetched) and, for tensors whose halo is exchanged,
the rect it needs and the transfers (read[dst] ∩ own[src]) that fill the difference. Plus the
scatter of the input from rank 0 and how the last map reaches the head. Plain ints, strings and
tuples: no numpy, no MPI.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np

from nptp_mpi.errors import PartitionError
from nptp_mpi.model.graph import Graph, Node
from nptp_mpi.plan.geometry import Rect, area, as_rect, core, layers, overlaps, regions, ring, spatial
from nptp_mpi.plan.tiling import partition

FLOAT_BYTES = 4
HOST = 0  # the rank that holds the whole input (and computes HALP's seams)


@dataclass(frozen=True)
class Transfer:
    """Rank src sends rank dst the rect of one tensor (all channels)."""

    src: int
    dst: int
    rect: Rect
    nbytes: int


@dataclass(frozen=True)
class Halo:
    """A tensor some window op reads: what each rank needs of it, and who sends what."""

    tensor: str
    channels: int
    need: tuple[Rect, ...]
    transfers: tuple[Transfer, ...]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.transfers)


@dataclass(frozen=True)
class HeadSplit:
    """The first FC layer split by its input (IOP): rank r multiplies the features in bins[r], a rect of the
    map the flatten reads (the last spatial map, or its adaptive pooling), by their weight columns; rank 0
    sums the partial products (gather "split") and adds bias and activation."""

    gemm: str
    bins: tuple[Rect, ...]


@dataclass(frozen=True)
class ConvPair:
    """Conv a split by output channels and its only reader, conv b, by input channels (IOP): rank r computes
    channels[r] of a over the whole map from the whole input (an allgather: the halo of a's input) and b's
    partial sums over those channels; the partial sums meet in a reduce-scatter (the halo of b's output)."""

    a: str
    b: str
    channels: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Plan:
    """One inference over `ranks` boards; own/halos are keyed by tensor in graph order."""

    model: str
    graph_fingerprint: str
    input_shape: tuple[int, int, int]
    strategy: str
    ranks: int
    speeds: tuple[float, ...]
    objective: str
    cells: tuple[int, int]
    cell_tiles: tuple[Rect, ...]
    tiles: tuple[Rect, ...]
    fuse: tuple[int, ...]
    own: dict[str, tuple[Rect, ...]]
    comp: dict[str, tuple[Rect, ...]]
    halos: dict[str, Halo]
    scatter: tuple[Rect, ...]
    scatter_bytes: int
    last: str
    gather: str
    gather_bytes: int
    head: HeadSplit | None = None
    pairs: tuple[ConvPair, ...] = ()
    halp: int = 0  # layers of the host-assisted first block (halp.py), 0 for none
    tail: int | None = None  # the layer from which rank 0 computes alone (0: everything; the map gathered there)
    retile: tuple[int, tuple[Rect, ...]] | None = None  # (layer, cell tiles): from there on this tiling instead
    grid: str | None = None  # the map cells follow when not the last one (the tiled part ends there: a tail)
    pixels: bool = False  # the input is an image: scattered as 8-bit pixels, each rank normalising its own

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    @property
    def halo_bytes(self) -> int:
        return sum(h.nbytes for h in self.halos.values())

    @property
    def recompute(self) -> float:
        """Values computed beyond the own tiles, as a fraction of the map values: what fused blocks pay."""
        own = sum(area(r) for rects in self.own.values() for r in rects)
        comp = sum(area(r) for rects in self.comp.values() for r in rects)
        return float(comp / own - 1.0)

    @property
    def per_rank(self) -> list[dict]:
        """Per rank: halo bytes sent and received, and its tile on the input."""
        rows = [{"rank": r, "bytes_sent": 0, "bytes_recv": 0, "tile": list(self.tiles[r])} for r in range(self.ranks)]
        for h in self.halos.values():
            for t in h.transfers:
                rows[t.src]["bytes_sent"] += t.nbytes
                rows[t.dst]["bytes_recv"] += t.nbytes
        return rows

    @property
    def layers(self) -> list[dict]:
        """Per halo tensor: name, channels, bytes moved."""
        return [{"name": h.tensor, "channels": h.channels, "bytes": h.nbytes} for h in self.halos.values()]

    def to_json(self) -> dict:
        """What `plan --json` prints (and what the fingerprint hashes)."""
        return {
            "model": self.model,
            "graph_fingerprint": self.graph_fingerprint,
            "input_shape": list(self.input_shape),
            "strategy": self.strategy,
            "ranks": self.ranks,
            "speeds": list(self.speeds),
            "objective": self.objective,
            "cells": list(self.cells),
            "cell_tiles": [list(r) for r in self.cell_tiles],
            "tiles": [list(r) for r in self.tiles],
            "fuse": list(self.fuse),
            "halp": self.halp,
            "tail": self.tail,
            "retile": None if self.retile is None else [self.retile[0], [list(r) for r in self.retile[1]]],
            "grid": self.grid,
            "recompute": self.recompute,
            "halo_bytes": self.halo_bytes,
            "per_rank": self.per_rank,
            "layers": self.layers,
            "scatter_bytes": self.scatter_bytes,
            "pixels": self.pixels,
            "gather": self.gather,
            "gather_bytes": self.gather_bytes,
            "head_split": None if self.head is None else asdict(self.head),
            "pairs": [asdict(p) for p in self.pairs],
            "fingerprint": self.fingerprint(),
        }

    def fingerprint(self) -> str:
        """Short sha256 of the whole content: ranks compare it before they start. auto's choice hashes as the
        scheme it chose (strategy auto:tail as tail): the same work, however it was picked."""
        fields = {**asdict(self), "strategy": self.strategy.removeprefix("auto:")}
        for name in ("grid", "pixels"):  # (plans without them hash as they did before these fields existed)
            if fields[name] in (None, False):
                del fields[name]
        content = repr((sorted((k, v) for k, v in fields.items() if k not in ("own", "comp", "halos")),
                        list(self.own.items()), list(self.comp.items()), list(self.halos.items())))
        return hashlib.sha256(content.encode()).hexdigest()[:16]


def with_pixel_input(plan: Plan) -> Plan:
    """plan for an image input: the scatter moves 8-bit pixels (a quarter of the float bytes) and every rank
    normalises its own part of them."""
    return replace(plan, pixels=True, scatter_bytes=plan.scatter_bytes // FLOAT_BYTES)


def split_head(graph: Graph) -> tuple[list[Node], list[Node]]:
    """(spatial nodes, head nodes): the head starts at the first op that sees whole maps."""
    k = graph.head_start
    return graph.nodes[:k], graph.nodes[k:]


def whole(graph: Graph, tensor: str) -> Rect:
    """The rect of a whole map."""
    return (0, 0, *graph.shapes[tensor][1:])


def held(plan: Plan, graph: Graph, tensor: str, r: int) -> Rect:
    """What rank r holds of a tensor: the input with what its first layers read, a tensor with a halo
    with that halo, anything else what the rank computes of it."""
    if tensor == graph.input:
        return plan.scatter[r]
    return plan.halos[tensor].need[r] if tensor in plan.halos else plan.comp[tensor][r]


def pieces(plan: Plan, graph: Graph, node: Node, r: int, overlap: bool = True) -> tuple[list[Rect], list[Rect]]:
    """(core, border) of what rank r computes of node's output: with overlap, the part that reads only what
    the rank computed itself (done while the halo travels) and the strips that need the halo; one piece
    when there is no halo or no overlap (strips cost more per pixel than one piece)."""
    out, t = plan.comp[node.output][r], node.inputs[0]
    if not area(out):  # a tail computed by rank 0 alone
        return [], []
    if not overlap or node.window is None or held(plan, graph, t, r) == plan.comp[t][r]:
        return [out], []
    inner = core(node.window, out, plan.comp[t][r], graph.shapes[t][1:])
    return ([inner] if area(inner) else []), ring(out, inner)


def rank_params(graph: Graph, plan: Plan, r: int, copy: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """The weights rank r computes with, by node: every spatial node's it computes some of (a paired conv's
    channel slice), the head's on rank 0 only, and under a split head the first FC layer's columns of rank
    r's features (its bias on rank 0). Slices are views into the graph's arrays, or with copy contiguous
    copies, so that a rank can free the full arrays."""
    take = np.array if copy else np.asarray
    outs = {p.a: p.channels[r] for p in plan.pairs}
    ins = {p.b: p.channels[r] for p in plan.pairs}
    out: dict[str, dict[str, np.ndarray]] = {}
    for i, n in enumerate(graph.nodes):
        p, tiled = n.params, i < graph.head_start
        if not p or not (tiled or r == 0 or (plan.head and n.name == plan.head.gemm)):
            continue
        if tiled and not area(plan.comp[n.output][r]) and n.name not in outs | ins:
            continue  # a tail node: rank 0 computes it alone
        if n.name in outs:
            c0, c1 = outs[n.name]
            out[n.name] = {k: take(v[c0:c1]) for k, v in p.items()}
        elif n.name in ins:
            c0, c1 = ins[n.name]
            out[n.name] = {**p, "w": take(p["w"][:, c0:c1])}
        elif plan.head and n.name == plan.head.gemm:
            y0, x0, y1, x1 = plan.head.bins[r]
            c, h, w = graph.shapes[next(m for m in graph.nodes if m.output == n.inputs[0]).inputs[0]]
            cols = p["w"].reshape(-1, c, h, w)[:, :, y0:y1, x0:x1]
            out[n.name] = {"w": take(cols), **({"b": p["b"]} if r == 0 and "b" in p else {})}
        else:
            out[n.name] = dict(p)
    return out


def weight_bytes(graph: Graph, plan: Plan) -> list[int]:
    """Per rank, the bytes of the weights it computes with (rank_params)."""
    return [sum(v.nbytes for d in rank_params(graph, plan, r).values() for v in d.values())
            for r in range(plan.ranks)]


def block_nodes(graph: Graph, k: int) -> list[Node]:
    """The spatial nodes of the first k layers: up to the producer of layers[k], which must be the only
    tensor of them read after it (a cut through the graph, where a HALP block ends, a tail or a new tiling
    begins)."""
    names = layers(spatial(graph))
    if not 1 <= k < len(names):
        raise PartitionError(f"a cut after {k} layers does not fit {graph.name}'s {len(names)} layers")
    end = names[k]
    i = next(i for i, n in enumerate(graph.nodes) if n.output == end)
    nodes, made = graph.nodes[: i + 1], {n.output for n in graph.nodes[: i + 1]}
    crossing = {t for n in graph.nodes[i + 1:] for t in n.inputs if t in made} - {end}
    if crossing:
        raise PartitionError(f"layer {k} of {graph.name} is no cut: {sorted(crossing)} is read after it")
    return nodes


def cuts(graph: Graph) -> list[int]:
    """The layers k at which the graph can be cut (block_nodes)."""
    out = []
    for k in range(1, len(layers(spatial(graph)))):
        try:
            block_nodes(graph, k)
            out.append(k)
        except PartitionError:
            pass
    return out


def segment_tensors(graph: Graph, k: int) -> list[str]:
    """The spatial tensors of a segment from layer k (a cut) on: those made after layers[k]; from layer 0
    every one, the input too."""
    made = {n.output for n in block_nodes(graph, k)} if k else set()
    return [t for t in spatial(graph).tensors if t not in made and (k == 0 or t != graph.input)]


def exchanged(graph: Graph, fuse: tuple[int, ...]) -> list[str]:
    """The halo tensors exchanged under fused blocks of `fuse` layers each (the rest one layer per block):
    each block's first layer reads a fetched halo, the layers inside recompute their overlaps."""
    names = layers(spatial(graph))
    if any(k < 1 for k in fuse) or sum(fuse) > len(names):
        raise PartitionError(f"--fuse {','.join(map(str, fuse))}: blocks must be ≥ 1 layer and cover at most "
                             f"the {len(names)} layers of {graph.name} (window ops, input first)")
    starts, i = set(), 0
    for k in (*fuse, *[1] * (len(names) - sum(fuse))):
        starts.add(i)
        i += k
    return [t for i, t in enumerate(names) if i in starts]


def make_plan(graph: Graph, ranks: int, strategy: str = "nptp", speeds: list[float] | None = None,
              objective: str = "total", cost_model: Callable[[list[Rect]], float] | None = None,
              fuse: tuple[int, ...] = (), tiling: str | None = None) -> Plan:
    """The plan for running graph on `ranks` boards with the named strategy (deterministic).

    tiling: the partition strategy when it is not the strategy itself (fused blocks run over any
    tiling); fuse: fused block lengths (see exchanged); cost_model: see partition.partition (None:
    halo bytes decide)."""
    speeds = tuple(float(s) for s in speeds) if speeds is not None else (1.0,) * ranks
    try:
        cell_tiles = partition(tiling or strategy, graph, ranks, list(speeds), objective, cost_model)
    except PartitionError:
        if fuse or tiling or strategy not in EARLIER_GRID:
            raise
        found = earlier_grid(graph, ranks, strategy, speeds, objective)
        if found is None:
            raise
        k, cell_tiles = found
        return plan_from_cells(graph, cell_tiles, strategy, speeds, objective, tail=k, grid=layers(spatial(graph))[k])
    return plan_from_cells(graph, cell_tiles, strategy, speeds, objective, fuse)


EARLIER_GRID = ("coedge", "grid", "nptp")  # the tilings whose tiling may end early (d3 re-cuts the whole grid)


def earlier_grid(graph: Graph, ranks: int, strategy: str, speeds: tuple[float, ...],
                 objective: str) -> tuple[int, list[Rect]] | None:
    """Where the last maps have too few cells for the ranks: the latest cut k whose map the strategy can tile
    (its cells are that map's pixels), and the cell rects; the layers from k on then run on rank 0 alone, the
    map gathered to it. None where no cut's map can carry the ranks."""
    names = layers(spatial(graph))
    for k in reversed(cuts(graph)):
        prefix = Graph(graph.name, graph.input, tuple(graph.input_shape), names[k], block_nodes(graph, k))
        try:
            return k, partition(strategy, prefix, ranks, list(speeds), objective)
        except PartitionError:
            continue
    return None


def plan_from_cells(graph: Graph, cell_tiles, strategy: str = "nptp", speeds: tuple[float, ...] | None = None,
                    objective: str = "total", fuse: tuple[int, ...] = (), tail: int | None = None,
                    retile: tuple[int, tuple[Rect, ...]] | None = None, grid: str | None = None) -> Plan:
    """The plan for given cell rects (one per rank, already checked): what make_plan builds around them.
    retile: (layer k, other cell rects): from layer k (a cut) on, the maps are tiled by those instead, the
    map layer k reads redistributed between the two tilings. tail: from that layer (0: all of them) on,
    rank 0 computes alone, the map gathered to it. Both start after the fused blocks, a tail after the
    retiling. grid: the map the cells are pixels of when it is not the last one (earlier_grid): the map the
    tail reads."""
    sp = spatial(graph, grid)
    if grid and (tail is None or layers(sp)[tail] != grid or retile is not None):
        raise PartitionError(f"tiles that follow {grid!r} need the tail to start at that map")
    ranks = len(cell_tiles)
    speeds = tuple(float(s) for s in speeds) if speeds is not None else (1.0,) * ranks
    cell_tiles = [as_rect(r) for r in cell_tiles]
    fuse = tuple(int(k) for k in fuse)
    sync = exchanged(graph, fuse)
    whole = (0, 0, *sp.cells)
    starts = [] if retile is None else [(retile[0], tuple(as_rect(r) for r in retile[1]))]
    starts += [] if tail is None else [(tail, (whole,) + ((0, 0, 0, 0),) * (ranks - 1))]
    for k, _ in starts:
        if k < sum(fuse) or layers(sp)[k] not in sync:
            raise PartitionError(f"a tail or new tiling from layer {k} must start after the fused blocks {list(fuse)}")
    if [k for k, _ in starts] != sorted({k for k, _ in starts}):
        raise PartitionError(f"a new tiling from layer {retile[0]} must start before the tail from layer {tail}")
    own, comp, needs, reads = regions(sp, np.array(cell_tiles), sync,
                                      [(segment_tensors(graph, k), c) for k, c in starts])
    halos = {}
    for t in sync[1:]:
        c = sp.channels[t]
        rects, areas = overlaps(own[t], reads[t])
        transfers = tuple(Transfer(src, dst, as_rect(rects[dst, src]), FLOAT_BYTES * c * int(areas[dst, src]))
                          for dst, src in zip(*np.nonzero(areas), strict=True))
        halos[t] = Halo(t, c, tuple(as_rect(r) for r in needs[t]), transfers)
    scatter = needs[graph.input]
    c_in, c_last = sp.channels[graph.input], sp.channels[sp.last]
    if sp.head == "gap":
        gather, gather_bytes = "reduce", 8 * c_last * (ranks - 1)  # per-channel sums in float64
    else:
        gather, gather_bytes = "gather", FLOAT_BYTES * c_last * int(area(own[sp.last][1:]).sum())
    return Plan(
        model=graph.name,
        graph_fingerprint=graph.fingerprint(),
        input_shape=tuple(graph.input_shape),
        strategy=strategy,
        ranks=ranks,
        speeds=speeds,
        objective=objective,
        cells=sp.cells,
        cell_tiles=tuple(cell_tiles),
        tiles=tuple(as_rect(r) for r in own[graph.input]),
        fuse=fuse,
        own={t: tuple(as_rect(r) for r in own[t]) for t in sp.tensors},
        comp={t: tuple(as_rect(r) for r in comp[t]) for t in sp.tensors},
        halos=halos,
        scatter=tuple(as_rect(r) for r in scatter),
        scatter_bytes=FLOAT_BYTES * c_in * int(area(scatter[1:]).sum()),
        last=sp.last,
        gather=gather,
        gather_bytes=gather_bytes,
        tail=tail,
        retile=starts[0] if retile is not None else None,
        grid=grid,
    )
