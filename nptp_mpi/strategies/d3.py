"""D3 run-time re-partitioning (arXiv 2101.05952): measured compute times move the cuts around slow tiles.

Pure functions on the cell grid, no MPI: every rank calls rebalance() with the same allgathered times and
gets the same tiles. A rank's speed is its tile's area in cells over its measured compute time, so a
layout's predicted time on a rank is area / speed. Only cut segments with a slow tile on one side move. A
segment is a piece of a horizontal or vertical line along which tiles end on one side and start on the
other over the same span (at a T-junction one tile on one side, several on the other): shifting it by
whole cells changes all of them and keeps every tile a rectangle and the cover exact.
"""

from __future__ import annotations

from dataclasses import dataclass

from nptp_mpi.errors import PartitionError
from nptp_mpi.plan.geometry import Rect, Spatial
from nptp_mpi.plan.tiling import check, halo_cost, nptp

TOLERANCE = 0.1  # re-partition when the slowest rank is more than 10% above the mean
GAIN = 0.05  # ... and a new layout predicts the slowest rank at least 5% faster (timing noise churns less)


@dataclass(frozen=True)
class Segment:
    """A movable piece of cut: the line (axis 0: y = at, axis 1: x = at), the ranks ending at it (above or
    left) and those starting at it (below or right)."""

    axis: int
    at: int
    before: tuple[int, ...]
    after: tuple[int, ...]


def imbalance(times: list[float]) -> float:
    """max / mean of per-rank compute times (1.0: perfectly balanced)."""
    return max(times) * len(times) / sum(times)


def _area(r: Rect) -> int:
    return (r[2] - r[0]) * (r[3] - r[1])


def speeds(cell_tiles: list[Rect], times: list[float]) -> list[float]:
    """Each rank's measured speed in cells per second."""
    return [_area(r) / t for r, t in zip(cell_tiles, times, strict=True)]


def relative(speed: list[float]) -> tuple[float, ...]:
    """Speeds relative to the fastest, rounded to 0.01, so that noise does not split equal boards much."""
    top = max(speed)
    return tuple(max(round(s / top, 2), 0.01) for s in speed)


def segments(cell_tiles: list[Rect]) -> list[Segment]:
    """Every minimal movable cut segment: along each line, the spans of the tiles ending and starting there
    merge where they overlap; each merged group covers the same stretch on both sides."""
    out = []
    for axis in (0, 1):
        for at in sorted({r[axis + 2] for r in cell_tiles} & {r[axis] for r in cell_tiles}):
            spans = sorted((r[1 - axis], r[3 - axis], side, i) for i, r in enumerate(cell_tiles)
                           for side, edge in ((0, axis + 2), (1, axis)) if r[edge] == at)
            groups, reach = [], 0
            for lo, hi, side, i in spans:
                if lo >= reach:
                    groups.append(([], []))
                groups[-1][side].append(i)
                reach = max(reach, hi)
            out += [Segment(axis, at, tuple(sorted(b)), tuple(sorted(a))) for b, a in groups]
    return out


def move(cell_tiles: list[Rect], seg: Segment, d: int) -> list[Rect]:
    """The tiles with the segment shifted by d cells (positive: down or right)."""
    tiles = list(cell_tiles)
    for i in seg.before:
        r = list(tiles[i])
        r[seg.axis + 2] += d
        tiles[i] = tuple(r)
    for j in seg.after:
        r = list(tiles[j])
        r[seg.axis] += d
        tiles[j] = tuple(r)
    return tiles


def _extent(r: Rect, axis: int) -> int:
    return r[axis + 2] - r[axis]


def _width(r: Rect, axis: int) -> int:
    return r[3 - axis] - r[1 - axis]


def predicted(cell_tiles: list[Rect], speed: list[float]) -> list[float]:
    """Each rank's predicted compute time on these tiles: area / speed."""
    return [_area(r) / s for r, s in zip(cell_tiles, speed, strict=True)]


def _move_cuts(cell_tiles: list[Rect], speed: list[float], slow: set[int]) -> list[Rect]:
    """Greedy: apply the single shift of a segment bounding a slow rank that most lowers the predicted times
    sorted from the largest (lexicographically, so the max first), until no shift lowers them. Every step
    lowers them strictly, so no layout repeats and the loop ends."""
    tiles = list(cell_tiles)
    while True:
        areas = [_area(r) for r in tiles]
        best, best_key = None, sorted(predicted(tiles, speed), reverse=True)
        for seg in segments(tiles):
            if not slow & {*seg.before, *seg.after}:
                continue
            lo = 1 - min(_extent(tiles[i], seg.axis) for i in seg.before)
            hi = min(_extent(tiles[j], seg.axis) for j in seg.after) - 1
            for d in range(lo, hi + 1):
                trial = list(areas)
                for i in seg.before:
                    trial[i] += d * _width(tiles[i], seg.axis)
                for j in seg.after:
                    trial[j] -= d * _width(tiles[j], seg.axis)
                key = sorted((a / s for a, s in zip(trial, speed, strict=True)), reverse=True)
                if key < best_key:
                    best, best_key = (seg, d), key
        if best is None:
            return tiles
        tiles = move(tiles, *best)


def rebalance(sp: Spatial, cell_tiles: list[Rect], compute_times: list[float], objective: str = "total",
              tolerance: float = TOLERANCE, gain: float = GAIN) -> list[Rect] | None:
    """New cell tiles for the next inference, or None when the measured times are balanced within tolerance
    or no layout predicts the slowest rank at least `gain` faster.

    Ranks more than tolerance above the mean are slow; only the cut segments bounding them move, by whole
    cells, as far as equalising predicted times (area / measured speed) asks. When no such move lowers the
    predicted maximum enough (or the result fails partition.check), a full NPTP re-partition with the
    measured speeds, its slow ranks' cuts moved the same way (NPTP lets a tile miss its share by up to its
    longer side), is taken instead if it does. Deterministic: same inputs, same tiles, on every rank.
    """
    tiles = [tuple(int(v) for v in r) for r in cell_tiles]
    times = [float(t) for t in compute_times]
    if len(times) < 2 or min(times) <= 0 or imbalance(times) <= 1 + tolerance:
        return None
    speed = speeds(tiles, times)
    enough = (1 - gain) * max(predicted(tiles, speed))
    mean = sum(times) / len(times)
    slow = {i for i, t in enumerate(times) if t > (1 + tolerance) * mean}
    moved = _move_cuts(tiles, speed, slow)
    if max(predicted(moved, speed)) <= enough:
        try:
            check(moved, sp)
            return moved
        except PartitionError:
            pass
    try:
        fresh = _move_cuts(nptp(sp.cells, list(relative(speed)), halo_cost(sp, objective)), speed, slow)
        check(fresh, sp)
    except PartitionError:
        return None
    return fresh if max(predicted(fresh, speed)) <= enough else None
