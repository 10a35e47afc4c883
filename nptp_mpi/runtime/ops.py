"""Run one graph node on a region with the kernels: the single place where ops meet kernels.

The reference engine calls it with whole maps, the distributed engine with tiles and halos, so both
compute every pixel with the very same code.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

from nptp_mpi import kernels as K
from nptp_mpi.kernels import layout, vectors
from nptp_mpi.kernels.conv import ConvCall
from nptp_mpi.kernels.pointwise import act_code, constant, epilogue
from nptp_mpi.model.graph import ACTIVATIONS, Node

Rect = tuple[int, int, int, int]


@dataclass
class Tile:
    """A buffer holding rect (y0, x0, y1, x1) of a (C, H, W) tensor."""

    data: np.ndarray
    rect: Rect

    def view(self, rect: Rect) -> np.ndarray:
        """The part of the buffer holding rect (which must lie inside it)."""
        y0, x0 = self.rect[0], self.rect[1]
        if rect[0] < y0 or rect[1] < x0 or rect[2] > self.rect[2] or rect[3] > self.rect[3]:
            raise ValueError(f"region {rect} is not inside buffer {self.rect}")
        return self.data[:, rect[0] - y0 : rect[2] - y0, rect[1] - x0 : rect[3] - x0]


def _act(node: Node) -> dict:
    a = node.attrs
    return {"act": a.get("act", ""), "alpha": a.get("alpha", 0.0), "lo": a.get("lo", 0.0), "hi": a.get("hi", 0.0)}


def run_spatial(node: Node, ins: list[Tile], in_hw: tuple[int, int], region: Rect,
                mean: np.ndarray | None = None) -> np.ndarray:
    """Output `region` of a window or pointwise node from input tiles that cover what it reads; a
    squeeze-and-excitation node also takes its map's channel means (from the whole map when mean is None: the
    reference's tiles are whole)."""
    op, a, p = node.op, node.attrs, node.params
    if op == "conv":
        return run_pieces(node, ins, in_hw, [region])[0]
    if op in ("maxpool", "avgpool"):
        w = node.window
        x = ins[0]
        return K.pool2d(x.data, x.rect[:2], in_hw, op[:3], w.kernel, w.stride, w.pads, w.dilation, region,
                        count_include_pad=bool(a.get("count_include_pad", 0)))
    if op == "pad":
        return K.pad2d(ins[0].data, ins[0].rect[:2], in_hw, node.window.pads, a["value"], region)
    xs = [t.view(region) for t in ins]
    if op in ACTIVATIONS or op == "sigmoid":
        return K.activation(xs[0], op, a.get("alpha", 0.0), a.get("lo", 0.0), a.get("hi", 0.0))
    if op == "prelu":
        return K.prelu(xs[0], p["slope"])
    if op == "slice":
        return K.channels(xs[0], a["c0"], a["c1"])
    if op == "se":
        whole = ins[0].view(ins[0].rect)  # (the reference's whole map: not its buffer's spare rows, kernels.layout)
        return K.scale_channels(xs[0], se_gate(node, K.global_avgpool(whole) if mean is None else mean))
    if op == "affine":
        return K.affine(xs[0], p["scale"], p["shift"])
    if op == "chnorm":
        return K.channel_norm(xs[0], p["scale"], p["shift"], a["eps"])
    if op == "lrn":
        return K.lrn(xs[0], a["size"], a["alpha"], a["beta"], a["bias"])
    if op == "add":
        return K.add(*xs, **_act(node))
    if op == "mul":
        return K.mul(*xs)
    if op == "concat":
        return K.concat(xs)
    if op == "shuffle":
        return K.shuffle(xs[0], a["groups"])
    raise ValueError(f"node {node.name!r}: {op!r} is not a spatial op")


