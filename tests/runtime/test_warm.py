"""Cache warming: a kernel source change drops the whole Numba cache of the kernels, since Numba itself keys a
cached function on its own file only (a depthwise conv kept running an old act1 inlined from pointwise.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, cache_missing, mpiexec

from nptp_mpi import kernels
from nptp_mpi.runtime.warm import clear_stale_cache


def test_a_changed_kernel_source_drops_every_cached_kernel(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "kernels"
    shutil.copytree(
        Path(kernels.__file__).parent, folder, ignore=shutil.ignore_patterns("__pycache__"))
    cache = folder / "__pycache__"
    cache.mkdir()
    monkeypatch.setattr(kernels, "__file__", str(folder / "__init__.py"))
    (cache / "conv._depthwise-35.py311.nbi").write_text("old")
    assert clear_stale_cache() and not list(cache.glob("*.nbi"))  # no stamp yet: whatever is there is suspect
    (cache / "conv._depthwise-35.py311.nbi").write_text("fresh")
    assert not clear_stale_cache() and list(cache.glob("*.nbi"))  # sources unchanged: the cache stays
    (folder / "pointwise.py").write_text((folder / "pointwise.py").read_text() + "\n# a new activation\n")
    assert clear_stale_cache() and not list(cache.glob("*.nbi"))  # only pointwise.py changed: conv's goes too


COLD_JOB = """
import json, sys
from nptp_mpi import kernels
from nptp_mpi.runtime.exchange import World
from nptp_mpi.runtime.warm import every_op_graph, warm_first
from nptp_mpi.runtime.reference import run
import numpy as np

def misses():
    mods = [m for n, m in sys.modules.items() if n.startswith("nptp_mpi.kernels.")]
    # (kernels compiled per constant, such as each activation's pass, sit in module-level dicts)
    jitted = [d for m in mods for v in vars(m).values() for d in (v.values() if isinstance(v, dict) else [v])]
    return sum(sum(d.stats.cache_misses.values()) for d in jitted if hasattr(d, "stats"))

world = World(timeout=60)
warm_first(world)
before = misses()
g = every_op_graph()
for vector in (True, False):  # the vector kernels where the host has them, and the loops and GEMMs they leave
    with kernels.vectors.enabled(vector):
        run(g, np.ones(g.input_shape, np.float32))
        with kernels.threads.blocks(3):  # as a run on several threads calls them (their GEMMs, buffers' layouts)
            run(g, np.ones(g.input_shape, np.float32))
for act in kernels.pointwise.ACTS:
    kernels.activation(np.ones(3, np.float32), act)
kernels.channel_sums(np.ones((3, 4, 5), np.float32)[:, 1:, 2:])
kernels.global_avgpool(np.ones((3, 4, 5), np.float32)[:, 1:, 2:])
print(json.dumps([world.rank, before, misses() - before]), flush=True)
"""


def test_a_cold_cache_is_compiled_by_one_rank_while_the_others_wait(tmp_path) -> None:
    """Three ranks on one host, a cache that is not warm (the pool kernels missing): rank 0 compiles (cache
    misses), the others then only load (no miss when they run every kernel). Without warm_first all three compile
    the same kernels at once."""
    cache_missing("pool", tmp_path, Path(kernels.__file__).parent)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    p = subprocess.run([*mpiexec(), "-n", "3", sys.executable, "-c", COLD_JOB], capture_output=True, text=True,
                       timeout=300, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    ranks = {r: (before, after) for r, before, after in map(json.loads, p.stdout.split("\n")[:-1])}
    assert ranks[0][0] > 0, "rank 0 compiled nothing: the cache was not cold"
    assert ranks[1] == (0, 0) and ranks[2] == (0, 0), ranks
