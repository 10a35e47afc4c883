"""tools.launcher: which mpiexec and which MPI, asked from the launcher itself; the flags each needs; the
check that mpi4py loads the same MPI. Fake launchers print what the real ones print."""

from __future__ import annotations

import os
import re
import stat
import subprocess

import pytest
from conftest import ROOT

from nptp_mpi.tools import launcher as L

HYDRA = """HYDRA build details:
    Version:                                 5.0.2
    Release Date:                            unreleased development copy
"""
OMPI4_MPIEXEC = "mpiexec (OpenRTE) 4.1.4\n\nReport bugs to http://www.open-mpi.org/community/help/\n"
OMPI5 = "mpirun (Open MPI) 5.0.11\n\nReport bugs to https://www.open-mpi.org/community/help/\n"
OMPI_INFO = "Open MPI v4.1.4\n\nhttp://www.open-mpi.org/community/help/\n"


@pytest.mark.parametrize("text,want", [(HYDRA, ("mpich", "5.0.2")), (OMPI4_MPIEXEC, ("openmpi", "4.1.4")),
                                       (OMPI5, ("openmpi", "5.0.11")), ("mpiexec version 1.0 (some MPI)", None)])
def test_identify_reads_what_each_launcher_prints(text, want) -> None:
    assert L.identify(text) == want


def fake(folder, name: str, output: str):
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}EOF\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_a_launcher_on_path_wins_over_the_venvs_unless_nptp_mpi_picks_the_wheel(tmp_path, monkeypatch) -> None:
    venv, system = tmp_path / "venv", tmp_path / "usr"
    fake(venv, "mpiexec", HYDRA)
    fake(system, "mpiexec", OMPI4_MPIEXEC)
    monkeypatch.setenv("PATH", f"{system}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("NPTP_MPI", raising=False)
    found = L.find(venv)
    assert (found.kind, found.version, found.path) == ("openmpi", "4.1.4", str(system / "mpiexec"))
    monkeypatch.setenv("NPTP_MPI", "mpich")
    assert L.find(venv).kind == "mpich"


def test_ompi_info_beside_a_quiet_launcher_tells(tmp_path, monkeypatch) -> None:
    venv = tmp_path / "venv"
    fake(venv, "mpiexec", "")
    fake(venv, "ompi_info", OMPI_INFO)
    monkeypatch.setenv("NPTP_MPI", "openmpi")
    assert L.find(venv).kind == "openmpi"
    (venv / "ompi_info").unlink()
    with pytest.raises(L.LauncherError, match="neither MPICH's hydra nor Open MPI"):
        L.find(venv)


def test_flags_and_hostfile_syntax_per_launcher(monkeypatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    ompi, mpich = L.Launcher("/x/mpirun", "openmpi", "5.0.11"), L.Launcher("/y/mpiexec", "mpich", "5.0.2")
    assert ompi.command(4, "h.txt") == ["/x/mpirun", "--oversubscribe", "--allow-run-as-root", "--hostfile", "h.txt",
                                        "-n", "4"]
    assert mpich.command(4, "h.txt") == ["/y/mpiexec", "-f", "h.txt", "-n", "4"]
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert ompi.flags == ["--oversubscribe"]


def test_a_mismatch_with_mpi4py_is_one_line(monkeypatch) -> None:
    monkeypatch.setattr(L, "mpi4py_kind", lambda: "mpich")
    with pytest.raises(L.LauncherError, match="mpi4py loads MPICH but the launcher is Open MPI") as e:
        L.check(L.Launcher("/x/mpirun", "openmpi", "4.1.4"))
    assert "\n" not in str(e.value)


def test_this_setup_is_consistent_and_run_sh_uses_the_module() -> None:
    found = L.find()
    L.check(found)  # what ./run.sh set up: mpi4py loads the launcher's MPI
    assert "nptp_mpi.tools.launcher" in (ROOT / "run.sh").read_text()


def test_run_sh_help_names_every_command_and_variable_it_reads() -> None:
    """`./run.sh help` prints its whole header (it grew a line once and lost `help` off its end); an unknown
    command prints it on stderr and exits 2."""
    script = (ROOT / "run.sh").read_text()
    shown = subprocess.run([str(ROOT / "run.sh"), "help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and not shown.stderr, shown.stderr
    commands = re.findall(r"^  ([a-z|-]+)\) ", script.split('case "${1:-demo}" in', 1)[1], re.M)
    for command in commands:
        assert f"./run.sh {command.split('|')[0]}" in shown.stdout or command == "demo", command
    for variable in sorted(set(re.findall(r"\$\{?(NPTP_[A-Z_]+)", script))):
        assert variable in shown.stdout, variable
    bad = subprocess.run([str(ROOT / "run.sh"), "nosuch"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown command 'nosuch'" in bad.stderr and "./run.sh help" in bad.stderr
