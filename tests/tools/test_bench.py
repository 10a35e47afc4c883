"""`bench models` and `bench kernels` (one rank against onnxruntime), and the thread pools `--threads` sizes."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from conftest import run_cli

from nptp_mpi.cli.early import threads_asked
from nptp_mpi.errors import UsageError
from nptp_mpi.kernels import vectors
from nptp_mpi.model import zoo
from nptp_mpi.tools.bench import (
    KINDS,
    bench_convs,
    bench_models,
    conv_gaps,
    conv_layers,
    format_models,
    format_nodes,
    format_table,
    gaps_by_kind,
    kind,
)


def test_models_bench_times_both_engines_and_breaks_ours_down_by_op_kind() -> None:
    graph = zoo.build("mobilenet_v2", (64, 64))
    (row,) = bench_models([("mobilenet_v2", graph)], [1], rounds=2, progress=lambda _: None)
    assert row["ms_ours"] > 0 and row["ms_ort"] > 0 and row["ratio"] == row["ms_ours"] / row["ms_ort"]
    assert row["max_abs_err"] < 1e-3  # the same model on both sides
    parts = sum(row[f"ms_{k}"] for k in KINDS)
    assert 0.5 * row["ms_ours"] < parts <= row["ms_ours"] * 1.01  # (the rest: Python between the nodes)
    assert row["ms_depthwise"] > 0 and row["ms_conv1x1"] > 0
    assert "depthwise" in format_models([row]).splitlines()[0]
    assert row["finite"]


def test_models_bench_lists_the_convs_furthest_behind_onnxruntimes_inside_the_model() -> None:
    """--nodes N: our median per conv inside the model and onnxruntime's (its profiler), matched by weights' and
    output shape in order, the N furthest behind first; printed as a table after the models'."""
    graph = zoo.build("mobilenet_v2", (64, 64))
    (row,) = bench_models([("mobilenet_v2", graph)], [1], rounds=2, progress=lambda _: None, nodes=4)
    convs = {n.name: n for n in graph.nodes if n.op == "conv"}
    assert len(row["nodes"]) == 4 and [r["ms_gap"] for r in row["nodes"]] == sorted((r["ms_gap"] for r in row["nodes"]),
                                                                                     reverse=True)
    for r in row["nodes"]:
        node = convs[r["node"]]
        assert r["ms_ours"] > 0 and r["ms_ort"] > 0 and r["ms_gap"] == r["ms_ours"] - r["ms_ort"]
        assert r["kind"] == kind(graph, node) and r["weights"] == "×".join(map(str, node.params["w"].shape))
    kinds = {k["kind"]: k for k in row["node_kinds"]}  # (every conv matched, summed per kind)
    assert sum(k["convs"] for k in kinds.values()) > 4 and {r["kind"] for r in row["nodes"]} <= set(kinds)
    assert all(k["ms_gap"] == pytest.approx(k["ms_ours"] - k["ms_ort"]) for k in kinds.values())
    table = format_nodes([row]).splitlines()
    assert "by kind" in table[0] and table[1].split() == ["kind", "convs", "ours", "ort", "gap"]
    n = len(row["node_kinds"])
    assert table[3 + n:5 + n] == ["", "the convs furthest behind"]
    assert table[5 + n].split() == ["node", "kind", "weights", "out", "ours", "ort", "gap"]
    assert len(table) == 3 + n + 4 + 4 and format_nodes([{**row, "nodes": []}]) == ""


def test_the_gap_inside_a_model_is_summed_per_kind_of_conv() -> None:
    """gaps_by_kind: every matched conv counts once in its kind's sums; the kinds furthest behind first."""
    gaps = [{"kind": k, "ms_ours": ours, "ms_ort": ort, "ms_gap": ours - ort}
            for k, ours, ort in (("depthwise", 0.3, 0.1), ("conv1x1", 1.0, 1.1), ("depthwise", 0.2, 0.15),
                                 ("conv1x1", 0.5, 0.3), ("conv3x3", 0.5, 0.2))]
    got = gaps_by_kind(gaps)
    assert [g["kind"] for g in got] == ["conv3x3", "depthwise", "conv1x1"]
    assert [g["convs"] for g in got] == [1, 2, 2]
    assert got[1]["ms_ours"] == pytest.approx(0.5) and got[1]["ms_ort"] == pytest.approx(0.25)
    assert got[1]["ms_gap"] == pytest.approx(0.25) and got[2]["ms_gap"] == pytest.approx(0.1)
    assert gaps_by_kind([]) == []


