"""Fused blocks (DeepThings): regions grow back through a block, halos only at block starts, and the
cost model's choice of blocks is never predicted slower than exchanging every layer."""

import pytest

from nptp_mpi.errors import PartitionError
from nptp_mpi.model import zoo
from nptp_mpi.plan.cost import Boards, Links, Setting, predict
from nptp_mpi.plan.geometry import area, bbox, intersect, layers, need, spatial
from nptp_mpi.plan.plan import exchanged, make_plan, plan_from_cells
from nptp_mpi.strategies import build
from nptp_mpi.strategies.fused import choose_fuse


def contains(outer, inner) -> bool:
    return tuple(intersect(outer, inner)) == tuple(inner)


@pytest.mark.parametrize("model,fuse", [("vgg11", (3, 2, 3)), ("resnet18", (4, 4)), ("mobilenet_v2", (6, 1, 5))])
def test_fused_regions_cover_every_read(model: str, fuse) -> None:
    g = zoo.build(model, (96, 104))
    plan = make_plan(g, 3, "fused", fuse=fuse, tiling="nptp")
    sp = spatial(g)
    sync = exchanged(g, fuse)
    assert set(plan.halos) == set(sync[1:])
    for t in sp.tensors:
        for r in range(3):
            assert contains(plan.comp[t][r], plan.own[t][r])
            held = plan.scatter[r] if t == g.input else (plan.halos[t].need[r] if t in plan.halos else plan.comp[t][r])
            for window, out in sp.readers[t]:  # whatever a consumer computes, the rank holds what it reads
                read = plan.comp[out][r] if window is None else need(window, plan.comp[out][r], sp.hw[t])
                assert contains(held, read), (t, out, r)
            if t in sync:
                assert plan.comp[t][r] == plan.own[t][r]  # exchanged tensors are computed once
    assert plan.recompute > 0


def test_no_blocks_is_the_per_layer_plan() -> None:
    g = zoo.build("resnet18", (96, 96))
    a, b = make_plan(g, 4, "nptp"), make_plan(g, 4, "fused", fuse=(), tiling="nptp")
    assert a.halos == b.halos and a.comp == a.own and b.recompute == 0.0


def test_one_block_over_everything_exchanges_nothing_but_the_scatter() -> None:
    g = zoo.build("vgg11", (64, 64))
    plan = make_plan(g, 2, "fused", fuse=(len(layers(spatial(g))),), tiling="coedge")
    assert plan.halos == {} and plan.halo_bytes == 0
    # each rank gets the whole receptive field of its tile: for a 64x64 VGG-11 that is nearly the image
    assert all(area(r) > area(t) for r, t in zip(plan.scatter, plan.tiles, strict=True))


def test_fuse_longer_than_the_model_is_refused() -> None:
    g = zoo.build("alexnet", (160, 160))
    with pytest.raises(PartitionError, match="8 layers of alexnet"):
        make_plan(g, 2, "fused", fuse=(5, 5), tiling="nptp")
    with pytest.raises(PartitionError, match="needs --strategy fused"):
        build(g, 2, "nptp", fuse=(2,))


def test_blocks_follow_the_links() -> None:
    """Slow-start links (large α) make fewer exchanges pay; free links and slow boards make recompute
    cost more than it saves (without overlap: with it, a block also spares its inner layers the border strips'
    cost). The choice is never predicted slower than layer by layer."""
    g = zoo.build("resnet18", (128, 128))
    tiles = make_plan(g, 4, "nptp").cell_tiles
    slow_links = Setting(Boards((1e11,) * 4, 0.0), Links(alpha_s=0.05, bytes_per_s=1e9))
    free_links = Setting(Boards((1e8,) * 4, 0.0), Links(alpha_s=0.0, bytes_per_s=1e12), overlap=False)
    fused, none = choose_fuse(g, tiles, slow_links), choose_fuse(g, tiles, free_links)
    assert len(exchanged(g, fused)) < len(layers(spatial(g))) / 2
    assert none == ()
    for setting, fuse in ((slow_links, fused), (free_links, none)):
        chosen = predict(g, plan_from_cells(g, tiles, fuse=fuse), setting.boards, setting.links,
                         setting.overlap).latency_s
        per_layer = predict(g, plan_from_cells(g, tiles), setting.boards, setting.links, setting.overlap).latency_s
        assert chosen <= per_layer


def test_bbox_of_needs_is_what_scatter_sends() -> None:
    g = zoo.build("vgg11", (96, 112))
    plan = make_plan(g, 3, "fused", fuse=(3,), tiling="grid")
    sp = spatial(g)
    for r in range(3):
        reads = [need(w, plan.comp[o][r], sp.hw[g.input]) for w, o in sp.readers[g.input]]
        expect = plan.own[g.input][r]
        for x in reads:
            expect = tuple(int(v) for v in bbox(expect, x))
        assert plan.scatter[r] == expect


def test_halp_others_start_from_their_own_tile_and_the_host_sends_the_rest() -> None:
    from nptp_mpi.strategies.halp import halp_plan

    g = zoo.build("resnet18", (96, 112))
    base = make_plan(g, 4, "nptp")
    plan = halp_plan(g, base.cell_tiles, base.speeds, "total", 4)
    end = layers(spatial(g))[4]
    assert plan.scatter[1:] == plan.tiles[1:]  # no input halo for the others
    assert plan.scatter_bytes < base.scatter_bytes
    for r in range(1, 4):
        for t, rect in plan.comp.items():  # inside the block a rank computes within its own tile
            if t in plan.halos and t != end:
                continue
            if area(rect[r]) and tuple(intersect(rect[r], plan.own[t][r])) != rect[r]:
                raise AssertionError((t, r, rect[r], plan.own[t][r]))
        pieces = [x.rect for x in plan.halos[end].transfers if x.dst == r]
        assert all(x.src == 0 for x in plan.halos[end].transfers)
        need_r, core = plan.halos[end].need[r], plan.comp[end][r]
        assert sum(int(area(p)) for p in pieces) + int(area(core)) == int(area(need_r))  # a disjoint cover
        assert all(contains(need_r, p) and not area(intersect(p, core)) for p in pieces)
    assert plan.comp[end][0] == plan.halos[end].need[0]  # the host computes all it needs itself


def test_halp_needs_a_cut_through_the_graph() -> None:
    from nptp_mpi.plan.plan import cuts

    g = zoo.build("resnet18", (96, 96))
    assert 3 not in cuts(g) and 2 in cuts(g)  # inside a residual block the shortcut crosses the cut
    with pytest.raises(PartitionError, match="no cut"):
        build(g, 2, "halp", fuse=(3,))
    assert build(g, 2, "halp").halp in cuts(g)
