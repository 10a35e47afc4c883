"""A rank's share of a plan as a program: named buffers and the steps the engine interprets.

Whatever scheme built the plan (tiles, fused blocks, a tail or a retiling, HALP's seams, IOP's conv pairs
and split head), the engine sees only these steps: scatter and gather are exchanges with rank 0, a halo
is an exchange with the neighbours (posted after its producer, completed before the first piece that
reads it: the overlap mode), a conv pair is two computes, a reduce-scatter and a sum, a split head or a
global pooling is a reduction to rank 0. Lowering is pure and deterministic, like the plan itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from nptp_mpi.model.graph import Graph, Node
from nptp_mpi.plan.geometry import Rect, area, as_rect, layers, need, reach, spatial, union
from nptp_mpi.plan.plan import HOST, Plan, block_nodes, held, pieces, split_head, whole

INPUT = "<input>"  # rank 0's whole input, the caller's array (bound each inference, never copied)
SCATTER_TAG, GATHER_TAG = 1, 0  # halo tags are 2 + the tensor's place among the plan's halos
# The job's control messages (runtime.exchange) take the top of the tag range MPI guarantees (up to 32767).
HOST_TAG, ARRIVE_TAG, FAULT_TAG = 32765, 32766, 32767


@dataclass(frozen=True)
class Buffer:
    """A region of a tensor (or a scratch value) a rank holds. fixed: allocated once and written in place
    (it receives messages or several pieces); otherwise a compute's single result becomes the buffer."""

    name: str
    channels: int
    rect: Rect
    fixed: bool = False
    alloc: bool = True  # zeros before the first inference (a scratch value made by its compute is not)
    pixels: bool = False  # 8-bit pixels of an image input (else float32 values)


@dataclass(frozen=True)
class Compute:
    """Output pieces of a node from input buffers; linear: its weights only (partial sums: no bias, no
    activation until they are added up)."""

    node: str
    inputs: tuple[str, ...]
    output: str
    pieces: tuple[Rect, ...]
    linear: bool = False
    mean: str = ""  # a squeeze-and-excitation node's channel means (a Reduce's output on every rank)


@dataclass(frozen=True)
class Message:
    """One rect (all channels) of a buffer, to or from a peer."""

    peer: int
    buffer: str
    rect: Rect


@dataclass(frozen=True)
class Post:
    """Start an exchange: receives first, then sends; halo: counted as halo traffic (else scatter/gather)."""

    key: str
    sends: tuple[Message, ...]
    recvs: tuple[Message, ...]
    tag: int
    halo: bool = True


@dataclass(frozen=True)
class Wait:
    """Complete the exchange posted under key (bounded by the timeout; `what` names it in errors)."""

    key: str
    what: str


@dataclass(frozen=True)
class Copy:
    """rect from one buffer into another (both hold it); pixels: the source holds an image's 8-bit pixels,
    normalised on the way."""

    src: str
    dst: str
    rect: Rect
    pixels: bool = False


@dataclass(frozen=True)
class Sum:
    """output = the parts (buffer, rect) added in order (so every rank adds bit-identical values), then
    node's bias and activation: the end of a reduce-scatter of partial sums."""

    output: str
    parts: tuple[tuple[str, Rect], ...]
    node: str


@dataclass(frozen=True)
class Reduce:
    """Every rank's contribution from rect of source summed at rank 0 (at every rank: everyone) into output.
    kind "mean": per-channel sums over the rect, divided by count (global pooling, squeeze-and-excitation);
    "linear": the FC layer `node` applied to the rank's features (those in bins after the adaptive pool
    `pool`, if any) by their weight columns, its bias and activation after the sum."""

    kind: str
    source: str
    rect: Rect
    output: str
    what: str
    count: int = 0
    node: str = ""
    pool: str = ""
    bins: Rect | None = None
    everyone: bool = False


@dataclass(frozen=True)
class Head:
    """Rank 0 runs these head nodes on the whole tensor in buffer (or reduction result) input."""

    nodes: tuple[str, ...]
    input: str


