"""Which maps an engine keeps channel-blocked (kernels.blocked: (C / 16, H, W, 16), onnxruntime's NCHWc) rather
than NCHW: those that 1×1 convs (and RGB stems), and the depthwise convs between them, write and read alone.

On NCHW a 1×1 conv reads as many planes at once as it has inputs and transposes its sums to store them; on
blocked maps it reads its pixels' channels back to back, stores its sums as they are and adds a residual in its
registers (one thread, ms, NCHW → blocked: ResNet-50's 64→256 at 56² with its residual 1.17-1.27 → 0.83-0.86,
256→64 at 56² 0.95-1.04 → 0.66-0.73, 128→512 at 28² with its residual 1.06 → 0.76-0.79; at 14² and 7², within
5-10%). A 1×1 of fewer than MIN_CHANNELS inputs onto more than one block of outputs reads a blocked map only into
a blocked one: into NCHW, its lanes along pixels on an NCHW input ran faster (16→96 at 112², 0.44 → 0.57 ms reading
a blocked map), while into a blocked map it read a blocked one faster than an NCHW one (one thread, caches cold /
warm, ms: 16→96 at 112², 0.90 / 0.70 → 0.76 / 0.67; 32→192 at 64², 0.74 / 0.63 → 0.61 / 0.55), and the 1×1s that
write its input then store their sums with no transpose (192→32 at 28² with its residual, 0.23 / 0.12 → 0.16 /
0.10; 32→16 at 112², 0.37 / 0.22 → 0.32 / 0.20). MobileNetV2's maps of 16 and 32 channels between such 1×1s so
blocked ran the model in 0.93-0.99 of its time (bench models --against, 224² and 512², one and two threads). A 1×1
may also write a blocked map from an NCHW one (24→144 at 56², 0.22 ms either way), as may an RGB stem
(kernels.blocked.STEM_INPUTS). A depthwise conv (kernels.depthwise)
reads and writes blocked maps alike, where its activation is a clamp: inside MobileNetV2, whose expanded maps its
1×1s write and its depthwise convs read back from memory, NCHW rows ran those at 1.4-2.4× their time in cache, and
a blocked map is one stream of whole pixels a channel block (the model: 0.94-0.99 of its time; docs/BENCHMARKS.md).
A projection onto outputs no multiple of 16 (24: MobileNetV2's features.2-3) reads a blocked map too, its last
vector of sums partly empty, and writes NCHW (kernels.blocked._padded_out): their depthwise convs then run blocked,
and their six convs together gained more than the projections lost. Where a depthwise conv's reader cannot read a
blocked map, it keeps NCHW: written NCHW from a blocked input (transposed in registers) it ran no faster. Other convs
keep NCHW: a 3×3 reads its input by Winograd at 28² and
56² (1.13 ms against 1.5 by the vector GEMM, 128→128 at 28²) and wraps rows of 7 faster on NCHW. A map that an
exchange, a copy, a sum or a reduction touches, or any other op reads or writes, stays NCHW: the bytes on the wire
stay those of the plan. A rank decides for its own buffers alone: its peers see NCHW.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from nptp_mpi.kernels import blocked, depthwise
from nptp_mpi.kernels.pointwise import act_code, inline_code
from nptp_mpi.kernels.vectors import LANES
from nptp_mpi.model.graph import Node

Use = tuple[Node, tuple[int, ...], tuple[str, ...], str, tuple[int, int]]  # node, weights' shape, inputs, output, hw
MIN_CHANNELS = 64


def takes(node: Node, w_shape: tuple[int, ...], out_hw: tuple[int, int], reads: bool = True) -> bool:
    """Whether node is a conv the vector GEMM runs with channel-blocked maps (reads: a 1×1, its input blocked, and
    its output may be; a thin one's input only where its output is too, which blocked_maps settles; else its output
    alone, from an NCHW input: a 1×1 or an RGB stem), or a depthwise conv kernels.depthwise runs on them, with an
    activation its kernel applies and no residual (on this host)."""
    if node.op != "conv" or not w_shape:
        return False
    win, groups = node.window, node.attrs.get("groups", 1)
    if _depthwise(node, w_shape):
        code = act_code(node.attrs.get("act", ""))
        return len(node.inputs) == 1 and inline_code(code) == code
    return blocked.runs_blocked(w_shape, groups, win.stride, win.pads, win.dilation, out_hw, reads)


def _thin(node: Node, w_shape: tuple[int, ...]) -> bool:
    """Whether node is a 1×1 of fewer than MIN_CHANNELS inputs onto more than one block of outputs: it reads a blocked
    map only into a blocked one (blocked_maps)."""
    return node.op == "conv" and tuple(w_shape[2:]) == (1, 1) and w_shape[1] < MIN_CHANNELS and w_shape[0] > LANES


def _depthwise(node: Node, w_shape: tuple[int, ...]) -> bool:
    """Whether node is a depthwise conv that kernels.depthwise runs on channel-blocked maps (its input and output
    alike)."""
    win = node.window
    return node.op == "conv" and bool(w_shape) and depthwise.takes(w_shape, node.attrs.get("groups", 1), win.stride,
                                                                    win.dilation)


def blocked_maps(uses: Iterable[Use], nchw: set[str]) -> set[str]:
    """The maps to keep channel-blocked, of those the computes `uses` write and read: each written and read only by
    convs takes() (read as their input, or as the residual of one whose output is blocked too), and none in `nchw`
    (what anything else reads or writes)."""
    uses = list(uses)
    writers, readers = defaultdict(list), defaultdict(list)
    for node, w_shape, inputs, output, out_hw in uses:
        writers[output].append(takes(node, w_shape, out_hw, reads=False))
        for t in inputs:
            readers[t].append(takes(node, w_shape, out_hw))
    maps = {t for t, oks in writers.items() if all(oks) and t not in nchw and readers.get(t) and all(readers[t])}
    changed = True
    while changed:  # a residual's layout is its conv's output's (the kernel adds it in its registers); so is a
        changed = False  # depthwise conv's input's; a thin 1×1 reads a blocked map only into a blocked one
        for node, w_shape, inputs, output, _ in uses:
            other = inputs[1] if len(inputs) > 1 else inputs[0] if _depthwise(node, w_shape) else None
            if other is not None and (output in maps) != (other in maps):
                maps -= {output, other}
                changed = True
            elif _thin(node, w_shape) and inputs[0] in maps and output not in maps:
                maps.discard(inputs[0])
                changed = True
    return maps
