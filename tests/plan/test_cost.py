"""Latency model: units, a hand-computed prediction, monotonicity, NPTP by the model, calibration files."""

import json
import math
import subprocess
import sys
from argparse import Namespace
from dataclasses import replace
from functools import cache

import numpy as np
import pytest
from conftest import ROOT, check_invariants, conv, mpiexec, small_net

from nptp_mpi.cli.plan import link_model
from nptp_mpi.errors import UsageError
from nptp_mpi.model import zoo
from nptp_mpi.model.graph import Graph
from nptp_mpi.plan.calibration import BoardCal, Calibration, LayerRates, ModelCal, load_calibration
from nptp_mpi.plan.cost import (
    STRIP_COST,
    Boards,
    Links,
    Setting,
    model_cost,
    overlap_pays,
    parse_rate,
    parse_time,
    predict,
)
from nptp_mpi.plan.geometry import area, halo_matrix, spatial
from nptp_mpi.plan.plan import make_plan, pieces, plan_from_cells
from nptp_mpi.plan.tiling import objective_bytes
from nptp_mpi.tools.calibrate import _check_output, layer_rates, time_layers


@pytest.mark.parametrize("text, value", [("100mbit", 12.5e6), ("100Mbit/s", 12.5e6), ("100mbps", 12.5e6),
                                         ("1gbit", 125e6), ("12.5MB/s", 12.5e6), ("1MiB/s", 2 ** 20),
                                         ("125000", 125e3), ("1e6", 1e6), ("1 Gbit", 125e6)])
def test_parse_rate(text, value):
    assert parse_rate(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "fast", "0", "0mbit", "-5mbit", "10 furlongs", "1e999", "mbit"])
def test_parse_rate_refuses(text):
    with pytest.raises(ValueError, match="rate"):
        parse_rate(text)


@pytest.mark.parametrize("text, value", [("1ms", 1e-3), ("200us", 2e-4), ("0.001", 1e-3), ("2s", 2.0), ("0", 0.0),
                                         ("50 ns", 5e-8)])
def test_parse_time(text, value):
    assert parse_time(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "soon", "-1ms", "1 fortnight", "1e999"])
def test_parse_time_refuses(text):
    with pytest.raises(ValueError, match="time"):
        parse_time(text)


@cache
def vgg16() -> Graph:
    return zoo.build("vgg16")


def two_convs() -> Graph:
    """input (2, 8, 8) -> 3x3 conv 2->4 -> 3x3 conv 4->4, no head: the last map is gathered."""
    return Graph("tiny", "input", (2, 8, 8), "c2", [conv("c1", "input", 2, 4), conv("c2", "c1", 4, 4)])


F, OH, A, B = 1e9, 1e-4, 1e-3, 1e6  # FLOP/s, overhead per kernel call, alpha, bytes/s


@pytest.mark.parametrize("overlap", [False, True])
def test_hand_computed_two_ranks(overlap):
    g = two_convs()
    plan = make_plan(g, 2, "coedge")  # rows 0-4 and 4-8
    assert plan.cell_tiles == ((0, 0, 4, 8), (4, 0, 8, 8))
    pred = predict(g, plan, Boards((F, F), OH), Links(A, B, shared=False), overlap=overlap)
    scatter = A + 4 * 2 * 5 * 8 / B  # rank 1 gets input rows 3..8 (5 rows x 8 cols x 2 channels)
    # FLOPs 2*Cout*area*Cin*9. With overlap each conv runs in two pieces per rank (core 3 rows, border 1 row,
    # whose pixels cost STRIP_COST times as much): 2 calls; without, one piece of 4 rows.
    s = STRIP_COST if overlap else 1.0
    c1 = 2 * 4 * (24 + s * 8) * 2 * 9 / F + (2 if overlap else 1) * OH
    halo = 2 * A + 4 * 4 * 8 / B  # c1's output: each rank sends and receives one row of 4 channels
    c2_core, c2_border = 2 * 4 * 24 * 4 * 9 / F + OH, 2 * 4 * s * 8 * 4 * 9 / F + (OH if overlap else 0)
    gather = A + 4 * 4 * 32 / B  # rank 1's 4x8 tile of c2 (4 channels) to rank 0
    if overlap:
        expected = scatter + c1 + max(c2_core, halo) + c2_border + gather
    else:
        expected = scatter + c1 + halo + c2_core + c2_border + gather
    assert pred.latency_s == pytest.approx(expected, rel=1e-12)
    assert [x.name for x in pred.layers] == ["scatter", "c1", "c2", "head"]
    assert pred.comm_s == pytest.approx(scatter + halo + gather)
    assert pred.compute_s == pytest.approx(c1 + c2_core + c2_border)


