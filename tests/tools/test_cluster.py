"""The virtual board cluster (nptp_mpi.tools.cluster): shaped links measured by MPI ping-pong, shared bottleneck,
clean-up after a crash, ranks on distinct hostnames. Root and Linux network namespaces only; skipped otherwise."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from nptp_mpi.tools import cluster

REASON = cluster.unsupported_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

RATE = 100e6

PINGPONG = r"""
import json, socket, statistics, sys, time
import numpy as np
from mpi4py import MPI
c = MPI.COMM_WORLD; r = c.rank
big = np.zeros(4 << 20, np.uint8); small = np.zeros(1, np.uint8)
bw, rtt = [], []
for rep in range(4):
    c.Barrier(); t = time.perf_counter()
    if r == 0: c.Send(big, 1); c.Recv(small, 1)
    elif r == 1: c.Recv(big, 0); c.Send(small, 0)
    bw.append(big.nbytes * 8 / (time.perf_counter() - t))
for rep in range(5):
    c.Barrier(); t = time.perf_counter()
    for i in range(10):
        if r == 0: c.Send(small, 1); c.Recv(small, 1)
        elif r == 1: c.Recv(small, 0); c.Send(small, 0)
    rtt.append((time.perf_counter() - t) / 10)
hosts = c.gather(socket.gethostname())
if r == 0:
    print("RESULT " + json.dumps({"bw": statistics.median(bw[1:]), "rtt": statistics.median(rtt), "hosts": hosts}))
"""

# Two concurrent transfers on three boards: 0 -> 1 and 1 -> 2 (board 1 receives and sends at once). Per-link
# (full duplex, switched) both run at the full rate; through one shared channel they split it.
CONCURRENT = r"""
import json, statistics, time
import numpy as np
from mpi4py import MPI
c = MPI.COMM_WORLD; r = c.rank
out = np.zeros(6 << 20, np.uint8); inn = np.zeros(6 << 20, np.uint8)
flows, totals = [], []
for rep in range(3):
    c.Barrier(); t = time.perf_counter()
    reqs = []
    if r < 2: reqs.append(c.Isend(out, r + 1))
    if r > 0: reqs.append(c.Irecv(inn, r - 1))
    MPI.Request.Waitall(reqs)
    mine = time.perf_counter() - t if r > 0 else None
    times = c.gather(mine)
    if r == 0:
        t1, t2 = times[1], times[2]
        flows.append(sorted([inn.nbytes * 8 / t1, inn.nbytes * 8 / t2]))
        totals.append(2 * inn.nbytes * 8 / max(t1, t2))
if r == 0:
    print("RESULT " + json.dumps({"slow": statistics.median(f[0] for f in flows),
                                   "fast": statistics.median(f[1] for f in flows),
                                   "total": statistics.median(totals)}))
"""

PROBE = r"""
import json, socket
from mpi4py import MPI
cg = [line.split(":", 2)[2] for line in open("/proc/self/cgroup").read().splitlines()]
ranks = MPI.COMM_WORLD.gather([socket.gethostname(), cg])
if MPI.COMM_WORLD.rank == 0:
    print("RESULT " + json.dumps(ranks))