Step = Compute | Post | Wait | Copy | Sum | Reduce | Head


@dataclass(frozen=True)
class Program:
    """One rank's buffers and steps for one inference."""

    rank: int
    buffers: dict[str, Buffer]
    steps: tuple[Step, ...]


class _Builder:
    """Accumulates a program's buffers and steps."""

    def __init__(self, graph: Graph, plan: Plan, r: int) -> None:
        self.graph, self.plan, self.r = graph, plan, r
        self.buffers: dict[str, Buffer] = {}
        self.steps: list[Step] = []
        self.whole_input = INPUT  # rank 0's whole input as float values (what a host's seams compute from)

    def buffer(self, name: str, tensor: str, rect: Rect, fixed: bool = False, alloc: bool = True,
               pixels: bool = False) -> str:
        self.buffers[name] = Buffer(name, self.graph.shapes[tensor][0], rect, fixed, alloc, pixels)
        return name

    def exchange(self, key: str, sends, recvs, tag: int, halo: bool = True) -> bool:
        """Post (peer, buffer, rect) sends and receives; False (nothing posted) when there are none."""
        if sends or recvs:
            self.steps.append(Post(key, tuple(Message(*s) for s in sends), tuple(Message(*m) for m in recvs), tag,
                                   halo))
        return bool(sends or recvs)


def lower(graph: Graph, plan: Plan, r: int, overlap: bool = True) -> Program:
    """Rank r's program for plan. overlap: a node's output is computed as its core and border strips, and a
    halo is waited for only before the first piece that reads it (Intra-DP's overlap: the core is computed
    while the halo travels); without, the halo is waited for right after its producer and every node is one
    piece, which costs less compute (a tile's strips run at about twice the core's cost per pixel)."""
    if plan.ranks <= r:
        raise ValueError(f"plan is for {plan.ranks} ranks, not rank {r}")
    b = _Builder(graph, plan, r)
    sp_nodes = split_head(graph)[0]
    tags = {t: i + 2 for i, t in enumerate(plan.halos)}
    if len(tags) + 2 > HOST_TAG:
        raise ValueError(f"{len(tags)} halo tensors: more than MPI's tags below the control tags")
    pairs_a = {p.a: p for p in plan.pairs}
    pairs_b = {p.b for p in plan.pairs}
    summed = {next(n for n in graph.nodes if n.name == p.b).output for p in plan.pairs}
    seam_end, seams = _seam_transfers(graph, plan) if plan.halp else ("", [])

    # every tensor's buffer holds what this rank reads of it: its halo'd need, else what it computes
    n_pieces = {n.output: sum(map(len, pieces(plan, graph, n, r, overlap))) for n in sp_nodes}
    for t in plan.own:
        rect = held(plan, graph, t, r)
        fixed = rect != plan.comp[t][r] or n_pieces.get(t, 0) > 1 or t in summed or t == graph.input
        b.buffer(t, t, rect, fixed)

    _scatter(b)
    pending: list[str] = []
    if seams and r == HOST:  # seams first: the other ranks need them to finish the block
        _seams(b, seams, tags)
        pending.append("seams")
    for node in sp_nodes:
        if node.name in pairs_b:
            continue
        if node.name in pairs_a:
            _pair(b, pairs_a[node.name], tags, pending)
            continue
        inner, border = pieces(plan, graph, node, r, overlap)
        inner = [p for p in inner if area(p)]  # (an empty piece: a HALP core that shrank away)
        mean = _channel_means(b, node) if node.op == "se" else ""
        for part in (inner, border):
            if not part:
                continue
            for t in node.inputs:  # a halo in flight that this part reads: wait for it first
                if t in pending and any(not _within(reads(graph, node, t, p), plan.comp[t][r]) for p in part):
                    pending.remove(t)
                    b.steps.append(Wait(t, f"the halo exchange before {node.name!r}"))
            b.steps.append(Compute(node.name, node.inputs, node.output, tuple(part), mean=mean))
        t = node.output
        if t in plan.halos and t not in summed:
            # the host sends the block end's seams from their own buffers (another tensor's transfer can equal one)
            mine = seams if r == HOST and t == seam_end else []
            transfers = [x for x in plan.halos[t].transfers if x not in mine]
            posted = b.exchange(t, [(x.dst, t, x.rect) for x in transfers if x.src == r],
                                [(x.src, t, x.rect) for x in transfers if x.dst == r], tags[t])
            if posted and overlap:
                pending.append(t)
            elif posted:
                b.steps.append(Wait(t, f"the halo exchange after {node.name!r}"))
    for t in pending:  # halos no window layer waited for (the seams, in practice)
        b.steps.append(Wait(t, f"the halo exchange of {t!r}"))
    _head_steps(b)
    return Program(r, b.buffers, tuple(b.steps))


