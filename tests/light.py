"""Weight-free ("light") ONNX models: strip float weights for storage, regenerate seeded ones at load time.

Storage convention: the one of ONNX's own light models (``onnx/backend/test/data/light/``, made by
``onnx.tools.replace_constants.replace_initializer_by_constant_of_shape``). Every float initializer
``W`` with more than ``threshold`` elements becomes

* an int64 initializer ``W__SHAPE`` holding ``W``'s dims, and
* a node ``ConstantOfShape(W__SHAPE) -> W`` whose ``value`` attribute is a one-element tensor of
  ``W``'s data type (filled with 0.5, as ONNX does),

so name, dims and data type all survive, the file stays a valid ONNX model that the checker accepts
and onnxruntime runs (with flat 0.5 weights), and ``restore_weights`` can turn each such pair back
into an initializer with seeded random data. A large float ``Constant`` node ``Constant -> W`` is
treated the same way, as ONNX's tool does. Unlike ONNX's tool, only floating-point tensors are
stripped: integer tensors (shapes, axes, indices, pads) are structure and are kept exactly, as are
small float tensors (scalars, clip bounds, epsilons).

``restore_weights`` also restores ONNX's own light models (same pattern, same suffix).
"""

from __future__ import annotations

import zlib
from collections import defaultdict

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SUFFIX = "__SHAPE"
FILL = 0.5
DEFAULT_THRESHOLD = 16

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}

# (op_type, input index) -> role of a constant feeding it.
_ROLES = {
    ("BatchNormalization", 1): "scale",
    ("BatchNormalization", 2): "shift",
    ("BatchNormalization", 3): "mean",
    ("BatchNormalization", 4): "var",
    ("LayerNormalization", 1): "scale",
    ("LayerNormalization", 2): "shift",
    ("InstanceNormalization", 1): "scale",
    ("InstanceNormalization", 2): "shift",
    ("GroupNormalization", 1): "scale",
    ("GroupNormalization", 2): "shift",
    ("Conv", 1): "weight",
    ("ConvTranspose", 1): "weight",
    ("Gemm", 1): "weight",
    ("MatMul", 1): "weight",
    ("MatMul", 0): "weight",
    ("Mul", 0): "scale",
    ("Mul", 1): "scale",
    ("Div", 1): "scale",
    ("Sqrt", 0): "scale",
    ("Pow", 0): "scale",
    ("Log", 0): "scale",
}


def _size(dims) -> int:
    return int(np.prod(list(dims), dtype=np.int64))


def _fill_value(data_type: int) -> TensorProto:
    dtype = helper.tensor_dtype_to_np_dtype(data_type)
    return numpy_helper.from_array(np.array([FILL], dtype=dtype), name="value")


def _shape_node(shape_name: str, output: str, data_type: int, name: str) -> onnx.NodeProto:
    return helper.make_node("ConstantOfShape", [shape_name], [output], name=name, value=_fill_value(data_type))