"""


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nptp_mpi.tools.cluster", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def ns_left() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith("nptp-")]


def mpi_script(tmp_path, source: str, n: int, timeout: float = 30):
    script = tmp_path / "probe.py"
    script.write_text(source)
    argv, env = cluster.launch_command([sys.executable, str(script)], n)
    p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    line = next(x for x in p.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.fixture
def virtual():
    """Serialises tests that build the cluster (one machine, one set of names) and always tears it down."""
    with open("/tmp/nptp-cluster-tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield cli
        finally:
            cli("down")


def up_with_cgroups(virtual, *args: str) -> None:
    """cluster up with --cpu/--mem, skipped (with the reason) where this machine has no such cgroup."""
    p = virtual("up", *args)
    if p.returncode != 0:
        assert p.returncode == 2 and "cgroup" in p.stderr, p.stderr
        pytest.skip(p.stderr.strip())


def up(virtual, *args: str) -> None:
    p = virtual("up", *args)
    assert p.returncode == 0, p.stdout + p.stderr


def test_pingpong_rate_and_rtt_then_down(virtual, tmp_path):
    p = virtual("up", "2", "--rate", "100mbit", "--delay", "5ms")
    netem = p.returncode == 0
    if not netem:  # this kernel has no netem: the delay is refused in one line (test below); measure without it
        assert "netem" in p.stderr
        up(virtual, "2", "--rate", "100mbit")
    r = mpi_script(tmp_path, PINGPONG, 2)
    print("per-link ping-pong", r)
    assert r["hosts"] == ["board0", "board1"]
    # TCP/IP/Ethernet headers take ~5% of what the shaper counts: goodput ~ 0.95 x rate.
    assert 0.85 * RATE <= r["bw"] <= 1.15 * RATE, r
    if netem:  # both boards' egress delay the round trip once each: 2 x 5 ms, + up to 1.5 ms of CPU on a busy box
        assert 0.010 * 0.97 <= r["rtt"] <= 0.010 * 1.15 + 0.0015, r
    else:
        assert r["rtt"] < 0.005, r
    assert virtual("down").returncode == 0
    s = virtual("status")
    assert s.returncode == 0 and "cluster: down" in s.stdout, s.stdout
    assert ns_left() == []
    assert not cluster.HOSTFILE.exists()


def test_delay_without_netem_is_refused_cleanly(virtual):
    p = virtual("up", "2", "--delay", "5ms")
    if p.returncode == 0:
        pytest.skip("this kernel has netem: --delay works (measured in the ping-pong test)")
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and "netem" in p.stderr, p.stderr
    assert ns_left() == [] and cluster.links() == []


def test_shared_bottleneck_splits_the_rate(virtual, tmp_path):
    up(virtual, "3", "--rate", "100mbit")
    per_link = mpi_script(tmp_path, CONCURRENT, 3)
    up(virtual, "3", "--rate", "100mbit", "--shared")  # up when up: tears down first
    shared = mpi_script(tmp_path, CONCURRENT, 3)
    print("concurrent per-link", per_link, "shared", shared)
    # per-link: 0->1 and 1->2 use different directions of board 1's link, both at (nearly) full rate; two TCP
    # streams at once on a busy 2-core machine measured 0.64-0.95 x rate each, 1.28-1.9 x rate together: the
    # bound stays above what the shared channel below may carry (1.15 x rate), which is the point
    assert per_link["slow"] >= 0.6 * RATE and per_link["total"] >= 1.2 * RATE, per_link
    # shared: one channel; both together move ~rate, the later-finishing flow got ~half of it
    assert 0.8 * RATE <= shared["total"] <= 1.15 * RATE, shared
    assert 0.35 * RATE <= shared["slow"] <= 0.6 * RATE, shared


def test_down_after_crash_without_state_file(virtual):
    up(virtual, "2", "--shared")
    # a process left running on a board, and the state file lost, as after a crash
    stray = subprocess.Popen(["ip", "netns", "exec", "nptp-b0", "sleep", "300"])
    cluster.STATE.unlink()
    s = virtual("status")
    assert "leftovers" in s.stdout and "nptp-b0" in s.stdout, s.stdout
    assert virtual("down").returncode == 0
    assert stray.wait(timeout=10) != 0
    assert ns_left() == [] and cluster.links() == [] and cluster.cgroups() == []
    assert "cluster: down" in virtual("status").stdout


def test_cluster_run_places_ranks_on_boards(virtual, tmp_path):
    up(virtual, "2")
    report = tmp_path / "r.json"
    p = virtual("run", "-n", "2", "--", "run", "--model", "resnet18", "--size", "64", "--report", str(report),
                timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    hosts = [r["host"] for r in json.loads(report.read_text())["per_rank"]]
    assert hosts == ["board0", "board1"]


def test_cpu_quota(virtual, tmp_path):
    up_with_cgroups(virtual, "2", "--cpu", "0.5,1")
    assert "0.5 core" in virtual("status").stdout
    ranks = mpi_script(tmp_path, PROBE, 2)
    for k, (host, groups) in enumerate(ranks):
        assert host == f"board{k}"
        assert any(g.endswith(f"/nptp-cluster/b{k}") for g in groups), groups
    kind, base = cluster.cgroup_root()
    board = base / "nptp-cluster" / "b0"
    limit = (board / "cpu.max").read_text().split() if kind == "v2" else \
        [(board / f).read_text().strip() for f in ("cpu.cfs_quota_us", "cpu.cfs_period_us")]
    assert limit == ["5000", "10000"]  # half of a 10 ms period


# Fixed chunks of one-thread matrix products, timed for 2 s: their FLOP rate, and how steady a chunk's time is.
STEADY = r"""
import json, sys, time
import numpy as np
a = np.ones((192, 192), np.float32)
def chunk(k):
    t = time.perf_counter()
    for _ in range(k):
        a @ a
    return time.perf_counter() - t
