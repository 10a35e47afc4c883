"""Arrays derived from a weight array (Winograd's filter transform, a depthwise conv's padded rows), kept for as
long as the weights live: every inference calls the kernels with the same weight arrays."""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable

import numpy as np


def per_weights(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """fn(w), computed once per weight array w (by identity; dropped when w is freed)."""
    cache: dict[int, tuple[weakref.ref, np.ndarray]] = {}

    @functools.wraps(fn)
    def derived(w: np.ndarray) -> np.ndarray:
        hit = cache.get(id(w))
        if hit is not None and hit[0]() is w:
            return hit[1]
        value, key = fn(w), id(w)
        cache[key] = (weakref.ref(w, lambda _, key=key: cache.pop(key, None)), value)
        return value
    return derived
