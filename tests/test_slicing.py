"""Slicing under memory caps."""

from __future__ import annotations

import math

import pytest

import tnplan
from tnplan.examples import lattice_2d, mera, random_regular


def _inputs_bytes(net: tnplan.Network, itemsize: int = 8) -> int:
    return itemsize * sum(math.prod(s) for s in net.shapes)


def test_memory_limit_is_met_and_reported() -> None:
    net = random_regular(30, 3, 4, seed=2)
    full = tnplan.plan(net, max_time=1)
    # Inputs always stay in memory; ask for a quarter of the room the intermediates took.
    limit = _inputs_bytes(net) + (full.peak_memory() - _inputs_bytes(net)) // 4
    sliced = tnplan.plan(net, max_time=1, memory_limit=limit)
    assert sliced.peak_memory() <= limit
    assert sliced.n_slices > 1
    assert sliced.n_slices == math.prod(net.size_dict[i] for i in sliced.sliced_indices)
    assert sliced.slicing_overhead >= 1.0 - 1e-12 or sliced.flops < full.flops


def test_memory_limit_in_float32_allows_more_than_float64() -> None:
    net = random_regular(30, 3, 4, seed=2)
    full = tnplan.plan(net, max_time=1)
    limit = _inputs_bytes(net) + (full.peak_memory("float64") - _inputs_bytes(net)) // 4
    p64 = tnplan.plan(net, max_time=1, memory_limit=limit, dtype="float64")
    p32 = tnplan.plan(net, max_time=1, memory_limit=limit, dtype="float32")
    assert p64.peak_memory("float64") <= limit
    assert p32.peak_memory("float32") <= limit
    assert p32.n_slices <= p64.n_slices


def test_max_size_reoptimises_rather_than_only_slicing() -> None:
    net = mera(16, 4, closed=True)
    full = tnplan.plan(net, max_time=2)
    target = full.peak_size // 4
    sliced = tnplan.plan(net, max_time=3, max_size=target)
    assert sliced.peak_size <= target
    # Slicing the unsliced tree with the same cuts and no re-optimisation is never cheaper.
    naive = tnplan.score_path(net, list(full.ssa_path), sliced.sliced)
    assert sliced.flops <= naive.flops


def test_unreachable_memory_limit_is_a_clear_error() -> None:
    net = lattice_2d(3, 3, bond=4)
    with pytest.raises(tnplan.PlanError, match="input tensors alone"):
        tnplan.plan(net, max_time=0.5, memory_limit=_inputs_bytes(net) // 2)
