"""auto: every scheme built for the same boards and links, and the one the cost model predicts fastest
(ties to the simpler scheme); `plan --strategy auto` explains the choice per segment of the network."""

from __future__ import annotations

from dataclasses import replace

from nptp_mpi.errors import PartitionError
from nptp_mpi.model.graph import Graph
from nptp_mpi.plan.cost import Setting, describe, latency, prediction
from nptp_mpi.plan.geometry import layers, spatial
from nptp_mpi.plan.plan import Plan, make_plan
from nptp_mpi.plan.tiling import STRATEGIES as TILINGS
from nptp_mpi.strategies.fused import blocks, fused, fused_prefixes, layer_of
from nptp_mpi.strategies.halp import halp
from nptp_mpi.strategies.iop import iop
from nptp_mpi.strategies.mixed import mixed, mixed_plan
from nptp_mpi.strategies.options import Options
from nptp_mpi.strategies.tail import tail
from nptp_mpi.strategies.tiles import tiles

# what auto weighs, simplest first (fused, halp, tail and iop over the nptp tiling)
CANDIDATES = {"coedge": tiles, "grid": tiles, "nptp": tiles, "fused": fused, "halp": halp, "iop": iop, "tail": tail,
              "mixed": mixed}


def candidates(graph: Graph, ranks: int, speeds: list[float], objective: str, setting: Setting,
               ) -> list[tuple[str, Plan | None, float | str]]:
    """(strategy, plan, predicted seconds) of every scheme auto weighs; (strategy, None, why) where one
    cannot run. Fused and host-assisted blocks and IOP's splits go over the nptp tiling. Tilings are picked by
    the cost model too (setting.given): auto compares predictions, so every candidate minimises its own."""
    setting, out, tilings, prefixes = replace(setting, given=True), [], {}, None
    for name, scheme in CANDIDATES.items():
        options = Options(tiling=name if name in TILINGS else "nptp", cells=tilings.get("nptp"), prefixes=prefixes)
        try:
            plan = mixed_plan(graph, tilings, tuple(speeds), objective, setting) if name == "mixed" else \
                scheme(graph, ranks, speeds, objective, setting, options)
        except PartitionError as e:
            out.append((name, None, str(e)))
            continue
        if name in TILINGS and plan.grid is None:  # (tiles of an earlier map are cells of another size)
            tilings[name] = plan.cell_tiles
        if name == "nptp" and plan.grid is None:  # fused and tail both start from the block DP over these tiles
            prefixes = fused_prefixes(graph, plan.cell_tiles, setting)
        out.append((name, plan, latency(graph, plan, setting)))
    return out


def choose(rows: list[tuple[str, Plan | None, float | str]]) -> Plan | None:
    """auto's pick among candidates' rows: the plan predicted fastest, ties to the simpler scheme (the earlier
    row); None where no candidate can run."""
    ok = [(t, i, plan) for i, (_, plan, t) in enumerate(rows) if plan is not None]
    return min(ok, key=lambda c: (c[0], c[1]))[2] if ok else None


def auto(graph: Graph, ranks: int, speeds: list[float], objective: str, setting: Setting,
         options: Options = Options()) -> Plan:
    """The candidate choose() picks, recorded as strategy auto."""
    if options.fuse:
        raise PartitionError("--fuse fixes the blocks of fused or halp; auto chooses its own")
    best = choose(candidates(graph, ranks, speeds, objective, setting))
    if best is None:
        make_plan(graph, ranks, "nptp", speeds, objective)  # raises the partition's own explanation
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
    for a, b in blocks(plan.fuse, end):
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