@pytest.mark.parametrize("fraction", [0.0, 0.25, 1.0])
def test_overlap_hides_only_the_fraction_that_moves_during_compute(fraction):
    g = two_convs()
    plan = make_plan(g, 2, "coedge")  # c1's halo: one 128 B message each way
    slow = Links(A, 1e4, shared=False, overlap=((64, 1.0), (4096, fraction)))  # the halo outlasts c2's core
    pred = predict(g, plan, Boards((F, F), OH), slow, overlap=True)
    off = predict(g, plan, Boards((F, F), OH), slow, overlap=False)
    halo = 2 * A + 4 * 4 * 8 / 1e4
    c2_core = 2 * 4 * 24 * 4 * 9 / F + OH
    assert halo > c2_core
    # what overlap hides, less what its border strips cost beyond one piece (both convs: STRIP_COST - 1 times
    # their 8 border pixels, and a second kernel call)
    strips = sum((STRIP_COST - 1) * 2 * 4 * 8 * cin * 9 / F + OH for cin in (2, 4))
    assert off.latency_s - pred.latency_s == pytest.approx(min(c2_core, fraction * halo) - strips, rel=1e-9)
    assert pred.comm_s == off.comm_s


def test_overlap_fraction_by_message_size():
    links = Links(0.0, 1e6, False, ((4096, 0.0), (32768, 0.9), (65536, 0.0)))
    assert [links.background(n) for n in (100, 4096, 5000, 32768, 40000, 10 ** 6)] == [0, 0, 0.9, 0.9, 0, 0]
    assert Links(0.0, 1e6).background(10 ** 9) == 1.0  # not measured: everything travels in the background


def test_overlap_fraction_is_measured_against_the_wire_time():
    """An eager message that lands during the start handshake seems to take no time alone (0.1 ms here),
    yet leaves 2 ms to wait after computing: against that, nothing overlapped; against its wire time
    (50 ms) 96% did, which is what the cost model needs."""
    import time
    from types import SimpleNamespace

    from nptp_mpi.tools.calibrate import overlap_fraction

    class FakeWorld:  # complete() takes 0.1 ms right after post (alone), 2 ms after computing
        rank, posted = 0, 0.0
        comm = SimpleNamespace(Sendrecv=lambda *a, **k: None)

        def halo_messages(self, *a):
            return SimpleNamespace(free=lambda: None)

        def post(self, *a, **k):
            self.posted = time.perf_counter()

        def complete(self, *a):
            time.sleep(1e-4 if time.perf_counter() - self.posted < 5e-3 else 2e-3)

    assert overlap_fraction(FakeWorld(), 1, 4096, 3, wire_s=0.05) > 0.8
    assert overlap_fraction(FakeWorld(), 1, 4096, 3, wire_s=0.0) == 0.0  # measured alone only


