"""Command line: `python -m nptp_mpi [run|plan|export|sample|warm|bench] …` (run is the default).

Failure rules: errors every rank meets identically (arguments, model, plan) are printed once by rank 0
and every rank exits 2; an error on one rank prints one line naming rank, host and cause and aborts the
whole job at once, so no rank is left waiting in a collective.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

from . import __version__
from .graph import Graph, ModelError

COMMANDS = ("run", "plan", "export", "sample", "warm", "bench", "hostfile", "calibrate")


class UsageError(ValueError):
    """Bad arguments (exit code 2)."""


class JobError(Exception):
    """An error that every rank has met identically: rank 0 reports it, all exit with code."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing, so that under mpiexec only one rank reports."""

    def error(self, message: str):
        raise UsageError(f"{message} (see: python -m nptp_mpi {self.prog.split()[-1]} --help)")


def launcher_rank() -> int:
    """This process's rank as the MPI launcher says, read before MPI starts (0 outside mpiexec)."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def parse_size(text: str) -> tuple[int, int]:
    """'512' → (512, 512); '480x640' → (480, 640) (height × width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise UsageError(f"bad --size {text!r}: use N or HxW, e.g. 512 or 480x640")
    return parts[0], parts[1]


def parse_fuse(text: str) -> tuple[int, ...]:
    """--fuse 4,4,3: positive layer counts per fused block."""
    try:
        fuse = tuple(int(k) for k in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give layers per block as integers, e.g. 4,4,3") from None
    if not fuse or min(fuse) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every block needs at least one layer")
    return fuse


def load_model(spec: str, size: tuple[int, int] | None, weights: str | None) -> Graph:
    """A zoo model by name or an ONNX file, optionally with weights from an .npz file."""
    from . import zoo

    if spec in zoo.MODELS:
        graph = zoo.build(spec, size or (224, 224))
    elif spec.endswith(".onnx"):
        from .onnx_io import load_onnx

        if not Path(spec).is_file():
            raise ModelError(f"model file {spec!r} not found")
        graph = load_onnx(spec, size=size)
    else:
        raise UsageError(f"unknown model {spec!r}: use one of {', '.join(zoo.MODELS)} or a .onnx file")
    if weights:
        from .weights import load_npz

        graph = load_npz(graph, weights)
    return graph


def describe(graph: Graph, spec: str, weights: str | None) -> str:
    c, h, w = graph.input_shape
    origin = "seeded random weights" if not (weights or spec.endswith(".onnx")) else "weights from file"
    return f"{graph.name} ({origin}), input {c}x{h}x{w}"


def atomic_write_text(path: str, text: str) -> None:
    """Write text to path via a temp file in the same folder and a rename: never a half-written file."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from None


def check_writable(path: str | None, flag: str) -> None:
    """Refuse before any work if an output path cannot be written."""
    if path is None:
        return
    parent = Path(path).resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(f"{flag} {path}: folder {parent} does not exist or is not writable")


# -- argument parsing --------------------------------------------------------------------------------

def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="vgg16", help="zoo name (vgg11/13/16/19, resnet18/34/50, mobilenet_v2, "
                   "alexnet) or a .onnx file (default vgg16)")
    p.add_argument("--size", type=parse_size, default=None, help="input N or HxW (default 224, or the model's)")
    p.add_argument("--weights", help=".npz weights for a zoo model (never unpickled)")


def _partition_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategy", default="auto",
                   help="auto (default: the scheme the cost model predicts fastest, see `plan --strategy auto`) | "
                   "coedge | grid | nptp | fused (DeepThings' fused blocks over --partition, --fuse) | halp (rank 0 "
                   "computes the seams of a first block) | iop | tail (the last layers on rank 0 alone) | mixed (one "
                   "tiling, then another from a cut on) | d3 (nptp, re-cut at run time from measured compute times)")
    p.add_argument("--speeds", help="relative board speeds, e.g. 1,1,2,0.5 (default equal)" )
    p.add_argument("--objective", default="total", choices=("total", "max"),
                   help="minimise total halo bytes (shared medium) or the largest per-board bytes (switched)")
    p.add_argument("--png", help="draw the partition over the input image into this PNG")
    p.add_argument("--fuse", type=parse_fuse, default=None,
                   help="fused: layers per block, e.g. 4,4,3 (the rest one per block; default: the cost model's pick)")
    p.add_argument("--partition", default="nptp", help="the tiling fused blocks run over: coedge | grid | nptp")


def _cost_args(p: argparse.ArgumentParser) -> None:
    """The cost model's boards and links (plan predicts with them; fused/auto choose by them)."""
    p.add_argument("--bandwidth", help="link rate (e.g. 100mbit): predict each strategy's latency; NPTP then "
                   "picks its layout by predicted latency instead of bytes")
    p.add_argument("--latency", help="per-message link latency, e.g. 1ms (default: calibrated, else 0)")
    p.add_argument("--calibration", help="cal.json from `mpiexec … python -m nptp_mpi calibrate -o cal.json`")
    p.add_argument("--shared", action="store_true", help="the links are one shared medium (Wi-Fi)")


def build_parser() -> argparse.ArgumentParser:
    top = _Parser(prog="python -m nptp_mpi", description=__doc__.splitlines()[0])
    top.add_argument("--version", action="version", version=f"nptp-mpi {__version__}")
    sub = top.add_subparsers(dest="command")

    run = sub.add_parser("run", help="distributed inference (under mpiexec; one process works too)")
    _model_args(run)
    _partition_args(run)
    src = run.add_mutually_exclusive_group()
    src.add_argument("--image", help="input picture (any format pillow reads)")
    src.add_argument("--input", help="input tensor .npy, (C,H,W) or (1,C,H,W) float")
    src.add_argument("--images", help="stream: one inference per picture in this folder (bad ones skipped)")
    run.add_argument("--results", help="with --images: JSON lines, one per picture, flushed as each completes")
    run.add_argument("--warmup", type=int, default=1, help="untimed inferences first (default 1)")
    run.add_argument("--repeat", type=int, default=1, help="timed inferences; latency is their median")
    run.add_argument("--verify", action="store_true", help="rank 0 also runs the single-process reference")
    run.add_argument("--overlap", choices=("on", "off"), default="on",
                     help="compute each tile's core while its halo travels (default on; same output bit for bit)")
    run.add_argument("--output", help="write the output tensor (.npy) here")
    run.add_argument("--report", help="write the JSON report here")
    run.add_argument("--timeout", type=float, default=300.0,
                     help="seconds any wait on another rank may take before the job aborts naming it (default 300)")
    run.add_argument("--debug", action="store_true", help="full tracebacks")
    _cost_args(run)

    plan = sub.add_parser("plan", help="print a partition plan (no MPI needed)")
    _model_args(plan)
    _partition_args(plan)
    plan.add_argument("--ranks", type=int, required=True)
    plan.add_argument("--json", action="store_true", help="print JSON instead of the table")
    _cost_args(plan)
    plan.add_argument("--overlap", choices=("on", "off"), default="on")

    exp = sub.add_parser("export", help="write a model as ONNX")
    _model_args(exp)
    exp.add_argument("-o", "--output", required=True)

    sample = sub.add_parser("sample", help="write the bundled synthetic sample picture")
    sample.add_argument("-o", "--output", required=True)
    sample.add_argument("--size", type=parse_size, default=(480, 640))

    sub.add_parser("warm", help="compile every kernel once into the Numba cache")

    hostfile = sub.add_parser("hostfile", help="check a hostfile and print it in a launcher's syntax")
    hostfile.add_argument("path")
    hostfile.add_argument("--launcher", choices=("mpich", "openmpi"), default="mpich")

    bench = sub.add_parser("bench", help="benchmarks: kernels, scaling").add_subparsers(dest="what", required=True)
    kern = bench.add_parser("kernels", help="our conv kernel vs onnxruntime, one thread, per distinct conv layer")
    kern.add_argument("--models", default="vgg16,resnet50")
    kern.add_argument("--size", type=parse_size, default=(224, 224))
    kern.add_argument("--repeat", type=int, default=5)
    scal = bench.add_parser("scaling", help="latency vs boards, size and strategy (CSV, JSON, plots)")
    scal.add_argument("--models", default="vgg16,resnet18")
    scal.add_argument("--sizes", default="224,512")
    scal.add_argument("--strategies", default="coedge,grid,nptp")
    scal.add_argument("--ranks", default="1,2,3,4")
    scal.add_argument("--overlap", default="on", help="on, off or on,off (both, to measure the gain)")
    scal.add_argument("--warmup", type=int, default=1)
    scal.add_argument("--repeat", type=int, default=3)
    scal.add_argument("--rounds", type=int, default=1, help="jobs per case, all cases once per round; the latency is "
                      "the median of all their inferences (evens out a shared machine's drift)")
    scal.add_argument("--timeout", type=float, default=1800, help="seconds one case may take")
    scal.add_argument("--launcher", default=None,
                      help="command that runs `python -m nptp_mpi ARGS` on {n} ranks; default: mpiexec -n {n} "
                      "… (add -f hostfile for boards; './run.sh cluster run -n {n} --' for the virtual cluster)")
    scal.add_argument("-o", "--output", default="results/scaling", help="folder for CSV, JSON and PNG")
    scal.add_argument("--calibration", help="cal.json: every run plans for it (as run --calibration), and each "
                      "case's latency is also predicted")
    scal.add_argument("--bandwidth", help="link rate the runs plan for and the prediction uses (default: calibrated)")
    scal.add_argument("--latency", help="per-message link latency, the same way (default: calibrated)")
    scal.add_argument("--shared", action="store_true", help="plan and predict for one shared medium")
    return top


def parse_args(argv: list[str]) -> argparse.Namespace:
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version")):
        argv = ["run", *argv]
    args = build_parser().parse_args(argv)
    if getattr(args, "timeout", 1) <= 0:
        raise UsageError("--timeout must be > 0 seconds")
    for flag in ("warmup", "repeat", "ranks") if args.command in ("run", "plan") else ():
        if getattr(args, flag, 1) is not None and getattr(args, flag, 1) < (0 if flag == "warmup" else 1):
            raise UsageError(f"--{flag} must be {'≥ 0' if flag == 'warmup' else '≥ 1'}")
    return args


# -- commands without MPI ----------------------------------------------------------------------------

def cmd_plan(args: argparse.Namespace) -> None:
    from .partition import parse_speeds
    from .plan import draw_tiles, format_plan, human, weight_bytes

    graph = load_model(args.model, args.size, args.weights)
    speeds = parse_speeds(args.speeds, args.ranks) if args.speeds else None
    if args.bandwidth or args.calibration:
        plan, predictions = _predict(args, graph, speeds)
    else:
        plan, predictions = plan_for(args, graph, args.ranks, speeds), None
    if args.json:
        print(json.dumps({**plan.to_json(), "weight_bytes": weight_bytes(graph, plan),
                          **({"predicted": predictions} if predictions else {})}, indent=1))
    else:
        print(format_plan(plan, weights=weight_bytes(graph, plan)))
        if args.strategy == "auto":
            from .planner import explain

            print("\n" + "\n".join(explain(graph, args.ranks, speeds or [1.0] * args.ranks, args.objective,
                                            setting_for(args, graph, args.ranks, speeds))))
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
    from .cost import Links, parse_rate, parse_time

    measured = cal.links if cal else None  # None also for a calibration made on one rank
    if not (args.bandwidth or measured):
        raise UsageError("a prediction needs --bandwidth, or --calibration with links (calibrated on 2+ ranks)")
    return Links(parse_time(args.latency) if args.latency else (measured.alpha_s if measured else 0.0),
                 parse_rate(args.bandwidth) if args.bandwidth else measured.bytes_per_s,
                 args.shared or bool(measured and measured.shared), measured.overlap if measured else ())


def setting_for(args: argparse.Namespace, graph: Graph, ranks: int, speeds: list[float] | None):
    """What fused and auto plan for: the calibration's boards or nominal ones scaled by --speeds, and
    --bandwidth/--latency/--shared, the calibration's links, or the nominal link. Deterministic, so every
    rank of a job (and `plan`) makes the same choice."""
    from .cost import load_calibration
    from .planner import NOMINAL_LINKS, Setting

    cal = load_calibration(args.calibration) if args.calibration else None
    nominal = Setting.nominal(speeds or [1.0] * ranks, args.overlap == "on")
    boards = cal.to_boards(ranks, graph.name) if cal else nominal.boards
    links = link_model(args, cal) if (args.bandwidth or (cal and cal.links)) else NOMINAL_LINKS
    return Setting(boards, links, args.overlap == "on", given=bool(cal or args.bandwidth))


def plan_for(args: argparse.Namespace, graph: Graph, ranks: int, speeds: list[float] | None):
    """The plan `run` executes and `plan` prints for these arguments."""
    from .planner import build

    return build(graph, ranks, args.strategy, speeds, args.objective, setting_for(args, graph, ranks, speeds),
                 args.fuse, args.partition)


def _predict(args: argparse.Namespace, graph: Graph, speeds: list[float] | None):
    """The plan these arguments run, and every scheme's predicted latency for the boards and links."""
    from .planner import candidates, describe, prediction

    setting = setting_for(args, graph, args.ranks, speeds)
    rows = []
    for strategy, plan, t in candidates(graph, args.ranks, speeds or [1.0] * args.ranks, args.objective, setting):
        if plan is None:
            rows.append({"strategy": strategy, "error": t})
            continue
        pred = prediction(graph, plan, setting)
        rows.append({"strategy": strategy, "latency_s": t, "compute_s": pred.compute_s, "comm_s": t - pred.compute_s,
                     "halo_bytes": plan.halo_bytes})
    return plan_for(args, graph, args.ranks, speeds), {"model": describe(setting), "strategies": rows}


def cmd_export(args: argparse.Namespace) -> None:
    from .onnx_io import save_onnx

    check_writable(args.output, "-o")
    graph = load_model(args.model, args.size, args.weights)
    save_onnx(graph, args.output)
    print(f"wrote {args.output}: {describe(graph, args.model, args.weights)}")


def cmd_sample(args: argparse.Namespace) -> None:
    from .inputs import write_sample

    check_writable(args.output, "-o")
    write_sample(args.output, args.size)
    print(f"wrote {args.output}")


def cmd_warm(args: argparse.Namespace) -> None:
    from .warm import warm

    t0 = time.perf_counter()
    warm()
    print(f"kernels compiled and cached in {time.perf_counter() - t0:.1f} s")


def cmd_hostfile(args: argparse.Namespace) -> None:
    from .hostfile import parse, render

    print(render(parse(args.path), args.launcher), end="")


def cmd_bench(args: argparse.Namespace) -> None:
    if args.what == "kernels":
        from .bench import bench_convs, conv_layers, format_table

        layers = [layer for m in args.models.split(",") for layer in conv_layers(load_model(m, args.size, None))]
        print(format_table(bench_convs(layers, repeat=args.repeat)))
        return
    from .scaling import auto_vs_best, bench_scaling, default_launcher, format_rows

    items = {k: [v for v in getattr(args, k).split(",") if v] for k in ("models", "sizes", "strategies", "ranks")}
    for size in items["sizes"]:
        parse_size(size)
    try:
        ranks = [int(n) for n in items["ranks"]]
    except ValueError:
        raise UsageError(f"--ranks {args.ranks!r}: use numbers like 1,2,3,4") from None
    overlaps = args.overlap.split(",")
    if not set(overlaps) <= {"on", "off"} or min(ranks, default=0) < 1 or args.rounds < 1:
        raise UsageError("--overlap takes on, off or on,off; --ranks and --rounds positive numbers")
    model, plan_args = None, []  # each run plans for the same calibration and links as the prediction
    if args.calibration:
        from .cost import load_calibration

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


# -- the distributed run -----------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["calibrate"]:  # its own parser and MPI job: python -m nptp_mpi.calibrate
        from .calibrate import main as calibrate

        return calibrate(argv[1:])
    try:
        args = parse_args(argv)
    except UsageError as e:
        if launcher_rank() == 0:
            print(f"nptp-mpi: error: {e}", file=sys.stderr)
        return 2
    if args.command != "run":
        try:
            {"plan": cmd_plan, "export": cmd_export, "sample": cmd_sample, "warm": cmd_warm,
             "bench": cmd_bench, "hostfile": cmd_hostfile}[args.command](args)
        except (ValueError, OSError) as e:  # ModelError, InputError, PartitionError, UsageError are ValueErrors
            print(f"nptp-mpi: error: {e}", file=sys.stderr)
            return 2
        return 0
    from .run import run_job

    return run_job(args)


def report_failure(world, exc: BaseException, debug: bool) -> int:
    """One line naming rank, host and cause (the traceback with --debug); the exit code to use."""
    user = isinstance(exc, (ValueError, OSError))
    kind = "" if user else f"{type(exc).__name__}: "
    text = f"nptp-mpi: error on rank {world.rank} (host {world.host}): {kind}{exc}\n"
    if debug:
        text += "".join(traceback.format_exception(exc))
    sys.stderr.write(text)  # one write: the launcher forwards it whole before tearing the job down
    return 2 if user else 1
