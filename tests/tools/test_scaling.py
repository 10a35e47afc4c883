"""`bench scaling`: the case list, a tiny real run writing CSV, JSON and a plot, and its predictions."""

from __future__ import annotations

import csv
import json
import statistics

import pytest
from conftest import run_cli

from nptp_mpi.model.load import load_model
from nptp_mpi.plan.calibration import BoardCal, Calibration, LayerRates, ModelCal, load_calibration
from nptp_mpi.plan.cost import Links, Setting, latency
from nptp_mpi.plan.geometry import area
from nptp_mpi.plan.plan import make_plan, pieces
from nptp_mpi.strategies import build
from nptp_mpi.tools.scaling import add_predictions, auto_vs_best, cases, merge_same_plans, pool, schedule


def test_one_board_is_one_case_per_model_and_size() -> None:
    got = cases(["resnet18"], ["64", "96"], ["coedge", "nptp"], [1, 2, 3], ["on", "off"])
    assert len(got) == 2 * (1 + 2 * 2 * 2)
    assert sum(c["ranks"] == 1 for c in got) == 2


def test_tiny_scaling_run_writes_table_json_and_plot(tmp_path) -> None:
    out = tmp_path / "res"
    p = run_cli(["bench", "scaling", "--models", "resnet18", "--sizes", "64", "--ranks", "1,2,5", "--strategies",
                 "d3,nptp", "--repeat", "1", "--warmup", "0", "--rounds", "2", "-o", str(out)], timeout=300)
    assert p.returncode == 0, p.stderr
    assert "[5/10]" in p.stderr and "[10/10]" in p.stderr  # progress, one line per job: every case, twice
    rows = list(csv.DictReader((out / "scaling.csv").open()))
    detail = json.loads((out / "scaling.json").read_text())["rows"]
    assert len(rows) == 5 and detail[0]["ranks"] == 1
    # the JSON keeps every job: its place in the run (each of the 10 once) and its inferences
    assert sorted(j["order"] for r in detail for j in r["jobs"]) == list(range(1, 11))
    assert all(len(r["jobs"]) == 2 for r in detail)
    assert all(r["latency_s"] == statistics.median(t for j in r["jobs"] for t in j["latencies_s"])
               for r in detail if r["latency_s"])
    assert float(rows[0]["speedup"]) == 1.0
    # 64x64 ResNet-18 has 2x2 cells: d3 (which re-cuts them at run time) cannot give 5 ranks a tile, and the row
    # says so instead of stopping the run (nptp tiles an earlier map)
    d3 = next(r for r in rows if r["strategy"] == "d3" and r["ranks"] == "5")
    assert "largest" in d3["error"]
    assert [j["latency_s"] for r in detail if r["error"] for j in r["jobs"]] == [None, None]
    ok = [r for r in rows if not r["error"]]
    assert all(float(r["latency_s"]) > 0 and float(r["spread"]) >= 1 for r in ok) and len(ok) == 4
    # memory per case: the largest rank's peak RSS and weights (one board holds the whole model)
    assert all(float(r["max_rss_peak_mb"]) > float(r["max_weights_mb"]) > 0 for r in ok)
    one = next(r for r in ok if r["ranks"] == "1")
    assert all(float(r["max_weights_mb"]) <= float(one["max_weights_mb"]) for r in ok)
    assert (out / "scaling.png").read_bytes()[:4] == b"\x89PNG"


def test_scaling_adds_predictions_from_a_calibration(tmp_path) -> None:
    cal = tmp_path / "cal.json"
    board = {"host": "b", "flops_per_s": 2e10, "layer_overhead_s": 1e-4}
    cal.write_text(json.dumps({"version": 1, "date": "2026-11-23", "host": "b", "pairs": [],
                               "boards": [{"rank": r, **board} for r in range(2)],
                               "links": {"alpha_s": 1e-4, "bytes_per_s": 1.25e7, "shared": True}}))
    out = tmp_path / "res"
    p = run_cli(["bench", "scaling", "--models", "resnet18", "--sizes", "64", "--ranks", "1,2", "--strategies",
                 "nptp,auto", "--repeat", "1", "--warmup", "0", "--calibration", str(cal), "--bandwidth", "1mbit",
                 "-o", str(out)], timeout=300)
    assert p.returncode == 0, p.stderr
    rows = json.loads((out / "scaling.json").read_text())["rows"]
    assert len(rows) == 3 and all(r["predicted_s"] > 0 for r in rows)
    assert "predicted" in p.stdout
    # the runs plan for the same calibration and link as the prediction: auto's plan is the one predicted
    graph = load_model("resnet18", (64, 64), None)
    setting = Setting(load_calibration(str(cal)).to_boards(2, graph.name), Links(1e-4, 1.25e5, True), given=True)
    auto = next(r for r in rows if r["strategy"] == "auto")
    assert auto["plan"] == build(graph, 2, "auto", setting=setting).strategy
    assert auto["predicted_s"] == pytest.approx(latency(graph, build(graph, 2, "auto", setting=setting), setting))
    assert f"auto ran {auto['plan']}" in p.stdout


def test_rounds_pool_every_inference_of_a_case() -> None:
    """The latency is the median of all inferences of all rounds (not of the rounds' medians); spread is the
    slowest round's median over the fastest's; a failed round fails the case."""
    jobs = [{"strategy": "nptp", "latency_s": 1.0, "latencies_s": [0.9, 1.0, 1.0]},
            {"strategy": "nptp", "latency_s": 1.2, "latencies_s": [1.2, 1.2, 1.3]}]
    row = pool(jobs)
    assert row["latency_s"] == 1.1 and row["spread"] == pytest.approx(1.2)
    assert pool([*jobs, {"strategy": "nptp", "error": "timed out"}])["error"] == "timed out"


