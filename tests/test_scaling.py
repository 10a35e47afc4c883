"""`bench scaling`: the case list, and a tiny real run writing CSV, JSON and a plot."""

from __future__ import annotations

import csv
import json

from conftest import run_cli

from nptp_mpi.scaling import cases


def test_one_board_is_one_case_per_model_and_size() -> None:
    got = cases(["resnet18"], ["64", "96"], ["coedge", "nptp"], [1, 2, 3], ["on", "off"])
    assert len(got) == 2 * (1 + 2 * 2 * 2)
    assert sum(c["ranks"] == 1 for c in got) == 2


def test_tiny_scaling_run_writes_table_json_and_plot(tmp_path) -> None:
    out = tmp_path / "res"
    p = run_cli(["bench", "scaling", "--models", "resnet18", "--sizes", "64", "--ranks", "1,2,3", "--strategies",
                 "coedge,nptp", "--repeat", "1", "--warmup", "0", "-o", str(out)], timeout=300)
    assert p.returncode == 0, p.stderr
    assert "[5/5]" in p.stderr  # progress, one line per case
    rows = list(csv.DictReader((out / "scaling.csv").open()))
    assert len(rows) == 5 and json.loads((out / "scaling.json").read_text())["rows"][0]["ranks"] == 1
    assert float(rows[0]["speedup"]) == 1.0
    # 64x64 ResNet-18 has 2x2 cells: three strips cannot fit, and the row says so instead of stopping the run
    coedge3 = next(r for r in rows if r["strategy"] == "coedge" and r["ranks"] == "3")
    assert "largest" in coedge3["error"]
    ok = [r for r in rows if not r["error"]]
    assert all(float(r["latency_s"]) > 0 for r in ok) and len(ok) == 4
    assert (out / "scaling.png").read_bytes()[:4] == b"\x89PNG"


def test_scaling_adds_predictions_from_a_calibration(tmp_path) -> None:
    cal = tmp_path / "cal.json"
    board = {"host": "b", "flops_per_s": 2e10, "layer_overhead_s": 1e-4}
    cal.write_text(json.dumps({"version": 1, "date": "2026-11-23", "host": "b", "pairs": [],
                               "boards": [{"rank": r, **board} for r in range(2)],
                               "links": {"alpha_s": 1e-4, "bytes_per_s": 1.25e7, "shared": True}}))
    out = tmp_path / "res"
    p = run_cli(["bench", "scaling", "--models", "resnet18", "--sizes", "64", "--ranks", "1,2", "--strategies",
                 "nptp", "--repeat", "1", "--warmup", "0", "--calibration", str(cal), "-o", str(out)], timeout=300)
    assert p.returncode == 0, p.stderr
    rows = json.loads((out / "scaling.json").read_text())["rows"]
    assert len(rows) == 2 and all(r["predicted_s"] > 0 for r in rows)
    assert "predicted" in p.stdout
