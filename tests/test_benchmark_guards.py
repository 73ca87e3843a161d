"""The benchmark scripts refuse bad arguments and damaged inputs with one-line errors, and never replace
good results with partial, failed or smaller ones."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
RESULTS = BENCH / "results"


def _script(relpath: str) -> ModuleType:
    """A benchmark script imported as a module (its ``main(argv)`` then runs in this process)."""
    name = "guarded_" + relpath.replace("/", "_").removesuffix(".py")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BENCH / relpath)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the script runs
        spec.loader.exec_module(module)
    return sys.modules[name]


def _exit_code(call: Any, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run ``call()``, which must stop with SystemExit; its code and the stderr it wrote."""
    with pytest.raises(SystemExit) as stop:
        call()
    return stop.value.code, capsys.readouterr().err


def _assert_one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert all(w in lines[0] for w in words), err


# ------------------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "script,argv,word",
    [
        ("layers/run.py", ["--reps", "-2"], "--reps"),
        ("layers/run.py", ["--reps", "0"], "--reps"),
        ("layers/run.py", ["--batches", "1,0"], "--batches"),
        ("layers/run.py", ["--batches", "0,-1"], "--batches"),
        ("layers/run.py", ["--batches", "a"], "--batches"),
        ("layers/run.py", ["--batches", ""], "--batches"),
        ("layers/run.py", ["--ratio-range", "5"], "--ratio-range"),
        ("layers/run.py", ["--ratio-range", "a,b"], "--ratio-range"),
        ("layers/run.py", ["--ratio-range", "77000,2000"], "--ratio-range"),
        ("layers/run.py", ["--timeout", "-5"], "--timeout"),
        ("kernels/run.py", ["--timeout", "-5"], "--timeout"),
        ("kernels/run.py", ["--reps", "0"], "--reps"),
        ("kernels/run.py", ["--threads", "0,1"], "--threads"),
        ("layers/auto_cpu.py", ["--width", "0"], "--width"),
        ("compression/run.py", ["run", "--seeds", "a"], "--seeds"),
        ("planner/run.py", ["--budgets", "-1"], "--budgets"),
        ("planner/run.py", ["--seeds", "-1"], "--seeds"),
        ("layers/run.py", ["--archs", "", "--modes", ""], "--archs"),
        ("layers/run.py", ["--modes", "bar"], "'bar'"),
        ("layers/run.py", ["--archs", "ttn,foo"], "'foo'"),
        ("layers/run.py", ["--shapes", ""], "--shapes"),
        ("layers/run.py", ["--shapes", "3y4"], "--shapes"),
        ("layers/run.py", ["--bonds", "foo:2"], "--bonds"),
        ("kernels/run.py", ["--methods", "numba,nope"], "'nope'"),
        ("kernels/run.py", ["--archs", "bar"], "'bar'"),
        ("kernels/run.py", ["--shapes", "0x5"], "--shapes"),
        ("compression/run.py", ["run", "--smoke", "--batch-size", "-4"], "--batch-size"),
        ("compression/run.py", ["plan", "--dry-run", "--width", "-1"], "--width"),
    ],
)
def test_benchmark_scripts_refuse_nonsense_arguments(script, argv, word, tmp_path, capsys) -> None:
    # --dry-run / --report-only: were an argument let through, the script would stop soon after, not benchmark.
    extra = {"layers/auto_cpu.py": ["--results", str(tmp_path), "--report-only"], "compression/run.py": []}
    argv = [*argv, *extra.get(script, ["--out", str(tmp_path), "--dry-run"])]
    code, err = _exit_code(lambda: _script(script).main(argv), capsys)
    _assert_one_line_error(code, err, word)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "script,argv,word",
    [
        ("parallel/run.py", ["--budgets", "abc"], "--budgets"),
        ("parallel/run.py", ["--budgets", "-1"], "--budgets"),
        ("parallel/run.py", ["--seeds", "a"], "--seeds"),
        ("planner/slicing.py", ["--network", "nosuch"], "nosuch"),
        ("planner/slicing.py", ["--budget", "-1"], "--budget"),
        ("planner/slicing.py", ["--seeds", "x"], "--seeds"),
        ("planner/single_cuts.py", ["--network", "nosuch"], "nosuch"),
        ("planner/single_cuts.py", ["--sets", "5"], "--sets"),
        ("kernels/kron_cpu.py", ["--batch", "-5"], "--batch"),
        ("kernels/kron_cpu.py", ["--reps", "0"], "--reps"),
    ],
)
def test_scripts_without_a_dry_run_refuse_nonsense_arguments(script, argv, word, tmp_path) -> None:
    # These measure as soon as their arguments pass: run in a fresh process, as a user would, with a timeout.
    flag = "--results" if script.startswith("kernels/") else "--out"
    proc = subprocess.run([sys.executable, str(BENCH / script), *argv, flag, str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    _assert_one_line_error(proc.returncode, proc.stderr, word)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "script,argv",
    [
        ("parallel/run.py", ["--budgets", "0.1", "--seeds", "0", "--out"]),
        ("planner/slicing.py", ["--network", "mera_closed_8_b2", "--budget", "0.1", "--seeds", "0", "--out"]),
        ("planner/single_cuts.py", ["--network", "mera_closed_8_b2", "--out"]),
        ("planner/run.py", ["--only", "bin_matmul", "--methods", "oe-greedy", "--out"]),
        ("layers/run.py", ["--shapes", "64x64", "--archs", "ttn", "--out"]),
        ("kernels/run.py", ["--shapes", "64x64", "--archs", "ttn", "--bonds", "ttn:2", "--out"]),
        ("kernels/kron_cpu.py", ["--results"]),
        ("kernels/weight_model.py", ["--results"]),
        ("layers/auto_cpu.py", ["--quick", "--results"]),
        ("cache/run.py", ["--quick", "--out"]),
    ],
)
def test_an_unusable_output_folder_stops_the_run_before_it_measures(script, argv, tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = subprocess.run([sys.executable, str(BENCH / script), *argv, str(blocker / "out")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    _assert_one_line_error(proc.returncode, proc.stderr, "cannot write results to", str(blocker / "out"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_planner_benchmark_refuses_an_instances_folder_without_instances(tmp_path, capsys) -> None:
    run = _script("planner/run.py")
    code, err = _exit_code(lambda: run.parse_args(["--instances", str(tmp_path / "nonexistent")]), capsys)
    _assert_one_line_error(code, err, "does not exist")
    code, err = _exit_code(lambda: run.parse_args(["--instances", str(tmp_path)]), capsys)
    _assert_one_line_error(code, err, "holds no instances")
    (tmp_path / "cotengra").mkdir()
    (tmp_path / "cotengra" / "x.json").write_text("{}")
    assert run.parse_args(["--instances", str(tmp_path)]).instances == tmp_path


# ---------------------------------------------------------------------------- missing or damaged results

REPORT_ONLY = [
    ("planner/run.py", "planner.json", "--out"),
    ("kernels/run.py", "kernels-cpu.json", "--out"),
    ("layers/run.py", "layers.json", "--out"),
    ("layers/auto_cpu.py", "layers-auto-cpu.json", "--results"),
]


@pytest.mark.parametrize("script,name,flag", REPORT_ONLY)
def test_report_only_stops_on_a_missing_or_damaged_results_file(script, name, flag, tmp_path, capsys) -> None:
    main = _script(script).main
    code, err = _exit_code(lambda: main(["--report-only", flag, str(tmp_path)]), capsys)
    _assert_one_line_error(code, err, "does not exist")
    damaged = '{"runs": [{"shape": [4, 4], "kind": "de'  # cut off mid-write
    (tmp_path / name).write_text(damaged)
    code, err = _exit_code(lambda: main(["--report-only", flag, str(tmp_path)]), capsys)
    _assert_one_line_error(code, err, "damaged", "left as it is")
    assert (tmp_path / name).read_text() == damaged
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no Markdown rendered from it


def test_planner_resume_stops_on_a_damaged_results_file(tmp_path, capsys) -> None:
    path = tmp_path / "planner.json"
    path.write_text('{"meta": {}, "rows": [')
    code, err = _exit_code(lambda: _script("planner/run.py").ResultStore(path, resume=True), capsys)
    _assert_one_line_error(code, err, "damaged")
    assert path.read_text() == '{"meta": {}, "rows": ['


# ---------------------------------------------------------------------------- partial and failed runs


def test_planner_results_are_kept_until_the_new_run_has_a_row(tmp_path) -> None:
    run = _script("planner/run.py")
    path = tmp_path / "planner.json"
    old = '{"meta": {}, "instances": {}, "rows": [{"instance": "x"}]}'
    path.write_text(old)
    store = run.ResultStore(path, resume=False)
    store.set_meta({"cpu_model": "c", "runs": [{"date": "d"}]})
    inst = next(run.load_generated("ttn"))
    store.add_instance(inst)
    assert path.read_text() == old and not store.written
    row = {"instance": inst.name, "method": "oe-greedy", "budget": None, "seed": None, "status": "ok"}
    store.add(row)
    assert json.loads(path.read_text())["rows"] == [row] and inst.name in json.loads(path.read_text())["instances"]


def test_planner_quick_run_resumes_and_renders_its_own_file(tmp_path, capsys) -> None:
    run = _script("planner/run.py")
    (tmp_path / "planner.json").write_text("{}")  # a full run's file: a quick run never reads or writes it
    args = run.parse_args(["--quick", "--resume", "--out", str(tmp_path)])
    assert args.stem == "planner-quick"
    code, err = _exit_code(lambda: run.main(["--quick", "--report-only", "--out", str(tmp_path)]), capsys)
    _assert_one_line_error(code, err, "planner-quick.json", "does not exist")
    assert (tmp_path / "planner.json").read_text() == "{}"


def test_layers_run_interrupted_keeps_the_old_results_and_what_it_measured(tmp_path, monkeypatch, capsys) -> None:
    run = _script("layers/run.py")
    old = '{"old": "results"}'
    out = tmp_path / "out"  # tmp_path also holds the adntn cache conftest points at
    out.mkdir()
    (out / "layers.json").write_text(old)
    real = run.run_job
    calls: list[dict] = []

    def interrupted_after_one(spec: dict, env: dict, timeout: float) -> dict:
        if calls:
            raise KeyboardInterrupt  # Ctrl-C during the second worker
        calls.append(spec)
        return real(spec, env, timeout)

    monkeypatch.setattr(run, "run_job", interrupted_after_one)
    argv = ["--shapes", "64x64", "--archs", "ttn", "--bonds", "ttn:2", "--modes", "materialize", "--batches", "1",
            "--reps", "1", "--ratio-range", "1,1000", "--out", str(out)]  # fmt: skip
    assert run.main(argv) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and err.startswith("interrupted:")
    assert "layers.partial.json" in err
    assert (out / "layers.json").read_text() == old
    assert len(json.loads((out / "layers.partial.json").read_text())["runs"]) == 1
    # The same run, complete: it replaces the results and its partial files go.
    monkeypatch.setattr(run, "run_job", real)
    assert run.main(argv) == 0
    assert len(json.loads((out / "layers.json").read_text())["runs"]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["layers.json", "layers.md"]


def test_auto_cpu_at_another_width_or_interrupted_leaves_the_results_as_they_were(
    tmp_path, monkeypatch, capsys
) -> None:
    auto = _script("layers/auto_cpu.py")
    # Another width is another file: its --report-only looks for that one, not the default width's.
    (tmp_path / "layers-auto-cpu.json").write_text('{"rows": []}')
    code, err = _exit_code(lambda: auto.main(["--width", "256", "--results", str(tmp_path), "--report-only"]), capsys)
    _assert_one_line_error(code, err, "layers-auto-cpu-w256.json", "does not exist")
    old = '{"rows": [], "old": true}'
    (tmp_path / "layers-auto-cpu-quick-w64.json").write_text(old)
    real = auto.measure
    calls: list[tuple] = []

    def interrupted_after_one(*args: Any) -> dict:
        if calls:
            raise KeyboardInterrupt
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(auto, "measure", interrupted_after_one)
    assert auto.main(["--quick", "--width", "64", "--results", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("interrupted:") and len(err.strip().splitlines()) == 1
    assert (tmp_path / "layers-auto-cpu-quick-w64.json").read_text() == old
    partial = json.loads((tmp_path / "layers-auto-cpu-quick-w64.partial.json").read_text())
    assert len(partial["rows"]) == 1 and partial["width"] == 64
    assert (tmp_path / "layers-auto-cpu.json").read_text() == '{"rows": []}'


def test_result_files_are_written_only_through_the_atomic_helper() -> None:
    # A plain write_text of a result file leaves half a file when the run is killed mid-write.
    allowed = {"/proc/self/clear_refs", "spec.write_text"}  # not result files
    offenders = []
    for path in BENCH.rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            plain = re.search(r"\.write_text\(|open\([^)]*[\"']w", line)
            if plain and path.name != "harness.py" and not any(a in line for a in allowed):
                offenders.append(f"{path.relative_to(BENCH)}:{n}: {line.strip()}")
    assert not offenders, offenders


@pytest.mark.parametrize(
    "script,flag",
    [("planner/run.py", "--out"), ("layers/run.py", "--out"), ("kernels/run.py", "--out"),
     ("layers/auto_cpu.py", "--results")],
)  # fmt: skip
def test_quick_runs_never_write_into_benchmarks_results(script, flag, capsys) -> None:
    module = _script(script)
    argv = ["--quick", flag, str(RESULTS), "--report-only"]
    code, err = _exit_code(lambda: (module.parse_args if script == "planner/run.py" else module.main)(argv), capsys)
    _assert_one_line_error(code, err, "--quick never writes to benchmarks/results")


def test_planner_quick_run_defaults_to_a_temporary_folder() -> None:
    out = _script("planner/run.py").parse_args(["--quick", "--only", "bin_"]).out
    assert out.resolve() != RESULTS.resolve() and out.is_dir() and not list(out.iterdir())
    out.rmdir()


def test_layers_benchmark_whose_every_worker_fails_keeps_the_old_results(tmp_path, monkeypatch, capsys) -> None:
    run = _script("layers/run.py")
    old = '{"old": "results"}'
    (tmp_path / "layers.json").write_text(old)
    monkeypatch.setattr(run, "run_job", lambda spec, env, timeout: {**spec, "error": "boom"})
    argv = ["--shapes", "8x8,16x8", "--archs", "ttn", "--bonds", "ttn:2", "--ratio-range", "1,1e9"]
    assert run.main([*argv, "--out", str(tmp_path)]) == 1
    assert "every worker failed" in capsys.readouterr().err
    assert (tmp_path / "layers.json").read_text() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layers.json"]


def test_save_runs_writes_atomically_once_a_run_succeeded(tmp_path) -> None:
    harness = _script("harness.py")
    json_path, md_path = tmp_path / "r.json", tmp_path / "r.md"
    result: dict[str, Any] = {"runs": [{"error": "boom"}]}
    assert not harness.save_runs(result, json_path, md_path, lambda r: "md")
    assert not json_path.exists() and not md_path.exists()
    result["runs"].append({"ok": 1})
    assert harness.save_runs(result, json_path, md_path, lambda r: "md")
    assert json.loads(json_path.read_text()) == result and md_path.read_text() == "md"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.md"]  # no temporary file left


@pytest.mark.parametrize("readme", ["planner/README.md", "kernels/README.md", "layers/README.md"])
def test_readme_subset_commands_name_their_own_output_folder(readme) -> None:
    # A subset run without --out replaces the committed full results under benchmarks/results.
    text = (BENCH / readme).read_text().replace("\\\n", " ")
    commands = [line for line in text.splitlines() if re.match(r"\.venv/bin/python benchmarks/\w+/run\.py", line)]
    subset = [c for c in commands if re.search(r"--(only|shapes|archs|bonds|methods|batches|threads)\b", c)]
    assert subset
    for command in subset:
        assert "--out" in command, command


# ----------------------------------------------------------------------------------- compression table


def _compression_run(out: Path, seed: int, acc: float) -> None:
    """One finished e2e dense run folder, as ``compression/run.py run`` leaves it."""
    run_dir = out / "e2e" / "alexnet" / "dense" / f"seed{seed}"
    run_dir.mkdir(parents=True)
    config = {"model": "alexnet", "compress": {}, "epochs": 1, "batch_size": 8, "lr": 0.05, "momentum": 0.9,
              "weight_decay": 5e-4, "clip_grad": 1.0, "seed": seed, "width": 0.125, "fc_dim": 64, "dropout": 0.5,
              "train_limit": 100}  # fmt: skip
    summary = {"config": config, "layers": [], "total_params": 1000, "test_acc": acc, "epochs_done": 1,
               "wall_time_s": 1.0}  # fmt: skip
    meta = {"protocol": "e2e", "model": "alexnet", "variant": "dense", "seed": seed, "augment": "none", "amp": "off"}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "run.json").write_text(json.dumps(meta))


def test_compression_table_refuses_to_drop_runs_the_results_file_holds(tmp_path, capsys) -> None:
    run = _script("compression/run.py")
    out, results = tmp_path / "out", tmp_path / "results"
    _compression_run(out, 0, 80.0)
    _compression_run(out, 1, 81.0)
    argv = ["table", "--out", str(out), "--results", str(results)]
    assert run.main(argv) == 0
    full = (results / "compression.json").read_text()
    assert len(json.loads(full)["runs"]) == 2
    # Now only seed 0 is here (another machine, a partial copy): the table would drop seed 1.
    for f in (out / "e2e" / "alexnet" / "dense" / "seed1").iterdir():
        f.unlink()
    code, err = _exit_code(lambda: run.main(argv), capsys)
    _assert_one_line_error(code, err, "e2e/alexnet/dense/seed1", "--force")
    assert (results / "compression.json").read_text() == full
    assert run.main([*argv, "--force"]) == 0
    assert len(json.loads((results / "compression.json").read_text())["runs"]) == 1


def test_compression_table_warns_about_each_damaged_run(tmp_path, capsys) -> None:
    run = _script("compression/run.py")
    _compression_run(tmp_path, 0, 80.0)
    for seed, text in ((1, "{}"), (2, "[]")):
        bad = tmp_path / "e2e" / "alexnet" / "dense" / f"seed{seed}"
        bad.mkdir()
        (bad / "summary.json").write_text(text)
        (bad / "run.json").write_text("{}")
    assert [r["meta"]["seed"] for r in run._load_runs(tmp_path)] == [0]
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 2 and all(w.startswith("warning: skipped") for w in warnings)
    assert "seed1" in warnings[0] and "seed2" in warnings[1]
