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



def check_writable(path: str | None, flag: str, reads: tuple[str | None, ...] = ()) -> None:
    """Refuse before any work an output path that cannot be written: a missing or read-only folder, a name
    the file system cannot hold, an existing target that is not a regular file (a device such as /dev/full
    would be replaced by a file), or one of the files the run reads (reads)."""
    if path is None:
        return
    target = Path(path)
    parent = target.resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(f"{flag} {path}: folder {parent} does not exist or is not writable")
    longest = 255
    with contextlib.suppress(OSError, ValueError):
        longest = os.pathconf(parent, "PC_NAME_MAX")
    if len(target.name.encode()) > longest:
        raise UsageError(f"{flag} {path}: the file name is longer than {parent} allows ({longest} bytes)")
    if target.exists() or target.is_symlink():
        if not target.is_file():
            raise UsageError(f"{flag} {path}: exists and is not a regular file (a folder, device or pipe)")
        for other in reads:
            with contextlib.suppress(OSError):
                if other and os.path.samefile(path, other):
                    raise UsageError(f"{flag} {path}: is the file the run reads as {other}; it would be overwritten")


def atomic_write_all(files: list[tuple[PathLike, Callable[[BinaryIO], object], str]]) -> None:
    """Write several files all or none: each ``(path, write(fileobj), what)`` goes to a temp file beside its
    path, is flushed and fsynced (a full disk fails here); only when every one is complete are they renamed
    over their targets. On any failure the temp files are removed, the targets are left as they were, and
    InputError names the file that failed."""
    temps: list[str] = []
    try:
        for path, write, what in files:
            name = os.fspath(path)
            target = Path(name)
            try:
                fd, tmp = tempfile.mkstemp(dir=target.parent if str(target.parent) else ".",
                                           prefix=f".{target.name}.", suffix=".tmp")
                temps.append(tmp)
                with os.fdopen(fd, "wb") as f:
                    write(f)
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(tmp, 0o666 & ~umask())
            except InputError:
                raise
            except Exception as exc:  # noqa: BLE001 - report any failure as a clean one-liner
                raise InputError(f"{name}: cannot write {what} ({one_line(exc)})") from None
        for (path, _, what), tmp in zip(files, temps, strict=True):
            try:
                os.replace(tmp, os.fspath(path))
            except OSError as exc:
                raise InputError(f"{os.fspath(path)}: cannot write {what} ({one_line(exc)})") from None
        temps = []
    finally:
        for tmp in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def atomic_write(path: PathLike, write: Callable[[BinaryIO], object], what: str) -> None:
    """Write one file whole or not at all (atomic_write_all)."""
    atomic_write_all([(path, write, what)])


def umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def text_writer(text: str) -> Callable[[BinaryIO], object]:
    """A writer (for atomic_write_all) of text as UTF-8."""
    return lambda f: f.write(text.encode())


def npy_writer(array: np.ndarray) -> Callable[[BinaryIO], object]:
    """A writer (for atomic_write_all) of array as .npy; object arrays are refused (no pickling)."""
    arr = np.asanyarray(array)
    return lambda f: np.save(f, arr, allow_pickle=False)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write text to path atomically (atomic_write)."""
    atomic_write(path, text_writer(text), "text")


def atomic_save_npy(path: PathLike, array: np.ndarray) -> None:
    """Save ``array`` as .npy exactly at ``path`` (no suffix added) via temp file + os.replace.

    Readers never see a half-written file.  Object arrays are refused (no pickling).
    Failures (missing/unwritable directory, disk full, ...) raise InputError naming
    ``path`` and leave no temp file behind.  Call from one process only (rank 0).
    """
    atomic_write(path, npy_writer(array), "array")
