"""The planner benchmark scripts run end to end on tiny inputs and write what their readers expect."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLANNER = REPO / "benchmarks" / "planner"


def _run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def test_planner_benchmark_quick_run_writes_rows_and_targets(tmp_path: Path) -> None:
    _run([str(PLANNER / "run.py"), "--quick", "--only", "bin_matmul", "--methods", "tnplan,oe-greedy",
          "--out", str(tmp_path)])  # fmt: skip
    data = json.loads((tmp_path / "planner.json").read_text())
    methods = {r["method"] for r in data["rows"] if r["instance"] == "bin_matmul_256"}
    assert methods == {"tnplan", "oe-greedy"}
    assert data["meta"]["runs"][-1]["tnplan_git"]
    text = (tmp_path / "planner.md").read_text()
    assert "## Target checks" in text and "bin_matmul_256" in text


def test_slicing_benchmark_meets_its_caps(tmp_path: Path) -> None:
    _run([str(PLANNER / "slicing.py"), "--network", "mera_closed_8_b2", "--budget", "1.0", "--seeds", "0",
          "--out", str(tmp_path)])  # fmt: skip
    rows = json.loads((tmp_path / "slicing.json").read_text())["rows"]
    assert sorted(r["bits"] for r in rows) == [2, 4]
    for r in rows:
        assert r["tnplan"]["log2_size"] <= r["target_log2_size"] + 1e-9
        # The unsliced plan of a 22-tensor MERA is proven optimal, so slicing can only add flops.
        assert r["tnplan"]["overhead"] >= 1.0 - 1e-9
    assert "## Target check" in (tmp_path / "slicing.md").read_text()
