"""Export torchvision CNNs with both PyTorch ONNX exporters and store them weight-free.

For each architecture: build it with random weights (weights=None, seeded), give every BatchNorm
non-trivial random statistics and affine parameters (so BN folding is really exercised), make every
constant-filled tensor distinct (else the exporters share equal initializers through Identity
nodes, an artifact of the init that trained models never show), export it
with the TorchScript exporter (``dynamo=False``) and with the ``torch.export`` based one
(``dynamo=True``), static input 1x3xSxS, then

* check the full export against PyTorch with onnxruntime,
* store it light (``light.lighten``: float weights replaced by ``<name>__SHAPE`` + ``ConstantOfShape``,
  ONNX's own light-model convention) as ``<out>/<arch>.<exporter>.onnx``,
* reload the stored file, ``light.restore_weights``, run ``onnx.checker`` (full check) and
  onnxruntime on a random input, and require a finite 1x1000 output.

Failures are recorded (one line each) and the run goes on. A JSON summary of every attempt is
written to ``--results``.

Not run by CI (it needs torch and torchvision, in a venv of their own: pip install torch==2.14.1
torchvision==0.29.1 onnx onnxruntime onnxscript).
Usage: python tests/data/onnx/export_torchvision.py [--out DIR] [--size 224] [--archs resnet18,vgg16]
       [--results FILE]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/: light.py
from light import lighten, restore_weights, stripped_tensors  # noqa: E402

ARCHS = [
    "resnet18",
    "resnet50",
    "resnext50_32x4d",
    "vgg16",
    "vgg16_bn",
    "alexnet",
    "googlenet",
    "inception_v3",
    "densenet121",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "shufflenet_v2_x1_0",
    "squeezenet1_1",
    "mnasnet1_0",
    "efficientnet_b0",
    "regnet_y_400mf",
    "convnext_tiny",
]
EXPORTERS = ("torchscript", "dynamo")

# Extra constructor arguments: the Inception nets have auxiliary heads (train-only) and, without
# pretrained weights, would warn about their default init.
EXTRA_KWARGS = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def one_line(e: BaseException) -> str:
    """Exception as one line: type and the first non-empty line of its message."""
    text = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
    return f"{type(e).__name__}: {text}"[:400]


def build(arch: str, seed: int) -> torch.nn.Module:
    """Randomly initialised, seeded model in eval mode, with random BatchNorm statistics and no two
    parameters equal."""
    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch, weights=None, **EXTRA_KWARGS.get(arch, {}))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(c, generator=gen) * 0.1)
        # Constant-filled tensors (zero biases, LayerNorm ones, ConvNeXt's 1e-6 layer scale) are equal
        # to each other, and the exporters then share one initializer among them through Identity
        # nodes, which a trained model never shows: make each distinct, keeping its scale.
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point() and t.numel() > 1 and bool((t == t.flatten()[0]).all()):
                c = float(t.flatten()[0])
                noise = torch.rand(t.shape, generator=gen) + 0.5
                t.copy_(c * noise if c else torch.randn(t.shape, generator=gen) * 0.1)
    return model.eval()


def export(model: torch.nn.Module, x: torch.Tensor, exporter: str, ts_opset: int) -> onnx.ModelProto:
    """The model as an ONNX ModelProto, weights included, from the chosen exporter (quietly)."""
    names = {"input_names": ["input"], "output_names": ["output"]}
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            buf = io.BytesIO()
            torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=ts_opset, do_constant_folding=True, **names)
            return onnx.load_from_string(buf.getvalue())
        program = torch.onnx.export(model, (x,), dynamo=True, verbose=False, **names)
        return program.model_proto


def run_ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """Single-threaded onnxruntime output 0 of model on x."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """op_type -> count, most frequent first (domain-qualified outside the default domain)."""
    c = collections.Counter(
        n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}" for n in model.graph.node
    )
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def one(arch: str, exporter: str, model: torch.nn.Module, size: int, out: Path, seed: int, ts_opset: int) -> dict:
    """Export, store and verify one (arch, exporter) fixture; returns its record."""
    rec: dict = {"arch": arch, "exporter": exporter, "size": size, "ok": False}
    path = out / f"{arch}.{exporter}.onnx"
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    t0 = time.time()
    try:
        full = export(model, x, exporter, ts_opset)
    except Exception as e:  # any exporter failure is a result, not a crash
        rec["stage"], rec["error"] = "export", one_line(e)
        return rec
    rec["export_s"] = round(time.time() - t0, 1)
    rec["opset"] = next((o.version for o in full.opset_import if o.domain in ("", "ai.onnx")), None)
    rec["full_bytes"] = full.ByteSize()
    try:
        rec["stage"] = "full model vs torch"
        with torch.no_grad():
            want = model(x).numpy()
        got = run_ort(full, x.numpy())
        rec["torch_vs_ort"] = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))

        rec["stage"] = "lighten"
        light = lighten(full)
        onnx.save(light, str(path))
        rec["file"], rec["bytes"] = str(path), path.stat().st_size
        rec["ops"] = op_counts(full)
        rec["stripped"] = len(stripped_tensors(light))
        rec["kept_initializers"] = sorted(
            f"{t.name}:{onnx.TensorProto.DataType.Name(t.data_type)}{list(t.dims)}"
            for t in light.graph.initializer
            if not t.name.endswith("__SHAPE")
        )

        rec["stage"] = "restore + checker"
        restored = restore_weights(onnx.load(str(path)), seed)
        onnx.checker.check_model(restored, full_check=True)

        rec["stage"] = "restore + onnxruntime"
        xr = np.random.default_rng(seed).standard_normal((1, 3, size, size)).astype(np.float32)
        y = run_ort(restored, xr)
        if y.shape != (1, 1000) or not np.isfinite(y).all():
            raise ValueError(f"restored output has shape {y.shape}, finite={bool(np.isfinite(y).all())}")
        rec["restored_out_absmax"] = float(np.abs(y).max())
        rec["ok"], rec["stage"] = True, "done"
    except Exception as e:  # recorded, never fatal
        rec["error"] = one_line(e)
        rec["trace"] = traceback.format_exc(limit=3)[-1500:]
    return rec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                   help="output folder (default: beside this script)")
    p.add_argument("--size", type=int, default=224, help="input height = width (default 224)")
    p.add_argument("--archs", default="", help="comma-separated subset of: " + ",".join(ARCHS))
    p.add_argument("--exporters", default=",".join(EXPORTERS), help="comma-separated subset of torchscript,dynamo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torchscript-opset", type=int, default=13, help="opset for dynamo=False (default 13)")
    p.add_argument("--results", type=Path, default=Path("export_results.json"),
                   help="JSON summary of every attempt (default: export_results.json in the working folder)")
    args = p.parse_args(argv)

    archs = [a for a in args.archs.split(",") if a] or ARCHS
    exporters = [e for e in args.exporters.split(",") if e]
    unknown = sorted(set(archs) - set(ARCHS)) + sorted(set(exporters) - set(EXPORTERS))
    if unknown:
        p.error(f"unknown: {', '.join(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.results
    results = json.loads(results_path.read_text()) if results_path.exists() else {}

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    for arch in archs:
        try:
            model = build(arch, args.seed)
        except Exception as e:
            for exporter in exporters:
                results[f"{arch}.{exporter}"] = {
                    "arch": arch,
                    "exporter": exporter,
                    "ok": False,
                    "stage": "build",
                    "error": one_line(e),
                }
            continue
        for exporter in exporters:
            rec = one(arch, exporter, model, args.size, args.out, args.seed, args.torchscript_opset)
            results[f"{arch}.{exporter}"] = rec
            status = "ok" if rec["ok"] else f"FAILED at {rec['stage']}: {rec['error']}"
            print(f"{arch}.{exporter}: {status} ({rec.get('bytes', 0)} bytes)", flush=True)
            results_path.write_text(json.dumps(results, indent=1, sort_keys=True))
    failed = [k for k in results if not results[k]["ok"]]
    print(f"{len(results) - len(failed)} ok, {len(failed)} failed: {', '.join(failed) or '-'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
