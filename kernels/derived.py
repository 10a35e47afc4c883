"""Values derived once and kept: from a weight array (Winograd's filter transform, a depthwise conv's padded rows),
for as long as the weights live, and from a call's geometry (a window's bounds, a phase layout): every inference
calls the kernels with the same weight arrays and the same regions."""

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


def per_arguments(fn: Callable) -> Callable:
    """fn(*args), computed once per distinct args (its values shared by every caller: read, never written). Lists
    among them count as the tuples they hold: a caller's own geometry, pads=[1, 1, 1, 1], works as it always did."""
    cached = functools.lru_cache(maxsize=1 << 12)(fn)

    @functools.wraps(fn)
    def derived(*args):
        try:
            return cached(*args)
        except TypeError:  # (an unhashable argument)
            return cached(*(tuple(a) if isinstance(a, list) else a for a in args))
    return derived
