"""Single-process reference engine: the whole graph on whole tensors, with the same kernels.

Every distributed run is compared against it, and it is compared against onnxruntime.
"""

from __future__ import annotations

import time
import weakref

import numpy as np

from nptp_mpi.errors import ModelError
from nptp_mpi.kernels import vectors
from nptp_mpi.model.graph import Graph
from nptp_mpi.runtime.layouts import blocked_maps
from nptp_mpi.runtime.ops import run_whole

_blocked: dict[int, tuple[tuple, set[str]]] = {}


def blocked(graph: Graph) -> set[str]:
    """The maps the reference keeps channel-blocked (runtime.layouts): its tensors between 1×1 convs. Worked out
    once per graph and kept while its nodes, their weights and windows, and the host's vectors stay as they were
    (graph passes rewrite nodes in place): every inference asks, and working them out took 0.1 ms a time, 1% of
    MobileNetV2's inference; checking the key takes 7 µs."""
    key = (vectors.ENABLED, tuple(graph.input_shape),
           *((id(n), n.op, id(n.params.get("w")), id(n.window), n.inputs, n.output) for n in graph.nodes))
    held = _blocked.get(id(graph))
    if held is None:  # (the graph's entry goes with it)
        weakref.finalize(graph, _blocked.pop, id(graph), None)
    if held is None or held[0] != key:
        uses = [(n, n.params["w"].shape if n.op == "conv" else (), tuple(n.inputs), n.output,
                 graph.shapes[n.output][1:]) for n in graph.nodes]
        held = _blocked[id(graph)] = key, blocked_maps(uses, {graph.input, graph.output})
    return held[1]


def run(graph: Graph, x: np.ndarray, spent: dict[str, float] | None = None) -> np.ndarray:
    """Output of graph for one input x of shape graph.input_shape (no batch axis); spent: seconds are added up
    there per node name (what `bench models` breaks down)."""
    if tuple(x.shape) != tuple(graph.input_shape):
        raise ModelError(f"{graph.name}: input shape {tuple(x.shape)} differs from {tuple(graph.input_shape)}")
    values: dict[str, np.ndarray] = {graph.input: np.ascontiguousarray(x, dtype=np.float32)}
    last_use = {t: i for i, n in enumerate(graph.nodes) for t in n.inputs}
    maps = blocked(graph)
    for i, node in enumerate(graph.nodes):
        ins = [values[t] for t in node.inputs]
        for t in set(node.inputs):  # (a node may read one tensor twice: a conv with its own input as residual)
            if last_use[t] == i and t != graph.output:
                del values[t]  # keeps peak memory near two layers' worth on large inputs
        t0 = time.perf_counter()
        values[node.output] = run_whole(node, ins, node.output in maps)
        if spent is not None:
            spent[node.name] = spent.get(node.name, 0.0) + time.perf_counter() - t0
    return np.ascontiguousarray(values[graph.output])  # (a conv's map may lie in a buffer with spare rows)
