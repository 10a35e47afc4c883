"""Latency cost model: a plan, the boards' speeds and the links' α/β → predicted seconds per inference.

Layer-synchronous critical path, following what the engine does (every rank advances layer by layer,
a layer lasting as long as its slowest rank):

* scatter: rank 0 sends each rank its input tile + halo: α·(N-1) + scatter bytes / β (all through rank
  0's link, or the shared medium — the same either way).
* per spatial node, rank r computes its own output in the engine's pieces (core + border strips,
  plan.pieces, as the engine does): FLOPs / flops_per_s[r] + layer_overhead_s per kernel call.
  FLOPs: conv 2·Cout·area·(Cin/g)·kh·kw; pools C·area·kh·kw; pointwise ops one per element per input.
* a halo exchange of tensor t costs rank r  α·(messages to/from r) + bytes / β, where bytes is
  max(received by r, sent by r) on a switched LAN (full duplex, each board its own link) and the whole
  exchange's bytes on a shared medium (Wi-Fi: one bottleneck carries everyone's traffic).
* without overlap the exchange follows the producing layer: max_r compute + max_r comm. With overlap it
  travels while later layers run: a layer-synchronous clock shortens what is left of it, and the
  first consumer that needs it waits per rank: max(core_r, comm left_r) + border_r.
* head: reduce (C floats per rank) or gather (plan.gather_bytes) to rank 0: α·(N-1) + bytes / β, then the
  head ops on rank 0 (gemm 2·M·K, others one per element).

Ignored: that MPI makes progress only inside MPI calls (large rendezvous messages may not move while a
rank computes, so real overlap can be smaller), contention between exchanges in flight at once, message
packing, memory bandwidth (pointwise ops are counted as a FLOP per element), skew between ranks carried
from one layer to the next (each layer waits for its slowest rank), and the first-call Numba compile.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .geometry import area
from .graph import Graph, Node
from .partition import PartitionError
from .plan import Plan, make_plan, pieces, plan_from_cells

Rect = tuple[int, int, int, int]

_PREFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "ki": 2.0 ** 10, "mi": 2.0 ** 20, "gi": 2.0 ** 30}
_RATE = re.compile(r"^([kmg]i?)?(bit|bit/s|bps|b/s|B/s|B)?$", re.IGNORECASE)
_TIME_UNITS = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(\S*)\s*$")


def _number(text: str, what: str, example: str) -> tuple[float, str]:
    m = _NUMBER.match(str(text))
    if m is None:
        raise ValueError(f"{what} {text!r} not understood; give e.g. {example}")
    return float(m.group(1)), m.group(2)


def parse_rate(text: str) -> float:
    """A link rate in bytes/s: '100mbit' ('100Mbit/s', '100mbps', '100Mb/s'), '1gbit', '12.5MB/s',
    '1MiB/s', or a bare number of bytes/s. A capital B means bytes, anything else with 'b' bits."""
    example = "100mbit, 1gbit, 12.5MB/s or 125000 (bytes/s)"
    v, unit = _number(text, "rate", example)
    m = _RATE.match(unit)
    if m is None or (unit and m.group(2) is None):
        raise ValueError(f"rate {text!r}: unknown unit {unit!r}; give e.g. {example}")
    prefix, suffix = (m.group(1) or "").lower(), m.group(2) or ""
    v *= _PREFIX[prefix] * (1.0 if suffix in ("", "B/s", "B") else 1 / 8)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"rate {text!r} must be positive and finite")
    return v


def parse_time(text: str) -> float:
    """A time in seconds: '1ms', '200us', '0.5s', or bare seconds ('0.001')."""
    example = "1ms, 200us or 0.001 (seconds)"
    v, unit = _number(text, "time", example)
    if unit.lower() not in _TIME_UNITS:
        raise ValueError(f"time {text!r}: unknown unit {unit!r}; give e.g. {example}")
    v *= _TIME_UNITS[unit.lower()]
    if not math.isfinite(v):
        raise ValueError(f"time {text!r} must be finite")
    return v


@dataclass(frozen=True)
class Links:
    """The network: per-message latency α (s), bandwidth β (bytes/s); shared = one medium for all ranks."""

    alpha_s: float
    bytes_per_s: float
    shared: bool = False


@dataclass(frozen=True)
class Boards:
    """Per rank FLOP/s of our kernels, and the fixed cost of one kernel call (Python + dispatch)."""

    flops_per_s: tuple[float, ...]
    layer_overhead_s: float = 0.0


@dataclass(frozen=True)
class LayerCost:
    """One step of the critical path: slowest rank's compute, slowest rank's comm, and the time it adds."""

    name: str
    compute_s: float
    comm_s: float
    time_s: float


@dataclass(frozen=True)
class Prediction:
    latency_s: float
    layers: tuple[LayerCost, ...]

    @property
    def compute_s(self) -> float:
        return sum(x.compute_s for x in self.layers)

    @property
    def comm_s(self) -> float:
        return sum(x.comm_s for x in self.layers)

    def to_json(self) -> dict:
        return {"latency_s": self.latency_s, "compute_s": self.compute_s, "comm_s": self.comm_s,
                "layers": [vars(x) for x in self.layers]}


def node_flops(node: Node, graph: Graph, region: Rect) -> float:
    """FLOPs of computing `region` of node's output (see the module docstring for what is counted)."""
    a = float(area(region))
    if a == 0:
        return 0.0
    c = graph.shapes[node.output][0]
    if node.op == "conv":
        cout, cin_g, kh, kw = node.params["w"].shape
        return 2.0 * cout * a * cin_g * kh * kw
    if node.op in ("maxpool", "avgpool"):
        return float(c * a * node.window.kernel[0] * node.window.kernel[1])
    if node.op == "lrn":
        return float(c * a * node.attrs.get("size", 1))
    return float(c * a * max(1, len(node.inputs) if node.op != "concat" else 1))


