"""The ONNX front end on graphs shaped like real exporters' output: constant folding, the idioms it
recognises and the ops it adds, each against onnxruntime; what stays unsupported is one clear refusal."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import import_and_compare, make_model
from onnx import TensorProto, helper

from nptp_mpi.errors import ModelError
from nptp_mpi.model.onnx_fold import fold_constants
from nptp_mpi.model.onnx_io import load_onnx

N = helper.make_node
RNG = np.random.default_rng(3)


def W(*shape: int, scale: float = 0.3) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def conv(x: str, y: str, cin: int, cout: int, k: int = 3, **attrs) -> tuple[onnx.NodeProto, dict]:
    return (N("Conv", [x, f"{y}.w", f"{y}.b"], [y], y, kernel_shape=[k, k], pads=[k // 2] * 4, **attrs),
            {f"{y}.w": W(cout, cin, k, k), f"{y}.b": W(cout)})


def test_shape_chain_flatten_of_the_torchscript_exporter_folds(tmp_path) -> None:
    """Shape → Gather → Unsqueeze → Concat → Reshape (opset 11 and 13 axes forms) computes a static shape."""
    for opset in (11, 13):
        c1, w1 = conv("x", "c1", 3, 8)
        axes = {"axes": [0]} if opset < 13 else {}
        nodes = [c1, N("GlobalAveragePool", ["c1"], ["g"]), N("Shape", ["g"], ["s"]),
                 N("Gather", ["s", "zero"], ["n"], axis=0),
                 N("Unsqueeze", ["n", *([] if opset < 13 else ["ax0"])], ["n1"], **axes),
                 N("Concat", ["n1", "minus1"], ["shape"], axis=0), N("Reshape", ["g", "shape"], ["f"]),
                 N("Gemm", ["f", "fc.w", "fc.b"], ["y"], transB=1)]
        inits = {**w1, "zero": np.array(0, np.int64), "ax0": np.array([0], np.int64),
                 "minus1": np.array([-1], np.int64), "fc.w": W(5, 8), "fc.b": W(5)}
        graph = import_and_compare(tmp_path, make_model(nodes, inits, opset=opset))
        assert [n.op for n in graph.nodes] == ["conv", "gap", "flatten", "gemm"]


def test_reshaped_weights_and_unsqueezed_batchnorm_parameters_fold(tmp_path) -> None:
    """A Conv weight stored flat and Reshaped, and Caffe2-era (opset 9) Unsqueeze of per-channel parameters."""
    nodes = [N("Reshape", ["wflat", "wshape"], ["w"]), N("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1] * 4),
             N("Unsqueeze", ["scale"], ["s1"], axes=[1, 2]), N("Unsqueeze", ["shift"], ["t1"], axes=[1, 2]),
             N("Mul", ["c", "s1"], ["m"]), N("Add", ["m", "t1"], ["y"])]
    inits = {"wflat": W(8 * 3 * 9), "wshape": np.array([8, 3, 3, 3], np.int64), "scale": W(8), "shift": W(8)}
    graph = import_and_compare(tmp_path, make_model(nodes, inits, opset=9))
    assert [n.op for n in graph.nodes] == ["conv"]  # the affine folds into the conv


def test_fold_keeps_names_and_drops_only_dead_nodes() -> None:
    nodes = [N("Constant", [], ["k"], value=helper.make_tensor("k", TensorProto.FLOAT, [1], [2.0])),
             N("Mul", ["k", "k"], ["k2"]), N("Relu", ["x"], ["r"]), N("Mul", ["r", "k2"], ["y"])]
    folded = fold_constants(make_model(nodes, {}))
    assert [n.op_type for n in folded.graph.node] == ["Relu", "Mul"]
    assert {t.name for t in folded.graph.initializer} == {"k2"}
    assert onnx.numpy_helper.to_array(folded.graph.initializer[0]).tolist() == [4.0]


@pytest.mark.parametrize("op,keepdims,want", [("ReduceMean", 0, ["gap", "flatten", "gemm"]),
                                              ("ReduceMax", 1, ["gmp", "flatten", "gemm"])])
def test_reductions_over_height_and_width_are_global_pooling(tmp_path, op: str, keepdims: int, want) -> None:
    """The dynamo exporter's ReduceMean over H, W (axes as an input from opset 18), then MatMul + Add."""
    c1, w1 = conv("x", "c1", 3, 8)
    reduce = N(op, ["c1", "axes"], ["p"], keepdims=keepdims)
    flat = [] if not keepdims else [N("Squeeze", ["p", "axes"], ["p2"])]
    vector = "p2" if keepdims else "p"
    nodes = [c1, reduce, *flat, N("MatMul", [vector, "fc.w"], ["mm"]), N("Add", ["mm", "fc.b"], ["y"])]
    inits = {**w1, "axes": np.array([2, 3], np.int64), "fc.w": W(8, 5), "fc.b": W(5)}
    graph = import_and_compare(tmp_path, make_model(nodes, inits, opset=18))
    assert [n.op for n in graph.nodes] == ["conv", *want]


