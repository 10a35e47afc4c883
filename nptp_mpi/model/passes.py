"""Graph simplification: fold batch-norm affines into convs, fuse activations, drop no-op nodes."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np

from nptp_mpi.model.graph import ACTIVATIONS, Graph, Node, Shape, Window


def simplify(graph: Graph) -> Graph:
    """The same function with fewer nodes (outputs equal up to float rounding); the input graph is untouched."""
    nodes = [dataclasses.replace(n, attrs=dict(n.attrs), params=dict(n.params)) for n in graph.nodes]
    output, changed = graph.output, True
    while changed:
        nodes, output, changed = _sweep(nodes, output, graph.shapes)
    return Graph(graph.name, graph.input, graph.input_shape, output, nodes)


def _sweep(nodes: list[Node], output: str, shapes: dict[str, Shape]) -> tuple[list[Node], str, bool]:
    """One pass over the nodes; returns the new nodes, the (possibly renamed) output and whether anything changed."""
    uses = Counter(t for n in nodes for t in n.inputs)
    uses[output] += 1
    alias: dict[str, str] = {}
    producer: dict[str, Node] = {}
    kept: list[Node] = []
    for n in nodes:
        n.inputs = tuple(alias.get(t, t) for t in n.inputs)
        src = producer.get(n.inputs[0])
        if _is_noop(n, shapes):
            alias[n.output] = n.inputs[0]
            uses[n.inputs[0]] += uses[n.output] - 1
        elif src is not None and uses[src.output] == 1 and _fuse(src, n):
            src.output = n.output
            producer[n.output] = src
        else:
            kept.append(n)
            producer[n.output] = n
    return kept, alias.get(output, output), len(kept) < len(nodes)


def _fuse(src: Node, n: Node) -> bool:
    """Merge n into its producer src when possible (src is then rewritten in place)."""
    if n.op == "affine" and src.op == "conv" and not src.attrs.get("act"):
        scale, shift = n.params["scale"], n.params["shift"]
        bias = src.params.get("b", np.zeros_like(scale))
        src.params.update(w=src.params["w"] * scale[:, None, None, None], b=bias * scale + shift)
        return True
    if n.op == "affine" and src.op == "affine":
        scale, shift = n.params["scale"], n.params["shift"]
        src.params.update(scale=src.params["scale"] * scale, shift=src.params["shift"] * scale + shift)
        return True
    if n.op in ACTIVATIONS and src.op in ("conv", "gemm") and not src.attrs.get("act"):
        src.attrs.update(n.attrs, act=n.op)
        return True
    return False


def _is_noop(n: Node, shapes: dict[str, Shape]) -> bool:
    """Whether n returns its first input unchanged."""
    if n.op in ("add", "mul", "concat"):
        return len(n.inputs) == 1
    if n.op == "clip":
        return n.attrs["lo"] == -np.inf and n.attrs["hi"] == np.inf
    if n.op == "shuffle":
        return n.attrs["groups"] in (1, shapes[n.inputs[0]][0])
    if n.op == "affine":
        return bool(np.all(n.params["scale"] == 1) and np.all(n.params["shift"] == 0))
    if n.op in ("maxpool", "avgpool"):
        return n.window.kernel == (1, 1) and n.window.stride == (1, 1) and n.window.pads == Window().pads
    if n.op == "adaptive_avgpool":
        return tuple(n.attrs["out"]) == shapes[n.inputs[0]][1:]
    if n.op == "flatten":
        return len(shapes[n.inputs[0]]) == 1
    return False
