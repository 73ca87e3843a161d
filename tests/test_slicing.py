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


def test_cut_costs_equal_the_sliced_score_of_the_same_tree() -> None:
    from tnplan.cost import leaf_legs, score_path
    from tnplan.greedy import greedy_ssa
    from tnplan.slicing import cheapest_cuts, cut_costs
    from tnplan.tree import Tree

    net = mera(16, 2, closed=True)
    legs = leaf_legs(net)
    sizes = [float(s) for s in net.int_sizes]
    path = greedy_ssa(legs, net.int_output, sizes)
    tree = Tree(legs, net.int_output, sizes, path)
    candidates = list(range(0, len(sizes), 5))
    for cost, c in cut_costs(tree, candidates):
        assert cost == score_path(net, path, (c,)).flops
    # The cheapest cuts among the indices of over-cap intermediates come first.
    target = tree.peak_size() / 2
    over = sorted({i for v in tree.internal_nodes() if tree.size[v] > target for i in tree.legs[v]})
    ranked = sorted(cut_costs(tree, over))
    assert cheapest_cuts(tree, target, 3) == [c for _, c in ranked[:3]]


def _record_cut_searches(monkeypatch, net: tnplan.Network) -> list[tuple[frozenset[int], frozenset[int]]]:
    """Record every search under the size cap as (its fixed cuts, the extra cuts its plan added)."""
    import tnplan.planner as planner

    searches: list[tuple[frozenset[int], frozenset[int]]] = []
    real = planner._portfolio

    def spy(legs, output, sizes, *args, **kwargs):
        found = real(legs, output, sizes, *args, **kwargs)
        if len(args) > 6 and args[6] is not None:  # a search under the size cap, around fixed cuts
            cut = frozenset(i for i, (x, d) in enumerate(zip(sizes, net.int_sizes, strict=True)) if x == 1 < d)
            searches.append((cut, frozenset(found.sliced) - cut))
        return found

    monkeypatch.setattr(planner, "_portfolio", spy)
    return searches


def test_deepening_fixes_one_more_cut_of_a_plan_that_needed_cuts_of_its_own(monkeypatch) -> None:
    """After the first cut sets, a plan whose trees added cuts to its fixed ones is searched again
    with the cheapest of those fixed as well: the searched sets grow one cut at a time."""
    net = mera(16, 4, closed=True)
    full = tnplan.plan(net, cache=False, max_repeats=3)
    searches = _record_cut_searches(monkeypatch, net)
    sliced = tnplan.plan(net, cache=False, max_repeats=3, max_size=2 ** (round(full.log2_size) - 6))
    assert sliced.log2_size <= round(full.log2_size) - 6
    deepened = [
        (a, b)
        for a, (cut_a, extra_a) in enumerate(searches)
        for b, (cut_b, _) in enumerate(searches)
        if a < b and extra_a and len(cut_b - cut_a) == 1 and cut_a < cut_b and next(iter(cut_b - cut_a)) in extra_a
    ]
    assert deepened, searches


def test_deepening_goes_on_while_a_searched_plan_has_an_extra_cut_left_to_try(monkeypatch) -> None:
    """Searches around different cuts often end on the same cut set; each plan is still deepened on its
    own. (Once, the first search of a set with all its cuts fixed marked every later plan with that
    set as having nothing left to fix, and deepening stopped after 5 of 12 rounds with 11 extra cuts
    untried.) Deepening stops early only when every extra cut of every plan searched around fixed
    cuts has been fixed in turn, or led to a set already searched."""
    import tnplan.planner as planner

    net = mera(16, 4, closed=True)
    full = tnplan.plan(net, cache=False, max_repeats=3)
    searches = _record_cut_searches(monkeypatch, net)
    monkeypatch.setattr(planner, "MAX_DEEPENING", 12)
    tnplan.plan(net, cache=False, max_repeats=3, max_size=2 ** (round(full.log2_size) - 4))
    searched = {cut for cut, _ in searches}
    needed = [(cut, e) for cut, extra in searches if cut for e in extra]
    assert needed, searches  # plans that needed cuts of their own: what deepening is for
    missing = [(sorted(cut), e) for cut, e in needed if cut | {e} not in searched]
    assert not missing or len(searches) >= planner.MAX_DEEPENING, (missing, len(searches))


