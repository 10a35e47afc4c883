"""Geometry: rectangles, the cell grid, and which input region an output region needs.

Rects are half-open (y0, x0, y1, x1). The functions accept one rect (a tuple) or a stack of rects
(an integer array of shape (..., 4)) so the planner and the partition search share one formula;
`as_rect` turns a result back into a plain tuple. Nothing here knows MPI or arrays of pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nptp_mpi.errors import ModelError
from nptp_mpi.model.graph import WINDOW_OPS, Graph, Node, Window

Rect = tuple[int, int, int, int]


def as_rect(r) -> Rect:
    """A plain (y0, x0, y1, x1) tuple of ints (plans hold no numpy)."""
    return tuple(int(v) for v in r)


def area(r) -> np.ndarray:
    """Pixels (or cells) inside r; 0 for an empty rect."""
    r = np.asarray(r)
    return np.maximum(r[..., 2] - r[..., 0], 0) * np.maximum(r[..., 3] - r[..., 1], 0)


def intersect(a, b) -> np.ndarray:
    """The overlap of a and b (empty when they do not overlap)."""
    a, b = np.asarray(a), np.asarray(b)
    return np.concatenate([np.maximum(a[..., :2], b[..., :2]), np.minimum(a[..., 2:], b[..., 2:])], -1)


def bbox(a, b) -> np.ndarray:
    """The smallest rect holding both a and b (both non-empty)."""
    a, b = np.asarray(a), np.asarray(b)
    return np.concatenate([np.minimum(a[..., :2], b[..., :2]), np.maximum(a[..., 2:], b[..., 2:])], -1)


def need(window: Window, r, in_hw: tuple[int, int]) -> np.ndarray:
    """The input rect that window outputs r read, clipped to the in_hw input (padding is not sent)."""
    r = np.asarray(r)
    y0, y1 = window.need(0, r[..., 0], r[..., 2])
    x0, x1 = window.need(1, r[..., 1], r[..., 3])
    h, w = in_hw
    return np.stack([np.clip(y0, 0, h), np.clip(x0, 0, w), np.clip(y1, 0, h), np.clip(x1, 0, w)], -1)


def core(window: Window, out: Rect, own_in: Rect, in_hw: tuple[int, int]) -> Rect:
    """The largest part of output rect `out` that reads only `own_in` (besides image padding): what a rank
    can compute while its halo is still travelling. Empty (y0 == y1) when every output needs the halo."""
    bounds = []
    for axis in (0, 1):
        ys = np.arange(out[axis], out[axis + 2])
        lo, hi = window.need(axis, ys, ys + 1)
        n = in_hw[axis]
        inside = np.nonzero((np.clip(lo, 0, n) >= own_in[axis]) & (np.clip(hi, 0, n) <= own_in[axis + 2]))[0]
        if not len(inside):  # the test is monotone in y, so `inside` is one run of outputs
            return (out[0], out[1], out[0], out[1])
        bounds.append((out[axis] + int(inside[0]), out[axis] + int(inside[-1]) + 1))
    return (bounds[0][0], bounds[1][0], bounds[0][1], bounds[1][1])


def ring(out: Rect, inner: Rect) -> list[Rect]:
    """out minus inner (inner ⊆ out) as at most four non-empty strips: top, bottom, left, right."""
    if area(inner) == 0:
        return [out]
    strips = [(out[0], out[1], inner[0], out[3]), (inner[2], out[1], out[2], out[3]),
              (inner[0], out[1], inner[2], inner[1]), (inner[0], inner[3], inner[2], out[3])]
    return [r for r in strips if area(r) > 0]


def edge(e, n_cells: int, ratio: int, size: int) -> np.ndarray:
    """Position of cell edge e in a tensor whose stride is 1/ratio of the grid's; the last edge is the end
    (ratio 0, a map coarser than a cell: 0 or the end, so only the whole grid or nothing maps onto it)."""
    e = np.asarray(e)
    return np.where(e == n_cells, size, np.minimum(e * ratio, size))


def scale(r, cells: tuple[int, int], ratio: tuple[int, int], hw: tuple[int, int]) -> np.ndarray:
    """A rect in cells mapped onto a tensor of size hw and cell-to-tensor ratio (per axis)."""
    r = np.asarray(r)
    ys = [edge(r[..., i], cells[0], ratio[0], hw[0]) for i in (0, 2)]
    xs = [edge(r[..., i], cells[1], ratio[1], hw[1]) for i in (1, 3)]
    return np.stack([ys[0], xs[0], ys[1], xs[1]], -1)


@dataclass(frozen=True)
class Spatial:
    """The spatial prefix of a graph: its (C, H, W) tensors in order, strides as cell ratios, the grid.

    readers[t] lists (window, output) per spatial consumer of t; window is None for pointwise ops.
    """

    tensors: tuple[str, ...]
    channels: dict[str, int]
    hw: dict[str, tuple[int, int]]
    ratio: dict[str, tuple[int, int]]
    readers: dict[str, tuple[tuple[Window | None, str], ...]]
    last: str
    head: str | None
    grid: str = ""  # the map cells are pixels of: the last one, or an earlier cut's (tiling ends there)

    @property
    def cells(self) -> tuple[int, int]:
        return self.hw[self.grid or self.last]

    def halo_tensors(self) -> list[str]:
        """Tensors some window op reads, except the graph input (which is scattered instead)."""
        return [t for t in self.tensors[1:] if any(w is not None for w, _ in self.readers[t])]


def spatial(graph: Graph, grid: str | None = None) -> Spatial:
    """Split off the spatial prefix and compute every tensor's cumulative stride (tiles align to it). grid: a
    cut's map whose pixels are the cells instead of the last map's; maps after it are coarser than a cell
    (ratio 0: held whole by one rank or not at all, a tail's)."""
    strides = {graph.input: (1, 1)}
    readers: dict[str, list] = {graph.input: []}
    head = graph.nodes[graph.head_start] if graph.head_start < len(graph.nodes) else None
    for prev, n in zip(graph.nodes[graph.head_start:], graph.nodes[graph.head_start + 1:], strict=False):
        if n.inputs != (prev.output,):  # the head runs as a chain on whole tensors
            raise ModelError(f"{graph.name}: {n.op} {n.name!r} after head op {head.name!r} reads {n.inputs}, not "
                             f"the output of {prev.name!r} alone (the head is a chain of one-input ops)")
    for n in graph.nodes[:graph.head_start]:
        ins = [strides[t] for t in n.inputs]
        if n.op in WINDOW_OPS:
            strides[n.output] = (ins[0][0] * n.window.stride[0], ins[0][1] * n.window.stride[1])
        elif any(s != ins[0] for s in ins):
            raise ModelError(f"{graph.name}: {n.op} {n.name!r} joins maps of different strides {ins}")
        else:
            strides[n.output] = ins[0]
        for i, t in enumerate(n.inputs):
            readers[t].append((n.reads_through(i), n.output))
        readers[n.output] = []
    last = graph.nodes[graph.head_start - 1].output if graph.head_start else graph.input
    for n in graph.nodes[graph.head_start:]:
        if any(t in strides and t != last for t in n.inputs):
            raise ModelError(f"{graph.name}: head op {n.name!r} reads {n.inputs}, not the last map {last!r}")
    big = strides[grid or last]
    ratio = {}
    for t, s in strides.items():
        if not (big[0] % s[0] or big[1] % s[1]):
            ratio[t] = (big[0] // s[0], big[1] // s[1])
        elif grid is not None and not (s[0] % big[0] or s[1] % big[1]):
            ratio[t] = (0, 0)
        else:
            raise ModelError(f"{graph.name}: stride {s} of {t!r} does not divide the output stride {big}")
    shapes = graph.shapes
    return Spatial(
        tensors=tuple(strides),
        channels={t: shapes[t][0] for t in strides},
        hw={t: tuple(shapes[t][1:]) for t in strides},
        ratio=ratio,
        readers={t: tuple(r) for t, r in readers.items()},
        last=last,
        head=head.op if head else None,
        grid=grid or "",
    )


def layers(sp: Spatial) -> list[str]:
    """The tensors window ops read, input first: one per layer, the units that fused blocks group."""
    return [sp.tensors[0], *sp.halo_tensors()]


def regions(sp: Spatial, cell_rects, exchanged=None, retiled=()) -> tuple[dict[str, np.ndarray], ...]:
    """Per tensor, the (N, 4) rects each rank owns, computes, needs and reads, walking back
    from the output.

    A tensor in `exchanged` (default: every halo tensor) is computed on the own tile only and its halo
    is fetched from the owners; any other tensor is computed as far as its consumers read, redundantly
    (fused layers: the region grows through the block back to the next exchanged tensor). The input is
    scattered, so it counts as exchanged. retiled: (tensors, cell rects) pairs, in order, whose tensors
    are owned by those cells instead (a later segment's tiling; empty cells own nothing): the tensor
    the segment reads is then redistributed as its halo (for a tail, gathered whole at rank 0).
    read = what consumers read; need = own ∪ read (the buffer); comp ⊆ need, own ⊆ comp. A halo is
    read ∩ others' own: with a retiling, need also spans parts of neither that nobody reads.
    """
    exchanged = set(sp.halo_tensors() if exchanged is None else exchanged) | {sp.tensors[0]}
    own = {t: scale(cell_rects, sp.cells, sp.ratio[t], sp.hw[t]) for t in sp.tensors}
    for tensors, cells in retiled:
        own |= {t: scale(np.asarray(cells), sp.cells, sp.ratio[t], sp.hw[t]) for t in tensors}
    comp, needs, reads = {}, {}, {}
    for t in reversed(sp.tensors):
        region = np.zeros_like(own[t])
        for window, out in sp.readers[t]:
            read = comp[out] if window is None else need(window, comp[out], sp.hw[t])
            region = union(region, np.where((area(comp[out]) > 0)[..., None], read, 0))
        reads[t], needs[t] = region, union(own[t], region)
        comp[t] = own[t] if t in exchanged else needs[t]
    return own, comp, needs, reads


def union(a, b) -> np.ndarray:
    """The smallest rect holding a and b, either of which may be empty."""
    a, b = np.asarray(a), np.asarray(b)
    return np.where((area(a) == 0)[..., None], b, np.where((area(b) == 0)[..., None], a, bbox(a, b)))


def overlaps(own: np.ndarray, needs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every (dst, src) pair of ranks: need[dst] ∩ own[src] and its area (0 on the diagonal)."""
    rects = intersect(needs[:, None, :], own[None, :, :])
    areas = area(rects)
    np.fill_diagonal(areas, 0)
    return rects, areas


def halo_matrix(sp: Spatial, cell_rects) -> np.ndarray:
    """(N, N) halo bytes that rank src sends rank dst, summed over tensors (float32 elements)."""
    own, _, _, reads = regions(sp, cell_rects)
    n = len(cell_rects)
    total = np.zeros((n, n), dtype=np.int64)
    for t in sp.halo_tensors():
        total += 4 * sp.channels[t] * overlaps(own[t], reads[t])[1]
    return total


def reach(graph: Graph, nodes: list[Node], tensor: str, rect: Rect) -> dict[str, Rect]:
    """Per tensor, the rect that computing `rect` of `tensor` reads through `nodes` (walking them backwards)."""
    shapes = graph.shapes
    region = {tensor: rect}
    for n in reversed(nodes):
        if n.output not in region or not area(region[n.output]):
            continue
        out = region[n.output]
        for i, t in enumerate(n.inputs):
            window = n.reads_through(i)
            read = as_rect(out if window is None else need(window, out, shapes[t][1:]))
            region[t] = as_rect(union(region[t], read)) if t in region else read
    return region
