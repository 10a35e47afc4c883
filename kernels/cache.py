"""Where Numba keeps the compiled kernels: beside their sources when that folder is writable (a checkout, a
user's venv), else in a per-user cache folder, else a temporary one. Without this a read-only install failed
at import ("cannot cache function: no locator available") when HOME was not writable either. Decided before
the first kernel is compiled (kernels/__init__ imports this module first); NUMBA_CACHE_DIR set by the user wins."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path


def cache_dir(sources: Path, env: Mapping[str, str], writable: Callable[[Path], bool]) -> str | None:
    """The NUMBA_CACHE_DIR to set, or None to keep Numba's own choice (beside the sources, or the user's)."""
    if env.get("NUMBA_CACHE_DIR") or writable(sources):
        return None
    home = env.get("XDG_CACHE_HOME") or (str(Path(env["HOME"]) / ".cache") if env.get("HOME") else "")
    uid = os.getuid() if hasattr(os, "getuid") else 0
    for base in ([Path(home) / "nptp-mpi" / "numba"] if home else []) + [
            Path(tempfile.gettempdir()) / f"nptp-mpi-numba-{uid}"]:
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if writable(base):
            return str(base)
    return None


def configure() -> None:
    """Set NUMBA_CACHE_DIR where cache_dir says so (and tell Numba, if it is already loaded)."""
    folder = cache_dir(Path(__file__).parent, os.environ, lambda p: os.access(p, os.W_OK))
    if folder is None:
        return
    os.environ["NUMBA_CACHE_DIR"] = folder
    if "numba" in sys.modules:
        from numba.core import config

        config.reload_config()


configure()