def test_convs_are_matched_to_onnxruntimes_by_shape_in_order_and_unmatched_ones_left_out() -> None:
    """conv_gaps: onnxruntime's convs (ort_node_ms) matched to ours by weights' and output shape, in order among
    convs alike; one onnxruntime fused away, or whose shapes it changed, has no row."""
    graph = zoo.build("resnet18", (32, 32))
    convs = [n for n in graph.nodes if n.op == "conv"]
    theirs = [(tuple(n.params["w"].shape), tuple(graph.shapes[n.output]), 0.5 + i) for i, n in enumerate(convs)][1:]
    ours = {n.name: 10.0 for n in convs}
    rows = conv_gaps(graph, ours, theirs)
    assert len(rows) == len(convs) - 1 and convs[0].name not in {r["node"] for r in rows}
    by_name = {r["node"]: r for r in rows}
    same = [n for n in convs[1:] if n.params["w"].shape == convs[1].params["w"].shape
            and graph.shapes[n.output] == graph.shapes[convs[1].output]]
    assert len(same) > 1  # (several alike: matched in order)
    assert [by_name[n.name]["ms_ort"] for n in same] == sorted(by_name[n.name]["ms_ort"] for n in same)
    assert rows[0]["ms_gap"] == 10.0 - 1.5 and rows[-1]["ms_ort"] == 0.5 + len(convs) - 1


def test_models_bench_against_another_tree_times_its_engine_in_each_round(tmp_path) -> None:
    """--against DIR: DIR's engine and this tree's, each in a process of its own, on the same model and input, each
    timed in every round, DIR's output compared with ours; here the tree against itself (the same bits). A folder
    that is no tree, or one whose code cannot run the model, is one clear error naming it."""
    from pathlib import Path

    import nptp_mpi

    root = str(Path(nptp_mpi.__file__).resolve().parent.parent)
    graph = zoo.build("mobilenet_v2", (32, 32))
    said = []
    (row,) = bench_models([("mobilenet_v2", graph)], [1], rounds=2, progress=said.append, against=root)
    assert said[0].startswith(f"{root} and this tree") and "; in processes of their own, this tree " in said[1]
    assert row["ms_against"] > 0 and row["ms_tree"] > 0 and row["vs_against"] == row["ms_tree"] / row["ms_against"]
    assert row["spread_tree"] >= 0 and row["spread_against"] >= 0
    assert row["max_abs_diff_against"] == 0.0 and row["against"] == root
    assert "vs_against" in format_models([row]).splitlines()[0]
    with pytest.raises(UsageError, match="not an nptp-mpi source tree"):
        bench_models([("mobilenet_v2", graph)], [1], rounds=1, progress=lambda _: None, against=str(tmp_path))
    (tmp_path / "nptp_mpi").mkdir()
    (tmp_path / "nptp_mpi" / "__init__.py").write_text("")
    with pytest.raises(UsageError, match=f"--against {tmp_path}: its code could not run the model: {tmp_path}/kernels "
                       "holds no kernels"):
        bench_models([("mobilenet_v2", graph)], [1], rounds=1, progress=lambda _: None, against=str(tmp_path))
    # The tree's own kernels folder is imported, not the one an editable install's finder maps nptp_mpi.kernels to.
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("raise SystemExit('the kernels of the tree against')")
    with pytest.raises(UsageError, match="could not run the model: the kernels of the tree against$"):
        bench_models([("mobilenet_v2", graph)], [1], rounds=1, progress=lambda _: None, against=str(tmp_path))


def test_with_several_threads_each_timed_run_follows_a_pause_and_a_run_of_its_own(monkeypatch) -> None:
    """Interleaved back to back, each engine ran beside the other's spinning worker threads (both twice as slow at
    2 threads), and threads idle for 50 ms took 6-8 ms to wake: before every timed run with threads > 1 the bench
    waits SPIN_S, then runs that engine once untimed; with one thread it does neither."""
    from nptp_mpi.tools import bench

    events = []
    monkeypatch.setattr(bench, "limit_threads", lambda n: contextlib.nullcontext())  # (the suite's pool: 1 thread)
    monkeypatch.setattr(bench.time, "sleep", lambda s: events.append(("sleep", s)))
    from nptp_mpi.runtime import reference

    run = reference.run
    monkeypatch.setattr(reference, "run", lambda *a: events.append(("ours", "timed" if len(a) > 2 else "untimed"))
                        or run(*a))
    graph = zoo.build("mobilenet_v2", (32, 32))
    bench_models([("mobilenet_v2", graph)], [1, 2], rounds=3, progress=lambda _: None)
    one_thread = [("ours", "untimed")] + [("ours", "timed")] * 3  # a warm-up, then the rounds: no pause
    round_ = [("sleep", bench.SPIN_S), ("ours", "untimed"), ("ours", "timed"), ("sleep", bench.SPIN_S)]  # (+ ORT's)
    assert events == one_thread + [("ours", "untimed")] + round_ * 3


