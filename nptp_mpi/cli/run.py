"""`run`: one distributed inference (or a timed series) under mpiexec, with a report at rank 0.

Start-up is local work first (arguments, model, speed probe), then one agreement in which every rank
shows its errors and fingerprints, so a rank that failed early can never leave the others stranded.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import sys
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from nptp_mpi import __version__, kernels
from nptp_mpi.cli.early import cores, launcher_local, oversubscribed
from nptp_mpi.cli.show import human
from nptp_mpi.errors import EXIT_BUG, EXIT_USER, InputError, JobError, UsageError
from nptp_mpi.io.outputs import check_writable
from nptp_mpi.model.graph import Graph
from nptp_mpi.model.load import describe, load_model
from nptp_mpi.plan.geometry import spatial
from nptp_mpi.plan.plan import Plan, plan_from_cells, with_pixel_input
from nptp_mpi.runtime.engine import Engine, Stats
from nptp_mpi.runtime.exchange import World
from nptp_mpi.runtime.memory import return_free_memory
from nptp_mpi.runtime.warm import warm_first
from nptp_mpi.strategies.d3 import imbalance, predicted, rebalance, relative, speeds

VERIFY_TOL = 1e-5  # max |distributed − reference| relative to max |reference|
# Arguments every rank must share (others, like --output, only matter on rank 0).
AGREED_ARGS = ("model", "size", "weights", "strategy", "speeds", "objective", "warmup", "repeat", "timeout",
               "overlap", "fuse", "partition", "bandwidth", "latency", "calibration", "shared")


def inject_fault(world: World, phase: str) -> None:
    """Test hook: NPTP_FAULT=rank:phase[:stall|:kill] raises (hangs, dies) on that rank in that phase; inert
    when unset. Phases: setup, infer, write."""
    spec = os.environ.get("NPTP_FAULT", "").split(":")
    if spec[:2] == [str(world.rank), phase]:
        if spec[2:] == ["stall"]:
            time.sleep(24 * 3600)
        if spec[2:] == ["kill"]:
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"injected fault in {phase}")


def slow_down(world: World, stats: Stats) -> Stats:
    """Test hook: NPTP_SLOW=rank:factor makes that rank's compute take factor× as long: it sleeps (factor-1)×
    its measured compute after each inference, counted as compute. Inert when unset."""
    spec = os.environ.get("NPTP_SLOW", "").split(":")
    if spec[0] != str(world.rank):
        return stats
    extra = (float(spec[1]) - 1) * stats.compute_s
    time.sleep(max(extra, 0.0))
    return replace(stats, compute_s=stats.compute_s + extra)


def measure_speed(repeat: int = 3) -> float:
    """This board's speed: inverse median time of a fixed 3×3 conv (what --speeds auto uses)."""
    from nptp_mpi import kernels as K

    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 56, 56), dtype=np.float32)
    w = rng.standard_normal((32, 32, 3, 3), dtype=np.float32)
    times = []
    for _ in range(repeat + 1):
        t0 = time.perf_counter()
        K.conv2d(x, (0, 0), (56, 56), w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, (0, 0, 56, 56))
        times.append(time.perf_counter() - t0)
    return 1.0 / statistics.median(times[1:])


def _local_setup(args: argparse.Namespace, world: World) -> tuple[Graph, dict, float | None]:
    """Everything a rank can do alone before talking to the others; may raise."""
    from nptp_mpi.plan.tiling import parse_speeds

    if world.rank == 0:
        reads = (args.input, args.image, args.weights, args.calibration, args.model)
        for path, flag in ((args.output, "--output"), (args.report, "--report"), (args.png, "--png"),
                           (args.results, "--results")):
            check_writable(path, flag, reads)
        if args.images and not Path(args.images).is_dir():
            raise UsageError(f"--images {args.images}: not a folder")
    graph = load_model(args.model, args.size, args.weights)
    if args.calibration:  # read here, so a board missing the file fails in the agreement, not alone
        from nptp_mpi.plan.calibration import load_calibration

        load_calibration(args.calibration)
    auto = args.speeds == "auto"
    if args.speeds and not auto:
        parse_speeds(args.speeds, world.size)
    facts = {"version": __version__, **{f"--{k}": getattr(args, k) for k in AGREED_ARGS},
             "model file and weights": graph.fingerprint()}
    return graph, facts, measure_speed() if auto else None


