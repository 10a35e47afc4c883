"""`python -m nptp_mpi` and the `nptp-mpi` script: size the math libraries' thread pools, keep freed memory for
reuse, then the command line."""

import sys


def entry() -> int:
    """Before numpy and Numba load: the thread pools (cli.early.pin_threads); then the allocator's policy
    (runtime.memory) and the command line."""
    from nptp_mpi.cli.early import pin_threads

    pin_threads(sys.argv[1:])
    from nptp_mpi.runtime.memory import keep_freed_memory

    keep_freed_memory()
    from nptp_mpi.cli.main import main

    return main()


if __name__ == "__main__":
    raise SystemExit(entry())
