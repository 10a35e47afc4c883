"""Measure what the cost model needs, under MPI: `mpiexec -n N python -m nptp_mpi.tools.calibrate -o cal.json`.

Boards: each rank times kernels.conv2d on three representative convs (VGG/ResNet-like; median of
--repeat runs after a warm-up) → FLOP/s, and a tiny conv (8→8 3×3 at 4×4) → per-call overhead. Ranks
take turns (barrier between them) so ranks sharing a machine do not slow each other down; --concurrent
measures all at once (one rank per board: faster, and closer to a real run).

Layers (--model M [--size HxW] [--strategy S] [--ranks 1,2,4]): for each rank count k (default: the
job's size), ranks 0..k-1 at once, as a k-rank job would, compute their tiles of the k-rank plan layer by
layer as the engine does (plan.pieces, ops.Pieces, on buffers holding what the rank holds), once in
one piece per node and once in overlap's core and border strips; per spatial node and mode, the median
of --repeat passes after a warm-up, minus the per-call overhead, divided by the pixels computed → seconds
per output pixel. Rank 0 alone also times the head ops; where the head
splits (IOP), ranks 0..k-1 at once time their partial products of it → seconds per weight. Several
counts matter where ranks share cores (4 ranks on a 2-core machine run each layer about half as fast as
one); on boards with a core each one count is enough. With one rank only the layers are measured.

Links: ping-pong between rank 0 and each other rank in turn with mpi4py Send/Recv: 8 B messages give
α (half the round trip), large ones (--large-mb, default 4 MB) β = bytes / (half round trip - α). Then
the pair exchanges halo-like messages (row strips sent as the engine sends halos) of 4 KB, 8 KB, …
256 KB while both compute without MPI calls: the fraction of each size done by then is what overlap can
hide of such a halo. The links
written are those of the worst pair (largest α, smallest β and fractions). Whether the medium is shared
cannot be told from one pair at a time: it comes from --shared (default: switched).

Rank 0 writes the JSON atomically and prints a short table.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from datetime import datetime, timezone  # noqa: E402

import numpy as np  # noqa: E402

from nptp_mpi.kernels.layout import buffer_shape  # noqa: E402
from nptp_mpi.model.graph import Graph  # noqa: E402
from nptp_mpi.plan.calibration import BoardCal, Calibration, LayerRates, ModelCal  # noqa: E402
from nptp_mpi.plan.cost import Links  # noqa: E402
from nptp_mpi.plan.geometry import area  # noqa: E402
from nptp_mpi.plan.plan import Plan, Transfer, held, make_plan, pieces, rank_params, split_head  # noqa: E402
from nptp_mpi.runtime.ops import Pieces, Tile, run_whole  # noqa: E402

# (Cin, Cout, k, H=W): 3×3 convs of VGG-16 at 224² stages 2 and 3, and a ResNet-50 1×1 at 28².
SHAPES = ((64, 64, 3, 56), (128, 128, 3, 28), (256, 256, 1, 28))
TINY = (8, 8, 3, 4)
OVERLAP_SIZES = tuple(4096 << k for k in range(7))  # halo message sizes whose overlap is measured, 4-256 KB


def _conv_call(cin: int, cout: int, k: int, hw: int):
    """A no-argument call of kernels.conv2d on one shape, and its FLOPs."""
    from nptp_mpi import kernels as K

    rng = np.random.default_rng(0)
    x = rng.standard_normal((cin, hw, hw), dtype=np.float32)
    w = (rng.standard_normal((cout, cin, k, k), dtype=np.float32) * 0.1).astype(np.float32)
    p = k // 2

    def call():
        K.conv2d(x, (0, 0), (hw, hw), w, None, (1, 1), (p, p, p, p), (1, 1), 1, (0, 0, hw, hw))

    return call, 2.0 * cout * cin * k * k * hw * hw


def _median_time(call, repeat: int) -> float:
    call()  # warm-up (and the Numba cache load / compile)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_board(repeat: int = 3) -> dict:
    """This rank's FLOP/s over SHAPES (total FLOPs / total median time) and per-call overhead."""
    flops = seconds = 0.0
    for shape in SHAPES:
        call, f = _conv_call(*shape)
        flops += f
        seconds += _median_time(call, repeat)
    rate = flops / seconds
    call, f = _conv_call(*TINY)
    overhead = max(0.0, _median_time(call, max(20, repeat)) - f / rate)
    return {"host": socket.gethostname(), "flops_per_s": rate, "layer_overhead_s": overhead}


