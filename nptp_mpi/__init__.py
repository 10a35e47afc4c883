"""nptp-mpi: one CNN inference across several edge boards with MPI, partitioned non-penetratively."""

__version__ = "0.1.0"
