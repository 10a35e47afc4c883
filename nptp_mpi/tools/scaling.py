"""`bench scaling`: latency against boards, image size and strategy, written as CSV, JSON and plots.

Each case is one `run` job (warm-up, repeats, median) started through a launcher template, so the
same benchmark runs on one machine, on real boards (`-f hostfile` in the template) or on the virtual
board cluster (`./run.sh cluster run -n {n} --`). One board is one case per model and size: with one
rank every strategy is the same single tile. With rounds > 1 every case runs that many jobs, all cases
once per round (after the first, in a shuffled order, so no case always follows the same one), and its
latency is the median of all their inferences: on a shared machine two jobs of the same plan can differ
by 10% and more, and rounds spread what drifts over every case alike. Cases that ran the same plan (auto
and the scheme it chose: one fingerprint) are one measurement: their inferences pool too, own_latency_s
keeps each case's own. scaling.json keeps every job of a case (its place in the run and its inferences),
so that the noise can be looked at afterwards.
"""

from __future__ import annotations

import csv
import io
import json
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from nptp_mpi.io.outputs import atomic_write, atomic_write_text

FIELDS = ("model", "size", "strategy", "overlap", "overlap_ran", "ranks", "plan", "fingerprint", "latency_s",
          "own_latency_s", "same_plan", "spread", "predicted_s", "speedup",
          "halo_bytes", "max_rank_bytes", "compute_s", "comm_s", "max_rss_peak_mb", "max_weights_mb", "hosts", "error")
JOB_FIELDS = ("order", "latency_s", "latencies_s")  # per job in scaling.json: its place in the run (1 = first)


def default_launcher() -> str:
    """The launcher run.sh uses, with the flags it needs (tools.launcher)."""
    from nptp_mpi.tools.launcher import find

    return " ".join([*find().command(), "-n", "{n}", sys.executable, "-m", "nptp_mpi"])


def cases(models: list[str], sizes: list[str], strategies: list[str], ranks: list[int],
          overlaps: list[str]) -> list[dict]:
    """Every combination, one-rank cases once per model and size (strategy and overlap are moot there)."""
    out = []
    for model in models:
        for size in sizes:
            for n in ranks:
                for strategy in strategies if n > 1 else strategies[:1]:
                    for overlap in overlaps if n > 1 else overlaps[:1]:
                        out.append({"model": model, "size": size, "strategy": strategy if n > 1 else "-",
                                    "overlap": overlap if n > 1 else "-", "ranks": n,
                                    "_strategy": strategy, "_overlap": overlap})
    return out


def schedule(cases: int, rounds: int) -> list[int]:
    """The order of the jobs, as case indices: every case once per round, the first round in order, each
    later one shuffled (seeded by its number: the same order every time)."""
    order = list(range(cases))
    return order + [i for k in range(1, rounds) for i in random.Random(k).sample(order, cases)]


def run_case(case: dict, launcher: str, warmup: int, repeat: int, timeout: float, plan_args: list[str]) -> dict:
    """One `run` job, planning for plan_args (the cost model's flags); the row holds the report's medians and
    the plan it ran (auto's choice), or the job's one-line error."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "r.json"
        cmd = [*shlex.split(launcher.format(n=case["ranks"])), "run", "--model", case["model"], "--size",
               case["size"], "--strategy", case["_strategy"], "--overlap", case["_overlap"], "--warmup",
               str(warmup), "--repeat", str(repeat), "--report", str(report), *plan_args]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {**case, "error": f"timed out after {timeout:g} s"}
        if p.returncode != 0 or not report.exists():
            lines = [ln for ln in p.stderr.splitlines() if "error" in ln] or p.stderr.splitlines() or ["failed"]
            return {**case, "error": lines[0].strip()}
        rep = json.loads(report.read_text())
    ranks = rep["per_rank"]
    return {**case, "overlap_ran": rep["overlap"], "_pixels": rep["pixels"], "plan": rep["strategy"],
            "fingerprint": rep["plan_fingerprint"], "latency_s": rep["latency_s"], "latencies_s": rep["latencies_s"],
            "halo_bytes": rep["halo_bytes"],
            "max_rank_bytes": max(r["bytes_sent"] + r["bytes_recv"] for r in ranks),
            "compute_s": max(r["compute_s"] for r in ranks), "comm_s": max(r["comm_s"] for r in ranks),
            "max_rss_peak_mb": max(r["rss_peak_mb"] for r in ranks),
            "max_weights_mb": max(r["weights_mb"] for r in ranks),
            "hosts": " ".join(sorted({r["host"] for r in ranks})), "error": ""}


def pool(jobs: list[dict]) -> dict:
    """One case's row from its jobs (one per round): the first's facts, the median of every inference, and
    spread = the slowest job's median over the fastest's; the first error if any job failed."""
    failed = [j for j in jobs if not j.get("latency_s")]
    if failed:
        return {**failed[0], "jobs": jobs}
    medians = [j["latency_s"] for j in jobs]
    return {**jobs[0], "latency_s": statistics.median(t for j in jobs for t in j["latencies_s"]),
            "spread": max(medians) / min(medians), "jobs": jobs}


def merge_same_plans(rows: list[dict]) -> None:
    """Cases of one model, size, ranks and overlap that ran the same plan (fingerprint) take the latency and
    spread of all their jobs together; own_latency_s keeps each case's own, same_plan names the others."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        r["own_latency_s"], r["same_plan"] = r.get("latency_s"), ""
        if r.get("latency_s"):
            groups.setdefault((r["model"], r["size"], r["ranks"], r["overlap"], r["fingerprint"]), []).append(r)
    for group in (g for g in groups.values() if len(g) > 1):
        merged = pool([j for r in group for j in r["jobs"]])
        for r in group:
            r.update(latency_s=merged["latency_s"], spread=merged["spread"],
                     same_plan=",".join(o["strategy"] for o in group if o is not r))


