"""Real exporters' files: the torchvision CNNs as both PyTorch exporters write them (tests/data/onnx, stored
without weights, made by tests/data/onnx/export_torchvision.py), weights regenerated seeded. Each one runs on
one rank and equals onnxruntime, or is refused at load with one line naming the op and the node; the list
of refusals is exact, so a model that starts (or stops) loading fails this test until the list says so."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import ROOT, assert_close, ort_run
from light import main as restore_files
from light import restore_weights

from nptp_mpi.errors import ModelError
from nptp_mpi.model.onnx_io import load_onnx
from nptp_mpi.runtime import reference

FIXTURES = sorted((ROOT / "tests" / "data" / "onnx").glob("*.onnx"))
# Still refused, and why (what the real-models issue has left to build).
REFUSED: dict[str, str] = {}


def test_the_fixtures_are_all_there() -> None:
    archs = {p.name.split(".")[0] for p in FIXTURES}
    assert len(archs) == 18 and {p.name.split(".")[1] for p in FIXTURES} == {"dynamo", "torchscript"}
    assert len(FIXTURES) == 36 and sum(p.stat().st_size for p in FIXTURES) < 4e6  # structure only


def test_restored_copies_for_benchmarks_are_what_the_tests_run(tmp_path) -> None:
    """`python tests/light.py OUT FILE…` (the files docs/BENCHMARKS.md times) writes the weights the tests use,
    and the network stays finite on them (the stored 0.5 fill overflows to inf)."""
    path = ROOT / "tests" / "data" / "onnx" / "efficientnet_b0.dynamo.onnx"
    restore_files([str(tmp_path), str(path)])
    full = onnx.load(tmp_path / path.name)
    assert full.SerializeToString() == restore_weights(onnx.load(path), seed=0).SerializeToString()
    x = np.random.default_rng(1).standard_normal((3, 224, 224), dtype=np.float32)
    assert np.isfinite(ort_run(full, x)).all() and not np.isfinite(ort_run(onnx.load(path), x)).all()


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_a_real_export_equals_onnxruntime_or_is_refused_in_one_line(tmp_path, path) -> None:
    model = restore_weights(onnx.load(path), seed=0)
    file = tmp_path / path.name
    onnx.save(model, file)
    try:
        graph = load_onnx(str(file))
    except ModelError as e:
        assert path.stem in REFUSED, f"{path.stem} is refused: {e}"
        assert REFUSED[path.stem] in str(e) and "node" in str(e) and "\n" not in str(e), str(e)
        return
    assert path.stem not in REFUSED, f"{path.stem} loads now: take it off REFUSED"
    x = np.random.default_rng(1).standard_normal(graph.input_shape, dtype=np.float32)
    assert_close(reference.run(graph, x), ort_run(model, x), rel=1e-4)


# Real exports with the ops a map passes through on its way (squeeze-and-excitation means, SiLU and hard-swish
# epilogues, grouped convs, concats, pools, LayerNorm), at 256²: their 128²-32² maps lie in buffers with a spare
# row (kernels.layout), which no 224² input exercises.
AT_256 = ("efficientnet_b0", "mobilenet_v3_small", "regnet_y_400mf", "googlenet", "convnext_tiny", "squeezenet1_1")


@pytest.mark.parametrize("arch", AT_256)
def test_a_real_export_at_256_equals_onnxruntime(tmp_path, arch) -> None:
    from nptp_mpi.model.onnx_fold import with_input_shape

    model = restore_weights(onnx.load(ROOT / "tests" / "data" / "onnx" / f"{arch}.dynamo.onnx"), seed=0)
    file = tmp_path / "model.onnx"
    onnx.save(model, file)
    graph = load_onnx(str(file), (256, 256))
    del model.graph.value_info[:]  # (shapes inferred at 224²: onnxruntime infers them anew)
    x = np.random.default_rng(1).standard_normal(graph.input_shape, dtype=np.float32)
    assert_close(reference.run(graph, x), ort_run(with_input_shape(model, (256, 256)), x), rel=1e-4)