def _tuples(value):
    """JSON's lists back as tuples (how the arguments were, and are shown)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _agree(world: World, err: str | None, facts: dict | None, speed: float | None) -> list[float | None]:
    """Every rank learns every rank's start-up error and facts; any error or difference → JobError."""
    everyone = world.allgather((err, facts, speed, world.host))
    for r, e in enumerate(everyone):  # JSON from whatever runs as rank r: check its form before use
        if not (isinstance(e, list) and len(e) == 4 and isinstance(e[3], str) and isinstance(e[1], dict | None)):
            raise JobError(f"rank {r} sent start-up data of another form; is every rank this program?")
    everyone = [(e, None if f is None else {k: _tuples(v) for k, v in f.items()}, s, h) for e, f, s, h in everyone]
    world.hosts = [e[3] for e in everyone]
    failed = [(r, h, e) for r, (e, _, _, h) in enumerate(everyone) if e]
    if failed:
        r, h, e = failed[0]
        if len(failed) == world.size and len({e for _, _, e in failed}) == 1:
            raise JobError(e)
        more = f" (and {len(failed) - 1} more ranks)" if len(failed) > 1 else ""
        raise JobError(f"rank {r} (host {h}): {e}{more}")
    for key in facts:
        values = [f[key] for _, f, _, _ in everyone]
        odd = next((r for r, v in enumerate(values) if v != values[0]), None)
        if odd is not None:
            raise JobError(f"ranks disagree on {key}: rank 0 has {values[0]}, rank {odd} "
                           f"(host {everyone[odd][3]}) has {values[odd]}; run the same checkout and arguments")
    return [s for _, _, s, _ in everyone]


def _make_plan(args: argparse.Namespace, graph: Graph, world: World,
               measured: list[float | None]) -> tuple[Plan, bool]:
    """The plan and whether to overlap, made on every rank and checked to agree."""
    from nptp_mpi.cli.plan import overlap_for, plan_for, setting_for
    from nptp_mpi.plan.tiling import parse_speeds

    if args.speeds == "auto":
        speeds = measured
    else:
        speeds = parse_speeds(args.speeds, world.size) if args.speeds else None
    try:
        setting = setting_for(args, graph, world.size, speeds)
        plan = plan_for(args, graph, world.size, speeds, setting)
        overlap = overlap_for(args, graph, plan, setting)
    except ValueError as e:  # deterministic: every rank has just met the same error
        raise JobError(str(e)) from None
    prints = world.allgather(f"{plan.fingerprint()} overlap {'on' if overlap else 'off'}")
    if len(set(prints)) != 1:
        raise JobError(f"ranks computed different plans ({', '.join(prints)}); same checkout on every board?")
    return plan, overlap


def _load_input(args: argparse.Namespace, graph: Graph, world: World, pixels: bool) -> np.ndarray | None:
    """Rank 0 reads the input (an image as its 8-bit pixels where the plan scatters pixels); every rank learns
    whether that worked."""
    from nptp_mpi.io.inputs import image_to_pixels, image_to_tensor, load_image, load_tensor, sample_image

    x, err = None, None
    if world.rank == 0:
        try:
            c, h, w = graph.input_shape
            if args.input:
                x = load_tensor(args.input, (c, h, w))
            elif args.image:
                x = load_image(args.image, (h, w), pixels)
            else:
                x = (image_to_pixels if pixels else image_to_tensor)(sample_image(), (h, w), "the sample picture")
        except (ValueError, OSError) as e:
            err = str(e)
    err = world.bcast(err)
    if err:
        raise JobError(err)
    return x


