"""Interleaved operator partitioning (IOP, arXiv 2409.07693) on top of an NPTP tiling.

Two splits cut the weights instead of the maps, so each rank holds only a slice of them:

* head split: the classifier's first FC layer is split by its input. Flatten order is (C, H, W), so the
  features of a rank's tile of the last map are a rect of every channel; the rank multiplies them by
  their weight columns and the partial products are summed at rank 0 (M floats from each other rank),
  which adds bias and activation and runs the rest of the head. An adaptive average pool before the
  flatten is linear too: each rank pools its own pixels of every bin its tile touches (partial sums over
  the bin's size), and bins straddling a cut get partials from both sides, which the sum adds.
* conv pairs: conv a split by output channels, its only reader b by input channels. Every rank gathers
  a's whole input (the halo of a's input becomes an allgather), computes its channels of a over the whole
  map (a's activation is per channel, so it stays there) and b's partial sums over those channels; a
  reduce-scatter sends each rank every other rank's partial sums for what it holds of b's output (its
  tile and halo), which it adds in rank order before b's bias and activation; the tiles go on from there.
  No concatenation of a's channels, one reduction per pair. A pair moves more bytes than the halos it
  replaces, so pairs are taken only where the cost model predicts a gain (IOP's greedy pairing).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from nptp_mpi.errors import PartitionError
from nptp_mpi.model.graph import Graph
from nptp_mpi.plan.cost import Boards, Links, Setting, predict_iop
from nptp_mpi.plan.geometry import area
from nptp_mpi.plan.plan import (
    FLOAT_BYTES,
    ConvPair,
    Halo,
    HeadSplit,
    Plan,
    Rect,
    Transfer,
    held,
    make_plan,
    plan_from_cells,
    split_head,
    whole,
)
from nptp_mpi.strategies.options import Options, tile_cost

Pair = tuple[str, str]


# -- head split ---------------------------------------------------------------------------------------

def _bins(own: Rect, hw: tuple[int, int], out_hw: tuple[int, int]) -> Rect:
    """The adaptive-pooling bins that read a pixel of own (bin i spans [floor(i*n/m), ceil((i+1)*n/m)), as
    PyTorch's); with out_hw == hw every pixel is its own bin."""
    spans = []
    for axis in (0, 1):
        n, m, lo, hi = hw[axis], out_hw[axis], own[axis], own[axis + 2]
        hit = [i for i in range(m) if i * n // m < hi and -(-(i + 1) * n // m) > lo]
        spans.append((hit[0], hit[-1] + 1))
    return (spans[0][0], spans[1][0], spans[0][1], spans[1][1])


def head_split(graph: Graph, plan: Plan) -> HeadSplit | None:
    """The split of a head that is [adaptive average pool,] flatten, FC…: per rank the bins (pooled
    pixels, or pixels of the last map) its tile contributes to; None for any other head (global pooling
    keeps its C-float reduction, which moves fewer bytes and every rank would need every column)."""
    head = split_head(graph)[1]
    ops = [n.op for n in head]
    pool = ops[:1] == ["adaptive_avgpool"]
    if ops[pool:pool + 2] != ["flatten", "gemm"]:
        return None
    hw = graph.shapes[plan.last][1:]
    out_hw = tuple(head[0].attrs["out"]) if pool else hw
    return HeadSplit(head[pool + 1].name, tuple(_bins(own, hw, out_hw) for own in plan.own[plan.last]))


def with_head_split(graph: Graph, plan: Plan) -> Plan:
    """plan with its head split where head_split allows (gather "split": M floats from every rank but 0)."""
    split = head_split(graph, plan)
    if split is None:
        return plan
    m = next(n for n in graph.nodes if n.name == split.gemm).params["w"].shape[0]
    return replace(plan, gather="split", gather_bytes=FLOAT_BYTES * m * (plan.ranks - 1), head=split)


# -- conv pairs ---------------------------------------------------------------------------------------

def candidates(graph: Graph, plan: Plan) -> list[Pair]:
    """Conv pairs (a, b) IOP can split: b reads only a's output and is its only reader, neither is grouped or
    has a residual, a has an output channel per rank, and a's input is a map with a halo (not the scattered
    input)."""
    out = []
    for a in graph.nodes:
        if a.op != "conv" or a.attrs.get("groups", 1) != 1 or len(a.inputs) > 1 or a.inputs[0] not in plan.halos \
                or graph.shapes[a.output][0] < plan.ranks:
            continue
        readers = graph.consumers(a.output)
        b = readers[0] if len(readers) == 1 else None
        if b is not None and b.op == "conv" and b.attrs.get("groups", 1) == 1 and b.inputs == (a.output,):
            out.append((a.name, b.name))
    return out


def _tensors(graph: Graph, pair: Pair) -> tuple[str, str, str]:
    """(a's input, a's output, b's output) of a pair."""
    a, b = (next(n for n in graph.nodes if n.name == name) for name in pair)
    return a.inputs[0], a.output, b.output


def _channels(c: int, speeds: tuple[float, ...]) -> tuple[tuple[int, int], ...]:
    """Contiguous channel ranges in proportion to speeds, at least one channel each (c ≥ len(speeds))."""
    n = len(speeds)
    edges = [0, *(round(c * f) for f in np.cumsum(speeds)[:-1] / sum(speeds)), c]
    for i in range(1, n):
        edges[i] = min(max(edges[i], edges[i - 1] + 1), c - (n - i))
    return tuple(zip(edges[:-1], edges[1:], strict=True))


def _to_all(rects: tuple[Rect, ...], channels: int, by_sender: bool) -> tuple[Transfer, ...]:
    """Every rank sends every other rank one rect of a tensor: the sender's (allgather) or the receiver's
    (reduce-scatter) rect of rects."""
    n = len(rects)
    return tuple(Transfer(s, d, rects[s if by_sender else d],
                          FLOAT_BYTES * channels * int(area(rects[s if by_sender else d])))
                 for d in range(n) for s in range(n) if s != d)


def with_pairs(graph: Graph, plan: Plan, pairs: list[Pair]) -> Plan:
    """plan with conv pairs split by channels (ConvPair; pairs share no tensor, see pick): a's input is made
    whole on every rank (its halo becomes an allgather), a's output has no halo, and b's output's halo is the
    reduce-scatter of b's partial sums onto what each rank held of it."""
    n, halos, split = plan.ranks, dict(plan.halos), []
    for pair in pairs:
        t_in, t_mid, t_out = _tensors(graph, pair)
        own, c_in, c_out = plan.own[t_in], graph.shapes[t_in][0], graph.shapes[t_out][0]
        held_out = tuple(held(plan, graph, t_out, r) for r in range(n))
        halos[t_in] = Halo(t_in, c_in, (whole(graph, t_in),) * n, _to_all(own, c_in, by_sender=True))
        halos[t_out] = Halo(t_out, c_out, held_out, _to_all(held_out, c_out, by_sender=False))
        del halos[t_mid]
        split.append(ConvPair(*pair, _channels(graph.shapes[t_mid][0], plan.speeds)))
    return replace(plan, halos={t: halos[t] for t in plan.own if t in halos}, pairs=plan.pairs + tuple(split))


def pick(graph: Graph, gains: dict[Pair, float]) -> list[Pair]:
    """IOP's greedy pairing: positive gains, largest first, skipping a pair that shares a tensor with one
    already taken (a conv, or b's output being the next pair's input)."""
    taken, used = [], set()
    for pair, gain in sorted(gains.items(), key=lambda kv: -kv[1]):
        tensors = set(_tensors(graph, pair))
        if gain > 0 and not tensors & used:
            taken.append(pair)
            used |= tensors
    return taken


def pair_gains(graph: Graph, plan: Plan, boards: Boards, links: Links, overlap: bool = True) -> dict[Pair, float]:
    """Every candidate pair's predicted saving in seconds over plan (predict_iop of plan with and without it)."""
    base = predict_iop(graph, plan, boards, links, overlap).latency_s
    return {c: base - predict_iop(graph, with_pairs(graph, plan, [c]), boards, links, overlap).latency_s
            for c in candidates(graph, plan)}


def iop_plan(graph: Graph, ranks: int, speeds: list[float] | None = None, objective: str = "total",
             boards: Boards | None = None, links: Links | None = None, overlap: bool = True,
             cost_model: Callable[[list[Rect]], float] | None = None, cells=None) -> Plan:
    """The `iop` plan: an NPTP tiling (by cost_model where given; `cells`, its cell tiles when already
    computed) with the head split where the head allows it, and, given the boards and links to predict for,
    the conv pairs IOP's greedy pairing picks by predicted gain (none without)."""
    base = make_plan(graph, ranks, "iop", speeds, objective, cost_model, tiling="nptp") if cells is None else \
        plan_from_cells(graph, cells, "iop", speeds, objective)
    plan = with_head_split(graph, base)
    if boards is None or links is None:
        return plan
    return with_pairs(graph, plan, pick(graph, pair_gains(graph, plan, boards, links, overlap)))


def iop(graph: Graph, ranks: int, speeds: list[float], objective: str, setting: Setting,
        options: Options = Options()) -> Plan:
    """The iop plan (iop_plan) for the setting's boards and links, over NPTP's tiles (options.cells if given)."""
    if options.fuse:
        raise PartitionError("--fuse needs --strategy fused or halp")
    return iop_plan(graph, ranks, speeds, objective, setting.boards, setting.links, setting.overlap,
                    tile_cost(graph, objective, setting), options.cells)
