"""Tests of the ``tnplan`` command line, run in-process through :func:`tnplan.cli.main` (plus one subprocess)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from spec import SUMMARY_KEYS, run_cli

import tnplan
from tnplan import Network

# The repository and shared/ are siblings (locally /work/main and /work/shared; in CI a clone and its shared/).
REPO = Path(__file__).resolve().parents[1]
INSTANCES = REPO.parent / "shared" / "bench" / "instances"


run = run_cli


def plan_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    code, out, err = run(argv, capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1, out  # exactly one JSON object
    summary = json.loads(lines[0])
    assert isinstance(summary, dict)
    return summary


def test_plan_file_json(capsys: pytest.CaptureFixture[str]) -> None:
    file = INSTANCES / "einsum-benchmark" / "bin_matmul_256.json"
    summary = plan_json(["plan", str(file), "--json", "--max-time", "0.5"], capsys)
    assert set(summary) >= SUMMARY_KEYS
    # ij,jk->ik with i=j=k=256: one step, product 256**3, j summed -> flops 2 * 256**3.
    assert summary["contraction_cost"] == 256**3
    assert summary["flops"] == 2 * 256**3
    assert summary["log10_flops"] == pytest.approx(math.log10(2 * 256**3), abs=1e-6)
    assert summary["peak_size"] == 256**2
    assert summary["log2_size"] == pytest.approx(16.0)
    assert summary["path"] == [[0, 1]]
    assert summary["n_slices"] == 1 and summary["sliced_indices"] == []
    assert summary["optimal"] is True


def test_plan_eq_shapes_json(capsys: pytest.CaptureFixture[str]) -> None:
    summary = plan_json(["plan", "--eq", "ab,bc->ac", "--shapes", "2x3,3x4", "--json"], capsys)
    assert set(summary) >= SUMMARY_KEYS
    # one matmul step: a,b,c involved (2*3*4), b summed -> times 2
    assert summary["flops"] == 2 * 2 * 3 * 4
    assert summary["contraction_cost"] == 2 * 3 * 4
    assert summary["peak_size"] == 2 * 4


def test_plan_table_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["plan", "--eq", "ab,bc,cd->ad", "--shapes", "2x3,3x4,4x5", "--max-time", "0.5"], capsys)
    assert code == 0, err
    assert "flops" in out
    assert out.count("\n") > 5


def test_plan_save_writes_a_loadable_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "plan.json"
    summary = plan_json(
        ["plan", "--eq", "ab,bc,cd->ad", "--shapes", "2x3,3x4,4x5", "--json", "--save", str(file)], capsys
    )
    loaded = tnplan.Plan.from_json(file)
    assert loaded.flops == summary["flops"]
    assert [list(p) for p in loaded.path] == summary["path"]


def write(tmp_path: Path, name: str, text: str) -> str:
    file = tmp_path / name
    file.write_text(text, encoding="utf-8")
    return str(file)


BAD_INPUTS = {
    "missing-file": lambda d: ["plan", str(d / "absent.json")],
    "malformed-json": lambda d: ["plan", write(d, "bad.json", '{"inputs": [["a"]],')],
    "mismatched-sizes": lambda d: [
        "plan",
        write(d, "sizes.json", '{"format_string": "ab,bc->ac", "shapes": [[2, 3], [4, 5]]}'),
    ],
    "eq-without-shapes": lambda d: ["plan", "--eq", "ab,bc->ac"],
    "negative-max-time": lambda d: ["plan", "--eq", "ab,bc->ac", "--shapes", "2x3,3x4", "--max-time", "-1"],
    "negative-max-time-equals": lambda d: ["plan", "--eq", "ab,bc->ac", "--shapes", "2x3,3x4", "--max-time=-1"],
    "unknown-minimize": lambda d: ["plan", "--eq", "ab,bc->ac", "--shapes", "2x3,3x4", "--minimize", "speed"],
    "bad-shapes": lambda d: ["plan", "--eq", "ab,bc->ac", "--shapes", "2x3,3xq"],
    "rank-mismatch": lambda d: ["plan", "--eq", "ab,bc->ac", "--shapes", "2x3,3"],
    "no-network": lambda d: ["plan"],
    "file-and-eq": lambda d: ["plan", write(d, "ok.json", "{}"), "--eq", "ab,bc->ac", "--shapes", "2x3,3x4"],
    "unknown-dtype": lambda d: ["plan", "--eq", "ab,bc->ac", "--shapes", "2x3,3x4", "--dtype", "float7"],
    "infinite-memory-limit": lambda d: ["plan", "--eq", "ab,bc->ac", "--shapes", "2x3,3x4", "--memory-limit", "inf"],
    "negative-seed": lambda d: ["plan", "--eq", "ab,bc->ac", "--shapes", "2x3,3x4", "--seed", "-1"],
    "infinite-max-time": lambda d: ["plan", "--eq", "ab,bc->ac", "--shapes", "2x3,3x4", "--max-time", "inf"],
    # Past validation today: they escape as OverflowError / TypeError / FileNotFoundError tracebacks.
    "infinite-size": lambda d: [
        "plan",
        write(d, "inf.json", '{"inputs": [["a"]], "output": [], "size_dict": {"a": Infinity}}'),
    ],
    "shapes-not-lists": lambda d: ["plan", write(d, "ints.json", '{"format_string": "a,b->ab", "shapes": [2, 3]}')],
    # 1e9 was read as 10^9 workers and hung building their tasks; 2.7 became 2.
    "workers-float": lambda d: ["plan", "--eq", "ab,bc->ac", "--shapes", "2x3,3x4", "--workers", "1e9"],
    "workers-too-many": lambda d: ["plan", "--eq", "ab,bc->ac", "--shapes", "2x3,3x4", "--workers", "100000"],
    "workers-fraction": lambda d: ["plan", "--eq", "ab,bc->ac", "--shapes", "2x3,3x4", "--workers", "2.7"],
    "save-into-missing-folder": lambda d: [
        "plan",
        "--eq",
        "ab,bc->ac",
        "--shapes",
        "2x3,3x4",
        "--save",
        str(d / "absent" / "plan.json"),
    ],
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(BAD_INPUTS[case](tmp_path), capsys)
    assert code == 2
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("tnplan")
    assert out == ""


def test_memory_limit_slices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A ring of 6 tensors with bond 8 and an open leg of size 2 on every tensor. Peak memory counts the
    # inputs (never freed) too, so a network whose inputs are most of its footprint (e.g. only 2 open legs
    # of size 8: inputs alone hold 1280 of 2368 elements) cannot fit half of it; here the intermediates
    # dominate, so halving the limit is reachable by slicing and not without it.
    bonds = "abcdef"
    inputs = [[bonds[i], bonds[(i + 1) % 6], f"x{i}"] for i in range(6)]
    sizes = {**dict.fromkeys(bonds, 8), **{f"x{i}": 2 for i in range(6)}}
    net = Network.from_opt_einsum(inputs, [f"x{i}" for i in range(6)], sizes)
    file = tmp_path / "ring.json"
    net.to_json(file)
    unsliced = tnplan.plan(net, max_time=0.2)
    assert unsliced.n_slices == 1
    inputs_bytes = 8 * sum(math.prod(s) for s in net.shapes)
    limit = unsliced.peak_memory("float64") // 2
    assert inputs_bytes < limit  # reachable at all
    summary = plan_json(["plan", str(file), "--json", "--memory-limit", str(limit), "--max-time", "0.2"], capsys)
    assert summary["n_slices"] > 1
    assert summary["sliced_indices"]
    assert summary["peak_memory"] <= limit
    assert summary["n_slices"] == math.prod(net.size_dict[lab] for lab in summary["sliced_indices"])


def test_console_module_subprocess() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tnplan.cli", "plan", "--eq", "ab,bc->ac", "--shapes", "2x3,3x4", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert set(summary) >= SUMMARY_KEYS
    assert summary["flops"] == 2 * 2 * 3 * 4
    bad = subprocess.run(
        [sys.executable, "-m", "tnplan.cli", "plan", "--eq", "ab,bc->ac"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


def test_compare_skips_exhaustive_anchors_on_large_networks(tmp_path: Path, capsys) -> None:
    # Without a time limit, opt_einsum's dp ran past a minute on a 100-tensor network.
    from tnplan.examples import random_regular

    file = tmp_path / "rr.json"
    file.write_text(random_regular(44, 3, 2, seed=1).to_json())
    code, out, err = run(["compare", str(file), "--methods", "tnplan,oe-dp", "--max-time", "0.2"], capsys)
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.startswith("rr"))
    assert "skipped" in row and "failed" not in row


def test_a_reader_that_leaves_early_ends_the_command_quietly(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tnplan.cli", "plan", "--eq", "ab,bc,cd->ad", "--shapes", "2x3,3x4,4x5", "--no-cache"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    proc.stdout.close()  # `tnplan ... | head` with head already gone
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and err == ""


def test_a_broken_pipe_other_than_stdout_is_an_error(monkeypatch, capsys) -> None:
    import tnplan.cli

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")  # as a dead worker or download connection raises it

    monkeypatch.setattr(tnplan.cli, "_cmd_plan", broken)
    code, _out, err = run(["plan", "--eq", "ab,bc->ac", "--shapes", "2x3,3x4"], capsys)
    assert code == 2 and "Broken pipe" in err
