"""Output files, written whole or not at all: a temp file beside the target, fsync, then a rename.

Every file the program writes (tensors, reports, pictures, CSV) goes through atomic_write, from one rank.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from nptp_mpi.errors import InputError, UsageError

PathLike = str | os.PathLike


def one_line(exc: BaseException) -> str:
    """Exception text squeezed onto one line (the CLI prints messages as one line)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__



def check_writable(path: str | None, flag: str) -> None:
    """Refuse before any work if an output path cannot be written."""
    if path is None:
        return
    parent = Path(path).resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(f"{flag} {path}: folder {parent} does not exist or is not writable")



def atomic_write(path: PathLike, write: Callable[[BinaryIO], object], what: str) -> None:
    """Write via ``write(fileobj)`` to a temp file next to ``path``, fsync, then os.replace.

    On any failure the temp file is removed and InputError naming ``path`` is raised.
    """
    name = os.fspath(path)
    target = Path(name)
    parent = target.parent if str(target.parent) else Path(".")
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, name)
        tmp = None
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - report any failure as a clean one-liner
        raise InputError(f"{name}: cannot write {what} ({one_line(exc)})") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write text to path atomically (atomic_write)."""
    atomic_write(path, lambda f: f.write(text.encode()), "text")


def atomic_save_npy(path: PathLike, array: np.ndarray) -> None:
    """Save ``array`` as .npy exactly at ``path`` (no suffix added) via temp file + os.replace.

    Readers never see a half-written file.  Object arrays are refused (no pickling).
    Failures (missing/unwritable directory, disk full, ...) raise InputError naming
    ``path`` and leave no temp file behind.  Call from one process only (rank 0).
    """
    arr = np.asanyarray(array)
    atomic_write(path, lambda f: np.save(f, arr, allow_pickle=False), "array")
