"""`python -m nptp_mpi` and the `nptp-mpi` script: size the math libraries' thread pools, then the command line."""

import os
import sys

POOLS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def threads_asked(argv: list[str]) -> int | None:
    """The largest count of --threads T[,T…] in argv, or None (a malformed value is argparse's to report)."""
    for i, a in enumerate(argv):
        value = argv[i + 1] if a == "--threads" and i + 1 < len(argv) else a.partition("=")[2] \
            if a.startswith("--threads=") else None
        if value is not None:
            try:
                return max(int(t) for t in value.split(",") if t.strip())
            except ValueError:
                return None
    return None


def entry() -> int:
    """Before numpy and Numba load: one thread per rank unless --threads asks BLAS for more (several ranks
    share a board's cores, and BLAS pools would fight over them; a pool cannot grow once started). Numba stays
    on one thread: two pools on the same cores spin against each other (VGG-16 224², 2 cores: BLAS 2 threads
    105 ms, Numba 2 threads 110 ms, both 227 ms, neither 121 ms)."""
    n = threads_asked(sys.argv[1:])
    for var in POOLS:
        if n is not None and n > 0 and var != "NUMBA_NUM_THREADS":
            os.environ[var] = str(n)
        else:
            os.environ.setdefault(var, "1")
    from nptp_mpi.cli.main import main

    return main()


if __name__ == "__main__":
    raise SystemExit(entry())
