"""Command line: `python -m nptp_mpi [run|plan|export|sample|warm|bench|hostfile|calibrate] …` (run is the
default); one module per command in this package.

Failure rules: errors every rank meets identically (arguments, model, plan) are printed once by rank 0
and every rank exits 2; an error on one rank prints one line naming rank, host and cause and aborts the
whole job at once, so no rank is left waiting in a collective.
"""

from __future__ import annotations

import contextlib
import os
import sys

from nptp_mpi.cli.args import COMMANDS, RUN_TIMEOUT, parse_args
from nptp_mpi.cli.early import bounded_mpi_start, launcher_rank, timeout_asked
from nptp_mpi.errors import EXIT_USER, UsageError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["calibrate"]:  # its own parser and MPI job: python -m nptp_mpi.tools.calibrate
        from nptp_mpi.tools.calibrate import main as calibrate

        return calibrate(argv[1:])
    is_run = not argv or argv[0] == "run" or argv[0] not in COMMANDS and argv[0].startswith("-")
    try:
        args = parse_args(argv)
    except UsageError as e:
        if is_run and launcher_rank() is not None:  # the others are in `run`: tell them in its agreement
            return _refuse_in_agreement(str(e), argv)
        if launcher_rank() in (None, 0):
            print(f"nptp-mpi: error: {e}", file=sys.stderr, flush=True)
        _settle()
        return EXIT_USER
    if args.command != "run":
        try:
            command(args.command)(args)
        except (ValueError, OSError) as e:  # ModelError, InputError, PartitionError, UsageError are ValueErrors
            print(f"nptp-mpi: error: {e}", file=sys.stderr)
            return EXIT_USER
        return 0
    with bounded_mpi_start(args.timeout if launcher_rank() is not None else None):
        from nptp_mpi.cli.run import run_job  # starts MPI

    return run_job(args)


def _refuse_in_agreement(message: str, argv: list[str]) -> int:
    """A `run` rank whose arguments do not parse still takes part in the start-up agreement, so that every
    rank learns why and all end alike (an MPMD launch may give one rank arguments the others lack)."""
    timeout = timeout_asked(argv, RUN_TIMEOUT)
    with bounded_mpi_start(timeout):
        from nptp_mpi.cli.run import refuse_in_agreement  # starts MPI

    return refuse_in_agreement(message, timeout)


def _settle() -> None:
    """Under a launcher, wait (10 s at most) until every rank has met the same usage error, so that rank 0's line
    is out before any rank exits: Open MPI ends the whole job at the first non-zero exit, cutting it off."""
    if any(os.environ.get(v, "1") not in ("", "1") for v in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")):
        from nptp_mpi.runtime.exchange import World

        with contextlib.suppress(Exception):  # (a rank that never started: give up after the timeout)
            World(timeout=10).barrier()


def command(name: str):
    """The function of a command other than run (imported when used: `plan` never loads MPI)."""
    if name == "plan":
        from nptp_mpi.cli.plan import cmd_plan

        return cmd_plan
    if name == "bench":
        from nptp_mpi.cli.bench import cmd_bench

        return cmd_bench
    from nptp_mpi.cli import files

    return {"export": files.cmd_export, "sample": files.cmd_sample, "warm": files.cmd_warm,
            "hostfile": files.cmd_hostfile}[name]