def _head_flops(node: Node, graph: Graph) -> float:
    if node.op == "gemm":
        m, k = node.params["w"].shape
        return 2.0 * m * k
    shape = graph.shapes[node.inputs[0]]
    return float(math.prod(shape))


def _comm(plan: Plan, tensor: str, links: Links) -> list[float]:
    """Per rank the time of one tensor's halo exchange (0 for a rank that takes no part)."""
    n = plan.ranks
    msgs, sent, recv = [0] * n, [0] * n, [0] * n
    transfers = plan.halos[tensor].transfers
    for t in transfers:
        msgs[t.src] += 1
        msgs[t.dst] += 1
        sent[t.src] += t.nbytes
        recv[t.dst] += t.nbytes
    total = sum(t.nbytes for t in transfers)
    return [0.0 if msgs[r] == 0 else
            links.alpha_s * msgs[r] + (total if links.shared else max(sent[r], recv[r])) / links.bytes_per_s
            for r in range(n)]


def _check(plan: Plan, boards: Boards, links: Links) -> None:
    if len(boards.flops_per_s) != plan.ranks:
        raise ValueError(f"boards give {len(boards.flops_per_s)} speed(s) for a plan on {plan.ranks} rank(s)")
    if not all(math.isfinite(f) and f > 0 for f in boards.flops_per_s) or not boards.layer_overhead_s >= 0:
        raise ValueError(f"board speeds must be positive and the overhead non-negative: {boards}")
    if not (links.alpha_s >= 0 and links.bytes_per_s > 0):
        raise ValueError(f"links need alpha >= 0 and a positive rate: {links}")


