"""Single-rank benchmarks against onnxruntime: whole models with a breakdown by op type (`bench models`), and
our conv2d on each distinct conv layer (`bench kernels`).

`python -m nptp_mpi` sizes the kernels' thread pool before Numba starts (--threads, default 1, the largest of a
list; cli.early); each measurement then runs our kernels on its thread count (limit_threads), and onnxruntime with
as many intra-op threads.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np

from nptp_mpi import kernels
from nptp_mpi.errors import UsageError
from nptp_mpi.kernels import blocked, vectors


def _median_s(fns: list, repeat: int) -> list[float]:
    """Median wall time of each no-argument function after one warm-up (Numba compile, ORT first run).

    Runs are interleaved so that both sides see the same background load on a shared machine.
    """
    times = [[] for _ in fns]
    for n in range(repeat + 1):
        for fn, ts in zip(fns, times, strict=True):
            t = time.perf_counter()
            fn()
            if n:
                ts.append(time.perf_counter() - t)
    return [statistics.median(ts) for ts in times]


SPIN_S = 0.2  # how long the other engine's idle worker threads may still spin after a run (see settle)


def settle(run, threads: int) -> None:
    """Before a timed run with several threads: wait until the other engine's worker threads stop spinning, then
    run once untimed, so that this engine's own threads are awake. Interleaved back to back, each engine ran beside
    the other's spinning threads (MobileNetV2 224², 2 threads, ours: 13.9 ms interleaved, 5.3 ms alone); and on
    this VM a thread idle for 50 ms takes 6-8 ms to wake, which every run after the wait paid."""
    if threads > 1:
        time.sleep(SPIN_S)
        run()


@contextlib.contextmanager
def limit_threads(n: int) -> Iterator[None]:
    """Our kernels on n threads inside the block (their GEMMs included: kernels/threads.py)."""
    before = kernels.threads.count()
    kernels.threads.use(n)
    try:
        yield
    finally:
        kernels.threads.use(before)


def _session(model, threads: int, profile: str | None = None):
    """An onnxruntime session of an ONNX model with its default (full) graph optimisations and `threads` intra-op
    threads; profile: a path prefix its profiler writes to."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    if profile:
        opts.enable_profiling, opts.profile_file_prefix = True, profile
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def ort_session(model, threads: int = 1):
    """run(x) for a batch-less input, by onnxruntime (_session)."""
    sess = _session(model, threads)
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x[None]})[0][0]


