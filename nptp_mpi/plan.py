"""The plan: everything a rank does, as one pure value computed identically on every rank.

Per spatial tensor: the rect each rank owns and, for tensors a window op reads, the rect it needs and
the transfers (need[dst] ∩ own[src]) that fill the difference. Plus the scatter of the input from
rank 0 and how the last map reaches the head. Plain ints, strings and tuples: no numpy, no MPI.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from .geometry import Rect, area, as_rect, core, overlaps, regions, ring, spatial
from .graph import Graph, Node
from .partition import partition

FLOAT_BYTES = 4


@dataclass(frozen=True)
class Transfer:
    """Rank src sends rank dst the rect of one tensor (all channels)."""

    src: int
    dst: int
    rect: Rect
    nbytes: int


@dataclass(frozen=True)
class Halo:
    """A tensor some window op reads: what each rank needs of it, and who sends what."""

    tensor: str
    channels: int
    need: tuple[Rect, ...]
    transfers: tuple[Transfer, ...]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.transfers)


@dataclass(frozen=True)
class Plan:
    """One inference over `ranks` boards; own/halos are keyed by tensor in graph order."""

    model: str
    graph_fingerprint: str
    input_shape: tuple[int, int, int]
    strategy: str
    ranks: int
    speeds: tuple[float, ...]
    objective: str
    cells: tuple[int, int]
    cell_tiles: tuple[Rect, ...]
    tiles: tuple[Rect, ...]
    own: dict[str, tuple[Rect, ...]]
    halos: dict[str, Halo]
    scatter: tuple[Rect, ...]
    scatter_bytes: int
    last: str
    gather: str
    gather_bytes: int

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    @property
    def halo_bytes(self) -> int:
        return sum(h.nbytes for h in self.halos.values())

    @property
    def per_rank(self) -> list[dict]:
        """Per rank: halo bytes sent and received, and its tile on the input."""
        rows = [{"rank": r, "bytes_sent": 0, "bytes_recv": 0, "tile": list(self.tiles[r])} for r in range(self.ranks)]
        for h in self.halos.values():
            for t in h.transfers:
                rows[t.src]["bytes_sent"] += t.nbytes
                rows[t.dst]["bytes_recv"] += t.nbytes
        return rows

    @property
    def layers(self) -> list[dict]:
        """Per halo tensor: name, channels, bytes moved."""
        return [{"name": h.tensor, "channels": h.channels, "bytes": h.nbytes} for h in self.halos.values()]

    def to_json(self) -> dict:
        """What `plan --json` prints (and what the fingerprint hashes)."""
        return {
            "model": self.model,
            "graph_fingerprint": self.graph_fingerprint,
            "input_shape": list(self.input_shape),
            "strategy": self.strategy,
            "ranks": self.ranks,
            "speeds": list(self.speeds),
            "objective": self.objective,
            "cells": list(self.cells),
            "cell_tiles": [list(r) for r in self.cell_tiles],
            "tiles": [list(r) for r in self.tiles],
            "halo_bytes": self.halo_bytes,
            "per_rank": self.per_rank,
            "layers": self.layers,
            "scatter_bytes": self.scatter_bytes,
            "gather": self.gather,
            "gather_bytes": self.gather_bytes,
            "fingerprint": self.fingerprint(),
        }

    def fingerprint(self) -> str:
        """Short sha256 of the whole content: ranks compare it before they start."""
        content = repr((sorted((k, v) for k, v in asdict(self).items() if k not in ("own", "halos")),
                        list(self.own.items()), list(self.halos.items())))
        return hashlib.sha256(content.encode()).hexdigest()[:16]


def held(plan: Plan, graph: Graph, tensor: str, r: int) -> Rect:
    """What rank r holds of a tensor: the input with what its first layers read, a tensor with a halo
    with that halo, anything else just its own tile."""
    if tensor == graph.input:
        return plan.scatter[r]
    return plan.halos[tensor].need[r] if tensor in plan.halos else plan.own[tensor][r]


def pieces(plan: Plan, graph: Graph, node: Node, r: int) -> tuple[list[Rect], list[Rect]]:
    """(core, border) of rank r's output of node: the part that reads only its own input tile (computed
    while the halo travels) and the strips that need the halo; one piece when there is no halo."""
    out, t = plan.own[node.output][r], node.inputs[0]
    if node.window is None or held(plan, graph, t, r) == plan.own[t][r]:
        return [out], []
    inner = core(node.window, out, plan.own[t][r], graph.shapes[t][1:])
    return ([inner] if area(inner) else []), ring(out, inner)


def make_plan(graph: Graph, ranks: int, strategy: str = "nptp", speeds: list[float] | None = None,
              objective: str = "total", cost_model: Callable[[list[Rect]], float] | None = None) -> Plan:
    """The plan for running graph on `ranks` boards with the named partition strategy (deterministic).

    cost_model: see partition.partition (None: halo bytes decide)."""
    speeds = tuple(float(s) for s in speeds) if speeds is not None else (1.0,) * ranks
    cell_tiles = partition(strategy, graph, ranks, list(speeds), objective, cost_model)
    return plan_from_cells(graph, cell_tiles, strategy, speeds, objective)


def plan_from_cells(graph: Graph, cell_tiles, strategy: str = "nptp", speeds: tuple[float, ...] | None = None,
                    objective: str = "total") -> Plan:
    """The plan for given cell rects (one per rank, already checked): what make_plan builds around them."""
    sp = spatial(graph)
    ranks = len(cell_tiles)
    speeds = tuple(float(s) for s in speeds) if speeds is not None else (1.0,) * ranks
    cell_tiles = [as_rect(r) for r in cell_tiles]
    own, needs = regions(sp, np.array(cell_tiles))
    halos = {}
    for t in sp.halo_tensors():
        c = sp.channels[t]
        rects, areas = overlaps(own[t], needs[t])
        transfers = tuple(Transfer(src, dst, as_rect(rects[dst, src]), FLOAT_BYTES * c * int(areas[dst, src]))
                          for dst, src in zip(*np.nonzero(areas), strict=True))
        halos[t] = Halo(t, c, tuple(as_rect(r) for r in needs[t]), transfers)
    scatter = needs[graph.input]
    c_in, c_last = sp.channels[graph.input], sp.channels[sp.last]
    if sp.head == "gap":
        gather, gather_bytes = "reduce", FLOAT_BYTES * c_last * (ranks - 1)
    else:
        gather, gather_bytes = "gather", FLOAT_BYTES * c_last * int(area(own[sp.last][1:]).sum())
    return Plan(
        model=graph.name,
        graph_fingerprint=graph.fingerprint(),
        input_shape=tuple(graph.input_shape),
        strategy=strategy,
        ranks=ranks,
        speeds=speeds,
        objective=objective,
        cells=sp.cells,
        cell_tiles=tuple(cell_tiles),
        tiles=tuple(as_rect(r) for r in own[graph.input]),
        own={t: tuple(as_rect(r) for r in own[t]) for t in sp.tensors},
        halos=halos,
        scatter=tuple(as_rect(r) for r in scatter),
        scatter_bytes=FLOAT_BYTES * c_in * int(area(scatter[1:]).sum()),
        last=sp.last,
        gather=gather,
        gather_bytes=gather_bytes,
    )


def human(nbytes: float) -> str:
    """Bytes in KB / MB (10^3, 10^6), the units the report uses."""
    for unit, size in (("MB", 1e6), ("KB", 1e3)):
        if nbytes >= size:
            return f"{nbytes / size:.2f} {unit}"
    return f"{int(nbytes)} B"


def format_plan(plan: Plan, top: int | None = 10) -> str:
    """A readable summary: header, tiles, halo bytes per layer (the top rows, or all), per rank, totals."""
    c, h, w = plan.input_shape
    speeds = ",".join(f"{s:g}" for s in plan.speeds)
    lines = [f"{plan.model} {h}x{w}  strategy {plan.strategy}  ranks {plan.ranks}  speeds {speeds}  "
             f"objective {plan.objective}  cells {plan.cells[0]}x{plan.cells[1]}  fingerprint {plan.fingerprint()}",
             "", "rank  tile (y0,x0,y1,x1)      area share  speed share"]
    total_area, total_speed = h * w, sum(plan.speeds)
    for r, t in enumerate(plan.tiles):
        lines.append(f"{r:>4}  {str(t):<22} {area(t) / total_area:>10.1%}  {plan.speeds[r] / total_speed:>11.1%}")
    layers = sorted(plan.layers, key=lambda row: -row["bytes"])
    shown = layers if top is None else layers[:top]
    lines += ["", f"halo per layer ({'all' if len(shown) == len(layers) else f'top {len(shown)} of {len(layers)}'})"]
    lines += [f"  {row['name']:<28} C={row['channels']:<5} {human(row['bytes']):>10}" for row in shown]
    lines += ["", "rank        sent        recv"]
    lines += [f"{row['rank']:>4}  {human(row['bytes_sent']):>10}  {human(row['bytes_recv']):>10}"
              for row in plan.per_rank]
    lines += ["", f"halo total {human(plan.halo_bytes)}  scatter {human(plan.scatter_bytes)}  "
              f"{plan.gather} {human(plan.gather_bytes)}"]
    return "\n".join(lines)


PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40),
           (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0)]


def draw_tiles(plan: Plan, path: str, image=None) -> None:
    """PNG of the partition over the input image (or grey): translucent tile per rank, outline, rank number."""
    from PIL import Image, ImageDraw, ImageFont

    _, h, w = plan.input_shape
    base = (image if image is not None else Image.new("RGB", (w, h), (200, 200, 200))).convert("RGBA")
    base = base.resize((w, h))
    overlay = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    for r, (y0, x0, y1, x1) in enumerate(plan.tiles):
        colour = PALETTE[r % len(PALETTE)]
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=(*colour, 90), outline=(*colour, 255), width=2)
        size = max(10, min(y1 - y0, x1 - x0) // 5)  # readable at a glance, still inside small tiles
        draw.text(((x0 + x1) // 2, (y0 + y1) // 2), f"rank {r}" if size >= 24 else str(r), fill=(255, 255, 255, 255),
                  anchor="mm", font=ImageFont.load_default(size=size), stroke_width=max(1, size // 12),
                  stroke_fill=(0, 0, 0, 255))
    out = Image.alpha_composite(base, overlay).convert("RGB")
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            out.save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