def run_job(args: argparse.Namespace) -> int:
    """The `run` command on this rank; returns the exit code (or aborts the job)."""
    world = World(timeout=args.timeout)
    try:
        return _run(args, world)
    except JobError as e:
        if world.rank == 0:
            print(f"nptp-mpi: error: {e}", file=sys.stderr)
        return e.code
    except BaseException as e:  # noqa: BLE001 - any failure on one rank must end every rank
        world.abort(report_failure(world, e, args.debug))
        return 1


def refuse_in_agreement(message: str, timeout: float) -> int:
    """This rank's arguments failed: bring that error to the start-up agreement the other ranks hold (they
    may have parsed theirs), where every rank learns it; rank 0 reports it once. Returns the exit code."""
    world = World(timeout=timeout)
    try:
        _agree(world, message, None, None)
    except JobError as e:
        if world.rank == 0:
            print(f"nptp-mpi: error: {e}", file=sys.stderr)
        return e.code
    except BaseException as e:  # noqa: BLE001 - a peer gone or timed out: end every rank
        world.abort(report_failure(world, e, False))
    return EXIT_USER


def _warn_oversubscribed() -> None:
    """One line from the first rank of a host whose ranks × threads outnumber its cores (cli.early made their
    threads sleep between kernels; still slower than fewer ranks or threads)."""
    ranks, place = launcher_local() or (1, 0)
    threads = kernels.threads.count()
    if place == 0 and oversubscribed(ranks, threads):
        print(f"nptp-mpi: warning: {socket.gethostname()} runs {ranks} ranks × {threads} threads on {cores()} cores: "
              "use fewer ranks or fewer --threads (README: ranks or threads?)", file=sys.stderr, flush=True)


def _run(args: argparse.Namespace, world: World) -> int:
    _warn_oversubscribed()
    err, facts, speed, graph = None, None, None, None
    try:
        inject_fault(world, "setup")
        graph, facts, speed = _local_setup(args, world)
    except (ValueError, OSError, RuntimeError) as e:
        err = str(e)
    measured = _agree(world, err, facts, speed)
    plan, overlap = _make_plan(args, graph, world, measured)
    x = None if args.images else _load_input(args, graph, world, plan.pixels)

    np.seterr(all="ignore")  # an overflow is reported once, as a non-finite output, not warned of per kernel
    warm_first(world)
    runner = Runner(graph, plan, world, overlap=overlap)
    if not (args.verify and world.rank == 0):  # rank 0 verifies against the reference, on the whole graph
        runner.engine.free_unused_weights()
    return_free_memory()
    reset_rss_peak()
    try:
        if args.images:
            _stream(args, graph, runner, world)
        else:
            _timed(args, graph, x, runner, world)
    finally:
        runner.close()
    return 0


