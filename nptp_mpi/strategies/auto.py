"""Strategy dispatch: a strategy name, the boards and the links → one Plan (pure, same on every rank).

Spatial tilings (coedge, grid, nptp) come from partition.py; `fused` runs DeepThings' fused blocks over
any tiling, `halp` a host-assisted first block (halp.py), `tail` the last layers on rank 0 alone, each
with its blocks chosen by the cost model (or given by --fuse); `mixed` switches from one tiling to
another at the cut where that is predicted fastest (the map redistributed there); `iop` splits
operators (iop.py); `auto` runs whichever of them the cost model predicts fastest. Where no calibration
or link is given, the cost model uses a nominal board and link (NOMINAL_*), stated in `plan`'s output.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, replace

from .cost import Boards, Links, Prediction, model_cost, predict
from .geometry import layers, spatial
from .graph import Graph
from .halp import halp_plan, seam_flops
from .iop import iop_plan, predict_iop
from .partition import STRATEGIES as TILINGS
from .partition import PartitionError
from .plan import FLOAT_BYTES, Plan, cuts, make_plan, plan_from_cells

NOMINAL_FLOPS = 10e9  # FLOP/s of one speed unit: our kernels on a Raspberry Pi 4 class board, roughly
NOMINAL_LINKS = Links(alpha_s=3e-4, bytes_per_s=100e6 / 8)  # switched 100 Mbit/s Ethernet
LONGEST_BLOCK = 6  # fused blocks longer than this recompute too much to pay off on any model we run


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


def layer_of(graph: Graph) -> dict[str, int]:
    """Per spatial node, the layer it belongs to: the index of the tensor a window op reads (layers()),
    pointwise nodes with the window op before them."""
    index = {t: i for i, t in enumerate(layers(spatial(graph)))}
    out, current = {}, 0
    for n in graph.nodes:
        if not n.spatial:
            break
        if n.window is not None:
            current = index[n.inputs[0]]
        out[n.name] = current
    return out


def _blocks(fuse: tuple[int, ...], total: int) -> list[tuple[int, int]]:
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
            spans = _blocks(fuse, total)
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


def build(graph: Graph, ranks: int, strategy: str = "nptp", speeds: list[float] | None = None,
          objective: str = "total", setting: Setting | None = None, fuse: tuple[int, ...] | None = None,
          tiling: str = "nptp", cells=None, prefixes: list[tuple[int, ...]] | None = None) -> Plan:
    """The plan for a strategy name. `fuse` fixes fused blocks (None: chosen by the cost model);
    `tiling` is the partition fused blocks run over; `cells`, that partition's cell tiles, and `prefixes`,
    fused_prefixes over them, when already computed (auto builds every scheme over one NPTP search and
    one block DP)."""
    speeds = [1.0] * ranks if speeds is None else list(speeds)
    setting = setting or Setting.nominal(speeds)
    model = model_cost(graph, setting.boards, setting.links, setting.overlap, objective=objective) \
        if setting.given else None
    if strategy in TILINGS:
        if fuse:
            raise PartitionError(f"--fuse needs --strategy fused (strategy {strategy} exchanges every layer)")
        return make_plan(graph, ranks, strategy, speeds, objective, model)
    if strategy == "auto":
        if fuse:
            raise PartitionError("--fuse fixes the blocks of fused or halp; auto chooses its own")
        return auto(graph, ranks, speeds, objective, setting)
    if strategy == "iop":
        if fuse:
            raise PartitionError("--fuse needs --strategy fused or halp")
        return iop_plan(graph, ranks, speeds, objective, setting.boards, setting.links, setting.overlap, model, cells)
    if strategy == "mixed":
        if fuse:
            raise PartitionError("--fuse needs --strategy fused or halp; mixed exchanges every layer")
        tilings = {name: make_plan(graph, ranks, name, speeds, objective, model).cell_tiles
                   for name in ("coedge", "grid", "nptp")}
        return mixed_plan(graph, tilings, tuple(speeds), objective, setting)
    if strategy not in ("fused", "halp", "tail"):
        raise PartitionError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if tiling not in TILINGS:
        raise PartitionError(f"unknown --partition {tiling!r}; choose one of {', '.join(TILINGS)}")
    if cells is None:
        cells = make_plan(graph, ranks, tiling, speeds, objective, model).cell_tiles
    if strategy == "fused":
        chosen = choose_fuse(graph, cells, setting, prefixes) if fuse is None else tuple(fuse)
        return plan_from_cells(graph, cells, "fused", tuple(speeds), objective, chosen)
    if strategy == "tail":
        if fuse:
            raise PartitionError("--fuse needs --strategy fused or halp; tail chooses its own length")
        return tail_plan(graph, cells, tuple(speeds), objective, setting, prefixes)
    if fuse and len(fuse) > 1:
        raise PartitionError("halp has one host-assisted block: give its length alone, e.g. --fuse 4")
    k = fuse[0] if fuse else choose_halp(graph, cells, tuple(speeds), objective, setting)
    return halp_plan(graph, cells, tuple(speeds), objective, k)


def prediction(graph: Graph, plan: Plan, setting: Setting) -> Prediction:
    """The cost model's steps for any plan (IOP's split operators by their own model)."""
    if plan.head or plan.pairs:
        return predict_iop(graph, plan, setting.boards, setting.links, setting.overlap)
    return predict(graph, plan, setting.boards, setting.links, setting.overlap)


def latency(graph: Graph, plan: Plan, setting: Setting) -> float:
    """Predicted seconds of one inference of any plan (with the host's seams for halp)."""
    if plan.halp:
        return halp_latency(graph, plan, setting)
    return prediction(graph, plan, setting).latency_s


def candidates(graph: Graph, ranks: int, speeds: list[float], objective: str, setting: Setting,
               ) -> list[tuple[str, Plan | None, float | str]]:
    """(strategy, plan, predicted seconds) of every scheme auto weighs; (strategy, None, why) where one
    cannot run. Fused and host-assisted blocks and IOP's splits go over the nptp tiling. Tilings are picked by
    the cost model too (setting.given): auto compares predictions, so every candidate minimises its own."""
    setting, out, tilings, prefixes = replace(setting, given=True), [], {}, None
    for name in CANDIDATES:
        try:
            plan = mixed_plan(graph, tilings, tuple(speeds), objective, setting) if name == "mixed" else \
                build(graph, ranks, name, speeds, objective, setting, cells=tilings.get("nptp"), prefixes=prefixes)
        except PartitionError as e:
            out.append((name, None, str(e)))
            continue
        if name in TILINGS:
            tilings[name] = plan.cell_tiles
        if name == "nptp":  # fused and tail both start from the block DP over these tiles
            prefixes = fused_prefixes(graph, plan.cell_tiles, setting)
        out.append((name, plan, latency(graph, plan, setting)))
    return out


def choose(rows: list[tuple[str, Plan | None, float | str]]) -> Plan | None:
    """auto's pick among candidates' rows: the plan predicted fastest, ties to the simpler scheme (the earlier
    row); None where no candidate can run."""
    ok = [(t, i, plan) for i, (_, plan, t) in enumerate(rows) if plan is not None]
    return min(ok, key=lambda c: (c[0], c[1]))[2] if ok else None


def auto(graph: Graph, ranks: int, speeds: list[float], objective: str, setting: Setting) -> Plan:
    """The candidate choose() picks, recorded as strategy auto."""
    best = choose(candidates(graph, ranks, speeds, objective, setting))
    if best is None:
        build(graph, ranks, "nptp", speeds, objective)  # raises the partition's own explanation
    return replace(best, strategy=f"auto:{best.strategy}")


def segments(graph: Graph, plan: Plan) -> list[tuple[int, int, str]]:
    """The plan as (first layer, end layer, scheme) runs: host-assisted, fused blocks, layer by layer, tail."""
    total = len(layers(spatial(graph)))
    if plan.halp:
        spans = [(0, plan.halp, "host-assisted block (rank 0 computes and sends the seams)")]
        spans += [(plan.halp, total, "halo exchange every layer")] if plan.halp < total else []
        return spans
    out = []
    end = total if plan.tail is None else plan.tail
    switch = end if plan.retile is None else plan.retile[0]
    for a, b in _blocks(plan.fuse, end):
        scheme = f"fused block of {b - a} layers (overlaps recomputed)" if b - a > 1 else "halo exchange every layer"
        if plan.retile is not None:
            scheme += " over the first tiling" if a < switch else \
                " over the second tiling (the map redistributed to it first)"
        if out and scheme == out[-1][2] and b - a == 1:
            out[-1] = (out[-1][0], b, scheme)
        else:
            out.append((a, b, scheme))
    return out + ([(end, total, "tail on rank 0 alone (the map gathered to it first)")] if end < total else [])


def explain(graph: Graph, ranks: int, speeds: list[float], objective: str, setting: Setting) -> list[str]:
    """What `plan --strategy auto` prints: every candidate's predicted latency, then the chosen plan per
    segment with the predicted seconds of its layers."""
    rows = candidates(graph, ranks, speeds, objective, setting)
    best = choose(rows)
    lines = ["auto: predicted latency per scheme (" + describe(setting) + ")"]
    lines += [f"  {name:<7} " + (f"{t:.3f} s" if plan is not None else f"cannot run: {t}") +
              ("   <- chosen" if plan is best else "") for name, plan, t in rows]
    names, of = layers(spatial(graph)), layer_of(graph)
    steps = prediction(graph, best, setting).layers
    tiles = f"{best.strategy} tiles" if best.strategy in TILINGS else "two tilings" if best.retile else "nptp tiles"
    lines.append(f"chosen: {best.strategy} over {tiles}")
    for a, b, scheme in segments(graph, best):
        secs = sum(x.time_s for x in steps if x.name in of and a <= of[x.name] < b)
        lines.append(f"  layers {a}-{b - 1} ({names[a]} .. {names[b - 1]}): {scheme}, {secs:.3f} s predicted")
    head = sum(x.time_s for x in steps if x.name not in of)
    lines.append(f"  scatter, head and what is left in flight: {head:.3f} s predicted")
    return lines


def describe(setting: Setting) -> str:
    """The cost model's boards and links in a line."""
    ln, b = setting.links, setting.boards
    boards = ("boards: per-layer times measured by calibrate --model" if b.s_per_px else
              "boards " + ", ".join(f"{f / 1e9:.1f}" for f in b.flops_per_s) + " GFLOP/s")
    return (f"{'shared' if ln.shared else 'switched'} {ln.bytes_per_s * 8 / 1e6:g} Mbit/s, latency "
            f"{ln.alpha_s * 1e3:g} ms, overlap {'on' if setting.overlap else 'off'}, {boards}")


def halp_latency(graph: Graph, plan: Plan, setting: Setting) -> float:
    """Predicted latency of a host-assisted plan: the layer model plus the host's seams, which it computes
    before its own tile (the other ranks wait for them at the block's end)."""
    pred = predict(graph, plan, setting.boards, setting.links, setting.overlap).latency_s
    return pred + seam_flops(graph, plan) / setting.boards.flops_per_s[0]


def choose_halp(graph: Graph, cell_tiles, speeds: tuple[float, ...], objective: str, setting: Setting,
                longest: int = LONGEST_BLOCK) -> int:
    """The host-assisted block length (a cut of the graph, at most `longest` layers) predicted fastest."""
    options = [k for k in cuts(graph) if k <= longest]
    if not options:
        raise PartitionError(f"halp: {graph.name} has no cut within its first {longest} layers")
    return min(options, key=lambda k: (halp_latency(graph, halp_plan(graph, cell_tiles, speeds, objective, k),
                                                    setting), k))


def tail_plan(graph: Graph, cell_tiles, speeds: tuple[float, ...], objective: str, setting: Setting,
              prefixes: list[tuple[int, ...]] | None = None, longest: int = LONGEST_BLOCK) -> Plan:
    """Halo exchange over cell_tiles, layer by layer or in the fused blocks fused_prefixes picks for the
    layers before the tail (prefixes: its result when already computed), then a tail on rank 0 alone: of
    the cuts within the last `longest` layers, and layer 0 (rank 0 runs everything), the one predicted
    fastest (ties to the shorter tail, then to fewer blocks). Pays where the last maps are small and
    messages costly: the gather replaces their halo exchanges, rank 0 their parallel compute; from layer 0
    where distributing does not pay at all."""
    total = len(layers(spatial(graph)))
    options = [0] + [k for k in cuts(graph) if total - k <= longest]
    prefixes = prefixes or fused_prefixes(graph, cell_tiles, setting, longest)
    plans = [plan_from_cells(graph, cell_tiles, "tail", speeds, objective, fuse, tail=k)
             for k in options for fuse in dict.fromkeys(((), prefixes[k]))]
    return min(plans, key=lambda p: (latency(graph, p, setting), -p.tail, len(p.fuse)))


def mixed_plan(graph: Graph, tilings: dict[str, tuple], speeds: tuple[float, ...], objective: str, setting: Setting,
               tries: int = 3) -> Plan:
    """Halo exchange every layer over one of `tilings` (name -> cell tiles), then from a cut on over another,
    the map redistributed between them at the cut: the pair and cut predicted fastest. A tiling can pay early
    (large maps: fewest bytes) and another late (small maps: fewest messages). Each layer's step is priced
    once per tiling, a redistribution at most as the whole map sent once; the `tries` cuts these prices
    favour per pair are then predicted whole (redistribution and overlap included)."""
    distinct = list(dict.fromkeys(tilings.values()))
    if len(distinct) < 2:
        raise PartitionError("mixed: the tilings coincide, there is nothing to switch between")
    names = layers(spatial(graph))
    move = [FLOAT_BYTES * math.prod(graph.shapes[t]) / setting.links.bytes_per_s for t in names]
    # the scatter, priced into layer 0 by block_times, adds the same to every cut of a pair
    steps = {cells: block_times(graph, plan_from_cells(graph, cells), setting, list(range(len(names))))
             for cells in distinct}
    plans = []
    for a in distinct:
        for b in distinct:
            if a != b:
                ks = sorted(cuts(graph), key=lambda k: sum(steps[a][:k]) + move[k] + sum(steps[b][k:]))[:tries]
                plans += [plan_from_cells(graph, a, "mixed", speeds, objective, retile=(k, b)) for k in ks]
    return min(plans, key=lambda p: latency(graph, p, setting))


CANDIDATES = ("coedge", "grid", "nptp", "fused", "halp", "iop", "tail", "mixed")  # what auto weighs, simplest first
STRATEGIES = (*TILINGS, "fused", "halp", "iop", "tail", "mixed", "auto")
