"""What users look at: a plan as a table (format_plan) and as a picture over the input (draw_tiles)."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

from nptp_mpi.io.outputs import atomic_write
from nptp_mpi.plan.geometry import area
from nptp_mpi.plan.plan import Plan


def human(nbytes: float) -> str:
    """Bytes in KB / MB (10^3, 10^6), the units the report uses."""
    for unit, size in (("MB", 1e6), ("KB", 1e3)):
        if nbytes >= size:
            return f"{nbytes / size:.2f} {unit}"
    return f"{int(nbytes)} B"


def format_plan(plan: Plan, top: int | None = 10, weights: list[int] | None = None) -> str:
    """A readable summary: header, tiles, halo bytes per layer (the top rows, or all), per rank, totals;
    what IOP splits, and the weight bytes per rank when given (weight_bytes)."""
    c, h, w = plan.input_shape
    speeds = ",".join(f"{s:g}" for s in plan.speeds)
    lines = [f"{plan.model} {h}x{w}  strategy {plan.strategy}  ranks {plan.ranks}  speeds {speeds}  "
             f"objective {plan.objective}  cells {plan.cells[0]}x{plan.cells[1]}  fingerprint {plan.fingerprint()}",
             "", "rank  tile (y0,x0,y1,x1)      area share  speed share"]
    total_area, total_speed = h * w, sum(plan.speeds)
    for r, t in enumerate(plan.tiles):
        lines.append(f"{r:>4}  {str(t):<22} {area(t) / total_area:>10.1%}  {plan.speeds[r] / total_speed:>11.1%}")
    if plan.halp:
        lines += ["", f"host-assisted first block of {plan.halp} layers: rank 0 computes the seams, "
                  f"{plan.recompute:.1%} of the map pixels computed twice"]
    elif plan.fuse:
        lines += ["", f"fused blocks {','.join(map(str, plan.fuse))} (layers each, then one per block): halos of "
                  f"{len(plan.halos)} tensors exchanged, {plan.recompute:.1%} of the map pixels recomputed"]
    if plan.retile is not None:
        lines += ["", f"from layer {plan.retile[0]} on (layers as in --fuse) the maps are re-tiled, the map "
                  "redistributed there; cell tiles then: " + " ".join(str(r) for r in plan.retile[1])]
    if plan.grid:
        lines += ["", f"tiles follow {plan.grid} ({plan.cells[0]}x{plan.cells[1]} cells): the maps after it have too "
                  f"few cells for {plan.ranks} ranks, so the tiled part ends there"]
    if plan.tail == 0:
        lines += ["", "tail from layer 0: rank 0 computes everything alone (distributing is predicted slower)"]
    elif plan.tail:
        lines += ["", f"tail from layer {plan.tail} on (layers as in --fuse): rank 0 computes it alone, the map "
                  "gathered to it there"]
    layers = sorted((row for row in plan.layers if row["bytes"]), key=lambda row: -row["bytes"])
    shown = layers if top is None else layers[:top]
    lines += ["", f"halo per layer ({'all' if len(shown) == len(layers) else f'top {len(shown)} of {len(layers)}'}"
              " that move any)"]
    lines += [f"  {row['name']:<28} C={row['channels']:<5} {human(row['bytes']):>10}" for row in shown]
    lines += ["", "rank        sent        recv"]
    lines += [f"{row['rank']:>4}  {human(row['bytes_sent']):>10}  {human(row['bytes_recv']):>10}"
              for row in plan.per_rank]
    lines += ["", f"halo total {human(plan.halo_bytes)}  scatter {human(plan.scatter_bytes)}  "
              f"{plan.gather} {human(plan.gather_bytes)}"]
    return "\n".join(lines + _split_lines(plan, weights))


def _split_lines(plan: Plan, weights: list[int] | None) -> list[str]:
    """format_plan's part on operator splits (IOP) and per-rank weights."""
    lines = [""] if plan.head or plan.pairs or weights else []
    if plan.head:
        lines.append(f"head split: {plan.head.gemm} by its input (each rank keeps its tile's weight columns; partial "
                     "products summed at rank 0)")
    for p in plan.pairs:
        lines.append(f"conv pair: {p.a} by output channels, {p.b} by input channels; channels per rank "
                     + " ".join(f"{c0}:{c1}" for c0, c1 in p.channels))
    if weights:
        lines += ["weights per rank: " + "  ".join(f"{r}: {human(b)}" for r, b in enumerate(weights))]
    return lines


PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40),
           (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0)]


def draw_tiles(plan: Plan, path: str, image=None) -> None:
    """PNG of the partition (tiles_picture) at path."""
    picture = tiles_picture(plan, image)
    atomic_write(path, lambda f: picture.save(f, format="PNG"), "partition picture")


def tiles_picture(plan: Plan, image=None) -> Image.Image:
    """The partition over the input image (or grey): translucent tile per rank, outline, rank number."""
    _, h, w = plan.input_shape
    base = (image if image is not None else Image.new("RGB", (w, h), (200, 200, 200))).convert("RGBA")
    base = base.resize((w, h))
    overlay = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    for r, (y0, x0, y1, x1) in enumerate(plan.tiles):
        colour = PALETTE[r % len(PALETTE)]
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=(*colour, 90), outline=(*colour, 255), width=2)
        size = max(10, min(y1 - y0, x1 - x0) // 5)  # readable at a glance, still inside small tiles
        draw.text(((x0 + x1) // 2, (y0 + y1) // 2), f"rank {r}" if size >= 24 else str(r), fill=(255, 255, 255, 255),
                  anchor="mm", font=ImageFont.load_default(size=size), stroke_width=max(1, size // 12),
                  stroke_fill=(0, 0, 0, 255))
    return Image.alpha_composite(base, overlay).convert("RGB")
