"""Graph simplification: fold batch-norm affines into convs, fuse activations, drop no-op nodes; recognise
SiLU (x·Sigmoid(x)) and squeeze-and-excitation blocks."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np

from nptp_mpi.errors import ModelError
from nptp_mpi.model.graph import ACTIVATIONS, Graph, Node, Shape, Window


def simplify(graph: Graph) -> Graph:
    """The same function with fewer nodes (outputs equal up to float rounding); the input graph is untouched."""
    nodes = [dataclasses.replace(n, attrs=dict(n.attrs), params=dict(n.params)) for n in graph.nodes]
    nodes, output, changed = _silu(nodes, graph.output), graph.output, True
    while changed:
        nodes, output, changed = _sweep(nodes, output, graph.shapes)
    nodes = _residuals(_squeeze_excite(nodes, output, graph.shapes), output)
    return Graph(graph.name, graph.input, graph.input_shape, output, nodes)


def _uses(nodes: list[Node], output: str) -> Counter:
    uses = Counter(t for n in nodes for t in n.inputs)
    uses[output] += 1
    return uses


def _silu(nodes: list[Node], output: str) -> list[Node]:
    """x·Sigmoid(x), what exporters write for SiLU (Swish), as one silu node (which then fuses into a conv)."""
    uses, sigmoid = _uses(nodes, output), {n.output: n for n in nodes if n.op == "sigmoid"}
    out, dropped = [], set()
    for n in nodes:
        if n.op == "mul" and len(n.inputs) == 2:
            for x, s in (n.inputs, n.inputs[::-1]):
                if s in sigmoid and sigmoid[s].inputs[0] == x and uses[s] == 1:
                    dropped.add(s)
                    n = Node("silu", n.name, (x,), n.output)
                    break
        out.append(n)
    return [n for n in out if n.output not in dropped]


def _residuals(nodes: list[Node], output: str) -> list[Node]:
    """Each add of two maps into the conv that computes the later of its terms, when the add is that conv's only
    reader and the conv has no activation of its own: the conv's epilogue then adds the other term (its residual)
    and applies the add's activation, and the add's pass over memory is gone (ResNet's blocks). The conv stays
    where it is, after the residual's producer."""
    uses, made = _uses(nodes, output), {n.output: i for i, n in enumerate(nodes)}
    dropped = set()
    for n in nodes:
        if n.op != "add" or len(n.inputs) != 2 or n.inputs[0] == n.inputs[1]:
            continue
        last, other = sorted(n.inputs, key=lambda t: made.get(t, -1), reverse=True)
        conv = nodes[made[last]] if last in made else None
        if conv is None or conv.op != "conv" or len(conv.inputs) != 1 or conv.attrs.get("act") or uses[last] != 1:
            continue
        conv.inputs = (conv.inputs[0], other)
        conv.attrs.update({k: v for k, v in n.attrs.items() if k in ("act", "alpha", "lo", "hi")})
        conv.output = n.output
        dropped.add(id(n))
    return [n for n in nodes if id(n) not in dropped]


def _squeeze_excite(nodes: list[Node], output: str, shapes: dict[str, Shape]) -> list[Node]:
    """Global pooling of a map, 1×1 convs with activations on the pooled vector, the map times the result: one
    se node (the pooling becomes an allreduce of channel sums when the map is tiled). Any other product of a
    map and a per-channel tensor is refused."""
    uses, producer = _uses(nodes, output), {n.output: n for n in nodes}
    out, dropped = [], set()
    for n in nodes:
        if n.op == "mul" and len({shapes[t] for t in n.inputs}) > 1:
            x, gate = sorted(n.inputs, key=lambda t: -shapes[t][1] * shapes[t][2])
            chain, t = [], gate
            while t in producer and producer[t].op != "gap" and uses[t] == 1:
                chain.append(producer[t])
                t = producer[t].inputs[0]
            pool = producer.get(t)
            steps, params = _branch(chain[::-1])
            if pool is None or pool.op != "gap" or pool.inputs[0] != x or uses[t] != 1 or steps is None:
                raise ModelError(f"node {n.name!r}: a per-channel gate that is not a squeeze-and-excitation branch "
                                 "(global average pool of the same map, 1x1 convs and activations)")
            dropped |= {m.output for m in (pool, *chain)}
            n = Node("se", n.name, (x,), n.output, {"steps": steps}, params)
        out.append(n)
    return [n for n in out if n.output not in dropped]


def _branch(chain: list[Node]) -> tuple[tuple | None, dict[str, np.ndarray]]:
    """A squeeze-and-excitation branch as (act, alpha, lo, hi) per 1×1 conv and the convs' weights as matrices;
    (None, {}) if the chain holds anything else."""
    steps, params = [], {}
    for m in chain:
        a = m.attrs
        if m.op == "conv" and m.window.kernel == (1, 1) and a.get("groups", 1) == 1:
            i = len(steps)
            params[f"w{i}"] = m.params["w"].reshape(m.params["w"].shape[0], -1)
            if "b" in m.params:
                params[f"b{i}"] = m.params["b"]
            steps.append((a.get("act", ""), a.get("alpha", 0.0), a.get("lo", 0.0), a.get("hi", 0.0)))
        elif (m.op in ACTIVATIONS or m.op == "sigmoid") and steps and not steps[-1][0]:
            steps[-1] = (m.op, a.get("alpha", 0.0), a.get("lo", 0.0), a.get("hi", 0.0))
        else:
            return None, {}
    return (tuple(steps) if steps else None), params


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
    if n.op == "affine" and src.op in ("affine", "chnorm"):
        scale, shift = n.params["scale"], n.params["shift"]
        src.params.update(scale=src.params["scale"] * scale, shift=src.params["shift"] * scale + shift)
        return True
    if n.op in ACTIVATIONS and src.op in ("conv", "gemm", "add") and not src.attrs.get("act"):
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
