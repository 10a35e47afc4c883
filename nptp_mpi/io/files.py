"""The one way a file is opened for reading: only a regular file, never blocking, within a size limit.

A FIFO (or a device such as /dev/zero) given as a model, weights, calibration, hostfile, picture or tensor
would block open() or never end read(); it is refused in one line before anything is read. The check is on
the descriptor actually read (opened non-blocking, then fstat), so a file swapped after a check cannot slip in.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from typing import BinaryIO

from nptp_mpi.errors import InputError

PathLike = str | os.PathLike


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


@contextlib.contextmanager
def open_regular(path: PathLike, kind: str, limit: int) -> Iterator[BinaryIO]:
    """The binary file at path, if it is a non-empty regular file of at most limit bytes; else InputError
    naming kind (what the file is for, e.g. "weights") and the file."""
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise InputError(f"{kind} {name}: no such file") from None
    except OSError as exc:
        raise InputError(f"{kind} {name}: cannot open it ({_why(exc)})") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise InputError(f"{kind} {name}: is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{kind} {name}: not a regular file (a pipe, socket or device)")
        if st.st_size == 0:
            raise InputError(f"{kind} {name}: empty file")
        if st.st_size > limit:
            raise InputError(f"{kind} {name}: {st.st_size} bytes, larger than the limit of {limit}")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        yield f


def require_regular(path: PathLike, kind: str, limit: int) -> None:
    """Raise as open_regular would, for a file another library opens itself (ONNX external data)."""
    with open_regular(path, kind, limit):
        pass