class Runner:
    """The engine both loops run on. With --strategy d3 (run-time re-partitioning, nptp_mpi.d3) each
    inference ends with one small allgather of the ranks' compute times; before the next one, when the
    slowest was more than 10% above the mean, every rank computes the same new tiles and switches to
    them. `trace` holds one entry per inference (d3 only): latency, compute times, max/mean, and the
    tiles when they are new."""

    def __init__(self, graph: Graph, plan: Plan, world: World, overlap: bool = True) -> None:
        self.graph, self.plan, self.world, self.overlap = graph, plan, world, overlap
        self.engine = Engine(graph, plan, world, overlap=overlap)
        self.sp = spatial(graph) if plan.strategy == "d3" else None
        self.trace: list[dict] = []
        self.fresh = True  # the next inference is the first on its tiles

    def infer(self, x: np.ndarray | None) -> tuple[np.ndarray | None, Stats, float]:
        """One inference (d3: on re-cut tiles if the last one was unbalanced): output at rank 0, stats, latency."""
        if self.sp is not None and self.trace:
            self._adapt()
        t0 = time.perf_counter()
        out, stats = self.engine.infer(x)
        latency = time.perf_counter() - t0
        stats = slow_down(self.world, stats)
        if self.sp is not None:
            times = self.world.allgather(stats.compute_s)
            entry = {"inference": len(self.trace) + 1, "latency_s": latency, "compute_s": times,
                     "max_over_mean": imbalance(times)}
            if self.fresh:
                entry |= {"tiles": [list(r) for r in self.plan.cell_tiles], "halo_bytes": self.plan.halo_bytes}
            self.trace.append(entry)
            self.fresh = False
        return out, stats, latency

    def _adapt(self) -> None:
        """Re-cut the tiles from the last inference's compute times (identically on every rank), check that
        every rank built the same plan, and move to a new engine."""
        last, tiles = self.trace[-1], list(self.plan.cell_tiles)
        new = rebalance(self.sp, tiles, last["compute_s"], self.plan.objective)
        if new is None:
            return
        speed = speeds(tiles, last["compute_s"])
        plan = plan_from_cells(self.graph, new, "d3", relative(speed), self.plan.objective, self.plan.fuse)
        if self.plan.pixels:
            plan = with_pixel_input(plan)
        prints = self.world.allgather(plan.fingerprint())
        if len(set(prints)) != 1:
            raise JobError(f"ranks computed different d3 plans ({', '.join(prints)}); same checkout on every board?")
        if self.world.rank == 0:
            times = last["compute_s"]
            print(f"d3: after inference {last['inference']}: compute max/mean {last['max_over_mean']:.2f}, slowest "
                  f"rank {times.index(max(times))} {max(times):.3f} s; re-partitioned to cell tiles {new} (predicted "
                  f"slowest {max(predicted(new, speed)):.3f} s)", file=sys.stderr, flush=True)
        self.engine.close()
        self.plan, self.fresh = plan, True
        self.engine = Engine(self.graph, plan, self.world, overlap=self.overlap)

    def close(self) -> None:
        """Free the engine's MPI datatypes."""
        self.engine.close()


def rss_mb() -> float:
    """This process's resident memory now, in MB (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except OSError:
        return rss_peak_mb()


def rss_peak_mb() -> float:
    """This process's peak resident memory in MB, since start or since reset_rss_peak (getrusage ru_maxrss:
    KiB on Linux, bytes on macOS)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024) / 1e6