def add_predictions(rows: list[dict], calibration, links) -> None:
    """predicted_s from the cost model for each measured case: the plan the run made for the same
    calibration and links (run_case passes them on), predicted as `plan` does; left out, with a warning,
    where the plan built here is not the one the run measured (another fingerprint)."""
    from nptp_mpi.model.load import load_model, parse_size
    from nptp_mpi.plan.cost import Setting, latency
    from nptp_mpi.plan.plan import with_pixel_input
    from nptp_mpi.strategies import build

    graphs = {}  # one build per model and size: VGG's seeded weights take seconds
    for r in rows:
        if r.get("latency_s"):
            key = (r["model"], r["size"])
            if key not in graphs:
                graphs[key] = load_model(r["model"], parse_size(r["size"]), None)
            graph = graphs[key]
            n = r["ranks"]
            setting = Setting(calibration.to_boards(n, graph.name), links, r["_overlap"] != "off", given=True)
            plan = build(graph, n, r["_strategy"], setting=setting)
            plan = with_pixel_input(plan) if r.get("_pixels") else plan  # the sample picture's pixels, as run scatters
            predicted = plan.fingerprint()
            if r.get("fingerprint", predicted) != predicted:
                print(f"warning: no prediction for {r['model']} {r['size']} {n} ranks {r['strategy']}: the run "
                      f"measured plan {r['fingerprint']}, the model predicts {predicted}", file=sys.stderr)
                continue
            r["predicted_s"] = latency(graph, plan, replace(setting, overlap=r["overlap_ran"] == "on"))


def add_speedups(rows: list[dict]) -> None:
    """speedup = one board's latency / this case's, per model and size."""
    single = {(r["model"], r["size"]): r.get("latency_s") for r in rows if r["ranks"] == 1}
    for r in rows:
        base = single.get((r["model"], r["size"]))
        r["speedup"] = base / r["latency_s"] if base and r.get("latency_s") else None


def to_csv(rows: list[dict], fields: tuple[str, ...] = FIELDS) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def plot(rows: list[dict], path: Path) -> None:
    """One row of panels per model × size: latency, speedup over one board, halo bytes, against boards."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    groups = sorted({(r["model"], r["size"]) for r in rows}, key=lambda g: (g[0], int(g[1].split("x")[0])))
    panels = 4 if any(r.get("predicted_s") for r in rows) else 3
    fig, axes = plt.subplots(len(groups), panels, figsize=(4.4 * panels, 3.4 * len(groups)), squeeze=False)
    for (model, size), ax in zip(groups, axes, strict=True):
        mine = [r for r in rows if (r["model"], r["size"]) == (model, size) and r.get("latency_s")]
        one = [r for r in mine if r["ranks"] == 1]
        series = sorted({(r["strategy"], r["overlap"]) for r in mine if r["ranks"] > 1})
        for strategy, overlap in series:
            pts = sorted(one + [r for r in mine if (r["strategy"], r["overlap"]) == (strategy, overlap)],
                         key=lambda r: r["ranks"])
            label = strategy if len({o for _, o in series}) == 1 else f"{strategy}, overlap {overlap}"
            xs = [r["ranks"] for r in pts]
            ax[0].plot(xs, [r["latency_s"] for r in pts], "o-", label=label)
            ax[1].plot(xs, [r["speedup"] or 0 for r in pts], "o-", label=label)
            ax[2].plot(xs, [r["halo_bytes"] / 1e6 for r in pts], "o-", label=label)
            if panels == 4:
                ax[3].plot([r["predicted_s"] for r in pts], [r["latency_s"] for r in pts], "o", label=label)
        if mine:
            top = max(r["ranks"] for r in mine)
            ax[1].plot([1, top], [1, top], ":", color="grey", label="ideal")
        if panels == 4 and mine:
            top = max(max(r["latency_s"], r["predicted_s"] or 0) for r in mine)
            ax[3].plot([0, top], [0, top], ":", color="grey")
            ax[3].set_ylabel("measured (s)")
        titles = ("latency (s)", "speedup over 1 board", "halo per inference (MB)", "measured vs predicted (s)")
        for a, title in zip(ax, titles[:panels], strict=True):
            a.set_title(f"{model} {size}: {title}", fontsize=10)
            a.set_xlabel("predicted (s)" if title.startswith("measured") else "boards (ranks)")
            a.xaxis.set_major_locator(MaxNLocator(integer=True))
            a.grid(alpha=0.3)
        ax[0].legend(fontsize=8)
    save_plot(fig, path)


def save_plot(fig, path: Path) -> None:
    """A matplotlib figure as PNG, written atomically, then closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    atomic_write(str(path), lambda f: fig.savefig(f, format="png", dpi=90), "plot")
    plt.close(fig)


