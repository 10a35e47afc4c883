"""Partition strategies: the cell grid, board speeds and a halo cost → one rectangle (in cells) per rank.

Every strategy is a pure function (grid, speeds, cost) -> list of N rects covering the nh×nw grid of
cells; cells are the last spatial map's pixels, so tile edges stay aligned to the network's stride.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from nptp_mpi.errors import PartitionError
from nptp_mpi.model.graph import Graph
from nptp_mpi.plan.geometry import Rect, Spatial, area, halo_matrix, regions, spatial

OBJECTIVES = ("total", "max")
EXHAUSTIVE_BOARDS = 12  # groups up to this size try every split size; larger ones bisect
SUBSET_CAP = 16  # groups with at most this many distinct sub-multisets try them all
BEST_TREES = 8  # NPTP trees (best top-level splits) that are scored by exact plan bytes


# Border bits of a rect on the image edge; a cut takes the far side's bit from the first part, the near
# side's from the second. Only the per-rank "max" objective looks at borders.
TOP, LEFT, BOTTOM, RIGHT = 1, 2, 4, 8


@dataclass(frozen=True)
class Cost:
    """What strategies minimise: exact(cell rects) is the objective's halo bytes of the real plan;
    per_cell[0] / per_cell[1] estimate the bytes (both directions, all layers) that one cell of a
    horizontal / vertical cut moves, corner[borders] what a tile's corner blocks add (diagonal
    neighbours), by which image borders it touches: the decomposable, translation-invariant estimate
    NPTP searches by."""

    objective: str
    exact: Callable[[list[Rect]], int]
    per_cell: tuple[float, float]
    corner: tuple[float, ...] = (0.0,) * 16


def objective_bytes(matrix: np.ndarray, objective: str) -> int:
    """Total bytes on the wire, or the largest bytes_sent + bytes_recv of any one rank."""
    if objective == "total":
        return int(matrix.sum())
    return int((matrix.sum(0) + matrix.sum(1)).max())


def halo_cost(sp: Spatial, objective: str = "total") -> Cost:
    """The model's halo cost: exact via the plan geometry, and per cell of cut as channels × halo width."""
    per_cell, corner, bits = np.zeros(2), np.zeros(16), np.arange(16)
    for t in sp.halo_tensors():
        windows = [w for w, _ in sp.readers[t] if w is not None]
        before = [max(w.pads[a] for w in windows) for a in (0, 1)]
        after = [max(max(w.dilation[a] * (w.kernel[a] - 1) + 1 - w.stride[a] - w.pads[a] for w in windows), 0)
                 for a in (0, 1)]
        length = np.array(sp.hw[t][::-1]) / np.array(sp.cells[::-1])  # pixels per cell along each cut
        per_cell += 4 * sp.channels[t] * (np.add(before, after)) * length
        rows = before[0] * (bits & TOP == 0) + after[0] * (bits & BOTTOM == 0)
        cols = before[1] * (bits & LEFT == 0) + after[1] * (bits & RIGHT == 0)
        corner += 2 * 4 * sp.channels[t] * rows * cols  # sent and received alike

    def exact(rects: list[Rect]) -> int:
        return objective_bytes(halo_matrix(sp, np.array(rects)), objective)

    return Cost(objective, exact, tuple(per_cell), tuple(corner))


def apportion(total: int, weights: list[float]) -> list[int]:
    """Split total whole units ∝ weights by largest remainder, every share at least 1."""
    ideal = [total * w / sum(weights) for w in weights]
    shares = [int(q) for q in ideal]
    by_remainder = sorted(range(len(weights)), key=lambda i: (shares[i] - ideal[i], i))
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    for i in range(len(shares)):  # a zero share borrows from the share furthest above its ideal
        if shares[i] == 0:
            donor = max((j for j in range(len(shares)) if shares[j] > 1), key=lambda j: shares[j] - ideal[j])
            shares[donor] -= 1
            shares[i] = 1
    return shares


