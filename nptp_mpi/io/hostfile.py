"""Hostfiles in either launcher's syntax, checked line by line and written in the other's if needed.

MPICH (hydra) reads `host:slots`, Open MPI `host slots=N`; boards are listed once, comments start with #.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from nptp_mpi.errors import HostfileError, InputError
from nptp_mpi.io.files import open_regular

MAX_HOSTFILE_BYTES = 1 << 20
HOST = r"[A-Za-z0-9]([A-Za-z0-9.\-]*[A-Za-z0-9])?"
MPICH_LINE = re.compile(rf"^(?P<host>{HOST})(:(?P<slots>\d+))?$")
OPENMPI_LINE = re.compile(rf"^(?P<host>{HOST})(\s+slots\s*=\s*(?P<slots>\d+))?(\s+max_slots\s*=\s*(?P<max>\d+))?$")


class Board(NamedTuple):
    """One hostfile line: a host, its slots, and Open MPI's max_slots if given (MPICH has none)."""

    host: str
    slots: int
    max_slots: int | None = None


def parse(path: str) -> list[Board]:
    """The boards, in file order; raises HostfileError naming the file and line."""
    try:
        with open_regular(path, "hostfile", MAX_HOSTFILE_BYTES) as f:
            lines = f.read().decode("utf-8").splitlines()
    except InputError as e:
        raise HostfileError(str(e)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise HostfileError(f"hostfile {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    hosts: list[Board] = []
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
        if any(b.host == m["host"] for b in hosts):
            raise HostfileError(f"hostfile {path}, line {number}: host {m['host']!r} is listed twice")
        cap = int(m["max"]) if "max" in m.groupdict() and m["max"] else None
        if cap is not None and cap < slots:
            raise HostfileError(f"hostfile {path}, line {number}: max_slots {cap} is below slots {slots}")
        hosts.append(Board(m["host"], slots, cap))
    if not hosts:
        raise HostfileError(f"hostfile {path}: no hosts in it")
    return hosts


def render(hosts: list[Board], launcher: str) -> str:
    """The hostfile text for launcher 'mpich' or 'openmpi' (max_slots kept for Open MPI; see dropped())."""
    if launcher == "mpich":
        return "".join(f"{b.host}:{b.slots}\n" for b in hosts)
    return "".join(f"{b.host} slots={b.slots}" + (f" max_slots={b.max_slots}" if b.max_slots else "") + "\n"
                   for b in hosts)


def dropped(hosts: list[Board], launcher: str) -> str | None:
    """What rendering for launcher loses, in one line (MPICH's hostfiles have no max_slots), or None."""
    capped = [f"{b.host} (max_slots={b.max_slots})" for b in hosts if b.max_slots]
    if launcher != "mpich" or not capped:
        return None
    return "MPICH hostfiles have no max_slots; dropped for " + ", ".join(capped)
