"""ONNX import of classic ImageNet CNN exports (opset 7+, batch 1) into a Graph, and export of any Graph."""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable

import numpy as np
import onnx
from onnx import external_data_helper, helper, numpy_helper

from nptp_mpi.errors import InputError, ModelError
from nptp_mpi.io.files import open_regular, require_regular
from nptp_mpi.model.graph import ACTIVATIONS, Graph, Node, Shape, Window, _out_shape
from nptp_mpi.model.onnx_fold import fold_constants, with_input_shape
from nptp_mpi.model.onnx_idioms import rewrite_idioms
from nptp_mpi.model.passes import simplify

# ---------------------------------------------------------------------------------------------- import

MAX_MODEL_BYTES = 1 << 31  # protobuf's own limit; external data files may be 16 times that
MAX_ELEMENTS = 1 << 31  # values in one feature map (8 GiB of float32)
_HANDLERS: dict[str, tuple[Callable, set[str], bool]] = {}


def _op(*types: str, attrs: str = "", nhwc: bool = False) -> Callable:
    """Register an import handler for ONNX op types, with the attribute names it understands; nhwc: it also
    takes channels-last maps (the Transpose (0, 2, 3, 1) of one we hold), and its output stays channels-last."""

    def register(f: Callable) -> Callable:
        for t in types:
            _HANDLERS[t] = (f, set(attrs.split()), nhwc)
        return f

    return register


def load_onnx(path: str, size: tuple[int, int] | None = None) -> Graph:
    """Read an ONNX CNN as a simplified Graph; size (h, w) fills or overrides the input's spatial dims."""
    try:
        with open_regular(path, "ONNX model", MAX_MODEL_BYTES) as f:
            model = onnx.load_model_from_string(f.read())  # (external data: read by _initializer, checked there)
    except InputError:
        raise
    except Exception as e:  # protobuf decode errors have no common public base class
        raise ModelError(f"cannot read ONNX model {path}: {e}") from None
    with np.errstate(all="ignore"):  # non-finite weights are refused once loaded (load.check_finite), not warned of
        return simplify(_Importer(rewrite_idioms(fold_constants(with_input_shape(model, size))), path).run(size))