def test_memory_limit_counts_inputs_with_traces_at_their_full_size() -> None:
    # "aab" holds 100*100*3 numbers; counting its deduplicated legs (100*3) accepted a 4 kB limit.
    net = tnplan.Network.from_einsum("aab,bc,cd,de->e", (100, 100, 3), (3, 3), (3, 3), (3, 2))
    held = sum(math.prod(s) for s in net.shapes) * 8
    with pytest.raises(tnplan.PlanError, match="input tensors alone"):
        tnplan.plan(net, memory_limit=4000, cache=False)
    plan = tnplan.plan(net, cache=False)
    # The inputs as given plus the reduced copy contract() makes of the traced one (3 numbers).
    assert plan.peak_memory() >= held + 3 * 8


def test_a_resized_tree_equals_a_tree_rebuilt_on_the_new_sizes() -> None:
    from tnplan.cost import leaf_legs
    from tnplan.greedy import greedy_ssa
    from tnplan.slicing import cut_costs
    from tnplan.tree import Tree

    net = random_regular(30, 3, 3, seed=4)
    legs, out = leaf_legs(net), net.int_output
    sizes = [float(s) for s in net.int_sizes]
    tree = Tree(legs, out, sizes, greedy_ssa(legs, out, sizes))
    tree = Tree(legs, out, sizes, tree.ssa_path())  # numbered in post-order, as a rebuilt tree is
    for c, new in ((3, 1.0), (7, 1.0), (3, 3.0)):
        sizes[c] = new
        tree.resize(c, new)
        rebuilt = Tree(legs, out, sizes, tree.ssa_path())
        assert tree.size == rebuilt.size and tree.flops == rebuilt.flops
        candidates = list(range(0, len(sizes), 4))
        nodes = rebuilt.internal_nodes()
        total = math.fsum(rebuilt.flops[v] for v in nodes)
        involved = {v: rebuilt.legs[rebuilt.children[v][0]] | rebuilt.legs[rebuilt.children[v][1]] for v in nodes}
        naive = []
        for i in candidates:
            s_c = math.fsum(rebuilt.flops[v] for v in nodes if i in involved[v])
            naive.append((s_c + rebuilt.sizes[i] * (total - s_c), i))
        assert cut_costs(tree, candidates) == naive


@pytest.mark.parametrize("minimize", ["flops", "size", "write", "combo"])
def test_a_sliced_tree_is_scored_in_the_callers_objective(minimize) -> None:
    # Candidates sliced to a cap are ranked against refined ones in one pool, so each must carry the
    # objective itself: slice_legs returned flops x slices for "size", refined trees peak x slices.
    from tnplan.cost import leaf_legs, score_path, size_tie
    from tnplan.greedy import greedy_ssa
    from tnplan.slicing import slice_legs

    net = random_regular(16, 3, 4, seed=5)
    legs, sizes = leaf_legs(net), [float(s) for s in net.int_sizes]
    ssa = greedy_ssa(legs, net.int_output, sizes)
    target = score_path(net, ssa).peak_size / 8
    path, sliced, cost = slice_legs(legs, net.int_output, sizes, ssa, target, minimize)
    assert sliced
    scored = score_path(net, path, sliced)
    # The peak size is every slice's; equal peaks rank by the flops of all slices.
    peak = scored.peak_size + size_tie(scored.flops)
    want = {"flops": scored.flops, "size": peak, "write": scored.write, "combo": scored.combo}
    assert math.isclose(cost, want[minimize], rel_tol=1e-12)


def test_minimize_size_under_a_cap_breaks_equal_peaks_by_flops() -> None:
    # Every tree sliced to the cap ends at the cap's peak; ranked by the peak alone, the first one
    # found would win (256 slices and 46x the flops of the plan minimising flops under this cap).
    net = mera(16, 4, closed=True)
    target = tnplan.plan(net, max_time=1, cache=False).peak_size // 4
    by_size = tnplan.plan(net, max_time=2, max_size=target, minimize="size", cache=False)
    by_flops = tnplan.plan(net, max_time=2, max_size=target, cache=False)
    assert by_size.peak_size <= min(target, by_flops.peak_size)
    assert by_size.flops <= 2 * by_flops.flops


