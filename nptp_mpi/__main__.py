"""`python -m nptp_mpi`: pin math libraries to one thread per rank, then the command line."""

import os

# Before numpy loads: several ranks share a board's cores, and BLAS thread pools would fight over them.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from nptp_mpi.cli.main import main  # noqa: E402

raise SystemExit(main())