def test_layer_rates_replace_flops():
    g = two_convs()
    plan = make_plan(g, 2, "coedge")  # each rank computes 32 pixels of c1 and of c2, one piece each
    links = Links(A, B, shared=False)
    rates = {"c1": 2e-6, "c2": 3e-6}
    base = predict(g, plan, Boards((F, F), OH, (rates, rates)), links, overlap=False)
    scatter, halo, gather = A + 4 * 2 * 5 * 8 / B, 2 * A + 4 * 4 * 8 / B, A + 4 * 4 * 32 / B
    c1, c2 = 2e-6 * 32 + OH, 3e-6 * 32 + OH
    assert base.latency_s == pytest.approx(scatter + c1 + halo + c2 + gather, rel=1e-12)
    # c1 ten times slower on rank 1 only: the layer waits for it, so exactly 9 x its work more
    slow = predict(g, plan, Boards((F, F), OH, (rates, {**rates, "c1": 2e-5})), links, overlap=False)
    assert slow.latency_s - base.latency_s == pytest.approx(9 * 2e-6 * 32, rel=1e-9)
    # a node the calibration did not time falls back to FLOPs / FLOP/s
    partial = predict(g, plan, Boards((F, F), OH, ({"c2": 3e-6},) * 2), links, overlap=False)
    assert partial.latency_s - base.latency_s == pytest.approx(2 * 4 * 32 * 2 * 9 / F - 2e-6 * 32, rel=1e-9)


def test_rates_measured_in_overlaps_pieces_price_them():
    """Calibrated in overlap's core and strips, those rates price both pieces (no STRIP_COST guess); without
    overlap the one-piece rates apply. overlap_pays follows: pieces that cost 1.2× a whole tile's pixels do
    not pay for hiding a tiny halo, and do where the halo outlasts c2's core; 3× never pays here."""
    g = two_convs()
    plan = make_plan(g, 2, "coedge")  # per rank 32 pixels of each conv: with overlap a 24-pixel core, 8 in strips
    whole, split = {"c1": 1e-6, "c2": 1e-6}, {"c1": 1.2e-6, "c2": 1.2e-6}
    boards = Boards((F, F), 0.0, (whole, whole), overlap_s_per_px=(split, split))
    links = Links(0.0, math.inf, False)
    assert predict(g, plan, boards, links, overlap=False).compute_s == pytest.approx(2 * 32e-6)
    assert predict(g, plan, boards, links, overlap=True).compute_s == pytest.approx(2 * 32 * 1.2e-6)
    fast, slow = Links(0.0, 1e9, False, ((1 << 20, 1.0),)), Links(0.0, 1e3, False, ((1 << 20, 1.0),))
    assert not overlap_pays(g, plan, Setting(boards, fast))  # 128 B halo: 0.1 µs to hide, 12.8 µs more compute
    assert overlap_pays(g, plan, Setting(boards, slow))  # hides c2's core, 28.8 µs
    costly = Boards((F, F), 0.0, (whole, whole), overlap_s_per_px=({"c1": 3e-6, "c2": 3e-6},) * 2)
    assert not overlap_pays(g, plan, Setting(costly, slow))  # 128 µs more compute to hide at most 72 µs


def test_a_rank_computing_alone_runs_at_its_one_rank_rates():
    """A tail from layer 0: rank 0 computes everything, the other rank nothing; with ranks sharing cores the
    one-rank rates apply (Boards.alone), and nothing is scattered or gathered."""
    g = two_convs()
    plan = plan_from_cells(g, make_plan(g, 2, "coedge").cell_tiles, tail=0)
    rates = {"c1": 2e-6, "c2": 3e-6}
    links = Links(A, B, shared=False)
    busy = predict(g, plan, Boards((F, F), OH, (rates, rates)), links)
    alone = predict(g, plan, Boards((F, F), OH, (rates, rates), None, {"c1": 1e-6, "c2": 1e-6}), links)
    assert busy.latency_s == pytest.approx((2e-6 + 3e-6) * 64 + 2 * OH, rel=1e-12)
    assert alone.latency_s == pytest.approx(2e-6 * 64 + 2 * OH, rel=1e-12)
    layered = replace(layered_calibration(), pairs=())
    assert layered.to_boards(2, layered.layers.model).alone == {"c1": 1e-6, "c2": 2e-6}


def test_measured_head_time_replaces_head_flops(cases):
    g, plan = cases[2]  # VGG-16: a gathered head
    b = boards_for(plan.ranks)
    by_flops = predict(g, plan, b, Links(1e-4, 1e7, False))
    timed = predict(g, plan, replace(b, head_s=0.5), Links(1e-4, 1e7, False))
    assert timed.layers[-1].compute_s == 0.5  # gathered head: no local part
    assert timed.latency_s - by_flops.latency_s == pytest.approx(0.5 - by_flops.layers[-1].compute_s)


