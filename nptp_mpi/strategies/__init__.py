"""The schemes: each builds a Plan from (graph, ranks, speeds, objective, setting, options), priced by the
one cost model (nptp_mpi.plan.cost); `build` picks one by name."""

from __future__ import annotations

from nptp_mpi.errors import PartitionError
from nptp_mpi.model.graph import Graph
from nptp_mpi.plan.cost import Setting
from nptp_mpi.plan.plan import Plan
from nptp_mpi.plan.tiling import STRATEGIES as TILINGS
from nptp_mpi.strategies import auto, tiles  # (modules: a scheme function shares its module's name)
from nptp_mpi.strategies.options import Options

STRATEGIES = {**{name: tiles.tiles for name in TILINGS}, **auto.CANDIDATES, "auto": auto.auto}


def build(graph: Graph, ranks: int, strategy: str = "nptp", speeds: list[float] | None = None,
          objective: str = "total", setting: Setting | None = None, fuse: tuple[int, ...] | None = None,
          tiling: str = "nptp", cells=None, prefixes: list[tuple[int, ...]] | None = None) -> Plan:
    """The plan of the scheme named strategy (see Options for fuse, tiling, cells and prefixes); nominal boards
    and links where no setting is given."""
    speeds = [1.0] * ranks if speeds is None else list(speeds)
    setting = setting or Setting.nominal(speeds)
    if strategy not in STRATEGIES:
        raise PartitionError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    options = Options(fuse, strategy if strategy in TILINGS else tiling, cells, prefixes)
    return STRATEGIES[strategy](graph, ranks, speeds, objective, setting, options)