def run_pieces(node: Node, ins: list[Tile], in_hw: tuple[int, int], pieces: list[Rect],
               mean: np.ndarray | None = None, into: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """run_spatial of each piece, written into its destination in `into` if given (views of the output's tile
    buffer: a conv's kernels write most of them in place); a conv's pieces share one GEMM where they can
    (kernels.conv2d_regions)."""
    if node.op != "conv":
        outs = [run_spatial(node, ins, in_hw, piece, mean) for piece in pieces]
        if into is None:
            return outs
        for out, dst in zip(outs, into, strict=True):
            dst[...] = out
        return into
    w, x, p = node.window, ins[0], node.params
    residuals = [ins[1].view(piece) for piece in pieces] if len(ins) > 1 else None
    return K.conv2d_regions(x.data, x.rect[:2], in_hw, p["w"], p.get("b"), w.stride, w.pads, w.dilation,
                            node.attrs.get("groups", 1), list(pieces), **_act(node), residuals=residuals, into=into)


class Pieces:
    """run_pieces of one node on fixed pieces and destinations, as the engine runs a Compute step every inference:
    a conv's kernel calls are prepared on the first run, from the input it is given and on the threads of that
    moment (kernels.ConvRegions), and reused (working them out each time cost 3-8 µs a piece: 10% of a rank's
    compute on MobileNetV2)."""

    def __init__(self, node: Node, in_hw: tuple[int, int], pieces: list[Rect],
                 into: list[np.ndarray] | None = None) -> None:
        self.node, self.in_hw, self.pieces, self.into = node, in_hw, pieces, into
        self.convs: K.ConvRegions | None = None

    def __call__(self, ins: list[Tile], mean: np.ndarray | None = None) -> list[np.ndarray]:
        """The pieces from input tiles (laid out alike every run), into their destinations if given."""
        node = self.node
        if node.op != "conv":
            return run_pieces(node, ins, self.in_hw, self.pieces, mean, self.into)
        x, w, b = ins[0], node.params["w"], node.params.get("b")
        if self.convs is None:
            win = node.window
            self.convs = K.ConvRegions(x.data, x.rect[:2], self.in_hw, w, b, win.stride, win.pads, win.dilation,
                                       node.attrs.get("groups", 1), list(self.pieces), **_act(node),
                                       residual=len(ins) > 1, into=self.into)
        residuals = [ins[1].view(piece) for piece in self.pieces] if len(ins) > 1 else None
        return self.convs(x.data, w, b, residuals, self.into)


def se_gate(node: Node, mean: np.ndarray) -> np.ndarray:
    """A squeeze-and-excitation node's per-channel gate from its map's channel means: its branch of 1×1 convs
    (as matrices) with their activations."""
    g = mean.reshape(-1)
    for i, (act, alpha, lo, hi) in enumerate(node.attrs["steps"]):
        g = K.gemm(g, node.params[f"w{i}"], node.params.get(f"b{i}"), act, alpha, lo, hi)
    return g


def run_whole(node: Node, ins: list[np.ndarray], blocked: bool = False) -> np.ndarray:
    """Any node on whole tensors: a spatial one over its whole output (the reference, a tail), a head one
    (global pooling, flatten, classifier, softmax). A conv's input and residual may be channel-blocked
    (runtime.layouts), and blocked: its output so."""
    op, x = node.op, ins[0]
    if op == "conv":
        return _whole_conv(node, ins, blocked)
    if node.spatial:
        out = (0, 0, *(node.window.out_hw(*x.shape[1:]) if node.window else x.shape[1:]))
        return run_spatial(node, [Tile(_buffer(t), (0, 0, *t.shape[1:])) for t in ins], x.shape[1:], out)
    if op == "gap":
        return K.global_avgpool(x)
    if op == "gmp":
        return K.global_maxpool(x)
    if op == "adaptive_avgpool":
        return K.adaptive_avgpool(x, tuple(node.attrs["out"]))
    if op == "flatten":
        return np.ascontiguousarray(x).reshape(-1)
    if op == "gemm":
        return K.gemm(x, node.params["w"], node.params.get("b"), **_act(node))
    if op == "softmax":
        return K.softmax(x)
    raise ValueError(f"node {node.name!r}: {op!r} is not a head op")


class _WholeConv:
    """A conv node's call over its whole map, kept for the node (_whole_conv) while its weights, attributes, input
    layout and the kernels' threads stay as they were (graph passes rewrite nodes in place)."""

    def __init__(self, node: Node, ins: list[np.ndarray], x: np.ndarray, key: tuple, blocked: bool) -> None:
        w, b, win = node.params["w"], node.params.get("b"), node.window
        out = (0, 0, *win.out_hw(*ins[0].shape[1:3]))
        # Into a buffer with spare rows where its planes would lie a multiple of 4 KiB apart (kernels/layout.py), or
        # a channel-blocked one
        self.spare = (w.shape[0], *out[2:]) if layout.spare_rows(*out[2:]) and not blocked else None
        self.blocked = (w.shape[0] // vectors.LANES, *out[2:], vectors.LANES) if blocked else None
        self.key, self.w, self.b = key, weakref.ref(w), None if b is None else weakref.ref(b)
        self.call = ConvCall(x, (0, 0), ins[0].shape[1:3], w, b, win.stride, win.pads, win.dilation,
                             node.attrs.get("groups", 1), out, **_act(node), residual=len(ins) > 1, into=self.into())

    def into(self) -> np.ndarray | None:
        """A new array the call writes: channel-blocked, with spare rows, or None (the call's own)."""
        return np.empty(self.blocked, np.float32) if self.blocked else None if self.spare is None \
            else layout.empty(*self.spare)

    def holds(self, node: Node, key: tuple) -> bool:
        """Whether this call is still the node's for an input of this key."""
        b = node.params.get("b")
        return key == self.key and self.w() is node.params["w"] and (self.b() if self.b else None) is b


_whole_convs: dict[int, _WholeConv] = {}


def _whole_conv(node: Node, ins: list[np.ndarray], blocked: bool) -> np.ndarray:
    """A conv node over its whole map (the reference's every conv, a tail's), by a call prepared once per node:
    through run_pieces and conv2d, working out the call's key each time cost 5-8 µs a conv (MobileNetV2 at 224²,
    one thread: 8.72 → 8.24 ms). conv2d called directly, its own key alone still cost 1.02 of the time."""
    x, a = _buffer(ins[0]), node.attrs
    key = (ins[0].shape, x.shape, x.strides, len(ins), id(node.window), a.get("groups", 1), a.get("act", ""),
           a.get("alpha", 0.0), a.get("lo", 0.0), a.get("hi", 0.0), K.threads.count(), vectors.ENABLED, blocked)
    held = _whole_convs.get(id(node))
    if held is None:  # (the node's entry goes with it)
        weakref.finalize(node, _whole_convs.pop, id(node), None)
    if held is None or not held.holds(node, key):
        held = _whole_convs[id(node)] = _WholeConv(node, ins, x, key, blocked)
    return held.call(x, node.params["w"], node.params.get("b"), ins[1] if len(ins) > 1 else None, held.into())


def _buffer(t: np.ndarray) -> np.ndarray:
    """The array the kernels are given for map t: the buffer whose planes' top rows t is (layout.empty), else t."""
    b = layout.whole(t) if t.ndim == 3 else None
    return t if b is None else b


def bias_act(y: np.ndarray, b: np.ndarray | None, node: Node) -> None:
    """In place on (rows, n) y: the bias per row and node's activation, once its partial sums are added."""
    a, rows = node.attrs, y.shape[0]
    epilogue(y, constant(rows, 1.0), constant(rows, 0.0) if b is None else b, act_code(a.get("act", "")),
             np.float32(a.get("alpha", 0.0)), np.float32(a.get("lo", 0.0)), np.float32(a.get("hi", 0.0)))
