"""The planner and GPU-kernel benchmark scripts run end to end on tiny inputs and write what their readers expect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PLANNER = REPO / "benchmarks" / "planner"


def _run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def test_planner_benchmark_quick_run_writes_rows_and_targets(tmp_path: Path) -> None:
    _run([str(PLANNER / "run.py"), "--quick", "--only", "bin_matmul", "--methods", "tnplan,oe-greedy",
          "--out", str(tmp_path)])  # fmt: skip
    # A quick run has its own name: a full run's planner.json in the same folder stays as it is.
    assert not (tmp_path / "planner.json").exists()
    data = json.loads((tmp_path / "planner-quick.json").read_text())
    methods = {r["method"] for r in data["rows"] if r["instance"] == "bin_matmul_256"}
    assert methods == {"tnplan", "oe-greedy"}
    assert data["meta"]["runs"][-1]["tnplan_git"]
    text = (tmp_path / "planner-quick.md").read_text()
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


def test_gpu_kernels_script_runs_on_the_cpu_from_an_exported_plan_cache(tmp_path: Path) -> None:
    # A GPU session is rare and short: the script must work there the first time. Here it plans,
    # exports, then runs cache-only on the CPU, where the CUDA executor is the numba one.
    script = REPO / "benchmarks" / "kernels" / "gpu.py"
    plans = tmp_path / "plans.json"
    _run([str(script), "plan", "--smoke", "--plans", str(plans)])
    _run([str(script), "run", "--smoke", "--device", "cpu", "--plans", str(plans), "--results", str(tmp_path),
          "--warmup", "1", "--reps", "3", "--batch", "64"])  # fmt: skip
    result = json.loads((tmp_path / "kernels-gpu.json").read_text())
    assert result["configs"]
    for config in result["configs"]:
        for name in ("torch-eager", "cuda"):
            assert config["generator"][name]["median_ms"] > 0, (name, config["generator"][name])
        layer = config["layer"]
        assert layer["dense-tf32"]["median_ms"] > 0
        assert layer["materialize-torch"]["planner_calls"] == 0
        assert "error" in layer["materialize-torch-graph"]  # CUDA graphs need a CUDA device
        # The Kronecker stream (Triton's interpreter here) ran and matched the materialised gradients.
        assert layer["kron-triton"]["planner_calls"] == 0 and layer["kron-triton"]["median_ms"] > 0
        assert layer["kron-triton"]["grad_rel_err"] < 1e-5
    assert "## Targets" in (tmp_path / "kernels-gpu.md").read_text()


def test_gpu_layer_verdicts_come_from_the_interleaved_comparison_when_there_is_one() -> None:
    sys.path.insert(0, str(REPO / "benchmarks" / "kernels"))
    import gpu

    def config(decided: dict | None) -> dict:
        layer = {"dense-tf32": {"median_ms": 2.0}, "stream-torch-graph": {"median_ms": 1.9}}
        if decided:
            layer[gpu.DECIDER] = decided
        return {"arch": "ttn", "bond": 2, "shape": [8, 8], "params": 9, "compression": 10.0, "generator": {},
                "layer": layer}  # fmt: skip

    result = {"device": "X", "torch": "t", "date": "d", "batch": 8, "reps": 3, "configs": [
        config({"variant": "stream-torch-graph", "dense_ms": 1.8, "layer_ms": 1.85}), config(None)]}  # fmt: skip
    lines = [t for t in gpu.targets(result) if "input layer" in t]
    # The single pass says 1.9 < 2.0; the interleaved replays say 1.85 > 1.8 and decide.
    assert lines[0].startswith("- FAIL")
    assert "1.850 ms (stream-torch-graph) vs 1.800 ms (0.97x, interleaved)" in lines[0]
    assert lines[1].startswith("- PASS") and "single pass" in lines[1]
    text = gpu.markdown(result)
    assert "| ttn χ=2 | stream-torch-graph | 1.800 | 1.850 | 0.97x |" in text
    assert gpu.DECIDER not in text.split("| config |")[1].splitlines()[0]  # not a column of the variants table


def test_overlap_benchmark_renders_its_table_and_refuses_without_a_gpu(tmp_path: Path) -> None:
    script = REPO / "benchmarks" / "kernels" / "overlap.py"
    result = {
        "device": "X",
        "torch": "t",
        "date": "d",
        "batch": 8,
        "configs": {"ttn χ=2 8x8": {"dense": 2.0, "ov": 2.5}},
    }
    src = tmp_path / "in.json"
    src.write_text(json.dumps(result))
    _run([str(script), "table", str(src), "--results", str(tmp_path)])
    row = next(line for line in (tmp_path / "kernels-gpu-overlap.md").read_text().splitlines() if "ttn" in line)
    assert row.endswith("| 2.000 | — | 2.500 | — | — | — | — | — | 0.80x |")
    proc = subprocess.run([sys.executable, str(script), "--results", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode != 0 and "GPU" in proc.stderr and "Traceback" not in proc.stderr


def test_swap_ab_renders_errors_and_refuses_without_a_gpu(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks" / "kernels"))
    import swap_ab

    rows = [
        {"config": "ttn χ=2 8x8", "error": "boom"},
        {
            "config": "ttn χ=3 8x8",
            "plain": 0.4,
            "swap": 0.3,
            "product": 0.24,
            "finish": {"plain": "ab->ba", "swap": "ab->ab", "product": "product"},
            "device": "X",
            "torch": "t",
        },
    ]
    text = swap_ab.markdown(rows)
    assert "Device: X; torch t" in text
    assert "| ttn χ=2 8x8 | error: boom |" in text
    assert "| ttn χ=3 8x8 | 0.400 | 0.300 | 0.240 | 0.80 | `ab->ba` | `ab->ab` | `product` |" in text
    script = REPO / "benchmarks" / "kernels" / "swap_ab.py"
    proc = subprocess.run(
        [sys.executable, str(script), "run", "--results", str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "GPU" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "kernels-gpu-swap.md").exists()


def test_interleaved_timing_alternates_the_variants_call_by_call() -> None:
    sys.path.insert(0, str(REPO / "benchmarks" / "kernels"))
    import gpu
    import torch

    calls: list[str] = []
    timer = gpu.Timer(torch.device("cpu"), warmup=1, reps=2)
    medians = timer.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3)
    assert set(medians) == {"a", "b"} and all(v >= 0 for v in medians.values())
    # one warm-up call each, then one timed call of each in turn (6 passes), the order rotating every pass
    assert calls == ["a", "b"] + ["a", "b", "b", "a"] * 3


def test_gpu_profile_script_refuses_without_a_gpu(tmp_path: Path) -> None:
    script = REPO / "benchmarks" / "kernels" / "gpu_profile.py"
    proc = subprocess.run([sys.executable, str(script), "--results", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode != 0 and "GPU" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "kernels-gpu-profile.md").exists()


def test_single_cuts_benchmark_floors_every_cut_and_proves_no_tree_fits(tmp_path: Path) -> None:
    _run([str(PLANNER / "single_cuts.py"), "--network", "mera_closed_8_b2", "--budget", "0.1", "--base-budget", "1",
          "--recheck", "2", "--recheck-budget", "0.2", "--recheck-seeds", "0", "--sets", "5,4", "--sets-below", "2",
          "--sets-budget", "0.1", "--out", str(tmp_path)])  # fmt: skip
    data = json.loads((tmp_path / "single-cuts.json").read_text())
    rows = data["rows"]
    assert len(rows) == 36  # every index of the closed 8-site MERA (none open)
    assert all("recheck" in r for r in rows[:2])
    assert [r["overhead"] for r in rows] == sorted(r["overhead"] for r in rows)
    # The unsliced plan of this 22-tensor MERA is proven optimal, and a cut never lowers the contraction cost.
    assert rows[0]["overhead"] >= 1.0 - 1e-9
    assert min(r["cost_overhead"] for r in rows) >= 1.0 - 1e-9
    # No tree fits 2 or 4 bits below the width, nor 2 below with any one index sliced.
    assert [(p["free_cuts"], p["verdict"]) for p in data["meta"]["width_proofs"]] == [
        (0, "no tree fits"),
        (0, "no tree fits"),
        (1, "no tree fits"),
    ]
    # Every pair of the 5 cheapest cuts and triple of the 4 cheapest, under a 4-bit cap; a set costs at
    # least each of its cuts alone (those one-cut plans are exact on 22 tensors).
    sets = data["cut_sets"]
    assert sorted(len(r["cuts"]) for r in sets) == [2] * 10 + [3] * 4
    single = {r["index"]: r["cost_overhead"] for r in rows}
    for r in sets:
        assert r["cost_overhead"] >= max(single[c] for c in r["cuts"]) - 1e-9
        assert not set(r["extra"]) & set(r["cuts"])
        if len(r["cuts"]) == 2:  # the pair with no cap: a floor under the capped plan, above each cut alone
            assert max(single[c] for c in r["cuts"]) - 1e-9 <= r["floor_cost_overhead"] <= r["cost_overhead"] + 1e-9
    text = (tmp_path / "single-cuts.md").read_text()
    assert "Smallest overhead of any single cut" in text and "## Can a plan avoid slicing?" in text
    assert "## Cut sets at 4 bits (2 below the unsliced width)" in text
    assert "every 4-bit plan costs at least **" in text
    # The slicing benchmark run beside it quotes both floors under its target check.
    _run([str(PLANNER / "slicing.py"), "--network", "mera_closed_8_b2", "--budget", "0.5", "--seeds", "0",
          "--out", str(tmp_path)])  # fmt: skip
    check = (tmp_path / "slicing.md").read_text().split("## Target check")[1]
    assert "No tree is 2 or 4 bits below the unsliced width (proven)" in check
    assert "At 2 bits below, no tree fits with any one index sliced either (proven)" in check


def test_kron_gpu_script_runs_in_the_triton_interpreter(tmp_path: Path) -> None:
    # The GPU run happens once, in a short session: the script is exercised here end to end on tiny
    # shapes (Triton's interpreter stands in for the GPU; tests/conftest.py sets TRITON_INTERPRET=1).
    pytest.importorskip("triton")
    plans = tmp_path / "plans.json"
    _run([str(REPO / "benchmarks" / "kernels" / "gpu.py"), "plan", "--smoke", "--plans", str(plans)])
    _run([str(REPO / "benchmarks" / "kernels" / "kron_gpu.py"), "--smoke", "--device", "cpu", "--plans", str(plans),
          "--results", str(tmp_path), "--warmup", "0", "--reps", "1"])  # fmt: skip
    result = json.loads((tmp_path / "kernels-gpu-kron.json").read_text())
    assert result["check"]["pass"] and max(result["check"]["float32"].values()) < 1e-5
    for kernel, table in result["sweep"]["kernels"].items():
        assert len(table) == 2 and all(v["3"]["ms"] > 0 for v in table.values()), kernel
    tuned = json.loads((tmp_path / "kron-config.json").read_text())["3"]
    assert set(tuned) == {"forward", "grad_a", "grad_b", "backward"}
    assert result["sweep"]["gemm_backward_ms"]["3"] > 0
    for row in result["layers"].values():
        assert row["grad_rel_err"] < 1e-5 and row["ms"]["kron"] > 0
    assert set(result["autocast"]) == {"ttn χ=3 64x64 input", "ttn χ=3 64x64 hidden"}
    for row in result["autocast"].values():  # float16 kernels against the float16 materialised layer
        assert row["grad_rel_err"] < 1e-2 and row["ms"]["kron"] > 0 and row["ms"]["dense-fp16"] > 0
    text = (tmp_path / "kernels-gpu-kron.md").read_text()
    assert "| ttn χ=3 64x64 input |" in text and "## Under float16 autocast" in text


def test_kron_kernels_compile_for_hopper_at_their_default_settings() -> None:
    # The interpreter checks the maths; only the real compiler checks what the GPU will run. Triton
    # builds for sm_90a without a device, so the default launches are compiled here (no spills, wgmma).
    pytest.importorskip("triton")
    # Then other shapes at their default rows per program: the mixer's (8 forward, 4 reducing its
    # weight's gradient), 16-wide halves (8, 4) and a 1024² MERA's 8x8|128x128 split (4, 2; its B̄
    # reduction runs on the transposed extents); last, the 64-wide defaults on float16 operands.
    code = (
        "import json, sys; sys.path.insert(0, 'benchmarks/kernels'); import kron_compile as k; "
        "NARROW = {'M': 16, 'P': 16, 'N': 16, 'Q': 16, 'BM': 16, 'BP': 16, 'BN': 16, 'BQ': 16}; "
        "MERA = {'M': 8, 'P': 8, 'N': 128, 'Q': 128, 'BM': 16, 'BP': 16, 'BN': 128, 'BQ': 128}; "
        "TRANSPOSED = {'M': 128, 'P': 128, 'N': 8, 'Q': 8, 'BM': 128, 'BP': 128, 'BN': 16, 'BQ': 16}; "
        "print(json.dumps([k.compile_one(n, s, 64, 16) for n, s in "
        "(('forward', (2, 8, 2)), ('reduce', (1, 8, 2)))] + [k.compile_one('forward', (2, 8, 2), 64, 24, wide=True)]"
        " + [k.compile_one(n, s, 64, 1, shape=sh) for n, s, sh in (('forward', (8, 8, 2), k.MIXER), "
        "('reduce', (4, 8, 2), k.MIXER), ('forward', (8, 8, 2), NARROW), ('reduce', (4, 8, 2), NARROW), "
        "('forward', (4, 8, 2), MERA), ('reduce', (2, 8, 2), MERA), ('reduce', (2, 8, 2), TRANSPOSED))]"
        " + [k.compile_one(n, s, 64, 16, half=True) for n, s in (('forward', (2, 8, 2)), ('reduce', (1, 8, 2)))]))"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    for i, row in enumerate(rows):
        assert row["viable"], row
        # The MERA split's Ā reduction: its products have BB*16 and 16 rows, below the 64 of wgmma's
        # warpgroup tiles at 1 or 2 rows per program, so they compile to mma.sync (no spills).
        assert (row["wgmma"] > 0) == (i != 8), (i, row)


def test_kron_cpu_benchmark_times_every_mode(tmp_path: Path) -> None:
    _run([str(REPO / "benchmarks" / "kernels" / "kron_cpu.py"), "--batch", "8", "--width", "64", "--reps", "1",
          "--results", str(tmp_path)])  # fmt: skip
    result = json.loads((tmp_path / "kernels-kron-cpu.json").read_text())
    assert set(result["rows"]) == {"ttn χ=2", "ttn χ=16", "mera χ=2", "mera χ=8", "attn χ=2", "attn χ=9"}
    assert all(row[m] > 0 for row in result["rows"].values() for m in ("materialize", "stream", "kron"))
    # Materialising costs the dense product and the generator on top.
    assert all(row["flops"]["materialize"] > 1 for row in result["rows"].values())
    assert "| mera χ=2 |" in (tmp_path / "kernels-kron-cpu.md").read_text()


def test_auto_cpu_benchmark_scores_the_pick_against_every_mode(tmp_path: Path) -> None:
    _run([str(REPO / "benchmarks" / "layers" / "auto_cpu.py"), "--quick", "--results", str(tmp_path)])
    result = json.loads((tmp_path / "layers-auto-cpu-quick.json").read_text())
    assert len(result["rows"]) == 12  # two configs, two batches, three regimes
    for row in result["rows"]:
        assert set(row["seconds"]) == set(row["predicted"]) == {"materialize", "stream", "kron"}
        assert row["fastest"] == min(row["seconds"], key=row["seconds"].__getitem__)
        assert row["auto"] in row["seconds"] and row["auto_regret"] >= 1 and row["flops_regret"] >= 1
    assert "auto picked the fastest mode in" in (tmp_path / "layers-auto-cpu-quick.md").read_text()
    # Rows went to the partial files while it ran; the complete run replaced them.
    written = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("layers-"))  # not conftest's cache
    assert written == ["layers-auto-cpu-quick.json", "layers-auto-cpu-quick.md"]


def test_kron_blocks_benchmark_forces_each_route_and_scores_the_rule(tmp_path: Path) -> None:
    _run([str(REPO / "benchmarks" / "kernels" / "kron_blocks_cpu.py"), "--quick", "--results", str(tmp_path)])
    result = json.loads((tmp_path / "kernels-kron-blocks-cpu-quick.json").read_text())
    assert len(result["rows"]) == 10  # four layers and the op, two batches each
    for row in result["rows"]:
        # Each forcing really ran its route (the quick shapes all allow blocks).
        assert row["mirror"] is not None and row["blocked_forwards"]["blocked"] >= 1
        assert row["blocked_forwards"]["einsum"] == 0
        one_block = row["intermediate_mib"] * 2**20 <= result["min_blocked_bytes"]
        assert row["rule"] == ("einsum" if one_block else "blocked")
        assert row["faster"] == min(row["ms"], key=row["ms"].__getitem__) and row["rule_cost"] >= 1
    assert {r["rule"] for r in result["rows"]} == {"einsum", "blocked"}
    assert "The rule took the faster route in" in (tmp_path / "kernels-kron-blocks-cpu-quick.md").read_text()


def _kernels_cpu_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("kernels_cpu_run", REPO / "benchmarks" / "kernels" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kernels_cpu_benchmark_reports_the_near_ties_it_timed(pin_calibration) -> None:
    import adntn

    script = _kernels_cpu_script()
    pin_calibration(numba=1.0, blas=1.0)  # every step a near tie: each is timed when compiled
    g = adntn.make_generator("ttn", 20, 30, bond_dim=2, n_factors=4, executor="torch")
    steps = script.step_picks(g)
    assert steps and all("timed_s" in st and st["blas"] == (st["timed_s"]["blas"] < st["timed_s"]["fused"])
                          for st in steps)  # fmt: skip

    def run(step: dict) -> dict:
        return {"kind": "tn", "arch": "ttn", "bond": 2, "threads": 1, "shape": [30, 20],
                "methods": {"numba": {"steps": [step]}}}  # fmt: skip

    model = {"blas": 2e-3, "fused": 3e-3}  # the model prefers BLAS
    agreed = {"bkn": [1, 2, 3], "flops": 6, "blas": True, "model_s": model, "timed_s": {"blas": 1.0, "fused": 2.0}}
    overruled = {**agreed, "blas": False, "timed_s": {"blas": 2.0, "fused": 1.0}}
    untimed = {k: v for k, v in agreed.items() if k != "timed_s"}
    text = script._tune_text({"runs": [run(agreed), run(overruled), run(untimed)]})
    assert text.startswith("2 step(s), 1 pick(s) overruled the model")
    assert text.count("(overruled the model)") == 1 and "-> fused (overruled the model)" in text
    assert script._tune_text({"runs": [run(untimed)]}) == "no step was a near tie."


def test_cache_benchmark_quick_run_times_hits_under_its_own_name(tmp_path: Path) -> None:
    script = REPO / "benchmarks" / "cache" / "run.py"
    _run([str(script), "--quick", "--only", "ttn_16", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "cache-quick.json").read_text())
    # Asked at the effort it was planned with, the stored plan answers every lookup: no search is timed.
    assert [r["network"] for r in result["hits"]] == ["ttn_16"]
    assert result["hits"][0]["fresh_status"] == "hit" and result["hits"][0]["other_status"] == "hit"
    written = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("cache"))
    assert written == ["cache-quick.json", "cache-quick.md"]
    proc = subprocess.run([sys.executable, str(script), "--quick", "--out", str(REPO / "benchmarks" / "results")],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and "--quick never writes to benchmarks/results" in proc.stderr


def _gpu_result() -> dict:
    return {"device": "X", "torch": "t", "date": "d", "batch": 8, "reps": 3, "configs": [
        {"arch": "ttn", "bond": 2, "shape": [8, 8], "params": 9, "compression": 7.1, "generator": {},
         "layer": {"dense-tf32": {"median_ms": 2.0}}}]}  # fmt: skip


def test_gpu_table_renders_before_it_writes_and_refuses_other_files(tmp_path: Path) -> None:
    script = REPO / "benchmarks" / "kernels" / "gpu.py"
    results = tmp_path / "results"
    results.mkdir()
    committed = json.dumps(_gpu_result())  # not gpu.py's own formatting: a re-render must keep it byte for byte
    (results / "kernels-gpu.json").write_text(committed)
    _run([str(script), "table", str(results / "kernels-gpu.json"), "--results", str(results)])
    assert (results / "kernels-gpu.json").read_text() == committed
    md = (results / "kernels-gpu.md").read_text()
    assert "ttn χ=2" in md
    # Another benchmark's file, and a file with the keys but not the rows: one line, exit 2, nothing replaced.
    other = tmp_path / "other.json"
    for data in ({"runs": [], "shapes": []}, {**_gpu_result(), "configs": [{"arch": "ttn"}]}):
        other.write_text(json.dumps(data))
        proc = subprocess.run([sys.executable, str(script), "table", str(other), "--results", str(results)],
                              capture_output=True, text=True)  # fmt: skip
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and str(other) in proc.stderr
        assert (results / "kernels-gpu.json").read_text() == committed
        assert (results / "kernels-gpu.md").read_text() == md
    for name in ("gpu.py", "overlap.py", "kron_gpu.py"):
        proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "kernels" / name), "table",
                               str(tmp_path / "missing.json"), "--results", str(results)],
                              capture_output=True, text=True)  # fmt: skip
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (name, proc.stderr)
        assert "does not exist" in proc.stderr
    assert sorted(p.name for p in results.iterdir()) == ["kernels-gpu.json", "kernels-gpu.md"]


def test_kron_compile_results_name_their_machine_and_date() -> None:
    sys.path.insert(0, str(REPO / "benchmarks" / "kernels"))
    import kron_compile

    row = {"registers": 96, "spill_stores": 0, "spill_loads": 0, "shared": 2048, "wgmma": 4, "viable": True}
    result = {"triton": "3", "bond": 16, "rows": {"forward 1x4x1": row}}
    assert "Machine: not recorded; date not recorded." in kron_compile.markdown(result)
    text = kron_compile.markdown({**result, "machine": "Some CPU", "date": "2026-12-01"})
    assert "Machine: Some CPU; 2026-12-01." in text
    source = (REPO / "benchmarks" / "kernels" / "kron_compile.py").read_text()
    assert '"machine": describe()' in source and '"date": time.strftime' in source


def test_planner_report_renders_no_empty_bullet() -> None:
    sys.path.insert(0, str(PLANNER))
    import report

    data = json.loads((REPO / "benchmarks" / "results" / "planner.json").read_text())
    assert not [line for line in report.render(data).splitlines() if line.strip() == "-"]
