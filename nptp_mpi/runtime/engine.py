"""Distributed engine: one rank's share of an inference, step by step as the plan says.

Rank 0 scatters the input (each rank gets its tile plus the halo its first layers read); every layer
computes the rank's share (its own tile, or more inside a fused block) from its buffers and, where the
plan exchanges a tensor's halo, fetches it from the neighbours that own it (an IOP conv pair runs as one
step: nptp_mpi.iop.PairStep); the head is reduced (global pooling), gathered to rank 0, or split by IOP
(each rank's partial product of the first FC layer, summed at rank 0).
Buffers and MPI datatypes are made once, in the constructor, and reused by every inference.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .exchange import Messages, World
from .geometry import area
from .graph import Graph
from .halp import HOST, Seams
from .iop import HeadPart, PairStep, summed
from .ops import Tile, run_head, run_spatial
from .plan import Plan, held, pieces, rank_params

Rect = tuple[int, int, int, int]


class _Msg(NamedTuple):
    src: int
    dst: int
    rect: Rect


@dataclass
class Stats:
    """What one rank measured in one inference."""

    compute_s: float
    comm_s: float
    halo_sent: int
    halo_recv: int
    other_sent: int
    other_recv: int


def _full(shape: tuple[int, ...]) -> Rect:
    return (0, 0, shape[1], shape[2])


class Engine:
    """Runs plan on world's ranks; infer() returns the output on rank 0 and None elsewhere.

    A window layer whose input has a halo is computed in pieces: the core, which reads only the rank's
    own tile, then the border strips. With overlap (Intra-DP's idea) the halo travels while the core
    is computed and the rank waits only before the border; without, it waits right after the producing
    layer. Both compute the same pieces, so their outputs are identical bit for bit.
    """

    def __init__(self, graph: Graph, plan: Plan, world: World, overlap: bool = True) -> None:
        if plan.ranks != world.size:
            raise ValueError(f"plan is for {plan.ranks} ranks, the job has {world.size}")
        self.graph, self.plan, self.world = graph, plan, world
        r = world.rank
        k = next((i for i, n in enumerate(graph.nodes) if not n.spatial), len(graph.nodes))
        self.spatial, self.head = graph.nodes[:k], graph.nodes[k:]
        self.last = self.spatial[-1].output if self.spatial else graph.input

        # Each tensor's buffer holds what this rank reads of it: its halo'd need, else its own tile.
        self.rects = {t: held(plan, graph, t, r) for t in plan.own}
        self.buffers = {t: np.zeros(self._shape(t, rect), np.float32) for t, rect in self.rects.items()}
        # HALP: the host sends its seams from their own buffer, not from its tile of the block's end.
        self.seams = Seams(graph, plan) if plan.halp and r == HOST else None
        mine = [] if self.seams is None else self.seams.transfers
        sums = summed(graph, plan)  # IOP pairs' reduce-scatters: PairStep runs them
        self.msgs: dict[str, Messages] = {
            t: world.halo_messages(self.buffers[t].shape, self.rects[t], [x for x in h.transfers if x not in mine])
            for t, h in plan.halos.items() if t not in sums
        }
        self.tags = {t: i + 2 for i, t in enumerate(plan.halos)}
        if self.seams is not None:
            self.seam_msgs = world.flat_messages(self.seams.offsets, self.seams.transfers)
        self.overlap = overlap
        self.pieces = {n.name: pieces(plan, graph, n, r) for n in self.spatial}

        x_shape = tuple(graph.input_shape)
        scatter = [_Msg(0, q, plan.scatter[q]) for q in range(1, plan.ranks) if area(plan.scatter[q])]
        self.scatter = world.halo_messages(
            x_shape if r == 0 else self.buffers[graph.input].shape,
            _full(x_shape) if r == 0 else self.rects[graph.input], scatter)

        # The weights this rank computes with (slices copied, so free_unused_weights can drop the full arrays).
        self.params = rank_params(graph, plan, r, copy=True)
        self.reduce = plan.gather == "reduce"
        self.split = HeadPart(graph, plan, r, self.params) if plan.gather == "split" else None
        self.pairs = {p.a: PairStep(graph, plan, p, world, self.params, self.tags) for p in plan.pairs}
        self.pairs |= {p.b: None for p in plan.pairs}
        # Head nodes rank 0 runs on the reduced or gathered tensor: after global pooling, after the split FC layer.
        self.head_from = [n.name for n in self.head].index(plan.head.gemm) + 1 if plan.head else int(self.reduce)
        gathered = plan.gather == "gather"
        last_shape = graph.shapes[self.last]
        self.gathered = np.zeros(last_shape, np.float32) if (r == 0 and gathered) else None
        gather = [_Msg(q, 0, plan.own[self.last][q]) for q in range(1, plan.ranks)
                  if gathered and area(plan.own[self.last][q])]  # (nothing from a rank with no tile: a tail)
        self.gather = world.halo_messages(
            last_shape if r == 0 else self.buffers[self.last].shape,
            _full(last_shape) if r == 0 else self.rects[self.last], gather)

    def _shape(self, tensor: str, rect: Rect) -> tuple[int, int, int]:
        return (self.graph.shapes[tensor][0], rect[2] - rect[0], rect[3] - rect[1])

    def _own(self, tensor: str) -> Rect:
        return self.plan.own[tensor][self.world.rank]

    def _output(self, tensor: str, n_pieces: int) -> Tile | None:
        """Where a node's pieces go: its halo buffer (persistent), a fresh tile when it has several
        pieces and no halo, or None when the kernel's own result can simply become the buffer."""
        if self.rects[tensor] != self.plan.comp[tensor][self.world.rank]:
            return Tile(self.buffers[tensor], self.rects[tensor])
        if n_pieces > 1:
            out = Tile(np.empty(self.buffers[tensor].shape, np.float32), self.rects[tensor])
            self.buffers[tensor] = out.data
            return out
        return None

    def _put(self, tensor: str, out: Tile | None, piece: Rect, data: np.ndarray) -> None:
        """Place one computed piece with no copy beyond the one into a multi-piece or halo buffer."""
        if out is None:
            self.buffers[tensor] = data
        else:
            out.view(piece)[...] = data

    def infer(self, x: np.ndarray | None) -> tuple[np.ndarray | None, Stats]:
        """One inference; x is the whole input (C, H, W) on rank 0 and ignored elsewhere."""
        w, r = self.world, self.world.rank
        w.traffic.reset()
        compute = 0.0
        if r == 0:
            x = np.ascontiguousarray(x, dtype=np.float32)
            Tile(self.buffers[self.graph.input], self.rects[self.graph.input]).data[...] = Tile(
                x, _full(x.shape)).view(self.rects[self.graph.input])
        w.exchange(x if r == 0 else self.buffers[self.graph.input], self.scatter, 1, "the input scatter", halo=False)

        pending = {}
        if self.seams is not None:  # seams first: the other ranks need them to finish the block
            t0 = time.perf_counter()
            self.seams.compute(x)
            compute += time.perf_counter() - t0
            pending["seams"] = w.post(self.seams.buffer, self.seam_msgs, self.tags[self.seams.end])
        for node in self.spatial:
            if node.name in self.pairs:  # an IOP conv pair: a runs both convs and the reduce-scatter, b nothing
                step = self.pairs[node.name]
                compute += step.run(self.buffers, pending) if step else 0.0
                continue
            t0 = time.perf_counter()
            ins = [Tile(self.buffers[t], self.rects[t]) for t in node.inputs]
            in_hw = self.graph.shapes[node.inputs[0]][1:]
            inner, border = self.pieces[node.name]
            out = self._output(node.output, len(inner) + len(border))
            for piece in inner:  # (an empty piece: a HALP core that shrank away)
                if area(piece):
                    self._put(node.output, out, piece, run_spatial(node, ins, in_hw, piece))
            if border and node.inputs[0] in pending:
                compute += time.perf_counter() - t0
                w.complete(pending.pop(node.inputs[0]), f"the halo exchange before {node.name!r}")
                t0 = time.perf_counter()
            for piece in border:
                self._put(node.output, out, piece, run_spatial(node, ins, in_hw, piece))
            compute += time.perf_counter() - t0
            if node.output in self.msgs:
                posted = w.post(self.buffers[node.output], self.msgs[node.output], self.tags[node.output])
                if self.overlap:
                    pending[node.output] = posted
                else:
                    w.complete(posted, f"the halo exchange after {node.name!r}")
        for t, posted in pending.items():  # halos no window layer waited for (none in practice)
            w.complete(posted, f"the halo exchange of {t!r}")

        t0 = time.perf_counter()
        head_in = self._head_input()
        compute += time.perf_counter() - t0
        out = None
        if r == 0:
            t0 = time.perf_counter()
            out = head_in
            for node in self.head[self.head_from:]:
                out = run_head(node, [out])
            compute += time.perf_counter() - t0
        tr = w.traffic
        return out, Stats(compute, tr.wait_s, tr.halo_sent, tr.halo_recv, tr.other_sent, tr.other_recv)

    def _head_input(self) -> np.ndarray | None:
        """What the head continues from at rank 0: the last spatial tensor summed (global pooling) or
        gathered, or the split FC layer's output (partial products summed, bias and activation added)."""
        w = self.world
        own = Tile(self.buffers[self.last], self.rects[self.last]).view(self._own(self.last))
        if self.split is not None:
            total = w.reduce_sum(self.split.partial(own), what="the split FC layer's reduction")
            return None if total is None else self.split.finish(total)
        if self.reduce:
            c, h, wd = self.graph.shapes[self.last]
            total = w.reduce_sum(own.sum(axis=(1, 2), dtype=np.float64))
            return None if total is None else (total / (h * wd)).astype(np.float32).reshape(c, 1, 1)
        if w.rank == 0:
            Tile(self.gathered, _full(self.gathered.shape)).view(self._own(self.last))[...] = own
            w.exchange(self.gathered, self.gather, 0, "the head gather", halo=False)
            return self.gathered
        w.exchange(self.buffers[self.last], self.gather, 0, "the head gather", halo=False)
        return None

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
        for step in self.pairs.values():
            if step:
                step.free()
        for m in (*self.msgs.values(), self.scatter, self.gather, *([self.seam_msgs] if self.seams else [])):
            m.free()