def test_layer_rates_must_match_plan():
    g, plan = two_convs(), make_plan(two_convs(), 2, "coedge")
    with pytest.raises(ValueError, match="measured rates for 1"):
        predict(g, plan, Boards((F, F), 0.0, ({"c1": 1e-6},)), Links(0.0, 1e6, False))
    with pytest.raises(ValueError, match="non-negative"):
        predict(g, plan, Boards((F, F), 0.0, ({"c1": -1.0},) * 2), Links(0.0, 1e6, False))
    with pytest.raises(ValueError, match="overlap"):
        predict(g, plan, Boards((F, F), 0.0), Links(0.0, 1e6, False, ((4096, 1.5),)))


def test_timed_layers_are_the_engine_pieces_without_overlap_and_give_back_the_times():
    g = small_net()
    plan = make_plan(g, 3, "nptp")
    measured = [time_layers(g, plan, r, repeat=1) for r in range(3)]
    nodes = [n for n in g.nodes if n.spatial]
    for r, m in enumerate(measured):
        assert list(m) == [n.name for n in nodes]
        for n in nodes:
            parts = [p for part in pieces(plan, g, n, r, overlap=False) for p in part]
            t, calls, pixels = m[n.name]
            assert t >= 0 and calls == len(parts) and pixels == sum(area(p) for p in parts)
    # on the plan they were timed on, the rates predict each layer's slowest measured time
    rates = layer_rates(measured, 0.0)
    assert rates.ranks == 3
    pred = predict(g, plan, Boards((1e9,) * 3, 0.0, rates.s_per_px, 0.0), Links(0.0, math.inf, False), False)
    layers = {x.name: x.compute_s for x in pred.layers}
    for n in nodes:
        assert layers[n.name] == pytest.approx(max(m[n.name][0] for m in measured), rel=1e-9)


def test_layer_rates_take_out_the_call_overhead():
    rates = layer_rates([{"a": (1e-3, 2, 100), "b": (1e-3, 20, 100), "none": (1e-3, 1, 0)}], 1e-4)
    assert rates.s_per_px == ({"a": pytest.approx((1e-3 - 2e-4) / 100), "b": 0.0},)


@pytest.fixture(scope="module")
def cases():
    """(graph, plan) pairs: a reduce head (small_net) and a gather head (VGG-16 at 128x96)."""
    out = []
    for g, n, strategy in ((small_net(), 3, "nptp"), (small_net(), 4, "grid"), (zoo.build("vgg16", (128, 96)), 4,
                                                                                  "coedge")):
        out.append((g, make_plan(g, n, strategy)))
    return out


def boards_for(n, fast=None):
    return Boards(tuple(40e9 if r == fast else 10e9 for r in range(n)), 5e-5)


def test_comm_scales_with_bandwidth(cases):
    for g, plan in cases:
        b = boards_for(plan.ranks)
        one = predict(g, plan, b, Links(0.0, 1e7, False), overlap=False)
        two = predict(g, plan, b, Links(0.0, 2e7, False), overlap=False)
        assert two.comm_s == pytest.approx(one.comm_s / 2)
        assert two.compute_s == pytest.approx(one.compute_s)
        assert one.latency_s - two.latency_s == pytest.approx(one.comm_s / 2)


def test_free_network_is_sum_of_slowest_compute(cases):
    for g, plan in cases:
        for overlap in (False, True):
            pred = predict(g, plan, boards_for(plan.ranks), Links(0.0, math.inf, False), overlap)
            assert pred.comm_s == 0
            assert pred.latency_s == pytest.approx(sum(x.compute_s for x in pred.layers))


