"""Hostile input: files that are not regular files, outputs that must not be replaced or overwritten, weights
and outputs that are not finite, invalid ONNX attributes. Each is refused in one line with exit 2, never a
hang (every run has a timeout) nor a silent exit 0, and nothing partial is left behind."""

from __future__ import annotations

import os
import time

import numpy as np
import onnx
import pytest
from conftest import make_model, run_cli
from onnx import helper

from nptp_mpi.errors import ModelError
from nptp_mpi.io.files import open_regular
from nptp_mpi.model.onnx_io import load_onnx

SMALL = ["--model", "resnet18", "--size", "64"]


def refused(p, *says: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("nptp-mpi: error"), p.stderr
    for s in says:
        assert s in p.stderr, p.stderr


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return str(path)


@pytest.mark.parametrize("flag", ["--weights", "--calibration", "--input", "--image", "--model"])
def test_a_fifo_as_any_input_file_is_refused_without_blocking(fifo, flag) -> None:
    args = ["run", *SMALL, flag, fifo]
    if flag == "--model":
        os.rename(fifo, fifo + ".onnx")
        args = ["run", "--model", fifo + ".onnx"]
    t0 = time.monotonic()
    p = run_cli(args, timeout=60)
    refused(p, "not a regular file")
    assert time.monotonic() - t0 < 30


def test_the_opener_refuses_devices_empty_and_oversized_files(tmp_path) -> None:
    from nptp_mpi.errors import InputError

    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "big").write_bytes(b"x" * 100)
    for path, says in (("/dev/zero", "not a regular file"), (tmp_path / "empty", "empty file"),
                       (tmp_path / "big", "larger than the limit"), (tmp_path, "is a directory"),
                       (tmp_path / "none", "no such")):
        with pytest.raises(InputError, match=says), open_regular(path, "test", 50):
            pass


def test_a_hostfile_that_is_a_device_is_one_line() -> None:
    p = run_cli(["hostfile", "/dev/zero"], timeout=60)
    refused(p, "not a regular file")


@pytest.mark.parametrize("target", ["/dev/full", "folder"])
def test_an_output_that_is_not_a_regular_file_is_refused(tmp_path, target) -> None:
    path = target if target.startswith("/") else str(tmp_path)
    p = run_cli(["run", *SMALL, "--output", path], timeout=120)
    refused(p, "not a regular file")
    assert os.path.exists("/dev/full") and not os.path.isfile("/dev/full")


def test_an_output_that_is_the_input_is_refused(tmp_path) -> None:
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 3, 64, 64), np.float32))
    before = x.read_bytes()
    p = run_cli(["run", *SMALL, "--input", str(x), "--output", str(x)], timeout=120)
    refused(p, "the run reads")
    assert x.read_bytes() == before


def test_a_name_too_long_for_the_file_system_is_one_line(tmp_path) -> None:
    p = run_cli(["run", *SMALL, "--report", str(tmp_path / ("r" * 300))], timeout=120)
    refused(p, "longer than")


def test_when_one_output_fails_none_replaces_what_was_there(tmp_path) -> None:
    """The second of two files fails mid-write (a full disk, say): the first, complete, is not renamed over
    its target either, and no temp file is left."""
    from nptp_mpi.errors import InputError
    from nptp_mpi.io.outputs import atomic_write_all

    out, report = tmp_path / "y.npy", tmp_path / "r.json"
    out.write_bytes(b"previous")
    report.write_text("old")

    def full_disk(f):
        f.write(b"{")
        raise OSError(28, "No space left on device")

    with pytest.raises(InputError, match="r.json: cannot write report .*No space left"):
        atomic_write_all([(out, lambda f: f.write(b"new"), "output"), (report, full_disk, "report")])
    assert out.read_bytes() == b"previous" and report.read_text() == "old"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["r.json", "y.npy"]
    atomic_write_all([(out, lambda f: f.write(b"new"), "output"), (report, lambda f: f.write(b"{}"), "report")])
    assert out.read_bytes() == b"new" and report.read_text() == "{}"