def test_a_model_whose_values_overflow_is_timed_with_a_warning() -> None:
    """A light file's 0.5-filled weights overflow to inf within a few blocks: the timings are of that arithmetic,
    and the bench says so instead of printing numpy's overflow warnings."""
    graph = zoo.build("resnet18", (32, 32))
    for n in graph.nodes:
        if n.op == "conv":
            n.params["w"] = np.full_like(n.params["w"], 0.5)
    said = []
    (row,) = bench_models([("resnet18", graph)], [1], rounds=1, progress=said.append)
    assert not row["finite"] and "inf or NaN" in said[0], said


def test_kernels_bench_times_each_distinct_conv_with_its_blas_floor() -> None:
    """One row per distinct conv layer; a plain conv also times its GEMM alone, a depthwise one has none; a 1×1
    the engines run between channel-blocked maps also times that (where the host has the vectors), others not."""
    layers = conv_layers(zoo.build("mobilenet_v2", (224, 224)))
    picked = [next(L for L in layers if L["groups"] == 1 and L["k"] == 3),
              next(L for L in layers if L["groups"] > 1),
              next(L for L in layers if L["k"] == 1 and L["cin"] == 320)]
    plain, depthwise, one = bench_convs(picked, repeat=3)
    assert plain["max_abs_err"] < 1e-3 and plain["ms_gemm"] > 0 and plain["ms_ort"] > 0
    assert depthwise["ms_gemm"] is None and plain["ms_blocked"] is None and depthwise["ms_blocked"] is None
    assert one["max_abs_err"] < 1e-3 and (one["ms_blocked"] > 0 if vectors.ENABLED else one["ms_blocked"] is None)
    table = format_table([plain, depthwise, one])
    assert "ms_blocked" in table.splitlines()[0] and " - " in table.splitlines()[3]


def test_op_kinds() -> None:
    g = zoo.build("resnet18", (64, 64))
    kinds = {kind(g, n) for n in g.nodes}
    assert {"conv3x3", "conv1x1", "conv other", "pooling", "fc"} <= kinds <= set(KINDS)


def test_the_command_prints_which_blas_ran_and_the_tables() -> None:
    p = run_cli(["bench", "models", "--models", "resnet18", "--sizes", "64", "--rounds", "1", "--nodes", "3"],
                timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("BLAS: ") and "resnet18 64x64 threads=1" in p.stdout and "conv3x3" in p.stdout
    assert "resnet18 64x64 threads=1: our convs against onnxruntime's inside the model, by kind" in p.stdout
    assert "\nthe convs furthest behind\n" in p.stdout
    for args in (["--threads", "0"], ["--nodes", "-1"]):
        bad = run_cli(["bench", "models", *args])
        assert bad.returncode == 2 and args[0] in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("argv,want", [([], None), (["run", "--threads", "3"], 3), (["bench", "models",
                                       "--threads=1,4,2"], 4), (["--threads", "x"], None)])
def test_thread_pools_are_sized_from_the_command_line_before_numpy_loads(argv, want) -> None:
    assert threads_asked(argv) == want


def test_a_host_with_more_ranks_times_threads_than_cores_is_warned_once(tmp_path) -> None:
    from nptp_mpi.cli.early import cores

    t = str(cores())  # 2 ranks × all the cores each
    p = run_cli(["run", "--model", "resnet18", "--size", "64", "--threads", t, "--verify"], ranks=2, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("warning:") == 1 and f"2 ranks × {t} threads on {t} cores" in p.stderr, p.stderr
    assert "(ok)" in p.stdout


def test_threads_change_no_output_beyond_the_tolerance(tmp_path) -> None:
    outs = []
    for t in ("1", "2"):
        out = tmp_path / f"y{t}.npy"
        p = run_cli(["run", "--model", "resnet18", "--size", "64", "--threads", t, "--output", str(out)], timeout=300)
        assert p.returncode == 0, p.stderr
        outs.append(np.load(out))
    assert np.abs(outs[0] - outs[1]).max() <= 1e-5 * np.abs(outs[0]).max()