chunk(20)
k = int(sys.argv[1])
if k == 0:  # size a chunk to ~8 ms here
    k = 1
    while chunk(k) < 0.008: k *= 2
times, t0 = [], time.perf_counter()
while time.perf_counter() - t0 < 2.0:
    times.append(chunk(k))
times.sort()
print("RESULT " + json.dumps({"k": k, "rate": 2 * 192 ** 3 * k * len(times) / sum(times),
                              "p10": times[len(times) // 10], "p90": times[len(times) * 9 // 10]}))
"""


def test_a_capped_board_runs_steadily_at_its_share(virtual, tmp_path):
    """A board at 0.25 core computes at a quarter of an uncapped core's FLOP rate (within 10%), in steady
    steps: a chunk of ~32 ms of work takes about as long wherever it falls (the 100 ms default period gave
    7.6 to 82 ms between the 10th and 90th percentile). The free core's best of two runs; the capped board's best
    of up to four, stopping at the first that passes: a shared host's load slowed capped runs to 0.208 and 0.217
    of the free core's best, and once spread one's steps to 23-46 ms. A broken cap fails every run."""
    up_with_cgroups(virtual, "1", "--cpu", "0.25")
    script = tmp_path / "steady.py"
    script.write_text(STEADY)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}

    def probe(*prefix: str, k: int = 0) -> dict:
        out = subprocess.run([*prefix, sys.executable, str(script), str(k)], capture_output=True, text=True,
                             timeout=60, env=env).stdout
        return json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[len("RESULT "):])

    free = max((probe() for _ in range(2)), key=lambda r: r["rate"])  # an uncapped core, at its best
    runs: list[dict] = []
    while len(runs) < 4:  # a broken cap fails every run; a busy host only some
        runs.append(probe(str(cluster.LAUNCHER), cluster.board_ip(0), k=free["k"]))
        capped = max(runs, key=lambda r: r["rate"])
        if capped["rate"] >= 0.9 * 0.25 * free["rate"] and min(r["p90"] / r["p10"] for r in runs) < 2.0:
            break
    assert 0.9 * 0.25 <= capped["rate"] / free["rate"] <= 1.1 * 0.25, (capped, free)
    assert min(r["p90"] / r["p10"] for r in runs) < 2.0, runs


def test_bad_arguments_and_unsupported(monkeypatch, capsys):
    assert cluster.main(["up", "0"]) == 2
    assert cluster.main(["up", "2", "--rate", "fast"]) == 2
    assert cluster.main(["up", "2", "--cpu", "1,2,3"]) == 2
    monkeypatch.setattr(cluster.os, "geteuid", lambda: 1000)
    assert cluster.main(["status"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "cluster: the virtual cluster needs root (network namespaces, bridges, tc)"


# Board k sends 4 MB to board k+1, one link at a time: every board's uplink and downlink, timed by the receiver.
RING = r"""
import json, time
import numpy as np
from mpi4py import MPI
c = MPI.COMM_WORLD; r, n = c.rank, c.size
buf = np.zeros(4 << 20, np.uint8)
rates = {}
for rep in range(2):
    for k in range(n):
        c.Barrier(); t = time.perf_counter()
        if r == k: c.Send(buf, (k + 1) % n)
        elif r == (k + 1) % n:
            c.Recv(buf, k)
            rates[k] = max(rates.get(k, 0), buf.nbytes * 8 / (time.perf_counter() - t))
got = c.gather(rates)
if r == 0:
    print("RESULT " + json.dumps([v for d in got for v in d.values()]))
"""


def test_eight_quarter_core_boards_each_link_at_the_rate(virtual, tmp_path):
    """8 boards at 0.25 core (2 cores' worth), switched 100 Mbit/s: every board's link, each way, carries the
    configured rate. (All eight at once reach ~80%: this machine's 2 cores forward every frame of the bridge.)"""
    up_with_cgroups(virtual, "8", "--cpu", "0.25")
    rates = mpi_script(tmp_path, RING, 8, timeout=60)
    assert len(rates) == 8 and all(0.8 * RATE <= x <= 1.05 * RATE for x in rates), rates


def test_a_board_beyond_its_memory_is_killed(virtual, tmp_path):
    """--mem caps a board like a 1 GB or 2 GB board: within it a rank runs, beyond it the kernel kills it."""
    up_with_cgroups(virtual, "1", "--mem", "128m")
    assert "128 MB" in virtual("status").stdout
    hog = "import sys, numpy as np; a = np.ones(int(sys.argv[1]) << 20, np.uint8); print(int(a.sum()) >> 20)"

    def use(mb: int) -> subprocess.CompletedProcess:
        return subprocess.run([str(cluster.LAUNCHER), cluster.board_ip(0), sys.executable, "-c", f"'{hog}'",
                               str(mb)], capture_output=True, text=True, timeout=60)

    small = use(32)
    assert small.returncode == 0 and small.stdout.strip() == "32", small.stderr
    assert use(512).returncode != 0


def test_the_study_on_a_tiny_model_and_two_boards(virtual, tmp_path):
    """bench study end to end: quarter-core boards, our and onnxruntime's one-board latency on board 0, a
    calibration, every case planned for it and predicted, study.csv/json/png, and the cluster down after."""
    out = tmp_path / "study"
    p = subprocess.run([sys.executable, "-m", "nptp_mpi", "bench", "study", "--models", "resnet18", "--sizes", "64",
                        "--boards", "1,2", "--strategies", "nptp", "--links", "shared:100mbit", "--cpu", "0.5",
                        "--warmup", "0", "--repeat", "1", "--calibrate", "-o", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    if p.returncode == 2 and "cgroup" in p.stderr:
        pytest.skip(p.stderr.strip())
    assert p.returncode == 0, p.stdout + p.stderr
    rows = json.loads((out / "study.json").read_text())["rows"]
    assert [(r["ranks"], r["strategy"], r["links"]) for r in rows] == [(1, "-", "shared-100mbit"),
                                                                       (2, "nptp", "shared-100mbit")]
    for r in rows:
        assert r["latency_s"] > 0 and r["ort_one_board_s"] > 0 and r["ours_one_board_s"] > 0, r
        assert r["vs_ort"] == pytest.approx(r["ort_one_board_s"] / r["latency_s"]) and r["predicted_s"] > 0, r
    assert rows[1]["halo_bytes"] > 0 and rows[1]["speedup"] > 0
    assert (out / "study.png").stat().st_size > 0 and (out / "shared-100mbit" / "scaling.csv").exists()
    assert (out / "shared-100mbit" / "calibration.json").exists()
    assert "== shared-100mbit" in p.stderr and "one board resnet18" in p.stderr
    assert ns_left() == []