class _Importer:
    """Walks the ONNX nodes in order, tracking constants, aliases and the (batch-less) shape of each tensor."""

    def __init__(self, model: onnx.ModelProto, path: str) -> None:
        self.model, self.path, self.where = model, path, os.path.basename(path)
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.consts = {t.name: self._initializer(t) for t in model.graph.initializer}
        self.uses = Counter(t for n in model.graph.node for t in n.input)
        self.uses.update(o.name for o in model.graph.output)
        self.alias: dict[str, str] = {}
        self.shapes: dict[str, Shape] = {}
        self.pending: dict[str, tuple[str, str, int]] = {}  # channel-shuffle stage: (stage, source, groups)
        self.padded: dict[str, tuple] = {}  # a zero Pad held back: (source, pads, its node, its name)
        self.last: set[str] = set()  # ONNX tensors that are a map we hold, seen channels-last (N, H, W, C)
        self.producer: dict[str, Node] = {}
        self.nodes: list[Node] = []

    def _initializer(self, t: onnx.TensorProto) -> np.ndarray:
        """Initializer as an array; external data only from files inside the model's folder."""
        if external_data_helper.uses_external_data(t):
            base = os.path.dirname(os.path.realpath(self.path))
            location = external_data_helper.ExternalDataInfo(t).location
            full = os.path.realpath(os.path.join(base, location))
            if os.path.commonpath([base, full]) != base:
                raise ModelError(
                    f"initializer {t.name!r} in {self.where}: external data {location!r} lies outside the model folder"
                )
            require_regular(full, "external data", MAX_MODEL_BYTES << 4)
            try:
                external_data_helper.load_external_data_for_tensor(t, base)
            except OSError as e:
                raise ModelError(f"initializer {t.name!r} in {self.where}: {e}") from None
        return numpy_helper.to_array(t)

    def run(self, size: tuple[int, int] | None) -> Graph:
        g = self.model.graph
        inputs = [i for i in g.input if i.name not in self.consts]
        if len(inputs) != 1 or len(g.output) != 1:
            raise ModelError(f"{self.where}: expected one image input and one output")
        dims = [d.dim_value if d.dim_value > 0 else None for d in inputs[0].type.tensor_type.shape.dim]
        if len(dims) != 4 or dims[0] not in (1, None) or dims[1] is None:
            raise ModelError(f"{self.where}: input {inputs[0].name!r} must be (1, C, H, W), got {dims}")
        h, w = size or dims[2:]
        if h is None or w is None:
            raise ModelError(f"{self.where}: input {inputs[0].name!r} has symbolic H/W; give a size (h, w)")
        self.shapes[inputs[0].name] = (dims[1], h, w)
        names: set[str] = set()
        for i, n in enumerate(g.node):
            name = n.name or f"{n.op_type}_{i}"
            name = name if name not in names else f"{name}_{i}"
            names.add(name)
            std = n.domain in ("", "ai.onnx")
            handler, known, nhwc = _HANDLERS.get(n.op_type, (None, set(), False)) if std else (None, set(), False)
            if handler is None:
                raise self.err(n, name)
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            for k, v in attrs.items():
                if k not in known:
                    raise self.err(n, name, f" attribute {k}={v!r}")
            attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
            maps = [t for t in n.input if t and t not in self.consts]
            last = [t for t in maps if t in self.last]
            if last and (not nhwc or len(last) != len(maps)):
                raise self.err(n, name, " on a channels-last map (after a Transpose (0, 2, 3, 1))"
                               + (" and a channels-first one" if nhwc else ""))
            if last:  # (a Transpose back to channels-first takes its output off again)
                self.last.update(o for o in n.output if o)
            handler(self, n, name, attrs)
        out = self.alias.get(g.output[0].name, g.output[0].name)
        if out not in self.shapes:
            raise ModelError(f"{self.where}: output {g.output[0].name!r} is not a computed feature map or vector")
        name = os.path.splitext(self.where)[0]
        return Graph(name, inputs[0].name, self.shapes[inputs[0].name], out, self.nodes)

    def err(self, n: onnx.NodeProto, name: str, detail: str = "") -> ModelError:
        return ModelError(f"unsupported ONNX op {n.op_type!r}{detail} (node {name!r}) in {self.where}")

    def x(self, n: onnx.NodeProto, name: str, i: int = 0, padded: bool = False) -> str:
        """Dynamic input i (a feature map or vector computed by an earlier node); padded: a window op that takes a
        held-back zero Pad's input (window() adds the pads). Any other reader of a held-back Pad gets it computed."""
        t = self.alias.get(n.input[i], n.input[i])
        if padded and t in self.padded:
            t = self.padded[t][0]
        elif t in self.padded and t not in self.shapes:
            src, pads, pad, pad_name = self.padded[t]
            self.emit(pad, pad_name, "pad", [src], {"value": 0.0}, window=Window(pads=pads))
        if t not in self.shapes:
            raise self.err(n, name, f" with constant or unsupported input {n.input[i]!r}")
        return t

    def const(self, n: onnx.NodeProto, name: str, i: int) -> np.ndarray:
        """Constant input i (initializer or Constant output)."""
        if i >= len(n.input) or n.input[i] not in self.consts:
            raise self.err(n, name, f" with non-constant input {i}")
        return self.consts[n.input[i]]

    def opt_const(self, n: onnx.NodeProto, name: str, i: int) -> np.ndarray | None:
        """Optional constant input i; None when absent."""
        return self.const(n, name, i) if i < len(n.input) and n.input[i] else None

    def emit(self, n, name, op, inputs, attrs=None, params=None, window=None, out: str | None = None) -> None:
        """Append a graph node computing ONNX output 0 of n, or `out` (an activation of a vector fuses into its
        gemm)."""
        if op in ACTIVATIONS and len(self.shapes[inputs[0]]) == 1:
            self.into_gemm(n, name, inputs[0]).attrs.update(attrs or {}, act=op)
            return
        node = Node(op, name, tuple(inputs), out or n.output[0], attrs or {}, params or {}, window)
        try:
            self.shapes[node.output] = _out_shape(node, [self.shapes[t] for t in inputs])
        except ModelError as e:
            raise ModelError(f"ONNX op {n.op_type!r} (node {name!r}) in {self.where}: {e}") from None
        if math.prod(self.shapes[node.output]) > MAX_ELEMENTS:
            raise ModelError(f"ONNX op {n.op_type!r} (node {name!r}) in {self.where}: its output "
                             f"{self.shapes[node.output]} has more than {MAX_ELEMENTS} values")
        self.nodes.append(node)
        self.producer[node.output] = node

    def into_gemm(self, n, name, x: str, bias: bool = False) -> Node:
        """The gemm computing vector x (and nothing else), made to compute n's output instead."""
        src = self.producer.get(x)
        if src is None or src.op != "gemm" or src.attrs["act"] or (bias and "b" in src.params) or self.uses[x] != 1:
            raise self.err(n, name, " on a vector that is not the sole use of a Gemm/MatMul output")
        src.output = n.output[0]
        self.shapes[src.output], self.producer[src.output] = self.shapes[x], src
        return src

    def window(self, n, name, x: str, a: dict, kernel) -> Window:
        """Sliding window of a Conv/pool node, auto_pad resolved against the known input size."""
        k, s = tuple(a.get("kernel_shape", kernel)), tuple(a.get("strides", (1, 1)))
        d = tuple(a.get("dilations", (1, 1)))
        if len(k) != 2:
            raise self.err(n, name, f" with {len(k)}-D window")
        if len(s) != 2 or len(d) != 2 or min(*k, *s, *d) < 1 or len(a.get("pads", (0,) * 4)) != 4 \
                or min(a.get("pads", (0,))) < 0:
            raise ModelError(f"ONNX op {n.op_type!r} (node {name!r}) in {self.where}: invalid window: kernel "
                             f"{list(k)}, strides {list(s)}, dilations {list(d)}, pads {list(a.get('pads', ()))} (the "
                             "spec wants values >= 1, pads >= 0, four of them)")
        pads, auto = tuple(a.get("pads", (0, 0, 0, 0))), a.get("auto_pad", "NOTSET")
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = _same_pads(self.shapes[x][1:], k, s, d, auto == "SAME_LOWER")
        elif auto == "VALID":
            pads = (0, 0, 0, 0)
        elif auto != "NOTSET":
            raise self.err(n, name, f" attribute auto_pad={auto!r}")
        if x != self.alias.get(n.input[0], n.input[0]):  # x() folded a held-back zero Pad: it becomes padding
            pads = tuple(p + q for p, q in zip(pads, self.padded[n.input[0]][1], strict=True))
        return Window(k, s, pads, d, bool(a.get("ceil_mode", 0)))


