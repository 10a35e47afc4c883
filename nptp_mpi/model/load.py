"""Load a model by name or file: a zoo model at a size, or an ONNX file, optionally with .npz weights."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from nptp_mpi.errors import ModelError, UsageError
from nptp_mpi.model.graph import Graph

MAX_SIDE = 16384  # 3×16384² float32 is 3 GiB before the first layer


def parse_size(text: str) -> tuple[int, int]:
    """'512' → (512, 512); '480x640' → (480, 640) (height × width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise UsageError(f"bad --size {text!r}: use N or HxW, e.g. 512 or 480x640")
    if max(parts) > MAX_SIDE:
        raise UsageError(f"--size {text}: at most {MAX_SIDE} pixels a side (the input alone would not fit a board)")
    return parts[0], parts[1]



def load_model(spec: str, size: tuple[int, int] | None, weights: str | None) -> Graph:
    """A zoo model by name or an ONNX file, optionally with weights from an .npz file."""
    from nptp_mpi.model import zoo

    if spec in zoo.MODELS:
        graph = zoo.build(spec, size or (224, 224))
    elif spec.endswith(".onnx"):
        from nptp_mpi.model.onnx_io import load_onnx

        if not Path(spec).exists():  # (anything else that is not a regular file: the opener says what it is)
            raise ModelError(f"model file {spec!r} not found")
        graph = load_onnx(spec, size=size)
    else:
        raise UsageError(f"unknown model {spec!r}: use one of {', '.join(zoo.MODELS)} or a .onnx file")
    if weights:
        from nptp_mpi.model.weights import load_npz

        graph = load_npz(graph, weights)
    check_finite(graph)
    return graph


def check_finite(graph: Graph) -> None:
    """Refuse weights holding NaN or Inf (a corrupt file, or a constant division by zero folded into them): they
    would make every output NaN, silently. (A float64 sum of float32 values is finite exactly when they all are.)"""
    for n in graph.nodes:
        for k, v in n.params.items():
            if not math.isfinite(float(np.sum(v, dtype=np.float64))):
                raise ModelError(f"{graph.name}: weight {k!r} of node {n.name!r} holds NaN or Inf values")



def describe(graph: Graph, spec: str, weights: str | None) -> str:
    c, h, w = graph.input_shape
    origin = "seeded random weights" if not (weights or spec.endswith(".onnx")) else "weights from file"
    return f"{graph.name} ({origin}), input {c}x{h}x{w}"