def _cuts(sizes: list[int]) -> list[int]:
    return [0, *itertools.accumulate(sizes)]


def _too_many(name: str, n: int, grid: tuple[int, int], largest: int, why: str) -> PartitionError:
    return PartitionError(f"{name}: {n} ranks do not fit the {grid[0]}x{grid[1]} cell grid of this model "
                          f"and input size ({why}); the largest rank count that works is {largest}")


def coedge(cells: tuple[int, int], speeds: list[float], cost: Cost) -> list[Rect]:
    """CoEdge: full-width horizontal strips in rank order, heights ∝ speed in whole cell rows."""
    nh, nw = cells
    if len(speeds) > nh:
        raise _too_many("coedge", len(speeds), cells, nh, "each strip needs a cell row")
    ys = _cuts(apportion(nh, speeds))
    return [(ys[i], 0, ys[i + 1], nw) for i in range(len(speeds))]


def grid_layout(cells: tuple[int, int], speeds: list[float], rows: int) -> list[Rect]:
    """A rows×cols penetrative grid, ranks row-major; heights ∝ row speed sums, widths ∝ column sums.

    Row and column totals then follow speeds exactly; single tiles do too when speeds are equal or
    rank-1 (board speed = row factor × column factor), otherwise as closely as shared cuts allow.
    """
    cols = len(speeds) // rows
    table = [speeds[r * cols:(r + 1) * cols] for r in range(rows)]
    ys = _cuts(apportion(cells[0], [sum(row) for row in table]))
    xs = _cuts(apportion(cells[1], [sum(col) for col in zip(*table, strict=True)]))
    return [(ys[i // cols], xs[i % cols], ys[i // cols + 1], xs[i % cols + 1]) for i in range(len(speeds))]


def grid(cells: tuple[int, int], speeds: list[float], cost: Cost) -> list[Rect]:
    """Grid (MoDNN-style): the r×c penetrative grid with r*c = N that the cost likes best."""
    n, (nh, nw) = len(speeds), cells
    shapes = [r for r in range(1, n + 1) if n % r == 0 and r <= nh and n // r <= nw]
    if not shapes:
        fits = [m for m in range(1, nh * nw + 1) if any(m % r == 0 and m // r <= nw for r in range(1, nh + 1))]
        smaller = max(m for m in fits if m < n)
        raise _too_many("grid", n, cells, nh * nw,
                        f"no r x c = {n} with r <= {nh} and c <= {nw}; {smaller} ranks would fit")
    return min((grid_layout(cells, speeds, r) for r in shapes), key=cost.exact)


@lru_cache(maxsize=4096)
def _splits(group: tuple[float, ...]) -> tuple[tuple[tuple[float, ...], tuple[float, ...]], ...]:
    """Ways to split a sorted board group in two (each order: the first part goes top/left).

    Small groups try every sub-multiset (equal boards: every size); larger ones try, per size, the
    slowest and the fastest boards (so groups stay runs of the speed order); above EXHAUSTIVE_BOARDS
    only near-halves.
    """
    k, counts = len(group), Counter(group)
    if k <= EXHAUSTIVE_BOARDS and math.prod(c + 1 for c in counts.values()) <= SUBSET_CAP:
        firsts = {tuple(v for v, c in zip(counts, take, strict=True) for _ in range(c))
                  for take in itertools.product(*(range(c + 1) for c in counts.values()))}
    else:
        sizes = range(1, k) if k <= EXHAUSTIVE_BOARDS else {k // 2, k - k // 2}
        firsts = set()
        for m in sizes:
            firsts |= {group[:m], group[k - m:]}
    out = []
    for first in sorted(f for f in firsts if 0 < len(f) < k):
        rest = list(group)
        for v in first:
            rest.remove(v)
        out.append((first, tuple(rest)))
    return tuple(out)


def _offsets(side: np.ndarray, span: np.ndarray, frac: float, k1: int, k2: int):
    """Cut offsets (floor, ceil of side*frac, moved into the range whose parts hold k1 and k2 tiles) for
    every rect shape at once, and whether any offset fits."""
    wide = np.maximum(span, 1)
    lo, hi = -(-k1 // wide), side + (-k2 // wide)
    ideal = side * frac
    fits = (span > 0) & (lo <= hi)
    return [np.clip(np.clip(r(ideal).astype(int), lo, hi), 0, side) for r in (np.floor, np.ceil)], fits


class _Search:
    """Bottom-up multilevel search: for every board group (small first) and every rect shape h×w and
    border set at once, the best split by the estimated cut cost (numpy tables, no recursion).

    Estimates do not depend on where a rect lies, so one table serves every placement of a shape.
    A value is (total cut bytes, largest tile bytes); the objective picks which one compares first.
    """

    def __init__(self, cells: tuple[int, int], cost: Cost, group: tuple[float, ...], balanced: bool):
        self.cells, self.cost = cells, cost
        self.cells_per_speed = cells[0] * cells[1] / sum(group) if balanced else None
        borders = np.arange(16 if cost.objective == "max" else 1)
        self.h = np.arange(cells[0] + 1)[None, :, None]
        self.w = np.arange(cells[1] + 1)[None, None, :]
        sides = 2 - (borders & TOP > 0) - (borders & BOTTOM > 0), 2 - (borders & LEFT > 0) - (borders & RIGHT > 0)
        self.tile = sides[0][:, None, None] * self.w * cost.per_cell[0] + \
            sides[1][:, None, None] * self.h * cost.per_cell[1] + np.array(cost.corner)[borders][:, None, None]
        self.borders, self.tables, self.cache = borders, {}, {}
        todo = {group}
        while todo:
            todo = {part for g in todo if len(g) > 1 for split in _splits(g) for part in split} - set(self.tables)
            self.tables.update(dict.fromkeys(todo))
        for g in sorted(self.tables, key=len):
            self.tables[g] = self.solve(g)

    def solve(self, group: tuple[float, ...]):
        """(sums, maxes, choice) tables over (borders, h, w); choice = 2 * option index + rounding, -1 a leaf."""
        shape = self.tile.shape
        if len(group) == 1:
            fits = self.h * self.w > 0
            if self.cells_per_speed:  # a tile may miss its share by at most its longer side
                fits &= abs(self.h * self.w - group[0] * self.cells_per_speed) <= np.maximum(self.h, self.w)
            return np.where(fits, np.zeros(shape), np.inf), np.where(fits, self.tile, np.inf), np.full(shape, -1)
        best = np.full(shape, np.inf), np.full(shape, np.inf), np.full(shape, -1)
        for i, option in enumerate(self.options(group)):
            sums, maxes, r = self.evaluate(option)
            best = self.better(best, (sums, maxes, 2 * i + r))
        return best

    def better(self, old, new):
        """Per entry, the better of two (sums, maxes, tag) tables in the objective's lexicographic order."""
        a, b = (new[0], new[1]) if self.cost.objective == "total" else (new[1], new[0])
        a0, b0 = (old[0], old[1]) if self.cost.objective == "total" else (old[1], old[0])
        take = (a < a0) | ((a == a0) & (b < b0))
        return tuple(np.where(take, n, o) for n, o in zip(new, old, strict=True))

    def options(self, group: tuple[float, ...]) -> list:
        """The (first, rest, horizontal) splits a group tries; the total is mirror-blind, so it keeps one
        order of each pair (the first part goes top/left)."""
        return [(first, rest, horizontal) for first, rest in _splits(group) for horizontal in (True, False)
                if self.cost.objective == "max" or first <= rest]

    def offsets(self, option):
        """Cut offsets (per rounding) and fit, over all shapes, of an option; shared by equal fractions."""
        first, rest, horizontal = option
        key = (sum(first) / (sum(first) + sum(rest)), len(first), len(rest), horizontal)
        if key not in self.cache:
            side, span = (self.h, self.w) if horizontal else (self.w, self.h)
            self.cache[key] = _offsets(side, span, *key[:3])
        return self.cache[key]

    def evaluate(self, option, rounding: int | None = None):
        """(sums, maxes, rounding) of splitting every shape by option at the given or the better rounding,
        children at their best."""
        first, rest, horizontal = option
        h, w, b = self.h, self.w, self.borders[:, None, None]
        offs, fits = self.offsets(option)
        (s1, m1, _), (s2, m2, _) = self.tables[first], self.tables[rest]
        best = None
        for r, p in enumerate(offs):
            if rounding not in (None, r):
                continue
            if horizontal:
                i1, i2, cut = (b & ~BOTTOM, p, w), (b & ~TOP, h - p, w), w * self.cost.per_cell[0]
            else:
                i1, i2, cut = (b & ~RIGHT, h, p), (b & ~LEFT, h, w - p), h * self.cost.per_cell[1]
            value = (np.where(fits, s1[i1] + s2[i2] + cut, np.inf), np.where(fits, np.maximum(m1[i1], m2[i2]),
                                                                              np.inf), r)
            best = value if best is None else self.better(best, value)
        return best

    def tops(self, group: tuple[float, ...]) -> list:
        """Every feasible top-level (option, rounding) of the whole grid, best estimate first."""
        at = (-1, self.cells[0], self.cells[1])
        scored = []
        for option in self.options(group):
            for r in (0, 1):
                sums, maxes, _ = self.evaluate(option, r)
                value = (sums[at], maxes[at]) if self.cost.objective == "total" else (maxes[at], sums[at])
                if np.isfinite(value[0]):
                    scored.append((value, len(scored), (option, r)))
        return [top for _, _, top in sorted(scored)]

    def leaves(self, rect: Rect, group: tuple[float, ...], top=None) -> list[tuple[Rect, float]]:
        """The (rect, speed) tiles of the best tree under rect (or under the given top (option, rounding))."""
        y0, x0, y1, x1 = rect
        if len(group) == 1:
            return [(rect, group[0])]
        nh, nw = self.cells
        borders = (y0 == 0) * TOP | (x0 == 0) * LEFT | (y1 == nh) * BOTTOM | (x1 == nw) * RIGHT
        border = borders if self.cost.objective == "max" else 0
        h, w = y1 - y0, x1 - x0
        if top is None:
            i, r = divmod(int(self.tables[group][2][border, h, w]), 2)
            option = self.options(group)[i]
        else:
            option, r = top
        first, rest, horizontal = option
        p = int(self.offsets(option)[0][r][0, h, w])
        a, b = ((y0, x0, y0 + p, x1), (y0 + p, x0, y1, x1)) if horizontal else \
            ((y0, x0, y1, x0 + p), (y0, x0 + p, y1, x1))
        return self.leaves(a, first) + self.leaves(b, rest)


def _assign(leaves: list[tuple[Rect, float]], speeds: list[float]) -> list[Rect]:
    """Give each tile to a rank of its speed: tiles in reading order, ranks of equal speed in order."""
    free = {s: [i for i, v in enumerate(speeds) if v == s] for s in set(speeds)}
    out: list[Rect] = [None] * len(speeds)
    for rect, s in sorted(leaves):
        out[free[s].pop(0)] = rect
    return out


def nptp(cells: tuple[int, int], speeds: list[float], cost: Cost) -> list[Rect]:
    """NPTP: multilevel non-penetrative partition (cuts may end at other cuts, making T-junctions).

    Recursively splits the board group and the rectangle, areas following speed sums (each cut at the
    floor or ceil of its ideal offset; a tile may miss its share by at most its longer side, unless no
    tree can); the search ranks trees by the per-cut estimate, then the best few trees, the strips and
    the grid are scored by the exact plan bytes, so the result never moves more than coedge or grid.
    """
    n, (nh, nw) = len(speeds), cells
    if n > nh * nw:
        raise _too_many("nptp", n, cells, nh * nw, "each tile needs a cell")
    if n == 1:
        return [(0, 0, nh, nw)]
    group = tuple(sorted(speeds))
    search = _Search(cells, cost, group, balanced=True)
    tops = search.tops(group)
    if not tops:  # no tree keeps every tile within a row or column of its share: drop that demand
        search = _Search(cells, cost, group, balanced=False)
        tops = search.tops(group)
    candidates = [_assign(search.leaves((0, 0, nh, nw), group, top), speeds) for top in tops[:BEST_TREES]]
    for strategy in (coedge, grid):
        try:
            candidates.append(strategy(cells, speeds, cost))
        except PartitionError:
            pass
    return min(candidates, key=cost.exact)


# d3 starts from the NPTP partition and re-cuts it at run time from measured compute times (nptp_mpi.strategies.d3).
STRATEGIES = {"coedge": coedge, "grid": grid, "nptp": nptp, "d3": nptp}


def parse_speeds(text: str, ranks: int) -> list[float]:
    """Board speeds from '--speeds 1,1,2,0.5': one positive finite number per rank."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != ranks:
        raise ValueError(f"--speeds has {len(parts)} value(s) for {ranks} rank(s): give one per rank, e.g. "
                         + ",".join(["1"] * ranks))
    speeds = []
    for p in parts:
        try:
            v = float(p)
        except ValueError:
            raise ValueError(f"--speeds: {p!r} is not a number") from None
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"--speeds: {p!r} must be a positive finite number")
        speeds.append(v)
    return speeds


def check(rects: list[Rect], sp: Spatial) -> None:
    """Raise PartitionError unless rects cover the cell grid exactly and stay non-empty in every tensor."""
    nh, nw = sp.cells
    cover = np.zeros((nh, nw), dtype=np.int64)
    for y0, x0, y1, x1 in rects:
        cover[y0:y1, x0:x1] += 1
    if (cover != 1).any() or any(y0 < 0 or x0 < 0 or y1 > nh or x1 > nw for y0, x0, y1, x1 in rects):
        raise PartitionError(f"tiles {rects} do not cover the {nh}x{nw} cell grid exactly once")
    own = regions(sp, np.array(rects))[0]
    for t, r in own.items():
        if (area(r) == 0).any():
            raise PartitionError(f"a tile is empty in tensor {t!r} ({sp.hw[t][0]}x{sp.hw[t][1]}); use fewer ranks")


def partition(strategy: str, graph: Graph, ranks: int, speeds: list[float] | None = None,
              objective: str = "total", cost_model: Callable[[list[Rect]], float] | None = None) -> list[Rect]:
    """One rect in cells per rank for this model, chosen by the named strategy.

    cost_model (cell rects -> predicted seconds, e.g. cost.model_cost) replaces the exact halo bytes
    where a strategy compares whole partitions (NPTP's final pick among its trees, strips and grids;
    grid's r x c shape); the search's per-cut estimate stays in bytes. None: bytes, as before.
    """
    if strategy not in STRATEGIES:
        raise PartitionError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if objective not in OBJECTIVES:
        raise PartitionError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if ranks < 1:
        raise PartitionError(f"need at least one rank, got {ranks}")
    speeds = [1.0] * ranks if speeds is None else [float(s) for s in speeds]
    if len(speeds) != ranks or not all(math.isfinite(s) and s > 0 for s in speeds):
        raise PartitionError(f"need {ranks} positive speeds, got {speeds}")
    sp = spatial(graph)
    cost = halo_cost(sp, objective)
    if cost_model is not None:
        cost = replace(cost, exact=cost_model)
    rects = STRATEGIES[strategy](sp.cells, speeds, cost)
    check(rects, sp)
    return rects
