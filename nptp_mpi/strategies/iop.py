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

import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from kernels.pointwise import act_code, epilogue

from .cost import Boards, LayerCost, Links, Prediction, compute_s, head_flops, predict
from .geometry import area
from .graph import Graph, Node
from .ops import Tile, run_head, run_spatial
from .plan import FLOAT_BYTES, ConvPair, Halo, HeadSplit, Plan, Rect, Transfer, held, make_plan, plan_from_cells

if TYPE_CHECKING:  # the planner imports this module, and must not start MPI
    from .exchange import World

Pair = tuple[str, str]


def _head(graph: Graph) -> list[Node]:
    k = next((i for i, n in enumerate(graph.nodes) if not n.spatial), len(graph.nodes))
    return graph.nodes[k:]


def _full(graph: Graph, tensor: str) -> Rect:
    return (0, 0, *graph.shapes[tensor][1:])


def _bias_act(y: np.ndarray, b: np.ndarray | None, node: Node) -> None:
    """In place on (rows, n) y: the bias per row and node's activation, once its partial sums are added."""
    a, rows = node.attrs, y.shape[0]
    epilogue(y, np.ones(rows, np.float32), np.zeros(rows, np.float32) if b is None else b, act_code(a.get("act", "")),
             np.float32(a.get("alpha", 0.0)), np.float32(a.get("lo", 0.0)), np.float32(a.get("hi", 0.0)))


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
    head = _head(graph)
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


class HeadPart:
    """One rank's share of a split head: the partial product of its features with its weight columns, and
    on rank 0 the bias and activation after the sum: the head nodes up to the split FC layer."""

    def __init__(self, graph: Graph, plan: Plan, r: int, params: dict[str, dict[str, np.ndarray]]) -> None:
        head = _head(graph)
        self.gemm = next(n for n in head if n.name == plan.head.gemm)
        w = params[self.gemm.name]["w"]
        self.partial_gemm = replace(self.gemm, params={"w": w.reshape(w.shape[0], -1)}, attrs={})
        self.b = params[self.gemm.name].get("b")
        self.pool = replace(head[0], params={}) if head[0].op == "adaptive_avgpool" else None
        y0, x0, y1, x1 = plan.own[plan.last][r]
        self.bins = plan.head.bins[r]
        self.canvas = np.zeros(graph.shapes[plan.last], np.float32) if self.pool else None
        self.tile = (slice(None), slice(y0, y1), slice(x0, x1))

    def partial(self, own: np.ndarray) -> np.ndarray:
        """w[:, my features] @ my features, from this rank's own tile of the last map."""
        feats = own
        if self.pool is not None:
            self.canvas[self.tile] = own  # zero elsewhere: bins get this rank's pixels' share of their mean
            y0, x0, y1, x1 = self.bins
            feats = run_head(self.pool, [self.canvas])[:, y0:y1, x0:x1]
        return run_head(self.partial_gemm, [np.ascontiguousarray(feats).reshape(-1)])

    def finish(self, total: np.ndarray) -> np.ndarray:
        """Rank 0: bias and activation on the summed products."""
        y = np.array(total, np.float32)
        _bias_act(y.reshape(-1, 1), self.b, self.gemm)
        return y


# -- conv pairs ---------------------------------------------------------------------------------------

def candidates(graph: Graph, plan: Plan) -> list[Pair]:
    """Conv pairs (a, b) IOP can split: b reads only a's output and is its only reader, neither is grouped,
    a has an output channel per rank, and a's input is a map with a halo (not the scattered input)."""
    out = []
    for a in graph.nodes:
        if a.op != "conv" or a.attrs.get("groups", 1) != 1 or a.inputs[0] not in plan.halos \
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
        halos[t_in] = Halo(t_in, c_in, (_full(graph, t_in),) * n, _to_all(own, c_in, by_sender=True))
        halos[t_out] = Halo(t_out, c_out, held_out, _to_all(held_out, c_out, by_sender=False))
        del halos[t_mid]
        split.append(ConvPair(*pair, _channels(graph.shapes[t_mid][0], plan.speeds)))
    return replace(plan, halos={t: halos[t] for t in plan.own if t in halos}, pairs=plan.pairs + tuple(split))


