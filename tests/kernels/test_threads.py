"""The kernels on several threads: any split into blocks computes what one block does (the same bits, but for
the GEMMs' blocks, which OpenBLAS's edge kernels may round differently), the GEMMs run by our threads equal
numpy's, and a real pool of threads (with per-thread buffers) neither races nor varies from run to run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from nptp_mpi import kernels as K
from nptp_mpi.cli.early import pin_threads
from nptp_mpi.kernels import blas, threads
from nptp_mpi.model import zoo
from nptp_mpi.runtime.reference import run
from nptp_mpi.runtime.warm import every_op_graph


def randn(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def close(y: np.ndarray, want: np.ndarray) -> bool:
    """Equal to float32 rounding (a product's blocks may round apart; a missing block or a race is far off)."""
    return bool(np.allclose(y, want, rtol=1e-5, atol=1e-5 * np.abs(want).max()))


def views(m: int, k: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """a (m, k), b (k, n) and out (m, n) as views inside larger arrays: rows further apart than a row's length."""
    a, b = randn((m + 3, k + 5), seed)[2:m + 2, 3:k + 3], randn((k + 2, n + 7), seed + 1)[1:k + 1, 4:n + 4]
    return a, b, np.full((m + 1, n + 9), np.nan, np.float32)[1:, 5:n + 5]


@pytest.mark.skipif(not blas.FOUND, reason="numpy's BLAS is not OpenBLAS with 64-bit integers")
@pytest.mark.parametrize("m,k,n", [(64, 27, 3136), (960, 160, 49), (7, 5, 3), (40, 300, 1), (17, 1, 33), (1, 8, 50)])
@pytest.mark.parametrize("nt", [2, 3])
def test_gemms_split_over_threads_equal_numpy_on_views(m, k, n, nt, monkeypatch) -> None:
    """Row blocks (m ≥ n), column blocks, a matrix-vector product (n = 1), blocks shorter than ALIGN."""
    monkeypatch.setattr(blas, "SPLIT_FROM", 0)  # (the small ones too)
    a, b, out = views(m, k, n, m + n)
    with threads.blocks(nt):
        blas.matmul(a, b, out)
    assert close(out, np.matmul(a, b))


@pytest.mark.skipif(not blas.FOUND, reason="numpy's BLAS is not OpenBLAS with 64-bit integers")
def test_a_small_product_is_not_split(monkeypatch) -> None:
    """Under SPLIT_FROM multiply-adds the split's set-up costs more than it saves: numpy's own call."""
    def split(*_):
        raise AssertionError("split")
    monkeypatch.setattr(blas, "_matmul", split)
    a, b, out = views(32, 32, 32, 1)
    with threads.blocks(2):
        blas.matmul(a, b, out)  # 32³ = 2^15
        assert np.array_equal(out, a @ b)
        with pytest.raises(AssertionError, match="split"):
            blas.matmul(*views(128, 128, 128, 2))  # 2^21


@pytest.mark.skipif(not blas.FOUND, reason="numpy's BLAS is not OpenBLAS with 64-bit integers")
def test_winograds_36_products_split_over_threads_equal_numpy() -> None:
    u, v = randn((36, 24, 16), 1), randn((16, 36, 50), 2)
    w = np.full((24, 36, 50), np.nan, np.float32)
    with threads.blocks(4):
        blas.batched(u, v.transpose(1, 0, 2), w.transpose(1, 0, 2))  # (Winograd's layout: the batch in the middle)
    assert np.array_equal(w, np.matmul(u, v.transpose(1, 0, 2)).transpose(1, 0, 2))


@pytest.mark.skipif(not blas.FOUND, reason="numpy's BLAS is not OpenBLAS with 64-bit integers")
def test_a_stack_of_one_product_splits_that_product(monkeypatch) -> None:
    """A conv of one group is a batch of one: its product splits over the threads, as matmul's does."""
    calls = []
    split = blas._matmul
    monkeypatch.setattr(blas, "_matmul", lambda *a: calls.append(a[-2:]) or split(*a))
    u, v = randn((1, 64, 96), 11), randn((1, 96, 400), 12)
    w = np.empty((1, 64, 400), np.float32)
    with threads.blocks(2):
        blas.batched(u, v, w)
    assert calls == [(2, False)] and close(w, np.matmul(u, v))  # (2 blocks of columns: 400 > 64)


def test_products_blas_cannot_take_as_they_lie_go_through_numpy(monkeypatch) -> None:
    a, b = randn((6, 4), 3), randn((5, 4), 4).T  # b's columns adjacent, not its rows
    out = np.empty((6, 5), np.float32)
    with threads.blocks(2):
        blas.matmul(a, b, out)
        assert np.array_equal(out, a @ b)  # (numpy's own call: the same bits)
        monkeypatch.setattr(blas, "FOUND", False)  # numpy built on another BLAS
        a, b, out = views(20, 9, 30, 5)
        blas.matmul(a, b, out)
        assert np.array_equal(out, a @ b)
        blas.matmul(a[:, :0], b[:0], out)  # nothing to sum over
        assert not out.any()


def models() -> list:
    return [every_op_graph(), zoo.build("resnet18", (64, 64)), zoo.build("mobilenet_v2", (64, 64))]


@pytest.mark.parametrize("graph", models(), ids=lambda g: g.name)
def test_any_split_into_blocks_computes_what_one_block_does(graph) -> None:
    """Every kernel split into 2, 3 or 5 blocks (run in turn on this pool): edge blocks (fewer channels than
    blocks, uneven shares) lose nothing."""
    x = randn(graph.input_shape, 7)
    with threads.blocks(1):
        want = run(graph, x)
    for nt in (2, 3, 5):
        with threads.blocks(nt):
            assert close(run(graph, x), want), nt


def unsplit_kernels() -> list:
    """Calls of kernels that split no sum apart: each output channel or pixel, each product of a batch (a grouped
    conv's groups, Winograd's 36), computed whole by one thread."""
    x, big = randn((24, 30, 30), 1), randn((70, 40, 40), 2)
    w3, w5, b = randn((24, 1, 3, 3), 3), randn((48, 1, 5, 5), 4), randn(48, 5)
    wide = randn((64, 32, 3, 3), 6) * 0.1  # 32 → 64 channels at 30²: Winograd (its 36 products split whole)
    return [
        lambda: K.conv2d(x, (0, 0), (30, 30), w3, b[:24], (1, 1), (1,) * 4, (1, 1), 24, (0, 0, 30, 30), "relu"),
        lambda: K.conv2d(x, (0, 0), (30, 30), w3, b[:24], (2, 2), (1,) * 4, (1, 1), 24, (0, 0, 15, 15), "relu"),
        lambda: K.conv2d(x, (0, 0), (30, 30), w5, b, (2, 2), (2,) * 4, (1, 1), 24, (0, 0, 15, 15), "silu"),
        lambda: K.conv2d(randn((32, 30, 30), 7), (0, 0), (30, 30), wide, None, (1, 1), (1,) * 4, (1, 1), 1,
                         (0, 0, 30, 30)),
        lambda: K.conv2d(randn((32, 30, 30), 8), (0, 0), (30, 30), randn((64, 4, 3, 3), 9), randn(64, 10), (1, 1),
                         (1,) * 4, (1, 1), 8, (0, 0, 30, 30), "relu"),  # 8 groups: a batch of 8 products
        lambda: K.conv2d(randn((3, 30, 30), 11), (0, 0), (30, 30), randn((24, 3, 3, 3), 12), randn(24, 13), (2, 2),
                         (1,) * 4, (1, 1), 1, (0, 0, 15, 15), "relu"),  # an RGB stem: 3 blocks of 8 outputs
        # 1×1 by the vector GEMM where the host has it (kernels/blocked.py): lanes along pixels at 40² (16 inputs to
        # 12 blocks of 8 outputs, split by blocks; 24 outputs, 3 blocks, split by pixels, or by blocks on 3
        # threads), along output channels at 40² and 14² (256 inputs to one block of 32, split by pixels; two blocks
        # of 48) and at stride 2 (by rows)
        lambda: K.conv2d(big[:16], (0, 0), (40, 40), randn((96, 16, 1, 1), 14), randn(96, 15), (1, 1), (0,) * 4,
                         (1, 1), 1, (0, 0, 40, 40), "relu"),
        lambda: K.conv2d(big[:64], (0, 0), (40, 40), randn((24, 64, 1, 1), 14), randn(24, 15), (1, 1), (0,) * 4,
                         (1, 1), 1, (0, 0, 40, 40)),
        lambda: K.conv2d(big[:64, :14, :14], (0, 0), (14, 14), randn((96, 64, 1, 1), 14), randn(96, 15), (1, 1),
                         (0,) * 4, (1, 1), 1, (0, 0, 14, 14), "relu"),
        lambda: K.conv2d(randn((256, 40, 40), 23), (0, 0), (40, 40), randn((32, 256, 1, 1), 16), None, (1, 1),
                         (0,) * 4, (1, 1), 1, (0, 0, 40, 40)),
        lambda: K.conv2d(big[:64], (0, 0), (40, 40), randn((48, 64, 1, 1), 17), None, (2, 2), (0,) * 4, (1, 1), 1,
                         (0, 0, 20, 20), "relu"),
        # 3×3 and 7×7 by the vector GEMM where the host has it: 48 outputs at 7² (one run of 49 pixels that wraps
        # from row to row, three blocks of 16: split by pixels, a share starting mid-row), four blocks of 32 at
        # stride 2 (by blocks, then blocks × rows), a 7×7 RGB stem
        lambda: K.conv2d(big[:32, :7, :7], (0, 0), (7, 7), randn((48, 32, 3, 3), 18), randn(48, 19), (1, 1), (1,) * 4,
                         (1, 1), 1, (0, 0, 7, 7), "relu"),
        lambda: K.conv2d(big[:16], (0, 0), (40, 40), randn((128, 16, 3, 3), 20), None, (2, 2), (1,) * 4, (1, 1), 1,
                         (0, 0, 20, 20)),
        lambda: K.conv2d(big[:3], (0, 0), (40, 40), randn((64, 3, 7, 7), 21), randn(64, 22), (2, 2), (3,) * 4,
                         (1, 1), 1, (0, 0, 20, 20), "relu"),
        lambda: K.pool2d(big, (0, 0), (40, 40), "max", (3, 3), (2, 2), (1,) * 4, (1, 1), (0, 0, 20, 20)),
        lambda: K.pool2d(big, (0, 0), (40, 40), "avg", (3, 3), (1, 1), (1,) * 4, (1, 1), (0, 0, 40, 40)),
        lambda: K.add(big, big, act="relu"),
        lambda: K.activation(big, "silu"),
        lambda: K.affine(big, randn(70, 8), randn(70, 9)),
        lambda: K.channel_norm(big, randn(70, 8), randn(70, 9), 1e-6),
        lambda: K.channel_sums(big[:, 1:, 2:]),
        lambda: K.global_avgpool(big[:, 1:, 2:]),
        lambda: K.gemm(randn(300, 24), randn((700, 300), 25), randn(700, 26), "hardsigmoid", 0.2, 0.5),  # (rows)
        lambda: K.pad2d(big[:, 3:], (3, 0), (40, 40), (2, 1, 0, 3), 0.5, (5, 0, 42, 44)),  # (the padded copy)
    ]


@pytest.mark.parametrize("call", unsplit_kernels(), ids=range(len(unsplit_kernels())))
def test_a_split_that_sums_nothing_apart_computes_the_same_bits(call) -> None:
    with threads.blocks(1):
        want = call()
    for nt in (2, 3, 7):
        with threads.blocks(nt):
            assert np.array_equal(call(), want), nt


THREADED = """
import json, numpy as np
from nptp_mpi.kernels import threads
from nptp_mpi.model import zoo
from nptp_mpi.runtime.reference import run
from nptp_mpi.runtime.warm import every_op_graph
out = {}
for g in (every_op_graph(), zoo.build("resnet18", (96, 96)), zoo.build("mobilenet_v2", (96, 96))):
    x = np.random.default_rng(3).standard_normal(g.input_shape).astype(np.float32)
    ys = []
    for n in (1, 2, 1, 2):
        threads.use(n)
        ys.append(run(g, x))
    tol = 1e-5 * np.abs(ys[0]).max()
    out[g.name] = [bool(np.allclose(ys[1], ys[0], rtol=1e-5, atol=tol)), bool(np.array_equal(ys[0], ys[2])),
                   bool(np.array_equal(ys[1], ys[3]))]
print(json.dumps({"pool": threads.count(), "same": out}))
"""


def test_two_real_threads_compute_what_one_does() -> None:
    """On a real pool of two threads (each with its own buffers: shared ones would race): what one thread computes
    (to float32 rounding), and the same bits each time."""
    env = {**os.environ, "NUMBA_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", THREADED], capture_output=True, text=True, timeout=600, env=env,
                       cwd=ROOT)
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert result["pool"] == 2 and all(all(same) for same in result["same"].values()), result


def test_threads_asks_the_kernels_pool_for_t_threads_and_blas_for_one(monkeypatch) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    pin_threads(["run", "--threads", "3"])
    assert os.environ["NUMBA_NUM_THREADS"] == "3" and os.environ["OPENBLAS_NUM_THREADS"] == "1"
    monkeypatch.setenv("NUMBA_NUM_THREADS", "4")
    pin_threads(["run"])  # no --threads: the user's variables stand, unset ones get 1
    assert os.environ["NUMBA_NUM_THREADS"] == "4" and os.environ["OMP_NUM_THREADS"] == "1"


def test_ranks_times_threads_beyond_the_cores_make_the_threads_sleep_between_kernels(monkeypatch) -> None:
    """Spinning threads of several ranks sharing too few cores held the cores their peers waited for (MobileNetV2
    160², 2 ranks × 2 threads on 2 cores: 0.350 s, against 0.008 s with sleeping threads)."""
    from nptp_mpi.cli import early

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(early, "cores", lambda: 4)
    monkeypatch.setenv("MPI_LOCALNRANKS", "2")  # (MPICH's launcher; Open MPI's is OMPI_COMM_WORLD_LOCAL_SIZE)
    monkeypatch.setenv("MPI_LOCALRANKID", "1")
    pin_threads(["run", "--threads", "2"])  # 2 × 2 on 4 cores: the threads keep spinning
    assert "OMP_WAIT_POLICY" not in os.environ
    pin_threads(["run", "--threads", "3"])
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.delenv("NUMBA_NUM_THREADS")
    monkeypatch.setenv("MPI_LOCALNRANKS", "8")
    pin_threads(["run"])  # one thread each: nothing spins
    assert "OMP_WAIT_POLICY" not in os.environ


def test_the_kernels_run_on_one_thread_unless_the_environment_asks_for_more() -> None:
    """A program that sized no pool (the Python API) gets one thread, as before threads existed; with
    NUMBA_NUM_THREADS set, that many, and BLAS on one thread (its threads inside ours would oversubscribe)."""
    probe = ("import numba; from nptp_mpi.kernels import threads; from threadpoolctl import threadpool_info; "
             "assert threads.count() == numba.get_num_threads(), (threads.count(), numba.get_num_threads()); "
             "print(threads.count(), max(i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'))")
    base = {k: v for k, v in os.environ.items() if k not in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    got = []
    for env in (base, {**base, "NUMBA_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}):
        p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env,
                           cwd=ROOT)
        assert p.returncode == 0, p.stderr
        got.append(p.stdout.split())
    assert got[0][0] == "1" and got[1] == ["2", "1"], got
