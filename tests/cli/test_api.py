"""The README's Python API example, run as written under mpiexec on 2 ranks; and the API's refusals."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT, mpiexec

from nptp_mpi import api
from nptp_mpi.errors import UsageError


def test_the_readme_example_runs_under_mpiexec(tmp_path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Python API"):readme.index("## How it works")]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    p = subprocess.run([*mpiexec(), "-n", "2", sys.executable, str(script)], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    assert re.search(r"^class \d+; rank 0 computed [\d.]+ s, sent \d+ B of halo$", p.stdout, re.M), p.stdout


def test_a_plan_for_other_ranks_and_a_link_without_a_rate_are_refused() -> None:
    graph = api.load("resnet18", size=(64, 64))
    with pytest.raises(UsageError, match="give its bandwidth"):
        api.plan(graph, ranks=2, latency="1ms")
    with pytest.raises(UsageError, match="for 2 ranks, the communicator has 1"):
        api.Job(graph, api.plan(graph, ranks=2, strategy="nptp"))
