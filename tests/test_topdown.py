"""The top-down exact search: same optimum as the DP and brute force, both enumerations, budgets."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_planner import _brute_force_optimum, _random_network

import tnplan
from tnplan.cost import leaf_legs, legs_path_cost
from tnplan.examples import mera, random_regular, ttn
from tnplan.greedy import greedy_ssa
from tnplan.optimal import solve_legs_cost
from tnplan.topdown import _Search, _splits_by_cuts, _splits_by_growth, solve_topdown, top_heavy


def _arrays(net: tnplan.Network) -> tuple[list[tuple[int, ...]], frozenset[int], list[float]]:
    return leaf_legs(net), frozenset(net.int_output), [float(s) for s in net.int_sizes]


def _greedy_cost(legs, output, sizes, minimize: str) -> float:
    return legs_path_cost(legs, output, sizes, greedy_ssa(legs, output, sizes), minimize)


@pytest.mark.parametrize("seed", range(6))
def test_topdown_matches_brute_force(seed: int) -> None:
    net = _random_network(np.random.default_rng(100 + seed), 6)
    legs, output, sizes = _arrays(net)
    upper = _greedy_cost(legs, output, sizes, "flops") * (1 + 1e-9)
    path, cost, _ = solve_topdown(legs, output, sizes, "flops", upper, 10**8)
    assert path is not None
    assert cost == _brute_force_optimum(net)
    assert legs_path_cost(legs, output, sizes, path, "flops") == cost


def _network_with_unit_indices(rng: np.random.Generator, n: int) -> tnplan.Network:
    """A random connected network with hyperedges, open indices and some indices of size 1."""
    net = _random_network(rng, n)
    sizes = {i: (1 if rng.random() < 0.2 else s) for i, s in enumerate(net.int_sizes)}
    return tnplan.Network.from_opt_einsum([list(t) for t in net.int_inputs], list(net.int_output), sizes)


@pytest.mark.parametrize("minimize", ["flops", "combo"])
@pytest.mark.parametrize("seed", range(8))
def test_topdown_and_bottom_up_dp_find_the_same_optimum(minimize: str, seed: int) -> None:
    net = _network_with_unit_indices(np.random.default_rng(seed), 9 + seed % 4)
    legs, output, sizes = _arrays(net)
    upper = _greedy_cost(legs, output, sizes, minimize)
    dp_path, dp_cost, _ = solve_legs_cost(legs, output, sizes, minimize, upper=upper)
    td_path, td_cost, _ = solve_topdown(legs, output, sizes, minimize, upper * (1 + 1e-9), 10**8)
    assert dp_path is not None and td_path is not None
    assert td_cost == pytest.approx(dp_cost, rel=1e-12)
    # Both searches score a step as the cost model does (x2 for any summed index, size 1 included).
    assert legs_path_cost(legs, output, sizes, td_path, minimize) == pytest.approx(td_cost, rel=1e-12)
    assert legs_path_cost(legs, output, sizes, dp_path, minimize) == pytest.approx(dp_cost, rel=1e-12)


@pytest.mark.parametrize("net", [ttn(8, 2), mera(8, 2), random_regular(12, 3, 2, seed=3)], ids=["ttn", "mera", "rr3"])
def test_both_bipartition_enumerations_list_the_same_splits(net: tnplan.Network) -> None:
    legs, output, sizes = _arrays(net)
    search = _Search(legs, output, sizes, "flops")
    assert search.edges_ok
    rng = np.random.default_rng(0)
    n = len(legs)
    checked = 0
    for _ in range(40):
        s = int(rng.integers(1, 2**n)) | 1
        if bin(s).count("1") < 3 or not _is_connected(s, legs):
            continue
        grown, _ = _splits_by_growth(np.uint64(s), search.nbr, 10**9)
        cut = _cut_splits(search, np.uint64(s), 1e30)
        assert sorted(int(a) for a in grown) == sorted(int(a) for a in cut)
        assert all(int(a) & (s & -s) for a in grown)  # each split once: the lowest tensor is in A
        checked += 1
    assert checked >= 5


def _cut_splits(search: _Search, s: np.uint64, rmax: float) -> np.ndarray:
    cands, _ = _splits_by_cuts(
        s, rmax, search.edge_u, search.edge_v, search.edge_size, search.nbr, search.nbr_count, 10**9
    )
    return cands


def _is_connected(s: int, legs) -> bool:
    members = [t for t in range(len(legs)) if s >> t & 1]
    seen, stack = {members[0]}, [members[0]]
    while stack:
        t = stack.pop()
        for u in members:
            if u not in seen and set(legs[t]) & set(legs[u]):
                seen.add(u)
                stack.append(u)
    return len(seen) == len(members)


def test_cut_enumeration_stops_at_the_size_product_limit() -> None:
    net = ttn(8, 2)
    legs, output, sizes = _arrays(net)
    search = _Search(legs, output, sizes, "flops")
    full = np.uint64(2 ** len(legs) - 1)
    one_edge = _cut_splits(search, full, 2.0)
    every = _cut_splits(search, full, 1e30)
    # A tree network: every edge alone splits it, and no split cuts more than one edge.
    assert len(one_edge) == len(search.edge_u)
    assert sorted(map(int, every)) == sorted(map(int, one_edge))


def test_topdown_gives_up_within_its_work_budget() -> None:
    net = random_regular(20, 3, 2, seed=1)
    legs, output, sizes = _arrays(net)
    upper = _greedy_cost(legs, output, sizes, "flops")
    path, cost, work = solve_topdown(legs, output, sizes, "flops", upper, 5_000)
    assert path is None and math.isinf(cost)
    assert work <= 5_000 + 2 ** len(legs)


def test_topdown_reports_no_path_when_the_bound_is_below_the_optimum() -> None:
    net = mera(8, 2)
    legs, output, sizes = _arrays(net)
    upper = _greedy_cost(legs, output, sizes, "flops") * (1 + 1e-9)
    _, best, _ = solve_topdown(legs, output, sizes, "flops", upper, 10**8)
    path, cost, _ = solve_topdown(legs, output, sizes, "flops", best * 0.999, 10**8)
    assert path is None and math.isinf(cost)


def test_top_heavy_picks_open_networks_not_closed_ones() -> None:
    for net, expected in ((mera(16, 2), True), (ttn(32, 8), True), (random_regular(26, 3, 2), False)):
        legs, output, sizes = _arrays(net)
        assert top_heavy(legs, output, sizes, _greedy_cost(legs, output, sizes, "flops")) is expected


def test_plan_proves_the_open_16_site_mera_optimal_within_one_second() -> None:
    # 26 tensors of bond 2: the bottom-up DP needs over a minute at the optimum's cap; the top-down
    # search proves it in a fraction of a second.
    net = mera(16, 2)
    p = tnplan.plan(net, max_time=1.0, cache=False)
    assert p.optimal
    legs, output, sizes = _arrays(net)
    _, cost, _ = solve_topdown(legs, output, sizes, "flops", p.flops * (1 + 1e-9), 10**8)
    assert p.flops == cost


def test_plan_skips_the_exact_searches_while_their_kernels_compile(monkeypatch) -> None:
    import tnplan.optimal

    monkeypatch.setattr(tnplan.optimal, "kernel_ready", lambda block=False: False)
    p = tnplan.plan(mera(16, 2), max_time=0.5, cache=False)
    assert not p.optimal  # neither exact search ran: a compilation must not be charged to the budget