def lighten(model: onnx.ModelProto, threshold: int = DEFAULT_THRESHOLD, strip_docs: bool = True) -> onnx.ModelProto:
    """A copy of model with every float initializer / Constant above threshold elements replaced by
    ``<name>__SHAPE`` + ``ConstantOfShape`` (see the module doc). Integer and small tensors are kept.

    strip_docs drops doc strings, per-node and graph metadata (exporters put stack traces and debug
    dumps there); node names, value_info and model metadata stay.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    if out.functions or any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in g.node for a in n.attribute
    ):
        raise NotImplementedError("lighten: models with functions or subgraphs are not supported")
    if g.sparse_initializer:
        raise NotImplementedError("lighten: sparse initializers are not supported")

    kept, front = [], []
    stripped: set[str] = set()
    for init in g.initializer:
        if init.data_type in FLOAT_TYPES and _size(init.dims) > threshold:
            shape = numpy_helper.from_array(np.array(list(init.dims), dtype=np.int64), name=init.name + SUFFIX)
            kept.append(shape)
            front.append(_shape_node(shape.name, init.name, init.data_type, f"{init.name}{SUFFIX}_fill"))
            stripped.add(init.name)
        else:
            kept.append(init)

    nodes = []
    for node in g.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None) if node.op_type == "Constant" else None
        if value is not None and value.data_type in FLOAT_TYPES and _size(value.dims) > threshold:
            shape_name = node.output[0] + SUFFIX
            dims = np.array(list(value.dims), dtype=np.int64)
            nodes.append(
                helper.make_node(
                    "Constant",
                    [],
                    [shape_name],
                    name=f"{shape_name}_dims",
                    value=numpy_helper.from_array(dims, name=shape_name),
                )
            )
            nodes.append(_shape_node(shape_name, node.output[0], value.data_type, node.name or f"{shape_name}_fill"))
        else:
            nodes.append(node)

    del g.initializer[:]
    g.initializer.extend(kept)
    del g.node[:]
    g.node.extend(front + nodes)
    inputs = [i for i in g.input if i.name not in stripped]  # IR < 4 lists initializers as inputs too
    del g.input[:]
    g.input.extend(inputs)
    if strip_docs:
        out.doc_string = g.doc_string = ""
        del g.metadata_props[:]  # torch.export's graph signature: a debug dump naming every parameter
        for node in g.node:
            node.doc_string = ""
            del node.metadata_props[:]
    return out


def _consumers(graph: onnx.GraphProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    users: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name:
                users[name].append((node, i))
    return users


def _role(name: str, dims: list[int], users) -> tuple[str, int]:
    """(role, fan_in) of a stripped tensor, from the first consumer that says something (Identity is followed)."""
    seen, todo = set(), [name]
    while todo:
        t = todo.pop(0)
        if t in seen:
            continue
        seen.add(t)
        for node, i in users.get(t, []):
            if node.op_type == "Identity":
                todo.append(node.output[0])
                continue
            role = _ROLES.get((node.op_type, i))
            if role is None:
                continue
            if role != "weight":
                return role, 0
            if len(dims) < 2:
                continue
            if node.op_type == "ConvTranspose":
                return role, dims[0] * _size(dims[2:])
            if node.op_type == "Gemm":
                trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
                return role, dims[1] if trans_b else dims[0]
            if node.op_type == "MatMul":
                return role, dims[-2] if i == 1 else dims[-1]
            return role, _size(dims[1:])
    if len(dims) >= 2 and _size(dims[1:]) > 1:
        return "weight", _size(dims[1:])  # PyTorch layout (out, in, ...), e.g. a weight behind a Transpose
    return "shift", 0


def _random(role: str, fan_in: int, dims: list[int], rng: np.random.Generator) -> np.ndarray:
    if role == "weight":
        return rng.normal(0.0, np.sqrt(2.0 / max(fan_in, 1)), size=dims)
    if role in ("var", "scale"):
        return rng.uniform(0.5, 1.5, size=dims)
    return rng.normal(0.0, 0.1, size=dims)  # shift, mean, bias and anything else


def stripped_tensors(model: onnx.ModelProto) -> dict[str, tuple[list[int], int]]:
    """name -> (dims, data_type) of every tensor that restore_weights would regenerate."""
    return {name: (dims, dt) for name, dims, dt, _ in _pairs(model.graph)}


def _pairs(graph: onnx.GraphProto):
    """(name, dims, data_type, ConstantOfShape node) for each light pair in graph."""
    shapes = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name.endswith(SUFFIX)}
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0].endswith(SUFFIX):
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                shapes[node.output[0]] = numpy_helper.to_array(value)
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input and node.input[0] in shapes:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            data_type = value.data_type if value is not None else TensorProto.FLOAT
            yield node.output[0], [int(d) for d in shapes[node.input[0]]], data_type, node


def restore_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """A copy of a light model with each ``ConstantOfShape(<W>__SHAPE) -> W`` pair turned back into an
    initializer ``W`` of seeded random data; everything else is left exactly as stored.

    Values depend only on (seed, tensor name), not on order, and are chosen by how the tensor is used:
    conv / Gemm / MatMul weights He-like N(0, sqrt(2 / fan_in)); BatchNormalization running_var
    (input 4) and normalization scales, Mul/Div scale operands U(0.5, 1.5); biases, shifts and
    running means N(0, 0.1). A tensor with no telling consumer gets the He rule if it has >= 2 dims with
    PyTorch's (out, in, ...) layout, else N(0, 0.1).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    users = _consumers(g)
    pairs = list(_pairs(g))
    if not pairs:
        return out
    drop_nodes = {id(node) for *_, node in pairs}
    new_inits = []
    for name, dims, data_type, _ in pairs:
        role, fan_in = _role(name, dims, users)
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        data = _random(role, fan_in, dims, rng).astype(helper.tensor_dtype_to_np_dtype(data_type))
        new_inits.append(numpy_helper.from_array(data, name=name))

    nodes = [n for n in g.node if id(n) not in drop_nodes]
    still_used = {t for n in nodes for t in n.input} | {o.name for o in g.output}
    nodes = [
        n
        for n in nodes
        if not (n.op_type == "Constant" and n.output[0].endswith(SUFFIX) and n.output[0] not in still_used)
    ]
    inits = [t for t in g.initializer if not (t.name.endswith(SUFFIX) and t.name not in still_used)]
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(inits + new_inits)
    inputs = [i for i in g.input if not (i.name.endswith(SUFFIX) and i.name not in still_used)]
    if out.ir_version <= 3:  # IR < 4: every initializer must also be a graph input
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in new_inits]
    del g.input[:]
    g.input.extend(inputs)
    return out


def main(argv: list[str] | None = None) -> None:
    """``python tests/light.py OUT_DIR FILE...``: a full copy of each light FILE in OUT_DIR, its weights restored
    with seed 0 (what the tests run). Benchmark those: a light file as stored runs its 0.5-filled weights,
    whose values overflow to inf and NaN within a few blocks of most of these networks."""
    import argparse
    from pathlib import Path

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("out", type=Path)
    p.add_argument("files", nargs="+", type=Path)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for f in args.files:
        onnx.save(restore_weights(onnx.load(f), seed=0), args.out / f.name)
        print(args.out / f.name)


if __name__ == "__main__":
    main()