def reads(graph: Graph, node: Node, t: str, rect: Rect) -> Rect:
    """What computing rect of node's output reads of its input t (read pointwise: the same rect)."""
    read: Rect = (0, 0, 0, 0)
    for i, u in enumerate(node.inputs):
        if u == t:
            window = node.reads_through(i)
            read = union(read, rect if window is None else need(window, rect, graph.shapes[t][1:]))
    return as_rect(read)


def _within(a: Rect, b: Rect) -> bool:
    return not area(a) or (a[0] >= b[0] and a[1] >= b[1] and a[2] <= b[2] and a[3] <= b[3])


def _channel_means(b: _Builder, node: Node) -> str:
    """The allreduce of a squeeze-and-excitation node's channel sums over every rank's own tile of its map
    (every rank takes part, also one that computes none of it); the name of the means' value."""
    x = node.inputs[0]
    _, h, w = b.graph.shapes[x]
    out = f"{node.name}~means"
    b.steps.append(Reduce("mean", x, b.plan.own[x][b.r], out, f"the channel means of {node.name!r}", count=h * w,
                          everyone=True))
    return out


def _scatter(b: _Builder) -> None:
    """Rank 0 keeps its part of the input and sends every other rank its tile and halo; an image's pixels
    travel as 8 bits and each rank normalises its own."""
    g, plan, r = b.graph, b.plan, b.r
    if r == 0:
        b.buffer(INPUT, g.input, whole(g, g.input), alloc=False, pixels=plan.pixels)
        b.steps.append(Copy(INPUT, g.input, plan.scatter[0], plan.pixels))
        if plan.pixels and plan.halp:
            b.whole_input = b.buffer(f"{g.input}~values", g.input, whole(g, g.input), fixed=True)
            b.steps.append(Copy(INPUT, b.whole_input, whole(g, g.input), pixels=True))
    into = g.input
    if r and plan.pixels and area(plan.scatter[r]):
        into = b.buffer(f"{g.input}~pixels", g.input, plan.scatter[r], fixed=True, pixels=True)
    sends = [(q, INPUT, plan.scatter[q]) for q in range(1, plan.ranks) if r == 0 and area(plan.scatter[q])]
    recvs = [(0, into, plan.scatter[r])] if r and area(plan.scatter[r]) else []
    if b.exchange("scatter", sends, recvs, SCATTER_TAG, halo=False):
        b.steps.append(Wait("scatter", "the input scatter"))
    if into != g.input:
        b.steps.append(Copy(into, g.input, plan.scatter[r], pixels=True))


def _seam_transfers(graph: Graph, plan: Plan) -> tuple[str, list]:
    """A host-assisted block's end, and its transfers that the host computes apart from its own tile."""
    end = layers(spatial(graph))[plan.halp]
    return end, [t for t in plan.halos[end].transfers if t.src == HOST]


