"""Tests of the :class:`tnplan.Plan` value: JSON round trip, tamper detection, summary and describe."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import opt_einsum as oe
import pytest
from spec import SUMMARY_KEYS

import tnplan
from tnplan import Network, Plan, PlanError

INSTANCES = Path(__file__).resolve().parents[2] / "shared" / "bench" / "instances"

# Three tensors: planned by direct enumeration, so the test needs no compiled (numba) exact search.
EQUATION = "ab,bc,cd->ad"
SHAPES = [(2, 3), (3, 4), (4, 5)]


@pytest.fixture(scope="module")
def net() -> Network:
    return Network.from_einsum(EQUATION, *SHAPES)


@pytest.fixture(scope="module")
def planned(net: Network) -> Plan:
    return tnplan.plan(net, max_time=0.5)


def assert_same_plan(a: Plan, b: Plan) -> None:
    assert a.network == b.network
    assert a.path == b.path
    assert a.ssa_path == b.ssa_path
    assert a.flops == b.flops
    assert a.sliced_indices == b.sliced_indices
    assert a.n_slices == b.n_slices
    assert a.optimal == b.optimal
    assert a.minimize == b.minimize


def test_plan_is_scored_like_opt_einsum(planned: Plan) -> None:
    # Guards the round-trip tests: the plan must be a real, complete path whose flops an independent
    # implementation (opt_einsum, same flop convention) agrees with.
    assert len(planned.path) == len(SHAPES) - 1
    info = oe.contract_path(EQUATION, *SHAPES, shapes=True, optimize=[tuple(p) for p in planned.path])[1]
    assert planned.flops == int(info.opt_cost)
    # And it is no worse than opt_einsum's exhaustive optimum for flops.
    best = oe.contract_path(EQUATION, *SHAPES, shapes=True, optimize="optimal")[1]
    assert planned.flops <= int(best.opt_cost)


def test_json_string_round_trip(planned: Plan) -> None:
    text = planned.to_json()
    assert json.loads(text)["format"] == "tnplan.plan/1"
    assert_same_plan(Plan.from_json(text), planned)


def test_json_file_round_trip(planned: Plan, tmp_path: Path) -> None:
    file = tmp_path / "plan.json"
    planned.to_json(file)
    assert_same_plan(Plan.from_json(file), planned)  # a Path
    assert_same_plan(Plan.from_json(str(file)), planned)  # a str naming a file


def test_sliced_plan_round_trip(net: Network, tmp_path: Path) -> None:
    given = tnplan.from_path(net, [(0, 1), (0, 1)], sliced=("c",))
    assert given.sliced_indices == ("c",) and given.n_slices == 4
    file = tmp_path / "sliced.json"
    given.to_json(file)
    back = Plan.from_json(file)
    assert_same_plan(back, given)
    assert back.contraction_cost == given.contraction_cost


def test_tampered_flops_are_detected(planned: Plan) -> None:
    data = json.loads(planned.to_json())
    data["flops"] += 1
    with pytest.raises(PlanError, match="flops"):
        Plan.from_json(json.dumps(data))


@pytest.mark.parametrize("value", ["lots", None, [1], 1e400], ids=repr)
def test_non_numeric_stored_flops_are_a_plan_error(planned: Plan, value: object) -> None:
    data = json.loads(planned.to_json())
    data["flops"] = value
    with pytest.raises(PlanError):
        Plan.from_json(json.dumps(data))


def test_tampered_ssa_path_is_detected(planned: Plan) -> None:
    # Swap in another valid tree whose flops differ: the stored flops no longer match.
    n = len(SHAPES)
    other = None
    for candidate in ([(0, 1), (2, 3)], [(1, 2), (0, 3)], [(0, 2), (1, 3)]):
        if tnplan.score_path(planned.network, candidate).flops != planned.flops:
            other = candidate
            break
    assert other is not None and len(other) == n - 1
    data = json.loads(planned.to_json())
    data["ssa_path"] = [list(p) for p in other]
    with pytest.raises(PlanError, match="flops"):
        Plan.from_json(json.dumps(data))


@pytest.mark.parametrize(
    "ssa_path",
    [[[0, 0], [1, 3]], [[0, 1]], [[0, 1, 2]], "nonsense", [[0, 9], [1, 3]], [["0", 1], [2, 3]], [[0.7, 1], [2, 3]]],
    ids=["self-step", "too-short", "triple", "string", "unknown-tensor", "text-id", "float-id"],
)
def test_invalid_ssa_path_is_a_plan_error(planned: Plan, ssa_path: object) -> None:
    data = json.loads(planned.to_json())
    data["ssa_path"] = ssa_path
    with pytest.raises(PlanError):
        Plan.from_json(json.dumps(data))


def test_unknown_sliced_index_is_a_plan_error(planned: Plan) -> None:
    data = json.loads(planned.to_json())
    data["sliced_indices"] = ["zz"]
    with pytest.raises(PlanError, match="zz"):
        Plan.from_json(json.dumps(data))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("optimal", "false", "'optimal'"),
        ("planning_time", "x", "'planning_time'"),
        ("unsliced_flops", "x", "'unsliced_flops'"),
        ("dtype", "junk", "unknown dtype"),
        ("minimize", "speed", "'minimize'"),
    ],
)
def test_metadata_of_the_wrong_type_is_a_plan_error(planned: Plan, field: str, value: str, message: str) -> None:
    # A string "false" used to load as optimal=True, and a junk dtype broke summary() later.
    data = json.loads(planned.to_json())
    data[field] = value
    with pytest.raises(PlanError, match=message):
        Plan.from_json(json.dumps(data))


@pytest.mark.parametrize("source", [b"{}", 5, None, "", "   "])
def test_from_json_on_a_source_that_is_neither_text_nor_path(source: object) -> None:
    with pytest.raises(PlanError, match=r"JSON text or a file path|empty"):
        Plan.from_json(source)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    ["{garbage", "{}", '{"format": "tnplan.network/1"}', '{"format": "tnplan.plan/1"}', "[1, 2]", "hello"],
)
def test_from_json_on_garbage(text: str) -> None:
    with pytest.raises(PlanError):
        Plan.from_json(text)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda d: d / "bad.json", id="malformed-Path"),
        pytest.param(lambda d: str(d / "bad.json"), id="malformed-str"),
        pytest.param(lambda d: d / "network.json", id="network-not-plan-Path"),
        pytest.param(lambda d: str(d / "absent.json"), id="missing-str"),
        pytest.param(lambda d: d / "absent.json", id="missing-Path"),
    ],
)
def test_from_json_on_garbage_files(tmp_path: Path, make: Callable[[Path], str | Path]) -> None:
    (tmp_path / "bad.json").write_text("not json", encoding="utf-8")
    Network.from_einsum("ab,bc->ac", (2, 3), (3, 4)).to_json(tmp_path / "network.json")
    with pytest.raises(PlanError):
        Plan.from_json(make(tmp_path))


def test_summary_keys_and_values(planned: Plan) -> None:
    summary = planned.summary()
    assert set(summary) >= SUMMARY_KEYS
    assert summary["path"] == [list(p) for p in planned.path]
    assert summary["flops"] == planned.flops
    assert summary["contraction_cost"] == planned.contraction_cost
    assert summary["peak_size"] == planned.peak_size
    assert summary["write"] == planned.write
    assert summary["n_slices"] == 1 and summary["sliced_indices"] == []
    assert summary["optimal"] is True  # 3 tensors: every tree is enumerated
    assert summary["planning_time_s"] >= 0
    json.dumps(summary)  # JSON-ready


def test_describe_has_one_row_per_step(planned: Plan) -> None:
    text = planned.describe()
    assert "flops" in text
    lines = text.splitlines()
    rule = next(k for k, line in enumerate(lines) if line and set(line) == {"-"})
    rows = [line for line in lines[rule + 1 :] if line.strip()]
    assert len(rows) == len(planned.path) == len(SHAPES) - 1
    assert [row.split()[0] for row in rows] == [str(k) for k in range(len(rows))]


def test_plan_json_refuses_deep_nesting_and_impossible_baselines() -> None:
    with pytest.raises(PlanError, match="nests too deeply"):
        Plan.from_json("[" * 100_000 + "]" * 100_000)
    plan = tnplan.plan(Network.from_einsum("ab,bc,cd->ad", (8, 64), (64, 64), (64, 8)), cache=False)
    data = json.loads(plan.to_json())
    data["unsliced_flops"] = -5
    with pytest.raises(PlanError, match="'unsliced_flops' is -5"):
        Plan.from_json(json.dumps(data))


def test_describe_and_objective_take_counts_past_the_largest_float() -> None:
    # A 100-site MPS contracted in a bad order: 10^349 flops, exact as Python integers.
    net = Network.from_json(INSTANCES / "cotengra" / "mps_mpo_L100_chi64_D5.json")
    n = net.num_tensors
    order = [*range(0, n, 2), *range(1, n, 2)]
    ssa, current = [], order[0]
    for k, t in enumerate(order[1:]):
        ssa.append((current, t))
        current = n + k
    plan = tnplan.from_path(net, tnplan.cost.ssa_to_linear(ssa, n))
    assert plan.log10_flops > 308
    text = plan.describe()
    assert f"e+{int(plan.log10_flops)}" in text and "peak memory:" in text
    assert plan.costs.objective("flops") == math.inf