def _ort_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int, groups: int):
    """A one-thread onnxruntime session of one Conv node; returns a no-argument runner."""
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=[stride] * 2, pads=[pad] * 4,
                            group=groups)
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                             (1, *x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    run = ort_session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    return lambda: run(x)


def conv_layers(graph) -> list[dict]:
    """The distinct conv layers of a graph (square kernels, symmetric pads), named model:first-node."""
    seen: dict[tuple, dict] = {}
    for n in graph.nodes:
        if n.op != "conv":
            continue
        cin, h, w = graph.shapes[n.inputs[0]]
        key = (cin, n.params["w"].shape[0], h, w, n.window.kernel[0], n.window.stride[0], n.window.pads[0],
               n.attrs.get("groups", 1))
        seen.setdefault(key, dict(zip(("cin", "cout", "h", "w", "k", "stride", "pad", "groups"), key, strict=True),
                                  name=f"{graph.name}:{n.name}"))
    return list(seen.values())


def bench_convs(layers: list[dict], repeat: int = 5) -> list[dict]:
    """Time conv2d and ORT on each layer (keys name, cin, cout, h, w, k, stride, pad, groups).

    Rows add ms_ours, ms_ort, gflops_ours, gflops_ort, ratio (ours / ORT speed), max_abs_err, ms_gemm: the
    BLAS GEMM alone of the layer as im2col runs it (weights × columns, already made; None for a grouped conv),
    timed in the same rounds: the floor of our im2col path, and how much of a gap is the BLAS itself; and
    ms_blocked: the conv from a channel-blocked map into one, as the engines run a 1×1 between 1×1s
    (runtime.layouts; None where they keep NCHW), also checked against ORT's.
    """
    rng = np.random.default_rng(0)
    rows = []
    for L in layers:
        k, s, p, g = L["k"], L["stride"], L["pad"], L["groups"]
        x = rng.standard_normal((L["cin"], L["h"], L["w"]), np.float32)
        w = rng.standard_normal((L["cout"], L["cin"] // g, k, k), np.float32) * 0.1
        b = rng.standard_normal(L["cout"], np.float32)
        oh, ow = (L["h"] + 2 * p - k) // s + 1, (L["w"] + 2 * p - k) // s + 1
        flops = 2 * L["cout"] * oh * ow * L["cin"] // g * k * k
        ours = partial(kernels.conv2d, x, (0, 0), (L["h"], L["w"]), w, b, (s, s), (p,) * 4, (1, 1), g,
                       (0, 0, oh, ow))
        ort_run = _ort_conv(x, w, b, s, p, g)
        err = float(np.abs(ours() - ort_run()).max())
        extra = {}
        if g == 1:
            wm, cols = w.reshape(L["cout"], -1), rng.standard_normal((w[0].size, oh * ow), np.float32)
            extra["ms_gemm"] = partial(np.matmul, wm, cols, out=np.empty((L["cout"], oh * ow), np.float32))
        if blocked.runs_blocked(w.shape, g, (s, s), (p,) * 4, (1, 1), (oh, ow)):
            y = np.empty((L["cout"] // vectors.LANES, oh, ow, vectors.LANES), np.float32)
            extra["ms_blocked"] = partial(kernels.conv2d, blocked.to_blocked(x), (0, 0), (L["h"], L["w"]), w, b,
                                          (s, s), (p,) * 4, (1, 1), g, (0, 0, oh, ow), into=y)
            err = max(err, float(np.abs(blocked.from_blocked(extra["ms_blocked"]()) - ort_run()).max()))
        t_ours, t_ort, *times = _median_s([ours, ort_run, *extra.values()], repeat)
        rows.append({**L, "ms_ours": t_ours * 1e3, "ms_ort": t_ort * 1e3, "gflops_ours": flops / t_ours / 1e9,
                     "gflops_ort": flops / t_ort / 1e9, "ratio": t_ort / t_ours, "max_abs_err": err,
                     "ms_gemm": None, "ms_blocked": None, **{k: t * 1e3 for k, t in zip(extra, times, strict=True)}})
    return rows


def format_table(rows: list[dict]) -> str:
    """Aligned text table of bench_convs rows with a median-ratio footer."""
    cols = [("name", "{}"), ("cin", "{}"), ("cout", "{}"), ("h", "{}"), ("w", "{}"), ("k", "{}"),
            ("stride", "{}"), ("groups", "{}"), ("ms_ours", "{:.2f}"), ("ms_ort", "{:.2f}"), ("ms_gemm", "{:.2f}"),
            ("ms_blocked", "{:.2f}"),
            ("gflops_ours", "{:.1f}"), ("gflops_ort", "{:.1f}"), ("ratio", "{:.2f}")]
    ratio = statistics.median(r["ratio"] for r in rows) if rows else float("nan")
    return "\n".join([_aligned([c for c, _ in cols], cols, rows),
                      f"median ratio (ours / onnxruntime GFLOP/s): {ratio:.2f}"])


def _aligned(head: list[str], cols: list[tuple[str, str]], rows: list[dict]) -> str:
    """Rows as a text table: a header, a rule, one line per row (first column left, the others right)."""
    cells = [head] + [["-" if r[c] is None else f.format(r[c]) for c, f in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(v.rjust(wd) if i else v.ljust(wd) for i, (v, wd) in enumerate(zip(row, widths, strict=True)))
             for row in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- models

KINDS = ("conv3x3", "conv1x1", "depthwise", "conv other", "pooling", "fc", "element-wise", "copies")


def kind(graph, node) -> str:
    """The column of node's time in the breakdown."""
    if node.op == "conv":
        cin_g, k = node.params["w"].shape[1], node.window.kernel
        if cin_g == 1 and node.attrs.get("groups", 1) > 1:
            return "depthwise"
        return {(3, 3): "conv3x3", (1, 1): "conv1x1"}.get(k, "conv other")
    if node.op in ("maxpool", "avgpool", "gap", "gmp", "adaptive_avgpool"):
        return "pooling"
    if node.op == "gemm":
        return "fc"
    if node.op in ("concat", "slice", "shuffle", "flatten", "pad"):
        return "copies"
    return "element-wise"


def blas_info() -> str:
    """Which BLAS runs and with which kernel (threadpoolctl), and whether OPENBLAS_CORETYPE forces one."""
    from threadpoolctl import threadpool_info

    blas = [f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture', '?')} kernels, "
            f"{i.get('num_threads')} threads)" for i in threadpool_info() if i.get("user_api") == "blas"]
    forced = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    return f"BLAS: {', '.join(blas) or 'none found'}" + (f"; set in the environment: {forced}" if forced else "")


def _ort_model(spec: str, graph):
    """The ONNX model onnxruntime runs: the user's file at the benchmark's size, or a zoo graph exported."""
    if spec.endswith(".onnx"):
        import onnx

        from nptp_mpi.model.onnx_fold import with_input_shape

        return with_input_shape(onnx.load(spec), graph.input_shape[1:])
    from nptp_mpi.model.onnx_io import to_onnx

    return to_onnx(graph)


def bench_models(graphs: list[tuple[str, object]], threads: list[int], rounds: int = 5,
                 progress=print, against: str | None = None, nodes: int = 0) -> list[dict]:
    """Per (model spec, graph) and thread count: median latency of ours (the reference engine: one rank) and of
    onnxruntime, interleaved round by round after a warm-up, with the spread (min to max) and our median
    seconds per op kind (KINDS). against: another tree's folder; its reference engine and this tree's then also
    run in processes of their own (Tree), alike but for their code, a timed inference of each in every round, in
    turns (ours in this process shares it with onnxruntime: beside a process without it, ResNet-50 at 224² ran 2-3%
    slower with the very same code). nodes: also the `nodes` convs furthest behind onnxruntime's inside the model
    (conv_gaps), in the row's "nodes"."""
    from nptp_mpi.runtime import reference

    rows = []
    if against:
        progress(f"{against} and this tree: each engine in a process of its own (a tree's first run compiles its "
                 "kernels)")
    for spec, graph in graphs:
        x = np.random.default_rng(0).standard_normal(graph.input_shape, dtype=np.float32)
        kinds, model = {n.name: kind(graph, n) for n in graph.nodes}, _ort_model(spec, graph)
        for t in threads:
            ort_run = ort_session(model, t)
            with contextlib.ExitStack() as stack:
                pair = [stack.enter_context(Tree(d, spec, graph.input_shape[1:], t))  # (this tree's, then the other)
                        for d in ((_own_tree(), against) if against else ())]
                stack.enter_context(limit_threads(t))
                stack.enter_context(np.errstate(all="ignore"))
                y = reference.run(graph, x)  # (also the warm-up)
                err, finite = float(np.abs(y - ort_run(x)).max()), bool(np.isfinite(y).all())
                if not finite:
                    progress(f"warning: {graph.name}'s output holds inf or NaN on a random input (its values "
                             "overflow: weights left out of the file?); these timings are of that arithmetic")
                ours, theirs, parts, per_node = [], [], {k: [] for k in KINDS}, defaultdict(list)
                for r in range(rounds):
                    spent: dict[str, float] = {}
                    settle(partial(reference.run, graph, x), t)
                    t0 = time.perf_counter()
                    reference.run(graph, x, spent)
                    ours.append(time.perf_counter() - t0)
                    settle(partial(ort_run, x), t)
                    t0 = time.perf_counter()
                    ort_run(x)
                    theirs.append(time.perf_counter() - t0)
                    for tree in (pair if r % 2 == 0 else pair[::-1]) if against else ():
                        tree.time()
                    for k in KINDS:
                        parts[k].append(sum(s for name, s in spent.items() if kinds[name] == k))
                    for name, s in spent.items():
                        per_node[name].append(s)
            c, h, w = graph.input_shape
            row = {"model": graph.name, "spec": spec, "size": f"{h}x{w}", "threads": t, **_ms("ours", ours),
                   **_ms("ort", theirs), "max_abs_err": err, "finite": finite,
                   **{f"ms_{k}": 1e3 * statistics.median(v) for k, v in parts.items()}}
            row["ratio"] = row["ms_ours"] / row["ms_ort"]
            if nodes:
                ms = {name: 1e3 * statistics.median(v) for name, v in per_node.items()}
                gaps = conv_gaps(graph, ms, ort_node_ms(model, t, x, rounds))
                row["nodes"], row["node_kinds"] = gaps[:nodes], gaps_by_kind(gaps)
            said = f"{row['ratio']:.2f}x"
            if against:
                row.update(against=against, **_ms("tree", pair[0].seconds), **_ms("against", pair[1].seconds),
                           max_abs_diff_against=float(np.abs(y - pair[1].output).max()))
                row["vs_against"] = row["ms_tree"] / row["ms_against"]
                said += (f"; in processes of their own, this tree {row['ms_tree']:.1f} ms, {against} "
                         f"{row['ms_against']:.1f} ms: {row['vs_against']:.3f}x")
            rows.append(row)
            progress(f"{row['model']} {row['size']} threads={t}: ours {row['ms_ours']:.1f} ms, onnxruntime "
                     f"{row['ms_ort']:.1f} ms ({said})")
    return rows


def ort_node_ms(model, threads: int, x: np.ndarray, rounds: int) -> list[tuple[tuple, tuple, float]]:
    """onnxruntime's convs in one inference of `model` on x, in the order it ran them, from its profiler: (weights'
    shape, output shape without the batch, median ms over `rounds` inferences after a warm-up)."""
    with tempfile.TemporaryDirectory() as folder:
        sess = _session(model, threads, os.path.join(folder, "ort"))
        feed = {sess.get_inputs()[0].name: x[None]}
        for _ in range(rounds + 1):
            sess.run(None, feed)
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    runs: dict[str, list] = defaultdict(list)  # (a node's events, one an inference, in the order they ran)
    for e in events:
        a = e.get("args", {})
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and a.get("op_name") in ("Conv", "FusedConv"):
            runs[e["name"]].append(e)
    shapes = [(tuple(v[0]["args"]["input_type_shape"][1]["float"]),
               tuple(v[0]["args"]["output_type_shape"][0]["float"][1:]), v) for v in runs.values() if len(v) > 1]
    return [(w, out, statistics.median(e["dur"] for e in v[1:]) / 1e3)
            for w, out, v in sorted(shapes, key=lambda c: c[2][0]["ts"])]


def conv_gaps(graph, ours_ms: dict[str, float], theirs: list[tuple[tuple, tuple, float]]) -> list[dict]:
    """Each conv of graph with our ms (ours_ms, by node name) and onnxruntime's (theirs: ort_node_ms), matched by
    weights' and output shape, in order among convs alike; furthest behind first. A conv onnxruntime ran fused
    otherwise, or not at all, has no match and is left out."""
    queues: dict[tuple, list[float]] = defaultdict(list)
    for w_shape, out_shape, ms in theirs:
        queues[(w_shape, out_shape)].append(ms)
    rows = []
    for node in graph.nodes:
        key = (tuple(node.params["w"].shape), tuple(graph.shapes[node.output])) if node.op == "conv" else None
        if key in queues and queues[key] and node.name in ours_ms:
            ort_ms = queues[key].pop(0)
            rows.append({"node": node.name, "kind": kind(graph, node), "weights": "×".join(map(str, key[0])),
                         "out": "×".join(map(str, key[1])), "ms_ours": ours_ms[node.name], "ms_ort": ort_ms,
                         "ms_gap": ours_ms[node.name] - ort_ms})
    return sorted(rows, key=lambda r: -r["ms_gap"])


def gaps_by_kind(gaps: list[dict]) -> list[dict]:
    """conv_gaps' rows summed per kind of conv (every conv matched, not only the furthest behind): where the gap
    inside the model lies in all, the largest first."""
    sums: dict[str, dict] = {}
    for g in gaps:
        s = sums.setdefault(g["kind"], {"kind": g["kind"], "convs": 0, "ms_ours": 0.0, "ms_ort": 0.0, "ms_gap": 0.0})
        s["convs"] += 1
        for k in ("ms_ours", "ms_ort", "ms_gap"):
            s[k] += g[k]
    return sorted(sums.values(), key=lambda s: -s["ms_gap"])


def format_nodes(rows: list[dict]) -> str:
    """For each bench_models row that carries them (--nodes): our ms and onnxruntime's inside the model, summed per
    kind of conv, then the convs furthest behind."""
    ms = [("ms_ours", "{:.3f}"), ("ms_ort", "{:.3f}"), ("ms_gap", "{:+.3f}")]
    kinds, cols = [("kind", "{}"), ("convs", "{}"), *ms], [("node", "{}"), ("kind", "{}"), ("weights", "{}"),
                                                           ("out", "{}"), *ms]
    parts = [f"{r['model']} {r['size']} threads={r['threads']}: our convs against onnxruntime's inside the model, by "
             f"kind (ms; onnxruntime's from its profiler)\n" + _aligned([c.removeprefix("ms_") for c, _ in kinds],
                                                                       kinds, r["node_kinds"])
             + "\n\nthe convs furthest behind\n" + _aligned([c.removeprefix("ms_") for c, _ in cols], cols, r["nodes"])
             for r in rows if r.get("nodes")]
    return "\n\n".join(parts)


def _ms(side: str, seconds: list[float]) -> dict:
    """ms_<side> and spread_<side>: the median and the spread (max - min) of timings, in ms."""
    return {f"ms_{side}": 1e3 * statistics.median(seconds), f"spread_{side}": 1e3 * (max(seconds) - min(seconds))}


def _own_tree() -> str:
    """The folder that holds this nptp_mpi (a checkout's root, or site-packages)."""
    return str(Path(__file__).resolve().parent.parent.parent)


class Tree:
    """A tree's reference engine on one model, input and thread count, in a process of its own (two trees' code
    cannot share a process: both are `nptp_mpi`), started in the tree's folder (tree_worker.py), timing an
    inference whenever asked: a change's before and after, interleaved inference by inference, see the same
    machine. Its output is kept (`output`) to be compared with ours."""

    def __init__(self, tree: str, spec: str, size: tuple[int, int], threads: int) -> None:
        root = os.path.abspath(tree)
        if not os.path.isfile(os.path.join(root, "nptp_mpi", "__init__.py")):
            raise UsageError(f"--against {tree}: not an nptp-mpi source tree (no nptp_mpi/__init__.py in it)")
        self.tree, self.folder, self.seconds = tree, tempfile.TemporaryDirectory(), []
        model = os.path.abspath(spec) if spec.endswith(".onnx") else spec
        out = os.path.join(self.folder.name, "output.npy")
        code = (Path(__file__).parent / "tree_worker.py").read_text()
        self.errors = open(os.path.join(self.folder.name, "stderr"), "w+")  # (a file: a full pipe would stall it)
        self.proc = subprocess.Popen(  # (the text by -c, in root: the tree's own nptp_mpi comes first on the path)
            [sys.executable, "-c", code, model, str(size[0]), str(size[1]), str(threads), str(SPIN_S), out],
            cwd=root, env={**os.environ, "NUMBA_NUM_THREADS": str(threads)}, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.errors, text=True)
        self._answer("ready")
        self.output = np.load(out, allow_pickle=False)

    def time(self) -> None:
        """One inference timed in the tree, its seconds added to `seconds`."""
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        self.seconds.append(float(self._answer()))

    def _answer(self, want: str | None = None) -> str:
        """The worker's next line (`want`, if given), or a UsageError with the last line it wrote to stderr."""
        line = self.proc.stdout.readline().strip()
        if not line or (want and line != want):
            self.proc.kill()
            self.proc.wait()
            self.errors.seek(0)
            last = (self.errors.read().strip().splitlines() or ["(nothing on stderr)"])[-1]
            self.__exit__()
            raise UsageError(f"--against {self.tree}: its code could not run the model: {last}")
        return line

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.stdin.close()
        self.proc.wait()
        self.errors.close()
        self.folder.cleanup()


def format_models(rows: list[dict]) -> str:
    """Aligned table of bench_models rows: latency, ratio (ours / onnxruntime), this tree's and the other's in
    processes of their own (--against), then our time per op kind."""
    against = [(f"{key}_{side}", f) for side in ("tree", "against") for key, f in (("ms", "{:.1f}"),
                                                                                    ("spread", "±{:.1f}"))]
    cols = [("model", "{}"), ("size", "{}"), ("threads", "{}"), ("ms_ours", "{:.1f}"), ("spread_ours", "±{:.1f}"),
            ("ms_ort", "{:.1f}"), ("spread_ort", "±{:.1f}"), ("ratio", "{:.2f}"),
            *(against + [("vs_against", "{:.3f}")] if rows and "ms_against" in rows[0] else []),
            *((f"ms_{k}", "{:.1f}") for k in KINDS)]
    head = ["spread" if c.startswith("spread") else c.removeprefix("ms_").removesuffix("_ours") for c, _ in cols]
    return _aligned(head, cols, rows)
