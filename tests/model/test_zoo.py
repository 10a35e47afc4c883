"""Zoo models end to end against onnxruntime on their ONNX export; weights .npz round trip."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from conftest import assert_close, ort_run

from nptp_mpi.errors import ModelError
from nptp_mpi.model import zoo
from nptp_mpi.model.onnx_io import to_onnx
from nptp_mpi.model.weights import load_npz, save_npz
from nptp_mpi.runtime import reference

# VGG and AlexNet export to ONNX only where their adaptive pool is a plain pool: 224 (7x7 / 6x6 maps).
# The big VGGs take ~20 s each there (0.5 GB of weights through ONNX): by default they run at 32x32 on
# the reference engine only (the adaptive pool upsamples 1x1 to 7x7); NPTP_SLOW_TESTS=1 runs them fully.
SIZES = {"alexnet": 224, "vgg11": 224, "vgg13": 224, "vgg16": 224, "vgg19": 224}
SLOW = {"vgg13", "vgg16", "vgg19"}


@pytest.mark.parametrize("name", zoo.MODELS)
def test_zoo_model_matches_onnxruntime(name):
    quick = name in SLOW and not os.environ.get("NPTP_SLOW_TESTS")
    size = 32 if quick else SIZES.get(name, 64)
    graph = zoo.build(name, (size, size))
    assert graph.shapes[graph.output] == (1000,)
    x = np.random.default_rng(1).standard_normal(graph.input_shape, dtype=np.float32)
    got = reference.run(graph, x)
    assert 1e-3 < np.abs(got).max() < 1e3
    if quick:
        return
    model = to_onnx(graph)
    if name not in SIZES:  # the checker re-serialises the model: cheap only for the small ones
        onnx.checker.check_model(model)
    assert_close(got, ort_run(model, x))


def test_batchnorm_folded_and_names_readable():
    graph = zoo.build("resnet18", (32, 32))
    ops = [n.op for n in graph.nodes]
    assert "affine" not in ops and "relu" not in ops and "add" not in ops
    # each residual add and its relu run in the epilogue of the conv that ends the block's branch
    fused = [n for n in graph.nodes if len(n.inputs) == 2]
    assert len(fused) == 8 and {(n.op, n.attrs["act"]) for n in fused} == {("conv", "relu")}
    assert {n.name for n in fused} >= {"layer1.0.conv2", "layer2.0.downsample.0"}  # the later-computed term
    assert graph.nodes[0].name == "conv1" and graph.nodes[0].attrs["act"] == "relu"
    assert "layer1.0.conv1" in {n.name for n in graph.nodes}
    mobilenet = zoo.build("mobilenet_v2", (32, 32))
    assert {n.op for n in mobilenet.nodes} == {"conv", "gap", "flatten", "gemm"}


def test_deterministic_and_seeded():
    a, b = zoo.build("mobilenet_v2", (32, 32)), zoo.build("mobilenet_v2", (32, 32))
    assert a.fingerprint() == b.fingerprint()
    assert zoo.build("mobilenet_v2", (32, 32), seed=1).fingerprint() != a.fingerprint()


def test_any_allowed_size_and_too_small():
    assert zoo.build("resnet50", (40, 72)).shapes["layer4.2.relu"] == (2048, 2, 3)
    with pytest.raises(ModelError, match="alexnet: input 62x224 too small"):
        zoo.build("alexnet", (62, 224))
    assert zoo.build("alexnet", (63, 63)).shapes["features.12"] == (256, 1, 1)
    with pytest.raises(ModelError, match="unknown model"):
        zoo.build("resnet101")


def test_an_adaptive_pool_that_is_not_a_plain_pool_exports_as_matrices():
    graph = zoo.build("alexnet", (256, 256))  # features end 7x7, pooled to 6x6
    assert "avgpool" in {n.name for n in graph.nodes}
    assert [n.op_type for n in to_onnx(graph).graph.node].count("MatMul") == 2


def test_weights_round_trip(tmp_path):
    graph = zoo.build("resnet18", (32, 32))
    save_npz(graph, str(tmp_path / "w.npz"))
    back = load_npz(zoo.build("resnet18", (32, 32), seed=5), str(tmp_path / "w.npz"))
    assert back.fingerprint() == graph.fingerprint()


def test_weights_missing_key_or_bad_shape_refused(tmp_path):
    graph = zoo.build("mobilenet_v2", (32, 32))
    params = {f"{n.name}.{k}": v for n in graph.nodes for k, v in n.params.items()}
    del params["features.0.0.w"]
    np.savez(tmp_path / "missing.npz", **params)
    with pytest.raises(ModelError, match="'features.0.0.w'"):
        load_npz(graph, str(tmp_path / "missing.npz"))
    params["features.0.0.w"] = np.zeros((1, 2, 3), np.float32)
    np.savez(tmp_path / "shape.npz", **params)
    with pytest.raises(ModelError, match="'features.0.0.w'"):
        load_npz(graph, str(tmp_path / "shape.npz"))


def test_weights_pickled_object_refused(tmp_path):
    graph = zoo.build("mobilenet_v2", (32, 32))
    params = {f"{n.name}.{k}": v for n in graph.nodes for k, v in n.params.items()}
    params["classifier.1.b"] = np.array([{"evil": 1}], dtype=object)
    np.savez(tmp_path / "pickled.npz", **params)
    with pytest.raises(ModelError, match="'classifier.1.b'"):
        load_npz(graph, str(tmp_path / "pickled.npz"))


def test_weights_that_are_no_npz_archive_or_hold_a_bad_member_refused(tmp_path):
    """A plain .npy, a member that is no .npy (numpy hands back its bytes) and one cut short (its header
    promises more): each one ModelError naming the file and the weight, never an AttributeError or EOFError."""
    import zipfile

    graph = zoo.build("resnet18", (32, 32))
    save_npz(graph, str(tmp_path / "good.npz"))
    with zipfile.ZipFile(tmp_path / "good.npz") as z:
        members = {n: z.read(n) for n in z.namelist()}
    first = next(iter(members))
    for name, mutate, needle in (("raw.npz", lambda b: b"not an npy", "is not an array"),
                                 ("short.npz", lambda b: b[: len(b) // 2], "cannot be loaded")):
        with zipfile.ZipFile(tmp_path / name, "w") as out:
            for n, b in members.items():
                out.writestr(n, mutate(b) if n == first else b)
        with pytest.raises(ModelError, match=f"{name}: weight '{first[:-4]}' {needle}"):
            load_npz(graph, str(tmp_path / name))
    np.save(tmp_path / "one.npy", np.ones(3, np.float32))
    with pytest.raises(ModelError, match=r"one.npy: one array \(.npy\)"):
        load_npz(graph, str(tmp_path / "one.npy"))
