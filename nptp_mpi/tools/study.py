"""`bench study`: the scaling study of the papers, on Pi-class boards of the virtual cluster.

For each link setting (switched or shared, at a rate) the cluster comes up with the largest board count, every
board capped at the same share of a core; then, on board 0 alone, our one-board latency and onnxruntime's (one
thread, same cap: `bench models`), the baseline a user would otherwise run; optionally a calibration of those
boards and links (`calibrate --model`), which every run plans for and which predicts each case; then every
case of `bench scaling` (boards × strategy × model × size) through the cluster's launcher. Rows gather in
study.csv and study.json with the setting and the baselines; study.png draws latency against boards, one panel
per model, size and setting, with onnxruntime's and our one-board latency as lines. Each setting's own
scaling.csv/json/png (speedup, halo bytes, measured against predicted) lands in a folder named after it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from nptp_mpi.errors import UsageError
from nptp_mpi.io.outputs import atomic_write_text
from nptp_mpi.model.load import parse_size
from nptp_mpi.tools import cluster
from nptp_mpi.tools.scaling import FIELDS, bench_scaling, save_plot, to_csv

STUDY_FIELDS = ("links", "cpu", *FIELDS, "ours_one_board_s", "ort_one_board_s", "vs_ort")


def parse_links(text: str) -> list[tuple[str, str, bool]]:
    """--links switched:100mbit,shared:20mbit → [(name, rate, shared)]."""
    out = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        mode, _, rate = item.partition(":")
        if mode not in ("switched", "shared") or not rate:
            raise UsageError(f"--links {text!r}: give settings like switched:100mbit or shared:20mbit")
        cluster.parse_rate(rate)
        out.append((f"{mode}-{rate}", rate, mode == "shared"))
    if not out:
        raise UsageError("--links: give at least one setting, e.g. switched:100mbit")
    return out


def _cluster(*args: str) -> None:
    p = subprocess.run([sys.executable, "-m", "nptp_mpi.tools.cluster", *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise UsageError(f"cluster {args[0]}: {p.stderr.strip() or p.stdout.strip()}")


def _on_board0(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """python -m nptp_mpi ARGS in board 0 alone (its cap, its namespace)."""
    return subprocess.run([str(cluster.LAUNCHER), cluster.board_ip(0), sys.executable, "-m", "nptp_mpi", *args],
                          capture_output=True, text=True, timeout=timeout)


def one_board(models: list[str], sizes: list[str], rounds: int, timeout: float) -> dict[tuple[str, tuple], dict]:
    """Ours and onnxruntime on board 0, one thread each, interleaved (`bench models`): per (model, (h, w))."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "models.json"
        p = _on_board0(["bench", "models", "--models", ",".join(models), "--sizes", ",".join(sizes), "--threads",
                        "1", "--rounds", str(rounds), "-o", str(out)], timeout)
        if p.returncode != 0 or not out.exists():
            raise UsageError(f"bench models on board 0 failed: {p.stderr.strip().splitlines()[-1:]}")
        rows = json.loads(out.read_text())
    return {(r["spec"], parse_size(r["size"])): r for r in rows}


def calibrate(n: int, shared: bool, model: str, size: str, path: Path, timeout: float) -> None:
    """The boards' and links' calibration, with per-layer times of model on every rank count up to n."""
    argv, env = cluster.launch_command([sys.executable, "-m", "nptp_mpi", "calibrate", "-o", str(path), "--model",
                                        model, "--size", size, "--ranks", ",".join(map(str, range(1, n + 1))),
                                        *(["--shared"] if shared else [])], n)
    p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0 or not path.exists():
        raise UsageError(f"calibrate on the boards failed: {p.stderr.strip().splitlines()[-1:]}")