def time_layers(graph: Graph, plan: Plan, rank: int, repeat: int,
                overlap: bool = False) -> dict[str, tuple[float, int, int]]:
    """Rank's share of plan computed as the engine computes it in that overlap mode (in one piece per node, or
    in core and border strips), pass after pass: per spatial node the median seconds over `repeat` passes
    after a warm-up one, its kernel calls and the pixels it computed."""
    rng = np.random.default_rng(rank)
    rects = {t: held(plan, graph, t, rank) for t in plan.own}
    convs = {n.output for n in graph.nodes if n.op == "conv"}  # (their maps with the engine's spare rows)
    shapes = {t: (graph.shapes[t][0], r[2] - r[0], r[3] - r[1]) for t, r in rects.items()}
    bufs = {t: rng.standard_normal(buffer_shape(*shape) if t in convs else shape, dtype=np.float32)
            for t, shape in shapes.items()}
    nodes = []
    for node in split_head(graph)[0]:
        parts = [p for part in pieces(plan, graph, node, rank, overlap) for p in part]
        out = Tile(bufs[node.output], rects[node.output])
        nodes.append((node, parts, Pieces(node, graph.shapes[node.inputs[0]][1:], parts, [out.view(p) for p in parts])))
    times: dict[str, list[float]] = {node.name: [] for node, _, _ in nodes}
    for i in range(repeat + 1):
        for node, _, run in nodes:
            ins = [Tile(bufs[t], rects[t]) for t in node.inputs]
            t0 = time.perf_counter()
            run(ins)
            if i:  # the first pass is the warm-up
                times[node.name].append(time.perf_counter() - t0)
    return {node.name: (statistics.median(times[node.name]), len(parts), int(sum(area(p) for p in parts)))
            for node, parts, _ in nodes}


def time_head(graph: Graph, plan: Plan, repeat: int) -> float:
    """Median seconds of the head ops on rank 0, from the reduced or gathered last map, after a warm-up."""
    head = split_head(graph)[1]
    c, h, w = graph.shapes[plan.last]
    reduce = plan.gather == "reduce"
    x = np.random.default_rng(0).standard_normal((c, 1, 1) if reduce else (c, h, w), dtype=np.float32)

    def call():
        out = x
        for node in head[1:] if reduce else head:
            out = run_whole(node, [out])

    return _median_time(call, repeat)


def time_split_head(graph: Graph, plan: Plan, rank: int, repeat: int) -> tuple[float, int] | None:
    """Median seconds of rank's partial product of the head as IOP splits it for plan's tiles (the engine's
    Contribution to the reduction, after a warm-up), and its weights; None where the head does not split."""
    from nptp_mpi.plan.cost import head_weights
    from nptp_mpi.plan.program import Reduce, lower
    from nptp_mpi.runtime.engine import Contribution
    from nptp_mpi.strategies.iop import with_head_split

    split = with_head_split(graph, plan)
    if split.head is None:
        return None
    gemm = split.head.gemm
    params = {gemm: {k: np.ascontiguousarray(v) for k, v in rank_params(graph, split, rank)[gemm].items()}}
    step = next(s for s in lower(graph, split, rank).steps if isinstance(s, Reduce))
    part = Contribution(graph, step, params)
    y0, x0, y1, x1 = split.own[split.last][rank]
    own = np.random.default_rng(rank).standard_normal((graph.shapes[split.last][0], y1 - y0, x1 - x0),
                                                      dtype=np.float32)
    return _median_time(lambda: part.partial(own), repeat), head_weights(graph, split)[rank]


Timed = dict[str, tuple[float, int, int]]  # time_layers: per node (seconds, kernel calls, pixels)


def layer_rates(measured: list[Timed], overhead: float, split: Sequence[tuple[float, int] | None] = (),
                overlapped: Sequence[Timed] = ()) -> LayerRates:
    """Seconds per output pixel per rank and node, taking out `overhead` per kernel call (what predict adds),
    in one piece (measured) and in overlap's pieces (overlapped), and from time_split_head's (seconds,
    weights) per rank, where every rank has them, seconds per weight."""
    per_weight = tuple(t / w for t, w in split) if split and all(s and s[1] for s in split) else ()

    def rates(timed: Sequence[Timed]) -> tuple[dict[str, float], ...]:
        return tuple({name: max(0.0, t - overhead * calls) / pixels for name, (t, calls, pixels) in m.items()
                      if pixels} for m in timed)
    return LayerRates(len(measured), rates(measured), per_weight, rates(overlapped))


