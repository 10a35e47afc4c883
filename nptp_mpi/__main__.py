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
    """Before numpy and Numba load: one thread per rank unless --threads asks for more (several ranks share a
    board's cores, and BLAS pools would fight over them; a pool cannot grow once started)."""
    n = threads_asked(sys.argv[1:])
    for var in POOLS:
        if n is not None and n > 0:
            os.environ[var] = str(n)
        else:
            os.environ.setdefault(var, "1")
    # OpenBLAS's idle threads spin for a long while after each call and starve Numba's parallel loops (MobileNetV2
    # with 2 threads: 152 ms spinning, 20 ms with the shortest spin; `bench models`)
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    from nptp_mpi.cli.main import main

    return main()


if __name__ == "__main__":
    raise SystemExit(entry())
