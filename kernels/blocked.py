"""Dense convs (one group) by a 16-lane GEMM micro-kernel over weights packed once (LLVM intrinsics, vectors.py).

BLAS vectorises a conv's product along the pixels and packs the weights on every call: on the 7²-14² maps of
MobileNets and of ResNet's last stages, the weights read cold, that ran 1.2-1.5× onnxruntime's conv, and a k×k conv
first copies its input k² times into columns (im2col). Here the lanes run along output channels, as onnxruntime's
channel-blocked (NCHWc) convs do, over weights packed once per weight array as [block][cin][ky][kx][16·cb]: a tile
is PIX pixels × 16·cb channels in PIX·cb registers, each input one broadcast, each weight row cb loads. The loop
runs over the input rows the taps read (cin·kh), a kernel row's kw taps unrolled, read straight from the (padded)
input slab: no im2col. The bias starts the sums, the clamp is applied in registers, and the tile is transposed in
registers (8 pixels × 16 channels at a time into 16 rows of 8) and stored into the NCHW output with masks (a tile
that wraps from one output row onto the next, each row's part with its own mask). A 1×1 conv
at stride 1 reads its input where it lies, at any row pitch: it copies nothing; at a stride it first gathers the pixels
it reads into a copy (_gathered), then runs as one at stride 1 over it. (On NCHW a residual added in the kernel,
in registers or in a pass over each block's rows while in cache, ran no faster than conv.py's pass after the conv:
ResNet-50's 64→256 at 56², 1.35 and 1.23 against 1.18 ms.)

A 1×1 conv's input, output or both may instead be channel-blocked ((C / 16, H, W, 16), blocked(); onnxruntime's
NCHWc; runtime.layouts keeps the maps between 1×1s so): a tile then reads each input channel's 14 pixels from 14
lines it shares with the block's other 15 channels (on NCHW, each channel's own plane: as many streams as inputs),
stores each pixel's sums as they are (no transpose), and adds a blocked residual in its registers before the clamp
(FUSED). One thread, ms, NCHW → both sides blocked: 256→64 at 56², 0.95-1.17 → 0.66-0.75; 64→256 at 56² with its
residual, 1.17-1.27 → 0.82-0.87; 128→512 at 28² with its residual, 1.06-1.14 → 0.76-0.82; 256→1024 at 14² with its
residual, 0.81-0.88 → 0.72-0.77; 512→2048 at 7², within the noise.

A 1×1 conv of a 28² map or more with fewer input channels (STRIPS_BELOW), or output channels no multiple of 16,
runs with its lanes along pixels instead (_strip: 8 output channels × STRIP pixels, each input row STRIP // 16 loads,
each weight a broadcast): its sums are the output rows as NCHW holds them, stored with no transpose, which for few
inputs cost as much as the sums (NCHW alone). Both write any output whose rows are contiguous (a view of a tile buffer
with room for a halo).

Both run every output block over a panel of pixels before the next panel (TILE_PANEL, PANEL), and a panel's first
block prefetches, a row each step of its loop, the inputs of the next (FETCH_FROM); every tile prefetches its weight
rows WEIGHTS_AHEAD bytes on. Tiles whose weights outweigh their inputs and a cache run each block over all the pixels
instead, and prefetch the next block's weights (WEIGHTS_STREAMED).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from . import vectors
from .derived import per_arguments, per_weights
from .threads import block
from .vectors import I32, I64, LANES, VB, VF, VI, address, clamp, fma, load, rowwise, scalar, splat, store, vector
from .window import window

# Pixels a tile computes, and the channel vectors it may (cb: the one that pads the output channels least): 14 × 2,
# 28 sums in registers. Rows of 14, 28, 56 and 112 are whole tiles, a longer run's last tile shifts back; rows of 7 to
# 13, and longer ones whose tiles would waste more than a quarter, are one run over the map that wraps from row to
# row (_wraps); narrower rows go to BLAS. On a core with two 512-bit FMA pipes (Intel Xeon, AVX-512) 7 × 3 left
# them waiting: 1024→256 1×1 at 14², 66 → 80 GMAC/s warm (7 × 3: 74). One thread, warm, against 7 × 2 (ms):
# 1024→256 at 14², 0.69-0.75 → 0.63-0.65; 512→512 3×3 at 7² (then), 2.44-2.47 → 2.26-2.30, and at stride 2 from
# 14², 3.03 → 2.27; but 256→256 3×3 at stride 2 from 14², 0.53-0.55 → 0.63.
PIX = 14
CBS = (2, 1)
ROWS = 8  # output channels a tile along pixels computes (cb = 0: _strip; 12 or 16: 5-35% slower on AMD Zen 4)
# Pixels such a strip computes, in STRIP // LANES vectors: ROWS × 2 = 16 sums (64→64 1×1 at 56², 57 → 74 GMAC/s warm;
# 48 pixels ran 64→256 faster, 64 → 72, but wastes a third of a 56-pixel row, a tile's row in the distributed run).
STRIP = 2 * LANES
# Input floats (256 KiB: a core's share of a Pi 4's L2, half a Pi 5's) of the pixels that every output block of
# _tiles runs over before the next pixels: each block sweeping the whole map read a 128² map's input once a block
# (ResNet-50 at 512²: 256→128 1×1, 15.3 → 11.3 ms; 256→512 at stride 2, 15.6 → 12.0; a 3×3 at 14², 1.8 → 1.4).
TILE_PANEL = 65536
# Input rows (cin·kh) from which a panel's first block prefetches the next panel's inputs, a row a step of its loop:
# a 1×1 conv reads as many planes at once as it has inputs, more streams than the hardware prefetcher follows. With
# caches cold: MobileNetV2's 96→24 at 128², 1.7 → 1.0 ms; 144→32 at 64², 0.63 → 0.48; 32→16 at 256², 1.48 → 1.13;
# 24→144 at 56², 0.40 → 0.34; ResNet-50's 256→64 at 128², 6.9 → 5.8. With 16 inputs (16→96) no gain (+2-4%, within
# the noise); on a panel's other blocks (the panel then in cache), a few percent lost.
FETCH_FROM = 24
# Bytes ahead at which a tile prefetches its weight rows (a line for each it reads a step). A conv's packed weights
# come from memory once an inference (ResNet-50's: 100 MB), and a block's first tile waited on each line: one thread,
# weights cold, 2048→512 1×1 at 7², 1.30-1.33 → 0.98 ms (ResNet-50's last stage; onnxruntime 0.67); 3×3 at 14²,
# 256→256 1.73-1.78 → 1.53-1.58, 512→512 7.7 → 6.1-6.4 (2048 bytes: 1.01-1.05, 1.54-1.69, 6.8-6.9; 8192 as 4096).
WEIGHTS_AHEAD = 4096
# Weights (floats, a thread's share) beyond an L2 (a Pi 4's 1 MiB, shared by its cores), from which every output block
# runs over all of a run's pixels before the next block, where they also outweigh the run's inputs: each panel of
# pixels read every block's weights from memory again (ResNet-50's 512→512 3×3 at 7², 4 panels of 14 pixels; in the
# model, where its weights come from memory: 2.55-2.87 → 2.15-2.36 ms). The tiles of a block after its first then
# prefetch the next block's weights (WEIGHTS), while theirs are in cache: its 2048→512 1×1 at 7², 0.98 → 0.85-0.92.
WEIGHTS_STREAMED = 1 << 18
INPUTS, WEIGHTS = 1, 2  # what a tile prefetches besides its own weight rows: the next panel's inputs, or its share of
# the next block's weights
RESUME = 3  # (in place of a fetch: a tile that resumes its partial sums, _chunks)
# Input channels a 3×3's block runs over all its tiles before the next, adding into partial sums kept per tile
# (_chunks), where its weights are streamed (WEIGHTS_STREAMED) over CHUNKS_FROM to CHUNKS_TO tiles: each tile otherwise
# read the block's weights (300-600 KB) from L2 again; onnxruntime's NCHWc conv runs 16 input channels at a time over
# every output row. One thread, in the model, per-node medians, three pairs of processes, ms: VGG-16's three 512→512 at
# 14², 23.5-24.5 → 19.6-20.5 (onnxruntime 17.8); ResNet-50's five 256→256 at 14², 8.8-9.4 → 8.3-8.8; at 512² its
# 512→512 at 16² (32 tiles) 18.6-19.5 → 17.5-19.1. At 7² (4 tiles) within the noise; at 32² (96 tiles) the partial
# sums outgrew a core's caches (VGG-16 at 512², 58.9-59.3 → 59.8-61.0). 16 channels a chunk ran as 64, ±3%.
CHUNK = 64
CHUNKS_FROM, CHUNKS_TO = 8, 32
PANEL = 16384  # input floats (64 KiB) of the pixels _strips runs every block over before it moves on
PIXELS_FROM = 28 * 28  # output pixels from which a 1×1 runs with its lanes along pixels (14²: within ±5%; 7²: slower)
STRIPS_BELOW = 256  # input channels below which such a 1×1 runs along pixels whatever its outputs (lanes())
NCHW, BLOCKED, FUSED = 0, 1, 2  # a tile's output: NCHW, channel-blocked, channel-blocked with a residual added
# Input channels (an image's) up to which a 3×3 conv may write a channel-blocked map (runs_blocked): MobileNetV2's RGB
# stem, 3→32 at stride 2, with the depthwise conv and the 32→16 projection after it then on blocked maps too, in the
# model, one thread (ms): from 224², 0.85-0.98 → 0.69-0.75; from 512², 4.4-4.9 → 3.7-3.8 (the stem alone, caches
# cold: 0.29-0.40 by rows.py → 0.27-0.30). A 3×3 of more inputs keeps NCHW, where Winograd reads it.
STEM_INPUTS = 4
WIDTHS = (1, 3, 7)  # kernel widths compiled (each its own unrolled taps; any height, but 1×1 alone 1 wide)
_HALF, _HALF_MASK = ir.VectorType(I32, 8), ir.VectorType(VB.element, 8)  # (a row of 8 pixels: its lanes, its mask)


def _transpose(builder: ir.IRBuilder, columns: list[ir.Value]) -> list[ir.Value]:
    """16 rows of 8 floats (channel c's 8 pixels) from 8 vectors of 16 (pixel q's 16 channels): three rounds of
    two-vector shuffles, each doubling the pixels a vector holds of each of its channels."""
    vals = [(v, [(q, c) for c in range(LANES)]) for q, v in enumerate(columns)]  # (vector, (pixel, channel) by lane)
    while len({c for _, c in vals[0][1]}) > 2:
        by_channels: dict[tuple, list] = {}
        for v, held in vals:
            by_channels.setdefault(tuple(sorted({c for _, c in held})), []).append((v, held))
        vals = []
        for chans, members in by_channels.items():
            members.sort(key=lambda m: min(q for q, _ in m[1]))
            for (a, ha), (b, hb) in zip(members[::2], members[1::2], strict=True):
                pixels = sorted({q for q, _ in ha + hb})
                for half in (chans[:len(chans) // 2], chans[len(chans) // 2:]):
                    want = [(q, c) for c in half for q in pixels]
                    lanes = [ha.index(x) if x in ha else LANES + hb.index(x) for x in want]
                    vals.append((builder.shuffle_vector(a, b, ir.Constant(VI, lanes)), want))
    rows = {}
    for v, held in vals:  # (each: two channels' 8 pixels)
        for h in (0, 1):
            rows[held[8 * h][1]] = builder.shuffle_vector(v, v, ir.Constant(_HALF, list(range(8 * h, 8 * h + 8))))
    return [rows[c] for c in range(LANES)]


@intrinsic(prefer_literal=True)
def _tile(typingctx, cb, kw, fetch, wraps, chans, output, w, x, cpitch, rpitch, kh, cin, s, b, out, opitch, res, rcs,
          rjump, n, cn, ahead, brk, width, ijump, ojump, lo, hi):
    """For c < cn ≤ 16·cb and q < n ≤ PIX: out[c·opitch + q + k·ojump] = clamp(b[c] + Σ w[((i·kh + ky)·kw + kx)·16·cb
    + c] · x[i·cpitch + ky·rpitch + kx + q·s + k·ijump], lo, hi) over i < cin, ky < kh, kx < kw, where k = (q ≥ brk) +
    (q ≥ brk + width) (addresses; cb, kw, fetch and wraps constants, literals: each its own code): output channels c
    of one block, pixels q of one run, which from pixel brk on wraps onto the rows below (k: rows down; wraps False: k
    = 0, none). fetch: each input row read also prefetched `ahead` bytes on (the next panel's); with RESUME instead
    the sums start from partial sums a call before stored (BLOCKED, opitch PIX, ojump 0) at address `ahead`, not from
    b: the same sums, in the same order, as one call over all the rows (_chunks).
    chans 16 (channel-blocked input: blocked()), a 1×1 conv's (kw, kh 1): channel i of x at (i // 16)·cpitch + i %
    16, pixel q at q·s (s then 16 floats a pixel); bout: the output channel-blocked, vector v of the sums at
    16·v·opitch + 16·(q + k·ojump), stored as it is (no transpose); output FUSED: so, with a residual, channel-blocked,
    added before the clamp, its vector at res + 16·(v·rcs + q + k·rjump)."""
    constants = (cb, kw, fetch, wraps, chans, output)
    if not all(isinstance(t, (types.IntegerLiteral, types.BooleanLiteral)) for t in constants):
        raise TypeError(f"blocked._tile: cb, kw, fetch, wraps, chans and output must be compile-time constants, "
                        f"not {constants}")
    sig = types.void(*constants, w, x, cpitch, rpitch, kh, cin, s, b, out, opitch, res, rcs, rjump, n, cn, ahead, brk,
                     width, ijump, ojump, lo, hi)
    cb, kw, fetch, wraps, chans, output = (t.literal_value for t in constants)
    bout, fused, resume = output != NCHW, output == FUSED, fetch == RESUME

    def codegen(context, builder, signature, args):
        w, x, cpitch, rpitch, kh, cin, s, b, out, opitch, res, rcs, rjump, n, cn, ahead, brk, width, ijump, ojump = (
            context.cast(builder, a, t, types.int64) for a, t in zip(args[6:26], signature.args[6:26], strict=True))
        lo, hi = args[26:]
        # Pixel q reads column q·s of its run, k·ijump floats on past its k-th row break; past n (a run shorter than
        # a tile) it reads pixel n-1 again (nothing past the run is read) and is not stored. (_tiles passes whole
        # tiles that don't wrap n = PIX, a constant, and no breaks: with a variable n or the breaks in the offsets,
        # LLVM gave each pixel its own pointer, stepped and spilled every step, and ResNet-50's 1×1s along channels
        # ran 20-35% slower; tiles that wrap, and short ones, run that code.)
        last = builder.sub(n, I64(1))
        second = builder.add(brk, width)  # (the pixel of the second row break)
        offsets = []
        for q in range(PIX):
            qq = builder.select(builder.icmp_signed("<", I64(q), n), I64(q), last)
            if wraps:
                k = builder.add(builder.zext(builder.icmp_signed(">=", qq, brk), I64),
                                builder.zext(builder.icmp_signed(">=", qq, second), I64))
                qq = builder.add(builder.mul(qq, s), builder.mul(k, ijump))
            else:
                qq = builder.mul(qq, s)
            offsets.append(builder.mul(qq, I64(4)))
        # The loop runs over the input rows the taps read, i < cin·kh (channel i // kh, kernel row ky = i % kh): `at`
        # steps a row down, or at the last kernel row on to the next channel's first. (kw = 1: a 1×1 conv, kh = 1,
        # takes(); there every step is on to the next channel, with no kernel row to count: on two threads
        # MobileNetV2's 16→96 at 112² ran 20-30% slower with the count.)
        # (chans 16, a 1×1 conv's: on to the next channel of the block, 1 float on, or from a block's last channel
        # to the next block's first)
        back = builder.mul(rpitch, builder.sub(kh, I64(1)))
        down, on = builder.mul(rpitch, I64(4)), builder.mul(builder.sub(cpitch, back), I64(4))
        if chans > 1:
            on = builder.sub(on, I64(4 * (chans - 1)))
        start = [[vector(builder, builder.add(b, I64(4 * LANES * v))) for v in range(cb)]] * PIX
        if resume:
            start = [[vector(builder, builder.add(ahead, I64(4 * LANES * (v * PIX + q)))) for v in range(cb)]
                     for q in range(PIX)]
        entry, loop, done = builder.block, builder.append_basic_block("k"), builder.append_basic_block("done")
        builder.branch(loop)
        builder.position_at_end(loop)  # acc[q][v] += w[i, kx, 16v:16v+16] · x[at + kx + q·s], each kx < kw
        i, at = builder.phi(I64), builder.phi(I64)
        ky = builder.phi(I64) if kw > 1 else None
        j = builder.phi(I64) if chans > 1 else None  # (the channel within its block)
        accs = [[builder.phi(VF) for _ in range(cb)] for _ in range(PIX)]
        row_w = builder.add(w, builder.mul(i, I64(4 * LANES * cb * kw)))
        sums = [list(a) for a in accs]
        if fetch == INPUTS and j is None:  # (the row's first and last pixels: at a stride of 2 a tile's 14 span
            # two lines)
            vectors.prefetch(builder, builder.add(at, ahead))
            vectors.prefetch(builder, builder.add(at, builder.add(ahead, offsets[PIX - 1])))
        elif fetch == INPUTS:  # (a block's channels share their 14 lines, a pixel's each: channel j's step fetches
            # pixel j's)
            vectors.prefetch(builder, builder.add(at, builder.add(ahead, builder.mul(j, I64(4 * (LANES - 1))))))
        elif fetch == WEIGHTS:  # (kw lines a step of the next block's weights, its share of them `ahead` bytes on)
            share = builder.add(builder.add(w, ahead), builder.mul(i, I64(64 * kw)))
            for u in range(kw):
                vectors.prefetch(builder, builder.add(share, I64(64 * u)))
        for u in range(cb * kw):  # (the weight rows WEIGHTS_AHEAD bytes on, a line per line this step reads)
            vectors.prefetch(builder, builder.add(row_w, I64(WEIGHTS_AHEAD + 64 * u)))
        for kx in range(kw):
            weights = [vector(builder, builder.add(row_w, I64(4 * LANES * (cb * kx + v)))) for v in range(cb)]
            for q in range(PIX):
                pixel = splat(builder, scalar(builder, builder.add(at, offsets[q]), kx), VF)
                sums[q] = [fma(builder, pixel, weights[v], sums[q][v]) for v in range(cb)]
        following = builder.add(i, I64(1))
        steps = [(at, x, builder.add(at, on))]
        if j is not None:
            beyond = builder.add(j, I64(1))
            last = builder.icmp_signed("==", beyond, I64(chans))
            steps = [(j, I64(0), builder.select(last, I64(0), beyond)),
                     (at, x, builder.add(at, builder.select(last, on, I64(4))))]
        elif ky is not None:
            below = builder.add(ky, I64(1))
            wrap = builder.icmp_signed("==", below, kh)
            steps = [(at, x, builder.add(at, builder.select(wrap, on, down))),
                     (ky, I64(0), builder.select(wrap, I64(0), below))]
        for phi, first, then in [(i, I64(0), following), *steps]:
            phi.add_incoming(first, entry)
            phi.add_incoming(then, builder.block)
        for q in range(PIX):
            for v in range(cb):
                accs[q][v].add_incoming(start[q][v], entry)
                accs[q][v].add_incoming(sums[q][v], builder.block)
        builder.cbranch(builder.icmp_signed("<", following, builder.mul(cin, kh)), loop, done)
        builder.position_at_end(done)
        _store(builder, sums, cb, bout, n, cn, out, opitch, lo, hi, (brk, second, ojump, rjump) if wraps else None,
               (res, rcs) if fused else None)
        return context.get_dummy_value()

    return sig, codegen


def _store(builder: ir.IRBuilder, sums: list[list[ir.Value]], cb: int, bout: bool, n: ir.Value, cn: ir.Value,
           out: ir.Value, opitch: ir.Value, lo: ir.Value, hi: ir.Value, breaks: tuple[ir.Value, ...] | None,
           residual: tuple[ir.Value, ir.Value] | None) -> None:
    """A tile's sums clamped, transposed and stored: channel c < cn of pixel q < n at out[c·opitch + q + k·ojump],
    k the row breaks (brk, second) at or before q (breaks None: none); bout: channel-blocked, each pixel's vector v
    (its channels 16·v on, stored if below cn) as it is, at out[16·(v·opitch + q + k·ojump)], plus, if `residual`
    (res, rcs) is given, the residual's vector at res[16·(v·rcs + q + k·rjump)], before the clamp."""
    if bout:
        for q in range(PIX):
            at = rat = I64(4 * LANES * q)
            if breaks is not None:
                brk, second, ojump, rjump = breaks
                k = builder.add(builder.zext(builder.icmp_signed("<=", brk, I64(q)), I64),
                                builder.zext(builder.icmp_signed("<=", second, I64(q)), I64))
                at = builder.add(at, builder.mul(builder.mul(k, ojump), I64(4 * LANES)))
                rat = builder.add(rat, builder.mul(builder.mul(k, rjump), I64(4 * LANES)))
            stored = builder.icmp_signed("<", I64(q), n)
            for v in range(cb):
                mask = splat(builder, builder.and_(stored, builder.icmp_signed("<", I64(LANES * v), cn)), VB)
                value = sums[q][v]
                if residual is not None:
                    res, rcs = residual
                    where = builder.add(res, builder.add(rat, builder.mul(rcs, I64(4 * LANES * v))))
                    value = builder.fadd(value, load(builder, where, mask, 0.0))
                offset = builder.add(at, builder.mul(opitch, I64(4 * LANES * v)))
                store(builder, clamp(builder, value, lo, hi), builder.add(out, offset), mask)
        return
    for q0 in range(0, PIX, 8):  # (8 pixels at a time: pixels q0..q0+7 of each output channel, a row of 8)
        lanes = ir.Constant(_HALF, list(range(q0, q0 + 8)))
        pixels = builder.icmp_signed("<", lanes, splat(builder, builder.trunc(n, I32), _HALF))
        parts = [(pixels, I64(0))]
        if breaks is not None:  # (its pixels before the first row break, between the two, past the second)
            brk, second, ojump, _ = breaks
            k = [builder.icmp_signed(">=", lanes, splat(builder, builder.trunc(q, I32), _HALF)) for q in (brk, second)]
            parts = [(builder.and_(pixels, m), builder.mul(ojump, I64(4 * j))) for j, m in enumerate((
                builder.not_(k[0]), builder.and_(k[0], builder.not_(k[1])), k[1]))]
        for v in range(cb):
            rows = _transpose(builder, [clamp(builder, sums[min(q0 + q, PIX - 1)][v], lo, hi) for q in range(8)])
            for c, row in enumerate(rows):
                channel = LANES * v + c
                inside = splat(builder, builder.icmp_signed("<", I64(channel), cn), _HALF_MASK)
                offset = builder.add(builder.mul(opitch, I64(4 * channel)), I64(4 * q0))
                for mask, shift in parts:
                    store(builder, row, builder.add(out, builder.add(offset, shift)), builder.and_(mask, inside))


@intrinsic(prefer_literal=True)
def _strip(typingctx, fetch, w, x, cpitch, cin, b, out, opitch, n, ahead, lo, hi):
    """For c < ROWS and q < n ≤ STRIP: out[c·opitch + q] = clamp(b[c] + Σ w[i·ROWS + c] · x[i·cpitch + q], lo, hi)
    over i < cin (addresses): a 1×1 conv's STRIP pixels of one run × ROWS output channels, the lanes along the pixels.
    Each input row is STRIP // 16 (masked) loads, each weight a broadcast; the sums are the output rows as they lie in
    NCHW, stored with no transpose (for few input channels the transposed stores of _tile cost as much as its sums).
    fetch (a constant): each input row read also prefetched `ahead` bytes on."""
    if not isinstance(fetch, types.BooleanLiteral):
        raise TypeError(f"blocked._strip: fetch must be a compile-time constant, not {fetch}")
    sig = types.void(fetch, w, x, cpitch, cin, b, out, opitch, n, ahead, lo, hi)
    fetch = fetch.literal_value

    def codegen(context, builder, signature, args):
        w, x, cpitch, cin, b, out, opitch, n, ahead = (
            context.cast(builder, a, t, types.int64) for a, t in zip(args[1:10], signature.args[1:10], strict=True))
        lo, hi = args[10:]
        vecs = STRIP // LANES
        masks = [builder.icmp_signed("<", ir.Constant(VI, list(range(LANES * u, LANES * u + LANES))),
                                     splat(builder, builder.trunc(n, I32), VI)) for u in range(vecs)]
        start = [splat(builder, scalar(builder, b, c), VF) for c in range(ROWS)]
        entry, loop, done = builder.block, builder.append_basic_block("k"), builder.append_basic_block("done")
        builder.branch(loop)
        builder.position_at_end(loop)  # acc[c][u] += w[i, c] · x[i, 16u:16u+16]
        i, at, row_w = builder.phi(I64), builder.phi(I64), builder.phi(I64)
        accs = [[builder.phi(VF) for _ in range(vecs)] for _ in range(ROWS)]
        # (nothing past the run is read)
        inputs = [load(builder, builder.add(at, I64(4 * LANES * u)), masks[u], 0.0) for u in range(vecs)]
        for u in range(vecs if fetch else 0):  # (a line per vector: one line of two left 64→64 at 56² cold 1.25×)
            vectors.prefetch(builder, builder.add(at, builder.add(ahead, I64(4 * LANES * u))))
        weights = [splat(builder, scalar(builder, row_w, c), VF) for c in range(ROWS)]
        sums = [[fma(builder, weights[c], inputs[u], accs[c][u]) for u in range(vecs)] for c in range(ROWS)]
        following = builder.add(i, I64(1))
        for phi, first, then in ((i, I64(0), following), (at, x, builder.add(at, builder.mul(cpitch, I64(4)))),
                                 (row_w, w, builder.add(row_w, I64(4 * ROWS)))):
            phi.add_incoming(first, entry)
            phi.add_incoming(then, builder.block)
        for c in range(ROWS):
            for u in range(vecs):
                accs[c][u].add_incoming(start[c], entry)
                accs[c][u].add_incoming(sums[c][u], builder.block)
        builder.cbranch(builder.icmp_signed("<", following, cin), loop, done)
        builder.position_at_end(done)
        for c in range(ROWS):
            for u in range(vecs):
                store(builder, clamp(builder, sums[c][u], lo, hi),
                      builder.add(out, builder.add(builder.mul(opitch, I64(4 * c)), I64(4 * LANES * u))), masks[u])
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, inline="always")
def _panel(floats, width, step):
    """Pixels in a panel: whole tiles of `width` pixels, as many as have their inputs (`step` floats a pixel) within
    `floats`, one at least."""
    return max(1, floats // step // width) * width


@njit(cache=True, inline="always")
def _streamed(weights, inputs):
    """Whether the blocks of _tiles with these weights (floats) each run over all the pixels whose inputs (floats)
    they read, and prefetch the next block's weights (WEIGHTS_STREAMED)."""
    return weights > max(WEIGHTS_STREAMED, inputs)


@njit(cache=True, inline="always")
def _share(t, cb, rows, kw):
    """Bytes from a block's weights (rows · kw · cb lines) to the share of the next block's that its tile t prefetches,
    kw lines a step of its loop over rows (cin·kh): tiles 1 to cb, a cb-th each; 0 for the others (none)."""
    return 64 * rows * kw * (cb + t - 1) if 0 < t <= cb else 0


@njit(cache=True, inline="always")
def _ahead(floats, kh, cin, more):
    """How far ahead (bytes) the first block over a panel of pixels prefetches the next panel's inputs, `floats` on:
    not at all (0) for fewer than FETCH_FROM input rows (cin·kh), nor on a run's last panel (more False)."""
    return 4 * floats if cin * kh >= FETCH_FROM and more else 0


@njit(cache=True, inline="always")
def _strips(w, b, x, cs, cin, out, ocs, ors, b0, b1, rstep, r0, r1, q0, q1, lo, hi):
    """Blocks [b0, b1) of ROWS output channels, pixels [q0, q1) of runs [r0, r1) of a 1×1 conv at stride 1, by
    _strip: pixel q of run r reads x from r·rstep + q on and writes out at r·ors + q. A panel of pixels whose inputs
    fit PANEL serves every block in turn, each block's ROWS output rows written in order (a strip at a time across
    every block wrote 96 rows at once: MobileNetV2's 1×1s at 512², 42 → 52 ms)."""
    panel = _panel(PANEL, STRIP, cin)
    for r in range(r0, r1):
        xr, orow = x + 4 * r * rstep, out + 4 * r * ors
        for p0 in range(q0, q1, panel):
            ahead = _ahead(panel, 1, cin, p0 + panel < q1)
            for blk in range(b0, b1):
                wb, bb, ob = w + 4 * blk * cin * ROWS, b + 4 * blk * ROWS, orow + 4 * blk * ROWS * ocs
                for p in range(p0, min(q1, p0 + panel), STRIP):
                    xp, op, n = xr + 4 * p, ob + 4 * p, min(STRIP, q1 - p)
                    if blk == b0 and ahead:  # (fetch a literal: each branch its own loop)
                        _strip(True, wb, xp, cs, cin, bb, op, ocs, n, ahead, lo, hi)
                    else:
                        _strip(False, wb, xp, cs, cin, bb, op, ocs, n, 0, lo, hi)


@njit(cache=True, inline="always")
def _tiles(cb, kh, kw, chans, output, w, b, x, cs, rs, cin, s, out, ocs, ors, res, rcs, rrs, cout, b0, b1,
           rstep, width, r0, r1, q0, q1, lo, hi):
    """Output channel blocks [b0, b1) (16·cb channels each), pixels [q0, q1) of runs [r0, r1): pixel q of run r reads x
    from r·rstep + q·s pixels on (channels cs apart, rows rs apart) and writes out at r·ors + q (channels ocs apart),
    or, in a run that wraps onto the rows below every `width` pixels (one run, r = 0), pixel q = y·width + z of it at
    y·rstep + z·s and y·ors + z (a run that never wraps: `width` its own length, y = 0); every block in turn over a
    panel of pixels whose inputs fit TILE_PANEL, or, where the weights outweigh the inputs (_streamed), over all the
    pixels, tiles 1 to cb prefetching the next block's weights (_share). The last tile of a run of PIX or more starts
    PIX before its end (its pixels computed twice, to the same bits). rstep, rs and ors count floats; a pixel of the
    input is `chans` floats (16: channel-blocked, cs then floats between blocks), of the output 16 if it is
    channel-blocked (output BLOCKED or FUSED; ocs then floats between blocks / 16); FUSED: a channel-blocked residual
    res added, laid out by rcs and rrs as out by ocs and ors."""
    lanes, ipx, opx = LANES * cb, chans, 1 if output == NCHW else LANES
    streamed = _streamed((b1 - b0) * lanes * cin * kh * kw, cin * s * (q1 - q0) * (r1 - r0))
    panel = max(q1 - q0, PIX) if streamed else _panel(TILE_PANEL, PIX, cin * kh * kw * s)
    sx = s * ipx  # (floats from an input pixel to the next's)
    ijump, ojump = rstep - width * sx, ors - width * opx  # (floats from a row's end to the next row's start)
    rjump = rrs - width * opx
    for r in range(r0, r1):
        xr = x + 4 * r * rstep
        for p0 in range(q0, q1, panel):
            ahead = _ahead(panel // width * rstep + panel % width * sx, kh, cin, p0 + panel < q1)
            for blk in range(b0, b1):
                c0 = blk * lanes
                cn, wb, bb = min(lanes, cout - c0), w + 4 * blk * cin * kh * kw * lanes, b + 4 * c0
                orow, rrow = out + 4 * (c0 * ocs + r * ors), res + 4 * (c0 * rcs + r * rrs)
                for p in range(p0, min(q1, p0 + panel), PIX):
                    q = max(q0, min(p, q1 - PIX))
                    y, z = q // width, q % width
                    xq, oq, n = xr + 4 * (y * rstep + z * sx), orow + 4 * (y * ors + z * opx), min(PIX, q1 - q)
                    rq = rrow + 4 * (y * rrs + z * opx)
                    # (fetch, wraps and a whole tile's n literals: each branch its own loop; a tile that wraps, or
                    # one shorter than PIX, fetches no inputs)
                    share = _share((p - p0) // PIX, cb, cin * kh, kw) if streamed and blk + 1 < b1 else 0
                    if width - z < n or n < PIX:
                        brk = min(width - z, PIX)  # (n or more: no break, as in a short run that never wraps)
                        if share:
                            _tile(cb, kw, WEIGHTS, True, chans, output, wb, xq, cs, rs, kh, cin, sx, bb, oq, ocs,
                                  rq, rcs, rjump // opx, n, cn, share, brk, min(width, PIX), ijump, ojump // opx, lo,
                                  hi)
                        else:
                            _tile(cb, kw, 0, True, chans, output, wb, xq, cs, rs, kh, cin, sx, bb, oq, ocs,
                                  rq, rcs, rjump // opx, n, cn, 0, brk, min(width, PIX), ijump, ojump // opx, lo, hi)
                    elif blk == b0 and ahead:
                        _tile(cb, kw, INPUTS, False, chans, output, wb, xq, cs, rs, kh, cin, sx, bb, oq, ocs,
                              rq, rcs, 0, PIX, cn, ahead, 0, 0, 0, 0, lo, hi)
                    elif share:
                        _tile(cb, kw, WEIGHTS, False, chans, output, wb, xq, cs, rs, kh, cin, sx, bb, oq, ocs,
                              rq, rcs, 0, PIX, cn, share, 0, 0, 0, 0, lo, hi)
                    else:
                        _tile(cb, kw, 0, False, chans, output, wb, xq, cs, rs, kh, cin, sx, bb, oq, ocs,
                              rq, rcs, 0, PIX, cn, 0, 0, 0, 0, 0, lo, hi)


@njit(cache=True, inline="always")
def _chunks(w, b, x, cs, rs, cin, s, out, ocs, ors, acc, chunk, cout, b0, b1, rstep, width, r0, r1, q0, q1, lo, hi):
    """_tiles of a 3×3 from NCHW to NCHW, 2 vectors a tile, over every pixel of runs [r0, r1) (threads split the
    blocks alone), its input channels in chunks of `chunk`: each block runs a chunk over all its tiles before the
    next, every tile keeping its partial sums between chunks (RESUME) in its own slot of acc (PIX × 32 floats a tile,
    a block's tiles in a row); the last chunk stores the tile. A run's last tile is short, not shifted back (its
    slot's pixels would be another tile's)."""
    lanes, inf = 2 * LANES, np.float32(np.inf)
    ijump, ojump = rstep - width * s, ors - width
    tiles = (r1 - r0) * -(-(q1 - q0) // PIX)  # (a block's)
    for blk in range(b0, b1):
        cn, bb = min(lanes, cout - blk * lanes), b + 4 * blk * lanes
        for c0 in range(0, cin, chunk):
            cc, wc, last = min(chunk, cin - c0), w + 4 * (blk * cin + c0) * 9 * lanes, c0 + chunk >= cin
            t = blk * tiles
            for r in range(r0, r1):
                xr, orow = x + 4 * (r * rstep + c0 * cs), out + 4 * (blk * lanes * ocs + r * ors)
                for q in range(q0, q1, PIX):
                    n, y, z = min(PIX, q1 - q), q // width, q % width
                    xq, oq, slot = xr + 4 * (y * rstep + z * s), orow + 4 * (y * ors + z), acc + 4 * lanes * PIX * t
                    t += 1
                    # (the stages, and wrapping or not, literals: each branch its own loop)
                    if width - z < n or n < PIX:
                        brk, wide = min(width - z, PIX), min(width, PIX)
                        if c0 == 0:
                            _tile(2, 3, 0, True, 1, BLOCKED, wc, xq, cs, rs, 3, cc, s, bb, slot, PIX, 0, 0, 0, n, cn,
                                  0, brk, wide, ijump, 0, -inf, inf)
                        elif not last:
                            _tile(2, 3, RESUME, True, 1, BLOCKED, wc, xq, cs, rs, 3, cc, s, bb, slot, PIX, 0, 0, 0, n,
                                  cn, slot, brk, wide, ijump, 0, -inf, inf)
                        else:
                            _tile(2, 3, RESUME, True, 1, NCHW, wc, xq, cs, rs, 3, cc, s, bb, oq, ocs, 0, 0, 0, n, cn,
                                  slot, brk, wide, ijump, ojump, lo, hi)
                    elif c0 == 0:
                        _tile(2, 3, 0, False, 1, BLOCKED, wc, xq, cs, rs, 3, cc, s, bb, slot, PIX, 0, 0, 0, PIX, cn, 0,
                              0, 0, 0, 0, -inf, inf)
                    elif not last:
                        _tile(2, 3, RESUME, False, 1, BLOCKED, wc, xq, cs, rs, 3, cc, s, bb, slot, PIX, 0, 0, 0, PIX,
                              cn, slot, 0, 0, 0, 0, -inf, inf)
                    else:
                        _tile(2, 3, RESUME, False, 1, NCHW, wc, xq, cs, rs, 3, cc, s, bb, oq, ocs, 0, 0, 0, PIX, cn,
                              slot, 0, 0, 0, 0, lo, hi)


@njit(cache=True, inline="always")
def _ones(chans, output, cb, kh, w, b, x, cs, rs, cin, s, out, ocs, ors, res, rcs, rrs, cout, b0, b1, rstep, width,
          r0, r1, q0, q1, lo, hi):
    """_tiles of a 1×1 conv with cb as a constant, a copy of the loops each, at stride s from NCHW to NCHW, else at
    stride 1 (over its gathered pixels, if any; the only convs the channel-blocked layouts run): that constant kept
    LLVM from holding a tile's 14 pixel offsets in registers, spilling them or the sums and reloading them every
    step, as it did with the stride passed (256→1024 at 14², blocked to blocked 2.3 ms, NCHW to blocked 2.1, against
    NCHW's 0.76)."""
    s = s if chans == 1 and output == NCHW else 1
    if cb == 2:
        _tiles(2, kh, 1, chans, output, w, b, x, cs, rs, cin, s, out, ocs, ors, res, rcs, rrs, cout, b0, b1, rstep,
               width, r0, r1, q0, q1, lo, hi)
    else:
        _tiles(1, kh, 1, chans, output, w, b, x, cs, rs, cin, s, out, ocs, ors, res, rcs, rrs, cout, b0, b1, rstep,
               width, r0, r1, q0, q1, lo, hi)


@njit(cache=True, inline="always")
def _widths(cb, kh, kw, w, b, x, cs, rs, cin, s, out, ocs, ors, acc, chunk, cout, b0, b1, rstep, width, r0, r1, q0,
            q1, lo, hi):
    """_tiles from NCHW to NCHW with cb and the kernel width kw as constants, a copy of the loops per pair
    (WIDTHS); a 3×3 given a chunk of input channels (and its partial sums' buffer acc) by _chunks."""
    if kw == 1:
        _ones(1, NCHW, cb, kh, w, b, x, cs, rs, cin, s, out, ocs, ors, 0, 0, 0, cout, b0, b1, rstep, width, r0, r1, q0,
              q1, lo, hi)
    elif cb == 2 and kw == 3 and chunk:
        _chunks(w, b, x, cs, rs, cin, s, out, ocs, ors, acc, chunk, cout, b0, b1, rstep, width, r0, r1, q0, q1, lo, hi)
    elif cb == 2 and kw == 3:
        _tiles(2, kh, 3, 1, NCHW, w, b, x, cs, rs, cin, s, out, ocs, ors, 0, 0, 0, cout, b0, b1, rstep, width, r0, r1,
               q0, q1, lo, hi)
    elif kw == 3:
        _tiles(1, kh, 3, 1, NCHW, w, b, x, cs, rs, cin, s, out, ocs, ors, 0, 0, 0, cout, b0, b1, rstep, width, r0, r1,
               q0, q1, lo, hi)
    elif cb == 2:
        _tiles(2, kh, 7, 1, NCHW, w, b, x, cs, rs, cin, s, out, ocs, ors, 0, 0, 0, cout, b0, b1, rstep, width, r0, r1,
               q0, q1, lo, hi)
    else:
        _tiles(1, kh, 7, 1, NCHW, w, b, x, cs, rs, cin, s, out, ocs, ors, 0, 0, 0, cout, b0, b1, rstep, width, r0, r1,
               q0, q1, lo, hi)


@njit(cache=True)
def _work(x, out, res, rcs, rrs, chans, output, cb, kh, kw, w, b, cs, rs, cin, s, ocs, ors, cout, b0, b1, rstep,
          width, r0, r1, q0, q1, lo, hi):
    """_tiles for inputs `chans` floats a pixel (1: NCHW; 16: channel-blocked) and outputs NCHW, BLOCKED or FUSED
    (blocked, a blocked residual added in the kernel), each its own copy of the loops: from NCHW to NCHW any width
    (_widths; cb = 0: a 1×1 conv by _strips, lanes along pixels), else a 1×1 (_ones). The input, output and
    residual addresses and the residual's pitches first, as a launcher() passes them."""
    if chans == 1 and output == NCHW and cb == 0:
        _strips(w, b, x, cs, cin, out, ocs, ors, b0, b1, rstep, r0, r1, q0, q1, lo, hi)
    elif chans == 1 and output == NCHW:  # (res and rcs: a 3×3's partial sums' buffer and chunk, _chunks)
        _widths(cb, kh, kw, w, b, x, cs, rs, cin, s, out, ocs, ors, res, rcs, cout, b0, b1, rstep, width, r0, r1, q0,
                q1, lo, hi)
    elif chans == 1 and output == BLOCKED and kw == 3 and cb == 2:  # (an RGB stem: runs_blocked)
        _tiles(2, kh, 3, 1, BLOCKED, w, b, x, cs, rs, cin, s, out, ocs, ors, 0, 0, 0, cout, b0, b1, rstep, width, r0,
               r1, q0, q1, lo, hi)
    elif chans == 1 and output == BLOCKED and kw == 3:
        _tiles(1, kh, 3, 1, BLOCKED, w, b, x, cs, rs, cin, s, out, ocs, ors, 0, 0, 0, cout, b0, b1, rstep, width, r0,
               r1, q0, q1, lo, hi)
    elif chans == 1 and output == BLOCKED:
        _ones(1, BLOCKED, cb, kh, w, b, x, cs, rs, cin, s, out, ocs, ors, res, rcs, rrs, cout, b0, b1, rstep, width,
              r0, r1, q0, q1, lo, hi)
    elif chans == 1:
        _ones(1, FUSED, cb, kh, w, b, x, cs, rs, cin, s, out, ocs, ors, res, rcs, rrs, cout, b0, b1, rstep, width, r0,
              r1, q0, q1, lo, hi)
    elif output == NCHW:
        _ones(LANES, NCHW, cb, kh, w, b, x, cs, rs, cin, s, out, ocs, ors, res, rcs, rrs, cout, b0, b1, rstep, width,
              r0, r1, q0, q1, lo, hi)
    elif output == BLOCKED:
        _ones(LANES, BLOCKED, cb, kh, w, b, x, cs, rs, cin, s, out, ocs, ors, res, rcs, rrs, cout, b0, b1, rstep,
              width, r0, r1, q0, q1, lo, hi)
    else:
        _ones(LANES, FUSED, cb, kh, w, b, x, cs, rs, cin, s, out, ocs, ors, res, rcs, rrs, cout, b0, b1, rstep, width,
              r0, r1, q0, q1, lo, hi)


@njit(cache=True, parallel=True)
def _run(x, out, res, rcs, rrs, chans, output, cb, kh, kw, w, b, cs, rs, cin, s, ocs, ors, cout, rstep, width, runs,
         run, ntb, ntp, lo, hi):
    """_work on ntb blocks of output channel blocks × ntp blocks of the runs (or of the one run's pixels), one per
    thread."""
    nb = -(-cout // (LANES * cb)) if cb else cout // ROWS
    for t in prange(ntb * ntp):
        b0, b1 = block(nb, t % ntb, ntb)
        r0, r1, q0, q1 = 0, runs, 0, run
        if runs > 1:
            r0, r1 = block(runs, t // ntb, ntp)
        else:
            q0, q1 = block(run, t // ntb, ntp)
        _work(x, out, res, rcs, rrs, chans, output, cb, kh, kw, w, b, cs, rs, cin, s, ocs, ors, cout, b0, b1, rstep,
              width, r0, r1, q0, q1, lo, hi)


def _cb(cout: int) -> int:
    """The channel vectors a tile computes for cout output channels: the fewest padded channels, then the most
    vectors (64 → 2, 960 → 2, 48 → 1)."""
    return min(CBS, key=lambda cb: (-(-cout // (LANES * cb)) * cb, -cb))


@per_weights
def _packed(w: np.ndarray) -> np.ndarray:
    """Weights (cout, cin, kh, kw) as (blocks, cin·kh·kw, 16·cb): a block's weight rows contiguous, zero past
    cout."""
    cout, k = w.shape[0], w[0].size
    lanes = LANES * _cb(cout)
    blocks = -(-cout // lanes)
    padded = np.zeros((blocks * lanes, k), np.float32)
    padded[:cout] = w.reshape(cout, k)
    return np.ascontiguousarray(padded.reshape(blocks, lanes, k).transpose(0, 2, 1))


@per_weights
def _rows_packed(w: np.ndarray) -> np.ndarray:
    """1×1 weights (cout, cin, 1, 1), cout a multiple of ROWS, as (cout / ROWS, cin, ROWS) for _strip."""
    cout, cin = w.shape[:2]
    return np.ascontiguousarray(w.reshape(cout // ROWS, ROWS, cin).transpose(0, 2, 1), np.float32)


@per_weights
def _padded(b: np.ndarray) -> np.ndarray:
    """Bias b with zeros past its end for a last, partial block (reads never pass 16·max(CBS) floats beyond)."""
    return np.concatenate([np.asarray(b, np.float32), np.zeros(LANES * max(CBS), np.float32)])


def takes(w_shape: tuple[int, ...], groups: int, stride: tuple[int, int], pads: tuple[int, int, int, int],
          dilation: tuple[int, int], x: np.ndarray, out_hw: tuple[int, int], pitch: int | None = None) -> bool:
    """Whether conv() computes this conv into an NCHW output whose rows lie `pitch` pixels apart (None: back to
    back)."""
    return lanes(w_shape, groups, stride, pads, dilation, x, out_hw, pitch) >= 0


def lanes(w_shape: tuple[int, ...], groups: int, stride: tuple[int, int], pads: tuple[int, int, int, int],
          dilation: tuple[int, int], x: np.ndarray, out_hw: tuple[int, int], pitch: int | None = None,
          bout: bool = False) -> int:
    """How conv() runs this conv into an output whose rows lie `pitch` pixels apart (None: back to back),
    channel-blocked if bout: -1 not at all, 0 lanes along pixels (_strip), else lanes along output channels (cb,
    _tile). A channel-blocked input (blocked()) or output runs along output channels alone, where the rest of these
    rules let it (a 3×3 of an NCHW map may write one too; runs_blocked lets RGB stems). On a vector host, for x float32
    with its rows contiguous, a conv of one group without dilation:
    - a 1×1 at stride 1 (or at a stride, over its gathered pixels) with no padding, output channels a multiple of
      ROWS, an output of 28² or more, and fewer
      than STRIPS_BELOW input channels (along channels the transposed stores cost a share of the sums that grows as
      the inputs shrink) or output channels no multiple of 16 (along channels, vectors partly empty): along pixels,
      on runs whose strips of STRIP pixels waste at most a quarter. MobileNetV2's 16→96 at 112²: 0.65 → 0.41 ms, at
      256² 7.4-7.7 → 2.5-2.9; its 96→24 at 56², which BLAS ran, 0.19 → 0.16. From 32 to 255 inputs (one thread, caches
      cold / warm, one process, along channels → along pixels): 32→192 at 64² 1.07 → 0.68 / 0.57 → 0.47 ms; 64→256
      at 56² 1.46 → 1.19 / 1.23 → 1.09, at 128² 6.9 → 5.8 / 7.3 → 5.8; 128→512 at 64² 6.6 → 6.2 / 5.9 → 5.3.
      From 256 on, either way by up to 5-10% (256→64 at 56² 0.89-0.95 of the time; 256→128 at 128² 0.99-1.05,
      256→1024 at 32² 1.03-1.04; 512→128 at 64², 1024→256 at 32² within ±5%): along channels;
    - else a kernel width compiled (WIDTHS; of those 1 wide, 1×1 alone), output channels a multiple of 16 (from a
      blocked input into an NCHW output, also as _padded_out() lets them), runs whose
      tiles waste at most a quarter of their pixels (rows of 14, 28 and 56 none; a tile's 1-column border strip 1 of
      14; rows of 7-13, and rows that would waste more, one run over the map, wrapping from row to row, at any
      output pitch: 7², 8², 13², 16², _wraps; a 1×1 reading and writing whole rows back to back is one run, as is
      one at a stride over its gathered pixels); a 1×1 with no padding and 32 input channels or more or an output of
      28² or more: along output channels. Rows that would waste more had gone to BLAS (Intel Xeon, one thread,
      weights cold / warm, BLAS → wrapping, ms): 512→512 3×3 at 7², 3.1 / 2.6 → 2.6-2.9 / 1.8-2.1 (onnxruntime's
      conv alone: 2.4 / 1.9), at stride 2 from 14², 3.4 → 3.0; 256→256 at 7², 0.94 → 0.70; 512→512 at 16², 11.5 →
      10.4; 128→128 at 8², 0.28 → 0.21.
    Elsewhere im2col and BLAS ran faster (bench in docs/BENCHMARKS.md): 24 output channels along channels from
    NCHW, their vectors a quarter empty, 1.1-1.4×; 16 input channels at 14², the transposed stores outweighing the
    sums, 1.15×; a 7×1 conv, 1.03×. Along pixels at 7², 1.2-1.3×. (The caller keeps the convs Winograd takes, and RGB
    stems, rows.py.) These figures, and those of the two cases above, are AMD Zen 4's, with tiles of 7 pixels × up to 3
    vectors and strips of 16."""
    if not (vectors.ENABLED and x.shape[0] > 0 and (rowwise(x) or blocked(x))):
        return -1
    one = tuple(w_shape[2:]) == (1, 1) and not any(pads)
    # (_work: 3×3s of NCHW maps, 1×1s; a blocked output holds whole blocks, whatever _padded_out lets NCHW ones)
    if (blocked(x) and not one) or (bout and not (one or w_shape[3] == 3)) or (bout and w_shape[0] % LANES):
        return -1
    if _gathered(w_shape, stride):  # (as a 1×1 at stride 1 over the gathered copy, its rows back to back)
        flat, stride = (pitch or out_hw[1]) == out_hw[1], (1, 1)
    else:
        flat = _flat(w_shape, stride, x, out_hw[1], pitch or out_hw[1])
    return _choice(tuple(w_shape), groups, tuple(stride), tuple(pads), tuple(dilation), tuple(out_hw), flat,
                   bool(bout or blocked(x)))


@per_arguments  # (asked two or three times a conv call, every inference: 2 µs a call worked out each time)
def _choice(w_shape: tuple[int, ...], groups: int, stride: tuple[int, int], pads: tuple[int, int, int, int],
            dilation: tuple[int, int], out_hw: tuple[int, int], flat: bool, layouts: bool) -> int:
    """lanes() on a vector host for an x that suits (rowwise or blocked), flat: a 1×1 run over the map as one run;
    layouts: the input or the output channel-blocked (no strips)."""
    cout, cin, kh, kw = w_shape
    if not (groups == 1 and dilation == (1, 1)):
        return -1
    pixels = out_hw[0] * out_hw[1]
    run = pixels if flat else out_hw[1]  # (strips never wrap; tiles may)
    one = (kh, kw) == (1, 1)
    if not layouts and one and stride == (1, 1) and not any(pads) and cout % ROWS == 0 and pixels >= PIXELS_FROM \
            and (cin < STRIPS_BELOW or cout % LANES) and _fits(run, STRIP):
        return 0
    run = pixels if _wraps(out_hw[1]) else run
    if not (kw in WIDTHS and (kw > 1 or kh == 1) and (cout % LANES == 0 or layouts and _padded_out(cout))
            and _fits(run, PIX)):
        return -1
    return -1 if one and (any(pads) or (cin < 32 and pixels < 28 * 28)) else _cb(cout)


def _padded_out(cout: int) -> bool:
    """Whether a 1×1 reading a channel-blocked map into an NCHW one may have cout output channels, no multiple of 16:
    its last vector of sums then partly empty, at most a quarter of them (24 in two vectors of 16; not 8 in one).
    MobileNetV2's projections onto 24 so let its features.2-3 run their expanded maps blocked: in the model, one
    thread, per-node medians, their six convs 1.50-1.56 ms against 1.69-1.71 at 224², 9.9-10.4 against 11.6-11.8
    at 512², though the projections ran 1.3× their time along pixels on NCHW (a vector of 8 lanes for the last 8
    channels, or one of two pixels' 8, ran no faster on AMD Zen 4: LLVM built their broadcasts by shuffles)."""
    return _fits(cout, LANES)


def _wraps(ow: int) -> bool:
    """Whether tiles run over output rows ow wide as one run that wraps from each row onto the next (_tiles): rows
    shorter than a tile, whose short tiles re-read every output block's weights a row (64→256 3×3 at 13², 0.55-0.57
    → 0.36-0.38 ms), and rows whose own tiles would waste more than a quarter of their pixels (15-20 and 29-31
    wide), from half a tile on (a tile then spans at most three rows). Rows whose tiles waste less keep them: at 27²
    and 55² wrapping changed nothing (a tile that wraps runs the code a short one does)."""
    return ow >= PIX // 2 and (ow < PIX or not _fits(ow, PIX))


def _fits(run: int, width: int) -> bool:
    """Whether tiles `width` pixels wide waste at most a quarter of their pixels on a run of `run` pixels."""
    return run > 0 and 3 * -(-run // width) * width <= 4 * run


def _gathered(w_shape: tuple[int, ...], stride: tuple[int, int]) -> bool:
    """Whether conv() first gathers the pixels this conv reads into a copy (its planes _pitch apart, its rows back to
    back): a 1×1 at a stride. Read in place at a stride, its tiles of 14 spanned twice the lines and its rows of 7
    (ResNet-50's last stage) went to BLAS. One thread, weights cold, strided → gathered (ms): 1024→2048 from 14²,
    2.56-2.79 → 1.77-1.80; 512→1024 from 28², 1.87 → 1.53-1.57; 256→512 and 128→256 from 56², within 4%."""
    return tuple(w_shape[2:]) == (1, 1) and tuple(stride) != (1, 1)


def _pitch(n: int) -> int:
    """Floats from one plane of n values to the next in a gathered copy: an odd number of cache lines, so that the
    planes' lines at a pixel spread over every set of the L1 cache. Planes of 64² or 32² (a 512² image's) back to
    back lie a multiple of 4 KiB apart, all in one set: ResNet-50's 256→512 1×1 at stride 2 from 128², 14.1 ms
    gathered back to back, 11.1 so. (layout.spare_rows pads by whole rows, for the kernels that need a C-contiguous
    buffer; this copy is read by address alone, so any pitch serves.)"""
    lines = -(-n // 16)
    return 16 * (lines + 1 - lines % 2)


def _flat(w_shape: tuple[int, ...], stride: tuple[int, int], x: np.ndarray, ow: int, pitch: int) -> bool:
    """Whether a 1×1 conv at stride 1 of output rows ow wide reads them from x and writes them (rows pitch pixels
    apart) back to back: as one run."""
    return tuple(w_shape[2:]) == (1, 1) and tuple(stride) == (1, 1) and ow == x.shape[2] == x.strides[1] // \
        x.strides[2] == pitch


def runs_blocked(w_shape: tuple[int, ...], groups: int, stride: tuple[int, int], pads: tuple[int, int, int, int],
                 dilation: tuple[int, int], out_hw: tuple[int, int], reads: bool = True) -> bool:
    """Whether the vector GEMM runs this conv over a whole map with its input or output channel-blocked (lanes()
    with either side so), its output channels a multiple of 16: a 1×1, its input channels too if it reads a blocked
    map (reads; its outputs then may also be as _padded_out() lets them, written NCHW; else it writes one from an
    NCHW map, and its input channels may be any); or a 3×3 of at most STEM_INPUTS input channels writing one from an
    NCHW map (an RGB stem)."""
    cout, cin = w_shape[:2]
    one = tuple(w_shape[2:]) == (1, 1)
    stem = not reads and tuple(w_shape[2:]) == (3, 3) and cin <= STEM_INPUTS
    whole = cout % LANES == 0 or reads and one and _padded_out(cout)  # (written NCHW: a blocked map's are whole)
    if not (vectors.ENABLED and (cin % LANES == 0 or not reads) and whole and (one or stem)):
        return False
    if _gathered(w_shape, stride):
        stride = (1, 1)
    return _choice(tuple(w_shape), groups, tuple(stride), tuple(pads), tuple(dilation), tuple(out_hw), False,
                   True) > 0


def blocked(a: np.ndarray) -> bool:
    """Whether map a is channel-blocked, (C / 16, H, W, 16) float32, its pixels' 16 channels contiguous (a view of a
    larger such array welcome): onnxruntime's NCHWc layout, which the vector GEMM reads and writes without
    transposes or a stream per channel (to_blocked, from_blocked)."""
    return a.ndim == 4 and a.dtype == np.float32 and a.shape[3] == LANES and a.strides[3] == 4 \
        and a.strides[2] == 4 * LANES and a.strides[1] % 4 == 0 and a.strides[0] % 4 == 0


def to_blocked(x: np.ndarray) -> np.ndarray:
    """Map x (C, H, W), C a multiple of 16, channel-blocked: (C / 16, H, W, 16)."""
    c, h, w = x.shape
    return np.ascontiguousarray(np.asarray(x, np.float32).reshape(c // LANES, LANES, h, w).transpose(0, 2, 3, 1))


def from_blocked(x: np.ndarray) -> np.ndarray:
    """Channel-blocked map x (C / 16, H, W, 16) as (C, H, W)."""
    cb, h, w, lanes = x.shape
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(cb * lanes, h, w)


def _chunked(w_shape: tuple[int, ...], chans: int, bout: bool, cb: int, stride: tuple[int, int], tiles: int,
             inputs: int) -> int:
    """The input channels a chunk of _chunks holds for this conv, or 0 for none (_tiles): a 3×3 at stride 1 from NCHW
    to NCHW, 2 vectors a tile, more input channels than a chunk, weights streamed (_streamed, against `inputs`
    floats) over CHUNKS_FROM to CHUNKS_TO tiles."""
    cout, cin, kh, kw = w_shape
    return CHUNK if ((kh, kw) == (3, 3) and chans == 1 and not bout and cb == 2 and tuple(stride) == (1, 1)
                     and cin > CHUNK and CHUNKS_FROM <= tiles <= CHUNKS_TO
                     and _streamed.py_func(cout * cin * 9, inputs)) else 0  # (its Python: nothing to compile)


def _split(nt: int, blocks: int, parts: int, weights: int, inputs: int) -> tuple[int, int]:
    """(ntb, ntp): nt threads as ntb shares of the output blocks × ntp shares of the `parts` runs (or of one run's
    tiles). Whichever splits more evenly first: 3 blocks on 2 threads left one thread twice the other's work
    (MobileNetV2's 96→24 at 56², 0.107 → 0.078 ms split by pixels instead). As evenly either way, whichever is the
    larger read splits, the weights (each thread then reads a share of them) or the inputs (`weights` and `inputs`
    floats): MobileNetV2 at 224² on 2 threads, in the model, its 32→16 at 112² 0.19 → 0.12 ms, 16→96 at 112² 0.32 →
    0.26, 384→64 at 14² 0.075 → 0.067 (the whole model 5.18 → 5.07 ms; ResNet-50 38.9 → 37.8)."""
    by_parts, by_blocks = -(-parts // nt) * blocks, -(-blocks // nt) * parts  # (the busiest thread's share each way)
    if by_parts < by_blocks or (by_parts == by_blocks and inputs > weights):
        ntp = max(1, min(nt, parts))
        return max(1, min(nt // ntp, blocks)), ntp
    ntb = max(1, min(nt, blocks))
    return ntb, max(1, min(nt // ntb, parts))


def launcher(x: np.ndarray, origin: tuple[int, int], in_hw: tuple[int, int], w: np.ndarray, b: np.ndarray,
             stride: tuple[int, int], pads: tuple[int, int, int, int], region: tuple[int, int, int, int],
             out: np.ndarray, lo: np.float32, hi: np.float32, lanes: int, nt: int,
             fused: bool = False) -> Callable[..., None]:
    """launch(x, out[, residual]): out = clamp(conv of output `region` from tile x + b [+ residual], lo, hi) on nt
    threads, with the lanes lanes() chose, for any x and out laid out as these (NCHW with rows contiguous, or
    channel-blocked: blocked()); fused: a residual is added in the kernel, channel-blocked as out must then be, laid
    out as any such view. Window, packed weights and the kernel's arguments are worked out here, once: a call passes
    addresses."""
    cout, cin, kh, kw = w.shape
    chans, bout = (LANES if blocked(x) else 1), blocked(out)
    if fused and not (bout and (kh, kw) == (1, 1)):
        raise ValueError(f"a residual is added in the kernel to a 1×1's channel-blocked output, not to a {kh}×{kw}'s "
                         f"{out.shape}")
    opx = LANES if bout else 1
    oh, ow, ocs, ors = *out.shape[1:3], out.strides[0] // 4 // opx, out.strides[1] // 4
    # a 1×1 at a stride: the buffer its pixels are gathered into, made once (every call gathers into it)
    copy = None
    if _gathered(w.shape, stride):
        copy = np.empty((cin, _pitch(oh * ow)), np.float32)[:, :oh * ow].reshape(cin, oh, ow) if chans == 1 \
            else np.empty((cin // LANES, oh, ow, LANES), np.float32)

    def slab(x: np.ndarray) -> np.ndarray:
        """What the kernel reads of x: the window (a view of x where no pad is read, else a padded copy), or the
        pixels of it a 1×1 at a stride reads, gathered into `copy`."""
        p = window(x, origin, in_hw, (kh, kw), stride, pads, (1, 1), region, 0.0)
        if copy is None:
            return p
        np.copyto(copy, p[:, ::stride[0], ::stride[1]])
        return copy

    p, s = slab(x), stride if copy is None else (1, 1)
    cs, rs = p.strides[0] // 4, p.strides[1] // 4
    runs, run, rstep, width = oh, ow, s[0] * rs, ow  # (a run a row, or one over them all:)
    flat = _flat(w.shape, s, p, ow, ors // opx)
    if flat:
        runs, run, rstep, width = 1, oh * ow, 0, oh * ow
    elif lanes > 0 and _wraps(ow):  # (rows `width` = ow wide, one run)
        runs, run = 1, oh * ow
    cb = lanes
    wp, bp = _rows_packed(w) if cb == 0 else _packed(w), _padded(b)
    tiles = runs * -(-run // PIX)
    chunk = _chunked(w.shape, chans, bout, cb, s, tiles, cin * run * runs)
    acc = np.empty(len(wp) * tiles * PIX * 2 * LANES if chunk else 0, np.float32)  # (_chunks' partial sums)
    ntb, ntp = (max(1, min(nt, len(wp))), 1) if chunk else \
        _split(nt, len(wp), runs if runs > 1 else -(-run // (STRIP if cb == 0 else PIX)), w.size, p.size)
    fixed = (chans, FUSED if fused else BLOCKED if bout else NCHW, cb, kh, kw, address(wp), address(bp), cs, rs, cin,
             s[1], ocs, ors, cout)
    if ntb * ntp == 1:  # (a parallel loop's launch costs ~8 µs even on one thread: 8% of a 7² conv)
        kernel, fixed = _work, (*fixed, 0, len(wp), rstep, width, 0, runs, 0, run, lo, hi)
    else:
        kernel, fixed = _run, (*fixed, rstep, width, runs, run, ntb, ntp, lo, hi)
    held = (wp, bp, acc)  # (a launcher holds the packed weights and the buffer whose addresses it passes)

    def at(x: np.ndarray, out: np.ndarray, residual: np.ndarray | None) -> None:
        """The kernel on x's window at address x, into out, adding residual (fused: blocked, as out, any pitches; on
        one run over rows back to back, copied where its rows are not)."""
        if not fused:
            kernel(x, address(out), address(acc) if chunk else 0, chunk, 0, *fixed)
            return
        if not (blocked(residual) and residual.shape == out.shape):
            raise ValueError(f"conv: a residual {residual.shape}, strides {residual.strides}, to add to a "
                             f"channel-blocked {out.shape}")
        if flat and residual.strides[1] != out.strides[1]:
            residual = np.ascontiguousarray(residual)
        kernel(x, address(out), address(residual), residual.strides[0] // 4 // LANES, residual.strides[1] // 4, *fixed)

    if np.may_share_memory(p, x):  # the window is x itself, from `offset` bytes on
        offset = address(p) - address(x)

        def launch(x: np.ndarray, out: np.ndarray, residual: np.ndarray | None = None, held: tuple = held) -> None:
            at(address(x) + offset, out, residual)
    else:  # a padded or gathered copy of x's part, each call
        def launch(x: np.ndarray, out: np.ndarray, residual: np.ndarray | None = None, held: tuple = held) -> None:
            p = slab(x)  # (held here while the kernel reads it by address)
            at(address(p), out, residual)
    return launch
