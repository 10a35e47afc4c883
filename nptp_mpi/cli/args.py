"""Argument parsing for every command; errors raise UsageError so that under mpiexec one rank reports."""

from __future__ import annotations

import argparse
import os
import sys

from nptp_mpi import __version__
from nptp_mpi.errors import UsageError
from nptp_mpi.model.load import parse_size
from nptp_mpi.strategies import STRATEGIES

DESCRIPTION = "One CNN inference across several boards with MPI (run is the default command)."
RUN_TIMEOUT = 300.0  # run's --timeout default; also bounds MPI's start-up when the arguments did not parse
COMMANDS = ("run", "plan", "export", "sample", "warm", "bench", "hostfile", "calibrate")


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing, so that under mpiexec only one rank reports."""

    def error(self, message: str):
        raise UsageError(f"{message} (see: {self.prog} --help)")


def parse_fuse(text: str) -> tuple[int, ...]:
    """--fuse 4,4,3: positive layer counts per fused block."""
    try:
        fuse = tuple(int(k) for k in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give layers per block as integers, e.g. 4,4,3") from None
    if not fuse or min(fuse) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every block needs at least one layer")
    return fuse


def _prog() -> str:
    """How the user started us: the console script or the module."""
    return "nptp-mpi" if os.path.basename(sys.argv[0]) == "nptp-mpi" else "python -m nptp_mpi"


def _size(text: str) -> tuple[int, int]:
    """parse_size as an argparse type (its message kept)."""
    try:
        return parse_size(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive(text: str) -> int:
    """A whole number ≥ 1 (argparse type)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number ≥ 1")
    return n


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="vgg16", help="zoo name (vgg11/13/16/19, resnet18/34/50, mobilenet_v2, "
                   "alexnet) or a .onnx file (default vgg16)")
    p.add_argument("--size", type=_size, default=None, help="input N or HxW (default 224, or the model's)")
    p.add_argument("--weights", help=".npz weights for a zoo model (never unpickled)")


