"""The command line as users run it: mpiexec jobs, reports, output files, and every error path ending fast."""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest
from conftest import assert_close, run_cli

SMALL = ["--model", "resnet18", "--size", "96x128"]


def test_run_writes_output_report_and_picture(tmp_path) -> None:
    out, rep, png = tmp_path / "y.npy", tmp_path / "r.json", tmp_path / "tiles.png"
    p = run_cli(["run", *SMALL, "--strategy", "nptp", "--verify", "--repeat", "2", "--output", str(out),
                 "--report", str(rep), "--png", str(png)], ranks=3)
    assert p.returncode == 0, p.stderr
    report = json.loads(rep.read_text())
    for key in ("strategy", "ranks", "latency_s", "halo_bytes", "per_rank"):
        assert key in report
    assert report["ranks"] == 3 and report["strategy"] == "nptp"
    assert report["pixels"] is True  # the sample picture travels as 8-bit pixels
    assert report["halo_bytes"] == report["plan_halo_bytes"] > 0
    assert report["verify_rel_error"] <= 1e-5
    assert [r["rank"] for r in report["per_rank"]] == [0, 1, 2]
    for r in report["per_rank"]:
        assert {"host", "tile", "compute_s", "comm_s", "bytes_sent", "bytes_recv"} <= r.keys()
    assert sum(r["bytes_sent"] for r in report["per_rank"]) == report["halo_bytes"]
    assert np.load(out, allow_pickle=False).shape == (1, 1000)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "seeded random weights" in p.stdout and "verify" in p.stdout
    assert p.stdout.count("latency") == 1  # one table, from rank 0 only


def test_input_tensor_matches_reference(tmp_path) -> None:
    from nptp_mpi.model import zoo
    from nptp_mpi.runtime.reference import run as reference

    x = np.random.default_rng(3).standard_normal((3, 96, 128), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    p = run_cli(["run", *SMALL, "--strategy", "grid", "--input", str(tmp_path / "x.npy"),
                 "--output", str(tmp_path / "y.npy")], ranks=2)
    assert p.returncode == 0, p.stderr
    want = reference(zoo.build("resnet18", (96, 128)), x)
    assert_close(np.load(tmp_path / "y.npy")[0], want, 1e-5)


def test_plan_json_without_mpi() -> None:
    p = run_cli(["plan", "--model", "vgg16", "--size", "224", "--ranks", "4", "--strategy", "nptp", "--json"])
    assert p.returncode == 0, p.stderr
    plan = json.loads(p.stdout)
    assert plan["strategy"] == "nptp" and plan["ranks"] == 4 and len(plan["tiles"]) == 4
    assert plan["halo_bytes"] == sum(r["bytes_recv"] for r in plan["per_rank"]) > 0
    assert plan["pixels"] is True  # as run plans for its default input, a picture
    p = run_cli(["plan", "--model", "vgg16", "--size", "224", "--ranks", "4", "--strategy", "nptp", "--json",
                 "--tensor-input"])
    values = json.loads(p.stdout)
    assert values["pixels"] is False and values["scatter_bytes"] == 4 * plan["scatter_bytes"] > 0


def test_overlap_auto_follows_the_links(tmp_path) -> None:
    """--overlap auto (the default) computes tiles in one piece where links are fast (nothing to hide, and the
    strips cost compute) and overlaps where they are slow; plan and run agree, and the report says which."""
    for bandwidth, mode in (("10gbit", "off"), ("1mbit", "on")):
        args = [*SMALL, "--strategy", "nptp", "--bandwidth", bandwidth]
        p = run_cli(["plan", *args, "--ranks", "2", "--json"])
        assert p.returncode == 0 and json.loads(p.stdout)["overlap"] == mode, (bandwidth, p.stderr)
        rep = tmp_path / f"{mode}.json"
        p = run_cli(["run", *args, "--verify", "--report", str(rep)], ranks=2)
        assert p.returncode == 0, p.stderr
        report = json.loads(rep.read_text())
        assert report["overlap"] == mode and report["verify_rel_error"] <= 1e-5


def test_export_writes_onnx(tmp_path) -> None:
    p = run_cli(["export", "--model", "mobilenet_v2", "--size", "64", "-o", str(tmp_path / "m.onnx")])
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "m.onnx").stat().st_size > 1000


def _fails_fast(args, ranks, needle, code=2, limit=60.0, env=None):
    t0 = time.monotonic()
    p = run_cli(args, ranks=ranks, timeout=limit, env=env)
    assert p.returncode == code if code else p.returncode != 0, (p.returncode, p.stderr)
    assert needle in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    return p, time.monotonic() - t0


@pytest.mark.parametrize("args, needle", [
    (["--strategy", "d3", "--model", "resnet18", "--size", "32"], "largest"),  # 1x1 cells, and d3 re-cuts them
    (["--strategy", "zigzag", *SMALL], "zigzag"),
    (["--speeds", "1,x,1", *SMALL], "speeds"),
    (["--speeds", "1,1", *SMALL], "speeds"),
    (["--model", "nosuchnet"], "nosuchnet"),
    (["--warmup", "x", *SMALL], "--warmup"),
    (["--model", "resnet18", "--size", "0x5"], "--size"),
    (["--image", "/nonexistent.png", *SMALL], "nonexistent"),
])
def test_bad_arguments_end_every_rank_with_one_message(args, needle) -> None:
    p, _ = _fails_fast(["run", *args], ranks=3, needle=needle)
    assert p.stderr.count("nptp-mpi: error") == 1, p.stderr


