"""The width lower bounds of the slicing benchmark (benchmarks/planner/width_bound.py): sound against
proven-optimal trees, and strong enough to rule out widths that no tree reaches."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import tnplan
from tnplan.examples import FAMILIES

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "planner"))
from width_bound import balanced_cut_bits, narrow_tree_possible


def _ring(n: int, bond: int) -> tnplan.Network:
    inputs = [(f"e{i}", f"e{(i + 1) % n}") for i in range(n)]
    return tnplan.Network(inputs, (), {f"e{i}": bond for i in range(n)})


@pytest.mark.parametrize("name", ["mera_closed_8_b2", "lattice_4x4_b2", "rr3_n20_b2_s0"])
def test_bounds_never_exceed_the_proven_narrowest_tree(name: str) -> None:
    net = FAMILIES[name]()
    narrowest = tnplan.plan(net, minimize="size", max_time=20, cache=False)
    assert narrowest.optimal
    assert balanced_cut_bits(net) <= narrowest.log2_size + 1e-9
    # A tree of that width exists, so the template it fills must be feasible.
    assert narrow_tree_possible(net, narrowest.log2_size, depth=3, time_limit=60) is True


def test_a_ring_needs_two_bonds_in_some_intermediate() -> None:
    ring = _ring(9, 4)
    assert balanced_cut_bits(ring) == pytest.approx(4.0)
    assert narrow_tree_possible(ring, 2.0, depth=2) is False
    assert narrow_tree_possible(ring, 4.0, depth=2) is True
    # A sliced bond counts nothing: cut once, the ring is a chain whose ends need one bond.
    assert narrow_tree_possible(ring, 2.0, depth=2, cut=["e0"]) is True


def test_the_nested_template_proves_what_the_balanced_cut_cannot() -> None:
    net = FAMILIES["mera_closed_8_b2"]()
    assert balanced_cut_bits(net) == pytest.approx(5.0)
    assert narrow_tree_possible(net, 5.0, depth=3, time_limit=120) is False  # the optimum is 6 bits


def test_free_cuts_let_the_program_pick_which_bonds_to_slice() -> None:
    ring = _ring(9, 4)
    # One free cut turns the ring into a chain (2 bits); no single cut gets it to 0 bits.
    assert narrow_tree_possible(ring, 2.0, depth=2, free_cuts=1) is True
    assert narrow_tree_possible(ring, 0.0, depth=2, free_cuts=1) is False
    net = FAMILIES["mera_closed_8_b2"]()
    # Sound: the width of the best tree with one bond sliced is reachable with one free cut ...
    cut = next(i for i in net.size_dict if i not in net.output)
    sliced = tnplan.plan(
        tnplan.Network(net.inputs, net.output, {**net.size_dict, cut: 1}), minimize="size", cache=False
    )
    assert narrow_tree_possible(net, sliced.log2_size, depth=3, free_cuts=1, time_limit=120) is True
    # ... and a cap that no single cut reaches is proven out of reach, while two cuts leave it open.
    assert narrow_tree_possible(net, 4.0, depth=3, free_cuts=1, time_limit=120) is False
    assert narrow_tree_possible(net, 4.0, depth=3, free_cuts=2, time_limit=120) is True


def test_pair_floor_takes_the_cheaper_of_the_best_pair_and_any_other_single_cut() -> None:
    from single_cuts import pair_floor

    rows = [{"cost_overhead": 1.5}, {"cost_overhead": 2.0}, {"cost_overhead": 3.0}, {"cost_overhead": 4.0}]
    pair = {"cuts": ["a", "b"], "floor_cost_overhead": 2.5}
    assert pair_floor(rows, [pair], 2) == (2.5, pair, 3.0)
    dear = {**pair, "floor_cost_overhead": 3.5}
    assert pair_floor(rows, [dear], 2)[0] == 3.0  # a plan may slice the third-cheapest index instead
    # No verdict from an incomplete or empty scan.
    assert pair_floor(rows, [pair], 3) is None
    assert pair_floor(rows, [], 0) is None