def reset_rss_peak() -> None:
    """Start the peak over, once set-up has freed what the rank does not compute with (Linux: the kernel's
    high-water mark, which ru_maxrss reads). Elsewhere the peak includes loading the whole model."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _timed(args: argparse.Namespace, graph: Graph, x, runner: Runner, world: World) -> None:
    """Warm-up, then `repeat` timed inferences; rank 0 reports medians."""
    for _ in range(args.warmup):
        runner.infer(x)
    rss_start = rss_mb()
    latencies, stats, out = [], [], None
    for i in range(args.repeat):
        world.barrier()
        inject_fault(world, "infer")
        out, st, latency = runner.infer(x)
        latencies.append(latency)
        stats.append(st)
        if world.rank == 0 and args.repeat > 1:
            print(f"inference {i + 1}/{args.repeat}: {latencies[-1]:.3f} s", file=sys.stderr, flush=True)
    everyone = world.gather_values((world.host, [asdict(s) for s in stats], latencies,
                                    (rss_start, rss_mb(), rss_peak_mb(), runner.engine.weight_bytes / 1e6)))
    refusal = None
    if world.rank == 0:
        inject_fault(world, "write")
        try:
            _finish(args, graph, runner, x, out, everyone)
        except (InputError, UsageError) as e:  # (a non-finite output, an output that cannot be written)
            refusal = str(e)
    refusal = world.bcast(refusal)  # every rank ends alike: one line from rank 0, exit 2 everywhere
    if refusal:
        raise JobError(refusal)


def _stream(args: argparse.Namespace, graph: Graph, runner: Runner, world: World) -> None:
    """One inference per picture of a folder; a bad picture is reported and skipped, the stream goes on.

    Rank 0 appends one JSON line per picture to --results (or stdout), flushed as it completes, so a
    crash keeps every result finished before it.
    """
    from nptp_mpi.io.inputs import load_image

    # every entry but folders and hidden files: a pipe, a device link or a link loop is tried, refused (never
    # blocking) and reported like any bad picture, not silently left out
    files = sorted(p for p in Path(args.images).iterdir() if not p.is_dir() and not p.name.startswith("."))
    sink = (open(args.results, "w") if args.results else sys.stdout) if world.rank == 0 else None
    done, skipped, latencies, i = 0, [], [], 0
    try:
        while True:
            x, msg = None, None
            if world.rank == 0:
                if i == len(files):
                    msg = ("done", "")
                else:
                    path, i = files[i], i + 1
                    try:
                        x, msg = load_image(path, graph.input_shape[1:], runner.plan.pixels), ("run", path.name)
                    except InputError as e:
                        msg = ("skip", path.name, str(e))
            msg = world.bcast(msg)
            if msg[0] == "done":
                break
            if msg[0] == "skip":
                skipped.append(msg[1])
                _emit(sink, {"image": msg[1], "ok": False, "error": msg[2]})
                continue
            inject_fault(world, "infer")
            out, _, latency = runner.infer(x)
            latencies.append(latency)
            done += 1
            if world.rank == 0:
                d3 = {"d3": runner.trace[-1]} if runner.trace else {}
                _emit(sink, {"image": msg[1], "ok": True, "latency_s": latency, **_summary(out), **d3})
    finally:
        if sink not in (None, sys.stdout):
            sink.close()
    if world.rank == 0:
        med = f", median latency {statistics.median(latencies):.3f} s" if latencies else ""
        bad = f" ({', '.join(map(repr, skipped))})" if skipped else ""  # (repr: a newline in a name stays on the line)
        print(f"nptp-mpi: stream of {done + len(skipped)} pictures: {done} done, {len(skipped)} skipped{bad}{med}",
              file=sys.stderr)


def _emit(sink, record: dict) -> None:
    """One stream line, on disk before the next picture starts (rank 0 only; sink is None elsewhere)."""
    if sink is not None:
        sink.write(json.dumps(record) + "\n")
        sink.flush()
        if sink is not sys.stdout:
            os.fsync(sink.fileno())


def _summary(out: np.ndarray) -> dict:
    """What a stream line says about an output: the top five classes of a score vector, else the shape."""
    if out.ndim != 1:
        return {"output_shape": list(out.shape)}
    top = np.argsort(out)[::-1][:5]
    return {"top5": [[int(k), float(out[k])] for k in top]}


def _median_stats(stats: list[dict]) -> dict:
    """A rank's Stats (as gathered: dicts) over the timed inferences."""
    return {"compute_s": statistics.median(s["compute_s"] for s in stats),
            "comm_s": statistics.median(s["comm_s"] for s in stats),
            "bytes_sent": stats[-1]["halo_sent"], "bytes_recv": stats[-1]["halo_recv"]}