@pytest.mark.parametrize("pool", ["AveragePool", "MaxPool"])
def test_a_pool_over_the_whole_map_is_global_pooling(tmp_path, pool: str) -> None:
    """Caffe2-era ResNet/Inception exports end with AveragePool(kernel = map size) and Flatten(axis=-3)."""
    c1, w1 = conv("x", "c1", 3, 8, strides=[2, 2])
    nodes = [c1, N(pool, ["c1"], ["p"], kernel_shape=[8, 8], strides=[1, 1]), N("Flatten", ["p"], ["f"], axis=1),
             N("Gemm", ["f", "fc.w"], ["y"], transB=1)]
    graph = import_and_compare(tmp_path, make_model(nodes, {**w1, "fc.w": W(5, 8)}))
    assert [n.op for n in graph.nodes] == ["conv", "gap" if pool == "AveragePool" else "gmp", "flatten", "gemm"]


def test_flatten_with_a_negative_axis(tmp_path) -> None:
    nodes = [N("GlobalAveragePool", ["x"], ["p"]), N("Flatten", ["p"], ["y"], axis=-3)]
    assert [n.op for n in import_and_compare(tmp_path, make_model(nodes, {})).nodes] == ["gap", "flatten"]


@pytest.mark.parametrize("op,attrs,opset", [("HardSwish", {}, 17), ("HardSigmoid", {"alpha": 0.25, "beta": 0.4}, 17),
                                            ("Tanh", {}, 17), ("Elu", {"alpha": 0.7}, 17), ("Softplus", {}, 17),
                                            ("Gelu", {}, 20)])
def test_activations_alone_and_fused_into_the_conv(tmp_path, op: str, attrs: dict, opset: int) -> None:
    c1, w1 = conv("x", "c1", 3, 8)
    nodes = [c1, N(op, ["c1"], ["a"], **attrs), N("Add", ["a", "x8"], ["s"]), N(op, ["s"], ["y"], **attrs)]
    graph = import_and_compare(tmp_path, make_model(nodes, {**w1, "x8": W(1, 8, 1, 1)}, opset=opset))
    assert graph.nodes[0].attrs["act"] == op.lower() and graph.nodes[-1].op == op.lower()


def test_prelu_and_silu(tmp_path) -> None:
    """PRelu with a per-channel slope; x·Sigmoid(x) (what exporters write for SiLU) runs as a gate."""
    c1, w1 = conv("x", "c1", 3, 8)
    nodes = [c1, N("PRelu", ["c1", "slope"], ["p"]), N("Sigmoid", ["p"], ["sg"]), N("Mul", ["p", "sg"], ["y"])]
    import_and_compare(tmp_path, make_model(nodes, {**w1, "slope": W(8, 1, 1)}))


def test_zero_pad_folds_into_the_conv_and_the_average_pool(tmp_path) -> None:
    pads = np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)
    nodes = [N("Pad", ["x", "pads"], ["xp"]), N("Conv", ["xp", "w"], ["c"], kernel_shape=[3, 3]),
             N("Pad", ["c", "pads"], ["cp"]), N("AveragePool", ["cp"], ["y"], kernel_shape=[3, 3], strides=[2, 2])]
    graph = import_and_compare(tmp_path, make_model(nodes, {"pads": pads, "w": W(4, 3, 3, 3)}))
    assert [n.op for n in graph.nodes] == ["conv", "avgpool"]
    assert graph.nodes[0].window.pads == (1, 2, 2, 1) and graph.nodes[1].attrs["count_include_pad"]


