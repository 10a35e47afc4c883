"""`bench`: models and kernels against onnxruntime, and latency against boards, sizes and schemes (tools/)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from nptp_mpi.errors import UsageError
from nptp_mpi.io.outputs import atomic_write_text
from nptp_mpi.model.load import load_model, parse_size


def cmd_bench(args: argparse.Namespace) -> None:
    if args.what == "models":
        from nptp_mpi.tools.bench import bench_models, blas_info, format_models, format_nodes

        try:
            threads = [int(t) for t in args.threads.split(",") if t]
        except ValueError:
            threads = []
        if not threads or min(threads) < 1:
            raise UsageError(f"--threads {args.threads!r}: use counts like 1 or 1,2")
        if args.nodes < 0:
            raise UsageError(f"--nodes {args.nodes}: a count of convs to list, 0 for none")
        sizes = [parse_size(s) for s in args.sizes.split(",") if s]
        graphs = [(m, load_model(m, size, None)) for m in args.models.split(",") if m for size in sizes]
        print(blas_info(), flush=True)
        rows = bench_models(graphs, threads, args.rounds, lambda line: print(line, flush=True), args.against,
                            args.nodes)
        print(format_models(rows))
        if args.nodes:
            print("\n" + format_nodes(rows))
        if args.output:
            atomic_write_text(args.output, json.dumps(rows, indent=1) + "\n")
        return
    if args.what == "kernels":
        from nptp_mpi.tools.bench import bench_convs, conv_layers, format_table

        layers = [layer for m in args.models.split(",") for layer in conv_layers(load_model(m, args.size, None))]
        print(format_table(bench_convs(layers, repeat=args.repeat)))
        return
    if args.what == "study":
        cmd_study(args)
        return
    from nptp_mpi.cli.plan import link_model
    from nptp_mpi.tools.scaling import auto_vs_best, bench_scaling, default_launcher, format_rows

    items = _lists(args, ("models", "sizes", "strategies"))
    ranks = _counts(args.ranks, "--ranks")
    overlaps = _overlaps(args.overlap)
    if min(ranks, default=0) < 1 or args.rounds < 1:
        raise UsageError("--ranks and --rounds take positive numbers")
    model, plan_args = None, []  # each run plans for the same calibration and links as the prediction
    if args.calibration:
        from nptp_mpi.plan.calibration import load_calibration

        cal = load_calibration(args.calibration)
        model = (cal, link_model(args, cal))
        plan_args = ["--calibration", os.path.abspath(args.calibration)]
    plan_args += [*(["--bandwidth", args.bandwidth] if args.bandwidth else []),
                  *(["--latency", args.latency] if args.latency else []), *(["--shared"] if args.shared else [])]
    rows = bench_scaling(items["models"], items["sizes"], items["strategies"], ranks, overlaps,
                         args.launcher or default_launcher(), args.warmup, args.repeat, args.timeout,
                         Path(args.output), model, plan_args, args.rounds)
    print("\n".join([format_rows(rows), *auto_vs_best(rows)]))
    print(f"wrote {args.output}/scaling.csv, scaling.json, scaling.png")


def _overlaps(text: str) -> list[str]:
    """--overlap of bench scaling and study: a comma-separated list of run's modes."""
    overlaps = text.split(",")
    if not overlaps or not set(overlaps) <= {"on", "off", "auto"}:
        raise UsageError("--overlap takes on, off, auto or a list of them (on,off: both, to measure the gain)")
    return overlaps


def cmd_study(args: argparse.Namespace) -> None:
    from nptp_mpi.tools.study import bench_study, format_study, parse_links

    items = _lists(args, ("models", "sizes", "strategies"))
    boards = sorted(set(_counts(args.boards, "--boards")))
    if not boards or boards[0] < 1 or not 0 < args.cpu <= 64:
        raise UsageError("--boards takes positive numbers; --cpu a share of a core > 0")
    rows = bench_study(items["models"], items["sizes"], items["strategies"], boards, args.cpu, parse_links(args.links),
                       _overlaps(args.overlap), args.warmup, args.repeat, args.rounds, args.timeout, Path(args.output),
                       args.calibrate, lambda line: print(line, file=sys.stderr, flush=True))
    print(format_study(rows))
    print(f"wrote {args.output}/study.csv, study.json, study.png (and per setting: scaling.*)")


def _lists(args: argparse.Namespace, keys: tuple[str, ...]) -> dict[str, list[str]]:
    """The comma-separated arguments keys as lists (sizes checked)."""
    items = {k: [v for v in getattr(args, k).split(",") if v] for k in keys}
    for size in items.get("sizes", ()):
        parse_size(size)
    return items


def _counts(text: str, flag: str) -> list[int]:
    """1,2,4 as numbers; UsageError otherwise."""
    try:
        return [int(n) for n in text.split(",") if n]
    except ValueError:
        raise UsageError(f"{flag} {text!r}: use numbers like 1,2,3,4") from None
