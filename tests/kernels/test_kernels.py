"""Kernels against single-node onnxruntime models, and tiled region computation against whole-image."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from nptp_mpi import kernels as K
from nptp_mpi.kernels import rows, vectors


def randn(shape, seed: int = 0) -> np.ndarray:
    """Deterministic standard-normal float32 array."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def ort_run(inputs: list[np.ndarray], *stages: tuple[str, list[np.ndarray], dict]) -> np.ndarray:
    """Run a chain of ONNX nodes on ORT (1 thread, no graph optimisation), opset 17.

    Each stage is (op, constants, attributes); the first stage reads `inputs`, each later one the previous
    output, followed by its constants (fed as initializers).
    """
    names = [f"in{n}" for n in range(len(inputs))]
    nodes, inits, prev = [], [], names
    for n, (op, consts, attrs) in enumerate(stages):
        cnames = [f"c{n}_{m}" for m in range(len(consts))]
        inits += [numpy_helper.from_array(np.asarray(c), cn) for cn, c in zip(cnames, consts, strict=True)]
        nodes.append(helper.make_node(op, prev + cnames, [f"y{n}"], **attrs))
        prev = [f"y{n}"]
    graph = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info(n, TensorProto.FLOAT, a.shape)
                     for n, a in zip(names, inputs, strict=True)],
        [helper.make_tensor_value_info(prev[0], TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, dict(zip(names, inputs, strict=True)))[0]


def assert_close(got: np.ndarray, want: np.ndarray, scale: float | None = None) -> None:
    """Max abs error within 1e-4 of scale (default: the largest expected magnitude); dtype float32,
    C-contiguous."""
    assert got.dtype == np.float32 and got.flags.c_contiguous
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = max(float(np.abs(want).max()) if scale is None else scale, 1e-30)
    err = float(np.abs(got - want).max())
    assert err <= 1e-4 * scale, f"max abs error {err} vs max |expected| {scale}"


# (cin, cout, h, w, kernel, stride, pads (t, l, b, r), dilation, groups, bias)
CONVS = [
    (3, 8, 13, 17, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, True),
    (4, 6, 13, 17, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1, False),
    (5, 7, 16, 15, (5, 3), (3, 2), (2, 0, 1, 2), (1, 1), 1, True),
    (4, 8, 14, 13, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 2, True),
    (6, 6, 13, 17, (3, 3), (2, 1), (0, 1, 2, 0), (2, 1), 2, False),
    (8, 8, 13, 17, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 8, True),
    (8, 16, 12, 11, (5, 5), (2, 2), (2, 1, 2, 3), (1, 2), 8, True),
    (16, 12, 9, 10, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, True),
    (16, 12, 9, 10, (1, 1), (2, 2), (1, 0, 0, 1), (1, 1), 4, False),
    (3, 4, 20, 19, (7, 7), (2, 2), (3, 3, 3, 3), (1, 1), 1, True),
    # Winograd F(4×4, 3×3): sizes no multiple of 4, asymmetric pads, a map big enough for tiles of it
    (16, 20, 31, 29, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, True),
    (32, 24, 30, 21, (3, 3), (1, 1), (0, 2, 1, 0), (1, 1), 1, False),
    (16, 16, 80, 80, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, True),
    # 3×3 depthwise at stride 2: rows wide enough to split into even and odd columns (multiplier 2, odd
    # width), and too narrow for it (asymmetric pads)
    (8, 16, 23, 25, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 8, True),
    (6, 6, 11, 12, (3, 3), (2, 2), (0, 1, 1, 0), (1, 1), 6, False),
    # depthwise: 7×7 (ConvNeXt's) on the phase-plane path, 5×5 at strides (2, 1) (vector rows where the host has
    # them, else phase planes: test_conv2d runs both)
    (12, 12, 15, 14, (7, 7), (1, 1), (3, 3, 3, 3), (1, 1), 12, True),
    (6, 6, 17, 16, (5, 5), (2, 1), (2, 2, 1, 2), (1, 1), 6, False),
    # 1×1 by the vector GEMM where the host has it (kernels/blocked.py), else BLAS: the map's rows as one run of
    # pixels, then at stride 2 a run per row
    (32, 32, 9, 10, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, True),
    (40, 48, 9, 27, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1, False),
    # 3×3 at strides 1 and 2 (a map too small for Winograd) and a 7×7 RGB stem: the vector GEMM where the host has
    # it, else im2col
    (24, 32, 9, 12, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, True),
    (16, 48, 13, 27, (3, 3), (2, 2), (1, 0, 0, 1), (1, 1), 1, False),
    (3, 16, 19, 29, (7, 7), (2, 2), (3, 2, 3, 1), (1, 1), 1, True),
    # a 3×3 RGB stem at stride 2 (rows.py where the host has the vectors: 2 blocks of 8 outputs) over 2 bands of rows
    (3, 16, 40, 37, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1, True),
    # a 1×1 with its lanes along pixels where the host has the vectors (16 inputs, 24 outputs, 840 pixels), else BLAS
    (16, 24, 28, 30, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, True),
    # the vector GEMM's panels (blocked.TILE_PANEL) where the host has it, every output block over each in turn: a
    # 1×1 run of 667 pixels in 6 panels of 126 (3 blocks), a 3×3 at stride 2 with rows of 46 in panels of 14 (2)
    (512, 96, 23, 29, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, True),
    (256, 64, 9, 91, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1, False),
    # a 1×1 along pixels over panels (blocked.PANEL): 840 pixels in 6 panels of 160, 3 blocks of 8 outputs
    (96, 24, 28, 30, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, False),
]
WINOGRAD = (10, 11, 12)


def conv_case(case, seed=0):
    cin, cout, h, w, k, s, pads, d, g, bias = case
    x = randn((cin, h, w), seed)
    wt = randn((cout, cin // g, *k), seed + 1)
    b = randn(cout, seed + 2) if bias else None
    attrs = dict(kernel_shape=k, strides=s, pads=pads, dilations=d, group=g)
    return x, wt, b, attrs


F32 = np.float32
# (our act name, its keyword arguments, the ORT node that follows Conv)
ACTS = [("", {}, None), ("relu", {}, ("Relu", [], {})),
        ("clip", dict(lo=-0.5, hi=0.7), ("Clip", [F32(-0.5), F32(0.7)], {})),
        ("leakyrelu", dict(alpha=0.1), ("LeakyRelu", [], dict(alpha=0.1)))]


@pytest.mark.parametrize("vector", [True, False], ids=["rows", "loops"])
@pytest.mark.parametrize("case", CONVS)
@pytest.mark.parametrize("act", ACTS, ids=lambda a: a[0] or "none")
def test_conv2d(case, act, vector, monkeypatch):
    """Every conv path against onnxruntime: with the vector rows (kernels/rows.py) where the host has them and
    they fit, and with them off (conv.py's paths alone, as on a host without them)."""
    monkeypatch.setattr(vectors, "ENABLED", vectors.ENABLED and vector)
    name, kw, post = act
    x, wt, b, attrs = conv_case(case)
    stages = [("Conv", [wt] if b is None else [wt, b], attrs)] + ([post] if post else [])
    want = ort_run([x[None]], *stages)[0]
    got = K.conv2d(x, (0, 0), x.shape[1:], wt, b, case[5], case[6], case[7], case[8], (0, 0, *want.shape[1:]),
                   name, **kw)
    # A conv's rounding scales with its sums, not with what a squashing activation leaves of them.
    assert_close(got, want, scale=float(np.abs(ort_run([x[None]], stages[0])).max()))


def test_depthwise_stride_2_cases_take_both_paths():
    """CONVS 13 and 14 run the split and the direct stride-2 3×3 depthwise loops (else they test neither) in
    test_conv2d's runs with the vector rows off."""
    from nptp_mpi.kernels.conv import SPLIT_FROM

    widths = [out_len(CONVS[n][3], 3, 2, 1, CONVS[n][6][1], CONVS[n][6][3], False) for n in (13, 14)]
    assert widths[0] >= SPLIT_FROM > widths[1]


# Convs by vector rows (kernels/rows.py): (cin, cout, groups, h, w, k, stride, pads (t, l, b, r)). Depthwise: output
# rows in one chunk of 16 lanes and in two with a partial second (17, 31 and 32 outputs), stride 2 over 56 outputs
# (four chunks), strides (1, 2) and (2, 1), no padding, TF's asymmetric SAME padding, a multiplier of 2, a map
# smaller than the kernel (every row and column at an edge), and 3×3 and 5×5 at stride 2 onto 16 outputs whose taps
# end in the right padding (a row's columns loaded once for all its taps: the last load's lanes partly outside).
# RGB stems, 3×3 at column stride 2: 8 and 24 outputs (one block of 8 and three), odd sizes, asymmetric padding, row
# stride 1.
ROWS = [
    (8, 8, 8, 7, 7, 3, (1, 1), (1, 1, 1, 1)),
    (5, 10, 5, 13, 17, 3, (1, 1), (1, 1, 1, 1)),
    (4, 4, 4, 9, 31, 3, (1, 1), (1, 1, 1, 1)),
    (4, 4, 4, 6, 34, 3, (1, 1), (0, 0, 0, 0)),
    (3, 3, 3, 15, 112, 3, (2, 2), (1, 1, 1, 1)),
    (6, 6, 6, 14, 14, 3, (2, 2), (0, 0, 1, 1)),
    (6, 6, 6, 11, 12, 5, (1, 1), (2, 2, 2, 2)),
    (6, 12, 6, 14, 13, 5, (2, 2), (1, 2, 2, 1)),
    (4, 4, 4, 12, 13, 3, (1, 2), (1, 1, 1, 1)),
    (4, 4, 4, 12, 13, 5, (2, 1), (2, 2, 2, 2)),
    (3, 3, 3, 4, 3, 5, (1, 1), (2, 2, 2, 2)),
    (4, 4, 4, 6, 31, 3, (2, 2), (1, 1, 1, 1)),
    (4, 4, 4, 7, 31, 5, (2, 2), (2, 2, 2, 2)),
    (3, 8, 1, 23, 37, 3, (2, 2), (1, 1, 1, 1)),
    (3, 24, 1, 16, 15, 3, (2, 2), (0, 0, 1, 1)),
    (3, 16, 1, 9, 70, 3, (1, 2), (1, 0, 2, 1)),
    (2, 2, 2, 5, 40, 3, (1, 1), (1, 1, 1, 1)),  # depthwise rows wider than rows.WIDE · stride: the loops
    (2, 2, 2, 5, 140, 3, (2, 2), (1, 1, 1, 1)),
]


def rows_case(case):
    """(x, w, b, groups, stride, pads, output size) of a ROWS case."""
    cin, cout, g, h, w, k, s, pads = case
    out_hw = tuple(out_len((h, w)[a], k, s[a], 1, pads[a], pads[a + 2], False) for a in (0, 1))
    return randn((cin, h, w), 3), randn((cout, cin // g, k, k), 4), randn(cout, 5), g, s, pads, out_hw


@pytest.mark.parametrize("vector", [True, False], ids=["rows", "loops"])
@pytest.mark.parametrize("case", ROWS)
@pytest.mark.parametrize("act", ACTS, ids=lambda a: a[0] or "none")
def test_convs_by_rows_and_otherwise(case, vector, act, monkeypatch):
    """Both paths against onnxruntime: the vector rows where the host has them, and conv.py's loops or im2col (the
    only ones on hosts without vector masks); a conv takes the rows exactly where rows.kind says."""
    if vector and not vectors.ENABLED:
        pytest.skip("this host has no AVX2 and FMA: the vector rows never run here")
    monkeypatch.setattr(vectors, "ENABLED", vector)
    original, taken = rows.launcher, []
    monkeypatch.setattr(rows, "launcher", lambda *a: taken.append(a[7]) or original(*a))  # (a[7]: ob)
    x, w, b, g, s, pads, out_hw = rows_case(case)
    name, kw, post = act
    stages = [("Conv", [w, b], dict(kernel_shape=w.shape[2:], strides=s, pads=pads, group=g))]
    want = ort_run([x[None]], *stages, *([post] if post else []))[0]
    got = K.conv2d(x, (0, 0), x.shape[1:], w, b, s, pads, (1, 1), g, (0, 0, *out_hw), name, **kw)
    assert_close(got, want, scale=float(np.abs(ort_run([x[None]], *stages)).max()))
    assert taken == ([] if not vector or (g > 1 and out_hw[1] > rows.WIDE * s[1]) else [1 if g > 1 else 8])


@pytest.mark.parametrize("case", ROWS[:-2])
def test_rows_read_a_tile_buffer_as_the_whole_map(case):
    """Regions (corners, an interior block, 1-pixel strips) computed from a buffer that holds just the inputs they
    read (a copy, then a strided view into a larger array) equal the whole map's, bit for bit: the lanes outside
    the image are masked by image coordinates, and nothing outside the buffer is read."""
    if not vectors.ENABLED:
        pytest.skip("this host has no AVX2 and FMA: the vector rows never run here")
    x, w, b, g, s, pads, (oh, ow) = rows_case(case)
    k = w.shape[2]
    whole = K.conv2d(x, (0, 0), x.shape[1:], w, b, s, pads, (1, 1), g, (0, 0, oh, ow), "relu")
    regions = [(0, 0, min(2, oh), min(3, ow)), (oh // 3, ow // 3, oh - oh // 3, ow - ow // 3),
               (oh - 1, 0, oh, ow), (0, ow - 1, oh, ow), (max(0, oh - 2), max(0, ow - 5), oh, ow)]
    for y0, x0, y1, x1 in regions:
        spans = ((y0, y1, s[0], pads[0], x.shape[1]), (x0, x1, s[1], pads[1], x.shape[2]))
        (a, z), (c, d) = ((max(0, o0 * st - p), min(n, (o1 - 1) * st - p + k)) for o0, o1, st, p, n in spans)
        room = np.zeros((x.shape[0], z - a + 2, d - c + 3), np.float32)
        room[:, 1:-1, 2:-1] = x[:, a:z, c:d]
        for buffer in (np.ascontiguousarray(x[:, a:z, c:d]), room[:, 1:-1, 2:-1]):
            got = K.conv2d(buffer, (a, c), x.shape[1:], w, b, s, pads, (1, 1), g, (y0, x0, y1, x1), "relu")
            np.testing.assert_array_equal(got, whole[:, y0:y1, x0:x1])


@pytest.mark.parametrize("case", [case for case in ROWS[:-2] if case[2] > 1])
def test_narrow_depthwise_regions_run_in_vectors_of_8_to_the_same_bits(case, monkeypatch):
    """A depthwise region rows.NARROW columns wide or less (a 7² map, a tile's share of a 14² map, a border strip)
    runs in vectors of NARROW lanes, a wider one in 16; both give the same bits (each output the same sum, in the
    same order)."""
    if not vectors.ENABLED:
        pytest.skip("this host has no AVX2 and FMA: the vector rows never run here")
    x, w, b, g, s, pads, (oh, ow) = rows_case(case)
    narrow, lanes_narrow = [], rows.NARROW
    original = rows._block
    monkeypatch.setattr(rows, "_block", lambda *a: narrow.append(a[12]) or original(*a))  # (a[12]: narrow)
    inf = np.float32(np.inf)
    for region in {(0, 0, oh, ow), (0, ow - 1, oh, ow), (0, 0, oh, min(ow, rows.NARROW)),
                   (0, 0, oh, min(ow, rows.NARROW + 1))}:
        outs = []
        for lanes in (lanes_narrow, 0):
            monkeypatch.setattr(rows, "NARROW", lanes)
            out = np.empty((w.shape[0], region[2] - region[0], region[3] - region[1]), np.float32)
            rows.launcher(x, (0, 0), x.shape[1:], w.shape[2], s, pads, region, 1, rows.FMA, w, b, out, -inf, inf,
                          1)(x, out)
            outs.append(out)
        assert narrow[-2:] == [region[3] - region[1] <= lanes_narrow, False]
        np.testing.assert_array_equal(outs[0], outs[1])


def test_rows_take_what_they_fit(monkeypatch):
    """rows.kind: depthwise 3×3 and 5×5 at strides 1 and 2 (rows up to rows.WIDE · stride), 3×3 RGB stems at
    column stride 2 (outputs a multiple of 8), float32 rows contiguous; not 7×7, dilation, wider rows, other stems,
    strided columns, float64, or a host without the vectors."""
    x, rgb = np.zeros((4, 9, 9), np.float32), np.zeros((3, 9, 9), np.float32)
    monkeypatch.setattr(vectors, "ENABLED", True)
    for k, s in ((3, (1, 1)), (3, (2, 2)), (5, (1, 2)), (5, (2, 1))):
        assert rows.kind((4, 1, k, k), 4, s, (1, 1), x, rows.WIDE) == 1
        assert rows.kind((4, 1, k, k), 4, list(s), [1, 1], x[:, 2:, 1:], rows.WIDE) == 1  # (a view; rows contiguous)
    assert rows.kind((8, 1, 3, 3), 4, (2, 2), (1, 1), x, 2 * rows.WIDE) == 1  # (a multiplier of 2)
    assert rows.kind((16, 3, 3, 3), 1, (2, 2), (1, 1), rgb, 100) == 8
    assert rows.kind((8, 3, 3, 3), 1, (1, 2), (1, 1), rgb, 9) == 8
    for w_shape, g, s, d, xx, ow in [((4, 1, 3, 3), 4, (1, 1), (1, 1), x, rows.WIDE + 1),
                                     ((4, 1, 3, 3), 4, (2, 2), (1, 1), x, 2 * rows.WIDE + 1),
                                     ((4, 1, 7, 7), 4, (1, 1), (1, 1), x, 7),
                                     ((4, 1, 3, 3), 4, (1, 1), (2, 2), x, 7),
                                     ((4, 1, 3, 3), 4, (3, 3), (1, 1), x, 7),
                                     ((4, 1, 3, 3), 4, (1, 1), (1, 1), x[:, :, ::2], 3),
                                     ((4, 1, 3, 3), 4, (1, 1), (1, 1), x.astype(np.float64), 7),
                                     ((12, 3, 3, 3), 1, (2, 2), (1, 1), rgb, 5),
                                     ((16, 3, 3, 3), 1, (1, 1), (1, 1), rgb, 9),
                                     ((16, 3, 3, 3), 1, (2, 1), (1, 1), rgb, 9),
                                     ((16, 3, 7, 7), 1, (2, 2), (1, 1), rgb, 5),
                                     ((8, 2, 3, 3), 2, (2, 2), (1, 1), x, 5)]:
        assert rows.kind(w_shape, g, s, d, xx, ow) == 0, (w_shape, g, s, d, ow)
    monkeypatch.setattr(vectors, "ENABLED", False)
    assert rows.kind((4, 1, 3, 3), 4, (1, 1), (1, 1), x, 7) == 0


# Dense convs by the vector GEMM (kernels/blocked.py): (cin, cout, h, w, kernel, stride, pads, whether it takes
# them). Output channels 1 and 2 vectors a tile (16, 48; 32, 64) and three blocks of 2 (96); runs of whole tiles of
# 14 pixels, runs whose last tile shifts back (49, 55 and 26 pixels), runs shorter than a tile (12 pixels, flat and
# at stride (2, 1); 13 at stride 2), each partly in its second half of 8 pixels; 1×1s at strides (2, 2), (1, 2),
# (2, 1) and (1, 3), their pixels gathered into one run (196, 126, 60, 70 pixels; rows of 7 into 49); few input
# channels on a map big enough; 3×3 convs with and without padding at strides 1 and 2, one at 14² that Winograd
# takes beside BLAS (conv.WINOGRAD_BESIDE_GEMM), a 7×7 RGB stem, a 1×7 conv; 1×1s at stride 1 on maps of 28² or more
# with their lanes along pixels (16 inputs to 96 outputs, 24 and 8 outputs: 12, 3 and 1 blocks of 8; runs of 784, 840
# and 924 pixels, the last strip of 32 pixels 16, 8 and 28 long).
# BLAS keeps 24 outputs on a small map (vectors a quarter empty), 20 outputs, 16 inputs on a small map, a padded
# 1×1, 5×5 and 3×1 kernels and rows whose tiles waste more than a quarter (rows of 8, 7 and 3 outputs).
BLOCKED = [
    (32, 16, 7, 7, 1, (1, 1), (0, 0, 0, 0), True),
    (40, 32, 5, 11, 1, (1, 1), (0, 0, 0, 0), True),
    (33, 48, 3, 4, 1, (1, 1), (0, 0, 0, 0), True),
    (64, 96, 28, 27, 1, (2, 2), (0, 0, 0, 0), True),
    (32, 64, 9, 28, 1, (1, 2), (0, 0, 0, 0), True),
    (48, 32, 10, 12, 1, (2, 1), (0, 0, 0, 0), True),
    (32, 16, 5, 40, 1, (1, 3), (0, 0, 0, 0), True),
    (64, 32, 14, 14, 1, (2, 2), (0, 0, 0, 0), True),
    (24, 32, 9, 12, 3, (1, 1), (1, 1, 1, 1), True),
    (16, 32, 9, 12, 3, (2, 1), (1, 1, 1, 1), True),
    (16, 48, 13, 27, 3, (2, 2), (1, 0, 0, 1), True),
    (64, 64, 14, 14, 3, (1, 1), (1, 1, 1, 1), True),
    (20, 16, 9, 16, 3, (1, 1), (0, 0, 0, 0), True),
    (3, 32, 19, 29, 7, (2, 2), (3, 2, 3, 1), True),
    (24, 32, 9, 26, (1, 7), (1, 1), (0, 3, 0, 3), True),
    (16, 96, 28, 28, 1, (1, 1), (0, 0, 0, 0), True),
    (24, 24, 28, 30, 1, (1, 1), (0, 0, 0, 0), True),
    (40, 8, 28, 33, 1, (1, 1), (0, 0, 0, 0), True),
    (32, 20, 28, 28, 1, (1, 1), (0, 0, 0, 0), False),
    (32, 24, 7, 7, 1, (1, 1), (0, 0, 0, 0), False),
    (16, 32, 7, 7, 1, (1, 1), (0, 0, 0, 0), False),
    (32, 32, 7, 7, 1, (1, 1), (1, 0, 0, 0), False),
    (16, 32, 9, 9, 5, (1, 1), (2, 2, 2, 2), False),
    (32, 32, 8, 8, 3, (1, 1), (1, 1, 1, 1), True),
    (32, 32, 7, 7, 3, (1, 1), (1, 1, 1, 1), True),
    (32, 64, 14, 13, 3, (2, 2), (1, 1, 1, 1), True),
    (48, 32, 16, 16, 3, (1, 1), (1, 1, 1, 1), True),
    (16, 32, 12, 9, 3, (1, 1), (0, 0, 0, 0), True),
    (32, 48, 10, 3, 1, (2, 1), (0, 0, 0, 0), False),
    (32, 32, 9, 9, (3, 1), (1, 1), (1, 0, 1, 0), False),
    (512, 64, 7, 7, 3, (1, 1), (1, 1, 1, 1), True),  # (weights streamed: blocked._streamed)
    (512, 64, 14, 14, 3, (1, 1), (1, 1, 1, 1), True),  # (so, its input channels in chunks: blocked._chunks)
    (512, 64, 9, 12, 3, (1, 1), (1, 1, 1, 1), True),  # (so, its rows of 12 one run that wraps, its last tile short)
]


def blocked_case(case):
    """(x, w, b, stride, pads, output size) of a BLOCKED case (its kernel k×k, or (kh, kw))."""
    cin, cout, h, w, k, s, pads = case[:7]
    kh, kw = (k, k) if isinstance(k, int) else k
    out_hw = ((h + pads[0] + pads[2] - kh) // s[0] + 1, (w + pads[1] + pads[3] - kw) // s[1] + 1)
    return randn((cin, h, w), 3), randn((cout, cin, kh, kw), 4), randn(cout, 5), s, pads, out_hw


@pytest.mark.parametrize("vector", [True, False], ids=["gemm", "blas"])
@pytest.mark.parametrize("case", BLOCKED)
@pytest.mark.parametrize("act", ACTS, ids=lambda a: a[0] or "none")
def test_dense_convs_by_the_vector_gemm_and_by_blas(case, vector, act, monkeypatch):
    """Both paths against onnxruntime: the vector GEMM where the host has it, BLAS elsewhere; a conv takes the
    vector GEMM exactly where the case says."""
    from nptp_mpi.kernels import blocked

    if vector and not vectors.ENABLED:
        pytest.skip("this host has no AVX2 and FMA: the vector GEMM never runs here")
    monkeypatch.setattr(vectors, "ENABLED", vector)
    original, taken = blocked.launcher, []
    monkeypatch.setattr(blocked, "launcher", lambda *a: taken.append(1) or original(*a))
    x, w, b, s, pads, out_hw = blocked_case(case)
    name, kw, post = act
    stages = [("Conv", [w, b], dict(kernel_shape=w.shape[2:], strides=s, pads=pads))]
    want = ort_run([x[None]], *stages, *([post] if post else []))[0]
    got = K.conv2d(x, (0, 0), x.shape[1:], w, b, s, pads, (1, 1), 1, (0, 0, *out_hw), name, **kw)
    assert_close(got, want, scale=float(np.abs(ort_run([x[None]], *stages)).max()))
    assert taken == ([1] if vector and case[7] else [])


@pytest.mark.parametrize("case", [c for c in BLOCKED if c[7]])
def test_the_vector_gemm_reads_a_tile_buffer_as_the_whole_map(case):
    """Regions computed from a buffer that holds just the inputs they read (a copy, then a strided view into a
    larger array: runs per row), into a new array and into a view with room for a halo (rows wider than the
    region's: a run that wraps from row to row skips the room), equal the whole map's, bit for bit."""
    from nptp_mpi.kernels import blocked

    if not vectors.ENABLED:
        pytest.skip("this host has no AVX2 and FMA: the vector GEMM never runs here")
    x, w, b, s, pads, (oh, ow) = blocked_case(case)
    kh, kw = w.shape[2:]

    lanes = blocked.lanes(w.shape, 1, s, pads, (1, 1), x, (oh, ow))  # (the whole map's, for every region)

    def conv(buffer, origin, region, halo=0):
        room = np.full((w.shape[0], region[2] - region[0] + 2 * halo, region[3] - region[1] + 3 * halo), -7.0,
                       np.float32)
        out = room[:, halo:room.shape[1] - halo, 2 * halo:room.shape[2] - halo]
        blocked.launcher(buffer, origin, x.shape[1:], w, b, s, pads, region, out, np.float32(0.0),
                         np.float32(np.inf), lanes, 1)(buffer, out)
        if halo:  # (the room around the region untouched)
            assert (room[:, :halo] == -7).all() and (room[:, :, :2 * halo] == -7).all()
            assert (room[:, -halo:] == -7).all() and (room[:, :, -halo:] == -7).all()
        return out

    whole = conv(x, (0, 0), (0, 0, oh, ow))
    for y0, x0, y1, x1 in [(0, 0, min(2, oh), min(3, ow)), (oh // 3, ow // 3, oh - oh // 3, ow - ow // 3),
                           (oh - 1, 0, oh, ow), (0, ow - 1, oh, ow), (0, 0, oh, ow)]:
        (a, z), (c, d) = need(y0, y1, kh, s[0], 1, pads[0], x.shape[1]), need(x0, x1, kw, s[1], 1, pads[1], x.shape[2])
        room = np.zeros((x.shape[0], z - a + 2, d - c + 3), np.float32)
        room[:, 1:-1, 2:-1] = x[:, a:z, c:d]
        for buffer in (np.ascontiguousarray(x[:, a:z, c:d]), room[:, 1:-1, 2:-1]):
            for halo in (0, 1):
                got = conv(buffer, (a, c), (y0, x0, y1, x1), halo)
                np.testing.assert_array_equal(got, whole[:, y0:y1, x0:x1])


# 1×1 convs on channel-blocked maps (kernels/blocked.py; runtime.layouts keeps the maps between 1×1s so): one run
# over rows back to back (14², and 56² whose NCHW 1×1 runs along pixels), rows of 7 and 9 that wrap from row to row,
# 48 outputs (three blocks of 16), a 1×1 at stride 2 over its gathered pixels, 16 inputs to 96 outputs at 28² (along
# pixels on NCHW), 256 inputs on rows of 12
LAYOUTS = [(32, 64, 14, 14, (1, 1)), (64, 32, 56, 56, (1, 1)), (64, 48, 7, 7, (1, 1)), (32, 32, 9, 9, (1, 1)),
           (64, 64, 28, 27, (2, 2)), (16, 96, 28, 28, (1, 1)), (256, 64, 10, 12, (1, 1)),
           (2048, 160, 7, 7, (1, 1))]  # (the last: weights streamed on one thread, blocked._streamed)


@pytest.mark.parametrize("case", LAYOUTS)
@pytest.mark.parametrize("act", ["relu", "silu"])
def test_1x1_convs_read_and_write_channel_blocked_maps_to_the_same_bits(case, act):
    """A 1×1 conv with its input, its output or both channel-blocked, with a blocked residual added in its
    registers or none, on one thread and on three: what it computes on NCHW, over the whole map bit for bit, over
    an inner region to float rounding (NCHW may run it by BLAS), written into a view with room for a halo (the room
    untouched), the residual read from a view laid out otherwise."""
    from nptp_mpi.kernels import blocked, threads

    if not vectors.ENABLED:
        pytest.skip("this host has no AVX2 and FMA: the vector GEMM never runs here")
    cin, cout, h, w, s = case
    x, wt, b, no = randn((cin, h, w), 1), randn((cout, cin, 1, 1), 2), randn(cout, 3), (0,) * 4
    oh, ow = (h - 1) // s[0] + 1, (w - 1) // s[1] + 1
    res = randn((cout, oh, ow), 4)
    kept = np.zeros((cout // 16 + 1, oh + 3, ow + 1, 16), np.float32)  # (the residual in a larger buffer)
    kept[:cout // 16, 1:oh + 1, :ow] = blocked.to_blocked(res)
    for y0, x0, y1, x1 in [(0, 0, oh, ow), (1, 2, oh, ow - 1)]:
        region, r = (y0, x0, y1, x1), res[:, y0:y1, x0:x1]

        def same(got, want, whole=region == (0, 0, oh, ow)):
            if whole:
                np.testing.assert_array_equal(got, want)
            else:
                np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))

        for residual, rb in ((None, None), (r, kept[:cout // 16, 1 + y0:1 + y1, x0:x1])):
            want = K.conv2d(x, (0, 0), (h, w), wt, b, s, no, (1, 1), 1, region, act, residual=residual)
            for nt in (1, 3):
                with threads.blocks(nt):
                    if residual is None:
                        same(K.conv2d(blocked.to_blocked(x), (0, 0), (h, w), wt, b, s, no, (1, 1), 1, region, act),
                             want)
                    for xx in (x, blocked.to_blocked(x)):
                        room = np.full((cout // 16, y1 - y0 + 2, x1 - x0 + 3, 16), -7.0, np.float32)
                        out = room[:, 1:-1, 2:-1]
                        K.conv2d(xx, (0, 0), (h, w), wt, b, s, no, (1, 1), 1, region, act, residual=rb, into=out)
                        same(blocked.from_blocked(out), want)
                        assert (room[:, [0, -1]] == -7).all() and (room[:, :, [0, 1, -1]] == -7).all()


# 1×1s reading a channel-blocked map onto outputs no multiple of 16 (blocked._padded_out), written NCHW: 24 at 56² as
# one run (MobileNetV2's projections), 40 on rows of 7 that wrap, 24 at stride 2 over its gathered pixels
PADDED = [(96, 24, 56, 56, (1, 1)), (64, 40, 7, 7, (1, 1)), (32, 24, 28, 27, (2, 2))]


@pytest.mark.parametrize("case", PADDED)
def test_1x1_convs_read_channel_blocked_maps_onto_outputs_no_multiple_of_16(case):
    """The vector GEMM runs it (8 outputs, a vector half empty, it leaves), its last vector partly empty: over the
    whole map the bits of the same conv with its weights padded by zero rows to whole vectors; what it computes from
    NCHW to float rounding, over the whole map and an inner region, with an NCHW residual or none, into a view with
    room for a halo (the room untouched), on one thread and on three."""
    from nptp_mpi.kernels import blocked, threads

    if not vectors.ENABLED:
        pytest.skip("this host has no AVX2 and FMA: the vector GEMM never runs here")
    cin, cout, h, w, s = case
    x, wt, b, no = randn((cin, h, w), 1), randn((cout, cin, 1, 1), 2), randn(cout, 3), (0,) * 4
    whole = -(-cout // 16) * 16
    wp, bp = np.zeros((whole, cin, 1, 1), np.float32), np.zeros(whole, np.float32)
    wp[:cout], bp[:cout] = wt, b
    oh, ow, xb = (h - 1) // s[0] + 1, (w - 1) // s[1] + 1, blocked.to_blocked(x)
    assert blocked.runs_blocked(wt.shape, 1, s, no, (1, 1), (oh, ow))
    assert blocked.lanes(wt.shape, 1, s, no, (1, 1), xb, (oh, ow)) > 0
    assert blocked.lanes(wt.shape, 1, s, no, (1, 1), xb, (oh, ow), bout=True) == -1  # (a blocked map: whole blocks)
    assert not blocked.runs_blocked(wt.shape, 1, s, no, (1, 1), (oh, ow), reads=False)
    assert not blocked.runs_blocked((8, cin, 1, 1), 1, s, no, (1, 1), (oh, ow))
    res = randn((cout, oh, ow), 4)
    for region in [(0, 0, oh, ow), (1, 2, oh, ow - 1)]:
        y0, x0, y1, x1 = region
        for residual in (None, res[:, y0:y1, x0:x1]):
            want = K.conv2d(x, (0, 0), (h, w), wt, b, s, no, (1, 1), 1, region, "relu", residual=residual)
            for nt in (1, 3):
                with threads.blocks(nt):
                    padded = K.conv2d(xb, (0, 0), (h, w), wp, bp, s, no, (1, 1), 1, region, "relu")[:cout]
                    room = np.full((cout, y1 - y0 + 2, x1 - x0 + 3), -7.0, np.float32)
                    out = room[:, 1:-1, 2:-1]
                    K.conv2d(xb, (0, 0), (h, w), wt, b, s, no, (1, 1), 1, region, "relu", residual=residual, into=out)
                    if residual is None and region == (0, 0, oh, ow):  # (a region of rows of 4 goes through NCHW)
                        np.testing.assert_array_equal(out, padded)
                    np.testing.assert_allclose(out, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))
                    assert (room[:, [0, -1]] == -7).all() and (room[:, :, [0, 1, -1]] == -7).all()


def test_convs_the_vector_gemm_leaves_read_and_write_channel_blocked_maps_through_nchw():
    """A conv on channel-blocked maps that the vector GEMM does not run so (a 3×3, a padded 1×1, a 1-column strip,
    16 channels on a 7² map) converts its window and its residual to NCHW and its result back: what it computes on
    NCHW."""
    from nptp_mpi.kernels import blocked

    for cin, cout, hw, k, pad, region in [(32, 32, 6, 3, 1, None), (32, 32, 9, 1, 1, None), (16, 16, 7, 1, 0, None),
                                          (32, 16, 14, 3, 1, (3, 0, 9, 1)), (32, 32, 20, 1, 0, (0, 5, 20, 6))]:
        x, wt, b = randn((cin, hw, hw), 5), randn((cout, cin, k, k), 6), randn(cout, 7)
        on = hw + 2 * pad - k + 1
        region = region or (0, 0, on, on)
        res = randn((cout, region[2] - region[0], region[3] - region[1]), 8)
        args = ((1, 1), (pad,) * 4, (1, 1), 1, region, "relu")
        assert blocked.lanes(wt.shape, 1, *args[:3], blocked.to_blocked(x), res.shape[1:], bout=True) == -1
        want = K.conv2d(x, (0, 0), (hw, hw), wt, b, *args, residual=res)
        assert_close(K.conv2d(blocked.to_blocked(x), (0, 0), (hw, hw), wt, b, *args, residual=res), want)
        for xx in (x, blocked.to_blocked(x)):
            out = np.empty((cout // 16, *res.shape[1:], 16), np.float32)
            K.conv2d(xx, (0, 0), (hw, hw), wt, b, *args, residual=blocked.to_blocked(res), into=out)
            assert_close(blocked.from_blocked(out), want)


# Depthwise convs on channel-blocked maps (kernels/depthwise.py): channels, map, k, stride, region (None: whole), and
# the tile that holds the input: (rows, columns) from the map's origin on, None for the whole map. MobileNetV2's
# 96 at 112² at stride 2 and 144 at 56² (rows wider than rows.py takes: conv.py's loops on NCHW); a tile's interior,
# its border strips, a corner touching two image borders, a 1-column strip, regions of fewer than a strip (8) and of
# one more; 5×5 at both strides (MnasNet's, EfficientNet's); a map narrower than the kernel's reach.
DEPTHWISE = [(96, 112, 3, 2, None, None), (144, 56, 3, 1, None, None),
             (32, 28, 3, 1, (5, 6, 19, 21), ((4, 25), (5, 22))), (32, 28, 3, 1, (0, 0, 3, 28), ((0, 4), (0, 28))),
             (48, 14, 3, 2, (4, 0, 7, 1), ((7, 14), (0, 2))), (16, 9, 3, 1, (0, 0, 9, 9), None),
             (16, 10, 3, 2, (1, 1, 5, 5), ((1, 10), (1, 10))), (32, 14, 5, 1, (2, 3, 11, 12), ((0, 14), (1, 14))),
             (64, 15, 5, 2, None, None), (16, 3, 5, 1, None, None), (960, 7, 3, 1, None, None)]


@pytest.mark.parametrize("case", DEPTHWISE)
@pytest.mark.parametrize("act", ["", "relu", "clip"])
def test_depthwise_convs_on_channel_blocked_maps_give_the_nchw_result(case, act):
    """A depthwise conv whose input and output are channel-blocked, from a tile buffer holding part of the map (its
    origin not the map's; NaN beyond it), into a view with room for a halo (the room untouched), on one thread and on
    three: what conv2d computes on NCHW, to the bit where rows.py runs it (the same sums in the same order), else to
    float rounding; equal to onnxruntime."""
    from nptp_mpi.kernels import blocked, depthwise, threads

    if not vectors.ENABLED:
        pytest.skip("this host has no AVX2 and FMA: depthwise.py never runs here")
    c, hw, k, s, region, tile = case
    p, on = k // 2, (hw + 2 * (k // 2) - k) // s + 1
    region, tile = region or (0, 0, on, on), tile or ((0, hw), (0, hw))
    x, wt, b = randn((c, hw, hw), 11), randn((c, 1, k, k), 12), randn(c, 13)
    args = ((s, s), (p,) * 4, (1, 1), c, region, act, 0.0, -0.5, 0.7)
    assert depthwise.takes(wt.shape, c, (s, s), (1, 1))
    want = K.conv2d(x, (0, 0), (hw, hw), wt, b, *args)
    full = region == (0, 0, on, on)
    if full:
        ort_act = {"": [], "relu": [("Relu", [], {})], "clip": [("Clip", [np.float32(-0.5), np.float32(0.7)], {})]}
        assert_close(want, ort_run([x[None]], ("Conv", [wt, b], dict(group=c, pads=[p] * 4, strides=[s] * 2)),
                                   *ort_act[act])[0])
    (y0, y1), (x0, x1) = tile
    xt = blocked.to_blocked(x[:, y0:y1, x0:x1])
    # (the tile in a larger buffer, NaN around it: a tap outside the image that read memory would show)
    held = np.full((xt.shape[0], xt.shape[1] + 2, xt.shape[2] + 3, 16), np.nan, np.float32)
    held[:, 1:-1, 2:-1] = xt
    exact = rows.kind(wt.shape, c, (s, s), (1, 1), x, region[3] - region[1]) > 0
    for nt in (1, 3):
        with threads.blocks(nt):
            room = np.full((c // 16, region[2] - region[0] + 2, region[3] - region[1] + 3, 16), -7.0, np.float32)
            out = room[:, 1:-1, 2:-1]
            K.conv2d(held[:, 1:-1, 2:-1], (y0, x0), (hw, hw), wt, b, *args, into=out)
            got = blocked.from_blocked(out)
            if exact:
                np.testing.assert_array_equal(got, want)
            else:
                assert_close(got, want)
            assert (room[:, [0, -1]] == -7).all() and (room[:, :, [0, 1, -1]] == -7).all()


# RGB stems writing channel-blocked maps (blocked.STEM_INPUTS): input channels, outputs, map, stride, region (None:
# whole) and the tile holding the input as in DEPTHWISE. MobileNetV2's 3→32 at stride 2 (tiles of 14), rows of 18
# that wrap from row to row, 4 inputs to 48 outputs (three blocks of one vector) on a tile's interior, a 1-column
# border strip (which the vector GEMM leaves: through NCHW).
STEMS = [(3, 32, 56, 2, None, None), (3, 16, 18, 1, None, None), (4, 48, 28, 1, (3, 2, 17, 26), ((2, 18), (1, 27))),
         (3, 32, 28, 2, (0, 0, 14, 1), ((0, 28), (0, 3)))]


@pytest.mark.parametrize("case", STEMS)
def test_rgb_stems_write_channel_blocked_maps_with_the_nchw_result(case):
    """A 3×3 conv of an image's few channels writing a channel-blocked map, from a tile buffer holding part of the
    image (NaN beyond it), into a view with room for a halo (the room untouched), on one thread and on three: what
    conv2d computes on NCHW, to float rounding (rows.py sums in another order); by the vector GEMM where it takes the
    region, and through NCHW where a blocked residual is added (the vector GEMM adds one to a 1×1's sums alone)."""
    from nptp_mpi.kernels import blocked, threads

    if not vectors.ENABLED:
        pytest.skip("this host has no AVX2 and FMA: the vector GEMM never runs here")
    cin, cout, hw, s, region, tile = case
    on = (hw - 1) // s + 1
    region, tile = region or (0, 0, on, on), tile or ((0, hw), (0, hw))
    x, wt, b = randn((cin, hw, hw), 21), randn((cout, cin, 3, 3), 22), randn(cout, 23)
    args = ((s, s), (1,) * 4, (1, 1), 1, region, "clip", 0.0, -0.5, 0.7)
    assert blocked.runs_blocked(wt.shape, 1, (s, s), (1,) * 4, (1, 1), (on, on), reads=False)
    want = K.conv2d(x, (0, 0), (hw, hw), wt, b, *args)
    (y0, y1), (x0, x1) = tile
    held = np.full((cin, y1 - y0 + 2, x1 - x0 + 3), np.nan, np.float32)
    held[:, 1:-1, 2:-1] = x[:, y0:y1, x0:x1]
    shape = (region[2] - region[0], region[3] - region[1])
    fast = blocked.lanes(wt.shape, 1, (s, s), (1,) * 4, (1, 1), held[:, 1:-1, 2:-1], shape, bout=True) > 0
    assert fast == (shape[1] > 1)
    res = randn((cout, *shape), 24)
    for nt in (1, 3):
        with threads.blocks(nt):
            for residual, expected in ((None, want), (res, K.conv2d(x, (0, 0), (hw, hw), wt, b, *args, residual=res))):
                room = np.full((cout // 16, shape[0] + 2, shape[1] + 3, 16), -7.0, np.float32)
                out = room[:, 1:-1, 2:-1]
                K.conv2d(held[:, 1:-1, 2:-1], (y0, x0), (hw, hw), wt, b, *args, into=out,
                         residual=None if residual is None else blocked.to_blocked(residual))
                assert_close(blocked.from_blocked(out), expected)
                assert (room[:, [0, -1]] == -7).all() and (room[:, :, [0, 1, -1]] == -7).all()
    with pytest.raises(ValueError, match="1×1"):  # (a residual: through NCHW, above)
        blocked.launcher(x, (0, 0), (hw, hw), wt, b, (s, s), (1,) * 4, region, out, np.float32(0), np.float32(1), 1,
                         1, fused=True)


def test_depthwise_on_channel_blocked_maps_takes_what_it_can_and_checks_its_tile(monkeypatch):
    """depthwise.takes: a depthwise 3×3 or 5×5 at equal strides of 1 or 2, channels a multiple of 16, on a vector
    host; a depthwise conv it leaves (7×7, unequal strides, 8 channels, dilated), or one with an activation its
    kernel does not apply, or a residual, runs on blocked maps through NCHW. Its launcher refuses a tile that lacks
    a row the region reads."""
    from nptp_mpi.kernels import blocked, depthwise

    monkeypatch.setattr(vectors, "ENABLED", True)
    assert depthwise.takes((32, 1, 3, 3), 32, (2, 2), (1, 1)) and depthwise.takes((16, 1, 5, 5), 16, (1, 1), (1, 1))
    for w_shape, g, s, d in [((32, 1, 7, 7), 32, (1, 1), (1, 1)), ((32, 1, 3, 3), 32, (1, 2), (1, 1)),
                             ((8, 1, 3, 3), 8, (1, 1), (1, 1)), ((32, 1, 3, 3), 32, (1, 1), (2, 2)),
                             ((32, 2, 3, 3), 16, (1, 1), (1, 1)), ((32, 1, 3, 3), 32, (3, 3), (1, 1))]:
        assert not depthwise.takes(w_shape, g, s, d), w_shape
    monkeypatch.setattr(vectors, "ENABLED", False)
    assert not depthwise.takes((32, 1, 3, 3), 32, (1, 1), (1, 1))
    monkeypatch.undo()
    if not vectors.ENABLED:
        return
    x, wt, b = randn((32, 12, 12), 14), randn((32, 1, 3, 3), 15), randn(32, 16)
    args = ((1, 1), (1,) * 4, (1, 1), 32, (0, 0, 12, 12))
    for act, res in (("silu", None), ("relu", randn((32, 12, 12), 17))):
        want = K.conv2d(x, (0, 0), (12, 12), wt, b, *args, act, residual=res)
        out = np.empty((2, 12, 12, 16), np.float32)
        K.conv2d(blocked.to_blocked(x), (0, 0), (12, 12), wt, b, *args, act,
                 residual=None if res is None else blocked.to_blocked(res), into=out)
        assert_close(blocked.from_blocked(out), want)
    out = np.empty((2, 4, 12, 16), np.float32)
    with pytest.raises(ValueError, match="missing rows"):
        depthwise.launcher(blocked.to_blocked(x[:, 1:]), (1, 0), (12, 12), wt, b, (1, 1), (1,) * 4, (0, 0, 4, 12),
                           out, np.float32(0), np.float32(6), 1)


def test_channel_blocked_maps_are_1x1_convs_maps(monkeypatch):
    """blocked.blocked: (C / 16, H, W, 16) float32 with each pixel's 16 channels contiguous (a view with room for a
    halo too), not NCHW, float64 or 8 lanes; to_blocked and from_blocked undo each other. runs_blocked: an unpadded
    1×1 of one group with channels multiples of 16 (its outputs alone where it writes a blocked map from NCHW; at a
    stride, over its gathered pixels), or a 3×3 of an image's few channels writing one (an RGB stem), where the host
    has the vectors; lanes() with a blocked side: along output channels even where NCHW runs along pixels; a 3×3
    writing a blocked map from NCHW, but not reading one; not at all for other convs (the caller converts)."""
    from nptp_mpi.kernels import blocked

    x = randn((32, 5, 6), 9)
    xb = blocked.to_blocked(x)
    assert xb.shape == (2, 5, 6, 16) and blocked.blocked(xb) and blocked.blocked(np.zeros((3, 7, 8, 16), np.float32)[
        1:, 1:-1, 2:-1])
    assert not any(blocked.blocked(a) for a in (x, xb.astype(np.float64), np.zeros((2, 5, 6, 8), np.float32),
                                                xb[:, :, ::2]))
    np.testing.assert_array_equal(blocked.from_blocked(xb), x)
    assert xb[1, 2, 3, 4] == x[20, 2, 3]
    monkeypatch.setattr(vectors, "ENABLED", True)
    no = (0,) * 4
    assert blocked.runs_blocked((64, 32, 1, 1), 1, (1, 1), no, (1, 1), (14, 14))
    assert blocked.runs_blocked((64, 32, 1, 1), 1, (2, 2), no, (1, 1), (28, 28))
    assert blocked.runs_blocked((144, 24, 1, 1), 1, (1, 1), no, (1, 1), (56, 56), reads=False)  # (from NCHW)
    assert not blocked.runs_blocked((144, 24, 1, 1), 1, (1, 1), no, (1, 1), (56, 56))
    assert not blocked.runs_blocked((24, 144, 1, 1), 1, (1, 1), no, (1, 1), (56, 56), reads=False)
    assert blocked.runs_blocked((32, 3, 3, 3), 1, (2, 2), (1,) * 4, (1, 1), (112, 112), reads=False)  # (an RGB stem)
    assert not blocked.runs_blocked((32, 3, 3, 3), 1, (2, 2), (1,) * 4, (1, 1), (112, 112))
    assert not blocked.runs_blocked((32, 16, 3, 3), 1, (1, 1), (1,) * 4, (1, 1), (56, 56), reads=False)
    for w_shape, g, pads, hw in [((64, 32, 3, 3), 1, (1,) * 4, (14, 14)), ((64, 32, 1, 1), 1, (1,) * 4, (14, 14)),
                                 ((48, 24, 1, 1), 1, no, (14, 14)), ((64, 16, 1, 1), 2, no, (14, 14)),
                                 ((64, 32, 1, 1), 1, no, (14, 1))]:
        assert not blocked.runs_blocked(w_shape, g, (1, 1), pads, (1, 1), hw), w_shape
    big = np.zeros((16, 56, 56), np.float32)
    assert blocked.lanes((96, 16, 1, 1), 1, (1, 1), no, (1, 1), big, (56, 56)) == 0
    assert blocked.lanes((96, 16, 1, 1), 1, (1, 1), no, (1, 1), big, (56, 56), bout=True) == 2
    assert blocked.lanes((96, 16, 1, 1), 1, (1, 1), no, (1, 1), blocked.to_blocked(big), (56, 56)) == 2
    assert blocked.lanes((32, 16, 3, 3), 1, (1, 1), (1,) * 4, (1, 1), big, (56, 56)) == 2
    assert blocked.lanes((32, 16, 3, 3), 1, (1, 1), (1,) * 4, (1, 1), big, (56, 56), bout=True) == 2
    assert blocked.lanes((32, 16, 3, 3), 1, (1, 1), (1,) * 4, (1, 1), blocked.to_blocked(big), (56, 56)) == -1
    assert blocked.lanes((32, 16, 5, 5), 1, (1, 1), (2,) * 4, (1, 1), big, (56, 56), bout=True) == -1
    monkeypatch.setattr(vectors, "ENABLED", False)
    assert not blocked.runs_blocked((64, 32, 1, 1), 1, (1, 1), no, (1, 1), (14, 14))


def test_the_vector_gemm_takes_what_it_fits_and_masks_a_partial_block(monkeypatch):
    """blocked.takes: convs 3 or 7 wide, or 1×1, of one group without dilation, outputs a multiple of 16, runs
    whose tiles of 14 waste at most a quarter, rows of 7 or more whose tiles would waste more as one run that wraps
    from row to row; a 1×1 unpadded with 32 inputs or an output of 28². Not groups, dilation, 5×5, 7×1, 24 outputs, a
    1-column strip, rows of 6 or 5, a padded 1×1, 16 inputs to a 1×1 on a small map, float64, strided columns, or a
    host without the vectors. A 1×1 over rows of 9 is one run of 81 pixels, also into rows 12 floats apart (a tile
    buffer with a halo), where it wraps. Called directly, a last block of 40 channels in three blocks of 16 stores
    only its 40."""
    from nptp_mpi.kernels import blocked

    x, no = np.zeros((32, 9, 9), np.float32), (0,) * 4
    big = np.zeros((32, 56, 56), np.float32)
    monkeypatch.setattr(vectors, "ENABLED", True)
    for w_shape, s, pads, xx, out_hw in [((16, 32, 1, 1), (1, 1), no, x, (9, 9)),
                                         ([48, 32, 1, 1], [2, 2], [0, 0, 0, 0], big[:, 1:, 2:], (28, 27)),
                                         ((32, 16, 1, 1), (1, 1), no, x[:16], (28, 28)),
                                         ((16, 32, 1, 1), (1, 3), no, x, (9, 14)),
                                         ((64, 32, 3, 3), (1, 1), (1,) * 4, x, (9, 12)),
                                         ((64, 3, 7, 7), (2, 2), (3,) * 4, x[:3], (7, 14)),
                                         ((64, 32, 1, 7), (1, 1), (0, 3, 0, 3), x, (9, 14)),
                                         ((16, 32, 3, 3), (1, 1), no, x, (7, 14)),
                                         ((16, 32, 3, 3), (1, 1), (1,) * 4, x, (8, 8)),
                                         ((16, 32, 3, 3), (1, 1), (1,) * 4, x, (7, 7)),
                                         ((16, 32, 3, 3), (2, 2), (1,) * 4, x, (5, 9))]:
        assert blocked.takes(w_shape, 1, s, pads, (1, 1), xx, out_hw), (w_shape, s, pads, out_hw)
    for w_shape, g, s, pads, d, out_hw in [((16, 16, 1, 1), 2, (1, 1), no, (1, 1), (9, 9)),
                                           ((16, 32, 3, 3), 1, (1, 1), (2,) * 4, (2, 2), (9, 9)),
                                           ((16, 32, 5, 5), 1, (1, 1), (2,) * 4, (1, 1), (9, 9)),
                                           ((16, 32, 7, 1), 1, (1, 1), (3, 0, 3, 0), (1, 1), (9, 14)),
                                           ((24, 32, 1, 1), 1, (1, 1), no, (1, 1), (9, 9)),
                                           ((16, 32, 3, 3), 1, (1, 1), (1,) * 4, (1, 1), (9, 1)),
                                           ((16, 32, 3, 3), 1, (1, 1), (1,) * 4, (1, 1), (6, 6)),
                                           ((16, 32, 3, 3), 1, (2, 2), (1,) * 4, (1, 1), (5, 5)),
                                           ((16, 32, 1, 1), 1, (1, 1), (1, 0, 0, 0), (1, 1), (10, 9)),
                                           ((16, 16, 1, 1), 1, (1, 1), no, (1, 1), (9, 9))]:
        assert not blocked.takes(w_shape, g, s, pads, d, x[:w_shape[1] * g], out_hw), (w_shape, g, s, pads, out_hw)
    assert blocked.takes((16, 32, 1, 1), 1, (1, 1), no, (1, 1), x, (9, 9), 9)
    assert blocked.takes((16, 32, 1, 1), 1, (1, 1), no, (1, 1), x, (9, 9), 12)
    # Lanes along pixels (0) for an unpadded 1×1 at stride 1 with outputs a multiple of 8 from 28² on, fewer than
    # 256 inputs or outputs no multiple of 16, on runs whose strips of 32 waste at most a quarter; else along output
    # channels (cb), or not at all (-1). A 1×1 at stride 2 is one at stride 1 over its pixels gathered: from 56² to
    # 28² along pixels; rows of 7 one run of 49, into rows 9 floats apart too (wrapping), rows of 6 not. Rows of 10
    # into rows 12 apart: tiles along channels that wrap (strips, which never wrap, would waste two thirds).
    wide, deep = np.zeros((blocked.STRIPS_BELOW, 28, 28), np.float32), np.zeros((512, 14, 14), np.float32)
    for w_shape, xx, out_hw, pitch, lanes in [((96, 16, 1, 1), big[:16], (56, 56), None, 0),
                                               ((24, 32, 1, 1), big, (56, 56), None, 0),
                                               ((64, 16, 1, 1), big[:16, :28, :28], (28, 28), None, 0),
                                               ((64, 32, 1, 1), big[:, :28, :28], (28, 28), None, 0),
                                               ((64, blocked.STRIPS_BELOW, 1, 1), wide, (28, 28), None, 2),
                                               ((24, blocked.STRIPS_BELOW, 1, 1), wide, (28, 28), None, 0),
                                               ((96, 32, 1, 1), big[:, :14, :14], (14, 14), None, 2),
                                               ((24, 32, 1, 1), big[:, :14, :14], (14, 14), None, -1),
                                               ((64, 16, 1, 1), big[:16], (56, 56), 60, 0),
                                               ((64, 32, 1, 1), big[:, :, :14], (56, 14), 20, 2),
                                               ((24, 32, 1, 1), big[:, :, :14], (56, 14), 20, -1),
                                               ((64, 32, 1, 1), big, (28, 28), None, 0),
                                               ((64, 512, 1, 1), deep, (7, 7), None, 2),
                                               ((64, 512, 1, 1), deep, (7, 7), 9, 2),
                                               ((64, 32, 1, 1), big[:, :, :10], (56, 10), 12, 2),
                                               ((64, 512, 1, 1), deep[:, :12, :12], (6, 6), 9, -1)]:
        assert blocked.lanes(w_shape, 1, (1, 1) if out_hw[0] == xx.shape[1] else (2, 2), no, (1, 1), xx, out_hw,
                              pitch) == lanes, (w_shape, out_hw, pitch)
    for xx in (x.astype(np.float64), x[:, :, ::2]):
        assert not blocked.takes((16, 32, 1, 1), 1, (1, 1), no, (1, 1), xx, xx.shape[1:])
    # Rows wrap from 7 wide on where they are shorter than a tile or their own tiles would waste more than a quarter
    # (those went to BLAS); rows whose tiles waste less keep them.
    assert [ow for ow in range(1, 60) if blocked._wraps(ow)] == [*range(7, 14), *range(15, 21), 29, 30, 31]
    monkeypatch.setattr(vectors, "ENABLED", False)
    assert not blocked.takes((16, 32, 1, 1), 1, (1, 1), no, (1, 1), x, (9, 9))
    monkeypatch.undo()
    if not vectors.ENABLED:
        pytest.skip("this host has no AVX2 and FMA: the vector GEMM never runs here")
    x, w, b = randn((20, 5, 9), 1), randn((40, 20, 1, 1), 2), randn(40, 3)
    out = np.full((41, 5, 9), 7.0, np.float32)
    assert blocked._cb(40) == 1
    blocked.launcher(x, (0, 0), (5, 9), w, b, (1, 1), no, (0, 0, 5, 9), out[:40], np.float32(-np.inf),
                     np.float32(np.inf), blocked._cb(40), 1)(x, out[:40])
    np.testing.assert_allclose(out[:40], np.einsum("oc,chw->ohw", w[:, :, 0, 0], x) + b[:, None, None], rtol=1e-5,
                               atol=1e-5)
    assert (out[40] == 7.0).all()


def test_a_gathered_copys_planes_lie_an_odd_number_of_cache_lines_apart():
    """blocked._pitch: room for the plane, whole lines of 16 floats, an odd count of them (64² planes back to back lie
    4 KiB apart: every channel's pixel in one cache set)."""
    from nptp_mpi.kernels import blocked

    for n in (1, 16, 49, 196, 784, 1024, 4096, 4097, 16384):
        pitch = blocked._pitch(n)
        assert pitch >= n and pitch % 16 == 0 and (pitch // 16) % 2 == 1 and pitch - n < 32, (n, pitch)


def test_the_vector_gemms_threads_split_what_splits_evenly_then_the_larger_read():
    """_split: (thread shares of the output blocks, of the runs or tiles). 3 blocks on 2 threads would leave one
    thread twice the other's work: the pixels split instead; what one dimension cannot fill goes to the other. As
    evenly either way, the larger read splits: the weights (MobileNetV2's 96→576 at 14², 18 blocks) or the inputs
    (its 32→16 at 112², 2 blocks of 8 over 392 strips; its 384→64 at 14², 2 blocks over 14 tiles)."""
    from nptp_mpi.kernels import blocked

    heavy, light = 1 << 20, 1 << 10
    assert blocked._split(2, 3, 100, heavy, light) == (1, 2)
    assert blocked._split(2, 12, 784, heavy, light) == (2, 1)
    assert blocked._split(3, 3, 100, light, heavy) == (3, 1)
    assert blocked._split(7, 3, 100, heavy, light) == (1, 7)
    assert blocked._split(2, 1, 7, heavy, light) == (1, 2)
    assert blocked._split(4, 2, 56, heavy, light) == (1, 4)  # (2 blocks leave 4 threads half idle; 56 runs 14 each)
    assert blocked._split(1, 5, 9, light, heavy) == (1, 1)
    assert blocked._split(2, 18, 14, 96 * 576, 96 * 196) == (2, 1)
    assert blocked._split(2, 2, 392, 32 * 16, 32 * 112 * 112) == (1, 2)
    assert blocked._split(2, 2, 14, 384 * 64, 384 * 196) == (1, 2)
    assert blocked._split(2, 2, 14, 384 * 64, 384 * 49) == (2, 1)


def test_the_panel_cases_run_the_vector_gemm_that_prefetches_the_next_panel():
    """CONVS' three panel cases run the vector GEMM's tiles (two) and strips (one) that prefetch the next panel's
    inputs (else test_conv2d would not test that code): their runs span several panels, and they read FETCH_FROM
    input rows or more. A run's last panel, and fewer input rows, prefetch nothing."""
    from nptp_mpi.kernels import blocked

    if not vectors.ENABLED:
        pytest.skip("this host has no AVX2 and FMA: the vector GEMM never runs here")
    for n, width, floats, run in ((-3, blocked.PIX, blocked.TILE_PANEL, 23 * 29),
                                  (-2, blocked.PIX, blocked.TILE_PANEL, 46),
                                  (-1, blocked.LANES, blocked.PANEL, 28 * 30)):
        x, wt, _, _ = conv_case(CONVS[n])
        (cin, kh, kw), stride, pads = wt.shape[1:], CONVS[n][5], CONVS[n][6]
        out_hw = tuple((x.shape[1 + i] + pads[i] + pads[i + 2] - wt.shape[2 + i]) // stride[i] + 1 for i in (0, 1))
        lanes = blocked.lanes(wt.shape, 1, stride, pads, (1, 1), x, out_hw)
        assert (lanes == 0) == (width == blocked.LANES) and lanes >= 0  # (0: a strip, along pixels)
        s = stride[1]
        panel = blocked._panel(floats, width, cin * kh * kw * s)
        assert run > panel and cin * kh >= blocked.FETCH_FROM
        assert blocked._ahead(panel * s, kh, cin, True) == 4 * panel * s
        assert blocked._ahead(panel * s, kh, cin, False) == 0  # (a run's last panel)
        assert blocked._ahead(panel * s, 1, blocked.FETCH_FROM - 1, True) == 0


def test_convs_whose_weights_outweigh_their_inputs_run_each_block_over_all_pixels_and_fetch_the_next():
    """_streamed: ResNet-50's 512→512 3×3 and 2048→512 1×1 at 7², VGG-16's 512→512 3×3 at 28² (a row), and the
    BLOCKED and LAYOUTS cases of that kind (a thread's weights beyond WEIGHTS_STREAMED and its inputs); not where the
    weights fit a cache or the inputs outweigh them. _share: tiles 1 to cb of a block prefetch the next block's
    weights in shares that tile them exactly, kw lines a step of their loop over rows."""
    from nptp_mpi.kernels import blocked

    def streamed(cin, cout, k, pixels):
        return blocked._streamed(cout * cin * k * k, cin * pixels)

    assert streamed(512, 512, 3, 49) and streamed(2048, 512, 1, 49) and streamed(512, 512, 3, 28)
    assert streamed(512, 64, 3, 49) and streamed(2048, 160, 1, 49)
    assert not streamed(64, 64, 3, 56 * 56) and not streamed(256, 64, 1, 56 * 56)  # (weights within a cache)
    assert not streamed(256, 1024, 1, 14 * 14)  # (exactly WEIGHTS_STREAMED)
    assert not streamed(256, 256, 3, 64 * 64)  # (the inputs outweigh them)
    for cb, steps, kw in ((1, 1536, 3), (2, 1536, 3), (2, 2048, 1)):
        line, block = 64, 64 * steps * kw * cb  # (a step reads cb·kw lines of the block's weights)
        shares = [blocked._share(t, cb, steps, kw) for t in range(1, cb + 1)]
        assert shares == [block + k * steps * kw * line for k in range(cb)]  # (kw lines a step, `steps` each)
        assert blocked._share(0, cb, steps, kw) == blocked._share(cb + 1, cb, steps, kw) == 0


def test_3x3s_whose_weights_stream_run_their_input_channels_in_chunks_to_the_same_bits(monkeypatch):
    """_chunked: a 3×3 at stride 1 from NCHW to NCHW, 2 vectors a tile, more input channels than a chunk, weights
    streamed over CHUNKS_FROM to CHUNKS_TO tiles (ResNet-50's 256→256 and VGG-16's 512→512 at 14², its 512→512 at 16²
    at 512²), runs them in chunks; not at 7² (4 tiles) or 32² (96), nor with weights within a cache, at a stride,
    onto a blocked map, or as a 1×1. Chunked, a
    conv computes the bits it computes in one pass (each tile resumes its partial sums in the order one pass adds
    them), on one thread and on three, whole tiles, rows that wrap and a short last tile alike."""
    from nptp_mpi.kernels import blocked, threads

    def chunk(cin, cout, hw, k=3, stride=(1, 1), bout=False):
        tiles = -(-hw[0] * hw[1] // blocked.PIX) if blocked._wraps(hw[1]) else hw[0] * -(-hw[1] // blocked.PIX)
        return blocked._chunked((cout, cin, k, k), 1, bout, blocked._cb(cout), stride, tiles, cin * hw[0] * hw[1])

    assert chunk(256, 256, (14, 14)) == chunk(512, 512, (14, 14)) == chunk(512, 64, (14, 14)) == blocked.CHUNK
    assert chunk(512, 64, (9, 12)) == chunk(512, 512, (16, 16)) == blocked.CHUNK  # (one run of 108 pixels: 8 tiles)
    assert not chunk(512, 512, (32, 32))
    assert not chunk(512, 48, (14, 14))  # (48 outputs: 1 vector a tile)
    assert not chunk(512, 512, (7, 7)) and not chunk(128, 128, (28, 28)) and not chunk(256, 256, (14, 14), 1)
    assert not chunk(256, 256, (14, 14), stride=(2, 2)) and not chunk(256, 256, (14, 14), bout=True)
    assert not chunk(64, 1024, (14, 14))  # (one chunk's worth of inputs)
    if not vectors.ENABLED:
        pytest.skip("this host has no AVX2 and FMA: the vector GEMM never runs here")
    chunked = []
    decide = blocked._chunked
    monkeypatch.setattr(blocked, "_chunked", lambda *a: chunked.append(decide(*a)) or chunked[-1])
    for case in [c for c in BLOCKED if c[0] > blocked.CHUNK and c[4] == 3]:
        x, w, b, s, pads, out_hw = blocked_case(case)
        got = {}
        for nt in (1, 3):
            for on in (True, False):
                monkeypatch.setattr(blocked, "CHUNK", 64 if on else 1 << 30)
                with threads.blocks(nt):
                    got[nt, on] = K.conv2d(x, (0, 0), x.shape[1:], w.copy(), b, s, pads, (1, 1), 1, (0, 0, *out_hw),
                                           "relu")
                assert bool(chunked.pop()) == (on and out_hw[0] * out_hw[1] > 49), case  # (7²: 4 tiles)
        for key, y in got.items():
            np.testing.assert_array_equal(y, got[1, False], err_msg=f"{case}, {key}")


def test_winograd_runs_where_it_pays_and_its_filter_transform_is_kept():
    """The Winograd cases above take that path (else test_conv2d would not test it); a thin region and a
    strided or few-channel conv do not; the filter transform is computed once per weight array."""
    from nptp_mpi.kernels import winograd
    from nptp_mpi.kernels.conv import winograd_pays

    for n in WINOGRAD:
        cin, cout, h, w, k, s, pads, d = CONVS[n][:8]
        assert winograd_pays((cout, cin, *k), s, d, (h + pads[0] + pads[2] - 2, w + pads[1] + pads[3] - 2))
    assert not winograd_pays((16, 16, 3, 3), (1, 1), (1, 1), (4, 200))  # a halo strip
    assert not winograd_pays((16, 16, 3, 3), (2, 2), (1, 1), (40, 40))
    assert not winograd_pays((16, 3, 3, 3), (1, 1), (1, 1), (40, 40))
    assert not winograd_pays((512, 512, 3, 3), (1, 1), (1, 1), (7, 7))  # ResNet-50's last stage at 224²
    assert not winograd_pays((64, 16, 3, 3), (1, 1), (1, 1), (20, 20))  # too few channels for the pixels
    # beside the vector GEMM (gemm): from WINOGRAD_BESIDE_GEMM rows and columns
    assert winograd_pays((256, 256, 3, 3), (1, 1), (1, 1), (14, 14))
    for out_hw in ((14, 14), (28, 14), (14, 28)):
        assert not winograd_pays((256, 256, 3, 3), (1, 1), (1, 1), out_hw, True)
    assert winograd_pays((256, 256, 3, 3), (1, 1), (1, 1), (21, 21), True)
    wt = randn((8, 16, 3, 3))
    u = winograd.filter_transform(wt)
    assert winograd.filter_transform(wt) is u and winograd.filter_transform(wt.copy()) is not u
    assert u.shape == (36, 8, 16)


@pytest.mark.parametrize("n", [1, 9])
def test_im2col_in_chunks_of_rows_equals_one_chunk(n, monkeypatch):
    """A column budget of a few output rows (a partial last chunk among them) gives the result of one chunk, up
    to the GEMM's rounding; CONVS[1] is a 3×3 conv at stride 2, CONVS[9] the 7×7 one."""
    from nptp_mpi.kernels import conv

    x, wt, b, _ = conv_case(CONVS[n])
    k, s, pads, d = CONVS[n][4:8]
    out_hw = [out_len(x.shape[1 + a], k[a], s[a], d[a], pads[a], pads[a + 2], False) for a in (0, 1)]
    args = (x, (0, 0), x.shape[1:], wt, b, s, pads, d, 1, (0, 0, *out_hw))
    whole = K.conv2d(*args)
    for step in (3, 4):
        assert out_hw[0] % step  # a partial last chunk
        monkeypatch.setattr(conv, "COL_BYTES", 4 * wt[0].size * out_hw[1] * step)
        assert_close(K.conv2d(*args), whole)


@pytest.mark.parametrize("vector", [True, False], ids=["gemm", "blas"])
@pytest.mark.parametrize("k,stride,groups,alone", [(3, 1, 1, (4, 2)), (3, 2, 1, (4, 1)), (1, 1, 1, (6, 6)),
                                                   (3, 1, 4, (6, 6)), (3, 1, 32, (6, 6))])
def test_regions_of_one_tile_share_a_gemm_and_equal_one_region_at_a_time(k, stride, groups, alone, vector,
                                                                         monkeypatch):
    """An overlap's pieces: a tile's core and the four border strips around it (one touching the image's left
    border), from a buffer holding the tile and its halo, plus an empty piece. Those on the im2col path run
    as one GEMM; `alone` pieces (with the vector GEMM, without) get a ConvCall each, as conv2d: the empty one;
    the core where Winograd pays; every 1×1, grouped or depthwise piece; with the vector GEMM, the pieces it
    takes (the core at stride 2, the top and bottom rows; not the 1-column sides). Each equals conv2d of that
    region alone."""
    from nptp_mpi.kernels import conv

    if vector and not vectors.ENABLED:
        pytest.skip("this host has no AVX2 and FMA: the vector GEMM never runs here")
    monkeypatch.setattr(vectors, "ENABLED", vector)

    x, wt, b = randn((32, 64, 48), 1), randn((32, 32 // groups, k, k), 2), randn(32, 3)
    origin, in_hw, pad = (2, 0), (70, 48), (k // 2,) * 4
    o = 6 // stride  # the tile: output rows [o, o + 24), cols [0, 24) (rows and core whole tiles of 14 or more)
    pieces = [(o + 1, 1, o + 23, 23), (o, 0, o + 1, 24), (o + 23, 0, o + 24, 24), (o + 1, 0, o + 23, 1),
              (o + 1, 23, o + 23, 24), (o, 5, o, 9)]
    one_by_one = [K.conv2d(x, origin, in_hw, wt, b, (stride, stride), pad, (1, 1), groups, p, "relu") for p in pieces]
    calls, call = [], conv.ConvCall
    monkeypatch.setattr(conv, "ConvCall", lambda *a: calls.append(a) or call(*a))
    together = K.conv2d_regions(x, origin, in_hw, wt, b, (stride, stride), pad, (1, 1), groups, pieces, "relu")
    for got, want in zip(together, one_by_one, strict=True):
        assert got.shape == want.shape
        if want.size:
            assert_close(got, want)
    assert len(calls) == alone[0 if vector else 1]


@pytest.mark.parametrize("chunk_rows", [None, 2])
@pytest.mark.parametrize("cin,h,w", [(16, 21, 22), (64, 37, 41), (256, 12, 30)])
def test_winograd_error_against_a_float64_direct_conv(cin, h, w, chunk_rows, monkeypatch):
    """F(4×4, 3×3) in float32 stays within 2e-5 of the largest output (measured 0.5-1.1e-5; im2col: ~1e-6)
    on He-scaled weights, against the direct sum in float64; in one chunk of tile rows, and in chunks of two
    (the last one partial for h = 12)."""
    from nptp_mpi.kernels import winograd

    if chunk_rows:
        monkeypatch.setattr(winograd, "TILE_BYTES", 36 * 4 * max(cin, 24) * -(-w // 4) * chunk_rows)

    x, wt = randn((cin, h + 2, w + 2), 1), randn((24, cin, 3, 3), 2) * np.float32(np.sqrt(2 / (9 * cin)))
    exact = sum(np.einsum("kc,chw->khw", wt[:, :, i, j].astype(np.float64), x[:, i:i + h, j:j + w].astype(np.float64))
                for i in range(3) for j in range(3))
    got = np.empty((24, h, w), np.float32)
    winograd.conv3x3(x, wt, np.zeros(24, np.float32), got, 0, np.float32(0), np.float32(0), np.float32(0))
    assert np.abs(got - exact).max() <= 2e-5 * np.abs(exact).max()


# (kind, c, h, w, kernel, stride, pads (t, l, b, r), dilation, ceil_mode, count_include_pad)
POOLS = [
    ("max", 3, 13, 17, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), 0, 0),
    ("max", 3, 13, 17, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1, 0),
    ("max", 4, 14, 15, (3, 2), (2, 3), (1, 0, 0, 1), (2, 1), 1, 0),
    ("max", 2, 12, 11, (3, 3), (1, 1), (1, 1, 1, 1), (2, 2), 0, 0),
    ("avg", 3, 13, 17, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), 0, 0),
    ("avg", 3, 13, 17, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1, 0),
    ("avg", 3, 13, 17, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1, 1),
    ("avg", 4, 14, 15, (3, 2), (2, 3), (1, 0, 0, 1), (1, 1), 0, 1),
    ("avg", 4, 15, 16, (5, 5), (3, 3), (2, 2, 1, 0), (1, 1), 1, 1),
    ("avg", 2, 11, 13, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 0, 0),
    # max pools of kernels/rows.py's kinds: GoogLeNet's 3×3 at stride 1, a 2×2 in ceil mode over an odd width
    # (its last window half outside the image), 3×3 at stride 2 over rows of 40 (three chunks of 16) and onto rows
    # of 16 whose last window ends in the padding
    ("max", 5, 14, 14, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 0, 0),
    ("max", 4, 15, 41, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), 1, 0),
    ("max", 3, 9, 80, (3, 3), (2, 2), (0, 1, 1, 0), (1, 1), 0, 0),
    ("max", 2, 5, 31, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 0, 0),
]


def pool_attrs(case) -> tuple[str, dict]:
    kind, _, _, _, k, s, pads, d, ceil, cip = case
    attrs = dict(kernel_shape=k, strides=s, pads=pads, ceil_mode=ceil)
    if kind == "max":
        return "MaxPool", dict(attrs, dilations=d)
    return "AveragePool", dict(attrs, count_include_pad=cip)


def pool_call(case, x, origin, region):
    kind, _, h, w, k, s, pads, d, _, cip = case
    return K.pool2d(x, origin, (h, w), kind, k, s, pads, d, region, bool(cip))


@pytest.mark.parametrize("case", POOLS)
def test_pool2d(case):
    x = randn(case[1:4])
    op, attrs = pool_attrs(case)
    want = ort_run([x[None]], (op, [], attrs))[0]
    assert_close(pool_call(case, x, (0, 0), (0, 0, *want.shape[1:])), want)


@pytest.mark.parametrize("case", [case for case in POOLS if case[0] == "max"])
def test_max_pools_by_rows_give_the_loops_bits(case, monkeypatch):
    """Max pools by vector rows (kernels/rows.py, where rows.pools takes them: square 2×2 and 3×3 windows, no
    dilation) equal pool.py's loops bit for bit (a max is exact; test_pool2d checks both against onnxruntime)."""
    if not vectors.ENABLED:
        pytest.skip("this host has no AVX2 and FMA: the vector rows never run here")
    x = randn(case[1:4])
    k, s, pads, d, ceil = case[4:9]
    region = (0, 0, *(out_len(x.shape[1 + a], k[a], s[a], d[a], pads[a], pads[a + 2], ceil) for a in (0, 1)))
    assert rows.pools(k, s, d, x) == (k[0] == k[1] and d == (1, 1))
    by_rows = pool_call(case, x, (0, 0), region)
    monkeypatch.setattr(vectors, "ENABLED", False)
    np.testing.assert_array_equal(by_rows, pool_call(case, x, (0, 0), region))


@pytest.mark.parametrize("case", [POOLS[i] for i in (1, 3, 6, 9)])
def test_pool2d_in_blocks_of_channels_equals_one_block(case, monkeypatch):
    """Channels pooled a block at a time (kernels.pool.BLOCK_BYTES), the last block partial, at strides 1 and 2:
    the same values as all channels in one block (pool.py's loops: the vector rows take no blocks)."""
    from nptp_mpi.kernels import pool

    monkeypatch.setattr(vectors, "ENABLED", False)

    x = randn((7, *case[2:4]))
    want = pool_call(case, x, (0, 0), (0, 0, 5, 4))
    monkeypatch.setattr(pool, "BLOCK_BYTES", 1)  # one channel a block
    np.testing.assert_array_equal(pool_call(case, x, (0, 0), (0, 0, 5, 4)), want)
    slab = 4 * (case[2] + 2) * (case[3] + 2) * 3  # about three channels' slabs, planes and sums
    monkeypatch.setattr(pool, "BLOCK_BYTES", slab)
    np.testing.assert_array_equal(pool_call(case, x, (0, 0), (0, 0, 5, 4)), want)


def test_global_avgpool():
    x = randn((5, 13, 17))
    assert_close(K.global_avgpool(x), ort_run([x[None]], ("GlobalAveragePool", [], {}))[0])


def test_channel_sums_are_float64_sums_of_maps_and_of_tile_views():
    """The vectorised float64 sums (global pooling, and each rank's part of a mean) equal an exact sum to float64
    rounding, on a whole map and on a strided view of a tile buffer; a float32 sum would be off by far more."""
    x = randn((6, 40, 33)) + np.float32(1e3)  # a large offset: float32 accumulation would lose the small parts
    for v in (x, x[:, 3:31, 5:29]):
        want = [math.fsum(c.ravel().astype(np.float64)) for c in v]
        np.testing.assert_allclose(K.channel_sums(v), want, rtol=1e-14)


@pytest.mark.parametrize("out_hw", [(1, 1), (3, 5), (7, 7), (13, 17)])
def test_adaptive_avgpool(out_hw):
    x = randn((3, 13, 17))
    (h, w), (oh, ow) = x.shape[1:], out_hw
    want = np.empty((3, oh, ow), np.float32)
    for i in range(oh):
        for j in range(ow):
            ys, ye = (i * h) // oh, -((-(i + 1) * h) // oh)
            xs, xe = (j * w) // ow, -((-(j + 1) * w) // ow)
            want[:, i, j] = x[:, ys:ye, xs:xe].mean(axis=(1, 2))
    assert_close(K.adaptive_avgpool(x, out_hw), want)


UNARY = [
    ("relu", lambda x: K.relu(x), ("Relu", [], {})),
    ("clip", lambda x: K.clip(x, -0.3, 0.4), ("Clip", [F32(-0.3), F32(0.4)], {})),
    ("leakyrelu", lambda x: K.leakyrelu(x, 0.2), ("LeakyRelu", [], dict(alpha=0.2))),
    ("sigmoid", lambda x: K.sigmoid(x), ("Sigmoid", [], {})),
    ("lrn5", lambda x: K.lrn(x, 5, 1e-3, 0.75, 2.0), ("LRN", [], dict(size=5, alpha=1e-3, beta=0.75, bias=2.0))),
    ("lrn3", lambda x: K.lrn(x, 3, 0.1, 0.5, 1.0), ("LRN", [], dict(size=3, alpha=0.1, beta=0.5, bias=1.0))),
]


@pytest.mark.parametrize("name, ours, stage", UNARY, ids=[u[0] for u in UNARY])
def test_unary(name, ours, stage):
    x = randn((7, 13, 17)) * 30  # large magnitudes exercise sigmoid saturation
    assert_close(ours(x), ort_run([x[None]], stage)[0])


def _exact_activation(name: str, v: np.ndarray, alpha: float) -> np.ndarray:
    """float64 references of the activations our float32 code approximates (exp, tanh, erf)."""
    from math import erf

    return {"sigmoid": lambda: 1 / (1 + np.exp(-v)), "silu": lambda: v / (1 + np.exp(-v)), "tanh": lambda: np.tanh(v),
            "elu": lambda: np.where(v >= 0, v, alpha * np.expm1(np.minimum(v, 0))),
            "softplus": lambda: np.logaddexp(0, v),
            "gelu": lambda: 0.5 * v * (1 + np.vectorize(erf)(v / np.sqrt(2)))}[name]()


@pytest.mark.parametrize("name", ["sigmoid", "silu", "tanh", "elu", "softplus", "gelu"])
def test_exp_based_activations_against_float64(name):
    """Vectorised float32 exp (Cephes, 1 ulp), tanh and erf (A&S 7.1.26): within 3e-7 of the float64 value,
    relative to max(1, |value|), from the tails (±90) through zero; NaN stays NaN."""
    v = np.concatenate([np.linspace(-90, 90, 20001), np.geomspace(1e-8, 10, 2000), -np.geomspace(1e-8, 10, 2000),
                        [0.0, np.nan]]).astype(np.float32)
    got = K.activation(v, name, alpha=0.7).astype(np.float64)
    want = _exact_activation(name, v[:-1].astype(np.float64), 0.7)
    assert np.isnan(got[-1])
    err = np.abs(got[:-1] - want) / np.maximum(1.0, np.abs(want))
    assert err.max() <= 3e-7, (float(err.max()), float(v[np.argmax(err)]))


@pytest.mark.parametrize("act", [a for a in sorted(K.pointwise.ACTS) if a])
@pytest.mark.parametrize("n", [1, 5, 8, 12, 17, 18, 19, 21, 22])
def test_every_activation_on_every_conv_path_is_the_activation_of_the_plain_conv(act, n):
    """im2col, depthwise, 1×1 (by BLAS and by the vector GEMM, along channels and along pixels), Winograd convs and
    3×3 and 7×7 by the vector GEMM (CONVS 1, 5, 8, 12, 17, 18, 19, 21, 22)
    apply each activation as activation() does to their plain output, bit for bit: the producer's own loop (none,
    relu, clip) or the vectorised pass after it (the others)."""
    x, wt, b, _ = conv_case(CONVS[n])
    k, s, pads, d, g = CONVS[n][4:9]
    out_hw = [out_len(x.shape[1 + a], k[a], s[a], d[a], pads[a], pads[a + 2], False) for a in (0, 1)]
    args = (x, (0, 0), x.shape[1:], wt, b, s, pads, d, g, (0, 0, *out_hw))
    params = dict(alpha=0.3, lo=-0.5, hi=0.7)
    np.testing.assert_array_equal(K.conv2d(*args, act, **params), K.activation(K.conv2d(*args), act, **params))


@pytest.mark.parametrize("vector", [True, False], ids=["rows", "loops"])
@pytest.mark.parametrize("k, stride", [(5, 1), (7, 1), (5, 2), (9, 1)])
def test_depthwise_padding_taps_read_no_data(k, stride, vector, monkeypatch):
    """The phase-plane depthwise kernel pads each kernel row to TAPS taps of weight 0 that read a zero tail, never
    the map, and the vector rows (5×5, where the host has them) mask what lies outside: an inf in the input
    spreads exactly as far as onnxruntime spreads it (0 × inf would be NaN)."""
    monkeypatch.setattr(vectors, "ENABLED", vectors.ENABLED and vector)
    x = randn((3, 12, 11))
    x[1, 5, 4], x[2, 0, 10] = np.inf, -np.inf
    w = randn((3, 1, k, k), 1)
    p = k // 2
    got = K.conv2d(x, (0, 0), x.shape[1:], w, None, (stride, stride), (p,) * 4, (1, 1), 3, (0, 0, *[
        (n + 2 * p - k) // stride + 1 for n in x.shape[1:]]))
    want = ort_run([x[None]], ("Conv", [w], dict(group=3, pads=[p] * 4, strides=[stride] * 2)))[0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    assert (~finite).any() and finite.any()
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act", ["", "relu", "silu"])
@pytest.mark.parametrize("n", [1, 5, 8, 12, 14, 17, 18, 19, 20, 21, 22])
def test_a_residual_on_every_conv_path_is_the_add_after_the_plain_conv(act, n):
    """conv2d with a residual (a fused residual add) equals the add with the activation after the plain conv,
    bit for bit, on im2col, phase-plane depthwise, 1×1, Winograd, 3×3 stride-2 depthwise convs and the vector GEMM
    (CONVS 1, 5, 8, 12, 14, 17-22; by vector rows and the vector GEMM where the host has them),
    with the residual a strided view of a larger buffer (a tile); conv2d_regions passes each region its own."""
    x, wt, b, _ = conv_case(CONVS[n])
    k, s, pads, d, g = CONVS[n][4:9]
    out_hw = [out_len(x.shape[1 + a], k[a], s[a], d[a], pads[a], pads[a + 2], False) for a in (0, 1)]
    buf = randn((wt.shape[0] + 2, out_hw[0] + 3, out_hw[1] + 4), 9)
    res = buf[1:-1, 2:-1, 1:-3]
    args = (x, (0, 0), x.shape[1:], wt, b, s, pads, d, g, (0, 0, *out_hw))
    want = K.add(K.conv2d(*args), res, act=act)
    np.testing.assert_array_equal(K.conv2d(*args, act, residual=res), want)
    regions, parts = [(0, 0, out_hw[0], 2), (0, 2, out_hw[0], out_hw[1])], [res[:, :, :2], res[:, :, 2:]]
    got = K.conv2d_regions(*args[:-1], regions, act, residuals=parts)
    for g_, plain, r in zip(got, K.conv2d_regions(*args[:-1], regions), parts, strict=True):
        np.testing.assert_array_equal(g_, K.add(plain, r, act=act))


@pytest.mark.parametrize("vector", [True, False], ids=["vectors", "loops"])
@pytest.mark.parametrize("act, residual", [("", False), ("relu", False), ("silu", False), ("", True), ("relu", True)])
@pytest.mark.parametrize("n", range(len(CONVS)))
def test_a_conv_into_a_view_of_a_tile_buffer_writes_that_view_alone(n, act, residual, vector, monkeypatch):
    """conv2d(into=view) (the engine's output tile, with room for a halo around it) gives the view a new array's
    bits and leaves the rest of the buffer as it was, on every conv path; the vector kernels (rows.py, blocked.py)
    write it in place where the activation is one their loops apply and no residual follows, the others' output
    is copied in. conv2d_regions puts each region in its own view."""
    from nptp_mpi.kernels import conv

    monkeypatch.setattr(vectors, "ENABLED", vectors.ENABLED and vector)
    x, wt, b, _ = conv_case(CONVS[n])
    k, s, pads, d, g = CONVS[n][4:9]
    out_hw = [out_len(x.shape[1 + a], k[a], s[a], d[a], pads[a], pads[a + 2], False) for a in (0, 1)]
    args = (x, (0, 0), x.shape[1:], wt, b, s, pads, d, g, (0, 0, *out_hw))
    res = randn((wt.shape[0], *out_hw), 9) if residual else None
    want = K.conv2d(*args, act, residual=res)
    buf = np.full((wt.shape[0], out_hw[0] + 3, out_hw[1] + 5), np.nan, np.float32)
    view = buf[:, 1:-2, 2:-3]
    copies, placed = [], conv._placed
    monkeypatch.setattr(conv, "_placed", lambda out, into: copies.append(into is not None) or placed(out, into))
    assert K.conv2d(*args, act, residual=res, into=view) is view
    np.testing.assert_array_equal(view, want)
    view[...] = np.nan
    assert np.isnan(buf).all()  # (nothing written outside the view)
    takes = [conv.blocked.takes(wt.shape, g, s, pads, d, x, out_hw, pitch) for pitch in (None, buf.shape[2])]
    by_vectors = rows.kind(wt.shape, g, s, d, x, out_hw[1]) or (not conv.winograd_pays(wt.shape, s, d, out_hw,
                                                                                         takes[0]) and all(takes))
    assert copies == ([] if by_vectors and act != "silu" and not residual else [True])
    regions, views = [(0, 0, out_hw[0], 2), (0, 2, out_hw[0], out_hw[1])], [view[:, :, :2], view[:, :, 2:]]
    parts = None if res is None else [res[:, :, :2], res[:, :, 2:]]
    wants = K.conv2d_regions(*args[:-1], regions, act, residuals=parts)
    got = K.conv2d_regions(*args[:-1], regions, act, residuals=parts, into=views)
    for g_, v, w_ in zip(got, views, wants, strict=True):
        assert g_ is v
        np.testing.assert_array_equal(v, w_)
    assert np.isnan(buf[:, [0, -2, -1]]).all() and np.isnan(buf[:, :, [0, 1, -3, -2, -1]]).all()
    with pytest.raises(ValueError, match="cannot go to"):
        K.conv2d(*args, act, into=buf[:, :-1])


def test_a_maps_buffer_keeps_its_planes_off_multiples_of_4_kib():
    """A plane that is a multiple of 4 KiB (a 512² image's 256²-32² maps) gets one spare row, the others none (a
    224² image's maps; rows of 4 KiB, which no row helps); whole() gives the kernels such a map's C-contiguous
    buffer and planes() its rows of n values, and neither takes another view; an in-place pass refuses a view it
    would have to copy (its results would go to the copy)."""
    from nptp_mpi.kernels import layout, pointwise

    for h, w, spare in ((256, 256, 1), (128, 128, 1), (32, 32, 1), (64, 32, 1), (16, 16, 0), (112, 112, 0),
                        (56, 56, 0), (7, 7, 0), (3, 1024, 0)):
        assert layout.spare_rows(h, w) == spare
        m = layout.empty(5, h, w)
        assert m.shape == (5, h, w) and (m.strides[0] % layout.ALIAS != 0) == (w * 4 % layout.ALIAS != 0)
        b, (p, n) = layout.whole(m), layout.planes(m)
        assert b.flags.c_contiguous and b.shape == (5, h + spare, w) and b.ctypes.data == m.ctypes.data
        assert p.shape == (5, (h + spare) * w) and n == h * w and p.ctypes.data == m.ctypes.data
    halo = np.zeros((5, 10, 12), np.float32)[:, 1:-1, 1:-1]
    assert layout.whole(halo) is None and layout.planes(halo) is None
    assert layout.whole(np.zeros((2, 32, 32), np.int32)) is None
    with pytest.raises(ValueError, match="in-place pass"):
        pointwise.finish(halo, pointwise.act_code("silu"), 0.0, 0.0, 0.0)


@pytest.mark.parametrize("vector", [True, False], ids=["vectors", "loops"])
@pytest.mark.parametrize("act, residual", [("", False), ("silu", False), ("", True), ("relu", True)])
@pytest.mark.parametrize("n", range(len(CONVS)))
def test_a_conv_into_a_buffers_map_writes_it_in_place(n, act, residual, vector, monkeypatch):
    """conv2d(into=map) of a buffer with spare rows (layout.empty: how the reference and the engine keep a map
    whose planes would lie 4 KiB apart) gives a new array's bits and leaves the spare rows alone, on every conv
    path; the vector kernels and the depthwise and Winograd loops write it in place, a residual (itself such a map)
    and the rest of an activation added there, and only the others' output (im2col, BLAS) is copied in."""
    from nptp_mpi.kernels import conv

    monkeypatch.setattr(vectors, "ENABLED", vectors.ENABLED and vector)
    x, wt, b, _ = conv_case(CONVS[n])
    k, s, pads, d, g = CONVS[n][4:9]
    (oh, ow), cout = [out_len(x.shape[1 + a], k[a], s[a], d[a], pads[a], pads[a + 2], False) for a in (0, 1)], \
        wt.shape[0]
    args = (x, (0, 0), x.shape[1:], wt, b, s, pads, d, g, (0, 0, oh, ow))
    res = randn((cout, oh + 1, ow), 9)[:, :oh] if residual else None
    want = K.conv2d(*args, act, residual=None if res is None else res.copy())
    buf = np.full((cout, oh + 1, ow), np.nan, np.float32)
    copies, placed = [], conv._placed
    monkeypatch.setattr(conv, "_placed", lambda out, into: copies.append(into is not None) or placed(out, into))
    assert K.conv2d(*args, act, residual=res, into=buf[:, :oh]) is not None
    np.testing.assert_array_equal(buf[:, :oh], want)
    assert np.isnan(buf[:, oh:]).all()
    gemm = conv.blocked.takes(wt.shape, g, s, pads, d, x, (oh, ow))
    indexed = g > 1 and wt.shape[1] == 1 or g == 1 and conv.winograd_pays(wt.shape, s, d, (oh, ow), gemm)
    by_vectors = rows.kind(wt.shape, g, s, d, x, ow) or gemm
    assert copies == ([] if by_vectors or indexed else [True])


@pytest.mark.parametrize("n", range(len(CONVS)))
def test_a_prepared_conv_call_reads_its_arrays_anew_each_call(n):
    """conv2d prepares a call per weights, geometry and layouts (ConvCall) and reuses it: a second input, a new
    bias array (an id a freed one had, maybe), the same input at another place in memory and a residual give
    what a fresh call gives, on every path; a call refuses an input laid out otherwise; the calls kept for w hold
    neither w nor b alive."""
    import gc
    import weakref

    from nptp_mpi.kernels import conv

    x, wt, b, _ = conv_case(CONVS[n])
    k, s, pads, d, g = CONVS[n][4:9]
    region = (0, 0, *(out_len(x.shape[1 + a], k[a], s[a], d[a], pads[a], pads[a + 2], False) for a in (0, 1)))

    def conv2d(x, w, b, res=None):
        return K.conv2d(x, (0, 0), x.shape[1:], w, b, s, pads, d, g, region, "relu", residual=res)

    conv2d(x, wt, b)
    for seed in range(3):  # (weights copied: a call of its own, made for these arrays)
        x2, b2 = randn(x.shape, 10 + seed), None if b is None else randn(b.shape, 20 + seed)
        np.testing.assert_array_equal(conv2d(x2, wt, b2), conv2d(x2, wt.copy(), b2))
        moved = np.empty(x2.size + 7, np.float32)[7:].reshape(x2.shape)  # (elsewhere, same layout)
        moved[...] = x2
        np.testing.assert_array_equal(conv2d(moved, wt, b2), conv2d(x2, wt.copy(), b2))
        res = randn((wt.shape[0], *region[2:]), 30 + seed)
        np.testing.assert_array_equal(conv2d(x2, wt, b2, res), conv2d(x2, wt.copy(), b2, res))
        del b2
    (call, *_), wide = conv._calls(wt).values(), np.zeros((x.shape[0], x.shape[1], x.shape[2] + 1), np.float32)
    with pytest.raises(ValueError, match="reads a"):
        call(wide[:, :, 1:], wt, b)
    w_ref, b_ref = weakref.ref(wt), None if b is None else weakref.ref(b)
    del wt, b, call
    gc.collect()
    assert w_ref() is None and (b_ref is None or b_ref() is None)


@pytest.mark.parametrize("n", range(len(CONVS)))
def test_prepared_regions_read_their_arrays_anew_each_call(n):
    """A ConvRegions (a rank's conv step: a core and 1-pixel border strips, those on im2col sharing one GEMM) run
    on a second input, with residuals, into views of a tile buffer, gives what conv2d_regions gives afresh."""
    x, wt, b, _ = conv_case(CONVS[n])
    k, s, pads, d, g = CONVS[n][4:9]
    oh, ow = (out_len(x.shape[1 + a], k[a], s[a], d[a], pads[a], pads[a + 2], False) for a in (0, 1))
    regions = [(1, 1, oh - 1, ow - 1), (0, 0, 1, ow), (oh - 1, 0, oh, ow), (1, 0, oh - 1, 1), (1, ow - 1, oh - 1, ow)]
    buf = np.full((wt.shape[0], oh + 2, ow + 2), np.nan, np.float32)
    views = [buf[:, 1 + y0:1 + y1, 1 + x0:1 + x1] for y0, x0, y1, x1 in regions]
    geometry = ((0, 0), x.shape[1:], wt, b, s, pads, d, g, regions, "relu")
    prepared = K.ConvRegions(x, *geometry, residual=True, into=views)
    for seed in range(2):
        x2 = randn(x.shape, 10 + seed)
        res = [randn((wt.shape[0], y1 - y0, x1 - x0), 20 + seed + i) for i, (y0, x0, y1, x1) in enumerate(regions)]
        want = K.conv2d_regions(x2, *geometry, residuals=res)
        for got, v, w_ in zip(prepared(x2, wt, b, res, views), views, want, strict=True):
            assert got is v
            np.testing.assert_array_equal(v, w_)


def test_prepared_conv_calls_per_weights_are_bounded():
    """Regions that keep moving (D3 re-partitions at run time) keep at most CALLS_PER_WEIGHTS calls per weight
    array, the newest, each still right."""
    from nptp_mpi.kernels import conv

    x, w, b = randn((8, 40, 70), 1), randn((16, 8, 3, 3), 2), randn(16, 3)
    whole = K.conv2d(x, (0, 0), (40, 70), w, b, (1, 1), (1, 1, 1, 1), (1, 1), 1, (0, 0, 40, 70))
    for c in range(conv.CALLS_PER_WEIGHTS + 6):
        got = K.conv2d(x, (0, 0), (40, 70), w, b, (1, 1), (1, 1, 1, 1), (1, 1), 1, (0, c, 40, c + 1))
        assert_close(got, whole[:, :, c:c + 1])  # (a 1-column strip: im2col and BLAS, the whole map: not)
    assert len(conv._calls(w)) == conv.CALLS_PER_WEIGHTS


@pytest.mark.parametrize("op, ours, n", [("Add", K.add, 2), ("Sum", K.add, 3), ("Mul", K.mul, 2)])
def test_merge(op, ours, n):
    xs = [randn((4, 9, 11), seed) for seed in range(n)]
    assert_close(ours(*xs), ort_run([x[None] for x in xs], (op, [], {}))[0])


@pytest.mark.parametrize("act", ACTS, ids=lambda a: a[0] or "none")
def test_add_with_activation_on_tile_views(act):
    """A residual add and the activation after it, in one pass, on strided views of larger buffers (the
    distributed engine's tiles), against the two numpy steps."""
    name, params, _ = act
    big = [randn((5, 12, 15), seed) * 4 for seed in range(3)]
    xs = [b[1:4, 2:9, 3:14] for b in big]
    for n in (2, 3):
        want = K.activation(np.sum(xs[:n], axis=0, dtype=np.float32), name, **params)
        assert_close(K.add(*xs[:n], act=name, **params), want)


def test_concat():
    xs = [randn((c, 9, 11), c) for c in (3, 1, 5)]
    assert_close(K.concat(xs), ort_run([x[None] for x in xs], ("Concat", [], dict(axis=1)))[0])


def test_shuffle():
    x = randn((12, 5, 7))
    want = ort_run([x[None]], ("Reshape", [np.array([1, 3, 4, 5, 7])], {}),
                   ("Transpose", [], dict(perm=[0, 2, 1, 3, 4])), ("Reshape", [np.array([1, 12, 5, 7])], {}))
    assert_close(K.shuffle(x, 3), want[0])


def test_batchnorm_as_affine():
    c, eps = 6, 1e-5
    x = randn((c, 9, 11))
    gamma, beta, mean = randn(c, 1), randn(c, 2), randn(c, 3)
    var = np.abs(randn(c, 4)) + 0.1
    scale = gamma / np.sqrt(var + eps)
    want = ort_run([x[None]], ("BatchNormalization", [gamma, beta, mean, var], dict(epsilon=eps)))[0]
    assert_close(K.affine(x, scale, beta - mean * scale), want)


@pytest.mark.parametrize("act", ACTS, ids=lambda a: a[0] or "none")
@pytest.mark.parametrize("bias", [True, False])
def test_gemm(act, bias):
    name, kw, post = act
    x, w, b = randn(37, 0), randn((10, 37), 1), randn(10, 2)
    stages = [("Gemm", [w, b] if bias else [w], dict(transB=1))] + ([post] if post else [])
    want = ort_run([x[None]], *stages)[0]
    assert_close(K.gemm(x, w, b if bias else None, name, **kw), want)
    columns = np.asfortranarray(w)  # (an exporter's Gemm without transB: its weights transposed)
    np.testing.assert_array_equal(K.gemm(x, columns, b if bias else None, name, **kw),
                                  K.gemm(x, w, b if bias else None, name, **kw))


@pytest.mark.parametrize("c", [1, 7, 768])
def test_channel_norm_is_layer_norm_over_the_channels_of_each_pixel(c):
    """Against onnxruntime's LayerNormalization over the last axis of the channels-last map; a large common
    offset (the mean is subtracted before squaring) must not cost precision."""
    x = randn((c, 5, 6)) + 100.0
    scale, shift = randn(c, 1), randn(c, 2)
    nhwc = np.ascontiguousarray(x.transpose(1, 2, 0))[None]
    want = ort_run([nhwc], ("LayerNormalization", [scale, shift], dict(axis=-1, epsilon=1e-6)))[0]
    assert_close(K.channel_norm(x, scale, shift, 1e-6), want.transpose(2, 0, 1))


def test_softmax():
    x = randn(1000) * 50
    assert_close(K.softmax(x), ort_run([x[None]], ("Softmax", [], dict(axis=-1)))[0])



def need(o0: int, o1: int, k: int, s: int, d: int, p: int, n: int) -> tuple[int, int]:
    """Input interval read by outputs [o0, o1) along one axis, clipped to the image [0, n)."""
    return max(0, o0 * s - p), min(n, (o1 - 1) * s - p + (k - 1) * d + 1)


def out_len(n: int, k: int, s: int, d: int, p0: int, p1: int, ceil: bool) -> int:
    """ONNX output length, ceil mode included (a last window must start inside image or left padding)."""
    q, r = divmod(n + p0 + p1 - (d * (k - 1) + 1), s)
    out = q + 1 + (ceil and r > 0)
    return out - (ceil and (out - 1) * s >= n + p0)


def tiled(compute, x: np.ndarray, kernel, stride, pads, dilation, out_hw) -> list[np.ndarray]:
    """Stitch compute(buffer, origin, region) over two tilings: 2x3 uneven, and 1-pixel-wide edge tiles.

    Each buffer is exactly its tile's input slice clipped to the image.
    """
    (h, w), (oh, ow) = x.shape[1:], out_hw
    results = []
    for row_cuts, col_cuts in (([0, oh // 3, oh], [0, ow // 4, ow // 2 + 1, ow]),
                       ([0, 1, oh - 1, oh], [0, 1, 2, ow - 1, ow])):
        bands = []
        for y0, y1 in pairwise(row_cuts):
            r0, r1 = need(y0, y1, kernel[0], stride[0], dilation[0], pads[0], h)
            band = []
            for x0, x1 in pairwise(col_cuts):
                c0, c1 = need(x0, x1, kernel[1], stride[1], dilation[1], pads[1], w)
                band.append(compute(np.ascontiguousarray(x[:, r0:r1, c0:c1]), (r0, c0), (y0, x0, y1, x1)))
            bands.append(np.concatenate(band, axis=2))
        results.append(np.concatenate(bands, axis=1))
    return results


def region_cases():
    """(compute(buffer, origin, region), x, window, out_hw) for conv and pool attribute combos."""
    for n in (1, 2, 3, 6, 8, 10, 12, 13, 14, 15, 16, 19, 20, 21, 22):  # (10, 12: Winograd where a tile is big enough)
        case = CONVS[n]
        x, wt, b, _ = conv_case(case)
        k, s, pads, d, g = case[4:9]
        hw = tuple(out_len(x.shape[1 + a], k[a], s[a], d[a], pads[a], pads[a + 2], False) for a in (0, 1))
        yield (f"conv{n}", lambda buf, org, reg, x=x, wt=wt, b=b, s=s, pads=pads, d=d, g=g:
               K.conv2d(buf, org, x.shape[1:], wt, b, s, pads, d, g, reg, "relu"), x, (k, s, pads, d), hw)
    for n in (1, 2, 3, 6, 8):
        case = POOLS[n]
        x = randn(case[1:4])
        k, s, pads, d, ceil = case[4:9]
        hw = tuple(out_len(x.shape[1 + a], k[a], s[a], d[a], pads[a], pads[a + 2], ceil) for a in (0, 1))
        yield (f"pool{n}", lambda buf, org, reg, case=case: pool_call(case, buf, org, reg), x, (k, s, pads, d), hw)


    for pads in ((1, 2, 0, 3), (0, 0, 2, 2)):
        x = randn((3, 9, 10))
        hw = (9 + pads[0] + pads[2], 10 + pads[1] + pads[3])
        yield (f"pad{pads}", lambda buf, org, reg, x=x, pads=pads: K.pad2d(buf, org, x.shape[1:], pads, 0.25, reg),
               x, ((1, 1), (1, 1), pads, (1, 1)), hw)


REGION_CASES = list(region_cases())


def test_window_span_is_the_span_of_the_taps_inside_the_image():
    """window's integer span of in-image reads equals the one of the full tap list, over every small case."""
    from nptp_mpi.kernels.window import _inside, taps

    for k, s, d, p, n in ((k, s, d, p, n) for k in (1, 2, 3, 5) for s in (1, 2, 3) for d in (1, 2) for p in (0, 1, 3)
                          for n in (1, 4, 9)):
        for o0 in range(-1, 6):
            for o1 in range(o0 + 1, 8):
                pos = taps(o0, o1, k, s, d, p)
                pos = pos[(pos >= 0) & (pos < n)]
                want = (int(pos.min()), int(pos.max()) + 1) if pos.size else None
                assert _inside(o0, o1, k, s, d, p, n) == want, (o0, o1, k, s, d, p, n)


def test_a_staged_channel_is_that_channel_of_the_window():
    """staging + stage, a channel at a time into a block's slabs, equals window() of the same region: inside the
    buffer, touching the image border, and with garbage in the buffer past the image (which must not be read)."""
    from nptp_mpi.kernels.window import stage, staging, window

    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 12, 11)).astype(np.float32)
    x[:, :2], x[:, :, -1] = 1e6, 1e6  # rows 0-1 and the last column lie outside the image below
    origin, in_hw = (-2, 0), (10, 10)
    for kernel, stride, pads in (((3, 3), (1, 1), (1, 1, 1, 1)), ((3, 3), (2, 2), (1, 1, 1, 1)),
                                 ((5, 5), (2, 1), (2, 2, 2, 2)), ((1, 1), (1, 1), (0, 0, 0, 0))):
        for region in ((0, 0, 3, 4), (1, 1, 4, 4), (2, 2, 3, 3)):
            want = window(x, origin, in_hw, kernel, stride, pads, (1, 1), region, -7.0)
            slab_hw, copy = staging(x, origin, in_hw, kernel, stride, pads, (1, 1), region)
            p = np.full((2, *slab_hw), -7.0, np.float32)  # (a block's slabs, as pooling stages them)
            for c in range(x.shape[0]):
                stage(x, c, copy, p, c % 2)
                np.testing.assert_array_equal(p[c % 2], want[c], err_msg=f"{kernel} {stride} {region} channel {c}")


def test_pad2d_is_onnx_pad():
    x = randn((3, 9, 10))
    want = ort_run([x[None]], ("Pad", [np.array([0, 0, 1, 2, 0, 0, 0, 3]), np.float32(0.25)], {}))[0]
    assert_close(K.pad2d(x, (0, 0), (9, 10), (1, 2, 0, 3), 0.25, (0, 0, 10, 15)), want)


@pytest.mark.parametrize("name, compute, x, win, out_hw", REGION_CASES, ids=[c[0] for c in REGION_CASES])
def test_tiles_match_whole(name, compute, x, win, out_hw):
    whole = compute(x, (0, 0), (0, 0, *out_hw))
    # Winograd's rounding differs from im2col's by about 1e-5 of the largest value: a tile too thin for it
    # (or cut differently into 4×4 tiles) may differ from the whole map by that much; anything else, by ulps.
    tol = 3e-5 if name in (f"conv{n}" for n in WINOGRAD) else 1e-6
    for got in tiled(compute, x, *win, out_hw):
        np.testing.assert_allclose(got, whole, rtol=tol, atol=tol * np.abs(whole).max())
    # A buffer larger than the image, with garbage outside it: padding must come from the kernel, not x.
    big = np.full((x.shape[0], x.shape[1] + 5, x.shape[2] + 7), 1e6, np.float32)
    big[:, 2:-3, 3:-4] = x
    np.testing.assert_allclose(compute(big, (-2, -3), (0, 0, *out_hw)), whole, rtol=1e-6,
                               atol=1e-6 * np.abs(whole).max())


@pytest.mark.parametrize("name, compute, x, win, out_hw", REGION_CASES, ids=[c[0] for c in REGION_CASES])
def test_an_inner_region_of_the_whole_map_is_that_part_of_it(name, compute, x, win, out_hw):
    """A region computed from a buffer that holds the whole map (so real data lies past the slab it reads: a
    Winograd tile must not mix it in) is the whole output's part."""
    whole = compute(x, (0, 0), (0, 0, *out_hw))
    y0, x0, y1, x1 = 2, 3, out_hw[0] - 1, out_hw[1] - 2
    tol = 3e-5 if name in (f"conv{n}" for n in WINOGRAD) else 1e-6
    np.testing.assert_allclose(compute(x, (0, 0), (y0, x0, y1, x1)), whole[:, y0:y1, x0:x1], rtol=tol,
                               atol=tol * np.abs(whole).max())


@pytest.mark.parametrize("name, compute, x, win, out_hw", REGION_CASES, ids=[c[0] for c in REGION_CASES])
def test_missing_interior_row_raises(name, compute, x, win, out_hw):
    (k, s, pads, d), h = win, x.shape[1]
    region = (out_hw[0] // 2, 0, out_hw[0] // 2 + 1, out_hw[1])
    r0, r1 = need(region[0], region[2], k[0], s[0], d[0], pads[0], h)
    assert 0 < r0 and r1 < h  # an interior band: none of its rows is padding
    compute(x[:, r0:r1], (r0, 0), region)
    with pytest.raises(ValueError, match="missing rows"):
        compute(x[:, r0 + 1:r1], (r0 + 1, 0), region)
    with pytest.raises(ValueError, match="missing rows"):
        compute(x[:, r0:r1 - 1], (r0, 0), region)


@pytest.mark.parametrize("name, compute, x, win, out_hw", REGION_CASES[::5], ids=[c[0] for c in REGION_CASES[::5]])
def test_empty_region_returns_empty(name, compute, x, win, out_hw):
    """Documented choice: an empty region gives an empty (C, rows, cols) array, the buffer is not read."""
    got = compute(x[:, :0], (0, 0), (2, 1, 2, 4))
    assert got.shape[1:] == (0, 3) and got.dtype == np.float32


def test_no_kernel_writes_the_shared_constants():
    """Epilogues take their scale of ones, and a missing bias as zeros, from pointwise.constant: one array per
    size, shared by every call. A run of every op, whole and split into threads' blocks, leaves them as they were."""
    from nptp_mpi.kernels import threads
    from nptp_mpi.kernels.pointwise import constant
    from nptp_mpi.runtime.reference import run
    from nptp_mpi.runtime.warm import every_op_graph

    g = every_op_graph()
    x = np.random.default_rng(0).standard_normal(g.input_shape).astype(np.float32)
    run(g, x)
    for n in g.nodes:  # (and with no biases: every conv path then adds the shared zeros)
        n.params.pop("b", None)
    with threads.blocks(3):
        run(g, x)
    sizes = {shape[0] for shape in g.shapes.values()}
    assert all((constant(n, 1.0) == 1).all() and not constant(n, 0.0).any() for n in sizes)


def test_geometry_given_as_lists_is_geometry_given_as_tuples():
    """The kernels cache what they work out from a call's geometry (kernels/derived.py, per_arguments); a caller's
    own lists (pads=[1, 1, 1, 1]) still work, and give what tuples give."""
    x = randn((16, 20, 20))
    w3, dw, b = randn((16, 16, 3, 3), 1), randn((16, 1, 5, 5), 2), randn(16, 3)
    calls = [
        lambda t: K.conv2d(x, t([0, 0]), t([20, 20]), w3, b, t([1, 1]), t([1, 1, 1, 1]), t([1, 1]), 1,
                           t([0, 0, 20, 20]), "relu"),  # Winograd
        lambda t: K.conv2d(x, t([0, 0]), t([20, 20]), w3, b, t([2, 2]), t([1, 1, 1, 1]), t([1, 1]), 1,
                           t([0, 0, 10, 10])),  # im2col
        lambda t: K.conv2d(x, t([0, 0]), t([20, 20]), dw, b, t([2, 2]), t([2, 2, 2, 2]), t([1, 1]), 16,
                           t([0, 0, 10, 10])),  # depthwise 5×5: vector rows, or phase planes
        lambda t: K.pool2d(x, t([0, 0]), t([20, 20]), "max", t([3, 3]), t([2, 2]), t([1, 1, 1, 1]), t([1, 1]),
                           t([0, 0, 10, 10])),
        lambda t: K.pad2d(x, t([0, 0]), t([20, 20]), t([1, 2, 0, 3]), 0.5, t([0, 0, 21, 25])),
    ]
    for call in calls:
        np.testing.assert_array_equal(call(list), call(tuple))