def bench_study(models: list[str], sizes: list[str], strategies: list[str], boards: list[int], cpu: float,
                links: list[tuple[str, str, bool]], overlaps: list[str], warmup: int, repeat: int, rounds: int,
                timeout: float, out: Path, with_calibration: bool,
                progress: Callable[[str], None] = print) -> list[dict]:
    """Every setting, every case; writes study.csv, study.json, study.png (and per setting scaling.*) into out."""
    why = cluster.unsupported_reason()
    if why:
        raise UsageError(f"the study runs on the virtual board cluster: {why}")
    if len(models) > 1 and with_calibration:
        raise UsageError("--calibrate times one model's layers: give one model per study")
    out.mkdir(parents=True, exist_ok=True)
    launcher = f"{sys.executable} -m nptp_mpi.tools.cluster run -n {{n}} --"
    rows: list[dict] = []
    try:
        for name, rate, shared in links:
            progress(f"== {name}: {max(boards)} boards at {cpu:g} core")
            _cluster("up", str(max(boards)), "--cpu", f"{cpu:g}", "--rate", rate, *(["--shared"] if shared else []))
            base = one_board(models, sizes, repeat, timeout)
            for b in base.values():
                progress(f"one board {b['spec']} {b['size']}: ours {b['ms_ours'] / 1e3:.3f} s, onnxruntime "
                         f"{b['ms_ort'] / 1e3:.3f} s")
            plan_args, model = ["--bandwidth", rate, *(["--shared"] if shared else [])], None
            if with_calibration:
                from nptp_mpi.plan.calibration import load_calibration
                from nptp_mpi.plan.cost import links_given

                path = (out / name / "calibration.json").resolve()
                path.parent.mkdir(parents=True, exist_ok=True)
                calibrate(max(boards), shared, models[0], sizes[0], path, timeout)
                cal = load_calibration(str(path))
                model = (cal, links_given(rate, None, shared, cal.links))
                plan_args += ["--calibration", str(path)]
            got = bench_scaling(models, sizes, strategies, boards, overlaps, launcher, warmup, repeat, timeout,
                                out / name, model, plan_args, rounds)
            for r in got:
                b = base.get((r["model"], parse_size(r["size"])))
                r.update(links=name, cpu=cpu, ours_one_board_s=b and b["ms_ours"] / 1e3,
                         ort_one_board_s=b and b["ms_ort"] / 1e3)
                r["vs_ort"] = r["ort_one_board_s"] / r["latency_s"] if b and r.get("latency_s") else None
            rows += got
    finally:
        _cluster("down")
    public = [{k: r.get(k) for k in STUDY_FIELDS} for r in rows]
    atomic_write_text(str(out / "study.csv"), to_csv(public, STUDY_FIELDS))
    atomic_write_text(str(out / "study.json"), json.dumps({"cpu": cpu, "warmup": warmup, "repeat": repeat,
                                                           "rounds": rounds, "rows": public}, indent=1) + "\n")
    try:
        plot(public, out / "study.png")
    except ImportError:
        progress("matplotlib is not installed: no plot (pip install nptp-mpi[plot])")
    return public


def plot(rows: list[dict], path: Path) -> None:
    """Latency against boards per strategy, one panel per (model, size) × setting, with onnxruntime's and our
    one-board latency as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    groups = sorted({(r["model"], r["size"]) for r in rows})
    settings = list(dict.fromkeys(r["links"] for r in rows))
    fig, axes = plt.subplots(len(groups), len(settings), figsize=(4.6 * len(settings), 3.6 * len(groups)),
                             squeeze=False)
    for (model, size), line in zip(groups, axes, strict=True):
        for setting, ax in zip(settings, line, strict=True):
            mine = [r for r in rows if (r["model"], r["size"], r["links"]) == (model, size, setting)
                    and r.get("latency_s")]
            one = [r for r in mine if r["ranks"] == 1]
            for strategy in sorted({r["strategy"] for r in mine if r["ranks"] > 1}):
                pts = sorted(one + [r for r in mine if r["strategy"] == strategy], key=lambda r: r["ranks"])
                ax.plot([r["ranks"] for r in pts], [r["latency_s"] for r in pts], "o-", label=strategy, ms=4)
            base = next((r for r in mine if r.get("ort_one_board_s")), None)
            if base:
                ax.axhline(base["ort_one_board_s"], color="black", ls="--", lw=1, label="onnxruntime, 1 board")
                ax.axhline(base["ours_one_board_s"], color="grey", ls=":", lw=1, label="ours, 1 board (bench models)")
            ax.set_title(f"{model} {size}, {setting}", fontsize=10)
            ax.set_xlabel("boards")
            ax.set_ylabel("latency (s)")
            ax.set_ylim(bottom=0)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    save_plot(fig, path)


def format_study(rows: list[dict]) -> str:
    """One line per case: setting, model, size, boards, strategy, latency, speedup, against onnxruntime."""
    head = (f"{'links':<16} {'model':<9} {'size':>9} {'boards':>6} {'strategy':<8} {'latency':>9} {'pred':>8} "
            f"{'speedup':>7} {'vs ORT':>7} {'halo':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        start = f"{r['links']:<16} {r['model']:<9} {r['size']:>9} {r['ranks']:>6} {r['strategy']:<8}"
        if not r.get("latency_s"):
            lines.append(f"{start} {r.get('error')}")
            continue
        pred = f"{r['predicted_s']:>7.3f}s" if r.get("predicted_s") else f"{'-':>8}"
        speedup = f"{r['speedup']:>6.2f}x" if r.get("speedup") else f"{'-':>7}"
        vs = f"{r['vs_ort']:>6.2f}x" if r.get("vs_ort") else f"{'-':>7}"
        lines.append(f"{start} {r['latency_s']:>8.3f}s {pred} {speedup} {vs} {r['halo_bytes'] / 1e6:>7.2f}MB")
    return "\n".join(lines)
