"""Hostfiles in either launcher's syntax, checked line by line and written in the other's if needed.

MPICH (hydra) reads `host:slots`, Open MPI `host slots=N`; boards are listed once, comments start with #.
"""

from __future__ import annotations

import re

from nptp_mpi.errors import HostfileError, InputError
from nptp_mpi.io.files import open_regular

MAX_HOSTFILE_BYTES = 1 << 20
HOST = r"[A-Za-z0-9]([A-Za-z0-9.\-]*[A-Za-z0-9])?"
MPICH_LINE = re.compile(rf"^(?P<host>{HOST})(:(?P<slots>\d+))?$")
OPENMPI_LINE = re.compile(rf"^(?P<host>{HOST})(\s+slots\s*=\s*(?P<slots>\d+))?(\s+max_slots\s*=\s*\d+)?$")


def parse(path: str) -> list[tuple[str, int]]:
    """(host, slots) per board, in file order; raises HostfileError naming the file and line."""
    try:
        with open_regular(path, "hostfile", MAX_HOSTFILE_BYTES) as f:
            lines = f.read().decode("utf-8").splitlines()
    except InputError as e:
        raise HostfileError(str(e)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise HostfileError(f"hostfile {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    hosts: list[tuple[str, int]] = []
    for number, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = MPICH_LINE.match(line) or OPENMPI_LINE.match(line)
        if not m:
            raise HostfileError(f"hostfile {path}, line {number}: {raw.strip()!r} is neither 'host:slots' (MPICH) "
                                f"nor 'host slots=N' (Open MPI)")
        slots = int(m["slots"] or 1)
        if slots < 1:
            raise HostfileError(f"hostfile {path}, line {number}: slots must be at least 1")
        if any(h == m["host"] for h, _ in hosts):
            raise HostfileError(f"hostfile {path}, line {number}: host {m['host']!r} is listed twice")
        hosts.append((m["host"], slots))
    if not hosts:
        raise HostfileError(f"hostfile {path}: no hosts in it")
    return hosts


def render(hosts: list[tuple[str, int]], launcher: str) -> str:
    """The hostfile text for launcher 'mpich' or 'openmpi'."""
    fmt = "{}:{}" if launcher == "mpich" else "{} slots={}"
    return "".join(fmt.format(h, s) + "\n" for h, s in hosts)