def _finish(args, graph: Graph, runner: Runner, x: np.ndarray, out: np.ndarray, everyone: list) -> None:
    """Rank 0: verify, print the table, write output, report and picture (of the plan the last inference ran)."""
    from nptp_mpi.io.inputs import pixels_to_tensor, tensor_to_image
    from nptp_mpi.io.outputs import atomic_write_all, npy_writer, text_writer

    plan = runner.plan
    x = pixels_to_tensor(x) if plan.pixels else x  # the model's input as values
    latency = statistics.median(everyone[0][2])
    per_rank = [{"rank": r, "host": host, "tile": list(plan.tiles[r]), **_median_stats(st),
                 "rss_mb_start": rss[0], "rss_mb_end": rss[1], "rss_peak_mb": rss[2], "weights_mb": rss[3]}
                for r, (host, st, _, rss) in enumerate(everyone)]
    measured = sum(p["bytes_recv"] for p in per_rank)
    report = {"model": graph.name, "model_fingerprint": graph.fingerprint(), "input_shape": list(graph.input_shape),
              "weights": "file" if (args.weights or args.model.endswith(".onnx")) else "seeded random",
              "strategy": plan.strategy, "ranks": plan.ranks, "speeds": list(plan.speeds),
              "objective": plan.objective, "overlap": "on" if runner.overlap else "off", "latency_s": latency,
              "latencies_s": everyone[0][2],
              "halo_bytes": measured, "plan_halo_bytes": plan.halo_bytes, "scatter_bytes": plan.scatter_bytes,
              "pixels": plan.pixels, "per_rank": per_rank,
              "plan_fingerprint": plan.fingerprint(), "version": __version__}
    if runner.trace:
        report["d3_trace"] = runner.trace
    if args.verify:
        from nptp_mpi.runtime.reference import run as reference

        ref = reference(graph, x)
        scale = float(np.max(np.abs(ref))) or 1.0
        report["verify_rel_error"] = float(np.max(np.abs(out - ref))) / scale
    print(format_report(report, describe(graph, args.model, args.weights)))
    bad = int(np.size(out) - np.count_nonzero(np.isfinite(out)))
    if bad and not args.allow_nonfinite:
        raise InputError(f"the output holds {bad} non-finite values (NaN or Inf): the model overflows on this input "
                         "or divides by zero; nothing written (--allow-nonfinite writes it anyway)")
    files = []  # written all or none: a report that fails leaves no new output behind
    if args.output:
        files.append((args.output, npy_writer(out[None]), "output tensor"))
    if args.report:
        files.append((args.report, text_writer(json.dumps(report, indent=1) + "\n"), "report"))
    if args.png:
        from nptp_mpi.cli.show import tiles_picture

        picture = tiles_picture(plan, image=tensor_to_image(x))
        files.append((args.png, lambda f: picture.save(f, format="PNG"), "partition picture"))
    atomic_write_all(files)


def format_report(rep: dict, what: str) -> str:
    """The console table: one row per rank, then latency, bytes and the verification."""
    head = (f"{'rank':>4}  {'host':<16} {'tile y0,x0,y1,x1':<20} {'compute':>9} {'comm wait':>10} "
            f"{'sent':>10} {'recv':>10}")
    lines = [f"nptp-mpi: {what}; strategy {rep['strategy']}, {rep['ranks']} rank(s), speeds "
             f"{','.join(f'{s:g}' for s in rep['speeds'])}", head, "-" * len(head)]
    for p in rep["per_rank"]:
        lines.append(f"{p['rank']:>4}  {p['host'][:16]:<16} {','.join(map(str, p['tile'])):<20} "
                     f"{p['compute_s']:>8.3f}s {p['comm_s']:>9.3f}s {human(p['bytes_sent']):>10} "
                     f"{human(p['bytes_recv']):>10}")
    n = len(rep["latencies_s"])
    lines.append(f"latency {rep['latency_s']:.3f} s (median of {n}); halo moved {human(rep['halo_bytes'])} "
                 f"(plan {human(rep['plan_halo_bytes'])})")
    if "verify_rel_error" in rep:
        ok = "ok" if rep["verify_rel_error"] <= VERIFY_TOL else f"ABOVE {VERIFY_TOL:g}"
        lines.append(f"verify: max |distributed - reference| / max |reference| = {rep['verify_rel_error']:.2e} ({ok})")
    return "\n".join(lines)


def report_failure(world, exc: BaseException, debug: bool) -> int:
    """One line naming rank, host and cause (the traceback with --debug); the exit code to use."""
    user = isinstance(exc, (ValueError, OSError))
    kind = "" if user else f"{type(exc).__name__}: "
    text = f"nptp-mpi: error on rank {world.rank} (host {world.host}): {kind}{exc}\n"
    if debug:
        text += "".join(traceback.format_exception(exc))
    sys.stderr.write(text)  # one write: the launcher forwards it whole before tearing the job down
    return EXIT_USER if user else EXIT_BUG