def test_pad_with_a_value_and_a_zero_pad_before_a_max_pool_are_pad_nodes(tmp_path) -> None:
    """A Pad that cannot fold into its reader's padding (a value, or a MaxPool reading it) is a pad node; a zero
    Pad read by a Conv and a MaxPool folds into the one and runs as a node for the other."""
    c1, w1 = conv("x", "c1", 3, 8)
    nodes = [c1, N("Pad", ["c1", "pads", "val"], ["p1"]), N("Conv", ["p1", "w2"], ["c2"], kernel_shape=[3, 3]),
             N("Pad", ["c2", "pads0"], ["p2"]), N("MaxPool", ["p2"], ["m"], kernel_shape=[3, 3]),
             N("Conv", ["p2", "w3"], ["c3"], kernel_shape=[3, 3]), N("Add", ["m", "c3"], ["y"])]
    inits = {**w1, "pads": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64), "val": np.array(0.75, np.float32),
             "pads0": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "w2": W(8, 8, 3, 3), "w3": W(8, 8, 3, 3)}
    graph = import_and_compare(tmp_path, make_model(nodes, inits, opset=13))
    assert [n.op for n in graph.nodes] == ["conv", "pad", "conv", "pad", "maxpool", "conv"]  # (the add: c3's residual)
    assert graph.nodes[1].attrs["value"] == 0.75 and graph.nodes[1].window.pads == (1, 2, 2, 1)
    assert graph.nodes[5].window.pads == (1, 1, 1, 1) and graph.nodes[5].inputs[0] == "c2"  # folded
    assert graph.nodes[5].inputs[1] == graph.nodes[4].output and graph.nodes[5].output == "y"


def test_split_and_slice_along_channels(tmp_path) -> None:
    """ShuffleNetV2's new-exporter form: Split into halves, a branch on one, Concat back; and a Slice."""
    c1, w1 = conv("b", "c1", 4, 4)
    nodes = [N("Split", ["x", "sizes"], ["a", "b"], axis=1), c1, N("Concat", ["a", "c1"], ["cat"], axis=1),
             N("Slice", ["cat", "st", "en", "ax"], ["y"])]
    inits = {**w1, "sizes": np.array([4, 4], np.int64), "st": np.array([2], np.int64), "en": np.array([7], np.int64),
             "ax": np.array([1], np.int64)}
    graph = import_and_compare(tmp_path, make_model(nodes, inits, shape=(1, 8, 12, 12)))
    assert [n.op for n in graph.nodes].count("slice") == 3


@pytest.mark.parametrize("nodes,inits,says", [
    ([N("Pad", ["x", "pads"], ["xp"], mode="reflect"), N("Conv", ["xp", "w"], ["y"], kernel_shape=[3, 3])],
     {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "w": W(4, 3, 3, 3)}, "mode 'reflect'"),
    ([N("Pad", ["x", "pads"], ["y"])], {"pads": np.array([0, 0, -1, 1, 0, 0, 1, 1], np.int64)}, "non-negative"),
    ([N("Pad", ["x", "pads"], ["y"])], {"pads": np.array([0, 1, 0, 0, 0, 0, 0, 0], np.int64)}, "padding of H and W"),
    ([N("ReduceMean", ["x"], ["y"], axes=[1])], {}, "only H and W reduce"),
])
def test_what_stays_unsupported_is_one_line_naming_op_and_node(tmp_path, nodes, inits, says: str) -> None:
    path = str(tmp_path / "m.onnx")
    onnx.save(make_model(nodes, inits, opset=13), path)
    with pytest.raises(ModelError, match=says) as e:
        load_onnx(path)
    assert "\n" not in str(e.value) and "node" in str(e.value) and "m.onnx" in str(e.value)


def test_the_supported_ops_page_is_generated_from_the_importer() -> None:
    from conftest import ROOT

    from nptp_mpi.model.onnx_io import supported_markdown

    page = (ROOT / "docs" / "ONNX.md").read_text()
    assert page == supported_markdown(), "docs/ONNX.md is stale: python -m nptp_mpi.model.onnx_io > docs/ONNX.md"
    for op in ("HardSwish", "ReduceMean", "Split", "Pad", "PRelu", "GlobalMaxPool"):
        assert f"| {op} |" in page