def test_orderings(cases):
    for g, plan in cases:
        b = boards_for(plan.ranks)
        for alpha in (0.0, 1e-3):
            for rate in (1e6, 1e8):
                t = {(shared, overlap): predict(g, plan, b, Links(alpha, rate, shared), overlap).latency_s
                     for shared in (False, True) for overlap in (False, True)}
                for overlap in (False, True):
                    assert t[True, overlap] >= t[False, overlap] - 1e-15  # a shared medium is never faster
                for shared in (False, True):  # overlap never slower by more than its border strips' extra compute
                    strips = (predict(g, plan, b, Links(alpha, rate, shared), True).compute_s
                              - predict(g, plan, b, Links(alpha, rate, shared), False).compute_s)
                    assert strips >= 0 and t[shared, True] <= t[shared, False] + strips + 1e-15
        slow = predict(g, plan, b, Links(1e-4, 1e7, False)).latency_s
        for r in range(plan.ranks):  # a faster board never makes it slower
            assert predict(g, plan, boards_for(plan.ranks, fast=r), Links(1e-4, 1e7, False)).latency_s <= slow


def test_boards_must_match_plan(cases):
    g, plan = cases[0]
    with pytest.raises(ValueError, match="rank"):
        predict(g, plan, Boards((1e9,), 0.0), Links(0.0, 1e6, False))


@pytest.mark.parametrize("graph, ranks, speeds, objective", [
    ("vgg16", 4, None, "total"), ("small", 3, [1, 2, 0.5], "total"), ("small", 5, None, "max")])
def test_cost_model_monotone_in_bytes_keeps_tiles(graph, ranks, speeds, objective):
    g = vgg16() if graph == "vgg16" else small_net()
    sp = spatial(g)
    calls = []

    def model(rects):
        calls.append(rects)
        return 1.0 + 1e-9 * objective_bytes(halo_matrix(sp, np.array(rects)), objective)

    plain = make_plan(g, ranks, "nptp", speeds, objective)
    modelled = make_plan(g, ranks, "nptp", speeds, objective, cost_model=model)
    assert calls and modelled.cell_tiles == plain.cell_tiles
    assert modelled.fingerprint() == plain.fingerprint()


def test_make_plan_with_latency_model_is_valid():
    g = small_net()
    model = model_cost(g, boards_for(3), Links(1e-3, 1e6, True))
    plan = make_plan(g, 3, "nptp", [1, 2, 1], cost_model=model)
    check_invariants(g, plan)
    # never predicted slower than the strips or grid NPTP compared it with
    for s in ("coedge", "grid"):
        other = make_plan(g, 3, s, [1, 2, 1])
        assert model(list(plan.cell_tiles)) <= model(list(other.cell_tiles)) + 1e-15


def calibration():
    return Calibration((BoardCal(0, "pi1", 2.5e9, 1e-4), BoardCal(1, "pi2", 3e9, 2e-4)),
                       Links(5e-4, 11.5e6, True, ((4096, 0.0), (8192, 0.9))), "2025-01-01T00:00:00+00:00", "pi1",
                       ({"peer": 1, "alpha_s": 5e-4, "bytes_per_s": 11.5e6, "host": "pi2"},))


def test_calibration_round_trip(tmp_path):
    cal = calibration()
    path = tmp_path / "cal.json"
    cal.save(str(path))
    back = load_calibration(str(path))
    assert back == cal
    assert back.to_json() == json.loads(path.read_text())
    b = back.to_boards()
    assert b.flops_per_s == (2.5e9, 3e9) and b.layer_overhead_s == 2e-4
    assert back.to_boards(3).flops_per_s == (2.5e9, 3e9, 2.5e9)
    assert [p.name for p in tmp_path.iterdir()] == ["cal.json"]  # no temp file left behind


def layered_calibration():
    """calibration() plus per-layer rates of two_convs() timed with 1 and 2 ranks at once."""
    sets = (LayerRates(1, ({"c1": 1e-6, "c2": 2e-6},)),
            LayerRates(2, ({"c1": 3e-6, "c2": 4e-6}, {"c1": 5e-6, "c2": 6e-6}), (1e-9, 2e-9),
                       ({"c1": 7e-6, "c2": 8e-6}, {"c1": 9e-6, "c2": 1e-5})))
    return replace(calibration(), layers=ModelCal("tiny", (2, 8, 8), "coedge", 0.25, sets))


