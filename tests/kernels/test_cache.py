"""Where the Numba cache goes when the kernels' folder cannot be written (a read-only install)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from nptp_mpi.kernels.cache import cache_dir


def test_beside_the_sources_when_writable_else_per_user_else_temporary(tmp_path) -> None:
    src, home = tmp_path / "site-packages" / "kernels", tmp_path / "home"
    src.mkdir(parents=True)
    home.mkdir()
    read_only = {src}
    writable = lambda p: not any(Path(p) == r or r in Path(p).parents for r in read_only)  # noqa: E731
    assert cache_dir(src, {"HOME": str(home)}, lambda p: True) is None  # a checkout: Numba's own choice
    assert cache_dir(src, {"HOME": str(home)}, writable) == str(home / ".cache" / "nptp-mpi" / "numba")
    assert cache_dir(src, {"XDG_CACHE_HOME": str(tmp_path / "xdg")}, writable) == str(tmp_path / "xdg" / "nptp-mpi"
                                                                                     / "numba")
    read_only.add(home)
    fallback = cache_dir(src, {"HOME": str(home)}, writable)
    assert fallback is not None and "nptp-mpi-numba-" in fallback and Path(fallback).is_dir()
    assert cache_dir(src, {"HOME": str(home), "NUMBA_CACHE_DIR": "/mine"}, writable) is None  # the user's wins


def test_a_read_only_install_without_home_caches_in_a_temporary_folder(tmp_path) -> None:
    """End to end, in a fresh process: the kernels' folder reads as not writable (as a system-wide install
    would: root ignores file modes, so os.access is made to say so), no HOME; importing the kernels and running
    one compiles it into a folder under TMPDIR instead of failing."""
    code = """
import os
real = os.access
os.access = lambda p, mode, *a, **k: False if "kernels" in str(p) and mode == os.W_OK else real(p, mode, *a, **k)
import numpy as np
from nptp_mpi import kernels as K
K.activation(np.ones((2, 3, 3), np.float32), "relu")
folder = os.environ["NUMBA_CACHE_DIR"]
print(folder, sum(len(files) for _, _, files in os.walk(folder)))
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).parents[2], env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)})
    assert p.returncode == 0, p.stderr
    folder, files = p.stdout.split()
    assert folder.startswith(str(tmp_path)) and int(files) > 0


def test_the_kernels_refuse_to_load_under_another_name() -> None:
    """`import kernels` from the repository's root would compile kernels into the shared cache under a module name
    that no other process can import: every later load of them failed with ModuleNotFoundError. It is refused."""
    root = Path(__file__).resolve().parents[2]
    p = subprocess.run([sys.executable, "-c", "import kernels"], capture_output=True, text=True, cwd=root, timeout=60)
    assert p.returncode != 0 and "import the kernels as nptp_mpi.kernels" in p.stderr, p.stderr
