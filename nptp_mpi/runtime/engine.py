"""Distributed engine: interprets one rank's program (nptp_mpi.plan.program) every inference.

The engine knows steps, not schemes: compute pieces of a node, post and complete exchanges, copy, sum
partial results, reduce to rank 0, run the head. Buffers, node variants and MPI datatypes are made once,
in the constructor, and reused by every inference.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from nptp_mpi.io.inputs import pixels_to_tensor
from nptp_mpi.kernels import channel_sums, layout
from nptp_mpi.kernels.vectors import LANES
from nptp_mpi.model.graph import Graph
from nptp_mpi.plan.plan import Plan, rank_params
from nptp_mpi.plan.program import INPUT, Buffer, Compute, Copy, Head, Post, Program, Reduce, Sum, Wait, lower
from nptp_mpi.runtime.exchange import Messages, World
from nptp_mpi.runtime.layouts import blocked_maps
from nptp_mpi.runtime.ops import Pieces, Tile, bias_act, run_whole

Rect = tuple[int, int, int, int]


@dataclass
class Stats:
    """What one rank measured in one inference."""

    compute_s: float
    comm_s: float
    halo_sent: int
    halo_recv: int
    other_sent: int
    other_recv: int


class Contribution:
    """A rank's part of a reduction to rank 0 (a Reduce step): what it adds from its own tile, and how
    rank 0 finishes the sum."""

    def __init__(self, graph: Graph, step: Reduce, params: dict[str, dict[str, np.ndarray]]) -> None:
        self.step = step
        self.gemm = self.pool = self.canvas = None
        if step.kind == "linear":
            nodes = {n.name: n for n in graph.nodes}
            self.gemm = nodes[step.node]
            w = params[step.node]["w"]
            self.partial_gemm = replace(self.gemm, params={"w": w.reshape(w.shape[0], -1)}, attrs={})
            self.b = params[step.node].get("b")
            if step.pool:
                self.pool = replace(nodes[step.pool], params={})
                self.canvas = np.zeros(graph.shapes[step.source], np.float32)

    def partial(self, own: np.ndarray) -> np.ndarray:
        """This rank's addend from its own tile `own` of the source map."""
        if self.step.kind == "mean":
            return channel_sums(own)
        feats = own
        if self.pool is not None:
            y0, x0, y1, x1 = self.step.rect
            self.canvas[:, y0:y1, x0:x1] = own  # zero elsewhere: bins get this rank's pixels' share of their mean
            y0, x0, y1, x1 = self.step.bins
            feats = run_whole(self.pool, [self.canvas])[:, y0:y1, x0:x1]
        return run_whole(self.partial_gemm, [np.ascontiguousarray(feats).reshape(-1)])

    def finish(self, total: np.ndarray) -> np.ndarray:
        """Rank 0: the mean (global pooling) or bias and activation (a split FC layer) of the sum."""
        if self.step.kind == "mean":
            return (total / self.step.count).astype(np.float32).reshape(-1, 1, 1)
        y = np.array(total, np.float32)
        bias_act(y.reshape(-1, 1), self.b, self.gemm)
        return y


def _held_shape(b: Buffer) -> tuple[int, int, int]:
    """The shape of the rect buffer b holds."""
    return b.channels, b.rect[2] - b.rect[0], b.rect[3] - b.rect[1]


def _elements(pixels: bool) -> type:
    """A buffer's element type: an image's 8-bit pixels, or float32 values."""
    return np.uint8 if pixels else np.float32


