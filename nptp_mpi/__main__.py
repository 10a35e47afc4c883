"""`python -m nptp_mpi` and the `nptp-mpi` script: size the math libraries' thread pools, then the command line."""

import sys


def entry() -> int:
    """Before numpy and Numba load: the thread pools (cli.early.pin_threads), then the command line."""
    from nptp_mpi.cli.early import pin_threads

    pin_threads(sys.argv[1:])
    from nptp_mpi.cli.main import main

    return main()


if __name__ == "__main__":
    raise SystemExit(entry())