def summed(graph: Graph, plan: Plan) -> set[str]:
    """The tensors whose halo is a pair's reduce-scatter (run by PairStep, not as a halo exchange)."""
    return {_tensors(graph, (p.a, p.b))[2] for p in plan.pairs}


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


def _share_s(graph: Graph, node: Node, share: float, boards: Boards, r: int) -> float:
    """Rank r's seconds for `share` of node's output channels over the whole map, in one kernel call."""
    o = boards.layer_overhead_s
    return share * (compute_s(graph, node, [_full(graph, node.output)], boards, r) - o) + o


def head_weights(graph: Graph, plan: Plan) -> list[int]:
    """Per rank, the weights of its share of a split head: the split FC layer's rows times its features."""
    head = _head(graph)
    k = [n.name for n in head].index(plan.head.gemm)
    m, c = head[k].params["w"].shape[0], graph.shapes[head[k - 1].inputs[0]][0]
    return [m * c * int(area(b)) for b in plan.head.bins]


def _split_head_s(graph: Graph, plan: Plan, boards: Boards) -> float:
    """Seconds of a split head: the slowest rank's partial product, then rank 0's bias, activation and the rest
    of the head. The partial products at the rates calibrate measured with all ranks computing theirs at
    once (on one machine they share its memory bandwidth), else the calibrated whole head's seconds scaled
    by the share of its FLOPs (as if each rank ran its share at rank 0's speed alone), else FLOPs; the rest
    as the whole head's share of FLOPs, or FLOPs."""
    head, f, o = _head(graph), boards.flops_per_s, boards.layer_overhead_s
    k = [n.name for n in head].index(plan.head.gemm)
    weights = head_weights(graph, plan)
    rest = head[k].params["w"].shape[0] + sum(head_flops(n, graph) for n in head[k + 1:])
    whole = 2.0 * head[k].params["w"].size + rest
    if boards.split_head_s_per_weight:
        part = max(w * boards.split_head_s_per_weight[r] for r, w in enumerate(weights))
    elif boards.head_s is not None:
        part = boards.head_s * 2.0 * max(weights) / whole
    else:
        part = max(2.0 * w / f[r] + o for r, w in enumerate(weights))
    return part + (boards.head_s * rest / whole if boards.head_s is not None else rest / f[0] + o * (len(head) - k))


def predict_iop(graph: Graph, plan: Plan, boards: Boards, links: Links, overlap: bool = True) -> Prediction:
    """cost.predict of an iop plan; with pairs, without compute/transfer overlap (the engine waits for a
    pair's collectives at once; the other halos are then counted as if waited for too: an upper bound).
    The allgather and the reduce-scatter are the halos of a's input and b's output, so they cost as halo
    exchanges; a pair's compute is each rank's channel share of a and b over the whole map (under a's
    name), then adding the partial sums and b's bias (under b's); a split head's as _split_head_s."""
    pred = predict(graph, plan, boards, links, overlap=overlap and not plan.pairs)
    nodes, fixed = {n.name: n for n in graph.nodes}, {}
    steps = {x.name: x for x in pred.layers}
    for p in plan.pairs:
        a, b = nodes[p.a], nodes[p.b]
        c_mid, c_out = graph.shapes[a.output][0], graph.shapes[b.output][0]
        conv = max(_share_s(graph, a, (c1 - c0) / c_mid, boards, r) + _share_s(graph, b, (c1 - c0) / c_mid, boards, r)
                   for r, (c0, c1) in enumerate(p.channels))
        add = max(plan.ranks * c_out * float(area(rect)) / boards.flops_per_s[r] + boards.layer_overhead_s
                  for r, rect in enumerate(plan.halos[b.output].need))
        rs = steps[p.b].comm_s
        fixed[p.a], fixed[p.b] = LayerCost(p.a, conv, 0.0, conv), LayerCost(p.b, add, rs, add + rs)
    if plan.head:
        gather = steps["head"].comm_s
        head_s = _split_head_s(graph, plan, boards)
        fixed["head"] = LayerCost("head", head_s, gather, head_s + gather)
    layers = tuple(fixed.get(x.name, x) for x in pred.layers)
    return Prediction(sum(x.time_s for x in layers), layers)


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


