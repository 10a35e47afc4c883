"""Kernel benchmark: our conv2d against single-threaded onnxruntime on the same conv layers.

Pin BLAS to one thread before numpy is imported (OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1; the
`bench kernels` CLI sets them) so both sides get one core.
"""

from __future__ import annotations

import statistics
import time
from functools import partial

import numpy as np

import kernels


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


def _ort_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int, groups: int):
    """A one-thread, fully optimised ORT session of one Conv node; returns a no-argument runner."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=[stride] * 2, pads=[pad] * 4,
                            group=groups)
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                             (1, *x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {"x": x[None]}
    return lambda: sess.run(None, feed)[0][0]


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

    Rows add ms_ours, ms_ort, gflops_ours, gflops_ort, ratio (ours / ORT speed) and max_abs_err.
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
        t_ours, t_ort = _median_s([ours, ort_run], repeat)
        rows.append({**L, "ms_ours": t_ours * 1e3, "ms_ort": t_ort * 1e3, "gflops_ours": flops / t_ours / 1e9,
                     "gflops_ort": flops / t_ort / 1e9, "ratio": t_ort / t_ours, "max_abs_err": err})
    return rows


def format_table(rows: list[dict]) -> str:
    """Aligned text table of bench_convs rows with a median-ratio footer."""
    cols = [("name", "{}"), ("cin", "{}"), ("cout", "{}"), ("h", "{}"), ("w", "{}"), ("k", "{}"),
            ("stride", "{}"), ("groups", "{}"), ("ms_ours", "{:.2f}"), ("ms_ort", "{:.2f}"),
            ("gflops_ours", "{:.1f}"), ("gflops_ort", "{:.1f}"), ("ratio", "{:.2f}")]
    cells = [[c for c, _ in cols]] + [[f.format(r[c]) for c, f in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(v.rjust(wd) if i else v.ljust(wd) for i, (v, wd) in enumerate(zip(row, widths, strict=True)))
             for row in cells]
    lines.insert(1, "-" * len(lines[0]))
    ratio = statistics.median(r["ratio"] for r in rows) if rows else float("nan")
    return "\n".join([*lines, f"median ratio (ours / onnxruntime GFLOP/s): {ratio:.2f}"])
