"""Latency cost model: a plan, the boards' speeds and the links' α/β → predicted seconds per inference.

Layer-synchronous critical path, following what the engine does (every rank advances layer by layer,
a layer lasting as long as its slowest rank):

* scatter: rank 0 sends each rank its input tile + halo: α per rank with a tile + scatter bytes / β (all
  through rank 0's link, or the shared medium — the same either way).
* per spatial node, rank r computes its share of the output in the engine's pieces (with overlap core +
  border strips, else one piece: plan.pieces, as the engine does), each piece one kernel call costing
  layer_overhead_s plus its work:
  - measured per layer (`calibrate --model`): s_per_px[r][node] × area(piece), the seconds per output
    pixel that rank r took on that layer of the real model, all ranks computing at once as in a run, in
    one piece or (overlap_s_per_px, where measured) in overlap's core and strips
    (a node only rank 0 computes, in a tail, at the rates measured with rank 0 alone);
  - without rates in overlap's pieces, a conv's border strip pixel costs STRIP_COST times a whole tile's;
  - otherwise FLOPs / flops_per_s[r], FLOPs: conv 2·Cout·area·(Cin/g)·kh·kw; pools C·area·kh·kw;
    pointwise ops one per element per input.
* a halo exchange of tensor t costs rank r  α·(messages to/from r) + bytes / β, where bytes is
  max(received by r, sent by r) on a switched LAN (full duplex, each board its own link) and the whole
  exchange's bytes on a shared medium (Wi-Fi: one bottleneck carries everyone's traffic).
* without overlap the exchange follows the producing layer: max_r compute + max_r comm. With overlap only
  a part of it travels while later layers run: each message carries the fraction links.overlap gives
  for its size (calibrate measures it, sending halos as the engine does: on the virtual cluster, with
  MPICH over TCP, 60-90% of 4-16 KB and 93-99% of 32 KB and more), and rank r's exchange time splits
  in that proportion of its halo bytes (of the whole
  exchange's on a shared medium). A layer-synchronous clock shortens what is left of the background
  part, and the first consumer that needs the halo waits per rank: max(core_r, background part
  left_r) + the rest_r + border_r.
* a squeeze-and-excitation node: every rank first waits for the allreduce of its map's C channel sums
  (allreduce_s: 2·⌈log₂ N⌉ messages of 8·C bytes), then computes its pieces as a pointwise node.
* head: reduce (C floats per rank) or gather (plan.gather_bytes) to rank 0: α per sender + bytes / β, then the
  head ops on rank 0: their measured seconds (head_s) where calibrated, else gemm 2·M·K FLOPs and one
  per element for the others. A head split by IOP: iop.predict_iop (each rank's partial product at its
  measured seconds per weight, all ranks at once).

Per-layer rates carry over to other plans, sizes and rank counts by assuming a layer's seconds per output
pixel do not depend on the tile's shape or the image size, only on the board and on how many ranks compute
at once on it (Calibration.to_boards picks the rates measured with the nearest rank count).

Ignored: contention between exchanges in flight at once, the time to pack messages, memory bandwidth of
the FLOP/s fallback (pointwise ops are counted as a FLOP per element), skew between ranks carried from one
layer to the next (each layer waits for its slowest rank), ranks that share cores lending them to each
other while one waits (with 4 ranks on 2 cores the model predicts up to ~15% high), and the first-call
Numba compile.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from nptp_mpi.errors import UsageError
from nptp_mpi.model.graph import Graph, Node
from nptp_mpi.plan.geometry import area, layers, reach, spatial
from nptp_mpi.plan.plan import Plan, block_nodes, pieces, plan_from_cells, split_head, whole

Rect = tuple[int, int, int, int]

_PREFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "ki": 2.0 ** 10, "mi": 2.0 ** 20, "gi": 2.0 ** 30}
_RATE = re.compile(r"^([kmg]i?)?(bit|bit/s|bps|b/s|B/s|B)?$", re.IGNORECASE)
_TIME_UNITS = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(\S*)\s*$")


def _number(text: str, what: str, example: str) -> tuple[float, str]:
    m = _NUMBER.match(str(text))
    if m is None:
        raise ValueError(f"{what} {text!r} not understood; give e.g. {example}")
    return float(m.group(1)), m.group(2)


def parse_rate(text: str) -> float:
    """A link rate in bytes/s: '100mbit' ('100Mbit/s', '100mbps', '100Mb/s'), '1gbit', '12.5MB/s',
    '1MiB/s', or a bare number of bytes/s. A capital B means bytes, anything else with 'b' bits."""
    example = "100mbit, 1gbit, 12.5MB/s or 125000 (bytes/s)"
    v, unit = _number(text, "rate", example)
    m = _RATE.match(unit)
    if m is None or (unit and m.group(2) is None):
        raise ValueError(f"rate {text!r}: unknown unit {unit!r}; give e.g. {example}")
    prefix, suffix = (m.group(1) or "").lower(), m.group(2) or ""
    v *= _PREFIX[prefix] * (1.0 if suffix in ("", "B/s", "B") else 1 / 8)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"rate {text!r} must be positive and finite")
    return v


def parse_time(text: str) -> float:
    """A time in seconds: '1ms', '200us', '0.5s', or bare seconds ('0.001')."""
    example = "1ms, 200us or 0.001 (seconds)"
    v, unit = _number(text, "time", example)
    if unit.lower() not in _TIME_UNITS:
        raise ValueError(f"time {text!r}: unknown unit {unit!r}; give e.g. {example}")
    v *= _TIME_UNITS[unit.lower()]
    if not math.isfinite(v):
        raise ValueError(f"time {text!r} must be finite")
    return v


@dataclass(frozen=True)
class Links:
    """The network: per-message latency α (s), bandwidth β (bytes/s); shared = one medium for all ranks.

    overlap: (message bytes, fraction of it that travels while the ranks compute) at increasing sizes; a
    message takes the fraction of the smallest size at least as large (of the largest beyond them all).
    Empty: every message travels in the background.
    """

    alpha_s: float
    bytes_per_s: float
    shared: bool = False
    overlap: tuple[tuple[int, float], ...] = ()

    def background(self, nbytes: int) -> float:
        """The fraction of a message of nbytes that travels while the ranks compute."""
        if not self.overlap:
            return 1.0
        return next((f for size, f in self.overlap if nbytes <= size), self.overlap[-1][1])



def links_given(bandwidth: str | None, latency: str | None = None, shared: bool = False,
                measured: Links | None = None) -> Links | None:
    """The links a user described: bandwidth ("100mbit"), latency ("1ms") and shared where given, the rest
    from measured links (a calibration's); None where neither says anything (plan for the nominal link)."""
    if not (bandwidth or measured):
        if latency or shared:
            raise UsageError("latency and shared describe a link: give its bandwidth too")
        return None
    return Links(parse_time(latency) if latency else (measured.alpha_s if measured else 0.0),
                 parse_rate(bandwidth) if bandwidth else measured.bytes_per_s,
                 shared or bool(measured and measured.shared), measured.overlap if measured else ())

@dataclass(frozen=True)
class Boards:
    """Per rank FLOP/s of our kernels, and the fixed cost of one kernel call (Python + dispatch).

    Where measured on the real model (`calibrate --model`): per rank, seconds per output pixel of each
    spatial node by name (used instead of FLOPs / FLOP/s for the nodes it names) in one piece and in
    overlap's pieces, and the head's seconds on rank 0 (instead of its FLOPs).
    """

    flops_per_s: tuple[float, ...]
    layer_overhead_s: float = 0.0
    s_per_px: tuple[Mapping[str, float], ...] = ()
    head_s: float | None = None
    alone: Mapping[str, float] | None = None  # rank 0's rates computing with the others idle (a tail)
    split_head_s_per_weight: tuple[float, ...] = ()  # per rank: a split head's partial product (IOP), all at once
    overlap_s_per_px: tuple[Mapping[str, float], ...] = ()  # per rank: as s_per_px, computed as core and strips


@dataclass(frozen=True)
class LayerCost:
    """One step of the critical path: slowest rank's compute, slowest rank's comm, and the time it adds."""

    name: str
    compute_s: float
    comm_s: float
    time_s: float


@dataclass(frozen=True)
class Prediction:
    latency_s: float
    layers: tuple[LayerCost, ...]

    @property
    def compute_s(self) -> float:
        return sum(x.compute_s for x in self.layers)

    @property
    def comm_s(self) -> float:
        return sum(x.comm_s for x in self.layers)

    def to_json(self) -> dict:
        return {"latency_s": self.latency_s, "compute_s": self.compute_s, "comm_s": self.comm_s,
                "layers": [vars(x) for x in self.layers]}


def node_flops(node: Node, graph: Graph, region: Rect) -> float:
    """FLOPs of computing `region` of node's output (see the module docstring for what is counted)."""
    a = float(area(region))
    if a == 0:
        return 0.0
    c = graph.shapes[node.output][0]
    if node.op == "conv":
        cout, cin_g, kh, kw = node.params["w"].shape
        return 2.0 * cout * a * cin_g * kh * kw
    if node.op in ("maxpool", "avgpool"):
        return float(c * a * node.window.kernel[0] * node.window.kernel[1])
    if node.op == "lrn":
        return float(c * a * node.attrs.get("size", 1))
    if node.op == "chnorm":  # two passes for the mean and variance, one to normalise
        return float(3 * c * a)
    return float(c * a * max(1, len(node.inputs) if node.op != "concat" else 1))


# Without rates measured in overlap's pieces: a conv's border strip pixel (a 1-2 pixel wide strip, by im2col)
# costs twice a whole tile's pixel. A lower bound: on quarter-core boards, VGG-16 512² in 8 tiles took 1.5×
# the compute in overlap's pieces (docs/BENCHMARKS.md "Overlap off computes whole tiles").
STRIP_COST = 2.0


def compute_s(graph: Graph, node: Node, rects: Sequence[Rect], boards: Boards, r: int, alone: bool = False,
              piece: str = "whole") -> float:
    """Rank r's seconds for computing rects of node's output, one kernel call each; piece: whole (one piece
    per node), or overlap's core or border strips; alone: no other rank computes this node (ranks that share
    cores then run at the one-rank rates)."""
    factor = 1.0
    if alone and boards.alone is not None:
        rates = boards.alone
    elif piece != "whole" and boards.overlap_s_per_px:
        rates = boards.overlap_s_per_px[r]
    else:
        rates = boards.s_per_px[r] if boards.s_per_px else {}
        factor = STRIP_COST if piece == "border" and node.op == "conv" else 1.0
    rate = rates.get(node.name)
    work = (rate * sum(area(p) for p in rects) if rate is not None
            else sum(node_flops(node, graph, p) for p in rects) / boards.flops_per_s[r])
    return factor * work + boards.layer_overhead_s * len(rects)


def head_flops(node: Node, graph: Graph) -> float:
    """FLOPs of one head op (gemm 2·M·K, the others one per element)."""
    if node.op == "gemm":
        m, k = node.params["w"].shape
        return 2.0 * m * k
    shape = graph.shapes[node.inputs[0]]
    return float(math.prod(shape))


def _comm(plan: Plan, tensor: str, links: Links) -> list[tuple[float, float]]:
    """Per rank the time of one tensor's halo exchange (0 for a rank that takes no part), split into the part
    that travels while the ranks compute and the rest, by the bytes Links.background moves."""
    n = plan.ranks
    msgs, sent, recv, moving = [0] * n, [0] * n, [0] * n, [0.0] * n
    transfers = plan.halos[tensor].transfers
    for t in transfers:
        msgs[t.src] += 1
        msgs[t.dst] += 1
        sent[t.src] += t.nbytes
        recv[t.dst] += t.nbytes
        moving[t.src] += links.background(t.nbytes) * t.nbytes
        moving[t.dst] += links.background(t.nbytes) * t.nbytes
    total = sum(t.nbytes for t in transfers)
    out = []
    for r in range(n):
        s = 0.0 if msgs[r] == 0 else \
            links.alpha_s * msgs[r] + (total if links.shared else max(sent[r], recv[r])) / links.bytes_per_s
        f = sum(moving) / 2 / max(1, total) if links.shared else moving[r] / max(1, sent[r] + recv[r])
        out.append((f * s, (1 - f) * s))
    return out


def allreduce_s(nbytes: int, ranks: int, links: Links) -> float:
    """An allreduce of nbytes over ranks: a reduce and a broadcast along a binary tree, 2·⌈log₂ ranks⌉ messages
    one after another (all of them through the one medium when it is shared)."""
    if ranks < 2:
        return 0.0
    hops = 2 * math.ceil(math.log2(ranks))
    return hops * links.alpha_s + (2 * (ranks - 1) if links.shared else hops) * nbytes / links.bytes_per_s


def _check(plan: Plan, boards: Boards, links: Links) -> None:
    if len(boards.flops_per_s) != plan.ranks:
        raise ValueError(f"boards give {len(boards.flops_per_s)} speed(s) for a plan on {plan.ranks} rank(s)")
    if not all(math.isfinite(f) and f > 0 for f in boards.flops_per_s) or not boards.layer_overhead_s >= 0:
        raise ValueError(f"board speeds must be positive and the overhead non-negative: {boards}")
    for rates in (boards.s_per_px, boards.split_head_s_per_weight):
        if rates and len(rates) != plan.ranks:
            raise ValueError(f"boards give measured rates for {len(rates)} rank(s), the plan has {plan.ranks}")
    if not all(math.isfinite(v) and v >= 0 for rates in boards.s_per_px for v in rates.values()) \
            or not all(math.isfinite(v) and v > 0 for v in boards.split_head_s_per_weight) \
            or not (boards.head_s is None or boards.head_s >= 0):
        raise ValueError("measured layer rates and head time must be non-negative and finite")
    if not (links.alpha_s >= 0 and links.bytes_per_s > 0 and all(0 <= f <= 1 for _, f in links.overlap)):
        raise ValueError(f"links need alpha >= 0, a positive rate and overlap fractions in [0, 1]: {links}")


def predict(graph: Graph, plan: Plan, boards: Boards, links: Links, overlap: bool = True) -> Prediction:
    """Predicted latency of one inference of plan (see the module docstring for the model)."""
    _check(plan, boards, links)
    n, f, o = plan.ranks, boards.flops_per_s, boards.layer_overhead_s
    spatial_nodes, head = split_head(graph)
    layers = []
    scatter = links.alpha_s * sum(1 for q in plan.scatter[1:] if area(q)) + plan.scatter_bytes / links.bytes_per_s
    layers.append(LayerCost("scatter", 0.0, scatter, scatter))
    # per rank, halos in flight: (seconds to go in the background, seconds that start only at the wait)
    left: list[dict[str, tuple[float, float]]] = [{} for _ in range(n)]
    for node in spatial_nodes:
        comps, steps, comms = [], [], []
        alone = sum(1 for q in plan.comp[node.output] if area(q)) == 1
        for r in range(n):
            inner, border = pieces(plan, graph, node, r, overlap)
            c_in = compute_s(graph, node, inner, boards, r, alone, "core" if border else "whole")
            c_b = compute_s(graph, node, border, boards, r, alone, "border")
            wait = left[r].pop(node.inputs[0], None) if border else None
            comps.append(c_in + c_b)
            comms.append(sum(wait) if wait else 0.0)
            steps.append(c_in + c_b if wait is None else max(c_in, wait[0]) + wait[1] + c_b)
        step = max(steps)
        if node.op == "se":  # every rank waits for the allreduce of the channel sums, then computes
            means = allreduce_s(8 * graph.shapes[node.inputs[0]][0], n, links)
            step, comms = step + means, [c + means for c in comms]
        for r in range(n):  # what is still in flight travelled while this layer ran
            left[r] = {t: (max(0.0, bg - step), at_wait) for t, (bg, at_wait) in left[r].items()}
        comm_after = 0.0
        if node.output in plan.halos:
            per_rank = _comm(plan, node.output, links)
            if overlap:
                for r in range(n):
                    left[r][node.output] = per_rank[r]
            else:
                comm_after = max(sum(c) for c in per_rank)
        layers.append(LayerCost(node.name, max(comps), max(comms) + comm_after, step + comm_after))
    # halos no layer waited for, on the ranks that compute to the end (not the senders of a tail's gather)
    rest = max((sum(s) for r, lf in enumerate(left) if area(plan.comp[plan.last][r]) for s in lf.values()),
               default=0.0)
    if rest:
        layers.append(LayerCost("pending halos", 0.0, rest, rest))
    c_last = graph.shapes[plan.last][0]
    reduce = plan.gather == "reduce"
    senders = n - 1 if reduce else sum(1 for q in plan.own[plan.last][1:] if area(q))
    gather = links.alpha_s * senders + plan.gather_bytes / links.bytes_per_s
    local = max(c_last * float(area(plan.own[plan.last][r])) / f[r] for r in range(n)) if reduce else 0.0
    ops = head[1:] if reduce else head
    head_s = local + (boards.head_s if boards.head_s is not None else sum(head_flops(nd, graph) / f[0] + o
                                                                           for nd in ops))
    layers.append(LayerCost("head", head_s, gather, gather + head_s))
    return Prediction(sum(x.time_s for x in layers), tuple(layers))


def model_cost(graph: Graph, boards: Boards, links: Links, overlap: bool = True, strategy: str = "nptp",
               objective: str = "total") -> Callable[[list[Rect]], float]:
    """The cost_model hook of partition()/make_plan(): cell rects → predicted seconds."""
    def cost(rects: list[Rect]) -> float:
        plan = plan_from_cells(graph, rects, strategy, None, objective)
        return predict(graph, plan, boards, links, overlap).latency_s
    return cost


# -- any plan: split operators (IOP), the host's seams (HALP), and what the planner optimises for --------

def _share_s(graph: Graph, node: Node, share: float, boards: Boards, r: int) -> float:
    """Rank r's seconds for `share` of node's output channels over the whole map, in one kernel call."""
    o = boards.layer_overhead_s
    return share * (compute_s(graph, node, [whole(graph, node.output)], boards, r) - o) + o


def head_weights(graph: Graph, plan: Plan) -> list[int]:
    """Per rank, the weights of its share of a split head: the split FC layer's rows times its features."""
    head = split_head(graph)[1]
    k = [n.name for n in head].index(plan.head.gemm)
    m, c = head[k].params["w"].shape[0], graph.shapes[head[k - 1].inputs[0]][0]
    return [m * c * int(area(b)) for b in plan.head.bins]


def _split_head_s(graph: Graph, plan: Plan, boards: Boards) -> float:
    """Seconds of a split head: the slowest rank's partial product, then rank 0's bias, activation and the rest
    of the head. The partial products at the rates calibrate measured with all ranks computing theirs at
    once (on one machine they share its memory bandwidth), else the calibrated whole head's seconds scaled
    by the share of its FLOPs (as if each rank ran its share at rank 0's speed alone), else FLOPs; the rest
    as the whole head's share of FLOPs, or FLOPs."""
    head, f, o = split_head(graph)[1], boards.flops_per_s, boards.layer_overhead_s
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


def seam_flops(graph: Graph, plan: Plan) -> float:
    """FLOPs the host spends on the seams (each piece's chain through the block), on top of its own tile."""
    nodes = block_nodes(graph, plan.halp)
    end = layers(spatial(graph))[plan.halp]
    total = 0.0
    for t in plan.halos[end].transfers:
        chain = reach(graph, nodes, end, t.rect)
        total += sum(node_flops(n, graph, chain[n.output]) for n in nodes if n.output in chain)
    return total


NOMINAL_FLOPS = 10e9  # FLOP/s of one speed unit: our kernels on a Raspberry Pi 4 class board, roughly
NOMINAL_LINKS = Links(alpha_s=3e-4, bytes_per_s=100e6 / 8)  # switched 100 Mbit/s Ethernet


@dataclass(frozen=True)
class Setting:
    """What the planner optimises for: per-rank board speeds, the links, and whether halos overlap."""

    boards: Boards
    links: Links
    overlap: bool = True
    given: bool = False  # from a calibration or --bandwidth: then NPTP also picks its tiles by this model

    @classmethod
    def nominal(cls, speeds: list[float], overlap: bool = True) -> Setting:
        return cls(Boards(tuple(NOMINAL_FLOPS * s for s in speeds), 1e-4), NOMINAL_LINKS, overlap)


def prediction(graph: Graph, plan: Plan, setting: Setting) -> Prediction:
    """The one cost model's steps for any plan: IOP's split operators as they run (predict_iop), HALP's
    seams as a step of their own (the host computes them before its tile; the others wait at the block's
    end), every other plan as predict."""
    b, ln, ov = setting.boards, setting.links, setting.overlap
    pred = predict_iop(graph, plan, b, ln, ov) if plan.head or plan.pairs else predict(graph, plan, b, ln, ov)
    if plan.halp:
        s = seam_flops(graph, plan) / b.flops_per_s[0]
        pred = Prediction(pred.latency_s + s, (*pred.layers, LayerCost("seams", s, 0.0, s)))
    return pred


def latency(graph: Graph, plan: Plan, setting: Setting) -> float:
    """Predicted seconds of one inference of any plan."""
    return prediction(graph, plan, setting).latency_s


def overlap_pays(graph: Graph, plan: Plan, setting: Setting) -> bool:
    """Whether plan is predicted faster computing cores while halos travel than one piece per node: what
    overlap hides against what its border strips cost (`--overlap auto`)."""
    return latency(graph, plan, replace(setting, overlap=True)) < latency(graph, plan, replace(setting, overlap=False))


def describe(setting: Setting) -> str:
    """The cost model's boards and links in a line."""
    ln, b = setting.links, setting.boards
    boards = ("boards: per-layer times measured by calibrate --model" if b.s_per_px else
              "boards " + ", ".join(f"{f / 1e9:.1f}" for f in b.flops_per_s) + " GFLOP/s")
    return (f"{'shared' if ln.shared else 'switched'} {ln.bytes_per_s * 8 / 1e6:g} Mbit/s, latency "
            f"{ln.alpha_s * 1e3:g} ms, overlap {'on' if setting.overlap else 'off'}, {boards}")
