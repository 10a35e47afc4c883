"""Measure what the cost model needs, under MPI: `mpiexec -n N python -m nptp_mpi.calibrate -o cal.json`.

Boards: each rank times kernels.conv2d on three representative convs (VGG/ResNet-like; median of
--repeat runs after a warm-up) → FLOP/s, and a tiny conv (8→8 3×3 at 4×4) → per-call overhead. Ranks
take turns (barrier between them) so ranks sharing a machine do not slow each other down; --concurrent
measures all at once (one rank per board: faster, and closer to a real run).

Links: ping-pong between rank 0 and each other rank in turn with mpi4py Send/Recv: 8 B messages give
α (half the round trip), large ones (--large-mb, default 4 MB) β = bytes / (half round trip - α). The
links written are those of the worst pair (largest α, smallest β). Whether the medium is shared cannot
be told from one pair at a time: it comes from --shared (default: switched).

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
from datetime import datetime, timezone  # noqa: E402

import numpy as np  # noqa: E402

from .cost import BoardCal, Calibration, Links  # noqa: E402

# (Cin, Cout, k, H=W): 3×3 convs of VGG-16 at 224² stages 2 and 3, and a ResNet-50 1×1 at 28².
SHAPES = ((64, 64, 3, 56), (128, 128, 3, 28), (256, 256, 1, 28))
TINY = (8, 8, 3, 4)


def _conv_call(cin: int, cout: int, k: int, hw: int):
    """A no-argument call of kernels.conv2d on one shape, and its FLOPs."""
    import kernels as K

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


def format_table(cal: Calibration) -> str:
    lines = ["rank  host                  GFLOP/s  overhead"]
    lines += [f"{b.rank:>4}  {b.host:<20} {b.flops_per_s / 1e9:>8.2f}  {b.layer_overhead_s * 1e6:>6.0f} us"
              for b in cal.boards]
    if cal.pairs:
        lines += ["", "pair   alpha      bandwidth"]
        lines += [f"0-{p['peer']:<3} {p['alpha_s'] * 1e6:>7.1f} us  {p['bytes_per_s'] * 8 / 1e6:>9.1f} Mbit/s"
                  for p in cal.pairs]
    ln = cal.links
    lines += ["", f"links (worst pair): alpha {ln.alpha_s * 1e6:.1f} us, {ln.bytes_per_s * 8 / 1e6:.1f} Mbit/s, "
              f"{'shared medium' if ln.shared else 'switched'}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="nptp_mpi.calibrate", description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", required=True, help="calibration JSON to write (rank 0)")
    ap.add_argument("--shared", action="store_true", help="the ranks share one medium (Wi-Fi); default switched")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (median; default 3)")
    ap.add_argument("--pings", type=int, default=30, help="small-message round trips per pair (default 30)")
    ap.add_argument("--large-mb", type=float, default=4.0, help="large message size in MB (default 4)")
    ap.add_argument("--concurrent", action="store_true", help="all ranks time kernels at once, not in turn")
    args = ap.parse_args(argv)
    if args.repeat < 1 or args.pings < 1 or not args.large_mb > 0:
        print("calibrate: --repeat and --pings must be >= 1 and --large-mb > 0", file=sys.stderr)
        return 2

    from mpi4py import MPI

    from .exchange import World

    world = World(MPI.COMM_WORLD, timeout=300)
    comm, rank, size = world.comm, world.rank, world.size
    error = "links need at least 2 ranks (mpiexec -n 2 or more)" if size < 2 else None
    error = world.bcast(error or _check_output(args.output) if rank == 0 else None)
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
            world.barrier()
    boards = world.gather_values(board)

    pairs = []
    large = int(args.large_mb * 1e6) // 4 * 4
    for peer in range(1, size):
        world.barrier()
        if rank in (0, peer):
            alpha = ping_pong(comm, peer, 8, args.pings)
            half = ping_pong(comm, peer, large, args.repeat)
            beta = large / (half - alpha) if half > alpha else large / half
            if rank == 0:
                pairs.append({"peer": peer, "alpha_s": alpha, "bytes_per_s": beta})
    world.barrier()
    if rank != 0:
        return 0
    hosts = [b["host"] for b in boards]
    for p in pairs:
        p["host"] = hosts[p["peer"]]
    links = Links(max(p["alpha_s"] for p in pairs), min(p["bytes_per_s"] for p in pairs), args.shared)
    cal = Calibration(tuple(BoardCal(r, b["host"], b["flops_per_s"], b["layer_overhead_s"])
                            for r, b in enumerate(boards)), links,
                      datetime.now(timezone.utc).isoformat(timespec="seconds"), hosts[0], tuple(pairs))
    try:
        cal.save(args.output)
    except OSError as e:
        print(f"calibrate: cannot write {args.output!r}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(format_table(cal))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
