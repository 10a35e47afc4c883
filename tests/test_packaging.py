"""A plain `pip install` of the wheel, as a user without run.sh gets it: the kernels live inside nptp_mpi (no
top-level `kernels` to clash with PyPI's), and from a read-only install without HOME, `plan`, `export` and
`run --model m.onnx` work, the Numba cache going to a temporary folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT, cache_missing

from nptp_mpi.tools.launcher import find


def _wheel(tmp_path) -> zipfile.ZipFile:
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    (wheel,) = (tmp_path / "dist").glob("nptp_mpi-*.whl")
    return zipfile.ZipFile(wheel)


def _read_only(target) -> list[str]:
    """A command prefix under which target cannot be written, even by root (a read-only bind mount)."""
    if os.geteuid() != 0:
        for d, _, files in os.walk(target):
            for name in [d, *(os.path.join(d, f) for f in files)]:
                os.chmod(name, os.stat(name).st_mode & 0o555)
        return []
    if not shutil.which("unshare"):
        pytest.skip("root without unshare: no way to make the install read-only")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"root without mount namespaces ({probe.stderr.decode().strip()})")
    t = str(target)
    return ["unshare", "-m", "sh", "-c", f'mount --bind {t} {t} && mount -o remount,ro,bind {t} {t} && exec "$@"',
            "sh"]


def test_the_wheel_installs_read_only_and_runs_an_onnx_model_without_home(tmp_path) -> None:
    wheel = _wheel(tmp_path)
    names = wheel.namelist()
    assert not [n for n in names if n.startswith("kernels/")], "a top-level `kernels` package would be installed"
    assert {"nptp_mpi/kernels/__init__.py", "nptp_mpi/kernels/conv.py", "nptp_mpi/kernels/cache.py"} <= set(names)
    entry = wheel.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "nptp-mpi = nptp_mpi.__main__:entry" in entry

    site = tmp_path / "site"
    p = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                        wheel.filename], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert not (site / "kernels").exists() and (site / "nptp_mpi" / "kernels" / "conv.py").is_file()
    work, scratch = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    scratch.mkdir()
    # no HOME, nothing of the checkout on the path: the installed copy and the venv's dependencies only. Open
    # MPI's own start-up refuses to run without a HOME variable (opal_init), so there it names one that does
    # not exist: still no HOME to write to.
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(site), "TMPDIR": str(scratch), "OMP_NUM_THREADS": "1"}
    if find().kind == "openmpi":
        env["HOME"] = "/proc/no-such-home"  # cannot be created, even by root
    # The temporary folder's cache holds every kernel but the pool kernels, which the run must compile there (all of
    # them took three minutes). Numba takes a cached kernel for its source while the file's time and size are those
    # it was cached for: the installed sources get the checkout's times.
    installed = site / "nptp_mpi" / "kernels"
    for f in installed.glob("*.py"):
        mtime = (ROOT / "kernels" / f.name).stat().st_mtime
        os.utime(f, (mtime, mtime))
    cache_missing("pool", scratch / f"nptp-mpi-numba-{os.getuid()}", installed)
    prefix = _read_only(site)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*prefix, sys.executable, "-m", "nptp_mpi", *args], capture_output=True, text=True,
                              timeout=300, cwd=work, env=env)

    where = subprocess.run([*prefix, sys.executable, "-c", "import nptp_mpi.kernels as k; print(k.__file__); "
                            "open(k.__file__ + '.probe', 'w')"], capture_output=True, text=True, cwd=work, env=env)
    assert where.stdout.startswith(str(site / "nptp_mpi" / "kernels")), where.stdout + where.stderr
    assert "Read-only file system" in where.stderr or "Permission denied" in where.stderr, where.stderr
    plan = cli("plan", "--model", "resnet18", "--size", "64", "--ranks", "2")
    assert plan.returncode == 0 and "halo" in plan.stdout, plan.stderr
    assert cli("export", "--model", "resnet18", "--size", "64", "-o", "m.onnx").returncode == 0
    run = cli("run", "--model", "m.onnx", "--verify")
    assert run.returncode == 0, run.stderr
    assert "verify: max" in run.stdout and "(ok)" in run.stdout, run.stdout
    assert list(scratch.glob("nptp-mpi-numba-*/**/pool.*.nbi")), "the kernels were not cached under TMPDIR"
