"""Faults and bad input end the job fast with one clear line; streams skip bad pictures; memory stays flat.

Each case is a real `mpiexec` job in a subprocess with a timeout; NPTP_FAULT=rank:phase[:stall|:kill]
injects the fault (it is inert when unset).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from conftest import ROOT, mpiexec, run_cli
from PIL import Image

SMALL = ["--model", "resnet18", "--size", "96x128"]


def _timed(args, ranks=3, env=None, timeout=90):
    t0 = time.monotonic()
    p = run_cli(args, ranks=ranks, env=env, timeout=timeout)
    return p, time.monotonic() - t0


def test_killed_rank_ends_the_job_with_nonzero_code() -> None:
    p, took = _timed(["run", *SMALL, "--repeat", "3"], env={"NPTP_FAULT": "1:infer:kill"})
    assert p.returncode != 0
    assert took < 60, took  # MPICH's hydra tears the job down when a rank dies (README: Open MPI likewise)


@pytest.mark.parametrize("fault, stalled", [("2:infer:stall", 2), ("0:infer:stall", 0), ("3:setup:stall", 3),
                                            ("0:write:stall", 0)])
def test_a_stall_ends_the_job_with_one_line_naming_the_stalled_rank(tmp_path, fault, stalled) -> None:
    """Every rank that times out tells rank 0 whom it waits for; rank 0 names the one not itself waiting, or,
    stalled itself, the lowest rank waiting names it. One line, whichever phase (setup: before the ranks
    know each other's hosts), and nothing written."""
    p, took = _timed(["run", *SMALL, "--timeout", "4", "--output", str(tmp_path / "y.npy")], ranks=4,
                     env={"NPTP_FAULT": fault})
    errors = [line for line in p.stderr.splitlines() if line.startswith("nptp-mpi: error")]
    assert p.returncode != 0 and len(errors) == 1, p.stderr
    assert f"timed out after 4 s waiting for rank {stalled} (host " in errors[0], errors
    assert "host ?" not in errors[0] and took < 45, (errors, took)
    assert list(tmp_path.iterdir()) == []


def test_mpmd_ranks_with_different_arguments_end_alike_with_one_line() -> None:
    """A rank whose arguments do not parse takes part in the start-up agreement (MPI starts first), so the
    others learn why instead of waiting for it for ever."""
    py = [sys.executable, "-m", "nptp_mpi", "run", *SMALL]
    p = subprocess.run([*mpiexec(), "-n", "1", *py, "--bogus", ":", "-n", "1", *py], capture_output=True, text=True,
                       timeout=90, cwd=ROOT)
    assert p.returncode == 2 and p.stderr.count("nptp-mpi: error") == 1, p.stderr
    assert "rank 0 (host" in p.stderr and "--bogus" in p.stderr


def test_a_rank_that_never_starts_the_program_ends_the_job_at_the_timeout() -> None:
    """MPI_Init waits for every rank, holding the GIL: a watchdog process ends the rank after --timeout."""
    py = [sys.executable, "-m", "nptp_mpi", "run", *SMALL, "--timeout", "3"]
    t0 = time.monotonic()
    p = subprocess.run([*mpiexec(), "-n", "1", *py, ":", "-n", "1", "sleep", "60"], capture_output=True, text=True,
                       timeout=90, cwd=ROOT)
    assert p.returncode != 0 and time.monotonic() - t0 < 30
    assert "nptp-mpi: error on rank 0 (host" in p.stderr and "MPI did not start within 3 s" in p.stderr, p.stderr


def test_failure_while_writing_aborts_and_writes_nothing(tmp_path) -> None:
    out = tmp_path / "y.npy"
    p, took = _timed(["run", *SMALL, "--output", str(out)], env={"NPTP_FAULT": "0:write"})
    assert p.returncode != 0 and "rank 0 (host" in p.stderr and "injected fault in write" in p.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_debug_shows_the_traceback() -> None:
    p, _ = _timed(["run", *SMALL, "--debug"], env={"NPTP_FAULT": "1:infer"})
    assert p.returncode != 0 and "Traceback" in p.stderr and "rank 1 (host" in p.stderr


def test_ranks_that_disagree_are_stopped_at_start() -> None:
    py = [sys.executable, "-m", "nptp_mpi", "run", "--model", "resnet18"]
    cmd = [*mpiexec(), "-n", "1", *py, "--size", "96x128", ":", "-n", "1", *py, "--size", "96x96"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=ROOT)
    assert p.returncode == 2, p.stderr
    assert "ranks disagree on --size" in p.stderr and "(96, 96)" in p.stderr
    assert p.stderr.count("nptp-mpi: error") == 1


def test_model_too_deep_for_the_image() -> None:
    p, _ = _timed(["run", "--model", "vgg16", "--size", "16"], ranks=2)
    assert p.returncode == 2 and "too small" in p.stderr and p.stderr.count("nptp-mpi: error") == 1


def test_stream_skips_bad_pictures_and_keeps_going(tmp_path) -> None:
    pics = tmp_path / "pics"
    pics.mkdir()
    Image.new("RGB", (160, 120), (200, 30, 30)).save(pics / "a.png")
    (pics / "b.png").write_bytes(b"not a picture")
    Image.new("L", (90, 200), 128).save(pics / "c.jpg")
    (pics / "d.txt").write_text("notes")
    results = tmp_path / "out.jsonl"
    p, _ = _timed(["run", *SMALL, "--images", str(pics), "--results", str(results)], ranks=2)
    assert p.returncode == 0, p.stderr
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["image"], r["ok"]) for r in lines] == [("a.png", True), ("b.png", False), ("c.jpg", True),
                                                       ("d.txt", False)]
    assert len(lines[0]["top5"]) == 5 and "b.png" in lines[1]["error"]
    assert "4 pictures: 2 done, 2 skipped" in p.stderr


