"""Cache warming: a kernel source change drops the whole Numba cache of the kernels, since Numba itself keys a
cached function on its own file only (a depthwise conv kept running an old act1 inlined from pointwise.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import kernels
from nptp_mpi.tools.warm import clear_stale_cache


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
