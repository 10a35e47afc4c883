"""Graph weights as .npz files (keys "<node>.<param>"), loaded without unpickling."""

from __future__ import annotations

import dataclasses
import zipfile

import numpy as np

from nptp_mpi.errors import ModelError
from nptp_mpi.io.files import open_regular
from nptp_mpi.model.graph import Graph

MAX_WEIGHTS_BYTES = 1 << 34  # 16 GiB: any CNN a board holds


def save_npz(graph: Graph, path: str) -> None:
    """Write every node parameter of graph to path (exactly that name, no .npz appended)."""
    with open(path, "wb") as f:
        np.savez(f, **{f"{n.name}.{k}": v for n in graph.nodes for k, v in n.params.items()})


def load_npz(graph: Graph, path: str) -> Graph:
    """A copy of graph with its parameters read from path; every key must be present with the right shape."""
    try:
        with open_regular(path, "weights", MAX_WEIGHTS_BYTES) as f, _archive(f, path) as data:
            expected = {f"{n.name}.{k}" for n in graph.nodes for k in n.params}
            if extra := sorted(set(data.files) - expected):
                raise ModelError(f"{path}: weights {extra[:3]} belong to no node of {graph.name}")
            nodes = [
                dataclasses.replace(
                    n, params={k: _read(data, f"{n.name}.{k}", v.shape, path) for k, v in n.params.items()}
                )
                for n in graph.nodes
            ]
    except (OSError, zipfile.BadZipFile) as e:
        raise ModelError(f"cannot read weights {path}: {e}") from None
    return Graph(graph.name, graph.input, graph.input_shape, graph.output, nodes)


def _archive(f, path: str) -> np.lib.npyio.NpzFile:
    """The .npz archive in f; ModelError for anything else (a plain .npy array, a pickle, garbage)."""
    try:
        data = np.load(f, allow_pickle=False)
    except ValueError as e:
        raise ModelError(f"{path}: not an .npz archive of weights ({e})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ModelError(f"{path}: one array (.npy), not an .npz archive of weights named <node>.<param>")
    return data


def _read(data: np.lib.npyio.NpzFile, key: str, shape: tuple[int, ...], path: str) -> np.ndarray:
    """One float32 parameter; ModelError naming the key when missing, pickled or misshapen."""
    if key not in data.files:
        raise ModelError(f"{path}: missing weight {key!r}")
    try:
        value = data[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:  # pickled, truncated, lying header
        raise ModelError(f"{path}: weight {key!r} cannot be loaded safely: {e}") from None
    if not isinstance(value, np.ndarray):  # numpy hands back the raw bytes of a member that is no .npy
        raise ModelError(f"{path}: weight {key!r} is not an array in .npy form")
    if value.shape != shape or not np.issubdtype(value.dtype, np.floating):
        raise ModelError(f"{path}: weight {key!r} is {value.dtype}{value.shape}, expected float32{shape}")
    return value.astype(np.float32)