def test_calibration_with_layers_round_trip_and_boards(tmp_path):
    cal = layered_calibration()
    path = tmp_path / "cal.json"
    cal.save(str(path))
    assert load_calibration(str(path)) == cal
    sets = cal.layers.sets
    b = cal.to_boards(2, "tiny")
    assert b.s_per_px == sets[1].s_per_px and b.head_s == 0.25 and b.flops_per_s == (2.5e9, 3e9)
    assert cal.to_boards(1, "tiny").s_per_px == sets[0].s_per_px
    assert cal.to_boards(3, "tiny").s_per_px == (*sets[1].s_per_px, sets[1].s_per_px[0])  # nearest count, cyclic
    assert b.split_head_s_per_weight == (1e-9, 2e-9) and cal.to_boards(3, "tiny").split_head_s_per_weight[2] == 1e-9
    assert cal.to_boards(1, "tiny").split_head_s_per_weight == ()  # not measured with one rank here
    assert b.overlap_s_per_px == sets[1].overlap_s_per_px and cal.to_boards(1, "tiny").overlap_s_per_px == ()
    assert cal.to_boards(2, "vgg16") == cal.to_boards(2) == Boards((2.5e9, 3e9), 2e-4)  # another model: FLOP/s
    assert replace(cal.layers, sets=(sets[0], replace(sets[1], ranks=3))).nearest(2).ranks == 3  # tie: the larger


def test_version_1_and_one_rank_calibrations_are_read(tmp_path):
    path = tmp_path / "cal.json"
    d = calibration().to_json()
    d["version"] = 1
    del d["layers"], d["links"]["overlap"]
    path.write_text(json.dumps(d))
    v1 = calibration()
    assert load_calibration(str(path)) == replace(v1, links=replace(v1.links, overlap=()))  # all overlaps
    path.write_text(json.dumps({**d, "links": None}))
    with pytest.raises(ValueError, match="'links' needs"):  # version 1 always measured links
        load_calibration(str(path))
    one = replace(layered_calibration(), links=None, pairs=())
    one.save(str(path))
    assert load_calibration(str(path)) == one


def _mutate(d, keys, value):
    for k in keys[:-1]:
        d = d[k]
    if value is KeyError:
        del d[keys[-1]]
    else:
        d[keys[-1]] = value


@pytest.mark.parametrize("text, match", [
    ("{not json", "not valid JSON"), ("[1, 2]", "JSON object"), ("", "empty file"),
    (("version",), "version"), (("links",), "missing 'links'"), (("boards",), "missing 'boards'"),
    ((("boards", 0, "flops_per_s"), -1.0), "flops_per_s"), ((("boards", 0, "flops_per_s"), "fast"), "flops_per_s"),
    ((("links", "bytes_per_s"), 0), "bytes_per_s"), ((("links", "alpha_s"), float("nan")), "alpha_s"),
    ((("links", "shared"), "yes"), "shared"), ((("boards",), []), "non-empty"),
    ((("boards", 0, "host"), KeyError), "lacks"),
])
def test_malformed_calibration_refused(tmp_path, text, match):
    path = tmp_path / "cal.json"
    if isinstance(text, str):
        path.write_text(text)
    else:
        d = calibration().to_json()
        if isinstance(text[0], str):
            del d[text[0]]
        else:
            _mutate(d, *text)
        path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=match):
        load_calibration(str(path))