def bench_scaling(models: list[str], sizes: list[str], strategies: list[str], ranks: list[int], overlaps: list[str],
                  launcher: str, warmup: int, repeat: int, timeout: float, out: Path, model=None,
                  plan_args: list[str] = (), rounds: int = 1) -> list[dict]:
    """Run every case with progress on stderr; write scaling.csv, scaling.json and scaling.png into out."""
    out.mkdir(parents=True, exist_ok=True)
    todo = cases(models, sizes, strategies, ranks, overlaps)
    jobs: list[list[dict]] = [[] for _ in todo]
    for i, k in enumerate(schedule(len(todo), rounds), 1):
        case, t0 = todo[k], time.monotonic()
        row = run_case(case, launcher, warmup, repeat, timeout, list(plan_args))
        jobs[k].append({**row, "order": i})
        what = f"{row['latency_s']:.3f} s ({row['plan']})" if row.get("latency_s") else f"error: {row['error']}"
        print(f"[{i}/{len(todo) * rounds}] {case['model']} {case['size']} {case['ranks']} rank(s) {case['strategy']} "
              f"overlap {case['overlap']}: {what} ({time.monotonic() - t0:.0f} s wall)", file=sys.stderr, flush=True)
    rows = [pool(done) for done in jobs]
    merge_same_plans(rows)
    add_speedups(rows)
    if model is not None:
        add_predictions(rows, *model)
    public = [{k: r.get(k) for k in FIELDS} for r in rows]
    atomic_write_text(str(out / "scaling.csv"), to_csv(public))
    detail = [{**p, "jobs": [{k: j.get(k) for k in JOB_FIELDS} for j in r["jobs"]]}
              for p, r in zip(public, rows, strict=True)]
    atomic_write_text(str(out / "scaling.json"), json.dumps({"launcher": launcher, "warmup": warmup, "repeat": repeat,
                                                             "rounds": rounds, "rows": detail}, indent=1) + "\n")
    try:
        plot(public, out / "scaling.png")
    except ImportError:
        print("matplotlib is not installed: no plot (pip install nptp-mpi[plot])", file=sys.stderr)
    return public


def format_rows(rows: list[dict]) -> str:
    """The console table: one line per case, medians."""
    head = (f"{'model':<10} {'size':>9} {'ranks':>5} {'strategy':<8} {'overlap':<8} {'latency':>9} {'predicted':>9} "
            f"{'speedup':>7} {'halo':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ovl = f"auto:{r['overlap_ran']}" if r["overlap"] == "auto" and r.get("overlap_ran") else r["overlap"]
        case = f"{r['model']:<10} {r['size']:>9} {r['ranks']:>5} {r['strategy']:<8} {ovl:<8} "
        if r.get("latency_s"):
            pred = f"{r['predicted_s']:>8.3f}s" if r.get("predicted_s") else f"{'-':>9}"
            speedup = f"{r['speedup']:>6.2f}x" if r.get("speedup") else f"{'-':>7}"  # no one-board case to compare
            lines.append(f"{case}{r['latency_s']:>8.3f}s {pred} {speedup} {r['halo_bytes'] / 1e6:>7.2f}MB")
        else:
            lines.append(f"{case}{r['error']}")
    return "\n".join(lines)


def versus(a: dict, other: dict, what: str) -> str:
    """'1.014x what', and where auto is slower by less than the jobs of either row spread (with --rounds),
    that the measurement cannot tell the two apart."""
    ratio, spread = a["latency_s"] / other["latency_s"], max(a.get("spread") or 1.0, other.get("spread") or 1.0)
    return f"{ratio:.3f}x {what}" + (f" (inside the jobs' spread of {spread:.2f})" if 1.0 < ratio < spread else "")


def auto_vs_best(rows: list[dict]) -> list[str]:
    """Per case run with auto: its latency against the best measured other strategy and against CoEdge."""
    lines = []
    for a in (r for r in rows if r["strategy"] == "auto" and r.get("latency_s")):
        same = [r for r in rows if r.get("latency_s") and r["strategy"] not in ("auto", "-")
                and all(r[k] == a[k] for k in ("model", "size", "ranks", "overlap"))]
        if not same:
            continue
        best = min(same, key=lambda r: r["latency_s"])
        coedge = next((r for r in same if r["strategy"] == "coedge"), None)
        lines.append(f"{a['model']} {a['size']} {a['ranks']} ranks overlap {a['overlap']}: auto ran {a['plan']}, "
                     + versus(a, best, f"the best ({best['strategy']})")
                     + (", " + versus(a, coedge, "coedge") if coedge else "")
                     + (f" (same plan as {a['same_plan']}: measured together)" if a.get("same_plan") else ""))
    return lines
