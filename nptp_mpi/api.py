"""The Python API: load a model, plan it for your ranks and links, run inferences on a communicator you pass.

The command line is one user of the same pieces (cli/run.py adds start-up agreement, reports and files); this
module is what a program that already has MPI running needs. Every rank calls every function alike: planning
is deterministic, so each rank computes the same plan. See the README's "Python API" for a complete example.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from nptp_mpi.errors import UsageError
from nptp_mpi.model.graph import Graph
from nptp_mpi.model.load import load_model
from nptp_mpi.plan.cost import Setting, links_given
from nptp_mpi.plan.plan import Plan
from nptp_mpi.runtime import reference as _reference
from nptp_mpi.runtime.engine import Engine, Stats
from nptp_mpi.runtime.exchange import World
from nptp_mpi.runtime.memory import keep_freed_memory, return_free_memory
from nptp_mpi.runtime.warm import warm_first
from nptp_mpi.strategies import build

__all__ = ["Job", "Stats", "load", "plan", "reference"]


def load(spec: str, size: tuple[int, int] | None = None, weights: str | None = None) -> Graph:
    """A zoo model by name (seeded random weights) or an ONNX file, at size (h, w); weights: an .npz file."""
    return load_model(spec, size, weights)


def plan(graph: Graph, ranks: int, strategy: str = "auto", speeds: list[float] | None = None,
         bandwidth: str | None = None, latency: str | None = None, shared: bool = False,
         overlap: bool = True) -> Plan:
    """The plan of strategy for ranks boards of relative speeds (default equal), over links of bandwidth
    ("100mbit") and per-message latency ("1ms"), shared: one medium for all (default: the nominal link)."""
    speeds = [1.0] * ranks if speeds is None else list(speeds)
    setting, links = Setting.nominal(speeds, overlap), links_given(bandwidth, latency, shared)
    if links is not None:
        setting = replace(setting, links=links, given=True)
    return build(graph, ranks, strategy, speeds, "total", setting)


def reference(graph: Graph, x: np.ndarray) -> np.ndarray:
    """The whole graph in this process (the oracle every distributed run equals)."""
    return _reference.run(graph, x)


class Job:
    """A plan running on a communicator (default: every rank of the job): infer() as often as you like, then
    close() (or use it as a context manager). timeout: seconds any wait for a peer may take (default: none);
    free_weights: drop from graph the weights this rank does not compute with (a board's memory; the graph
    can then no longer run the reference on this rank). It also keeps this process's freed memory for reuse
    (runtime.memory: glibc's mallopt, process-wide)."""

    def __init__(self, graph: Graph, plan: Plan, comm=None, overlap: bool = True, timeout: float | None = None,
                 free_weights: bool = False) -> None:
        self.world = World(comm, timeout)
        if self.world.size != plan.ranks:
            raise UsageError(f"the plan is for {plan.ranks} ranks, the communicator has {self.world.size}")
        self.world.barrier()  # every rank made its Job (and rank 0 learns their hosts, for messages)
        warm_first(self.world)
        keep_freed_memory()
        self.engine = Engine(graph, plan, self.world, overlap=overlap)
        if free_weights:
            self.engine.free_unused_weights()
            return_free_memory()

    def infer(self, x: np.ndarray | None) -> tuple[np.ndarray | None, Stats]:
        """One inference: x (C, H, W) float32 on rank 0 (None elsewhere); the output on rank 0 (None elsewhere)
        and this rank's stats (compute and wait seconds, halo bytes)."""
        return self.engine.infer(x)

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
