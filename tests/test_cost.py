"""Tests of the one cost model, :mod:`tnplan.cost`, against the benchmark references, cotengra and hand derivations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cotengra as ctg
import opt_einsum as oe
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tnplan
from tnplan import Network, NetworkError
from tnplan.cost import leaf_legs, linear_to_ssa, ssa_to_linear

# The repository and shared/ are siblings (locally /work/main and /work/shared; in CI a clone and its shared/).
INSTANCES = Path(__file__).resolve().parents[2] / "shared" / "bench" / "instances"
EB_FILES = sorted((INSTANCES / "einsum-benchmark").glob("*.json"))
EB_MAIN = [f for f in EB_FILES if not f.name.startswith("bin_")]
EB_BIN = [f for f in EB_FILES if f.name.startswith("bin_")]
CTG_FILES = sorted((INSTANCES / "cotengra").glob("*.json"))
REFERENCES = ("opt_flops", "opt_size")


def load(file: Path) -> tuple[Network, dict]:
    return Network.from_json(file), json.loads(file.read_text(encoding="utf-8"))


def test_instance_folders_are_present() -> None:
    # Guards the parametrised tests below: an empty list would silently collect nothing.
    assert len(EB_MAIN) >= 8 and len(EB_BIN) == 4 and len(CTG_FILES) >= 5, INSTANCES


# ---------------------------------------------------------------------------------------- benchmark references


@pytest.mark.parametrize("file", EB_MAIN, ids=[f.stem for f in EB_MAIN])
def test_einsum_benchmark_reference_flops_and_size(file: Path) -> None:
    net, data = load(file)
    for ref in REFERENCES:
        info = data["paths"][ref]
        costs = tnplan.score_linear_path(net, info["path"])
        assert round(costs.log10_flops, 4) == info["log10_flops"], ref
        assert round(costs.log2_size, 4) == info["log2_size"], ref


@pytest.mark.parametrize("file", EB_BIN, ids=[f.stem for f in EB_BIN])
def test_einsum_benchmark_bin_instances(file: Path) -> None:
    # The bin_* sanity cases record log10_flops under the product-only convention: log10 of the product
    # of the sizes of every index involved, WITHOUT the factor 2 for a summed index (e.g. bin_matmul_256
    # records 7.2247 = log10(256**3), where the convention of every other file would give log10(2 * 256**3)).
    # So their reference equals log10(contraction_cost), and our flops add the factor 2 only when summing.
    net, data = load(file)
    lhs, _, rhs = data["format_string"].partition("->")
    involved = {lab for term in lhs.split(",") for lab in term}
    summed = involved - set(rhs)
    # Two operands, one pairwise step: the cost is the product of the sizes of every index involved.
    product = math.prod(net.size_dict[lab] for lab in involved)
    for ref in REFERENCES:
        info = data["paths"][ref]
        costs = tnplan.score_linear_path(net, info["path"])
        assert costs.contraction_cost == product
        assert info["log10_flops"] == round(math.log10(costs.contraction_cost), 4)
        assert costs.flops == (2 * product if summed else product)
        assert round(costs.log2_size, 4) == info["log2_size"]


def test_bin_instances_cover_both_flop_factors() -> None:
    # matmul and batched matmul sum an index; elementwise and outer products do not.
    kinds = {}
    for file in EB_BIN:
        eq = json.loads(file.read_text(encoding="utf-8"))["format_string"]
        lhs, _, rhs = eq.partition("->")
        kinds[file.stem] = bool({lab for term in lhs.split(",") for lab in term} - set(rhs))
    assert sorted(kinds.values()) == [False, False, True, True], kinds


# ---------------------------------------------------------------------------------------- cotengra oracle


@pytest.mark.parametrize("file", EB_FILES, ids=[f.stem for f in EB_FILES])
def test_contraction_cost_matches_cotengra_on_reference_paths(file: Path) -> None:
    net, data = load(file)
    for ref in REFERENCES:
        path = data["paths"][ref]["path"]
        tree = ctg.ContractionTree.from_path(net.inputs, net.output, net.size_dict, path=path)
        costs = tnplan.score_linear_path(net, path)
        assert costs.contraction_cost == tree.contraction_cost(), ref
        assert costs.peak_size == tree.max_size(), ref


@pytest.mark.parametrize("file", CTG_FILES, ids=[f.stem for f in CTG_FILES])
def test_contraction_cost_matches_cotengra_on_greedy_paths(file: Path) -> None:
    net = Network.from_json(file)
    size_dict = dict(enumerate(net.int_sizes))
    path = oe.paths.greedy([set(t) for t in net.int_inputs], set(net.int_output), size_dict)
    assert len(path) == net.num_tensors - 1
    tree = ctg.ContractionTree.from_path(net.int_inputs, tuple(net.int_output), size_dict, path=path)
    costs = tnplan.score_linear_path(net, path)
    assert costs.contraction_cost == tree.contraction_cost()
    assert costs.peak_size == tree.max_size()


# ---------------------------------------------------------------------------------------- hand-derived cases


def oe_flops(equation: str, shapes: list[tuple[int, ...]], path: list[tuple[int, int]]) -> int:
    # opt_einsum counts a pairwise step as product * 2 when an index is summed, else product:
    # the same convention as our flops, computed by an independent implementation.
    return int(oe.contract_path(equation, *shapes, shapes=True, optimize=path)[1].opt_cost)


def test_matrix_chain_by_hand() -> None:
    # "ab,bc,cd->ad", a=2 b=3 c=4 d=5, linear path [(0,1),(0,1)]:
    #   step 1: ab,bc -> ac   involved a,b,c: 2*3*4 = 24, b summed -> flops 48, result ac = 8 elements
    #   step 2: cd,ac -> ad   involved c,d,a: 4*5*2 = 40, c summed -> flops 80, result ad = 10 elements
    # contraction_cost = 24 + 40 = 64; flops = 48 + 80 = 128; peak_size = max(8, 10) = 10; write = 8 + 10 = 18.
    # Peak memory: inputs stay alive (ab 6 + bc 12 + cd 20 = 38 elements); during step 2 the intermediate ac (8)
    # and the result ad (10) are both alive: 38 + 8 + 10 = 56 elements -> 448 bytes (float64), 224 (float32).
    # combo = flops + 64 * write = 128 + 64 * 18 = 1280.
    shapes = [(2, 3), (3, 4), (4, 5)]
    path = [(0, 1), (0, 1)]
    net = Network.from_einsum("ab,bc,cd->ad", *shapes)
    costs = tnplan.score_linear_path(net, path)
    assert costs.contraction_cost == 64
    assert costs.flops == 128
    assert costs.peak_size == 10
    assert costs.write == 18
    assert costs.peak_memory("float64") == 56 * 8 == 448
    assert costs.peak_memory("float32") == 56 * 4 == 224
    assert costs.combo == 128 + 64 * 18 == 1280
    assert costs.n_slices == 1
    assert [s.cost for s in costs.steps] == [24, 40]
    assert [s.flops for s in costs.steps] == [48, 80]
    assert [s.size for s in costs.steps] == [8, 10]
    assert math.isclose(costs.log10_flops, math.log10(128))
    assert math.isclose(costs.log2_size, math.log2(10))
    # independent oracles
    assert costs.flops == oe_flops("ab,bc,cd->ad", shapes, path)
    tree = ctg.ContractionTree.from_path(net.inputs, net.output, net.size_dict, path=path)
    assert (costs.contraction_cost, costs.peak_size, costs.write) == (
        tree.contraction_cost(),
        tree.max_size(),
        tree.total_write(),
    )


def test_hyperedge_not_summed_until_its_last_tensor() -> None:
    # "ab,bc,bd->acd", a=2 b=3 c=4 d=5: b sits on all three tensors and is closed.
    #   step 1: ab,bc -> abc  involved a,b,c = 24; b is still on bd, so nothing is summed: flops 24, size 24
    #   step 2: bd,abc -> acd involved a,b,c,d = 120; now b is summed: flops 240, size 40
    # (summing b early would give ab,bc -> ac with flops 48 and a wrong result.)
    shapes = [(2, 3), (3, 4), (3, 5)]
    path = [(0, 1), (0, 1)]
    net = Network.from_einsum("ab,bc,bd->acd", *shapes)
    b = net.label_ids["b"]
    costs = tnplan.score_linear_path(net, path)
    assert b in costs.steps[0].legs_out and costs.steps[0].summed == ()
    assert costs.steps[1].summed == (b,)
    assert [s.flops for s in costs.steps] == [24, 240]
    assert (costs.contraction_cost, costs.flops, costs.peak_size, costs.write) == (144, 264, 40, 64)
    assert costs.flops == oe_flops("ab,bc,bd->acd", shapes, path)


def test_open_hyperedge_kept_to_the_end() -> None:
    # "ab,bc,cab->b", a=2 b=3 c=4: b is on all three tensors AND open, so no step may sum it.
    #   step 1: ab,bc -> abc   involved a,b,c = 24; a and c are still on cab, b is open: flops 24, size 24
    #   step 2: cab,abc -> b   involved 24; a and c summed, b kept: flops 48, size 3
    # contraction_cost 48, flops 72, peak_size 24, write 27.
    shapes = [(2, 3), (3, 4), (4, 2, 3)]
    path = [(0, 1), (0, 1)]
    net = Network.from_einsum("ab,bc,cab->b", *shapes)
    b = net.label_ids["b"]
    costs = tnplan.score_linear_path(net, path)
    assert all(b in s.legs_out and b not in s.summed for s in costs.steps)
    assert costs.steps[-1].legs_out == (b,)
    assert (costs.contraction_cost, costs.flops, costs.peak_size, costs.write) == (48, 72, 24, 27)
    assert costs.flops == oe_flops("ab,bc,cab->b", shapes, path)


def test_sliced_index_by_hand() -> None:
    # Ring "ab,bc,cd,de,ea->", a=2 b=2 c=4 d=3 e=2, contracted as a chain around the ring
    # (linear path [(0,1),(0,3),(0,2),(0,1)]: the new tensor is appended last, so it meets tensor 2, 3, 4 in turn).
    # Unsliced:
    #   1: ab,bc -> ac   a,b,c = 16  flops 32  size 8
    #   2: cd,ac -> da   a,c,d = 24  flops 48  size 6
    #   3: de,da -> ea   a,d,e = 12  flops 24  size 4
    #   4: ea,ea ->      a,e   =  4  flops  8  size 1
    #   contraction_cost 56, flops 112, peak_size 8.
    # Slicing c (size 4 -> 4 slices, c has size 1 within a slice):
    #   1: 2*2*1 = 4 (flops 8, size 2);  2: 2*1*3 = 6 (flops 12, size 6);  3 and 4 do not involve c: unchanged.
    #   Steps with c keep their total (8*4 = 32, 12*4 = 48); steps without c are multiplied by 4 (24*4, 8*4).
    #   flops = 4 * (8 + 12 + 24 + 8) = 208; contraction_cost = 4 * (4 + 6 + 12 + 4) = 104; peak_size = 6.
    #   Peak elements: inputs 4+8+12+6+4 = 34; live intermediates at worst 6 + 4 = 10 (step 3); the full result
    #   being accumulated 1: 45 elements.
    inputs = [("a", "b"), ("b", "c"), ("c", "d"), ("d", "e"), ("e", "a")]
    sizes = {"a": 2, "b": 2, "c": 4, "d": 3, "e": 2}
    path = [(0, 1), (0, 3), (0, 2), (0, 1)]
    net = Network.from_opt_einsum(inputs, (), sizes)
    ssa = linear_to_ssa(path, net.num_tensors)
    plain = tnplan.score_path(net, ssa)
    assert (plain.contraction_cost, plain.flops, plain.peak_size) == (56, 112, 8)
    c = net.label_ids["c"]
    sliced = tnplan.score_path(net, ssa, [c])
    assert sliced.n_slices == 4
    assert (sliced.contraction_cost, sliced.flops, sliced.peak_size) == (104, 208, 6)
    assert sliced.peak_elements == 45
    for before, after in zip(plain.steps, sliced.steps, strict=True):
        if c in before.legs_left or c in before.legs_right:
            assert after.flops * sliced.n_slices == before.flops  # total unchanged
        else:
            assert after.flops == before.flops  # per slice unchanged, so 4x in total
    assert sliced.peak_size < plain.peak_size
    # cotengra as an independent oracle for the sliced totals
    tree = ctg.ContractionTree.from_path(inputs, (), sizes, path=path).remove_ind("c")
    assert (tree.multiplicity, tree.contraction_cost(), tree.max_size()) == (4, 104, 6)


# ---------------------------------------------------------------------------------------- path formats


@st.composite
def linear_paths(draw: st.DrawFn) -> tuple[int, list[tuple[int, int]]]:
    n = draw(st.integers(1, 10))
    path = []
    for left in range(n, 1, -1):
        i = draw(st.integers(0, left - 2))
        j = draw(st.integers(i + 1, left - 1))
        path.append((i, j))
    return n, path


@settings(max_examples=200, deadline=None)
@given(linear_paths())
def test_linear_ssa_round_trip(case: tuple[int, list[tuple[int, int]]]) -> None:
    n, path = case
    ssa = linear_to_ssa(path, n)
    assert ssa_to_linear(ssa, n) == path
    # SSA invariants: step k creates id n+k, and every id is consumed at most once, after it exists.
    used = [x for step in ssa for x in step]
    assert len(used) == len(set(used))
    assert all(max(step) < n + k for k, step in enumerate(ssa))
    if path:  # opt_einsum infers n from the path, so only complete paths can be compared
        assert ssa == [tuple(s) for s in oe.paths.linear_to_ssa(path)]
        # and back again from SSA, in either operand order
        swapped = [(b, a) for a, b in ssa]
        assert ssa_to_linear(swapped, n) == path
        assert [tuple(sorted(s)) for s in oe.paths.ssa_to_linear(ssa)] == path


@pytest.mark.parametrize(
    ("path", "bad_step"),
    [
        ([(0, 0)], 0),
        ([(0, 3)], 0),
        ([(-1, 0)], 0),
        ([(0, 1), (0, 2)], 1),  # only two tensors are left after the first step
        ([(0, 1, 2)], 0),  # not pairwise
    ],
)
def test_invalid_linear_path_steps(path: list[tuple[int, ...]], bad_step: int) -> None:
    with pytest.raises(NetworkError, match=f"step {bad_step}"):
        linear_to_ssa(path, 3)
    net = Network.from_einsum("ab,bc,cd->ad", (2, 3), (3, 4), (4, 5))
    with pytest.raises(NetworkError):
        tnplan.score_linear_path(net, path)
    with pytest.raises(NetworkError):
        tnplan.from_path(net, path)


@pytest.mark.parametrize(
    "ssa",
    [[], [(0, 1)], [(0, 1), (2, 3), (3, 4)]],
    ids=["no-steps", "too-few", "too-many"],
)
def test_score_path_wrong_number_of_steps(ssa: list[tuple[int, int]]) -> None:
    net = Network.from_einsum("ab,bc,cd->ad", (2, 3), (3, 4), (4, 5))
    with pytest.raises(NetworkError, match=rf"{len(ssa)} pairwise steps.*exactly 2"):
        tnplan.score_path(net, ssa)


@pytest.mark.parametrize(
    "ssa", [[(0, 1), (0, 3)], [(0, 0), (1, 2)], [(0, 7), (1, 2)]], ids=["reused", "self", "unknown"]
)
def test_score_path_invalid_ssa_step(ssa: list[tuple[int, int]]) -> None:
    net = Network.from_einsum("ab,bc,cd->ad", (2, 3), (3, 4), (4, 5))
    with pytest.raises(NetworkError, match="step"):
        tnplan.score_path(net, ssa)


@st.composite
def scored_cases(draw: st.DrawFn) -> tuple[Network, list[tuple[int, int]], tuple[int, ...]]:
    """A random hypergraph (hyperedges, open and traced legs), a random SSA path and slicing."""
    n_idx = draw(st.integers(2, 12))
    # Few distinct sizes take the grouped products, many the bit-by-bit fallback.
    palette = draw(st.sampled_from([(2,), (2, 3), (1, 2, 3, 4, 5, 6, 7, 8, 9)]))
    sizes = {f"i{k}": draw(st.sampled_from(palette)) for k in range(n_idx)}
    labels = list(sizes)
    n = draw(st.integers(2, 8))
    inputs = [draw(st.lists(st.sampled_from(labels), min_size=1, max_size=4)) for _ in range(n)]
    used = sorted({x for term in inputs for x in term})
    output = draw(st.lists(st.sampled_from(used), unique=True, max_size=3))
    net = Network.from_opt_einsum(inputs, output, {x: sizes[x] for x in used})
    alive, nxt, ssa = list(range(n)), n, []
    while len(alive) > 1:
        a, b = draw(st.lists(st.sampled_from(alive), min_size=2, max_size=2, unique=True))
        alive = [x for x in alive if x not in (a, b)] + [nxt]
        ssa.append((a, b))
        nxt += 1
    # Only an index some pairwise step sees can be sliced (one summed inside a tensor is refused).
    sliceable = sorted({i for term in leaf_legs(net) for i in term}) or [None]
    sliced = tuple(x for x in draw(st.lists(st.sampled_from(sliceable), unique=True, max_size=2)) if x is not None)
    return net, ssa, sliced


@settings(max_examples=300, deadline=None)
@given(scored_cases())
def test_score_path_totals_match_its_step_breakdown(case) -> None:
    net, ssa, sliced = case
    costs = tnplan.score_path(net, ssa, sliced)
    # The lean pass and the per-step breakdown are separate implementations of one rule.
    steps = costs.steps
    assert costs.contraction_cost == sum(s.cost for s in steps) * costs.n_slices
    assert costs.flops == sum(s.flops for s in steps) * costs.n_slices
    assert costs.write == sum(s.size for s in steps) * costs.n_slices
    assert costs.peak_size == max(s.size for s in steps)


@pytest.mark.parametrize(
    ("equation", "shapes", "sliced", "message"),
    [
        ("ab,bc,cd->ad", [(2, 3), (3, 4), (4, 5)], ("b", "b"), "listed twice"),
        ("abx,bc,cd->ad", [(2, 3, 4), (3, 4), (4, 5)], ("x",), "summed within one tensor"),
        ("aab,bc,cd->d", [(2, 2, 3), (3, 4), (4, 5)], ("a",), "summed within one tensor"),
    ],
)
def test_slicing_an_index_twice_or_one_summed_inside_a_tensor_is_refused(equation, shapes, sliced, message) -> None:
    # Each would contract the whole network once per slice and sum the copies: a multiple of the answer.
    net = Network.from_einsum(equation, *shapes)
    with pytest.raises(NetworkError, match=message):
        tnplan.from_path(net, [(0, 1), (0, 1)], sliced=sliced)
    plan = tnplan.from_path(net, [(0, 1), (0, 1)])
    data = json.loads(plan.to_json())
    data["sliced_indices"] = list(sliced)
    with pytest.raises(tnplan.PlanError, match=message):
        tnplan.Plan.from_json(json.dumps(data))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda net: tnplan.from_path(net, [(0.7, 1), (0, 1)]), "path positions must be integers"),
        (lambda net: tnplan.from_path(net, 5), "a path is a list of steps"),
        (lambda net: tnplan.score_path(net, [(0, 1), (2, 3)], sliced=["b"]), r"sliced index ids \(not labels\)"),
        (lambda net: tnplan.score_path(net, [(0, 1), (2, 3)], sliced=[7]), "not all in"),
        (lambda net: tnplan.score_path(net, [(0.5, 1), (2, 3)]), "pairs of integer tensor ids"),
        (lambda net: tnplan.score_path(net, [(0, 1, 2), (2, 3)]), "pairs of integer tensor ids"),
    ],
)
def test_positions_that_are_not_integers_are_refused_not_truncated(call, message) -> None:
    net = Network.from_einsum("ab,bc,cd->ad", (2, 3), (3, 4), (4, 2))
    with pytest.raises(NetworkError, match=message):
        call(net)