def _same_pads(hw: tuple[int, ...], k: tuple, s: tuple, d: tuple, lower: bool) -> tuple[int, int, int, int]:
    """Explicit (top, left, bottom, right) pads for auto_pad SAME_UPPER/SAME_LOWER: output = ceil(n / stride)."""
    total = [max((-(-n // st) - 1) * st + (kk - 1) * dd + 1 - n, 0) for n, kk, st, dd in zip(hw, k, s, d, strict=True)]
    begin = [t - t // 2 if lower else t // 2 for t in total]
    return begin[0], begin[1], total[0] - begin[0], total[1] - begin[1]


def _per_channel(c: np.ndarray, channels: int, last: bool = False) -> np.ndarray | None:
    """A constant that broadcasts over (1, C, H, W) per channel (last: over (1, H, W, C)), as a (C,) float32
    vector; else None."""
    shape = (1,) * (4 - c.ndim) + c.shape
    axis = 3 if last else 1
    if c.ndim > 4 or any(d != 1 for i, d in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(c.astype(np.float32).reshape(-1), (channels,)).copy()


@_op("Constant", attrs="value value_float value_floats value_int value_ints")
def _constant(imp: _Importer, n, name, a) -> None:
    """A constant: folded away before import (kept here for models the folding pass leaves it in)."""
    (value,) = a.values()
    imp.consts[n.output[0]] = numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else np.array(value)


@_op("Identity", nhwc=True)
@_op("Dropout", attrs="ratio is_test seed", nhwc=True)
def _forward(imp: _Importer, n, name, a) -> None:
    """Passes its input on (inference mode)."""
    if n.input[0] in imp.consts:
        imp.consts[n.output[0]] = imp.consts[n.input[0]]
    else:
        imp.alias[n.output[0]] = imp.x(n, name)


@_op("Conv", attrs="kernel_shape strides pads dilations group auto_pad")
def _conv(imp: _Importer, n, name, a) -> None:
    """conv: any stride, dilation, groups and padding (auto_pad resolved); a zero Pad before it folds in."""
    x, w = imp.x(n, name, padded=True), imp.const(n, name, 1).astype(np.float32)
    if w.ndim != 4:
        raise imp.err(n, name, f" with {w.ndim - 2}-D kernel")
    params = {"w": w}
    if (b := imp.opt_const(n, name, 2)) is not None:
        params["b"] = b.astype(np.float32)
    window = imp.window(n, name, x, a, w.shape[2:])
    imp.emit(n, name, "conv", [x], {"groups": a.get("group", 1), "act": ""}, params, window)


@_op("MaxPool", attrs="kernel_shape strides pads dilations auto_pad ceil_mode storage_order")
@_op("AveragePool", attrs="kernel_shape strides pads auto_pad ceil_mode count_include_pad")
def _pool(imp: _Importer, n, name, a) -> None:
    """maxpool / avgpool; over the whole map: global pooling (gap, gmp); a zero Pad before AveragePool folds in."""
    if a.get("storage_order", 0) or len([o for o in n.output if o]) > 1:
        raise imp.err(n, name, " with storage_order=1 or an indices output")
    x = imp.x(n, name, padded=n.op_type == "AveragePool")
    window = imp.window(n, name, x, a, ())
    if window.kernel == imp.shapes[x][1:] and window.pads == (0, 0, 0, 0) and window.dilation == (1, 1):
        return imp.emit(n, name, "gmp" if n.op_type == "MaxPool" else "gap", [x])  # the whole map: global pooling
    if n.op_type == "MaxPool":
        return imp.emit(n, name, "maxpool", [x], {}, window=window)
    include = bool(a.get("count_include_pad", 0))
    if n.input[0] in imp.padded:  # a zero Pad before it counts in every window
        if not include and any(a.get("pads", ())):
            raise imp.err(n, name, " after a Pad, with pads of its own that do not count (count_include_pad=0)")
        include = True
    return imp.emit(n, name, "avgpool", [x], {"count_include_pad": include}, window=window)


_UNARY = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Softplus": "softplus", "HardSwish": "hardswish",
          "GlobalAveragePool": "gap", "GlobalMaxPool": "gmp"}


@_op(*list(_UNARY)[:5], nhwc=True)
@_op(*list(_UNARY)[5:])
def _unary(imp: _Importer, n, name, a) -> None:
    """The activation or global pooling of the same name (activations fuse into the conv or gemm before)."""
    imp.emit(n, name, _UNARY[n.op_type], [imp.x(n, name)])


@_op("LeakyRelu", attrs="alpha", nhwc=True)
@_op("Elu", attrs="alpha", nhwc=True)
def _alpha_act(imp: _Importer, n, name, a) -> None:
    """leakyrelu / elu with their alpha (fuse into the conv or gemm before)."""
    default = {"LeakyRelu": 0.01, "Elu": 1.0}[n.op_type]
    imp.emit(n, name, n.op_type.lower(), [imp.x(n, name)], {"alpha": float(a.get("alpha", default))})


@_op("HardSigmoid", attrs="alpha beta", nhwc=True)
def _hardsigmoid(imp: _Importer, n, name, a) -> None:
    """hardsigmoid (alpha, beta); fuses into the conv or gemm before."""
    imp.emit(n, name, "hardsigmoid", [imp.x(n, name)], {"alpha": float(a.get("alpha", 0.2)),
                                                         "lo": float(a.get("beta", 0.5))})


@_op("Gelu", attrs="approximate", nhwc=True)
def _gelu(imp: _Importer, n, name, a) -> None:
    """gelu, the exact (erf) form; fuses into the conv or gemm before."""
    if a.get("approximate", "none") != "none":
        raise imp.err(n, name, f" attribute approximate={a['approximate']!r} (the exact, erf form runs)")
    imp.emit(n, name, "gelu", [imp.x(n, name)])


@_op("PRelu")
def _prelu(imp: _Importer, n, name, a) -> None:
    """prelu with one slope per channel."""
    x = imp.x(n, name)
    slope = _per_channel(imp.const(n, name, 1), imp.shapes[x][0]) if len(imp.shapes[x]) == 3 else None
    if slope is None:
        raise imp.err(n, name, " with a slope that is not per channel")
    imp.emit(n, name, "prelu", [x], {}, {"slope": slope})


@_op("Clip", attrs="min max", nhwc=True)
def _clip(imp: _Importer, n, name, a) -> None:
    """clip (bounds as attributes or constant inputs); ReLU6 fuses into the conv or gemm before."""
    lo, hi = a.get("min", -np.inf), a.get("max", np.inf)  # opset < 11: attributes; later: optional inputs
    lo = lo if (c := imp.opt_const(n, name, 1)) is None else c.item()
    hi = hi if (c := imp.opt_const(n, name, 2)) is None else c.item()
    imp.emit(n, name, "clip", [imp.x(n, name)], {"lo": float(lo), "hi": float(hi)})


@_op("LRN", attrs="size alpha beta bias")
def _lrn(imp: _Importer, n, name, a) -> None:
    """lrn across channels."""
    attrs = {"size": a["size"], **{k: float(a.get(k, v)) for k, v in (("alpha", 1e-4), ("beta", 0.75), ("bias", 1.0))}}
    imp.emit(n, name, "lrn", [imp.x(n, name)], attrs)


@_op("BatchNormalization", attrs="epsilon momentum spatial training_mode is_test consumed_inputs")
def _batchnorm(imp: _Importer, n, name, a) -> None:
    """A per-channel affine, folded into the conv before it."""
    if a.get("spatial", 1) != 1 or a.get("training_mode", 0) or len([o for o in n.output if o]) > 1:
        raise imp.err(n, name, " in training mode or with spatial=0")
    gamma, beta, mean, var = (imp.const(n, name, i).astype(np.float64) for i in (1, 2, 3, 4))
    scale = gamma / np.sqrt(var + a.get("epsilon", 1e-5))
    params = {"scale": scale.astype(np.float32), "shift": (beta - mean * scale).astype(np.float32)}
    imp.emit(n, name, "affine", [imp.x(n, name)], {}, params)


# Elementwise op with one per-channel constant c: (scale, shift) of the equivalent affine.
_AFFINE = {
    "Add": lambda c: (1, c),
    "Sum": lambda c: (1, c),
    "Sub": lambda c: (1, -c),
    "Mul": lambda c: (c, 0),
    "Div": lambda c: (1 / c, 0),
}


@_op(*_AFFINE, attrs="broadcast axis", nhwc=True)
def _arith(imp: _Importer, n, name, a) -> None:
    """Two maps: add / mul; a map and a per-channel constant: an affine; a vector and a bias: the gemm's bias."""
    consts = [t for t in n.input if t in imp.consts]
    if not consts and n.op_type in ("Add", "Sum", "Mul"):
        ins = [imp.x(n, name, i) for i in range(len(n.input))]
        return imp.emit(n, name, "mul" if n.op_type == "Mul" else "add", ins)
    if len(n.input) != 2 or len(consts) != 1 or (n.op_type in ("Sub", "Div") and consts[0] != n.input[1]):
        raise imp.err(n, name, " with these constant operands")
    x, c = imp.x(n, name, 1 - list(n.input).index(consts[0])), imp.consts[consts[0]]
    if "axis" in a:  # opset < 7 broadcast: the constant's dims start at axis
        c = c.reshape(c.shape + (1,) * (4 - a["axis"] - c.ndim))
    shape = imp.shapes[x]
    if len(shape) == 1 and n.op_type in ("Add", "Sum"):
        imp.into_gemm(n, name, x, bias=True).params["b"] = _vector(imp, n, name, c, shape[0])
        return
    per_channel = _per_channel(c, shape[0], n.input[0] in imp.last or n.input[1] in imp.last) if len(shape) == 3 \
        else None
    if per_channel is None:
        raise imp.err(n, name, f" with a constant of shape {c.shape} (not per-channel)")
    c = per_channel
    if n.op_type == "Div" and not np.all(c):
        raise ModelError(f"ONNX op 'Div' (node {name!r}) in {imp.where}: divides by a constant that holds zeros")
    scale, shift = _AFFINE[n.op_type](c)
    params = {k: np.broadcast_to(np.float32(v), c.shape).copy() for k, v in (("scale", scale), ("shift", shift))}
    imp.emit(n, name, "affine", [x], {}, params)


def _vector(imp: _Importer, n, name, c: np.ndarray, m: int) -> np.ndarray:
    """A bias constant of m or 1 elements (any leading unit axes) as an (m,) float32 vector."""
    if c.size not in (1, m):
        raise imp.err(n, name, f" with bias of shape {c.shape} for {m} outputs")
    return np.broadcast_to(c.astype(np.float32).reshape(-1), (m,)).copy()


@_op("Concat", attrs="axis")
def _concat(imp: _Importer, n, name, a) -> None:
    """concat along channels."""
    ins = [imp.x(n, name, i) for i in range(len(n.input))]
    if a.get("axis") not in (1, -3):
        raise imp.err(n, name, f" attribute axis={a.get('axis')} (only channels concatenate; the spec requires it)")
    imp.emit(n, name, "concat", ins)


@_op("Flatten", attrs="axis")
def _flatten(imp: _Importer, n, name, a) -> None:
    """flatten (axis 1, or the same axis counted from the end)."""
    x = imp.x(n, name)
    if a.get("axis", 1) not in (1, -len(imp.shapes[x])):  # (batch-less shapes: axis 1 is the first axis we hold)
        raise imp.err(n, name, f" attribute axis={a['axis']}")
    imp.emit(n, name, "flatten", [x])


@_op("Squeeze", attrs="axes")
def _squeeze(imp: _Importer, n, name, a) -> None:
    """Squeeze of a (1, C, 1, 1) map: the vector (a Flatten); of a (1, K) vector's batch axis: itself."""
    x = imp.x(n, name)
    shape = imp.shapes[x]
    axes = a.get("axes", imp.opt_const(n, name, 1))
    axes = None if axes is None else sorted(int(i) % (len(shape) + 1) for i in np.ravel(axes))
    if len(shape) == 3 and shape[1:] == (1, 1) and axes in (None, [2, 3]):
        return imp.emit(n, name, "flatten", [x])
    if len(shape) == 1 and axes == [0]:
        imp.alias[n.output[0]] = x
        return None
    raise imp.err(n, name, f" of axes {axes} on shape (1, {', '.join(map(str, shape))})")


@_op("ReduceMean", "ReduceMax", attrs="axes keepdims noop_with_empty_axes")
def _reduce(imp: _Importer, n, name, a) -> None:
    """A mean or maximum over H and W: global pooling (then the vector, without keepdims)."""
    x = imp.x(n, name)
    axes = a.get("axes", imp.opt_const(n, name, 1))
    if len(imp.shapes[x]) != 3 or axes is None or sorted(int(i) % 4 for i in np.ravel(axes)) != [2, 3]:
        raise imp.err(n, name, f" over axes {None if axes is None else list(np.ravel(axes))} (only H and W reduce)")
    op = "gap" if n.op_type == "ReduceMean" else "gmp"
    if a.get("keepdims", 1):
        return imp.emit(n, name, op, [x])
    pooled = f"{n.output[0]}/pooled"
    imp.emit(n, name + "/pool", op, [x], out=pooled)
    return imp.emit(n, name, "flatten", [pooled])


@_op("Pad", attrs="mode pads value")
def _pad(imp: _Importer, n, name, a) -> None:
    """pad: a constant padding of H and W; a zero one adds to the padding of the Conv or AveragePool reading it.

    A zero Pad is held back until its reader comes; an average pool then counts the padded zeros, as the Pad
    made it."""
    x = imp.x(n, name)
    pads = a.get("pads", imp.opt_const(n, name, 1))
    value = a.get("value", 0.0) if (c := imp.opt_const(n, name, 2)) is None else float(np.ravel(c)[0])
    if len(n.input) > 3 and n.input[3]:
        raise imp.err(n, name, " with an axes input")
    pads = [int(p) for p in np.ravel(pads)] if pads is not None else []
    if a.get("mode", "constant") != "constant" or len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) \
            or min(pads) < 0 or len(imp.shapes[x]) != 3 or not np.isfinite(value):
        raise imp.err(n, name, f" with mode {a.get('mode', 'constant')!r}, pads {pads} and value {value} (only a "
                      "constant, finite, non-negative padding of H and W runs)")
    hw = (pads[2], pads[3], pads[6], pads[7])
    if value == 0:
        imp.padded[n.output[0]] = (x, hw, n, name)
    else:
        imp.emit(n, name, "pad", [x], {"value": float(value)}, window=Window(pads=hw))


@_op("Split", attrs="axis split num_outputs")
def _split(imp: _Importer, n, name, a) -> None:
    """A Split along channels: one channel slice per output."""
    x = imp.x(n, name)
    c, outs = imp.shapes[x][0], [o for o in n.output]
    sizes = a.get("split", imp.opt_const(n, name, 1))
    sizes = [int(s) for s in np.ravel(sizes)] if sizes is not None else [-(-c // len(outs))] * len(outs)
    sizes[-1] = c - sum(sizes[:-1])
    if a.get("axis", 0) not in (1, -3) or len(imp.shapes[x]) != 3 or min(sizes) < 1:
        raise imp.err(n, name, f" along axis {a.get('axis', 0)} (only channels split)")
    c0 = 0
    for i, (out, size) in enumerate(zip(outs, sizes, strict=True)):
        if out:
            imp.emit(n, f"{name}/{i}", "slice", [x], {"c0": c0, "c1": c0 + size}, out=out)
        c0 += size


@_op("Slice")
def _slice(imp: _Importer, n, name, a) -> None:
    """A Slice along channels with step 1: a channel slice."""
    x = imp.x(n, name)
    starts, ends = (np.ravel(imp.const(n, name, i)) for i in (1, 2))
    axes = np.ravel(c) if (c := imp.opt_const(n, name, 3)) is not None else np.arange(len(starts))
    steps = np.ravel(c) if (c := imp.opt_const(n, name, 4)) is not None else np.ones(len(starts), np.int64)
    shape = imp.shapes[x]
    if len(shape) != 3 or len(starts) != 1 or int(axes[0]) % 4 != 1 or int(steps[0]) != 1:
        raise imp.err(n, name, " other than one step-1 slice along channels")
    c0, c1, _ = slice(int(starts[0]), int(ends[0])).indices(shape[0])
    imp.emit(n, name, "slice", [x], {"c0": c0, "c1": c1})


@_op("Reshape", attrs="shape allowzero")
def _reshape(imp: _Importer, n, name, a) -> None:
    """Flatten to (1, K), a no-op reshape, a step of the channel shuffle Reshape-Transpose-Reshape, or a (C, 1, 1)
    map flattened to (C,) (held back: only the identity Gather, or another Reshape, may read it)."""
    src = imp.alias.get(n.input[0], n.input[0])
    stage, x, g = imp.pending.get(src, ("", src, 0))
    x = x if stage else imp.x(n, name)
    stage = "" if stage == "flat" else stage  # reshaping a flat view reshapes the map it views
    c, *hw = imp.shapes[x]
    full = {"": (1, c, *hw), "split": (1, g, c // max(g, 1), *hw), "swapped": (1, c // max(g, 1), g, *hw)}[stage]
    target = [int(d) for d in (a["shape"] if "shape" in a else imp.const(n, name, 1))]
    dims = [full[i] if d == 0 and not a.get("allowzero", 0) else d for i, d in enumerate(target)]
    if -1 in dims:
        dims[dims.index(-1)] = int(np.prod(full)) // -int(np.prod(dims))
    if stage == "swapped" and dims == [1, c, *hw]:
        imp.emit(n, name, "shuffle", [x], {"groups": g})
    elif not stage and dims == list(full):
        imp.alias[n.output[0]] = x
    elif not stage and len(dims) == 2 and dims[0] == 1:
        imp.emit(n, name, "flatten", [x])
    elif not stage and dims == [c] and hw == [1, 1]:
        imp.pending[n.output[0]] = ("flat", x, 0)
    elif not stage and len(hw) == 2 and len(dims) == 5 and dims[:3] == [1, dims[1], c // dims[1]] and dims[3:] == hw:
        imp.pending[n.output[0]] = ("split", x, dims[1])
    else:
        raise imp.err(n, name, f" to shape {target}")


@_op("Transpose", attrs="perm", nhwc=True)
def _transpose(imp: _Importer, n, name, a) -> None:
    """A map to channels-last (0, 2, 3, 1) and back (0, 3, 1, 2), or the middle of a channel shuffle (Reshape,
    Transpose (0, 2, 1, 3, 4), Reshape)."""
    perm, src = list(a.get("perm", ())), imp.alias.get(n.input[0], n.input[0])
    stage, x, g = imp.pending.get(src, ("", "", 0))
    if stage == "split" and perm == [0, 2, 1, 3, 4]:
        imp.pending[n.output[0]] = ("swapped", x, g)
    elif perm == ([0, 3, 1, 2] if n.input[0] in imp.last else [0, 2, 3, 1]) and len(imp.shapes.get(src, ())) == 3:
        imp.alias[n.output[0]] = imp.x(n, name)
        if perm == [0, 3, 1, 2]:
            imp.last.discard(n.output[0])
        else:
            imp.last.add(n.output[0])
    else:
        raise imp.err(n, name, f" with perm {perm} (only to channels-last and back, or a channel shuffle)")


@_op("Gemm", attrs="alpha beta transA transB broadcast")
def _gemm(imp: _Importer, n, name, a) -> None:
    """gemm (transB, alpha, beta folded into the weights)."""
    if a.get("transA", 0):
        raise imp.err(n, name, " attribute transA=1")
    w = imp.const(n, name, 1).astype(np.float32)
    w = (w if a.get("transB", 0) else w.T) * np.float32(a.get("alpha", 1.0))
    params = {"w": np.ascontiguousarray(w)}
    if (c := imp.opt_const(n, name, 2)) is not None:
        params["b"] = _vector(imp, n, name, c, w.shape[0]) * np.float32(a.get("beta", 1.0))
    imp.emit(n, name, "gemm", [imp.x(n, name)], {"act": ""}, params)


@_op("MatMul", nhwc=True)
def _matmul(imp: _Importer, n, name, a) -> None:
    """gemm (a MatMul by a constant matrix; an Add after it becomes the bias); of a channels-last map: a 1×1
    conv (a Linear layer applied to every pixel)."""
    w = imp.const(n, name, 1).astype(np.float32)
    x = imp.x(n, name)
    if w.ndim != 2:
        raise imp.err(n, name, f" with weight of shape {w.shape}")
    if n.input[0] in imp.last:
        w = np.ascontiguousarray(w.T)[:, :, None, None]
        return imp.emit(n, name, "conv", [x], {"groups": 1, "act": ""}, {"w": w}, Window())
    if len(imp.shapes[x]) != 1:
        raise imp.err(n, name, " of a channels-first map (only of a vector or a channels-last map)")
    return imp.emit(n, name, "gemm", [x], {"act": ""}, {"w": np.ascontiguousarray(w.T)})


@_op("LayerNormalization", attrs="axis epsilon stash_type", nhwc=True)
def _layernorm(imp: _Importer, n, name, a) -> None:
    """chnorm: over the channels of a channels-last map (ConvNeXt), each pixel on its own."""
    x = imp.x(n, name)
    c = imp.shapes[x][0]
    if n.input[0] not in imp.last or a.get("axis", -1) not in (-1, 3) or any(n.output[1:]):
        raise imp.err(n, name, " other than over the last axis of a channels-last map (Transpose (0, 2, 3, 1))")
    scale, shift = (imp.opt_const(n, name, i) for i in (1, 2))
    params = {k: np.full(c, default, np.float32) if v is None else _per_channel(v, c, last=True)
              for k, v, default in (("scale", scale, 1), ("shift", shift, 0))}
    if any(v is None for v in params.values()):
        raise imp.err(n, name, " with a scale or bias that is not one value per channel")
    imp.emit(n, name, "chnorm", [x], {"eps": float(a.get("epsilon", 1e-5))}, params)


@_op("Gather", attrs="axis")
def _gather(imp: _Importer, n, name, a) -> None:
    """The identity Gather that PyTorch's dynamo export writes for as_strided: every element of a flattened
    (C, 1, 1) map, in order, back in the map's shape."""
    stage, x, _ = imp.pending.get(imp.alias.get(n.input[0], n.input[0]), ("", "", 0))
    idx = imp.const(n, name, 1)
    if stage != "flat" or a.get("axis", 0) != 0 or idx.shape != (1, *imp.shapes[x]) \
            or not np.array_equal(idx.ravel(), np.arange(idx.size)):
        raise imp.err(n, name, " other than the identity Gather of a flattened map (as_strided)")
    imp.alias[n.output[0]] = x


@_op("Softmax", attrs="axis")
def _softmax(imp: _Importer, n, name, a) -> None:
    """softmax of the output vector."""
    x = imp.x(n, name)
    if len(imp.shapes[x]) != 1 or a.get("axis", 1 if imp.opset < 13 else -1) not in (1, -1):
        raise imp.err(n, name, " on anything but a (1, K) vector")
    imp.emit(n, name, "softmax", [x])


IDIOMS = (
    ("constant subgraphs", "any node whose inputs are all constant is computed at load (Shape and Size of static "
     "tensors included): Shape-Gather-Unsqueeze-Concat-Reshape chains, Reshape/Unsqueeze of weights"),
    ("global pooling", "GlobalAveragePool, GlobalMaxPool, ReduceMean/ReduceMax over H and W, and an "
     "AveragePool/MaxPool whose window is the whole map"),
    ("batch-norm", "folded into the conv before it, with any per-channel Mul/Add/Sub/Div"),
    ("fused activations", "an activation after a conv or gemm runs in its epilogue"),
    ("residual adds", "an Add (or Sum) of two maps, and the activation after it, runs in the epilogue of the conv "
     "that computes its later term, when nothing else reads that conv's output"),
    ("flatten", "Flatten (axis 1 or negative), Reshape to (1, -1), Squeeze of a (1, C, 1, 1) map"),
    ("MatMul + Add", "a gemm with bias"),
    ("zero Pad", "folds into the padding of the Conv or AveragePool that reads it (any other reader: a pad node)"),
    ("channel shuffle", "Reshape-Transpose-Reshape (ShuffleNet)"),
    ("channel split", "Split and Slice along channels: channel slices"),
    ("SiLU / HardSwish / GELU", "x·Sigmoid(x), x·HardSigmoid(x; 1/6, 1/2) and 0.5·x·(1 + Erf(x/√2)): one "
     "activation, fused into the conv before"),
    ("channels-last blocks (ConvNeXt)", "Transpose (0, 2, 3, 1) … Transpose (0, 3, 1, 2): the ops between run on the "
     "map as it is held (channels first); LayerNormalization over the last axis (or spelled out as ReduceMean, "
     "Sub, Pow, ReduceMean, Add, Sqrt, Div) is a per-pixel channel norm, MatMul by a (C, K) matrix a 1x1 conv, "
     "a constant of shape (C,) a per-channel affine"),
    ("ops after global pooling", "run in the head on whole tensors (ConvNeXt's norm of the pooled map); the "
     "dynamo exporter's flat view and identity Gather (as_strided) of the pooled map are the map itself"),
    ("squeeze-and-excitation", "global average pool of a map, 1x1 convs with activations, the map times the gate: "
     "one node; tiled, the ranks allreduce the map's channel sums (C values each), then every rank runs the "
     "branch and scales its tile"),
)


def supported_markdown() -> str:
    """docs/ONNX.md: the ops the importer takes (from its handler table) and the idioms it recognises."""
    lines = ["# ONNX: what the importer takes", "",
             "Generated by `python -m nptp_mpi.model.onnx_io > docs/ONNX.md` from the importer's own table "
             "(a test checks that this file is current). Anything else is refused at load with one line "
             "naming the op, the node and the file.", "", "## Ops", "",
             "| ONNX op | attributes understood | on channels-last maps | becomes |", "|---|---|---|---|"]
    for op_type in sorted(_HANDLERS):
        handler, attrs, nhwc = _HANDLERS[op_type]
        lines.append(f"| {op_type} | {', '.join(sorted(attrs)) or '-'} | {'yes' if nhwc else '-'} | "
                     f"{handler.__doc__.splitlines()[0]} |")
    lines += ["", "## Idioms", "", "| what exporters write | how it runs |", "|---|---|"]
    lines += [f"| {what} | {how} |" for what, how in IDIOMS]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- export


def save_onnx(graph: Graph, path: str, opset: int = 17) -> None:
    """Write graph as an ONNX file (see to_onnx)."""
    onnx.save(to_onnx(graph, opset), path)


def to_onnx(graph: Graph, opset: int = 17) -> onnx.ModelProto:
    """The graph as an ONNX model with input 'input' (1, C, H, W) and output 'output' (batch axis added)."""
    if not 11 <= opset <= onnx.defs.onnx_opset_version():
        raise ModelError(f"cannot export to ONNX opset {opset} (supported: 11..{onnx.defs.onnx_opset_version()})")
    ex = _Exporter(graph, opset)
    for n in graph.nodes:
        ins = [ex.name(t) for t in n.inputs]
        _EXPORT[n.op](ex, n, ins, ex.name(n.output))
    io = [
        helper.make_tensor_value_info(nm, onnx.TensorProto.FLOAT, (1, *graph.shapes[t]))
        for nm, t in (("input", graph.input), ("output", graph.output))
    ]
    g = helper.make_graph(ex.nodes, graph.name, io[:1], io[1:], ex.inits)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(g, opset_imports=opsets, producer_name="nptp-mpi")
    model.ir_version = helper.find_min_ir_version_for(opsets)
    return model


class _Exporter:
    """Collects ONNX nodes and initializers."""

    def __init__(self, graph: Graph, opset: int) -> None:
        self.graph, self.opset, self.nodes, self.inits = graph, opset, [], []

    def name(self, tensor: str) -> str:
        return {self.graph.input: "input", self.graph.output: "output"}.get(tensor, tensor)

    def add(self, op_type: str, inputs: list[str], output: str, name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], name, **attrs))
        return output

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name


_ONNX_ACTS = {"relu": "Relu", "tanh": "Tanh", "softplus": "Softplus", "hardswish": "HardSwish", "sigmoid": "Sigmoid"}


def _act(ex: _Exporter, act: str, attrs: dict, x: str, out: str, name: str) -> None:
    """Standalone or fused activation as its ONNX node(s)."""
    if act in _ONNX_ACTS:
        ex.add(_ONNX_ACTS[act], [x], out, name)
    elif act in ("leakyrelu", "elu"):
        ex.add({"leakyrelu": "LeakyRelu", "elu": "Elu"}[act], [x], out, name, alpha=float(attrs["alpha"]))
    elif act == "hardsigmoid":
        ex.add("HardSigmoid", [x], out, name, alpha=float(attrs["alpha"]), beta=float(attrs["lo"]))
    elif act == "clip":
        lo, hi = (ex.const(f"{name}.{k}", np.float32(attrs[k])) for k in ("lo", "hi"))
        ex.add("Clip", [x, lo, hi], out, name)
    elif act == "silu":
        ex.add("Mul", [x, ex.add("Sigmoid", [x], f"{out}.sigmoid", f"{name}.sigmoid")], out, name)
    elif act == "gelu":  # 0.5·x·(1 + erf(x/√2)): ONNX has Gelu only from opset 20
        root2, one, half = (ex.const(f"{name}.{k}", np.float32(v)) for k, v in (("root2", 2 ** 0.5), ("one", 1),
                                                                                   ("half", 0.5)))
        e = ex.add("Erf", [ex.add("Div", [x, root2], f"{out}.scaled", f"{name}.div")], f"{out}.erf", f"{name}.erf")
        e = ex.add("Add", [e, one], f"{out}.erf1", f"{name}.add")
        ex.add("Mul", [ex.add("Mul", [x, half], f"{out}.half", f"{name}.half"), e], out, name)
    else:
        raise ModelError(f"cannot export activation {act!r} of node {name!r}")


def _with_act(ex: _Exporter, n: Node, op_type: str, ins: list[str], out: str, name: str = "", **attrs) -> None:
    """A conv/gemm/add node (named name, default n's) followed by n's fused activation, if any."""
    act = n.attrs.get("act", "")
    y = ex.add(op_type, ins, f"{out}.preact" if act else out, name or n.name, **attrs)
    if act:
        _act(ex, act, n.attrs, y, out, f"{n.name}.{act}")


def _params(ex: _Exporter, n: Node, *keys: str) -> list[str]:
    return [ex.const(f"{n.name}.{k}", n.params[k]) for k in keys if k in n.params]


def _window(win: Window) -> dict:
    return {"kernel_shape": list(win.kernel), "strides": list(win.stride), "pads": list(win.pads)}


def _ex_conv(ex, n, ins, out):
    """Conv, then (with a residual) Add, then the activation."""
    attrs = {**_window(n.window), "dilations": list(n.window.dilation), "group": n.attrs.get("groups", 1)}
    if len(ins) == 1:
        _with_act(ex, n, "Conv", ins + _params(ex, n, "w", "b"), out, **attrs)
        return
    y = ex.add("Conv", [ins[0], *_params(ex, n, "w", "b")], f"{out}.conv", n.name, **attrs)
    _with_act(ex, n, "Add", [y, ins[1]], out, f"{n.name}.residual")


def _ex_gemm(ex, n, ins, out):
    _with_act(ex, n, "Gemm", ins + _params(ex, n, "w", "b"), out, transB=1)


def _ex_pool(ex, n, ins, out):
    attrs = {**_window(n.window), "ceil_mode": int(n.window.ceil)}
    if n.op == "maxpool":
        ex.add("MaxPool", ins, out, n.name, dilations=list(n.window.dilation), **attrs)
    elif n.window.dilation != (1, 1):
        raise ModelError(f"node {n.name!r}: ONNX AveragePool (opset < 19) has no dilation")
    else:
        ex.add("AveragePool", ins, out, n.name, count_include_pad=int(n.attrs.get("count_include_pad", 0)), **attrs)


def _ex_adaptive(ex, n, ins, out):
    """An AveragePool where the map is a multiple of the output; else (ONNX has no adaptive pooling) the exact
    averaging matrices: rows · X · columnsᵀ, two MatMuls (onnxruntime runs it; our importer takes the first)."""
    (h, w), (oh, ow) = ex.graph.shapes[n.inputs[0]][1:], n.attrs["out"]
    if not (h % oh or w % ow):
        k = [h // oh, w // ow]
        ex.add("AveragePool", ins, out, n.name, kernel_shape=k, strides=k)
        return
    rows, cols = (_averaging(n_in, n_out) for n_in, n_out in ((h, oh), (w, ow)))
    y = ex.add("MatMul", [ex.const(f"{n.name}.rows", rows), ins[0]], f"{out}.pooled_rows", f"{n.name}.rows")
    ex.add("MatMul", [y, ex.const(f"{n.name}.cols", np.ascontiguousarray(cols.T))], out, n.name)


def _averaging(n: int, m: int) -> np.ndarray:
    """(m, n) matrix averaging the cells of PyTorch's adaptive pooling: cell i covers [⌊i·n/m⌋, ⌈(i+1)·n/m⌉)."""
    a = np.zeros((m, n), np.float32)
    for i in range(m):
        lo, hi = i * n // m, -(-(i + 1) * n // m)
        a[i, lo:hi] = 1 / (hi - lo)
    return a


def _ex_affine(ex, n, ins, out):
    scale, shift = (ex.const(f"{n.name}.{k}", n.params[k].reshape(-1, 1, 1)) for k in ("scale", "shift"))
    ex.add("Add", [ex.add("Mul", [ins[0], scale], f"{out}.scaled", f"{n.name}.mul"), shift], out, n.name)


def _ex_mul(ex, n, ins, out):
    y = ins[0]
    for i, t in enumerate(ins[1:], 1):
        y = ex.add("Mul", [y, t], out if i == len(ins) - 1 else f"{out}.{i}", f"{n.name}.{i}")


def _ex_shuffle(ex, n, ins, out):
    (c, h, w), g = ex.graph.shapes[n.inputs[0]], n.attrs["groups"]
    split = ex.const(f"{n.name}.shape5", np.array([1, g, c // g, h, w], np.int64))
    merge = ex.const(f"{n.name}.shape4", np.array([1, c, h, w], np.int64))
    y = ex.add("Reshape", [ins[0], split], f"{out}.split", f"{n.name}.split")
    y = ex.add("Transpose", [y], f"{out}.swapped", f"{n.name}.transpose", perm=[0, 2, 1, 3, 4])
    ex.add("Reshape", [y, merge], out, n.name)


def _ex_se(ex, n, ins, out):
    """Squeeze-and-excitation: GlobalAveragePool, the branch as 1×1 Convs with activations, Mul."""
    g = ex.add("GlobalAveragePool", ins, f"{out}.pooled", f"{n.name}.pool")
    for i, (act, alpha, lo, hi) in enumerate(n.attrs["steps"]):
        w = ex.const(f"{n.name}.w{i}", n.params[f"w{i}"][:, :, None, None])
        b = [ex.const(f"{n.name}.b{i}", n.params[f"b{i}"])] if f"b{i}" in n.params else []
        y = ex.add("Conv", [g, w, *b], f"{out}.conv{i}" if act else f"{out}.step{i}", f"{n.name}.conv{i}",
                   kernel_shape=[1, 1])
        g = f"{out}.step{i}"
        if act:
            _act(ex, act, {"alpha": alpha, "lo": lo, "hi": hi}, y, g, f"{n.name}.{act}{i}")
    ex.add("Mul", [ins[0], g], out, n.name)


def _ex_chnorm(ex, n, ins, out):
    """Transpose to channels-last, LayerNormalization over the last axis, Transpose back (as ConvNeXt's export)."""
    if ex.opset < 17:
        raise ModelError(f"node {n.name!r}: LayerNormalization needs ONNX opset 17 or later, not {ex.opset}")
    t = ex.add("Transpose", ins, f"{out}.nhwc", f"{n.name}.nhwc", perm=[0, 2, 3, 1])
    t = ex.add("LayerNormalization", [t, *_params(ex, n, "scale", "shift")], f"{out}.norm", n.name, axis=-1,
               epsilon=float(n.attrs["eps"]))
    ex.add("Transpose", [t], out, f"{n.name}.nchw", perm=[0, 3, 1, 2])


def _ex_pad(ex, n, ins, out):
    t, left, b, r = n.window.pads
    pads = ex.const(f"{n.name}.pads", np.array([0, 0, t, left, 0, 0, b, r], np.int64))
    ex.add("Pad", [ins[0], pads, ex.const(f"{n.name}.value", np.float32(n.attrs["value"]))], out, n.name)


def _ex_slice(ex, n, ins, out):
    bounds = [ex.const(f"{n.name}.{k}", np.array([v], np.int64)) for k, v in (("c0", n.attrs["c0"]),
                                                                             ("c1", n.attrs["c1"]), ("axis", 1))]
    ex.add("Slice", [ins[0], *bounds], out, n.name)


def _simple(op_type: str, *keys: str, **fixed) -> Callable:
    """Exporter for a one-to-one op: copies the listed attrs and adds fixed ONNX attributes."""
    return lambda ex, n, ins, out: ex.add(op_type, ins, out, n.name, **{k: n.attrs[k] for k in keys}, **fixed)


_EXPORT: dict[str, Callable] = {
    "conv": _ex_conv,
    "gemm": _ex_gemm,
    "maxpool": _ex_pool,
    "avgpool": _ex_pool,
    "adaptive_avgpool": _ex_adaptive,
    "affine": _ex_affine,
    "mul": _ex_mul,
    "shuffle": _ex_shuffle,
    **{a: (lambda ex, n, ins, out: _act(ex, n.op, n.attrs, ins[0], out, n.name)) for a in (*ACTIVATIONS, "sigmoid")},
    "prelu": lambda ex, n, ins, out: ex.add("PRelu", [ins[0], ex.const(f"{n.name}.slope",
                                                                    n.params["slope"].reshape(-1, 1, 1))], out, n.name),
    "slice": _ex_slice,
    "pad": _ex_pad,
    "chnorm": _ex_chnorm,
    "se": _ex_se,
    "gmp": _simple("GlobalMaxPool"),
    "lrn": _simple("LRN", "size", "alpha", "beta", "bias"),
    "add": lambda ex, n, ins, out: _with_act(ex, n, "Sum", ins, out),
    "concat": _simple("Concat", axis=1),
    "gap": _simple("GlobalAveragePool"),
    "flatten": _simple("Flatten", axis=1),
    "softmax": _simple("Softmax", axis=1),
}


if __name__ == "__main__":
    print(supported_markdown(), end="")