@pytest.mark.parametrize("gate,act", [("Sigmoid", "Relu"), ("HardSigmoid", "Relu"), ("Sigmoid", "silu")])
def test_squeeze_and_excitation_becomes_one_node(tmp_path, gate: str, act: str) -> None:
    """Global pool of a map, 1×1 convs with activations (x·Sigmoid(x) for SiLU), the map times the gate."""
    c1, w1 = conv("x", "c1", 3, 8)
    silu = [N("Sigmoid", ["s1"], ["sg"]), N("Mul", ["s1", "sg"], ["a1"])]
    mid = [N("Relu", ["s1"], ["a1"])] if act == "Relu" else silu
    nodes = [c1, N("GlobalAveragePool", ["c1"], ["p"]), N("Conv", ["p", "w1", "b1"], ["s1"], kernel_shape=[1, 1]), *mid,
             N("Conv", ["a1", "w2", "b2"], ["s2"], kernel_shape=[1, 1]), N(gate, ["s2"], ["g"]),
             N("Mul", ["g", "c1"], ["y"])]
    inits = {**w1, "w1": W(4, 8, 1, 1), "b1": W(4), "w2": W(8, 4, 1, 1), "b2": W(8)}
    graph = import_and_compare(tmp_path, make_model(nodes, inits))
    assert [n.op for n in graph.nodes] == ["conv", "se"]
    assert [s[0] for s in graph.nodes[1].attrs["steps"]] == [act.lower(), gate.lower()]


def test_hardswish_written_as_x_times_hardsigmoid_is_one_node(tmp_path) -> None:
    """Opset-13 exports (HardSwish is opset 14) write x·HardSigmoid(x; 1/6, 1/2), also after a Gemm."""
    c1, w1 = conv("x", "c1", 3, 8)
    hs = {"alpha": 1 / 6, "beta": 0.5}
    nodes = [c1, N("HardSigmoid", ["c1"], ["h"], **hs), N("Mul", ["c1", "h"], ["m"]),
             N("GlobalAveragePool", ["m"], ["p"]), N("Flatten", ["p"], ["f"]), N("Gemm", ["f", "fw"], ["g"], transB=1),
             N("HardSigmoid", ["g"], ["gh"], **hs), N("Mul", ["gh", "g"], ["y"])]
    graph = import_and_compare(tmp_path, make_model(nodes, {**w1, "fw": W(5, 8)}, opset=13))
    assert [(n.op, n.attrs.get("act")) for n in graph.nodes] == [("conv", "hardswish"), ("gap", None),
                                                                 ("flatten", None), ("gemm", "hardswish")]


def test_a_gate_that_is_not_squeeze_and_excitation_is_refused(tmp_path) -> None:
    """The pooled map is another one than the gated: no per-channel rule can run it tiled."""
    c1, w1 = conv("x", "c1", 3, 8)
    c2, w2 = conv("x", "c2", 3, 8)
    nodes = [c1, c2, N("GlobalAveragePool", ["c2"], ["p"]), N("Sigmoid", ["p"], ["g"]), N("Mul", ["c1", "g"], ["y"])]
    path = str(tmp_path / "m.onnx")
    onnx.save(make_model(nodes, {**w1, **w2}), path)
    with pytest.raises(ModelError, match="not a squeeze-and-excitation branch"):
        load_onnx(path)


def _convnext_block(opset: int, spelled_out: bool) -> tuple[list, dict]:
    """A ConvNeXt block: depthwise conv, Transpose to channels-last, LayerNorm, Linear, GELU, Linear, Transpose
    back, layer scale, residual; spelled_out: LayerNorm and GELU op by op, as the TorchScript exporter writes
    them before opsets 17 and 20 (ReduceMean's axes an input from opset 18)."""
    c, e = 8, 16
    dw = N("Conv", ["x0", "dw.w", "dw.b"], ["d"], kernel_shape=[7, 7], pads=[3] * 4, group=c)
    stem, ws = conv("x", "x0", 3, c)
    inits = {**ws, "dw.w": W(c, 1, 7, 7), "dw.b": W(c), "ln.s": W(c) + 1, "ln.b": W(c), "l1.w": W(c, e), "l1.b": W(e),
             "l2.w": W(e, c), "l2.b": W(c), "gamma": W(c, 1, 1), "two": np.float32(2), "eps": np.float32(1e-6),
             "root2": np.float32(2 ** 0.5), "one": np.float32(1), "half": np.float32(0.5),
             "last": np.array([-1], np.int64)}
    nodes = [stem, dw, N("Transpose", ["d"], ["t"], perm=[0, 2, 3, 1])]
    if spelled_out:
        axes = ({"axes": [-1]}, []) if opset < 18 else ({}, ["last"])
        mean = lambda i, o: N("ReduceMean", [i, *axes[1]], [o], **axes[0])  # noqa: E731
        nodes += [mean("t", "mu"), N("Sub", ["t", "mu"], ["dev"]), N("Pow", ["dev", "two"], ["sq"]),
                  mean("sq", "var"), N("Add", ["var", "eps"], ["ve"]), N("Sqrt", ["ve"], ["sd"]),
                  N("Div", ["dev", "sd"], ["nrm"]), N("Mul", ["nrm", "ln.s"], ["nsc"]),
                  N("Add", ["nsc", "ln.b"], ["n"]),
                  N("MatMul", ["n", "l1.w"], ["h0"]), N("Add", ["l1.b", "h0"], ["h"]),
                  N("Div", ["h", "root2"], ["hs"]), N("Erf", ["hs"], ["he"]), N("Add", ["he", "one"], ["he1"]),
                  N("Mul", ["h", "he1"], ["hm"]), N("Mul", ["hm", "half"], ["g"])]
    else:
        nodes += [N("LayerNormalization", ["t", "ln.s", "ln.b"], ["n"], axis=-1, epsilon=1e-6),
                  N("MatMul", ["n", "l1.w"], ["h0"]), N("Add", ["h0", "l1.b"], ["h"]), N("Gelu", ["h"], ["g"])]
    nodes += [N("MatMul", ["g", "l2.w"], ["o0"]), N("Add", ["o0", "l2.b"], ["o"]),
              N("Transpose", ["o"], ["ob"], perm=[0, 3, 1, 2]), N("Mul", ["gamma", "ob"], ["os"]),
              N("Add", ["os", "x0"], ["y"])]
    return nodes, inits


