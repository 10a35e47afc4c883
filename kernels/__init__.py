"""Compute kernels for one image: numpy + Numba, float32, no MPI, no model knowledge.

Feature maps are (C, H, W) float32 with no batch axis, C-contiguous or the top rows of a C-contiguous buffer with a
spare row after each plane (layout.py: planes never a multiple of 4 KiB apart): channel-major rows make the im2col
column rows and the GEMM operands contiguous, and a halo of whole rows is one contiguous slice per channel.
Spatial kernels compute an output region from an input tile buffer plus its origin in the full image.
"""

if __name__ != "nptp_mpi.kernels":  # (`import kernels` from the repository's root)
    raise ImportError("import the kernels as nptp_mpi.kernels: Numba's cache records a kernel's module name, and one "
                      f"compiled as {__name__!r} breaks every later load of it from the cache")

from . import (
    cache,  # noqa: F401 - first: it picks Numba's cache folder before any kernel is compiled
    threads,
)
from .conv import ConvRegions, conv2d, conv2d_regions
from .pointwise import (
    activation,
    add,
    affine,
    channel_norm,
    channels,
    clip,
    concat,
    gemm,
    leakyrelu,
    lrn,
    mul,
    prelu,
    relu,
    scale_channels,
    shuffle,
    sigmoid,
    softmax,
)
from .pool import adaptive_avgpool, channel_sums, global_avgpool, global_maxpool, pool2d
from .window import pad2d

threads.configure()

__all__ = ["ConvRegions", "activation", "add", "adaptive_avgpool", "affine", "channel_norm", "channel_sums",
           "channels", "clip", "concat", "conv2d", "conv2d_regions", "gemm", "global_avgpool", "global_maxpool",
           "leakyrelu", "lrn", "mul", "pad2d", "pool2d", "prelu", "relu", "scale_channels", "shuffle", "sigmoid",
           "softmax"]