@pytest.mark.parametrize("keys, value, match", [
    (("version",), 3, "version 3 is not one"),
    (("links", "overlap"), 0.5, "links.overlap must be a list"),
    (("links", "overlap"), [[4096, 1.5]], "links.overlap must be a list"),
    (("links", "overlap"), [[4096, -0.1]], "links.overlap fraction"),
    (("links", "overlap"), [[8192, 0.5], [4096, 0.5]], "increasing sizes"),
    (("links", "overlap"), [[0, 0.5]], "links.overlap bytes"),
    (("layers", "model"), KeyError, "'layers' needs"),
    (("layers", "input_shape"), [2, 0, 8], r"input_shape"),
    (("layers", "input_shape"), [8, 8], r"input_shape"),
    (("layers", "head_s"), -1, "head_s"),
    (("layers", "sets"), [], "non-empty"),
    (("layers", "sets", 0, "ranks"), "1", r"sets\[0\]\.ranks"),
    (("layers", "sets", 1, "s_per_px"), [{}], r"sets\[1\]\.s_per_px must be a list of 2"),
    (("layers", "sets", 1, "s_per_px", 1, "c2"), float("inf"), r"sets\[1\]\.s_per_px\[1\]\['c2'\]"),
    (("layers", "sets", 1), {"ranks": 1, "s_per_px": [{}]}, "twice"),
    (("layers", "sets", 1, "head_s_per_weight"), [1e-9], r"sets\[1\]\.head_s_per_weight must be a list of 2"),
    (("layers", "sets", 1, "head_s_per_weight", 1), 0, r"sets\[1\]\.head_s_per_weight\[1\]"),
])
def test_malformed_layer_rates_refused(tmp_path, keys, value, match):
    path = tmp_path / "cal.json"
    d = layered_calibration().to_json()
    _mutate(d, keys, value)
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=match) as err:
        load_calibration(str(path))
    assert str(path) in str(err.value)


def test_missing_calibration_file(tmp_path):
    with pytest.raises(ValueError, match="calibration .*nope.json: no such file"):
        load_calibration(str(tmp_path / "nope.json"))


def test_bad_output_paths(tmp_path):
    assert _check_output(str(tmp_path / "cal.json")) is None
    assert "does not exist" in _check_output(str(tmp_path / "no" / "cal.json"))
    assert "is a directory" in _check_output(str(tmp_path))


