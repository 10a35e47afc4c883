"""`plan`: print (or draw) the plan a run would execute, and what the cost model predicts; the helpers
that turn arguments into the cost model's setting and a plan, shared with `run`."""

from __future__ import annotations

import argparse
import json

from nptp_mpi.errors import UsageError
from nptp_mpi.io.outputs import check_writable
from nptp_mpi.model.graph import Graph
from nptp_mpi.model.load import load_model


def cmd_plan(args: argparse.Namespace) -> None:
    from nptp_mpi.cli.show import draw_tiles, format_plan, human
    from nptp_mpi.plan.plan import weight_bytes
    from nptp_mpi.plan.tiling import parse_speeds

    graph = load_model(args.model, args.size, args.weights)
    speeds = parse_speeds(args.speeds, args.ranks) if args.speeds else None
    setting = setting_for(args, graph, args.ranks, speeds)
    plan = plan_for(args, graph, args.ranks, speeds, setting)
    predictions = _predict(args, graph, speeds, setting) if args.bandwidth or args.calibration else None
    overlap = "on" if overlap_for(args, graph, plan, setting) else "off"
    if args.json:
        print(json.dumps({**plan.to_json(), "weight_bytes": weight_bytes(graph, plan), "overlap": overlap,
                          **({"predicted": predictions} if predictions else {})}, indent=1))
    else:
        print(format_plan(plan, weights=weight_bytes(graph, plan)))
        print(f"overlap: {overlap}" + (" (auto: predicted faster)" if args.overlap == "auto" else ""))
        if args.strategy == "auto":
            from nptp_mpi.strategies.auto import explain

            print("\n" + "\n".join(explain(graph, args.ranks, speeds or [1.0] * args.ranks, args.objective,
                                            setting)))
        if predictions and args.strategy != "auto":  # auto printed them already
            print("\npredicted latency (cost model: " + predictions["model"] + ")")
            for row in predictions["strategies"]:
                what = (f"{row['latency_s']:.3f} s  (compute {row['compute_s']:.3f} s, communication "
                        f"{row['comm_s']:.3f} s, halo {human(row['halo_bytes'])})" if "latency_s" in row
                        else f"cannot run: {row['error']}")
                print(f"  {row['strategy']:<8} {what}")
    if args.png:
        check_writable(args.png, "--png")
        draw_tiles(plan, args.png)


def link_model(args: argparse.Namespace, cal):
    """The links to predict for: --bandwidth/--latency/--shared where given, else the calibration's."""
    from nptp_mpi.plan.cost import links_given

    links = links_given(args.bandwidth, args.latency, args.shared, cal.links if cal else None)  # one rank: no links
    if links is None:
        raise UsageError("a prediction needs --bandwidth, or --calibration with links (calibrated on 2+ ranks)")
    return links


def setting_for(args: argparse.Namespace, graph: Graph, ranks: int, speeds: list[float] | None):
    """What fused and auto plan for: the calibration's boards or nominal ones scaled by --speeds, and
    --bandwidth/--latency/--shared, the calibration's links, or the nominal link. Deterministic, so every
    rank of a job (and `plan`) makes the same choice."""
    from nptp_mpi.plan.calibration import load_calibration
    from nptp_mpi.plan.cost import NOMINAL_LINKS, Setting, links_given

    cal = load_calibration(args.calibration) if args.calibration else None
    nominal = Setting.nominal(speeds or [1.0] * ranks)
    boards = cal.to_boards(ranks, graph.name) if cal else nominal.boards
    links = links_given(args.bandwidth, args.latency, args.shared, cal.links if cal else None) or NOMINAL_LINKS
    return Setting(boards, links, args.overlap != "off", given=bool(cal or args.bandwidth))


def pixel_input(args: argparse.Namespace, graph: Graph) -> bool:
    """Whether the job's input is an image (run's --image, --images or sample picture; not --input x.npy or
    plan --tensor-input) for a 3-channel model: then its 8-bit pixels are scattered (plan.with_pixel_input)."""
    return graph.input_shape[0] == 3 and not (args.input or args.tensor_input)


def _as_run(args: argparse.Namespace, graph: Graph, plan):
    """plan as the job runs it: for an image input, scattering its pixels."""
    from nptp_mpi.plan.plan import with_pixel_input

    return with_pixel_input(plan) if pixel_input(args, graph) else plan


def plan_for(args: argparse.Namespace, graph: Graph, ranks: int, speeds: list[float] | None, setting):
    """The plan `run` executes and `plan` prints for these arguments and their setting (setting_for)."""
    from nptp_mpi.strategies import build

    return _as_run(args, graph, build(graph, ranks, args.strategy, speeds, args.objective, setting, args.fuse,
                                      args.partition))


def overlap_for(args: argparse.Namespace, graph: Graph, plan, setting) -> bool:
    """Whether the engine overlaps halos with compute for plan: --overlap on/off, or with auto what the cost
    model predicts faster on the setting (deterministic, like the plan)."""
    from nptp_mpi.plan.cost import overlap_pays

    if args.overlap != "auto":
        return args.overlap == "on"
    return overlap_pays(graph, plan, setting)


def _predict(args: argparse.Namespace, graph: Graph, speeds: list[float] | None, setting) -> dict:
    """Every scheme's predicted latency for the boards and links, each plan as the job would run it."""
    from nptp_mpi.plan.cost import describe, prediction
    from nptp_mpi.strategies.auto import candidates

    rows = []
    for strategy, plan, t in candidates(graph, args.ranks, speeds or [1.0] * args.ranks, args.objective, setting):
        if plan is None:
            rows.append({"strategy": strategy, "error": t})
            continue
        pred = prediction(graph, _as_run(args, graph, plan), setting)
        rows.append({"strategy": strategy, "latency_s": pred.latency_s, "compute_s": pred.compute_s,
                     "comm_s": pred.latency_s - pred.compute_s, "halo_bytes": plan.halo_bytes})
    return {"model": describe(setting), "strategies": rows}
