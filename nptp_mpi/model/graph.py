"""Model graph: a list of ops with static shapes and, for each windowed op, its spatial footprint.

Tensors are single images without the batch axis: feature maps are (C, H, W), head vectors (K,).
The graph knows shapes and weights; it knows nothing of MPI or partitions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from nptp_mpi.errors import ModelError

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Window:
    """Sliding-window footprint: kernel, stride, pads (top, left, bottom, right), dilation, ceil mode."""

    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    ceil: bool = False

    def out_len(self, axis: int, n: int) -> int:
        """Output length along axis (0 rows, 1 cols) for an input of length n (ONNX/PyTorch rule)."""
        k, s, d = self.kernel[axis], self.stride[axis], self.dilation[axis]
        padded = n + self.pads[axis] + self.pads[axis + 2]
        span = d * (k - 1) + 1
        if padded < span:
            raise ModelError(f"window {span} larger than padded input {padded}")
        q, r = divmod(padded - span, s)
        out = q + 1 + (1 if self.ceil and r else 0)
        # A ceil-mode window must start inside the input or left padding (PyTorch/ONNX rule).
        if self.ceil and (out - 1) * s >= n + self.pads[axis]:
            out -= 1
        return out

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        return self.out_len(0, h), self.out_len(1, w)

    def need(self, axis: int, lo: int, hi: int) -> tuple[int, int]:
        """Input interval [lo', hi') read by outputs [lo, hi) along axis; unclipped (may leave the image)."""
        k, s, d, p = self.kernel[axis], self.stride[axis], self.dilation[axis], self.pads[axis]
        return lo * s - p, (hi - 1) * s - p + d * (k - 1) + 1


# Op kinds. "window" ops read a footprint around each output pixel; "pointwise" ops read the same
# pixel of each input (spatially local, so they run on any tile as is); "head" ops see whole maps. The head
# of a graph starts at its first head op: everything from there on runs on whole tensors (a pointwise op too,
# such as ConvNeXt's channel norm of the pooled map).
WINDOW_OPS = {"conv", "maxpool", "avgpool", "pad"}  # pad: a 1×1 window whose padding is the Pad's value
# ACTIVATIONS fuse into the producing conv or gemm (kernels.pointwise.ACTS); sigmoid stays apart (a gate).
ACTIVATIONS = {"relu", "clip", "leakyrelu", "hardsigmoid", "hardswish", "tanh", "elu", "softplus", "gelu", "silu"}
# "se" (squeeze-and-excitation) is pointwise with one global input: its map's channel means (an allreduce);
# "chnorm" normalises each pixel over the channels (LayerNorm of a channels-last map).
POINTWISE_OPS = {"sigmoid", "affine", "lrn", "add", "mul", "concat", "shuffle", "prelu", "slice", "se",
                 "chnorm"} | ACTIVATIONS
HEAD_OPS = {"gap", "gmp", "adaptive_avgpool", "flatten", "gemm", "softmax"}


@dataclass
class Node:
    """One op; a conv may have a second input, a residual of its output's shape added before its activation
    (passes.simplify fuses an add into the conv that produces one of its terms). attrs hold scalars (groups,
    act and its alpha, lo, hi; size, beta, bias; count_include_pad, out;
    a channel slice's c0, c1; se's steps: (act, alpha, lo, hi) per layer of its branch; chnorm's eps; pad's
    value); params hold float32 arrays (conv/gemm: w, b; affine, chnorm: scale, shift; prelu: slope; se: w0,
    b0, w1, b1, … of its branch)."""

    op: str
    name: str
    inputs: tuple[str, ...]
    output: str
    attrs: dict = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)
    window: Window | None = None

    @property
    def spatial(self) -> bool:
        return self.op in WINDOW_OPS or self.op in POINTWISE_OPS

    def reads_through(self, i: int) -> Window | None:
        """The window through which this node reads its input i: a window op's first input; None (the same
        pixels) for a pointwise op and for a conv's residual (its second input, added before the activation)."""
        return self.window if i == 0 and self.op in WINDOW_OPS else None


@dataclass
class Graph:
    """A topologically ordered list of nodes from one input tensor to one output tensor."""

    name: str
    input: str
    input_shape: Shape
    output: str
    nodes: list[Node]
    shapes: dict[str, Shape] = field(default_factory=dict)
    weights_digest: str = field(default="", compare=False)  # cached: hashing VGG's 0.5 GB takes seconds

    def __post_init__(self) -> None:
        self.infer_shapes()

    def infer_shapes(self) -> None:
        """Fill self.shapes for every tensor; raise ModelError on any inconsistency."""
        shapes: dict[str, Shape] = {self.input: tuple(self.input_shape)}
        for node in self.nodes:
            missing = [t for t in node.inputs if t not in shapes]
            if missing:
                raise ModelError(f"node {node.name!r} ({node.op}) reads unknown tensor(s) {missing}")
            try:
                shapes[node.output] = _out_shape(node, [shapes[t] for t in node.inputs])
            except ModelError as e:
                raise ModelError(f"{self.name}: node {node.name!r} ({node.op}): {e}") from None
        if self.output not in shapes:
            raise ModelError(f"{self.name}: output tensor {self.output!r} is never produced")
        self.shapes = shapes

    @property
    def head_start(self) -> int:
        """Index of the first head op (len(nodes) when there is none): the nodes before it may be tiled."""
        return next((i for i, n in enumerate(self.nodes) if n.op in HEAD_OPS), len(self.nodes))

    def consumers(self, tensor: str) -> list[Node]:
        return [n for n in self.nodes if tensor in n.inputs]

    def with_input_hw(self, h: int, w: int) -> Graph:
        """The same graph for another input size (weights shared, shapes re-inferred)."""
        return Graph(self.name, self.input, (self.input_shape[0], h, w), self.output, self.nodes,
                     weights_digest=self.digest_weights())

    def digest_weights(self) -> str:
        """Hash of every weight, computed once per loaded model and shared by its resized copies."""
        if not self.weights_digest:
            w = hashlib.blake2b(digest_size=16)
            for n in self.nodes:
                for k in sorted(n.params):
                    w.update(f"{n.name}.{k}{n.params[k].shape}".encode())
                    w.update(np.ascontiguousarray(n.params[k]).data)
            self.weights_digest = w.hexdigest()
        return self.weights_digest

    def fingerprint(self) -> str:
        """Hash of structure, attributes, input size and weights: ranks compare it to prove they run one model."""
        h = hashlib.sha256(repr((self.input, self.input_shape, self.output, self.digest_weights())).encode())
        for n in self.nodes:
            h.update(repr((n.op, n.name, n.inputs, n.output, sorted(n.attrs.items()), n.window)).encode())
        return h.hexdigest()[:16]

    def flops(self) -> int:
        """Multiply-accumulates × 2 of conv and gemm nodes (what GFLOP/s figures count)."""
        total = 0
        for n in self.nodes:
            if n.op in ("conv", "gemm"):
                out = self.shapes[n.output]
                total += 2 * int(np.prod(out)) * int(np.prod(n.params["w"].shape[1:]))
        return total


