"""Lowering a plan into per-rank programs, checked without MPI: what one rank's program sends, its peer's
program receives under the same tag, and the other way round (a mismatch is a hang at run time)."""

from __future__ import annotations

from collections import Counter

import pytest
from conftest import conv, small_net

from nptp_mpi.errors import PartitionError
from nptp_mpi.model.graph import Graph
from nptp_mpi.plan.program import Post, lower
from nptp_mpi.strategies import STRATEGIES, build


def patchify() -> Graph:
    """A ConvNeXt-like stem (a 2×2 stride-2 conv: no overlap, so HALP's cores do not shrink over it) and 3×3
    convs of as many channels: the block end's seams equal the next map's halo transfers, rect and bytes."""
    nodes = [conv("stem", "input", 3, 8, k=2, stride=2, pad=0), conv("a", "stem", 8, 8), conv("b", "a", 8, 8),
             conv("c", "b", 8, 8)]
    return Graph("patchify", "input", (3, 32, 32), "c", nodes)


def messages(graph: Graph, plan, overlap: bool) -> tuple[Counter, Counter]:
    """(sent, received), each as a Counter of (src, dst, tag, rect, channels) over every rank's program."""
    sent, recv = Counter(), Counter()
    for r in range(plan.ranks):
        program = lower(graph, plan, r, overlap)
        for step in program.steps:
            if isinstance(step, Post):
                for m in step.sends:
                    sent[r, int(m.peer), step.tag, m.rect, program.buffers[m.buffer].channels if m.buffer in
                         program.buffers else graph.input_shape[0]] += 1
                for m in step.recvs:
                    recv[int(m.peer), r, step.tag, m.rect, program.buffers[m.buffer].channels] += 1
    return sent, recv


@pytest.mark.parametrize("make", [small_net, patchify], ids=["small_net", "patchify"])
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_every_send_has_its_receive(make, strategy: str, ranks: int) -> None:
    graph = make()
    fuse = (1,) if strategy == "halp" else None  # a one-layer host-assisted block: the seams end at the stem
    try:
        plan = build(graph, ranks, strategy, fuse=fuse)
    except PartitionError:
        pytest.skip(f"{strategy} refuses {graph.name} on {ranks} ranks")
    for overlap in (False, True):
        sent, recv = messages(graph, plan, overlap)
        assert sent == recv, (sent - recv, recv - sent)