def quiet_barrier(world, poll_s: float = 0.01) -> None:
    """A barrier that looks every poll_s: ranks left out of a timing wait without taking the timed ranks'
    cores (World.barrier polls every 0.2 ms, which slowed 2 timed ranks by ~10% with 2 more on 2 cores)."""
    req = world.comm.Ibarrier()
    deadline = time.monotonic() + world.timeout
    while not req.Test():
        if time.monotonic() > deadline:
            raise TimeoutError(f"calibrate: rank {world.rank} waited {world.timeout:g} s for the others")
        time.sleep(poll_s)


def ping_pong(comm, peer: int, nbytes: int, repeat: int) -> float:
    """Median half round trip (s) of nbytes of float32 between this rank and peer (call on both)."""
    buf = np.zeros(max(1, nbytes // 4), np.float32)
    me = comm.Get_rank()
    times = []
    for i in range(repeat + 1):
        t0 = time.perf_counter()
        if me == 0:
            comm.Send(buf, dest=peer, tag=7)
            comm.Recv(buf, source=peer, tag=7)
        else:
            comm.Recv(buf, source=0, tag=7)
            comm.Send(buf, dest=0, tag=7)
        if i:  # the first is a warm-up (connection set-up)
            times.append((time.perf_counter() - t0) / 2)
    return statistics.median(times)


def overlap_fraction(world, other: int, nbytes: int, repeat: int, wire_s: float) -> float:
    """Fraction of a halo exchange with rank `other` that completes while both compute without calling MPI.

    Each sends the other a row strip of a (64, 3, W) float32 map, nbytes, the way the engine sends halos
    (World.post, World.complete), then computes for 3× the exchange's time alone (at least 10 ms, far
    more than the ranks' start skew): 1 - the wait left / the exchange's time, the larger of that
    measured alone and wire_s (α + nbytes/β). Small eager messages can arrive during the start-up
    handshake, so alone they seem to take no time; the wire time keeps the fraction honest.
    """
    width = max(1, nbytes // (4 * 64))
    buf = np.zeros((64, 3, width), np.float32)
    me = world.rank
    msgs = world.halo_messages(buf.shape, (0, 0, 3, width), [Transfer(me, other, (0, 0, 1, width), nbytes),
                                                              Transfer(other, me, (2, 0, 3, width), nbytes)])

    def wait_s(busy_s: float) -> float:
        swap(world, other, 0.0)  # start together
        posted = world.post(buf, msgs, 8, halo=False)
        end = time.perf_counter() + busy_s
        while time.perf_counter() < end:  # computing: no MPI calls
            pass
        t0 = time.perf_counter()
        world.complete(posted, "the overlap measurement")
        return time.perf_counter() - t0

    alone = statistics.median(wait_s(0.0) for _ in range(repeat + 1))
    left = statistics.median(wait_s(max(3 * alone, 0.01)) for _ in range(repeat + 1))  # 10 ms: past any skew
    msgs.free()
    return min(1.0, max(0.0, 1.0 - left / max(alone, wire_s)))


def swap(world, other: int, value: float) -> float:
    """Exchange one float with rank `other` (a plain buffer: nothing another rank sends is unpickled)."""
    theirs = np.zeros(1)
    world.comm.Sendrecv(np.array([value], np.float64), dest=other, recvbuf=theirs, source=other)
    return float(theirs[0])


def overlap_table(world, other: int, repeat: int, alpha_s: float, bytes_per_s: float) -> list[tuple[int, float]]:
    """(size, overlap_fraction) for each of OVERLAP_SIZES with rank `other` over a link of α and β; both
    ranks get the same table, the smaller of their two measurements."""
    out = []
    for size in OVERLAP_SIZES:
        mine = overlap_fraction(world, other, size, repeat, alpha_s + size / bytes_per_s)
        out.append((size, min(mine, swap(world, other, mine))))
    return out


def _check_output(path: str) -> str | None:
    """Why the calibration cannot be written to path, or None."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return f"output {path!r} is a directory"
    if not os.path.isdir(folder):
        return f"output folder {folder!r} does not exist"
    if not os.access(folder, os.W_OK):
        return f"output folder {folder!r} is not writable"
    return None


def _overlap(table: Sequence[Sequence[float]]) -> str:
    return " ".join(f"{size // 1024}K:{f:.0%}" for size, f in table)


def format_table(cal: Calibration, layer_s: Sequence[Sequence[tuple[float, float | None]]] = ()) -> str:
    """Boards, pairs and links; with layers, per rank count and rank the seconds its layers and its part of a
    split head took (layer_s; None where the head does not split)."""
    lines = ["rank  host                  GFLOP/s  overhead"]
    lines += [f"{b.rank:>4}  {b.host:<20} {b.flops_per_s / 1e9:>8.2f}  {b.layer_overhead_s * 1e6:>6.0f} us"
              for b in cal.boards]
    if cal.layers:
        lc, hosts = cal.layers, [b.host for b in cal.boards]
        lines += ["", f"layers of {lc.model} {'x'.join(map(str, lc.input_shape))} on {lc.strategy} tiles; head "
                  f"{lc.head_s * 1e3:.1f} ms on rank 0",
                  "ranks at once  rank  host                  layers  split head (IOP)"]
        lines += [f"{s.ranks:>13}  {r:>4}  {hosts[r]:<20} {t:>7.3f} s" + (f"  {part * 1e3:>9.1f} ms" if part else "")
                  for s, times in zip(lc.sets, layer_s, strict=True) for r, (t, part) in enumerate(times)]
    if cal.pairs:
        lines += ["", "pair   alpha      bandwidth      overlap by halo message size"]
        lines += [f"0-{p['peer']:<3} {p['alpha_s'] * 1e6:>7.1f} us  {p['bytes_per_s'] * 8 / 1e6:>9.1f} Mbit/s  "
                  f"{_overlap(p['overlap'])}" for p in cal.pairs]
    ln = cal.links
    lines += ["", "links: not measured (one rank)" if ln is None else
              f"links (worst pair): alpha {ln.alpha_s * 1e6:.1f} us, {ln.bytes_per_s * 8 / 1e6:.1f} Mbit/s, "
              f"{'shared medium' if ln.shared else 'switched'}, overlap {_overlap(ln.overlap)}"]
    return "\n".join(lines)


def _layer_job(args: argparse.Namespace, size: int) -> tuple[Graph, dict[int, Plan]] | None:
    """With --model: the model and, per rank count to time, its plan; None without. ValueError on bad arguments."""
    if not args.model:
        if args.size or args.ranks or args.strategy:
            raise ValueError("--size, --strategy and --ranks need --model")
        return None
    from nptp_mpi.model.load import load_model, parse_size

    try:
        counts = sorted({int(k) for k in args.ranks.split(",")}) if args.ranks else [size]
    except ValueError:
        raise ValueError(f"--ranks {args.ranks!r}: use rank counts like 1,2,4") from None
    if not all(1 <= k <= size for k in counts):
        raise ValueError(f"--ranks {args.ranks}: every count must be 1 to {size} (the job's ranks)")
    graph = load_model(args.model, parse_size(args.size) if args.size else None, None)
    return graph, {k: make_plan(graph, k, args.strategy or "nptp") for k in counts}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="nptp_mpi.tools.calibrate", description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", required=True, help="calibration JSON to write (rank 0)")
    ap.add_argument("--shared", action="store_true", help="the ranks share one medium (Wi-Fi); default switched")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (median; default 3)")
    ap.add_argument("--pings", type=int, default=30, help="small-message round trips per pair (default 30)")
    ap.add_argument("--large-mb", type=float, default=4.0, help="large message size in MB (default 4)")
    ap.add_argument("--concurrent", action="store_true", help="all ranks time kernels at once, not in turn")
    ap.add_argument("--model", help="also time every spatial layer of this model (zoo name or .onnx) on the tile "
                    "each rank would own, all ranks at once")
    ap.add_argument("--size", help="with --model: input N or HxW (default 224, or the model's)")
    ap.add_argument("--strategy", help="with --model: the partition whose tiles are timed (default nptp)")
    ap.add_argument("--ranks", help="with --model: rank counts k to time, ranks 0..k-1 at once as a k-rank job "
                    "would (e.g. 1,2,4 where ranks share cores; default: the job's size)")
    args = ap.parse_args(argv)
    if args.repeat < 1 or args.pings < 1 or not args.large_mb > 0:
        print("calibrate: --repeat and --pings must be >= 1 and --large-mb > 0", file=sys.stderr)
        return 2

    from mpi4py import MPI

    from nptp_mpi.runtime.exchange import World

    world = World(MPI.COMM_WORLD, timeout=300)
    comm, rank, size = world.comm, world.rank, world.size
    try:
        job, error = _layer_job(args, size), None
    except (ValueError, OSError) as e:
        job, error = None, str(e)
    if rank == 0 and not error:
        error = ("links need at least 2 ranks (mpiexec -n 2 or more); with --model one rank times the layers"
                 if size < 2 and job is None else _check_output(args.output))
    error = next((e for e in world.allgather(error) if e), None)
    if error:
        if rank == 0:
            print(f"calibrate: {error}", file=sys.stderr)
        return 2

    if args.concurrent:
        board = measure_board(args.repeat)
    else:
        board = None
        for turn in range(size):  # rank 0 first: it also fills the Numba cache for the others
            if turn == rank:
                board = measure_board(args.repeat)
            quiet_barrier(world)
    boards = world.gather_values(board)

    measured, split, head_s = [], [], 0.0
    if job:
        graph, plans = job
        for k, plan in plans.items():
            world.barrier()  # ranks 0..k-1 start together
            mine = [time_layers(graph, plan, rank, args.repeat, overlap) for overlap in (False, True)] \
                if rank < k else None
            quiet_barrier(world)
            measured.append(world.gather_values(mine))
            world.barrier()
            mine = time_split_head(graph, plan, rank, args.repeat) if rank < k else None
            quiet_barrier(world)
            split.append(world.gather_values(mine))
        head_s = time_head(graph, plan, args.repeat) if rank == 0 else 0.0
        quiet_barrier(world)

    pairs = []
    large = int(args.large_mb * 1e6) // 4 * 4
    for peer in range(1, size):
        world.barrier()
        if rank in (0, peer):
            alpha = ping_pong(comm, peer, 8, args.pings)
            half = ping_pong(comm, peer, large, args.repeat)
            beta = large / (half - alpha) if half > alpha else large / half
            overlap = overlap_table(world, peer if rank == 0 else 0, args.repeat + 2, alpha, beta)
            if rank == 0:
                pairs.append({"peer": peer, "alpha_s": alpha, "bytes_per_s": beta, "overlap": overlap})
    world.barrier()
    if rank != 0:
        return 0
    hosts = [b["host"] for b in boards]
    for p in pairs:
        p["host"] = hosts[p["peer"]]
    links = Links(max(p["alpha_s"] for p in pairs), min(p["bytes_per_s"] for p in pairs), args.shared,
                  tuple((size, min(p["overlap"][i][1] for p in pairs)) for i, size in enumerate(OVERLAP_SIZES))
                  ) if pairs else None
    layers, layer_s = None, []
    if job:
        graph, plans = job
        overhead = max(b["layer_overhead_s"] for b in boards)  # what Calibration.to_boards gives predict
        both = [m[:k] for k, m in zip(plans, measured, strict=True)]  # per rank count, per rank: (whole, overlap)
        measured = [[w for w, _ in m] for m in both]
        split = [s[:k] for k, s in zip(plans, split, strict=True)]
        layers = ModelCal(graph.name, tuple(graph.input_shape), args.strategy or "nptp", head_s,
                          tuple(layer_rates(m, overhead, s, [o for _, o in b])
                                for m, s, b in zip(measured, split, both, strict=True)))
        layer_s = [[(sum(t for t, _, _ in mine.values()), part[0] if part else None)
                    for mine, part in zip(m, s, strict=True)] for m, s in zip(measured, split, strict=True)]
    cal = Calibration(tuple(BoardCal(r, b["host"], b["flops_per_s"], b["layer_overhead_s"])
                            for r, b in enumerate(boards)), links,
                      datetime.now(timezone.utc).isoformat(timespec="seconds"), hosts[0], tuple(pairs), layers)
    try:
        cal.save(args.output)
    except OSError as e:
        print(f"calibrate: cannot write {args.output!r}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(format_table(cal, layer_s))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
