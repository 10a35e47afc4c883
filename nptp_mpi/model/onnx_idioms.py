"""The ONNX front end's second pass: ops that exporters spell out node by node become the one ONNX op they
compute, so the importer meets one node. Runs after constant folding (every constant is an initializer).

* x·HardSigmoid(x; 1/6, 1/2) → HardSwish(x)  (opset-13 exports of HardSwish);
* 0.5·x·(1 + Erf(x/√2)) → Gelu(x)  (exports before opset 20);
* (x − mean(x))/√(mean((x − mean(x))²) + ε) over the last axis → LayerNormalization(x, axis −1, ε), without
  scale and shift (the Mul and Add after it stay, and fold into it later)  (exports before opset 17).

A chain is rewritten only when nothing else reads its inner tensors.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper


def rewrite_idioms(model: onnx.ModelProto) -> onnx.ModelProto:
    """model, changed in place, with each idiom above as its one op."""
    for rewrite in (_hardswish, _gelu, _layernorm):
        net = _Net(model)
        for n in model.graph.node:
            rewrite(net, n)
        net.drop_unread()
    return model


class _Net:
    """Who produces and who reads each tensor, and the small constants a pattern compares against."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.graph = model.graph
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.uses = Counter(t for n in model.graph.node for t in n.input)
        self.uses.update(o.name for o in model.graph.output)
        self.inits = {t.name: t for t in model.graph.initializer}
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.dropped: set[str] = set()  # outputs of nodes a rewrite made unread

    def scalar(self, name: str) -> float | None:
        """The value of a one-element constant, else None."""
        t = self.inits.get(name)
        return None if t is None or int(np.prod(t.dims)) != 1 else float(numpy_helper.to_array(t).reshape(()))

    def only(self, name: str, *ops: str) -> onnx.NodeProto | None:
        """The node of one of ops producing name, when nothing else reads name."""
        n = self.producer.get(name)
        return n if n is not None and n.op_type in ops and self.uses[name] == 1 else None

    def axes(self, n: onnx.NodeProto) -> list[int] | None:
        """A Reduce node's axes (attribute before opset 18, input from 18)."""
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        if "axes" in a:
            return list(a["axes"])
        t = self.inits.get(n.input[1]) if len(n.input) > 1 and n.input[1] else None
        return None if t is None else [int(i) for i in numpy_helper.to_array(t).ravel()]

    def replace(self, n: onnx.NodeProto, op_type: str, inputs: list[str], gone: list[onnx.NodeProto],
                **attrs) -> None:
        """n, in place, as op_type(inputs) with attrs; the nodes in gone are dropped."""
        n.op_type, n.domain = op_type, ""
        del n.input[:], n.attribute[:]
        n.input.extend(inputs)
        n.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
        self.dropped.update(m.output[0] for m in gone)

    def drop_unread(self) -> None:
        kept = [n for n in self.graph.node if n.output[0] not in self.dropped]
        del self.graph.node[:]
        self.graph.node.extend(kept)


def _factors(net: _Net, t: str, depth: int) -> list[str]:
    """The leaves of the product tree of Mul nodes under t (each inner product read only there)."""
    m = net.only(t, "Mul") if depth else None
    return [t] if m is None or len(m.input) != 2 else [f for i in m.input for f in _factors(net, i, depth - 1)]


def _hardswish(net: _Net, n: onnx.NodeProto) -> None:
    if n.op_type != "Mul" or len(n.input) != 2:
        return
    for x, gate in (tuple(n.input), tuple(n.input)[::-1]):
        g = net.only(gate, "HardSigmoid")
        a = {} if g is None else {x.name: x.f for x in g.attribute}
        if g is not None and g.input[0] == x and abs(a.get("alpha", 0.2) - 1 / 6) < 1e-6 \
                and abs(a.get("beta", 0.5) - 0.5) < 1e-6:
            return net.replace(n, "HardSwish", [x], [g])


def _gelu(net: _Net, n: onnx.NodeProto) -> None:
    if n.op_type != "Mul":
        return
    leaves = [f for t in n.input for f in _factors(net, t, 1)] if len(n.input) == 2 else []
    half = [t for t in leaves if net.scalar(t) == 0.5]
    for arm in leaves:
        one = net.only(arm, "Add")
        erf = next((e for t in (one.input if one else ()) if (e := net.only(t, "Erf"))), None)
        scaled = net.only(erf.input[0], "Div", "Mul") if erf else None
        if one is None or erf is None or scaled is None or len(leaves) != 3 or len(half) != 1:
            continue
        x, c = scaled.input[0], net.scalar(scaled.input[1])
        root2 = c is not None and abs((c if scaled.op_type == "Div" else 1 / c if c else 0) - 2 ** 0.5) < 1e-5
        other = next(t for t in one.input if t != erf.output[0])
        if root2 and net.scalar(other) == 1.0 and sorted(leaves) == sorted([x, arm, half[0]]):
            inner = [net.producer[t] for t in (n.input[0], n.input[1]) if t not in leaves]
            return net.replace(n, "Gelu", [x], [one, erf, scaled, *inner])


def _layernorm(net: _Net, n: onnx.NodeProto) -> None:
    if n.op_type != "Div":
        return
    sqrt = net.only(n.input[1], "Sqrt")
    add = net.only(sqrt.input[0], "Add") if sqrt else None
    var = next((v for t in (add.input if add else ()) if (v := net.only(t, "ReduceMean"))), None)
    if var is None:
        return
    eps = net.scalar(next(t for t in add.input if t != var.output[0]))
    sq = net.producer.get(var.input[0])
    d = n.input[0]
    squares = sq is not None and net.uses[sq.output[0]] == 1 and (
        (sq.op_type == "Pow" and sq.input[0] == d and net.scalar(sq.input[1]) == 2.0)
        or (sq.op_type == "Mul" and list(sq.input) == [d, d]))
    sub = net.producer.get(d)
    mean = net.producer.get(sub.input[1]) if sub is not None and sub.op_type == "Sub" else None
    if eps is None or not squares or mean is None or mean.op_type != "ReduceMean" or mean.input[0] != sub.input[0] \
            or net.uses[mean.output[0]] != 1 or net.uses[d] != (2 if sq.op_type == "Pow" else 3):
        return
    if net.axes(mean) not in ([-1], [3]) or net.axes(var) not in ([-1], [3]) \
            or any(a.name == "keepdims" and a.i == 0 for m in (mean, var) for a in m.attribute):
        return
    net.replace(n, "LayerNormalization", [sub.input[0]], [sqrt, add, var, sq, sub, mean], axis=-1, epsilon=eps)