def test_size_tie_orders_equal_peaks_by_flops_and_never_reorders_peaks() -> None:
    from tnplan.cost import over_slices, size_tie

    ties = [size_tie(f) for f in (0, 1, 10, 1e6, 1e12, 1e30, 1e300)]
    assert ties == sorted(ties) and len(set(ties)) == len(ties)
    assert ties[0] >= 0 and ties[-1] < 0.5
    # A peak one element larger always ranks after, whatever the flops; equal peaks rank by flops
    # while a float resolves the tie (2^40 elements: 8 TB in float64).
    for peak in (1.0, 4096.0, 2.0**40, 2.0**50, 2.0**60):
        assert over_slices(peak, 1e9, "size", 1e300) < over_slices(2 * peak, 1, "size", 0)
        assert over_slices(peak, 1e9, "size", 1e300) <= over_slices(peak + 1, 1, "size", 0)
    for peak in (1.0, 4096.0, 2.0**40):
        assert over_slices(peak, 4, "size", 1e6) < over_slices(peak, 1, "size", 1e7)
    assert over_slices(3.0, 4, "flops") == 12.0


def test_every_pool_scores_minimize_size_with_the_same_tie_break() -> None:
    # Trials (scored unsliced, with or without a cap) and refined trees meet in one pool: a trial
    # scored by its bare peak outranked a refined tree of the same peak and fewer flops.
    from tnplan.cost import leaf_legs, score_path, size_tie
    from tnplan.greedy import greedy_ssa
    from tnplan.planner import _evaluate, _Pool, _sliced_cost

    net = random_regular(16, 3, 4, seed=5)
    legs, sizes = leaf_legs(net), [float(s) for s in net.int_sizes]
    ssa = greedy_ssa(legs, net.int_output, sizes)
    scored = score_path(net, ssa)
    want = scored.peak_size + size_tie(scored.flops)
    unsliced = _Pool("size")
    cand = _evaluate(legs, net.int_output, sizes, "size", ssa, "greedy", None, None)
    assert math.isclose(cand.cost, want, rel_tol=1e-15)
    assert math.isclose(_sliced_cost(legs, net.int_output, sizes, ssa, (), "size"), want, rel_tol=1e-15)
    _evaluate(legs, net.int_output, sizes, "size", ssa, "greedy", scored.peak_size * 2, unsliced)
    assert math.isclose(unsliced.best.cost, want, rel_tol=1e-15)


def test_a_cap_the_unsliced_plan_already_meets_slices_nothing() -> None:
    # The search aims below the cap (a third of the headroom): a chain whose best tree fits the
    # limit exactly came back cut into 64 slices, and not proven optimal.
    net = tnplan.Network.from_einsum("ab,bc,cd,de->ae", *[(64, 64)] * 4)
    whole = tnplan.plan(net, max_time=1, cache=False)
    capped = tnplan.plan(net, max_time=1, cache=False, memory_limit=whole.peak_memory())
    assert capped.n_slices == 1 and capped.flops == whole.flops
    assert capped.slicing_overhead == 1.0
    assert whole.optimal and capped.optimal  # the unsliced optimum is optimal under a cap it meets
    by_size = tnplan.plan(net, max_time=1, cache=False, memory_limit=whole.peak_memory(), minimize="size")
    assert not by_size.optimal  # a sliced plan's per-slice peak may be smaller: nothing is proven


def test_slicing_overhead_is_measured_against_a_tree_no_dearer_than_the_plans_own() -> None:
    # The baseline was the best unsliced tree of the search's first phase only, which can cost more
    # than the returned tree unsliced: overheads of 0.80-0.99 were reported.
    net = random_regular(60, 3, seed=1)
    whole = tnplan.plan(net, max_time=0.5, cache=False)
    for seed in range(3):
        capped = tnplan.plan(net, max_time=0.5, cache=False, max_size=max(whole.peak_size // 8, 1), seed=seed)
        assert capped.n_slices > 1
        own = tnplan.from_path(net, capped.path)  # the same tree, unsliced
        assert capped.unsliced_flops <= own.flops
        assert capped.slicing_overhead >= 1.0


def test_sliced_plans_past_the_largest_float_describe_themselves() -> None:
    from tnplan.report import _step_log_flops

    # A ring of 60 tensors with 2**40 per bond, every other bond sliced: 2**1200 slices, 10^361 flops.
    n = 60
    inputs = [(f"b{i}", f"b{(i + 1) % n}") for i in range(n)]
    net = tnplan.Network.from_opt_einsum(inputs, (), {f"b{i}": 2**40 for i in range(n)})
    plan = tnplan.from_path(net, [(0, 1)] * (n - 1), sliced=tuple(f"b{i}" for i in range(0, n, 2)))
    assert plan.log10_flops > 308
    assert plan.slicing_overhead > 1 and "overhead:" in plan.describe()
    assert max(_step_log_flops(plan)) > 308  # the report's per-step figures
