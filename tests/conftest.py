"""Shared test helpers: tolerances, the MPI launcher, and running the CLI as users do."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def assert_close(got: np.ndarray, want: np.ndarray, rel: float) -> None:
    """max |got - want| <= rel * max |want|: a tolerance relative to the output's scale."""
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = float(np.max(np.abs(want))) or 1.0
    err = float(np.max(np.abs(got.astype(np.float64) - want)))
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel:g} x {scale:.3g}"


def mpiexec() -> list[str]:
    """The launcher run.sh uses: the venv's (mpich wheel) next to this Python, else the system's."""
    here = Path(sys.executable).parent / "mpiexec"
    found = str(here) if here.exists() else shutil.which("mpiexec")
    assert found, "no mpiexec: run ./run.sh setup"
    out = subprocess.run([found, "--version"], capture_output=True, text=True).stdout
    return [found, "--oversubscribe"] if "Open MPI" in out else [found]


def run_cli(args: list[str], ranks: int | None = None, timeout: float = 120, env: dict | None = None):
    """`python -m nptp_mpi ARGS`, under mpiexec -n ranks when given; returns the CompletedProcess."""
    cmd = [sys.executable, "-m", "nptp_mpi", *args]
    if ranks:
        cmd = [*mpiexec(), "-n", str(ranks), *cmd]
    full_env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=full_env)