def _partition_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategy", default="auto", choices=STRATEGIES, metavar="STRATEGY",
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
    top = _Parser(prog=_prog(), description=DESCRIPTION)
    top.add_argument("--version", action="version", version=f"nptp-mpi {__version__}")
    sub = top.add_subparsers(dest="command")

    run = sub.add_parser("run", help="distributed inference (under mpiexec; one process works too)")
    _model_args(run)
    _partition_args(run)
    src = run.add_mutually_exclusive_group()
    src.add_argument("--image", help="input picture (any format pillow reads)")
    src.add_argument("--input", help="input tensor .npy, (C,H,W) or (1,C,H,W) float")
    src.add_argument("--images", help="stream: one inference per picture in this folder (bad ones skipped)")
    run.set_defaults(tensor_input=False)
    run.add_argument("--results", help="with --images: JSON lines, one per picture, flushed as each completes")
    run.add_argument("--warmup", type=int, default=1, help="untimed inferences first (default 1)")
    run.add_argument("--repeat", type=int, default=1, help="timed inferences; latency is their median")
    run.add_argument("--verify", action="store_true", help="rank 0 also runs the single-process reference")
    run.add_argument("--allow-nonfinite", action="store_true", help="write an output holding NaN or Inf (else an "
                     "error, exit 2)")
    run.add_argument("--threads", type=_positive, default=1, help="threads per rank for the kernels and their GEMMs "
                     "(default 1; see README: ranks or threads)")
    run.add_argument("--overlap", choices=("on", "off", "auto"), default="auto",
                     help="on: compute each tile's core while its halo travels, then its border strips; off: each "
                     "tile in one piece (less compute); auto (default): whichever the cost model predicts faster")
    run.add_argument("--output", help="write the output tensor (.npy) here")
    run.add_argument("--report", help="write the JSON report here")
    run.add_argument("--timeout", type=float, default=RUN_TIMEOUT,
                     help="seconds any wait on another rank may take before the job aborts naming it (default 300)")
    run.add_argument("--debug", action="store_true", help="full tracebacks")
    _cost_args(run)

    plan = sub.add_parser("plan", help="print a partition plan (no MPI needed)")
    _model_args(plan)
    _partition_args(plan)
    plan.add_argument("--ranks", type=int, required=True)
    plan.add_argument("--json", action="store_true", help="print JSON instead of the table")
    _cost_args(plan)
    plan.add_argument("--overlap", choices=("on", "off", "auto"), default="auto")
    plan.add_argument("--tensor-input", action="store_true", help="plan for a float tensor input (run --input "
                      "x.npy): the scatter moves 4 bytes per value, not an image's 8-bit pixels")
    plan.set_defaults(input=None)

    exp = sub.add_parser("export", help="write a model as ONNX")
    _model_args(exp)
    exp.add_argument("-o", "--output", required=True)

    sample = sub.add_parser("sample", help="write the bundled synthetic sample picture")
    sample.add_argument("-o", "--output", required=True)
    sample.add_argument("--size", type=_size, default=(480, 640))

    sub.add_parser("warm", help="compile every kernel once into the Numba cache")
    sub.add_parser("calibrate", add_help=False, help="measure the boards and links the cost model predicts with "
                   "(under mpiexec; its own options: calibrate --help)")

    hostfile = sub.add_parser("hostfile", help="check a hostfile and print it in a launcher's syntax")
    hostfile.add_argument("path")
    hostfile.add_argument("--launcher", choices=("mpich", "openmpi"), default="mpich")

    bench = sub.add_parser("bench", help="benchmarks: models, kernels, scaling")
    bench = bench.add_subparsers(dest="what", required=True)
    models = bench.add_parser("models", help="one rank vs onnxruntime, whole models, with our time per op kind")
    models.add_argument("--models", default="vgg16,resnet50,mobilenet_v2", help="zoo names or .onnx files")
    models.add_argument("--sizes", default="224,512")
    models.add_argument("--threads", default="1", help="thread counts to compare, e.g. 1,2 (both sides get each)")
    models.add_argument("--rounds", type=_positive, default=5, help="timed inferences of each side, interleaved")
    models.add_argument("--against", metavar="DIR", help="another source tree (an earlier commit checked out: git "
                        "worktree add DIR COMMIT): its engine on the same model, timed in each round too")
    models.add_argument("--nodes", type=int, default=0, metavar="N",
                        help="also list the N convs furthest behind onnxruntime's inside the model (its profiler)")
    models.add_argument("-o", "--output", help="also write the rows as JSON to this file")
    kern = bench.add_parser("kernels", help="our conv kernel vs onnxruntime, one thread, per distinct conv layer")
    kern.add_argument("--models", default="vgg16,resnet50")
    kern.add_argument("--size", type=_size, default=(224, 224))
    kern.add_argument("--repeat", type=int, default=5)
    scal = bench.add_parser("scaling", help="latency vs boards, size and strategy (CSV, JSON, plots)")
    scal.add_argument("--models", default="vgg16,resnet18")
    scal.add_argument("--sizes", default="224,512")
    scal.add_argument("--strategies", default="coedge,grid,nptp")
    scal.add_argument("--ranks", default="1,2,3,4")
    scal.add_argument("--overlap", default="auto", help="run's --overlap: on, off, auto (default) or a list of them "
                      "(on,off: both, to measure the gain)")
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
    study = bench.add_parser("study", help="the scaling study on Pi-class boards of the virtual cluster (root): "
                             "boards, links, schemes, against onnxruntime on one board under the same cap")
    study.add_argument("--models", default="vgg16")
    study.add_argument("--sizes", default="512")
    study.add_argument("--strategies", default="coedge,grid,nptp,fused,halp,iop,auto")
    study.add_argument("--boards", default="1,2,3,4,5,6,7,8")
    study.add_argument("--overlap", default="auto", help="run's --overlap: on, off, auto (default) or a list of them")
    study.add_argument("--cpu", type=float, default=0.25, help="each board's share of a core (default 0.25)")
    study.add_argument("--links", default="switched:100mbit,shared:100mbit,shared:20mbit",
                       help="settings, each switched:RATE or shared:RATE")
    study.add_argument("--warmup", type=int, default=1)
    study.add_argument("--repeat", type=_positive, default=3)
    study.add_argument("--rounds", type=_positive, default=1)
    study.add_argument("--timeout", type=float, default=3600, help="seconds one case may take")
    study.add_argument("--calibrate", action="store_true", help="calibrate the boards and links of each setting "
                       "(with the first model's layers), plan every run for it and predict every case")
    study.add_argument("-o", "--output", default="results/study", help="folder for CSV, JSON and PNG")
    return top


def parse_args(argv: list[str]) -> argparse.Namespace:
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        raise UsageError(f"unknown command {argv[0]!r}: use one of {', '.join(COMMANDS)} "
                         f"(see: {_prog()} --help)")
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version")):
        argv = ["run", *argv]
    args = build_parser().parse_args(argv)
    if not 0 < getattr(args, "timeout", 1) < float("inf"):  # (nan fails this too)
        raise UsageError("--timeout must be a finite number of seconds > 0")
    for flag in ("warmup", "repeat", "ranks") if args.command in ("run", "plan") else ():
        if getattr(args, flag, 1) is not None and getattr(args, flag, 1) < (0 if flag == "warmup" else 1):
            raise UsageError(f"--{flag} must be {'≥ 0' if flag == 'warmup' else '≥ 1'}")
    return args