def test_memory_stays_flat_over_many_inferences(tmp_path) -> None:
    rep = tmp_path / "r.json"
    p, _ = _timed(["run", "--model", "resnet18", "--size", "64", "--warmup", "3", "--repeat", "60",
                   "--report", str(rep)], ranks=2, timeout=180)
    assert p.returncode == 0, p.stderr
    for r in json.loads(rep.read_text())["per_rank"]:
        assert r["rss_mb_end"] <= 1.05 * r["rss_mb_start"], r


def test_a_rank_holds_no_memory_of_the_weights_it_dropped(tmp_path) -> None:
    """VGG-16's classifier (495 MB) stays on rank 0 alone; rank 1 loaded it too and dropped it at set-up, and
    must have handed it back although freed maps are kept for reuse (runtime.memory)."""
    rep = tmp_path / "r.json"
    p, _ = _timed(["run", "--model", "vgg16", "--size", "224", "--strategy", "nptp", "--repeat", "1",
                   "--report", str(rep)], ranks=2, timeout=180)
    assert p.returncode == 0, p.stderr
    r0, r1 = json.loads(rep.read_text())["per_rank"]
    assert r0["weights_mb"] - r1["weights_mb"] > 400
    assert r0["rss_mb_start"] - r1["rss_mb_start"] > 300, (r0, r1)


def test_run_sh_refuses_bad_hostfiles(tmp_path) -> None:
    bad = tmp_path / "hosts.txt"
    bad.write_text("pi1:2\npi2 slots=two\n")
    for path, needle in ((bad, "line 2"), (tmp_path / "missing.txt", "no such file")):
        p = subprocess.run([str(ROOT / "run.sh"), "run", "--hostfile", str(path), *SMALL], capture_output=True,
                           text=True, timeout=120, cwd=ROOT)
        assert p.returncode == 2 and needle in p.stderr, p.stderr
        assert p.stderr.strip().splitlines()[-1].startswith("nptp-mpi: error: hostfile")


def test_run_sh_runs_on_a_hostfile() -> None:
    p = subprocess.run([str(ROOT / "run.sh"), "run", "-n", "2", "--hostfile", "hostfiles/localhost.txt", *SMALL],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert "2 rank(s)" in p.stdout


def test_hostfile_syntaxes_convert() -> None:
    from nptp_mpi.io.hostfile import parse, render

    path = ROOT / "hostfiles" / "pis.openmpi.txt"
    assert render(parse(str(path)), "mpich") == "pi1:1\npi2:1\npi3:1\npi4:1\n"
    assert parse(str(ROOT / "hostfiles" / "pis.txt")) == parse(str(path))
    assert parse(str(ROOT / "hostfiles" / "localhost.txt")) == [("localhost", 4, None)]


def test_max_slots_is_kept_for_open_mpi_and_its_loss_said_for_mpich(tmp_path) -> None:
    from nptp_mpi.io.hostfile import dropped, parse, render

    path = tmp_path / "h.txt"
    path.write_text("pi1 slots=2 max_slots=4\npi2 slots=1\n")
    hosts = parse(str(path))
    assert render(hosts, "openmpi") == "pi1 slots=2 max_slots=4\npi2 slots=1\n"
    assert render(hosts, "mpich") == "pi1:2\npi2:1\n" and "pi1 (max_slots=4)" in dropped(hosts, "mpich")
    assert dropped(hosts, "openmpi") is None
    p = run_cli(["hostfile", str(path)])
    assert p.returncode == 0 and p.stdout == "pi1:2\npi2:1\n" and "no max_slots" in p.stderr