@pytest.mark.parametrize("opset,spelled_out", [(20, False), (13, True), (18, True)])
def test_a_convnext_block_runs_channels_first(tmp_path, opset: int, spelled_out: bool) -> None:
    """LayerNorm over the channels of a channels-last map is one chnorm node; the Linears are 1×1 convs."""
    graph = import_and_compare(tmp_path, make_model(*_convnext_block(opset, spelled_out), opset=opset))
    ops = [(n.op, n.attrs.get("act")) for n in graph.nodes]
    assert ops == [("conv", ""), ("conv", ""), ("chnorm", None), ("conv", "gelu"), ("conv", "")], ops
    assert len(graph.nodes[-1].inputs) == 2  # the block's residual add, in its last conv


def test_convnext_head_pools_then_normalises_the_pooled_map(tmp_path) -> None:
    """The head: mean over H, W (the dynamo form: a flat view read back by an identity Gather), a channel norm of
    the pooled (C, 1, 1) map, flatten, classifier; the norm runs in the head, on whole tensors."""
    c1, w1 = conv("x", "c1", 3, 8)
    nodes = [c1, N("ReduceMean", ["c1", "hw"], ["m"], keepdims=1), N("Reshape", ["m", "flat"], ["v"]),
             N("Gather", ["v", "idx"], ["back"], axis=0), N("Transpose", ["back"], ["t"], perm=[0, 2, 3, 1]),
             N("LayerNormalization", ["t", "s", "b"], ["n"], axis=-1, epsilon=1e-6),
             N("Transpose", ["n"], ["nb"], perm=[0, 3, 1, 2]), N("Reshape", ["nb", "vec"], ["f"]),
             N("Gemm", ["f", "fw"], ["y"], transB=1)]
    inits = {**w1, "hw": np.array([-1, -2], np.int64), "flat": np.array([-1], np.int64),
             "idx": np.arange(8, dtype=np.int64).reshape(1, 8, 1, 1), "s": W(8) + 1, "b": W(8),
             "vec": np.array([1, 8], np.int64), "fw": W(5, 8)}
    graph = import_and_compare(tmp_path, make_model(nodes, inits, opset=20))
    assert [n.op for n in graph.nodes] == ["conv", "gap", "chnorm", "flatten", "gemm"]
    assert graph.head_start == 1


@pytest.mark.parametrize("nodes,says", [
    ([N("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]), N("Concat", ["t", "t"], ["y"], axis=3)],
     "on a channels-last map"),
    ([N("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]), N("Add", ["t", "x"], ["y"])], "and a channels-first one"),
    ([N("Transpose", ["x"], ["y"], perm=[0, 1, 3, 2])], "only to channels-last and back"),
    ([N("LayerNormalization", ["x", "s"], ["y"], axis=1)], "channels-last map"),
    ([N("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]), N("Add", ["t", "s3"], ["y"])], "not per-channel"),
])
def test_channels_last_ops_the_importer_cannot_map_are_refused(tmp_path, nodes, says: str) -> None:
    path = str(tmp_path / "m.onnx")
    onnx.save(make_model(nodes, {"s": W(3, 16, 16), "s3": W(16, 1)}, opset=20), path)
    with pytest.raises(ModelError, match=says) as e:
        load_onnx(path)
    assert "\n" not in str(e.value) and "node" in str(e.value)
