"""What must happen before numpy, Numba and MPI load: reading a flag from the raw arguments, sizing the math
libraries' thread pools, and bounding MPI's start-up. Imports nothing heavy."""

from __future__ import annotations

import contextlib
import math
import os
import select
import signal
import socket
from collections.abc import Iterator

POOLS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def flag_value(argv: list[str], flag: str) -> str | None:
    """The value of `flag V` or `flag=V` in argv, or None (argparse reports a malformed one later)."""
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.partition("=")[2]
    return None


def threads_asked(argv: list[str]) -> int | None:
    """The largest count of --threads T[,T…] in argv, or None."""
    try:
        return max(int(t) for t in (flag_value(argv, "--threads") or "").split(",") if t.strip())
    except ValueError:  # also: no value
        return None


def pin_threads(argv: list[str]) -> None:
    """Size the thread pools before they start (they cannot grow later): the kernels' pool (Numba's) gets one
    thread per rank unless --threads asks for more (several ranks share a board's cores); BLAS gets one, as it
    runs inside the kernels' threads (kernels/blas.py). A variable the user set wins where --threads is absent.
    Where this host's ranks × threads outnumber its cores, the threads sleep as soon as their work ends
    (OMP_WAIT_POLICY, read when the pool starts: a spinning thread held a core its peers in other ranks waited
    for, a time slice at a time; MobileNetV2 160², 2 ranks × 2 threads on 2 cores: 0.350 s spinning, 0.008 s
    sleeping; 2 ranks × 1 thread: 0.006 s)."""
    n = threads_asked(argv)
    for var in POOLS:
        if var == "NUMBA_NUM_THREADS" and n is not None and n > 0:
            os.environ[var] = str(n)
        else:
            os.environ.setdefault(var, "1")
    if oversubscribed((launcher_local() or (1, 0))[0], int(os.environ["NUMBA_NUM_THREADS"])):
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def oversubscribed(ranks: int, threads: int) -> bool:
    """Whether `ranks` processes of `threads` threads each ask for more cores than there are (on one host)."""
    return threads > 1 and ranks * threads > cores()


LOCAL = (("MPI_LOCALNRANKS", "MPI_LOCALRANKID"), ("OMPI_COMM_WORLD_LOCAL_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
         ("PMIX_LOCAL_SIZE", "PMIX_LOCAL_RANK"))  # (MPICH's Hydra, Open MPI, other PMIx launchers)


def launcher_local() -> tuple[int, int] | None:
    """(ranks of this job on this host, this rank's place among them) as the MPI launcher says, read without MPI
    (a collective here would wait for ever for a rank that runs another program); None outside mpiexec."""
    for size, rank in LOCAL:
        if os.environ.get(size, "").isdigit() and os.environ.get(rank, "").isdigit():
            return int(os.environ[size]), int(os.environ[rank])
    return None


def launcher_rank() -> int | None:
    """This process's rank as the MPI launcher says, read before MPI starts (None outside mpiexec)."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return None


@contextlib.contextmanager
def bounded_mpi_start(timeout: float | None) -> Iterator[None]:
    """Around the code that starts MPI: a forked watchdog ends this process if that has not finished within
    timeout seconds (None: no watchdog).

    MPI_Init waits for every rank of the job and holds the GIL while it does, beyond the reach of any thread
    or signal handler of ours: a rank that never starts this program (an MPMD launch naming another one)
    would leave the others there for ever. The watchdog is a separate process: it prints one line and kills
    this one, and the launcher then ends the job. Closing the pipe (or our exit) sends it away."""
    if timeout is None:
        yield
        return
    r, w = os.pipe()
    me = os.getpid()
    if os.fork() == 0:
        os.close(w)
        if not select.select([r], [], [], timeout)[0]:  # neither the pipe's end nor our exit (EOF) in time
            os.write(2, (f"nptp-mpi: error on rank {launcher_rank()} (host {socket.gethostname()}): MPI did not "
                         f"start within {timeout:g} s: a rank of the job never started this program, or died "
                         "before MPI started\n").encode())
            os.kill(me, signal.SIGKILL)
        os._exit(0)
    os.close(r)
    try:
        yield
    finally:
        os.close(w)


def timeout_asked(argv: list[str], default: float) -> float:
    """--timeout from argv where it is a finite positive number, else default."""
    try:
        t = float(flag_value(argv, "--timeout") or default)
    except ValueError:
        return default
    return t if 0 < t and math.isfinite(t) else default