def _out_shape(node: Node, ins: list[Shape]) -> Shape:
    op, a = node.op, node.attrs
    x = ins[0]
    if op in WINDOW_OPS or op in POINTWISE_OPS or op in ("gap", "gmp", "adaptive_avgpool"):
        if len(x) != 3:
            raise ModelError(f"expects a (C, H, W) feature map, got shape {x}")
    if op == "conv":
        w = node.params["w"]
        g = a.get("groups", 1)
        if w.ndim != 4 or x[0] != w.shape[1] * g or w.shape[0] % g:
            raise ModelError(f"weight {w.shape} with groups={g} does not fit input {x}")
        if "b" in node.params and node.params["b"].shape != (w.shape[0],):
            raise ModelError(f"bias {node.params['b'].shape} does not fit {w.shape[0]} output channels")
        if node.window.kernel != tuple(w.shape[2:]):
            raise ModelError(f"kernel_shape {node.window.kernel} differs from weight {w.shape}")
        out = (w.shape[0], *node.window.out_hw(x[1], x[2]))
        if len(ins) > 2 or tuple(ins[1:]) not in ((), (out,)):
            raise ModelError(f"a residual {ins[1:]} that is not one map of the output's shape {out}")
        return out
    if op in ("maxpool", "avgpool", "pad"):
        return (x[0], *node.window.out_hw(x[1], x[2]))
    if op in ACTIVATIONS or op in ("sigmoid", "lrn", "softmax"):
        return x
    if op == "prelu":
        if node.params["slope"].shape != (x[0],):
            raise ModelError(f"per-channel slope {node.params['slope'].shape} does not fit {x[0]} channels")
        return x
    if op == "slice":
        if not 0 <= a["c0"] < a["c1"] <= x[0]:
            raise ModelError(f"channels {a['c0']}:{a['c1']} do not lie within {x[0]}")
        return (a["c1"] - a["c0"], x[1], x[2])
    if op in ("affine", "chnorm"):
        if node.params["scale"].shape != (x[0],) or node.params["shift"].shape != (x[0],):
            raise ModelError(f"per-channel scale/shift do not fit {x[0]} channels")
        return x
    if op == "add" or (op == "mul" and all(s == x for s in ins)):
        if any(s != x for s in ins):
            raise ModelError(f"inputs differ in shape: {ins}")
        return x
    if op == "mul":  # a per-channel gate: passes.simplify makes it a squeeze-and-excitation node, or refuses it
        big = max(ins, key=lambda s: s[1] * s[2])
        if len(ins) != 2 or any(s not in (big, (big[0], 1, 1)) for s in ins):
            raise ModelError(f"inputs differ in shape: {ins}")
        return big
    if op == "se":
        for i, _ in enumerate(a["steps"]):
            w = node.params[f"w{i}"]
            if w.ndim != 2 or w.shape[1] != (x[0] if i == 0 else node.params[f"w{i - 1}"].shape[0]):
                raise ModelError(f"squeeze-and-excitation weight {i} {w.shape} does not fit")
        if node.params[f"w{len(a['steps']) - 1}"].shape[0] != x[0]:
            raise ModelError(f"squeeze-and-excitation gate does not have {x[0]} channels")
        return x
    if op == "concat":
        if any(len(s) != 3 or s[1:] != x[1:] for s in ins):
            raise ModelError(f"channel concat of maps with different H×W: {ins}")
        return (sum(s[0] for s in ins), x[1], x[2])
    if op == "shuffle":
        if x[0] % a["groups"]:
            raise ModelError(f"{x[0]} channels not divisible into {a['groups']} groups")
        return x
    if op in ("gap", "gmp"):
        return (x[0], 1, 1)
    if op == "adaptive_avgpool":
        return (x[0], *a["out"])
    if op == "flatten":
        return (int(np.prod(x)),)
    if op == "gemm":
        w = node.params["w"]
        if len(x) != 1 or w.shape[1] != x[0]:
            raise ModelError(f"weight {w.shape} does not fit input {x}")
        return (w.shape[0],)
    raise ModelError(f"unknown op {op!r}")