def predict(graph: Graph, plan: Plan, boards: Boards, links: Links, overlap: bool = True) -> Prediction:
    """Predicted latency of one inference of plan (see the module docstring for the model)."""
    _check(plan, boards, links)
    n, f, o = plan.ranks, boards.flops_per_s, boards.layer_overhead_s
    k = next((i for i, nd in enumerate(graph.nodes) if not nd.spatial), len(graph.nodes))
    spatial_nodes, head = graph.nodes[:k], graph.nodes[k:]
    layers = []
    scatter = links.alpha_s * (n - 1) + plan.scatter_bytes / links.bytes_per_s if n > 1 else 0.0
    layers.append(LayerCost("scatter", 0.0, scatter, scatter))
    left: list[dict[str, float]] = [{} for _ in range(n)]  # per rank: halos in flight, seconds still to go
    for node in spatial_nodes:
        comps, steps, comms = [], [], []
        for r in range(n):
            inner, border = pieces(plan, graph, node, r)
            c_in = sum(node_flops(node, graph, p) for p in inner) / f[r] + o * len(inner)
            c_b = sum(node_flops(node, graph, p) for p in border) / f[r] + o * len(border)
            wait = left[r].pop(node.inputs[0], None) if border else None
            comps.append(c_in + c_b)
            comms.append(wait or 0.0)
            steps.append(c_in + c_b if wait is None else max(c_in, wait) + c_b)
        step = max(steps)
        for r in range(n):  # what is still in flight travelled while this layer ran
            left[r] = {t: max(0.0, s - step) for t, s in left[r].items()}
        comm_after = 0.0
        if node.output in plan.halos:
            per_rank = _comm(plan, node.output, links)
            if overlap:
                for r in range(n):
                    left[r][node.output] = per_rank[r]
            else:
                comm_after = max(per_rank)
        layers.append(LayerCost(node.name, max(comps), max(comms) + comm_after, step + comm_after))
    rest = max((s for lf in left for s in lf.values()), default=0.0)  # halos no layer waited for
    if rest:
        layers.append(LayerCost("pending halos", 0.0, rest, rest))
    gather = links.alpha_s * (n - 1) + plan.gather_bytes / links.bytes_per_s if n > 1 else 0.0
    c_last = graph.shapes[plan.last][0]
    reduce = plan.gather == "reduce"
    local = max(c_last * float(area(plan.own[plan.last][r])) / f[r] for r in range(n)) if reduce else 0.0
    ops = head[1:] if reduce else head
    head_s = local + sum(_head_flops(nd, graph) / f[0] + o for nd in ops)
    layers.append(LayerCost("head", head_s, gather, gather + head_s))
    return Prediction(sum(x.time_s for x in layers), tuple(layers))


def model_cost(graph: Graph, boards: Boards, links: Links, overlap: bool = True, strategy: str = "nptp",
               objective: str = "total") -> Callable[[list[Rect]], float]:
    """The cost_model hook of partition()/make_plan(): cell rects → predicted seconds."""
    def cost(rects: list[Rect]) -> float:
        plan = plan_from_cells(graph, rects, strategy, None, objective)
        return predict(graph, plan, boards, links, overlap).latency_s
    return cost


def predict_strategies(graph: Graph, ranks: int, speeds: Sequence[float] | None, objective: str, boards: Boards,
                       links: Links, strategies: Sequence[str] = ("coedge", "grid", "nptp"), overlap: bool = True,
                       ) -> list[tuple[str, Plan | None, Prediction | str]]:
    """(strategy, plan, prediction) for each strategy; one that cannot fit gives (strategy, None, reason).

    speeds None: proportional to the boards' FLOP/s. NPTP picks its final tree by this model.
    """
    if speeds is None:
        speeds = list(boards.flops_per_s)
    model = model_cost(graph, boards, links, overlap, objective=objective)
    out = []
    for s in strategies:
        try:
            plan = make_plan(graph, ranks, s, list(speeds), objective, cost_model=model if s == "nptp" else None)
        except PartitionError as e:
            out.append((s, None, str(e)))
            continue
        out.append((s, plan, predict(graph, plan, boards, links, overlap)))
    return out


# -- calibration files ---------------------------------------------------------------------------------

CALIBRATION_VERSION = 1
MAX_CALIBRATION_BYTES = 1 << 20


