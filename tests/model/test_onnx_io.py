"""ONNX import (per export family, old and new opsets) and export, checked against onnxruntime; simplify."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from conftest import assert_close, import_and_compare, make_model, ort_run
from onnx import helper, numpy_helper

from nptp_mpi.errors import ModelError
from nptp_mpi.model.graph import Graph, Node, Window
from nptp_mpi.model.onnx_io import load_onnx, save_onnx, to_onnx
from nptp_mpi.model.passes import simplify
from nptp_mpi.runtime import reference

RNG = np.random.default_rng(0)
N = helper.make_node


def W(*shape: int, scale: float = 0.3) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def case_opset7_bn_reshape_gemm():
    """VGG/ResNet-style export at opset 7, IR 3: BN with spatial, Dropout(ratio), Reshape(1, -1), Gemm, Softmax."""
    c = 8
    nodes = [
        N("Conv", ["x", "w", "b"], ["c"], "conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        N("BatchNormalization", ["c", "g", "be", "m", "v"], ["bn"], "bn1", epsilon=1e-3, spatial=1),
        N("Relu", ["bn"], ["r"], "relu1"),
        N("MaxPool", ["r"], ["p"], "pool1", kernel_shape=[2, 2], strides=[2, 2]),
        N("Dropout", ["p"], ["d"], "drop", ratio=0.5),
        N("Reshape", ["d", "shape"], ["f"], "flat"),
        N("Gemm", ["f", "fw", "fb"], ["gm"], "fc", transB=1, alpha=0.5, beta=2.0),
        N("Relu", ["gm"], ["gr"], "fc_relu"),
        N("Softmax", ["gr"], ["y"], "prob"),
    ]
    inits = {
        "w": W(c, 3, 3, 3),
        "b": W(c),
        "g": W(c) + 1,
        "be": W(c),
        "m": W(c),
        "v": RNG.uniform(0.5, 1.5, c).astype(np.float32),
        "shape": np.array([1, -1], np.int64),
        "fw": W(10, c * 64, scale=0.05),
        "fb": W(10),
    }
    return make_model(nodes, inits, opset=7, ir=3), ["conv", "maxpool", "flatten", "gemm", "softmax"]


def case_opset17_same_pads_clip_inputs():
    """MobileNetV2-style: SAME_UPPER/SAME_LOWER/VALID auto_pad, depthwise, Clip min/max inputs, GAP, Gemm transB=0."""
    nodes = [
        N("Conv", ["x", "w1"], ["a"], "conv1", strides=[2, 2], auto_pad="SAME_UPPER"),
        N("Clip", ["a", "lo", "hi"], ["b"], "relu6_1"),
        N("Conv", ["b", "dw"], ["c"], "dw", strides=[2, 2], group=8, auto_pad="SAME_LOWER"),
        N("Clip", ["c", "", "hi"], ["d"], "clip_hi"),
        N("Conv", ["d", "pw"], ["e"], "pw", auto_pad="VALID"),
        N("GlobalAveragePool", ["e"], ["g"], "gap"),
        N("Flatten", ["g"], ["f"], "flatten"),
        N("Gemm", ["f", "fw", "fb"], ["y"], "fc", beta=0.5),
    ]
    inits = {
        "w1": W(8, 3, 3, 3),
        "lo": np.float32(0),
        "hi": np.float32(0.5),
        "dw": W(8, 1, 3, 3),
        "pw": W(16, 8, 1, 1),
        "fw": W(16, 10),
        "fb": W(1, 10),
    }
    return make_model(nodes, inits), ["conv", "conv", "conv", "gap", "flatten", "gemm"]


def case_opset9_clip_attrs_constant():
    """Old MobileNet: Clip min/max attributes, padded AveragePool, shape from a Constant node."""
    shape = numpy_helper.from_array(np.array([1, -1], np.int64))
    nodes = [
        N("Conv", ["x", "w"], ["a"], "conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        N("Clip", ["a"], ["b"], "relu6", min=0.0, max=0.5),
        N(
            "AveragePool",
            ["b"],
            ["p"],
            "avg",
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
            count_include_pad=1,
        ),
        N("Constant", [], ["shape"], "shape", value=shape),
        N("Reshape", ["p", "shape"], ["f"], "flat"),
        N("Gemm", ["f", "fw", "fb"], ["y"], "fc", transB=1),
    ]
    inits = {"w": W(4, 3, 3, 3), "fw": W(5, 4 * 64, scale=0.1), "fb": W(5)}
    return make_model(nodes, inits, opset=9), ["conv", "avgpool", "flatten", "gemm"]


def case_densenet_mul_add():
    """DenseNet: Concat then batch-norm written as Mul/Add with (C,1,1) and (1,C,1,1) constants."""
    nodes = [
        N("Conv", ["x", "w"], ["c"], "conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        N("Concat", ["x", "c"], ["cat"], "cat", axis=1),
        N("Mul", ["cat", "s"], ["m"], "bn_mul"),
        N("Add", ["t", "m"], ["a"], "bn_add"),
        N("Relu", ["a"], ["r"], "relu"),
        N("Conv", ["r", "w2"], ["c2"], "conv2"),
        N("AveragePool", ["c2"], ["y"], "pool", kernel_shape=[2, 2], strides=[2, 2]),
    ]
    inits = {"w": W(4, 3, 3, 3), "s": W(7, 1, 1) + 1, "t": W(1, 7, 1, 1), "w2": W(4, 7, 1, 1)}
    return make_model(nodes, inits, opset=9), ["conv", "concat", "affine", "relu", "conv", "avgpool"]


def case_shufflenet():
    """ShuffleNet: grouped conv, channel shuffle as Reshape-Transpose-Reshape, Identity."""
    nodes = [
        N("Conv", ["x", "w"], ["a"], "gconv", group=2),
        N("Reshape", ["a", "s5"], ["r5"], "split"),
        N("Transpose", ["r5"], ["t"], "swap", perm=[0, 2, 1, 3, 4]),
        N("Reshape", ["t", "s4"], ["s"], "merge"),
        N("Identity", ["s"], ["i"], "ident"),
        N("Conv", ["i", "dw"], ["y"], "dw", group=8, pads=[1, 1, 1, 1]),
    ]
    inits = {
        "w": W(8, 4, 1, 1),
        "s5": np.array([1, 2, 4, 8, 8], np.int64),
        "s4": np.array([0, -1, 8, 8], np.int64),
        "dw": W(8, 1, 3, 3),
    }
    return make_model(nodes, inits, shape=(1, 8, 8, 8)), ["conv", "shuffle", "conv"]


def case_alexnet_lrn_matmul():
    """AlexNet/ZFNet: LRN, ceil-mode MaxPool, Flatten, MatMul + Add as a gemm."""
    nodes = [
        N("Conv", ["x", "w", "b"], ["c"], "conv1", kernel_shape=[11, 11], strides=[4, 4], pads=[2, 2, 2, 2]),
        N("Relu", ["c"], ["r"], "relu1"),
        N("LRN", ["r"], ["l"], "norm1", size=5, alpha=1e-2, beta=0.75, bias=2.0),
        N("MaxPool", ["l"], ["p"], "pool1", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        N("Flatten", ["p"], ["f"], "flatten"),
        N("MatMul", ["f", "fw"], ["mm"], "fc"),
        N("Add", ["mm", "fb"], ["y"], "fc_bias"),
    ]
    inits = {"w": W(8, 3, 11, 11, scale=0.1), "b": W(8), "fw": W(8 * 16, 10, scale=0.1), "fb": W(10)}
    return make_model(nodes, inits, shape=(1, 3, 36, 36)), ["conv", "lrn", "maxpool", "flatten", "gemm"]


def case_googlenet_concat_pools():
    """GoogLeNet/Inception: Concat of branches, padded max pool, ceil-mode pool, AveragePool excluding pads."""
    nodes = [
        N("Conv", ["x", "w1"], ["a"], "b1"),
        N("MaxPool", ["x"], ["mp"], "b2_pool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        N("Conv", ["mp", "w2"], ["b"], "b2"),
        N("Conv", ["x", "w3"], ["c"], "b3", pads=[1, 1, 1, 1]),
        N("Concat", ["a", "b", "c"], ["cat"], "cat", axis=-3),
        N("MaxPool", ["cat"], ["p"], "pool", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        N("AveragePool", ["p"], ["y"], "avg", kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0),
    ]
    inits = {"w1": W(2, 4, 1, 1), "w2": W(3, 4, 1, 1), "w3": W(5, 4, 3, 3)}
    return make_model(nodes, inits, shape=(1, 4, 10, 10)), [
        "conv",
        "maxpool",
        "conv",
        "conv",
        "concat",
        "maxpool",
        "avgpool",
    ]


def case_pointwise_mix():
    """LeakyRelu, Sigmoid, Mul and Sum of maps, Sub/Div by per-channel constants."""
    nodes = [
        N("Conv", ["x", "w"], ["a"], "conv"),
        N("LeakyRelu", ["a"], ["l"], "lrelu", alpha=0.2),
        N("Sigmoid", ["a"], ["s"], "sig"),
        N("Mul", ["l", "s"], ["m"], "mul"),
        N("Sum", ["a", "l", "m"], ["su"], "sum"),
        N("Sub", ["su", "c"], ["sb"], "sub"),
        N("Div", ["sb", "d"], ["y"], "div"),
    ]
    inits = {"w": W(4, 3, 1, 1), "c": W(4, 1, 1), "d": RNG.uniform(0.5, 2, (1, 4, 1, 1)).astype(np.float32)}
    return make_model(nodes, inits, shape=(1, 3, 6, 6)), ["conv", "leakyrelu", "sigmoid", "mul", "add", "affine"]


CASES = [v for k, v in sorted(globals().items()) if k.startswith("case_")]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[5:] for c in CASES])
def test_import_matches_onnxruntime(tmp_path, case):
    model, ops = case()
    graph = import_and_compare(tmp_path, model)
    assert [n.op for n in graph.nodes] == ops


def test_symbolic_input_size(tmp_path):
    model, _ = case_densenet_mul_add()
    for i, d in enumerate(model.graph.input[0].type.tensor_type.shape.dim):
        if i != 1:
            d.dim_param = "NHW"[i - 1 if i else 0]
    path = str(tmp_path / "model.onnx")
    onnx.save(model, path)
    with pytest.raises(ModelError, match="size"):
        load_onnx(path)
    assert import_and_compare(tmp_path, model, size=(12, 10)).input_shape == (3, 12, 10)


def test_batch_other_than_one_refused(tmp_path):
    model, _ = case_densenet_mul_add()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    onnx.save(model, tmp_path / "model.onnx")
    with pytest.raises(ModelError, match="input"):
        load_onnx(str(tmp_path / "model.onnx"))


UNSUPPORTED = {
    "Resize": ([N("Resize", ["x", "", "sc"], ["y"], "up1", mode="nearest")], {"sc": np.ones(4, np.float32) * 2}),
    "MaxPool": ([N("MaxPool", ["x"], ["y"], "pool", kernel_shape=[2, 2], storage_order=1)], {}),
    "Concat": ([N("Concat", ["x", "x"], ["y"], "cat", axis=2)], {}),
    "Gemm": ([N("Flatten", ["x"], ["f"], "flat"), N("Gemm", ["f", "fw"], ["y"], "fc", transA=1)], {"fw": W(768, 2)}),
    "Conv": ([N("Conv", ["x", "x"], ["y"], "conv")], {}),
    "Reshape": ([N("Reshape", ["x", "s"], ["y"], "reshape")], {"s": np.array([1, 3, 256], np.int64)}),
    "Mul": ([N("Mul", ["x", "c"], ["y"], "scale")], {"c": W(16)}),
}


@pytest.mark.parametrize("op", UNSUPPORTED)
def test_unsupported_op_or_attribute_named(tmp_path, op):
    nodes, inits = UNSUPPORTED[op]
    onnx.save(make_model(nodes, inits), tmp_path / "model.onnx")
    with pytest.raises(ModelError) as e:
        load_onnx(str(tmp_path / "model.onnx"))
    assert f"ONNX op {op!r}" in str(e.value)
    assert f"(node {nodes[-1].name!r}) in model.onnx" in str(e.value)


def test_external_data_inside_folder_loads(tmp_path):
    model, _ = case_alexnet_lrn_matmul()
    onnx.save(
        onnx.ModelProto.FromString(model.SerializeToString()),
        tmp_path / "model.onnx",
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=0,
    )
    assert os.path.getsize(tmp_path / "weights.bin") > 0
    graph = load_onnx(str(tmp_path / "model.onnx"))
    x = RNG.standard_normal(graph.input_shape, dtype=np.float32)
    assert_close(reference.run(graph, x), ort_run(model, x))


def test_external_data_outside_folder_refused(tmp_path):
    model, _ = case_alexnet_lrn_matmul()
    onnx.save(model, tmp_path / "model.onnx", save_as_external_data=True, location="weights.bin", size_threshold=0)
    proto = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    for t in proto.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "../weights.bin"
    (tmp_path / "sub").mkdir()
    onnx.save(proto, tmp_path / "sub" / "model.onnx")
    with pytest.raises(ModelError, match="initializer 'w'.*outside"):
        load_onnx(str(tmp_path / "sub" / "model.onnx"))


def all_ops_graph(hw: int = 16) -> Graph:
    """Every canonical op but gap (covered by the zoo), with a divisible adaptive pool."""

    def node(op, name, inputs, attrs=None, params=None, window=None):
        return Node(op, name, tuple(inputs), name, attrs or {}, params or {}, window)

    w3 = Window((3, 3), pads=(1, 1, 1, 1))
    nodes = [
        node(
            "conv", "c1", ["in"], {"groups": 1, "act": "leakyrelu", "alpha": 0.1}, {"w": W(8, 4, 3, 3), "b": W(8)}, w3
        ),
        node("conv", "c2", ["in"], {"groups": 2, "act": "clip", "lo": -1.0, "hi": 1.0}, {"w": W(8, 2, 3, 3)}, w3),
        node("add", "add", ["c1", "c2"]),
        node("mul", "mul", ["c1", "c2", "add"]),
        node("concat", "cat", ["add", "mul"]),
        node("shuffle", "shuffle", ["cat"], {"groups": 4}),
        node("affine", "bn", ["shuffle"], params={"scale": W(16) + 1, "shift": W(16)}),
        node("chnorm", "ln", ["bn"], {"eps": 1e-5}, params={"scale": W(16) + 1, "shift": W(16)}),
        node("sigmoid", "sig", ["ln"]),
        node("lrn", "lrn", ["sig"], {"size": 3, "alpha": 1e-3, "beta": 0.75, "bias": 1.0}),
        node("clip", "clip", ["lrn"], {"lo": 0.1, "hi": 0.9}),
        node("leakyrelu", "lrelu", ["clip"], {"alpha": 0.1}),
        node("relu", "relu", ["lrelu"]),
        node("pad", "pad", ["relu"], {"value": -0.5}, window=Window(pads=(0, 1, 1, 0))),
        node("maxpool", "mp", ["pad"], window=Window((3, 3), (2, 2), (1, 1, 1, 1), ceil=True)),
        node("avgpool", "ap", ["mp"], {"count_include_pad": False}, window=Window((2, 2))),
        node("adaptive_avgpool", "adapt", ["ap"], {"out": (4, 4)}),
        node("flatten", "flat", ["adapt"]),
        node("gemm", "fc1", ["flat"], {"act": "relu"}, {"w": W(32, 256, scale=0.1), "b": W(32)}),
        node("gemm", "fc2", ["fc1"], {"act": ""}, {"w": W(10, 32)}),
        node("softmax", "prob", ["fc2"]),
    ]
    return Graph("all_ops", "in", (4, hw, hw), "prob", nodes)


def test_export_all_ops_checks_and_matches(tmp_path):
    graph = all_ops_graph()
    model = to_onnx(graph)
    onnx.checker.check_model(model, full_check=True)
    x = RNG.standard_normal(graph.input_shape, dtype=np.float32)
    expected = reference.run(graph, x)
    assert_close(expected, ort_run(model, x))
    save_onnx(graph, str(tmp_path / "all.onnx"))  # and back: the same function (adaptive pool read as avgpool)
    back = load_onnx(str(tmp_path / "all.onnx"))
    assert {n.op for n in back.nodes} == {n.op for n in graph.nodes} - {"adaptive_avgpool"}
    assert_close(reference.run(back, x), expected)


def test_a_non_divisible_adaptive_pool_exports_as_averaging_matrices():
    graph = all_ops_graph(hw=20)  # adaptive pool 10x10 -> 4x4: cells of 2 and 3, overlapping
    assert graph.shapes["ap"][1:] == (10, 10)
    model = to_onnx(graph)
    assert [n.op_type for n in model.graph.node].count("MatMul") == 2
    x = RNG.standard_normal(graph.input_shape, dtype=np.float32)
    assert_close(ort_run(model, x), reference.run(graph, x))


def test_simplify_folds_fuses_drops_and_keeps_outputs():
    def node(op, name, inputs, attrs=None, params=None, window=None):
        return Node(op, name, tuple(inputs), name, attrs or {}, params or {}, window)

    w3, bn = Window((3, 3), pads=(1, 1, 1, 1)), {"scale": W(6) + 1, "shift": W(6)}
    nodes = [
        node("conv", "c1", ["in"], {"groups": 1, "act": ""}, {"w": W(6, 3, 3, 3)}, w3),
        node("affine", "bn1", ["c1"], params=bn),
        node("relu", "relu1", ["bn1"]),
        node("shuffle", "noop_shuffle", ["relu1"], {"groups": 1}),
        node("maxpool", "noop_pool", ["noop_shuffle"], window=Window()),
        node("clip", "noop_clip", ["noop_pool"], {"lo": -np.inf, "hi": np.inf}),
        node("conv", "c2", ["noop_clip"], {"groups": 1, "act": ""}, {"w": W(6, 6, 3, 3), "b": W(6)}, w3),
        node("leakyrelu", "lrelu", ["c2"], {"alpha": 0.1}),
        node("add", "res", ["lrelu", "c2"]),  # c2 has two consumers: no fusion
        node("affine", "bn2", ["res"], params=bn),
        node("affine", "bn3", ["bn2"], params=bn),
        node("clip", "relu6", ["bn3"], {"lo": 0.0, "hi": 6.0}),
    ]
    graph = Graph("s", "in", (3, 9, 9), "relu6", nodes)
    simple = simplify(graph)
    assert [n.op for n in simple.nodes] == ["conv", "conv", "leakyrelu", "add", "affine", "clip"]
    assert simple.nodes[0].attrs["act"] == "relu" and not simple.nodes[1].attrs["act"]
    x = RNG.standard_normal(graph.input_shape, dtype=np.float32)
    assert_close(reference.run(simple, x), reference.run(graph, x))
    assert graph.nodes[0].params["w"] is nodes[0].params["w"] and "b" not in graph.nodes[0].params  # input untouched


def test_simplify_fuses_a_residual_add_into_the_conv_computing_its_later_term():
    """An add of two maps runs in the epilogue of the conv that computes its later term, when the add is that
    conv's only reader and the conv has no activation; the output is bit for bit the unfused one. Not fused:
    a later term that is no conv, a conv with an activation, a conv another node reads too."""
    def node(op, name, inputs, attrs=None, params=None, window=None):
        return Node(op, name, tuple(inputs), name, attrs or {}, params or {}, window)

    w3 = Window((3, 3), pads=(1, 1, 1, 1))

    def conv(name, src, act=""):
        return node("conv", name, [src], {"groups": 1, "act": act}, {"w": W(6, 6, 3, 3), "b": W(6)}, w3)

    nodes = [
        conv("c0", "in", "relu"),
        conv("c1", "c0"),
        node("add", "a1", ["c0", "c1"], {"act": "relu"}),  # fused into c1, with the relu
        conv("c2", "a1"),
        node("maxpool", "mp", ["a1"], window=Window((3, 3), pads=(1, 1, 1, 1))),
        node("add", "a2", ["c2", "mp"]),  # its later term is a pool: not fused
        conv("c3", "a2", "relu"),
        node("add", "a3", ["a2", "c3"]),  # c3 has an activation: not fused
        conv("c4", "a3"),
        node("add", "a4", ["a3", "c4"]),
        node("add", "a5", ["a4", "c4"]),  # c4 is read twice: neither add is fused
    ]
    graph = Graph("r", "in", (6, 9, 9), "a5", nodes)
    simple = simplify(graph)
    assert [n.op for n in simple.nodes] == ["conv", "conv", "conv", "maxpool", "add", "conv", "add", "conv", "add",
                                            "add"]
    fused = simple.nodes[1]
    assert fused.inputs == ("c0", "c0") and fused.output == "a1" and fused.attrs["act"] == "relu"
    x = RNG.standard_normal(graph.input_shape, dtype=np.float32)
    np.testing.assert_array_equal(reference.run(simple, x), reference.run(graph, x))
    model = to_onnx(simple)  # exported as Conv, Add, Relu
    assert [n.op_type for n in model.graph.node][:5] == ["Conv", "Relu", "Conv", "Add", "Relu"]
    assert_close(ort_run(model, x), reference.run(graph, x))
