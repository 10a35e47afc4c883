"""Commands that write or check a file: export (a model as ONNX), sample (the demo picture), warm (the
Numba cache), hostfile (a hostfile in a launcher's syntax)."""

from __future__ import annotations

import argparse
import sys
import time

from nptp_mpi.io.outputs import check_writable
from nptp_mpi.model.load import describe, load_model


def cmd_export(args: argparse.Namespace) -> None:
    from nptp_mpi.model.onnx_io import save_onnx

    check_writable(args.output, "-o")
    graph = load_model(args.model, args.size, args.weights)
    save_onnx(graph, args.output)
    print(f"wrote {args.output}: {describe(graph, args.model, args.weights)}")


def cmd_sample(args: argparse.Namespace) -> None:
    from nptp_mpi.io.inputs import write_sample

    check_writable(args.output, "-o")
    write_sample(args.output, args.size)
    print(f"wrote {args.output}")


def cmd_warm(args: argparse.Namespace) -> None:
    from nptp_mpi.runtime.warm import warm

    t0 = time.perf_counter()
    warm()
    print(f"kernels compiled and cached in {time.perf_counter() - t0:.1f} s")


def cmd_hostfile(args: argparse.Namespace) -> None:
    from nptp_mpi.io.hostfile import dropped, parse, render

    hosts = parse(args.path)
    if lost := dropped(hosts, args.launcher):
        print(f"nptp-mpi: note: {lost}", file=sys.stderr)
    print(render(hosts, args.launcher), end="")
