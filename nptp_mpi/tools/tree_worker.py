"""One model's inferences in another tree's code, for `bench models --against DIR`: its text runs by `python -c` in
DIR, so that DIR's `nptp_mpi` is the one imported. It uses only what every tree has (load_model, reference.run).

Arguments: model (a zoo name or an absolute .onnx path), height, width, threads (its kernels' pool is sized by
NUMBA_NUM_THREADS), seconds to pause before a timed run on several threads (tools.bench.SPIN_S), and a .npy path
for its output. It writes the output, says "ready", then times one inference per line read and prints the seconds.
"""

import importlib.util
import os
import sys
import time

import numpy as np


def _kernels_of(tree: str) -> None:
    """Import the tree's `kernels/` folder as nptp_mpi.kernels, as setup.cfg's package_dir maps it: an editable
    install's finder would otherwise supply the installed checkout's kernels, since a tree has no
    nptp_mpi/kernels."""
    folder = os.path.join(tree, "kernels")
    init = os.path.join(folder, "__init__.py")
    if not os.path.isfile(init):
        sys.exit(f"{folder} holds no kernels (no __init__.py)")
    spec = importlib.util.spec_from_file_location("nptp_mpi.kernels", init, submodule_search_locations=[folder])
    module = sys.modules["nptp_mpi.kernels"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


def main(argv: list[str]) -> None:
    """Serve timed inferences until standard input closes."""
    spec, h, w, threads, pause, out = argv[1], int(argv[2]), int(argv[3]), int(argv[4]), float(argv[5]), argv[6]
    tree = os.path.join(os.getcwd(), "")
    _kernels_of(tree)
    from nptp_mpi import kernels
    from nptp_mpi.model import load
    from nptp_mpi.model.load import load_model
    from nptp_mpi.runtime import reference

    for module in (load, reference, kernels):  # (an installed nptp_mpi's finder fills in what a tree lacks)
        if not os.path.abspath(module.__file__).startswith(tree):
            sys.exit(f"{module.__name__} came from {module.__file__}, not from this tree")

    graph = load_model(spec, (h, w), None)
    x = np.random.default_rng(0).standard_normal(graph.input_shape, dtype=np.float32)
    with np.errstate(all="ignore"):
        np.save(out, reference.run(graph, x))  # (also the warm-up: compiles what the cache lacks)
        print("ready", flush=True)
        for _ in sys.stdin:
            if threads > 1:  # (as tools.bench.settle: the other engines' threads stop spinning, its own wake)
                time.sleep(pause)
                reference.run(graph, x)
            t0 = time.perf_counter()
            reference.run(graph, x)
            print(time.perf_counter() - t0, flush=True)


if __name__ == "__main__":
    main(sys.argv)