def test_calibrate_under_mpiexec(tmp_path):
    out = tmp_path / "cal.json"
    cmd = [*mpiexec(), "-n", "2", sys.executable, "-m", "nptp_mpi.tools.calibrate", "-o", str(out), "--repeat", "1",
           "--pings", "5", "--large-mb", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "GFLOP/s" in proc.stdout and "wrote" in proc.stdout
    cal = load_calibration(str(out))
    assert len(cal.boards) == 2 and len(cal.pairs) == 1
    assert all(b.flops_per_s > 0 and b.layer_overhead_s >= 0 for b in cal.boards)
    assert cal.links.alpha_s > 0 and cal.links.bytes_per_s > 0 and cal.links.shared is False
    assert [size for size, _ in cal.links.overlap] == [4096 << k for k in range(7)]
    assert all(0 <= f <= 1 for _, f in cal.links.overlap)


@pytest.mark.parametrize("ranks", [1, 2])
def test_calibrate_times_the_model_layers_under_mpiexec(tmp_path, ranks):
    out = tmp_path / "cal.json"
    counts = ",".join(str(k) for k in range(1, ranks + 1))
    cmd = [*mpiexec(), "-n", str(ranks), sys.executable, "-m", "nptp_mpi", "calibrate", "-o", str(out), "--repeat",
           "1", "--pings", "5", "--large-mb", "1", "--model", "resnet18", "--size", "64", "--ranks", counts]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "layers of resnet18 3x64x64" in proc.stdout
    cal = load_calibration(str(out))
    assert (cal.links is None) == (ranks == 1)
    lc = cal.layers
    assert (lc.model, lc.input_shape, lc.strategy) == ("resnet18", (3, 64, 64), "nptp") and lc.head_s > 0
    assert [s.ranks for s in lc.sets] == list(range(1, ranks + 1))
    names = {n.name for n in zoo.build("resnet18", (64, 64)).nodes if n.spatial}
    assert all(set(rates) == names for s in lc.sets for rates in s.s_per_px)
    assert all(s.head_s_per_weight == () for s in lc.sets)  # global pooling: the head does not split


def test_calibrate_times_the_split_head_with_every_rank_at_once(tmp_path):
    """AlexNet's first FC layer splits by its input (IOP): each rank count's ranks time their partial products
    at once, and the prediction of a split head uses those rates instead of scaling rank 0's whole head."""
    from nptp_mpi.plan.cost import head_weights, predict_iop
    from nptp_mpi.strategies.iop import with_head_split

    out = tmp_path / "cal.json"
    cmd = [*mpiexec(), "-n", "2", sys.executable, "-m", "nptp_mpi", "calibrate", "-o", str(out), "--repeat", "1",
           "--pings", "5", "--large-mb", "1", "--model", "alexnet", "--size", "160", "--ranks", "1,2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "split head (IOP)" in proc.stdout
    cal = load_calibration(str(out))
    assert [len(s.head_s_per_weight) for s in cal.layers.sets] == [1, 2]
    assert all(0 < v < 1e-6 for s in cal.layers.sets for v in s.head_s_per_weight)
    graph = zoo.build("alexnet", (160, 160))
    plan = with_head_split(graph, make_plan(graph, 2))
    boards = cal.to_boards(2, "alexnet")
    assert boards.split_head_s_per_weight == cal.layers.sets[1].head_s_per_weight
    head = predict_iop(graph, plan, boards, cal.links).layers[-1]
    part = max(w * v for w, v in zip(head_weights(graph, plan), boards.split_head_s_per_weight, strict=True))
    slower = replace(boards, split_head_s_per_weight=tuple(2 * v for v in boards.split_head_s_per_weight))
    assert predict_iop(graph, plan, slower, cal.links).layers[-1].compute_s - head.compute_s == pytest.approx(part)
    assert head.compute_s > part > 0  # then rank 0's bias, activation and the rest of the head


@pytest.mark.parametrize("ranks, args, match", [
    (2, ["--model", "resnet18", "--size", "64", "--ranks", "3"], "every count must be 1 to 2"),
    (2, ["--size", "64"], "need --model"),
    (1, [], "at least 2 ranks"),
])
def test_calibrate_refuses_bad_layer_arguments(tmp_path, ranks, args, match):
    cmd = [*mpiexec(), "-n", str(ranks), sys.executable, "-m", "nptp_mpi", "calibrate", "-o", str(tmp_path / "c.json"),
           *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and match in proc.stderr, proc.stderr
    assert not (tmp_path / "c.json").exists()


def test_links_for_a_prediction_from_flags_and_calibration():
    one_rank = replace(layered_calibration(), links=None, pairs=())
    flags = Namespace(bandwidth=None, latency=None, shared=False)
    with pytest.raises(UsageError, match="--bandwidth"):
        link_model(flags, one_rank)
    given = link_model(Namespace(bandwidth="100mbit", latency="1ms", shared=True), one_rank)
    assert given == Links(1e-3, 12.5e6, True) and given.background(10 ** 6) == 1.0
    assert link_model(flags, calibration()) == calibration().links  # the measured overlap comes along


def test_squeeze_and_excitation_waits_for_the_allreduce_of_its_channel_sums() -> None:
    """An se node's step is its compute plus 2·⌈log₂ N⌉ messages of 8·C bytes; on one rank, its compute alone."""
    from nptp_mpi.model.graph import Node
    from nptp_mpi.plan.cost import allreduce_s

    w = np.ones((4, 8), np.float32)
    se = Node("se", "se", ("c1",), "se", {"steps": (("relu", 0.0, 0.0, 0.0), ("sigmoid", 0.0, 0.0, 0.0))},
              {"w0": w, "w1": np.ones((8, 4), np.float32)})
    g = Graph("se", "input", (3, 32, 32), "gap", [conv("c1", "input", 3, 8), se, Node("gap", "gap", ("se",), "gap")])
    links, boards = Links(1e-3, 1e6), Boards((1e9,) * 3, 0.0)
    step = {x.name: x for x in predict(g, make_plan(g, 3), boards, links).layers}["se"]
    assert allreduce_s(64, 3, links) == pytest.approx(4 * 1e-3 + 4 * 64 / 1e6)
    assert step.comm_s == pytest.approx(allreduce_s(64, 3, links)) and step.time_s > step.comm_s
    assert allreduce_s(64, 1, links) == 0.0
    assert allreduce_s(64, 3, replace(links, shared=True)) == pytest.approx(4 * 1e-3 + 4 * 64 / 1e6)