def _seams(b: _Builder, transfers: list, tags: dict[str, int]) -> None:
    """The host's seams: each piece it sends, computed from the whole input through the block's nodes
    (every tensor of the chain in a scratch buffer of its own), then sent."""
    g = b.graph
    nodes = block_nodes(g, b.plan.halp)
    end = layers(spatial(g))[b.plan.halp]
    sends = []
    for i, t in enumerate(transfers):
        chain = reach(g, nodes, end, t.rect)
        names = {g.input: b.whole_input}
        for n in nodes:
            rect = chain.get(n.output)
            if rect is None or not area(rect):
                continue
            names[n.output] = b.buffer(f"{n.output}~seam{i}", n.output, rect, alloc=False)
            b.steps.append(Compute(n.name, tuple(names[x] for x in n.inputs), names[n.output], (rect,)))
        sends.append((t.dst, names[end], t.rect))
    b.exchange("seams", sends, [], tags[end])  # (the caller waits for it last)


def _pair(b: _Builder, pair, tags: dict[str, int], pending: list[str]) -> None:
    """An IOP conv pair: a's channel share over the whole map from its whole (allgathered) input, b's
    partial sums over those channels, the reduce-scatter (one slot per sender) and the sum in rank order."""
    g, plan, r = b.graph, b.plan, b.r
    a, bn = (next(n for n in g.nodes if n.name == name) for name in (pair.a, pair.b))
    t_in, t_mid, t_out = a.inputs[0], a.output, bn.output
    if t_in in pending:
        pending.remove(t_in)
        b.steps.append(Wait(t_in, f"the allgather before {a.name!r}"))
    mid = b.buffer(f"{t_mid}~whole", t_mid, whole(g, t_mid), alloc=False)
    partial = b.buffer(f"{t_out}~partial", t_out, whole(g, t_out), alloc=False)
    b.steps.append(Compute(a.name, (t_in,), mid, (whole(g, t_mid),)))
    b.steps.append(Compute(bn.name, (mid,), partial, (whole(g, t_out),), linear=True))
    halo, rect = plan.halos[t_out], plan.halos[t_out].need[r]
    slots = {x.src: b.buffer(f"{t_out}~from{x.src}", t_out, rect, fixed=True) for x in halo.transfers if x.dst == r}
    b.exchange(f"{t_out}~rs", [(x.dst, partial, x.rect) for x in halo.transfers if x.src == r],
               [(q, slot, rect) for q, slot in slots.items()], tags[t_out])
    b.steps.append(Wait(f"{t_out}~rs", f"the reduce-scatter after {bn.name!r}"))
    b.steps.append(Sum(t_out, tuple((slots.get(q, partial), rect) for q in range(plan.ranks)), bn.name))


def _head_steps(b: _Builder) -> None:
    """How the last spatial map reaches the head at rank 0 (a reduction or a gather), then the head."""
    g, plan, r = b.graph, b.plan, b.r
    head, last = split_head(g)[1], plan.last
    own = plan.own[last][r]
    if plan.head is not None:  # the first FC layer split by its input features (IOP)
        names = [n.name for n in head]
        k = names.index(plan.head.gemm)
        pool = head[0].name if head[0].op == "adaptive_avgpool" else ""
        b.steps.append(Reduce("linear", last, own, "head_in", "the split FC layer's reduction", node=plan.head.gemm,
                              pool=pool, bins=plan.head.bins[r]))
        rest, src = names[k + 1:], "head_in"
    elif plan.gather == "reduce":  # global average pooling: per-channel sums
        _, h, w = g.shapes[last]
        b.steps.append(Reduce("mean", last, own, "head_in", "the global-pooling reduction", count=h * w))
        rest, src = [n.name for n in head[1:]], "head_in"
    else:
        gathered = [q for q in range(1, plan.ranks) if area(plan.own[last][q])]  # (none from a tail's idle ranks)
        if r == 0:
            b.buffer("gathered", last, whole(g, last), fixed=True)
            b.steps.append(Copy(last, "gathered", own))
        sends = [(0, last, own)] if r in gathered else []
        recvs = [(q, "gathered", plan.own[last][q]) for q in gathered] if r == 0 else []
        if b.exchange("gather", sends, recvs, GATHER_TAG, halo=False):
            b.steps.append(Wait("gather", "the head gather"))
        rest, src = [n.name for n in head], "gathered"
    if r == 0:
        b.steps.append(Head(tuple(rest), src))