def test_a_failure_while_writing_leaves_the_previous_outputs(tmp_path) -> None:
    out = tmp_path / "y.npy"
    out.write_bytes(b"previous")
    p = run_cli(["run", *SMALL, "--output", str(out)], timeout=120, env={"NPTP_FAULT": "0:write"})
    assert p.returncode != 0 and out.read_bytes() == b"previous" and [f.name for f in tmp_path.iterdir()] == ["y.npy"]


def test_weights_holding_nan_are_refused_at_load(tmp_path) -> None:
    from nptp_mpi.model import zoo
    from nptp_mpi.model.weights import save_npz

    graph = zoo.build("resnet18", (64, 64))
    graph.nodes[3].params["w"] = graph.nodes[3].params["w"].copy()
    graph.nodes[3].params["w"][0, 0, 0, 0] = np.nan
    path = tmp_path / "w.npz"
    save_npz(graph, str(path))
    p = run_cli(["run", *SMALL, "--weights", str(path)], timeout=120)
    refused(p, "NaN or Inf", graph.nodes[3].name)


def test_a_constant_division_by_zero_is_refused(tmp_path) -> None:
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Div", ["c", "zero"], ["y"])]
    path = tmp_path / "div0.onnx"
    onnx.save(make_model(nodes, {"w": np.ones((4, 3, 3, 3), np.float32), "zero": np.zeros((1, 4, 1, 1), np.float32)}),
              path)
    p = run_cli(["run", "--model", str(path)], timeout=120)
    refused(p, "divides by a constant that holds zeros")


def test_a_non_finite_output_is_an_error_unless_allowed(tmp_path) -> None:
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[1, 1])]
    path, x, out = tmp_path / "m.onnx", tmp_path / "x.npy", tmp_path / "y.npy"
    onnx.save(make_model(nodes, {"w": np.full((2, 3, 1, 1), 1e30, np.float32)}), path)
    np.save(x, np.full((1, 3, 16, 16), 1e30, np.float32))  # 3·1e60 overflows float32
    p = run_cli(["run", "--model", str(path), "--input", str(x), "--output", str(out)], timeout=120)
    refused(p, "non-finite")
    assert not out.exists()
    p = run_cli(["run", "--model", str(path), "--input", str(x), "--output", str(out), "--allow-nonfinite"],
                timeout=120)
    assert p.returncode == 0 and np.isinf(np.load(out)).all()


@pytest.mark.parametrize("attrs", [{"pads": [1, 1, 1]}, {"strides": [0, 1]}, {"pads": [-1, 0, 0, 0]},
                                   {"dilations": [1, 0]}])
def test_invalid_conv_attributes_are_refused(tmp_path, attrs) -> None:
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], **attrs)]
    path = tmp_path / "m.onnx"
    onnx.save(make_model(nodes, {"w": np.ones((4, 3, 3, 3), np.float32)}), path)
    with pytest.raises(ModelError, match="invalid window") as e:
        load_onnx(str(path))
    assert "\n" not in str(e.value)


def test_concat_without_its_axis_is_one_line(tmp_path) -> None:
    nodes = [helper.make_node("Concat", ["x", "x"], ["y"])]
    path = tmp_path / "m.onnx"
    onnx.save(make_model(nodes, {}), path)
    with pytest.raises(ModelError, match="axis=None"):
        load_onnx(str(path))


def test_a_huge_size_and_a_timeout_that_is_not_a_number_are_one_line() -> None:
    refused(run_cli(["run", *SMALL[:2], "--size", "100000"], timeout=60), "at most 16384")
    refused(run_cli(["run", *SMALL, "--timeout", "nan"], timeout=60), "--timeout must be a finite")


def test_stream_reports_pipes_device_links_and_link_loops(tmp_path) -> None:
    from PIL import Image

    pics = tmp_path / "pics"
    pics.mkdir()
    Image.new("RGB", (64, 64), (9, 90, 200)).save(pics / "a.png")
    os.mkfifo(pics / "b.fifo")
    os.symlink("/dev/zero", pics / "c.png")
    os.symlink(pics / "d.png", pics / "d.png")  # a loop
    (pics / "e\nnewline.png").write_bytes(b"junk")
    p = run_cli(["run", *SMALL, "--images", str(pics)], timeout=120)
    assert p.returncode == 0, p.stderr
    summary = p.stderr.strip().splitlines()
    assert len(summary) == 1 and "5 pictures: 1 done, 4 skipped" in summary[0], p.stderr