class Engine:
    """Runs plan on world's ranks; infer() returns the output on rank 0 and None elsewhere.

    overlap (the program's mode): a halo travels while the core of the next window layer is computed and
    the rank waits only before the border pieces; without, it waits right after the producing layer.
    """

    def __init__(self, graph: Graph, plan: Plan, world: World, overlap: bool = True) -> None:
        if plan.ranks != world.size:
            raise ValueError(f"plan is for {plan.ranks} ranks, the job has {world.size}")
        self.graph, self.plan, self.world = graph, plan, world
        self.program: Program = lower(graph, plan, world.rank, overlap)
        # The weights this rank computes with (slices copied, so free_unused_weights can drop the full arrays).
        self.params = rank_params(graph, plan, world.rank, copy=True)
        nodes = self.graph_nodes = {n.name: n for n in graph.nodes}
        # A conv's map whose planes would lie a multiple of 4 KiB apart gets a spare row after each (kernels/layout.py)
        # and is written in place, as a fixed buffer is; so is a map kept channel-blocked (runtime.layouts).
        convs, bufs = {n.output for n in graph.nodes if n.op == "conv"}, self.program.buffers.values()
        self.blocked = self._blocked()
        shapes = {b.name: layout.buffer_shape(*_held_shape(b)) if b.alloc and not b.pixels
                  and (b.fixed or b.name in convs) else _held_shape(b) for b in bufs}
        for name in self.blocked:
            c, h, w = _held_shape(self.program.buffers[name])
            shapes[name] = (c // LANES, h, w, LANES)
        self.buffers: dict[str, np.ndarray | None] = {
            b.name: np.zeros(shapes[b.name], _elements(b.pixels)) if b.alloc or b.name in self.blocked else None
            for b in bufs}
        self.rects = {b.name: b.rect for b in bufs}
        self.fixed = {b.name for b in bufs if b.fixed or shapes[b.name] != _held_shape(b)}
        self.pieces: dict[int, Pieces] = {}  # per Compute step: its node with this rank's weights, on its pieces
        self.messages: dict[int, list[tuple[str, Messages]]] = {}  # per Post step, its datatypes per buffer
        self.parts: dict[int, Contribution] = {}
        for i, step in enumerate(self.program.steps):
            if isinstance(step, Compute):
                p = self.params.get(step.node, {})
                node = replace(nodes[step.node], params={"w": p["w"]}, attrs={}) if step.linear \
                    else replace(nodes[step.node], params=p)
                into = ([self._tile(step.output).view(piece) for piece in step.pieces] if step.output in self.fixed
                        else None)  # (each piece's view of its fixed output buffer)
                self.pieces[i] = Pieces(node, graph.shapes[node.inputs[0]][1:], list(step.pieces), into)
            elif isinstance(step, Post):
                self.messages[i] = self._messages(step)
            elif isinstance(step, Reduce):
                self.parts[i] = Contribution(graph, step, self.params)
        self.bias = {s.node: self.params[s.node].get("b") for s in self.program.steps if isinstance(s, Sum)}

    def _blocked(self) -> set[str]:
        """The buffers this rank keeps channel-blocked (runtime.layouts): those its computes alone write and read
        (no exchange, copy, sum, reduction or head touches them), between 1×1 convs."""
        nodes, steps = self.graph_nodes, self.program.steps
        uses = [(nodes[s.node], () if s.linear or s.mean or "w" not in self.params.get(s.node, {})
                 else self.params[s.node]["w"].shape, s.inputs, s.output, self.graph.shapes[nodes[s.node].output][1:])
                for s in steps if isinstance(s, Compute)]
        nchw = {INPUT} | {b.name for b in self.program.buffers.values() if b.pixels}
        for s in steps:
            if isinstance(s, Post):
                nchw |= {m.buffer for m in (*s.sends, *s.recvs)}
            elif isinstance(s, Copy):
                nchw |= {s.src, s.dst}
            elif isinstance(s, Sum):
                nchw |= {s.output, *(name for name, _ in s.parts)}
            elif isinstance(s, Reduce):
                nchw |= {s.source, s.output}
            elif isinstance(s, Head):
                nchw.add(s.input)
        return blocked_maps(uses, nchw)

    def _shape(self, name: str) -> tuple[int, ...]:
        """Buffer `name`'s shape: as allocated (spare rows included), else that of the rect it will hold."""
        data = self.buffers[name]
        return _held_shape(self.program.buffers[name]) if data is None else data.shape

    def _messages(self, step: Post) -> list[tuple[str, Messages]]:
        """The step's messages grouped by buffer, as pre-built MPI datatypes."""
        names = list(dict.fromkeys(m.buffer for m in (*step.recvs, *step.sends)))
        return [(name, self.world.messages(self._shape(name), self.rects[name],
                                           [(m.peer, m.rect) for m in step.sends if m.buffer == name],
                                           [(m.peer, m.rect) for m in step.recvs if m.buffer == name],
                                           _elements(self.program.buffers[name].pixels)))
                for name in names]

    def _tile(self, name: str) -> Tile:
        return Tile(self.buffers[name], self.rects[name])

    def _map(self, name: str) -> np.ndarray:
        """Buffer `name` without its spare rows, if it has any (kernels.layout)."""
        data, rect = self.buffers[name], self.rects.get(name)
        return data if rect is None or data.shape[1] == rect[2] - rect[0] else data[:, : rect[2] - rect[0]]

    def _compute(self, i: int, step: Compute) -> None:
        """The step's pieces: written into a fixed buffer, or the single result becomes the buffer."""
        pieces = self.pieces[i]
        outs = pieces([self._tile(t) for t in step.inputs], self.buffers[step.mean] if step.mean else None)
        if pieces.into is None:
            self.buffers[step.output], = outs

    def infer(self, x: np.ndarray | None) -> tuple[np.ndarray | None, Stats]:
        """One inference; x is the whole input (C, H, W) on rank 0 (an image's uint8 pixels where the plan
        scatters pixels) and ignored elsewhere."""
        w = self.world
        w.traffic.reset()
        if INPUT in self.buffers:
            x = np.asarray(x)
            if self.plan.pixels and x.dtype != np.uint8:
                raise ValueError(f"the plan scatters an image's 8-bit pixels; got {x.dtype} values")
            self.buffers[INPUT] = np.ascontiguousarray(x, dtype=_elements(self.plan.pixels))
        compute, pending, out = 0.0, {}, None
        for i, step in enumerate(self.program.steps):
            t0 = time.perf_counter()
            if isinstance(step, Compute):
                self._compute(i, step)
            elif isinstance(step, Post):
                pending[step.key] = [w.post(self.buffers[name], msgs, step.tag, step.halo)
                                     for name, msgs in self.messages[i]]
                continue
            elif isinstance(step, Wait):
                for p in pending.pop(step.key):
                    w.complete(p, step.what)
                continue
            elif isinstance(step, Copy):
                src = self._tile(step.src).view(step.rect)
                self._tile(step.dst).view(step.rect)[...] = pixels_to_tensor(src) if step.pixels else src
            elif isinstance(step, Sum):
                self._sum(step)
            elif isinstance(step, Reduce):
                part = self.parts[i]
                addend = part.partial(self._tile(step.source).view(step.rect))
                compute += time.perf_counter() - t0
                total = w.reduce_sum(addend, None if step.everyone else 0, what=step.what)
                t0 = time.perf_counter()
                if total is not None:
                    self.buffers[step.output] = part.finish(total)
            elif isinstance(step, Head):
                out = self._map(step.input)
                for name in step.nodes:
                    out = run_whole(self.graph_nodes[name], [out])
                out = np.ascontiguousarray(out)  # (the caller's: not a view of a buffer with spare rows)
            compute += time.perf_counter() - t0
        tr = w.traffic
        return out, Stats(compute, tr.wait_s, tr.halo_sent, tr.halo_recv, tr.other_sent, tr.other_recv)

    def _sum(self, step: Sum) -> None:
        """Partial sums added in order into the output buffer, then the node's bias and activation."""
        out = self._map(step.output)
        parts = [self._tile(name).view(rect) for name, rect in step.parts]
        np.copyto(out, parts[0])
        for part in parts[1:]:
            np.add(out, part, out=out)
        bias_act(out.reshape(out.shape[0], -1), self.bias[step.node], self.graph_nodes[step.node])

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weights this rank computes with: the plan's weight_bytes, counted on the arrays."""
        return sum(v.nbytes for d in self.params.values() for v in d.values())

    def free_unused_weights(self) -> None:
        """Drop from the graph every weight array this rank does not compute with (the full matrices of split
        layers, the head on ranks other than 0), so that they are freed; the graph can then no longer run
        the reference on this rank."""
        kept = {id(v) for d in self.params.values() for v in d.values()}
        for n in self.graph.nodes:
            n.params = {k: v for k, v in n.params.items() if id(v) in kept}

    def close(self) -> None:
        """Free the MPI datatypes."""
        for groups in self.messages.values():
            for _, msgs in groups:
                msgs.free()
        self.messages.clear()
