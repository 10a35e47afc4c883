"""Calibration files: what `calibrate` measured (board speeds, per-layer rates, links), read and checked.

A calibration is JSON written by `mpiexec … python -m nptp_mpi calibrate -o cal.json`; it becomes the cost
model's Boards and Links (Calibration.to_boards, .links). Every field is validated: a bad file is one clear
error, never a wrong prediction.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field

from nptp_mpi.io.files import open_regular
from nptp_mpi.plan.cost import Boards, Links

CALIBRATION_VERSION = 2  # 2 added "layers", links.overlap and null links (one rank); 1 is still read
READABLE_VERSIONS = (1, 2)
MAX_CALIBRATION_BYTES = 8 << 20


def _num(x, where: str, what: str, zero_ok: bool = False) -> float:
    """x as a float if it is a finite positive (or, with zero_ok, non-negative) JSON number; else ValueError."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0 \
            or (x == 0 and not zero_ok):
        raise ValueError(f"{where}: {what} must be a {'non-negative' if zero_ok else 'positive'} number, got {x!r}")
    return float(x)


def _count(x, where: str, what: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or x < 1:
        raise ValueError(f"{where}: {what} must be a positive integer, got {x!r}")
    return x


def _overlap(x, where: str) -> tuple[tuple[int, float], ...]:
    """links.overlap from JSON: [[bytes, fraction], ...] at increasing sizes."""
    what = "links.overlap must be a list of [bytes, fraction] at increasing sizes, fractions from 0 to 1"
    if not isinstance(x, list) or not all(isinstance(p, list) and len(p) == 2 for p in x):
        raise ValueError(f"{where}: {what}")
    out = tuple((_count(b, where, "links.overlap bytes"), _num(f, where, "links.overlap fraction", True))
                for b, f in x)
    if any(f > 1 for _, f in out) or [b for b, _ in out] != sorted({b for b, _ in out}):
        raise ValueError(f"{where}: {what}, got {x!r}")
    return out


@dataclass(frozen=True)
class BoardCal:
    rank: int
    host: str
    flops_per_s: float
    layer_overhead_s: float


@dataclass(frozen=True)
class LayerRates:
    """Rates measured with `ranks` ranks computing a `ranks`-rank plan's tiles at once: per rank, seconds per
    output pixel of each spatial node (the per-call overhead taken out), in one piece and (where measured) in
    overlap's core and border strips, and where the model's head splits
    (IOP), seconds per weight of the rank's partial product of it, all ranks computing theirs at once."""

    ranks: int
    s_per_px: tuple[dict[str, float], ...]
    head_s_per_weight: tuple[float, ...] = ()
    overlap_s_per_px: tuple[dict[str, float], ...] = ()  # the same, computed as overlap does (core and strips)


def _rates(per_rank, n: int, where: str, what: str, optional: bool = False) -> tuple[dict[str, float], ...]:
    """Per rank {node: seconds per pixel} from JSON: a list of n objects (optional: or empty, not measured)."""
    if optional and per_rank == []:
        return ()
    if not isinstance(per_rank, list) or len(per_rank) != n or not all(isinstance(m, dict) for m in per_rank):
        raise ValueError(f"{where}: {what} must be a list of {n} objects (node: seconds per pixel)")
    return tuple({str(k): _num(v, where, f"{what}[{r}][{k!r}]", True) for k, v in m.items()}
                 for r, m in enumerate(per_rank))


@dataclass(frozen=True)
class ModelCal:
    """What `calibrate --model` measured: the model, input and strategy it timed, its layer rates for one
    or more rank counts, and the head's seconds on rank 0."""

    model: str
    input_shape: tuple[int, int, int]
    strategy: str
    head_s: float
    sets: tuple[LayerRates, ...]

    def nearest(self, ranks: int) -> LayerRates:
        """The rates measured with `ranks` ranks at once, else with the nearest count (the larger on a tie)."""
        return min(self.sets, key=lambda s: (abs(s.ranks - ranks), -s.ranks))

    def to_json(self) -> dict:
        return {"model": self.model, "input_shape": list(self.input_shape), "strategy": self.strategy,
                "head_s": self.head_s, "sets": [{"ranks": s.ranks, "s_per_px": list(s.s_per_px),
                                                 **({"head_s_per_weight": list(s.head_s_per_weight)}
                                                    if s.head_s_per_weight else {}),
                                                 **({"overlap_s_per_px": list(s.overlap_s_per_px)}
                                                    if s.overlap_s_per_px else {})} for s in self.sets]}

    @classmethod
    def from_json(cls, d, where: str) -> ModelCal:
        keys = ("model", "input_shape", "strategy", "head_s", "sets")
        if not isinstance(d, dict) or not all(k in d for k in keys):
            raise ValueError(f"{where}: 'layers' needs {', '.join(keys)}")
        shape = d["input_shape"]
        if not isinstance(shape, list) or len(shape) != 3:
            raise ValueError(f"{where}: layers.input_shape must be [C, H, W], got {shape!r}")
        shape = tuple(_count(v, where, "layers.input_shape[]") for v in shape)
        if not isinstance(d["sets"], list) or not d["sets"]:
            raise ValueError(f"{where}: layers.sets must be a non-empty list")
        sets = []
        for i, s in enumerate(d["sets"]):
            what = f"layers.sets[{i}]"
            if not isinstance(s, dict):
                raise ValueError(f"{where}: {what} is not an object")
            n = _count(s.get("ranks"), where, f"{what}.ranks")
            split = s.get("head_s_per_weight", [])  # absent: not measured (the head does not split, or older)
            if not isinstance(split, list) or len(split) not in (0, n):
                raise ValueError(f"{where}: {what}.head_s_per_weight must be a list of {n} numbers")
            sets.append(LayerRates(n, _rates(s.get("s_per_px"), n, where, f"{what}.s_per_px"),
                                   tuple(_num(v, where, f"{what}.head_s_per_weight[{r}]") for r, v in enumerate(split)),
                                   _rates(s.get("overlap_s_per_px", []), n, where, f"{what}.overlap_s_per_px", True)))
        if len({s.ranks for s in sets}) != len(sets):
            raise ValueError(f"{where}: layers.sets measures one rank count twice")
        return cls(str(d["model"]), shape, str(d["strategy"]), _num(d["head_s"], where, "layers.head_s", True),
                   tuple(sets))


@dataclass(frozen=True)
class Calibration:
    """What calibrate measured: per board its speed and overhead, the links (worst measured pair; None when
    measured on one rank) and, with --model, per-layer rates of that model."""

    boards: tuple[BoardCal, ...]
    links: Links | None
    date: str
    host: str
    pairs: tuple[dict, ...] = field(default=())
    layers: ModelCal | None = None

    def to_boards(self, ranks: int | None = None, model: str | None = None) -> Boards:
        """Boards for a plan on `ranks` ranks (default: as measured; other counts reuse rank speeds cyclically),
        with the layer rates (ModelCal.nearest, cyclic too) when `model` is the model they were measured on."""
        n = len(self.boards) if ranks is None else ranks
        flops = tuple(self.boards[r % len(self.boards)].flops_per_s for r in range(n))
        overhead = max(b.layer_overhead_s for b in self.boards)
        if self.layers is None or model != self.layers.model:
            return Boards(flops, overhead)
        rates = self.layers.nearest(n)

        def cyclic(per_rank: tuple) -> tuple:
            return tuple(per_rank[r % rates.ranks] for r in range(n)) if per_rank else ()
        return Boards(flops, overhead, cyclic(rates.s_per_px), self.layers.head_s, self.layers.nearest(1).s_per_px[0],
                      cyclic(rates.head_s_per_weight), cyclic(rates.overlap_s_per_px))

    def to_json(self) -> dict:
        links = None if self.links is None else {**vars(self.links), "overlap": [list(p) for p in self.links.overlap]}
        return {"version": CALIBRATION_VERSION, "date": self.date, "host": self.host,
                "boards": [vars(b) for b in self.boards], "links": links,
                "pairs": list(self.pairs), "layers": None if self.layers is None else self.layers.to_json()}

    @classmethod
    def from_json(cls, d, where: str = "calibration") -> Calibration:
        if not isinstance(d, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(d).__name__}")
        if d.get("version") not in READABLE_VERSIONS:
            raise ValueError(f"{where}: version {d.get('version')!r} is not one this nptp-mpi reads "
                             f"({', '.join(map(str, READABLE_VERSIONS))}); run calibrate again")
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
                                       _num(b["flops_per_s"], where, f"boards[{i}].flops_per_s"),
                                       _num(b["layer_overhead_s"], where, f"boards[{i}].layer_overhead_s", True)))
            except KeyError as e:
                raise ValueError(f"{where}: boards[{i}] lacks {e}") from None
        ln, links = d["links"], None
        if ln is not None or d["version"] == 1:
            if not isinstance(ln, dict) or not all(k in ln for k in ("alpha_s", "bytes_per_s", "shared")):
                raise ValueError(f"{where}: 'links' needs alpha_s, bytes_per_s and shared")
            if not isinstance(ln["shared"], bool):
                raise ValueError(f"{where}: links.shared must be true or false")
            links = Links(_num(ln["alpha_s"], where, "links.alpha_s", True),
                          _num(ln["bytes_per_s"], where, "links.bytes_per_s"), ln["shared"],
                          _overlap(ln.get("overlap", []), where))  # version 1: not measured
        pairs = d.get("pairs", [])
        if not isinstance(pairs, list):
            raise ValueError(f"{where}: 'pairs' must be a list")
        layers = None if d.get("layers") is None else ModelCal.from_json(d["layers"], where)
        return cls(tuple(boards), links, str(d["date"]), str(d["host"]), tuple(pairs), layers)

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
        with open_regular(path, "calibration", MAX_CALIBRATION_BYTES) as fh:
            d = json.loads(fh.read().decode("utf-8"))
    except OSError as e:
        raise ValueError(f"calibration {path}: cannot read ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"calibration {path}: not valid JSON ({e})") from None
    return Calibration.from_json(d, f"calibration {path}")