def test_failure_on_one_rank_at_startup_is_reported_once() -> None:
    p, _ = _fails_fast(["run", *SMALL], ranks=3, needle="rank 1", env={"NPTP_FAULT": "1:setup"})
    assert p.stderr.count("nptp-mpi: error") == 1 and "injected fault" in p.stderr


def test_failure_on_one_rank_mid_run_aborts_the_job() -> None:
    p, took = _fails_fast(["run", *SMALL, "--repeat", "3"], ranks=3, needle="rank 2", code=None,
                          env={"NPTP_FAULT": "2:infer"})
    assert f"host {socket.gethostname()}" in p.stderr and "injected fault" in p.stderr
    assert took < 60


def test_bad_input_files_give_one_line_and_exit_2(tmp_path) -> None:
    import onnx
    from onnx import TensorProto, helper

    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    nan = np.zeros((3, 96, 128), np.float32)
    nan[0, 1, 2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "shape.npy", np.zeros((3, 50, 50), np.float32))
    node = helper.make_node("Resize", ["x"], ["y"], name="up1")
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, (1, 3, 8, 8)) for n in ("x", "y")]
    onnx.save(helper.make_model(helper.make_graph([node], "g", io[:1], io[1:])), tmp_path / "resize.onnx")
    cases = [(["--image", str(tmp_path / "bad.png")], "bad.png"),
             (["--input", str(tmp_path / "nan.npy")], "NaN"),
             (["--input", str(tmp_path / "shape.npy")], "expected"),
             (["--model", str(tmp_path / "resize.onnx")], "Resize"),
             (["--output", str(tmp_path / "no" / "dir" / "y.npy")], "not writable")]
    for args, needle in cases:
        p = run_cli(["run", *SMALL, *args])
        assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    p = run_cli(["run", "--model", str(tmp_path / "resize.onnx")])
    assert "up1" in p.stderr and "resize.onnx" in p.stderr


def test_auto_speeds_are_measured_and_agreed(tmp_path) -> None:
    rep = tmp_path / "r.json"
    p = run_cli(["run", *SMALL, "--speeds", "auto", "--verify", "--report", str(rep)], ranks=2)
    assert p.returncode == 0, p.stderr
    report = json.loads(rep.read_text())
    assert len(report["speeds"]) == 2 and min(report["speeds"]) > 0
    assert report["verify_rel_error"] <= 1e-5


def test_plan_predicts_latency_per_strategy(tmp_path) -> None:
    cal = tmp_path / "cal.json"
    p = run_cli(["calibrate", "-o", str(cal), "--repeat", "1", "--pings", "5", "--large-mb", "1"], ranks=2)
    assert p.returncode == 0, p.stderr
    p = run_cli(["plan", "--model", "resnet18", "--size", "224", "--ranks", "2", "--calibration", str(cal),
                 "--bandwidth", "100mbit", "--latency", "1ms", "--shared", "--json"])
    assert p.returncode == 0, p.stderr
    pred = json.loads(p.stdout)["predicted"]
    assert "shared 100 Mbit/s" in pred["model"]
    rows = {r["strategy"]: r for r in pred["strategies"]}
    assert set(rows) == {"coedge", "grid", "nptp", "fused", "halp", "iop", "tail", "mixed"}
    assert 0 < rows["nptp"]["latency_s"] <= rows["coedge"]["latency_s"] + 1e-9
    assert rows["fused"]["latency_s"] <= rows["nptp"]["latency_s"] + 1e-9  # no blocks is always a choice
    chosen = json.loads(p.stdout)["strategy"]
    assert chosen.startswith("auto:") and rows[chosen[5:]]["latency_s"] == min(r["latency_s"] for r in rows.values())
    bad = run_cli(["plan", "--model", "resnet18", "--ranks", "2", "--bandwidth", "fast"])
    assert bad.returncode == 2 and "fast" in bad.stderr


def test_help_names_every_command_and_errors_point_to_the_right_help() -> None:
    from nptp_mpi.cli.args import COMMANDS

    top = run_cli(["--help"])
    assert top.returncode == 0 and all(f"    {c} " in top.stdout for c in COMMANDS), top.stdout
    bogus = run_cli(["bogus"])
    assert bogus.returncode == 2 and bogus.stderr == ("nptp-mpi: error: unknown command 'bogus': use one of "
                                                      f"{', '.join(COMMANDS)} (see: python -m nptp_mpi --help)\n")
    zig = run_cli(["run", "--strategy", "zig"])
    assert zig.returncode == 2 and "invalid choice: 'zig'" in zig.stderr and "'nptp'" in zig.stderr
    assert zig.stderr.rstrip().endswith("(see: python -m nptp_mpi run --help)") and zig.stderr.count("\n") == 1
