"""Run tnplan and the anchor planners side by side and write benchmarks/results/planner.{md,json}.

Every path, whichever planner found it, is re-scored with ``tnplan.cost.score_linear_path`` (the
project's one scorer). Planners run one at a time, in this process, except the exact ones (``oe-dp``,
``ctg-optimal``) which run in a child process killed after 60 s.

Examples:
    .venv/bin/python benchmarks/planner/run.py --suite all --budgets 1,5 --seeds 0,1,2
    .venv/bin/python benchmarks/planner/run.py --quick --only bin_ --methods oe-greedy,ctg-default  # -> a temp dir
    .venv/bin/python benchmarks/planner/run.py --resume            # continue an interrupted run
    .venv/bin/python benchmarks/planner/run.py --report-only       # re-render planner.md from planner.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for _p in (HERE, HERE.parent, REPO):  # sibling modules, benchmarks/machine.py, tnplan from this checkout
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import planners  # noqa: E402
import report  # noqa: E402
from harness import (  # noqa: E402
    budget_list,
    check_output_dir,
    fail,
    int_list,
    output_dir,
    read_results,
    write_atomic,
)
from machine import cpu_model  # noqa: E402
from planners import BUDGETED, CTG_OPTIMAL_MAX_TENSORS, HARD_TIMEOUT_S, METHODS, PlannerTimeoutError  # noqa: E402

from tnplan.cost import score_linear_path  # noqa: E402
from tnplan.network import Network  # noqa: E402

DEFAULT_INSTANCE_DIRS = (REPO / "shared" / "bench" / "instances", Path("/work/shared/bench/instances"))
INSTANCE_SUITES = ("einsum-benchmark", "cotengra")


# ---------------------------------------------------------------------------------------------- instances


@dataclass
class Instance:
    name: str
    suite: str
    network: Network
    meta: dict[str, Any] = field(default_factory=dict)


def _hyperedges(net: Network) -> int:
    counts: dict[Any, int] = {}
    for term in net.inputs:
        for lab in set(term):
            counts[lab] = counts.get(lab, 0) + 1
    out = set(net.output)
    return sum(1 for lab, c in counts.items() if c + (lab in out) > 2)


def _regular_degree(net: Network) -> int | None:
    """d when the network is a d-regular simple graph (every index on two tensors, d per tensor, none open)."""
    if net.output:
        return None
    counts: dict[Any, int] = {}
    for term in net.inputs:
        for lab in term:
            counts[lab] = counts.get(lab, 0) + 1
    degrees = {len(term) for term in net.inputs}
    if len(degrees) != 1 or any(c != 2 for c in counts.values()):
        return None
    if any(len(set(term)) != len(term) for term in net.inputs):
        return None
    return degrees.pop()


def _describe(name: str, suite: str, net: Network, source: str) -> dict[str, Any]:
    return {
        "suite": suite,
        "source": source,
        "n_tensors": net.num_tensors,
        "n_indices": net.num_indices,
        "n_open": len(net.output),
        "hyperedges": _hyperedges(net),
        "regular_degree": _regular_degree(net),
    }


def load_file_instances(root: Path, only: str | None) -> Iterator[Instance]:
    for suite in INSTANCE_SUITES:
        for path in sorted((root / suite).glob("*.json")):
            name = path.stem
            if only and only not in name:
                continue
            net = Network.from_json(path)
            meta = _describe(name, suite, net, str(path))
            data = json.loads(path.read_text(encoding="utf-8"))
            ref = (data.get("paths") or {}).get("opt_flops") if isinstance(data, dict) else None
            if ref:
                meta["ref_log10_flops"] = ref.get("log10_flops")
                meta["ref_log2_size"] = ref.get("log2_size")
                try:
                    costs = score_linear_path(net, planners.pairwise_linear_path(ref["path"], net.num_tensors))
                    meta["ref_rescored_log10_flops"] = costs.log10_flops
                    meta["ref_rescored_log2_size"] = costs.log2_size
                except Exception as exc:  # the reference path itself is data; report, don't crash
                    meta["ref_rescore_error"] = f"{type(exc).__name__}: {exc}"
            yield Instance(name, suite, net, meta)


def load_generated(only: str | None) -> Iterator[Instance]:
    try:
        from tnplan import examples
    except ImportError as exc:
        print(f"note: generated suite skipped: tnplan.examples is not importable ({exc})", flush=True)
        return
    families = getattr(examples, "FAMILIES", None)
    if not isinstance(families, dict):
        print("note: generated suite skipped: tnplan.examples has no FAMILIES dict", flush=True)
        return
    print(f"generated families: {', '.join(families)}", flush=True)
    for name, build in families.items():
        if only and only not in name:
            continue
        try:
            net = build()
        except Exception as exc:
            print(f"note: generated family {name!r} failed to build: {type(exc).__name__}: {exc}", flush=True)
            continue
        yield Instance(name, "generated", net, _describe(name, "generated", net, f"tnplan.examples.FAMILIES[{name!r}]"))


# ---------------------------------------------------------------------------------------------- results store


def row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["instance"], row["method"], row["budget"], row["seed"])


class ResultStore:
    """planner.json: machine header, instance metadata and raw rows, rewritten atomically after every row.

    Nothing is written before the first row: a run that stops (or fails) before measuring anything leaves
    an existing file as it was.
    """

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = path
        self.written = False
        self.data: dict[str, Any] = {"meta": {}, "instances": {}, "rows": []}
        if resume and path.exists():
            self.data = read_results(path, ("rows",))  # a damaged file stops the run and stays as it is
            self.data.setdefault("instances", {})
            self.data.setdefault("rows", [])
        # Error rows are kept but not counted as done: a resumed run retries them (the planner may have been
        # fixed since) and replaces them; timeouts and skips are final.
        self.done = {row_key(r) for r in self.data["rows"] if r["status"] != "error"}

    def set_meta(self, meta: dict[str, Any]) -> None:
        old = self.data.get("meta") or {}
        if old.get("cpu_model") and old.get("cpu_model") != meta.get("cpu_model"):
            print(f"warning: resuming results from another machine ({old.get('cpu_model')})", flush=True)
        runs = [*old.get("runs", []), meta["runs"][0]]
        merged = {**meta, "runs": runs}
        if meta.get("cotengra_defaults") == "n/a" and old.get("cotengra_defaults"):
            # A resumed run without ctg-default says nothing about it: keep what the run that had it found.
            merged["cotengra_defaults"] = old["cotengra_defaults"]
        self.data["meta"] = merged

    def add_instance(self, inst: Instance) -> None:
        self.data["instances"][inst.name] = inst.meta

    def add(self, row: dict[str, Any]) -> None:
        self.data["rows"] = [r for r in self.data["rows"] if row_key(r) != row_key(row)]
        self.data["rows"].append(row)
        self.done.add(row_key(row))
        self.flush()

    def flush(self) -> None:
        head = {k: v for k, v in self.data.items() if k != "rows"}
        text = json.dumps(head, ensure_ascii=False, indent=1)[:-2]  # drop the closing "\n}"
        rows = ",\n".join(json.dumps(r, ensure_ascii=False) for r in self.data["rows"])
        write_atomic(self.path, f'{text},\n "rows": [\n{rows}\n ]\n}}\n')
        self.written = True


# ---------------------------------------------------------------------------------------------- running


def _jobs(methods: list[str], budgets: list[float], seeds: list[int]) -> Iterator[tuple[str, float | None, int | None]]:
    for method in methods:
        if method in BUDGETED:
            for budget in budgets:
                for seed in seeds:
                    yield method, budget, seed
        else:
            yield method, None, None


# Ctrl-C: the first press lets the planner run in progress finish normally (both tnplan and cotengra treat a
# KeyboardInterrupt as "stop searching and return the best so far", which would record a truncated search),
# then stops; a second press aborts at once and the row in progress is discarded.
_STOP = threading.Event()
_ABORT = threading.Event()


_MAIN_PID = os.getpid()


def _on_sigint(signum: int, frame: Any) -> None:
    if os.getpid() != _MAIN_PID:  # a forked cotengra worker: let its task finish; the parent decides
        return
    if _STOP.is_set():
        _ABORT.set()
        raise KeyboardInterrupt
    _STOP.set()
    print(
        "\nCtrl-C: letting the planner run in progress finish (an exact-planner child is dropped), then stopping;"
        " press again to abort now",
        flush=True,
    )


TNPLAN_WATCHDOG_FACTOR = 10.0  # tnplan runs in this process; a run past 10 x budget + 60 s is stopped as a timeout
TNPLAN_WATCHDOG_SLACK_S = 60.0


@contextlib.contextmanager
def _watchdog(seconds: float) -> Iterator[None]:
    """Raise :class:`PlannerTimeoutError` in this (main) thread after ``seconds``; a no-op where SIGALRM is missing."""
    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _fire(signum: int, frame: Any) -> None:
        raise PlannerTimeoutError(f"stopped by the watchdog after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, _fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_one(inst: Instance, method: str, budget: float | None, seed: int | None) -> dict[str, Any]:
    """Plan ``inst`` with ``method`` and re-score the path; never raises for a planner failure."""
    net = inst.network
    row: dict[str, Any] = {
        "instance": inst.name,
        "suite": inst.suite,
        "n_tensors": net.num_tensors,
        "method": method,
        "budget": budget,
        "seed": seed,
        "status": "ok",
        "log10_flops": None,
        "log2_size": None,
        "log10_cost": None,
        "planning_time_s": None,
        "optimal": None,
        "reported_time_s": None,
        "drain_s": None,
        "error": None,
        "path": None,
    }
    if method in ("ctg-optimal", "oe-dp") and net.num_tensors > CTG_OPTIMAL_MAX_TENSORS:
        # Both exact anchors time out at 60 s on every network past this size (measured on this
        # machine); skipping them keeps the full run within the session.
        row.update(status="skipped", error=f"more than {CTG_OPTIMAL_MAX_TENSORS} tensors")
        return row
    problem = planners.anchor_problem(net)
    gc.collect()
    t0 = time.perf_counter()
    try:
        if method == "tnplan":
            assert budget is not None and seed is not None
            with _watchdog(TNPLAN_WATCHDOG_FACTOR * budget + TNPLAN_WATCHDOG_SLACK_S):
                planned = planners.plan_tnplan(net, budget, seed)
        elif method in ("oe-dp", "ctg-optimal"):
            planned = planners.plan_in_child(method, problem, HARD_TIMEOUT_S, should_stop=_STOP.is_set)
        elif method.startswith("oe-"):
            planned = planners.plan_oe(method, problem)
        elif method == "ctg-default":
            assert budget is not None
            planned = planners.plan_ctg_default(problem, budget)
        else:
            raise ValueError(f"unknown method {method!r}")
    except PlannerTimeoutError as exc:
        row.update(status="timeout", error=str(exc), planning_time_s=time.perf_counter() - t0)
        return row
    except Exception as exc:
        row.update(status="error", error=f"{type(exc).__name__}: {exc}"[:500], planning_time_s=time.perf_counter() - t0)
        return row
    row.update(
        planning_time_s=planned.time_s,
        optimal=planned.optimal,
        reported_time_s=planned.reported_time_s,
        drain_s=planned.drain_s,
    )
    try:
        path = planners.pairwise_linear_path(planned.path, net.num_tensors)
        costs = score_linear_path(net, path)
    except Exception as exc:
        row.update(status="error", error=f"invalid path: {type(exc).__name__}: {exc}"[:500])
        return row
    row.update(
        log10_flops=costs.log10_flops,
        log2_size=costs.log2_size,
        log10_cost=_log10(costs.contraction_cost),
        path=[list(step) for step in path],
    )
    return row


def _log10(x: int) -> float:
    import math

    return math.log10(x) if x > 0 else 0.0


def _fmt_row(row: dict[str, Any]) -> str:
    label = row["method"] + (f" T={row['budget']:g} s={row['seed']}" if row["budget"] is not None else "")
    t = row["planning_time_s"]
    t_txt = f"{t:8.3f}s" if t is not None else "        -"
    if row["status"] == "ok":
        extra = " optimal" if row["optimal"] else ""
        return f"  {label:<28} {row['log10_flops']:9.4f} log10 flops  {row['log2_size']:6.2f} log2 size  {t_txt}{extra}"
    return f"  {label:<28} {row['status']:>9}  {t_txt}  {row['error'] or ''}"


# ---------------------------------------------------------------------------------------------- machine header


def _version(mod: str) -> str:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return "not installed"


def _git_rev() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "tnplan"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        return rev.stdout.strip() + ("+dirty(tnplan/)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_meta(args: argparse.Namespace, ctg_defaults: str) -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "packages": {
            p: _version(p) for p in ("numpy", "opt_einsum", "cotengra", "kahypar", "networkx", "optuna", "cmaes")
        },
        "tnplan_git": _git_rev(),
        "cotengra_defaults": ctg_defaults,
        "hard_timeout_s": HARD_TIMEOUT_S,
        "ctg_optimal_max_tensors": CTG_OPTIMAL_MAX_TENSORS,
        "runs": [
            {
                "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "argv": sys.argv[1:],
                "suite": args.suite,
                "budgets": args.budgets,
                "seeds": args.seeds,
                "methods": args.methods,
                "tnplan_git": _git_rev(),
            }
        ],
    }


# ---------------------------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=("instances", "generated", "all"), default="all")
    ap.add_argument("--budgets", type=budget_list, default=[1.0, 5.0], help="seconds, comma list (default 1,5)")
    ap.add_argument("--seeds", type=int_list(0), default=[0, 1, 2], help="comma list (default 0,1,2)")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma list from {','.join(METHODS)}")
    ap.add_argument("--only", default=None, help="run only instances whose name contains this substring")
    ap.add_argument("--out", type=Path, default=None, help="output dir (default benchmarks/results; quick: temp)")
    ap.add_argument("--instances", type=Path, default=None, help="folder holding einsum-benchmark/ and cotengra/")
    ap.add_argument(
        "--quick", action="store_true", help="one seed (0) and budget 1 s, for smoke tests (writes planner-quick.*)"
    )
    ap.add_argument("--resume", action="store_true", help="keep planner.json and skip rows already in it")
    ap.add_argument("--report-only", action="store_true", help="only re-render planner.md from planner.json")
    ap.add_argument("--dry-run", action="store_true", help="list the work and its worst-case wall time, run nothing")
    args = ap.parse_args(argv)
    if args.quick:
        args.budgets, args.seeds = [1.0], [0]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        ap.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if args.instances is None:
        args.instances = next((d for d in DEFAULT_INSTANCE_DIRS if d.is_dir()), DEFAULT_INSTANCE_DIRS[-1])
    elif not any(path for suite in INSTANCE_SUITES for path in (args.instances / suite).glob("*.json")):
        # Ignored, it would leave a run of the generated networks only, which replaces planner.json's rows.
        what = "does not exist" if not args.instances.is_dir() else "holds no instances"
        fail(f"--instances {args.instances} {what} (expected {' or '.join(f'{s}/*.json' for s in INSTANCE_SUITES)})")
    args.out = output_dir(args.out, args.quick, "planner-quick-")
    # A smoke run's few rows must not replace a full run's file in the same folder.
    args.stem = "planner-quick" if args.quick else "planner"
    return args


def estimate_s(inst: Instance, methods: list[str], budgets: list[float], seeds: list[int]) -> float:
    """Rough wall time of one instance: budgets in full, exact planners to their timeout.

    ctg-default is not bounded by its budget (see README): on the largest networks one run plus the wait
    for its pool takes minutes, so treat the total as a floor for it.
    """
    total = 0.0
    for method, budget, _ in _jobs(methods, budgets, seeds):
        if budget is not None:
            total += budget + 0.5
        elif method == "oe-dp" or (method == "ctg-optimal" and inst.network.num_tensors <= CTG_OPTIMAL_MAX_TENSORS):
            total += HARD_TIMEOUT_S + 2.0
        else:
            total += 1.0
    return total


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    json_path, md_path = args.out / f"{args.stem}.json", args.out / f"{args.stem}.md"
    if args.report_only:
        data = read_results(json_path, ("meta", "instances", "rows"))
        write_atomic(md_path, report.render(data))
        print(f"wrote {md_path}")
        return 0

    instances: list[Instance] = []
    if args.suite in ("instances", "all"):
        instances += list(load_file_instances(args.instances, args.only))
    if args.suite in ("generated", "all"):
        instances += list(load_generated(args.only))
    if not instances:
        print("nothing to run: no instance matched", file=sys.stderr)
        return 1
    if args.dry_run:
        total = 0.0
        for inst in instances:
            est = estimate_s(inst, args.methods, args.budgets, args.seeds)
            total += est
            print(f"{inst.name:<50} {inst.network.num_tensors:5d} tensors  ~ {est:7.0f} s")
        print(
            f"{len(instances)} instances, about {total / 3600:.2f} h with budgets in full and exact planners timing"
            " out; ctg-default overruns on large networks add to this (about +35 min for the full default run)"
        )
        return 0

    check_output_dir(args.out)
    from tnplan.optimal import kernel_ready

    kernel_ready(block=True)  # compile tnplan's exact-search kernel once, before any timing
    # Before cotengra forks its worker pool, so that the workers inherit a handler that does not raise.
    signal.signal(signal.SIGINT, _on_sigint)
    ctg_defaults = "n/a"
    if "ctg-default" in args.methods:
        planners.warm_up_cotengra()
        ctg_defaults = planners.cotengra_defaults()
    store = ResultStore(json_path, args.resume)
    store.set_meta(machine_meta(args, ctg_defaults))
    print(f"cotengra HyperOptimizer defaults: {ctg_defaults}", flush=True)
    try:
        for inst in instances:
            store.add_instance(inst)
            print(f"{inst.name} ({inst.suite}, {inst.network.num_tensors} tensors)", flush=True)
            for method, budget, seed in _jobs(args.methods, args.budgets, args.seeds):
                key = (inst.name, method, budget, seed)
                if key in store.done:
                    continue
                if _STOP.is_set():
                    raise KeyboardInterrupt
                row = run_one(inst, method, budget, seed)
                if _ABORT.is_set():
                    raise KeyboardInterrupt  # this row may hold a truncated search: drop it
                store.add(row)
                print(_fmt_row(row), flush=True)
            if store.written:
                write_atomic(md_path, report.render(store.data))
            if _STOP.is_set():
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        if not store.written:
            print(f"stopped before any row was measured; {json_path} was left as it is", file=sys.stderr)
            return 130
        print(f"stopped; rows so far are in {json_path} (rerun the same command with --resume)", file=sys.stderr)
        write_atomic(md_path, report.render(store.data))
        return 130
    if not store.written:
        print(f"no row to run (all done already?); {json_path} was left as it is", file=sys.stderr)
        return 0
    write_atomic(md_path, report.render(store.data))
    print(f"wrote {json_path} and {md_path}")
    print(report.render_targets(store.data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
