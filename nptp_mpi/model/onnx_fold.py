"""The ONNX front end's first pass: fold everything that is constant, whatever the op.

Exporters write constant subgraphs: Reshape or Unsqueeze of weights and batch-norm parameters, and
Shape → Gather → Unsqueeze → Concat → Reshape chains that compute a static shape at run time. Here shapes
are inferred with onnx's own shape inference (data propagation on) for the batch-1 input at the size the
model will run at; `Shape` and `Size` of a statically shaped tensor become constants, and every node whose
inputs are all constant (initializers, `Constant`, folded outputs) is computed once with onnx's reference
evaluator and replaced by its value. Nodes no output depends on are dropped. No onnxruntime, no new
dependency; names are kept, weights are not changed (batch-norm is left to the importer).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import external_data_helper, helper, numpy_helper

# never evaluated: random ops, and BatchNormalization (onnx.reference at opsets 9-13 uses batch statistics)
_KEEP = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
         "BatchNormalization"}


def static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Every tensor's shape where shape inference (with data propagation) finds it fully static. Inference runs
    on a skeleton: large float weights become typed inputs (serialising VGG's weights took seconds)."""
    skeleton = onnx.ModelProto()
    skeleton.ir_version, skeleton.producer_name = model.ir_version, model.producer_name
    skeleton.opset_import.extend(model.opset_import)
    g = skeleton.graph
    g.node.extend(model.graph.node)
    g.output.extend(model.graph.output)
    g.value_info.extend(model.graph.value_info)
    listed = {i.name for i in model.graph.input}
    g.input.extend(model.graph.input)
    for t in model.graph.initializer:
        if t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) or np.prod(t.dims) <= 16:
            g.initializer.append(t)  # shapes, axes, scalars: data propagation reads them
        elif t.name not in listed:
            g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, data_prop=True)
    except Exception:  # an invalid model: the importer names what it cannot run
        return {}
    out = {}
    for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        t = v.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            out[v.name] = [d.dim_value for d in t.shape.dim]
    return out


def _evaluate(node: onnx.NodeProto, values: list[np.ndarray], opsets) -> list[np.ndarray] | None:
    """node's outputs for constant inputs, by onnx's reference evaluator (in a one-node model that carries the
    model's opsets: the evaluator otherwise runs the newest version of the op); None if it cannot."""
    from onnx.reference import ReferenceEvaluator  # (only loaded for models that need it)

    names = [i for i in node.input if i]
    ins = [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(v.dtype), None)
           for i, v in zip(names, values, strict=True)]
    outs = [helper.make_value_info(o, onnx.TypeProto()) for o in node.output if o]
    one = helper.make_model(helper.make_graph([node], "fold", ins, outs), opset_imports=opsets)
    try:
        result = ReferenceEvaluator(one).run(None, dict(zip(names, values, strict=True)))
    except Exception:  # an op or case the evaluator lacks: the importer sees the node as written
        return None
    return [np.asarray(v) for v in result]


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """model, changed in place, with every constant node folded into an initializer (see the module docstring);
    the input's shape must be static (batch 1, the size to run at) for Shape to fold."""
    g = model.graph
    shapes = static_shapes(model)
    # TensorProto, converted only when a node needs the value; external data stays the importer's to check
    consts = {t.name: t for t in g.initializer}
    local = {name for name, t in consts.items() if not external_data_helper.uses_external_data(t)}
    arrays: dict[str, np.ndarray] = {}

    def value(name: str) -> np.ndarray:
        if name not in arrays:
            arrays[name] = numpy_helper.to_array(consts[name])
        return arrays[name]

    kept = []
    for n in g.node:
        ins = [i for i in n.input if i]
        std = n.domain in ("", "ai.onnx")
        out: list[np.ndarray] | None = None
        if std and n.op_type == "Shape" and ins and ins[0] in shapes:
            a = {x.name: x.i for x in n.attribute}
            dims = np.array(shapes[ins[0]], np.int64)
            out = [dims[a.get("start", 0):a.get("end", len(dims))]]
        elif std and n.op_type == "Size" and ins and ins[0] in shapes:
            out = [np.array(int(np.prod(shapes[ins[0]])), np.int64)]
        elif std and n.op_type == "Constant":
            out = _evaluate(n, [], model.opset_import)
        elif std and ins and n.op_type not in _KEEP and all(i in local for i in ins) \
                and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute):
            out = _evaluate(n, [value(i) for i in ins], model.opset_import)
        if out is None:
            kept.append(n)
            continue
        for name, v in zip((o for o in n.output if o), out, strict=False):
            arrays[name] = v
            consts[name] = numpy_helper.from_array(v, name)
            local.add(name)
    live = {o.name for o in g.output}
    alive = []
    for n in reversed(kept):  # drop nodes nothing reads
        if any(o in live for o in n.output):
            alive.append(n)
            live.update(i for i in n.input if i)
    alive.reverse()
    del g.node[:]
    g.node.extend(alive)
    stored = {t.name for t in g.initializer}
    for i in reversed(range(len(g.initializer))):  # in place: copying VGG's weights takes seconds
        if g.initializer[i].name not in live:
            del g.initializer[i]
    g.initializer.extend(t for name, t in consts.items() if name in live and name not in stored)
    inputs = [i for i in g.input if i.name not in consts or i.name in live]
    del g.input[:]
    g.input.extend(inputs)
    return model

def with_input_shape(model: onnx.ModelProto, size: tuple[int, int] | None) -> onnx.ModelProto:
    """model, changed in place, with its one image input's symbolic batch set to 1 and, given size (h, w), its
    height and width: the shapes the model will run at, so that shape inference can make them static."""
    weights = {t.name for t in model.graph.initializer}
    images = [i for i in model.graph.input if i.name not in weights]
    if len(images) != 1 or len(images[0].type.tensor_type.shape.dim) != 4:
        return model  # the importer explains what it expects
    dims = next(i for i in model.graph.input if i.name == images[0].name).type.tensor_type.shape.dim
    for i, (d, v) in enumerate(zip(dims, (1, None, *(size or (None, None))), strict=True)):
        if v is not None and (i > 0 or d.dim_value <= 0):  # (a batch other than 1 is the importer's to refuse)
            d.Clear()
            d.dim_value = v
    return model