@dataclass(frozen=True)
class BoardCal:
    rank: int
    host: str
    flops_per_s: float
    layer_overhead_s: float


@dataclass(frozen=True)
class Calibration:
    """What calibrate measured: per board its speed and overhead, and the links (worst measured pair)."""

    boards: tuple[BoardCal, ...]
    links: Links
    date: str
    host: str
    pairs: tuple[dict, ...] = field(default=())

    def to_boards(self, ranks: int | None = None) -> Boards:
        """Boards for a plan on `ranks` ranks (default: as measured; other counts reuse rank speeds cyclically)."""
        n = len(self.boards) if ranks is None else ranks
        flops = tuple(self.boards[r % len(self.boards)].flops_per_s for r in range(n))
        return Boards(flops, max(b.layer_overhead_s for b in self.boards))

    def to_json(self) -> dict:
        return {"version": CALIBRATION_VERSION, "date": self.date, "host": self.host,
                "boards": [vars(b) for b in self.boards], "links": vars(self.links), "pairs": list(self.pairs)}

    @classmethod
    def from_json(cls, d, where: str = "calibration") -> Calibration:
        def num(x, what, zero_ok=False) -> float:
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0 \
                    or (x == 0 and not zero_ok):
                raise ValueError(f"{where}: {what} must be a {'non-negative' if zero_ok else 'positive'} "
                                 f"number, got {x!r}")
            return float(x)

        if not isinstance(d, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(d).__name__}")
        if d.get("version") != CALIBRATION_VERSION:
            raise ValueError(f"{where}: version {d.get('version')!r} is not {CALIBRATION_VERSION}")
        for key in ("date", "host", "boards", "links"):
            if key not in d:
                raise ValueError(f"{where}: missing {key!r}")
        if not isinstance(d["boards"], list) or not d["boards"]:
            raise ValueError(f"{where}: 'boards' must be a non-empty list")
        boards = []
        for i, b in enumerate(d["boards"]):
            if not isinstance(b, dict):
                raise ValueError(f"{where}: boards[{i}] is not an object")
            try:
                boards.append(BoardCal(int(b.get("rank", i)), str(b["host"]),
                                       num(b["flops_per_s"], f"boards[{i}].flops_per_s"),
                                       num(b["layer_overhead_s"], f"boards[{i}].layer_overhead_s", True)))
            except KeyError as e:
                raise ValueError(f"{where}: boards[{i}] lacks {e}") from None
        ln = d["links"]
        if not isinstance(ln, dict) or not all(k in ln for k in ("alpha_s", "bytes_per_s", "shared")):
            raise ValueError(f"{where}: 'links' needs alpha_s, bytes_per_s and shared")
        if not isinstance(ln["shared"], bool):
            raise ValueError(f"{where}: links.shared must be true or false")
        links = Links(num(ln["alpha_s"], "links.alpha_s", True), num(ln["bytes_per_s"], "links.bytes_per_s"),
                      ln["shared"])
        pairs = d.get("pairs", [])
        if not isinstance(pairs, list):
            raise ValueError(f"{where}: 'pairs' must be a list")
        return cls(tuple(boards), links, str(d["date"]), str(d["host"]), tuple(pairs))

    def save(self, path: str) -> None:
        """Write the JSON atomically (temp file in the same folder + rename)."""
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(suffix=".json", dir=folder)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(self.to_json(), fh, indent=1)
                fh.write("\n")
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise


def load_calibration(path: str) -> Calibration:
    """Read a calibration JSON (plain JSON only); ValueError naming the file and the problem."""
    try:
        size = os.path.getsize(path)
        if size > MAX_CALIBRATION_BYTES:
            raise ValueError(f"calibration {path}: {size} bytes is too large for a calibration file")
        with open(path, encoding="utf-8") as fh:
            d = json.load(fh)
    except OSError as e:
        raise ValueError(f"calibration {path}: cannot read ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"calibration {path}: not valid JSON ({e})") from None
    return Calibration.from_json(d, f"calibration {path}")
