"""Freed maps are reused without page faults once keep_freed_memory has run (each case in a fresh process: the
policy is process-wide)."""

import subprocess
import sys

import pytest

# A 64 MiB map allocated, written and freed, then again: the minor page faults of the second time.
SECOND_MAP_FAULTS = """
import resource, sys
import numpy as np
from nptp_mpi.runtime.memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2):
    before = faults()
    a = np.empty(16 << 20, np.float32)
    a[:] = 1.0
    del a
print(faults() - before)
"""


def second_map_faults(mode: str) -> int:
    p = subprocess.run([sys.executable, "-c", SECOND_MAP_FAULTS, mode], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return int(p.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator policy")
def test_a_freed_map_is_reused_without_page_faults():
    assert second_map_faults("default") >= 32  # glibc unmapped it: a fault per page (per 2 MiB at least)
    assert second_map_faults("keep") < 8


# With freed memory kept: the resident MiB after a 256 MiB array is freed, and after return_free_memory.
RESIDENT_AFTER_FREE = """
import numpy as np
from nptp_mpi.runtime.memory import keep_freed_memory, return_free_memory
def resident_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
assert keep_freed_memory()
a = np.ones(64 << 20, np.float32)
del a
kept = resident_mib()
return_free_memory()
print(kept, resident_mib())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator policy, /proc")
def test_set_up_hands_back_what_it_freed():
    """The weights a rank drops after set-up must leave the board's memory, although freed maps are kept."""
    p = subprocess.run([sys.executable, "-c", RESIDENT_AFTER_FREE], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    kept, returned = map(float, p.stdout.split())
    assert kept - returned > 200


def test_the_command_line_keeps_freed_memory(monkeypatch):
    from nptp_mpi import __main__
    from nptp_mpi.cli.early import POOLS
    from nptp_mpi.runtime import memory

    for var in POOLS:  # entry sets them: restored after the test
        monkeypatch.setenv(var, "1")
    calls = []
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(sys, "argv", ["nptp-mpi", "--version"])
    with pytest.raises(SystemExit):
        __main__.entry()
    assert calls == [1]
