"""Nothing another rank sends is ever unpickled: a foreign program started as one rank of the job (MPMD)
that sends a pickle in the start-up agreement gets one clear refusal, and its payload never runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import ROOT, mpiexec

EVIL = '''
import os, pickle, sys
import numpy as np
from mpi4py import MPI

class Payload:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[1],))

comm = MPI.COMM_WORLD
comm.Isend(np.empty(0, np.uint8), dest=0, tag=32766)  # the barrier's arrival token (plan.program.ARRIVE_TAG)
comm.Ibarrier().Wait()  # the agreement's bounded barrier (nonblocking collectives match only their kind)
data = np.frombuffer(pickle.dumps(Payload()), np.uint8)
sizes = np.zeros(comm.Get_size(), np.int64)
comm.Iallgather(np.array([data.size], np.int64), sizes).Wait()
offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
comm.Iallgatherv(data, [np.empty(int(sizes.sum()), np.uint8), sizes, offsets, MPI.BYTE]).Wait()
'''


def test_a_pickle_from_a_foreign_rank_is_refused_and_never_runs(tmp_path) -> None:
    evil, mark = tmp_path / "evil.py", tmp_path / "pwned"
    evil.write_text(EVIL)
    cmd = [*mpiexec(), "-n", "1", sys.executable, "-m", "nptp_mpi", "run", "--model", "resnet18", "--size", "64",
           "--timeout", "30", ":", "-n", "1", sys.executable, str(evil), str(mark)]
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert not mark.exists(), "the pickled payload ran"
    assert p.returncode == 2, (p.returncode, p.stderr)
    errors = [line for line in p.stderr.splitlines() if "error" in line]
    assert errors == ["nptp-mpi: error: rank 1 sent start-up data that is not JSON; is every rank this program?"], \
        p.stderr


def test_no_module_calls_the_pickling_collectives() -> None:
    """mpi4py's lowercase send/recv/bcast/gather/… pickle; the package uses buffers and World's JSON only."""
    lower = re.compile(r"\bcomm\.(send|recv|isend|irecv|sendrecv|bcast|gather|scatter|allgather|allreduce|reduce|"
                       r"alltoall|reduce_scatter)\(")
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / "nptp_mpi").rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if lower.search(line)]
    assert not hits, hits