def test_rounds_run_every_case_once_each_in_a_shuffled_order() -> None:
    """Drift within a round must not always land on the same case (auto right after tail, say)."""
    order = schedule(10, 3)
    rounds = [order[:10], order[10:20], order[20:]]
    assert rounds[0] == list(range(10)) and all(sorted(r) == list(range(10)) for r in rounds)
    assert rounds[1] != rounds[0] and rounds[2] != rounds[1] and order == schedule(10, 3)
    assert schedule(4, 1) == [0, 1, 2, 3]


def test_cases_that_ran_one_plan_are_one_measurement() -> None:
    """auto and the scheme it chose ran the same plan: all their jobs pool, each keeps its own median too."""
    def row(strategy: str, fingerprint: str, *jobs: list[float], ranks: int = 2) -> dict:
        return {"model": "m", "size": "64", "ranks": ranks, "overlap": "on", "strategy": strategy,
                **pool([{"latency_s": sorted(j)[len(j) // 2], "latencies_s": j, "fingerprint": fingerprint}
                        for j in jobs])}
    rows = [row("tail", "f1", [1.0, 1.0, 1.1], [1.2, 1.2, 1.2]), row("nptp", "f2", [0.9, 0.9, 0.9]),
            row("auto", "f1", [1.3, 1.3, 1.4]), row("-", "f1", [2.0], ranks=1)]
    merge_same_plans(rows)
    tail, nptp, auto, one = rows
    assert tail["latency_s"] == auto["latency_s"] == 1.2 and tail["spread"] == auto["spread"] == pytest.approx(1.3)
    assert (tail["own_latency_s"], auto["own_latency_s"]) == (pytest.approx(1.15), 1.3)
    assert (tail["same_plan"], auto["same_plan"], nptp["same_plan"], one["same_plan"]) == ("auto", "tail", "", "")
    assert nptp["latency_s"] == nptp["own_latency_s"] == 0.9 and one["latency_s"] == 2.0


def test_auto_is_compared_with_the_best_measured_strategy() -> None:
    case = {"model": "m", "size": "64", "ranks": 2, "overlap": "on"}
    rows = [{**case, "strategy": s, "plan": p, "latency_s": t} for s, p, t in
            (("coedge", "coedge", 1.2), ("nptp", "nptp", 1.0), ("auto", "auto:nptp", 1.05))]
    rows.append({**case, "ranks": 1, "strategy": "-", "plan": "nptp", "latency_s": 0.5})
    assert auto_vs_best(rows) == ["m 64 2 ranks overlap on: auto ran auto:nptp, 1.050x the best (nptp), 0.875x coedge"]
    rows[2]["same_plan"] = "nptp"
    assert auto_vs_best(rows)[0].endswith("0.875x coedge (same plan as nptp: measured together)")
    rows[1]["spread"] = 1.04  # 5% slower than nptp, whose jobs lay 4% apart: told apart
    assert "1.050x the best (nptp), 0.875x" in auto_vs_best(rows)[0]
    rows[2]["spread"] = 1.12  # auto's own jobs lay 12% apart: not
    assert "1.050x the best (nptp) (inside the jobs' spread of 1.12), 0.875x coedge" in auto_vs_best(rows)[0]


def test_predictions_use_the_layer_rates_of_the_same_model() -> None:
    g = load_model("resnet18", (64, 64), None)
    nodes = [n for n in g.nodes if n.spatial]

    def predicted(model: str | None, rate: float = 0.0) -> float:
        layers = ModelCal(model, (3, 64, 64), "nptp", 0.0, (LayerRates(1, ({n.name: rate for n in nodes},)),))
        cal = Calibration((BoardCal(0, "b", 2e10, 0.0),), None, "2026-11-23", "b", (), layers if model else None)
        rows = [{"model": "resnet18", "size": "64", "ranks": 2, "_strategy": "nptp", "_overlap": "off",
                 "overlap_ran": "off", "latency_s": 1.0}]
        add_predictions(rows, cal, Links(0.0, 1e9, False))
        return rows[0]["predicted_s"]

    plan = make_plan(g, 2, "nptp")
    slowest = sum(max(sum(area(p) for part in pieces(plan, g, n, r) for p in part) for r in range(2)) for n in nodes)
    assert predicted("resnet18", 1e-6) - predicted("resnet18", 1e-9) == pytest.approx((1e-6 - 1e-9) * slowest)
    assert predicted("vgg16", 1e-6) == predicted(None)  # rates of another model are not used


def test_no_prediction_for_a_plan_the_run_did_not_measure(capsys) -> None:
    cal = Calibration((BoardCal(0, "b", 2e10, 0.0),), None, "2026-11-23", "b", (), None)
    case = {"model": "resnet18", "size": "64", "ranks": 2, "strategy": "nptp", "_strategy": "nptp", "_overlap": "off",
            "overlap_ran": "off", "latency_s": 1.0}
    ran = build(load_model("resnet18", (64, 64), None), 2, "nptp",
                setting=Setting(cal.to_boards(2, "resnet18"), Links(0.0, 1e9, False), given=True))
    rows = [{**case, "fingerprint": ran.fingerprint()}, {**case, "fingerprint": "0" * 16}]
    add_predictions(rows, cal, Links(0.0, 1e9, False))
    assert rows[0]["predicted_s"] > 0 and "predicted_s" not in rows[1]
    assert f"measured plan {'0' * 16}, the model predicts {ran.fingerprint()}" in capsys.readouterr().err