class PairStep:
    """One rank's part of a conv pair at run time: a's channel slice over the whole map, b's partial sums,
    the reduce-scatter (receives into one slot per sender), the sum in rank order (so every rank adds
    bit-identical values) and b's bias and activation, into the rank's buffer of b's output."""

    def __init__(self, graph: Graph, plan: Plan, pair: ConvPair, world: World,
                 params: dict[str, dict[str, np.ndarray]], tags: dict[str, int]) -> None:
        r, self.world = world.rank, world
        a, b = (next(n for n in graph.nodes if n.name == name) for name in (pair.a, pair.b))
        self.tag = tags[b.output]
        self.a = replace(a, params=params[a.name])
        self.b = replace(b, params={"w": params[b.name]["w"]}, attrs={})
        self.node, self.bias = b, params[b.name].get("b")
        self.t_in, self.out = a.inputs[0], b.output
        self.hw_in, self.hw_mid = graph.shapes[a.inputs[0]][1:], graph.shapes[a.output][1:]
        self.whole_mid, self.whole_out = _full(graph, a.output), _full(graph, b.output)
        halo = plan.halos[self.out]
        self.rank, self.ranks, self.rect = r, plan.ranks, halo.need[r]
        mine = [t for t in halo.transfers if t.dst == r]
        y0, x0, y1, x1 = self.rect
        shape = (graph.shapes[self.out][0], y1 - y0, x1 - x0)
        size = shape[0] * shape[1] * shape[2]
        self.inbox = np.empty(size * len(mine), np.float32)
        self.slots = {t.src: self.inbox[i * size:(i + 1) * size].reshape(shape) for i, t in enumerate(mine)}
        self.recvs = world.inbox_messages([i * size for i in range(len(mine) + 1)], [t.src for t in mine])
        self.sends = world.halo_messages(graph.shapes[self.out], self.whole_out,
                                         [t for t in halo.transfers if t.src == r])

    def run(self, buffers: dict[str, np.ndarray], pending: dict) -> float:
        """The pair, once a's whole input has arrived (waiting for its allgather if still in flight); returns
        the compute seconds. b's output lands in buffers[b's output], which holds this rank's rect of it."""
        if self.t_in in pending:
            self.world.complete(pending.pop(self.t_in), f"the allgather before {self.a.name!r}")
        t0 = time.perf_counter()
        mid = run_spatial(self.a, [Tile(buffers[self.t_in], (0, 0, *self.hw_in))], self.hw_in, self.whole_mid)
        partial = run_spatial(self.b, [Tile(mid, self.whole_mid)], self.hw_mid, self.whole_out)
        compute = time.perf_counter() - t0
        posted = [self.world.post(self.inbox, self.recvs, self.tag), self.world.post(partial, self.sends, self.tag)]
        for p in posted:
            self.world.complete(p, f"the reduce-scatter after {self.node.name!r}")
        t0 = time.perf_counter()
        out = buffers[self.out]
        parts = [self.slots[q] if q != self.rank else Tile(partial, self.whole_out).view(self.rect)
                 for q in range(self.ranks)]
        np.copyto(out, parts[0])
        for part in parts[1:]:
            np.add(out, part, out=out)
        _bias_act(out.reshape(out.shape[0], -1), self.bias, self.node)
        return compute + time.perf_counter() - t0

    def free(self) -> None:
        """Free the MPI datatypes."""
        self.recvs.free()
        self.sends.free()
