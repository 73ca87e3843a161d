"""Forward+backward time and peak memory of TN layers against nn.Linear (torch, 1 thread).

For every layer shape (``IN x OUT``): a dense ``nn.Linear`` and ``adntn.TNLinear`` with the TTN, aTTN
and MERA generators at two bond dimensions each, chosen so the compression (dense weight entries per
generator parameter) spans about 2,000x to 77,000x; each in ``materialize``, ``stream`` and ``kron`` mode
(the last two where the generator has them), at batch 1, 32 and 256. Writes
``benchmarks/results/layers.{md,json}`` (``--quick``: ``layers-quick.*`` in a temporary folder unless
``--out``; never into ``benchmarks/results``). The files are replaced atomically after each worker, and only
once a worker has succeeded: a run whose every worker fails exits 1 and leaves them as they were.

Every (shape, config, mode) runs in a fresh process (``run.py --worker SPEC``) with
``torch.set_num_threads(1)``. Per batch it runs one untimed warm-up step, then one step whose peak
memory is measured (``VmHWM`` after the step minus ``VmRSS`` before it, the high-water mark reset by
writing ``5`` to ``/proc/self/clear_refs``), then ``--reps`` timed steps (median and min). A step is
``layer.zero_grad(); x.grad = None; y = layer(x); y.sum().backward()`` with ``x`` requiring grad.

Planning: all workers share one plan cache (a fresh temporary ``TNPLAN_CACHE_DIR`` unless
``--cache-dir``), so the first construction of a layer plans ("miss") and every later one loads its
plans ("hit"; networks of <= 3 tensors bypass the cache: "off"). Each worker wraps ``tnplan.plan``
with a counter and reports the calls made during forward+backward (the target is 0).

Examples::

    .venv/bin/python benchmarks/layers/run.py                      # the full benchmark
    .venv/bin/python benchmarks/layers/run.py --quick              # smoke test: tiny shapes, 2 reps -> a temp dir
    .venv/bin/python benchmarks/layers/run.py --shapes 4096x4096 --archs ttn --batches 1,256 --out /tmp/layers
    .venv/bin/python benchmarks/layers/run.py --bonds "ttn:8,12;mera:4" --out /tmp/layers   # fixed bond dims
    .venv/bin/python benchmarks/layers/run.py --report-only        # re-render layers.md from layers.json
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for _p in (HERE.parent, REPO):  # benchmarks/machine.py, adntn/tnplan from this checkout
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from harness import (  # noqa: E402
    check_output_dir,
    finish_report,
    int_list,
    interrupted,
    name_list,
    number_range,
    output_dir,
    parse_bonds,
    partial_stem,
    positive_float,
    positive_int,
    read_results,
    save_runs,
    shape_list,
    shape_name,
    spawn_worker,
    worker_main,
    write_atomic,
)
from machine import describe  # noqa: E402

from adntn.errors import AdntnError  # noqa: E402

ARCHS = ("ttn", "attn", "mera")
MODES = ("materialize", "stream", "kron")
ARCH_NAMES = {"ttn": "TTN", "attn": "aTTN", "mera": "MERA"}
DEFAULT_SHAPES = "4096x4096,25088x4096"
QUICK_SHAPES = "256x256,512x128"
RATIO_RANGE = (2000.0, 77000.0)
QUICK_RATIO_RANGE = (20.0, 77000.0)  # tiny layers cannot reach 2,000x
BOND_CANDIDATES = tuple(range(2, 65))
TARGET_SHAPE = (4096, 4096)
STREAM_SPEEDUP_TARGET = 5.0
WORKER_MARK = "LAYERS-RESULT "


# ---------------------------------------------------------------------------------------------- configs


class _GraphCaughtError(Exception):
    """Raised from a stand-in ``Generator.__init__`` to hand the built graph back before planning."""


def predicted_params(arch: str, in_features: int, out_features: int, bond: int) -> int:
    """Generator parameters of ``TNLinear(in, out, arch, bond_dim=bond)``, counted on the graph its
    generator builds (the architecture's own code and defaults) but without planning anything:
    ``Generator.__init__`` is swapped for a stand-in that stops at the graph. The worker checks the
    count against the built layer."""
    from adntn import TNLinear
    from adntn.generator import Generator

    def stop(self: Any, graph: Any, *args: Any, **kwargs: Any) -> None:
        raise _GraphCaughtError(graph)

    original = Generator.__init__
    Generator.__init__ = stop  # type: ignore[method-assign]
    try:
        TNLinear(in_features, out_features, arch=arch, bond_dim=bond)
    except _GraphCaughtError as caught:
        graph = caught.args[0]
    else:
        raise RuntimeError("TNLinear was built without constructing a Generator")
    finally:
        Generator.__init__ = original  # type: ignore[method-assign]
    return sum(math.prod(graph.sizes[x] for x in core.labels) for core in graph.cores.values())


def select_configs(
    shape: tuple[int, int], archs: list[str], bonds: dict[str, list[int]], lo: float, hi: float
) -> tuple[list[dict], list[dict]]:
    """Per arch, the bond dims to run (explicit ones, or the two whose compression lies in
    ``[lo, hi]`` nearest either end), and the configs skipped with the reason."""
    n_in, n_out = shape
    chosen, skipped = [], []
    for arch in archs:
        try:
            ratio = {b: n_in * n_out / predicted_params(arch, n_in, n_out, b) for b in bonds.get(arch, BOND_CANDIDATES)}
        except AdntnError as exc:
            skipped.append({"shape": list(shape), "arch": arch, "bond": None, "compression": None, "reason": str(exc)})
            continue
        inside = [b for b in ratio if lo <= ratio[b] <= hi]
        if arch in bonds:
            picks = inside
            for b in ratio:
                if b not in inside:
                    skipped.append(
                        {
                            "shape": list(shape),
                            "arch": arch,
                            "bond": b,
                            "compression": ratio[b],
                            "reason": f"compression {ratio[b]:,.0f}x outside [{lo:,.0f}, {hi:,.0f}]",
                        }
                    )
        elif not inside:
            near = min(ratio, key=lambda b: min(abs(math.log(ratio[b] / lo)), abs(math.log(ratio[b] / hi))))
            skipped.append(
                {
                    "shape": list(shape),
                    "arch": arch,
                    "bond": near,
                    "compression": ratio[near],
                    "reason": f"no bond dim in {min(ratio)}..{max(ratio)} gives a compression in "
                    f"[{lo:,.0f}, {hi:,.0f}]; nearest χ={near} ({ratio[near]:,.0f}x)",
                }
            )
            picks = []
        else:
            # the in-range bond with the lowest compression (largest bond) and the highest (smallest bond)
            picks = sorted({max(inside), min(inside)})
        for b in picks:
            chosen.append({"arch": arch, "bond": b, "predicted_compression": ratio[b]})
    return chosen, skipped


# ---------------------------------------------------------------------------------------------- worker


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


_LIBC: Any = None


def _trim() -> None:
    """Hand freed heap memory back to the OS, so that RSS before a step is what is live."""
    global _LIBC
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        if _LIBC is None:
            _LIBC = ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)


def _count_planner_calls() -> dict[str, int]:
    """Wrap ``tnplan.plan`` (and ``tnplan.planner.plan``) with a call counter."""
    import tnplan
    import tnplan.planner

    calls = {"n": 0}
    original = tnplan.planner.plan

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        return original(*args, **kwargs)

    tnplan.plan = counted
    tnplan.planner.plan = counted
    return calls


def run_worker(spec: dict) -> dict:
    import torch
    from torch import nn

    torch.set_num_threads(1)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    calls = _count_planner_calls()
    import adntn

    n_in, n_out = spec["shape"]
    kind, mode = spec["kind"], spec["mode"]
    out: dict[str, Any] = {**spec, "torch": torch.__version__, "threads": torch.get_num_threads()}
    log = sys.stderr
    torch.manual_seed(0)
    start = time.perf_counter()
    if kind == "dense":
        layer: Any = nn.Linear(n_in, n_out)
        out["build_s"] = time.perf_counter() - start
        out.update(params=n_in * n_out, params_total=n_in * n_out + n_out, compression=1.0, statuses=[])
        out["plans_at_build"] = 0
    else:
        layer = adntn.TNLinear(n_in, n_out, arch=spec["arch"], bond_dim=spec["bond"], mode=mode)
        out["build_s"] = time.perf_counter() - start
        out["plans_at_build"] = calls["n"]
        gen = layer.generator
        out.update(
            params=gen.num_parameters(),
            params_total=layer.num_parameters(),
            compression=layer.compression_ratio(),
            streamable=gen.streamable,
            splittable=gen.kron is not None,
            factors=[list(f) for f in gen.config["factors"]],
            statuses=[{k: r[k] for k in ("network", "cache", "tensors", "flops")} for r in gen.plan_report()],
        )
    out["rss_after_build_mib"] = (_status_kib("VmRSS") or 0) / 1024
    text = ", ".join(f"{s['network']}={s['cache']}" for s in out["statuses"]) or "no plans (dense)"
    print(f"  built in {out['build_s']:.2f} s; plan cache: {text}", file=log, flush=True)

    def step(x: Any) -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        y = layer(x)
        y.sum().backward()

    rows = []
    generator = torch.Generator().manual_seed(1)
    for batch in spec["batches"]:
        row: dict[str, Any] = {"batch": batch}
        if kind != "dense":
            saved = layer.mode
            layer.mode = "auto"
            row["auto"] = layer.mode_for(batch)
            layer.mode = saved
            row["streams"] = layer.uses_stream(batch)
            row["planned_flops"] = {"materialize": layer.generator.materialize_cost(batch)}
            if layer.generator.streamable:
                row["planned_flops"]["stream"] = layer.generator.stream_cost_at(batch)
        x = torch.randn(batch, n_in, generator=generator).requires_grad_(True)
        before_calls = calls["n"]
        step(x)  # warm-up
        # peak memory of one step
        layer.zero_grad(set_to_none=True)
        x.grad = None
        _trim()
        if _reset_peak():
            rss = _status_kib("VmRSS")
            step(x)
            hwm = _status_kib("VmHWM")
            row["peak_mib"] = None if rss is None or hwm is None else (hwm - rss) / 1024
        else:
            step(x)
            row["peak_mib"] = None
        times = []
        for _ in range(spec["reps"]):
            t = time.perf_counter()
            step(x)
            times.append((time.perf_counter() - t) * 1e3)
        row["planner_calls"] = calls["n"] - before_calls
        row.update(median_ms=statistics.median(times), min_ms=min(times), times_ms=times)
        rows.append(row)
        peak = "n/a" if row["peak_mib"] is None else f"{row['peak_mib']:.1f} MiB"
        auto = f", auto picks {row['auto']}" if "auto" in row else ""
        print(
            f"  batch {batch:4d}: median {row['median_ms']:9.3f} ms  min {row['min_ms']:9.3f} ms  peak {peak}{auto}",
            file=log,
            flush=True,
        )
        del x
    out["batches"] = rows
    out["planner_calls_fwd_bwd"] = sum(r["planner_calls"] for r in rows)
    return out


# ---------------------------------------------------------------------------------------------- parent


def run_job(spec: dict, env: dict[str, str], timeout: float) -> dict:
    return spawn_worker(Path(__file__).resolve(), spec, env, timeout, WORKER_MARK)


def config_name(run: dict) -> str:
    if run["kind"] == "dense":
        return "dense nn.Linear"
    return f"{ARCH_NAMES[run['arch']]} χ={run['bond']}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", type=shape_list, default=None, help=f"IN x OUT list (default {DEFAULT_SHAPES})")
    ap.add_argument("--batches", type=int_list(1), default=[1, 32, 256], help="comma list (default 1,32,256)")
    ap.add_argument("--reps", type=positive_int, default=None, help="timed steps per batch (default 5; 2 with --quick)")
    ap.add_argument("--archs", type=name_list(ARCHS), default=list(ARCHS), help=f"comma list from {','.join(ARCHS)}")
    ap.add_argument(
        "--bonds", type=parse_bonds, default={}, help='fixed bond dims, e.g. "ttn:8,12;mera:4" (default: chosen)'
    )
    ap.add_argument(
        "--ratio-range", type=number_range, default=None, help="compression range LO,HI (default 2000,77000)"
    )
    ap.add_argument(
        "--modes", type=name_list(MODES), default=list(MODES), help=f"TN modes to run, from {','.join(MODES)}"
    )
    ap.add_argument("--quick", action="store_true", help=f"smoke test: shapes {QUICK_SHAPES}, 2 reps")
    ap.add_argument("--out", type=Path, default=None, help="output dir (default benchmarks/results; quick: temp)")
    ap.add_argument("--cache-dir", type=Path, default=None, help="plan cache dir (default: a fresh temp dir)")
    ap.add_argument("--timeout", type=positive_float, default=3600.0, help="seconds per worker process")
    ap.add_argument("--report-only", action="store_true", help="re-render the Markdown from the JSON")
    ap.add_argument("--dry-run", action="store_true", help="list the chosen configs and worker runs, run nothing")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        return worker_main(run_worker, args.worker, WORKER_MARK)

    stem = "layers-quick" if args.quick else "layers"
    out_dir = output_dir(args.out, args.quick, "layers-quick-")
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    if args.report_only:
        write_atomic(md_path, markdown(read_results(json_path, ("runs", "shapes", "ratio_range"))))
        print(f"wrote {md_path}")
        return 0

    shapes = args.shapes or shape_list(QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
    batches = args.batches
    reps = args.reps if args.reps is not None else 2 if args.quick else 5
    archs, modes, bonds = args.archs, args.modes, args.bonds
    lo, hi = args.ratio_range or (QUICK_RATIO_RANGE if args.quick else RATIO_RANGE)

    with contextlib.ExitStack() as stack:
        if args.cache_dir is None:
            cache_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tnplan-layers-")))
        else:
            cache_dir = args.cache_dir
            cache_dir.mkdir(parents=True, exist_ok=True)
        was_empty = not any(cache_dir.iterdir())
        env = {**os.environ, "TNPLAN_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        result: dict[str, Any] = {
            "machine": describe(),
            "date": time.strftime("%Y-%m-%d"),
            "quick": args.quick,
            "shapes": [list(s) for s in shapes],
            "batches": batches,
            "reps": reps,
            "ratio_range": [lo, hi],
            "cache_dir": str(cache_dir),
            "cache_dir_temporary": args.cache_dir is None,
            "cache_dir_was_empty": was_empty,
            "selection": [],
            "skipped": [],
            "runs": [],
        }
        jobs = []
        for shape in shapes:
            chosen, skipped = select_configs(shape, archs, bonds, lo, hi)
            result["selection"] += [{"shape": list(shape), **c} for c in chosen]
            result["skipped"] += skipped
            for s in skipped:
                print(f"SKIP {shape_name(shape)} {ARCH_NAMES[s['arch']]} χ={s['bond']}: {s['reason']}")
            jobs.append({"shape": list(shape), "kind": "dense", "arch": None, "bond": None, "mode": "dense"})
            for c in chosen:
                for mode in modes:
                    jobs.append(
                        {
                            "shape": list(shape),
                            "kind": "tn",
                            "arch": c["arch"],
                            "bond": c["bond"],
                            "mode": mode,
                            "predicted_compression": c["predicted_compression"],
                        }
                    )
        if args.dry_run:
            for job in jobs:
                pred = job.get("predicted_compression")
                ratio = f"  {pred:,.0f}x compression (predicted)" if pred else ""
                print(f"{shape_name(job['shape']):>12} {config_name(job):<16} {job['mode']:<12}{ratio}")
            print(f"{len(jobs)} worker runs, batches {batches}, {reps} timed reps each")
            return 0
        check_output_dir(out_dir)
        try:
            measured = run_jobs(jobs, result, env, args.timeout, out_dir, stem)
        except KeyboardInterrupt:
            return interrupted(out_dir, stem, sum("error" not in r for r in result["runs"]))
        if not measured:
            print(f"every worker failed; {json_path} was not written", file=sys.stderr)
            return 1
        finish_report(out_dir, stem, result, markdown)
    report = markdown(result)
    print()
    print(report[report.index("## Target check") : report.index("## Plan cache log")].rstrip())
    print(f"\nwrote {md_path} and {json_path}")
    return 0


def run_jobs(
    jobs: list[dict], result: dict[str, Any], env: dict[str, str], timeout: float, out_dir: Path, stem: str
) -> bool:
    """Run every job in its worker, adding its run (or why it was skipped) to ``result``; whether any
    worker succeeded. The partial files are rewritten after every worker: an interrupted run keeps what it
    measured, beside the complete results it would replace (left as they were)."""
    batches, reps = result["batches"], result["reps"]
    json_path, md_path = out_dir / f"{partial_stem(stem)}.json", out_dir / f"{partial_stem(stem)}.md"
    unstreamable: set[tuple] = set()
    unsplittable: set[tuple] = set()
    for k, job in enumerate(jobs, 1):
        key = (tuple(job["shape"]), job["arch"], job["bond"])
        if job["mode"] in ("stream", "kron") and key in unstreamable:
            result["skipped"].append({**job, "reason": "the generator cannot stream (activation after its root)"})
            continue
        if job["mode"] == "kron" and key in unsplittable:
            result["skipped"].append({**job, "reason": "the root does not split into a Kronecker sum"})
            continue
        spec = {**job, "batches": batches, "reps": reps}
        print(f"[{k}/{len(jobs)}] {shape_name(job['shape'])} {config_name(job)} {job['mode']}", flush=True)
        t = time.perf_counter()
        run = run_job(spec, env, timeout)
        run["wall_s"] = time.perf_counter() - t
        if "error" in run:
            print(f"  FAILED: {run['error']}", flush=True)
            for line in run.get("traceback", []):
                print(f"    {line}", flush=True)
        elif job["kind"] == "tn":
            if not run.get("streamable", True):
                unstreamable.add(key)
            if not run.get("splittable", True):
                unsplittable.add(key)
        result["runs"].append(run)
        save_runs(result, json_path, md_path, markdown)
    return any("error" not in run for run in result["runs"])


# ---------------------------------------------------------------------------------------------- report


def _ok(run: dict) -> bool:
    return "error" not in run


def _dense_ms(result: dict, shape: list[int], batch: int) -> float | None:
    for run in result["runs"]:
        if _ok(run) and run["kind"] == "dense" and run["shape"] == shape:
            for row in run["batches"]:
                if row["batch"] == batch:
                    return row["median_ms"]
    return None


def _row(run: dict, batch: int) -> dict | None:
    return next((r for r in run.get("batches", []) if r["batch"] == batch), None)


def _fmt_ms(ms: float) -> str:
    return f"{ms:.3f}" if ms < 10 else f"{ms:.2f}" if ms < 100 else f"{ms:.1f}"


def _speedup(dense: float | None, ms: float) -> str:
    return "—" if dense is None else f"{dense / ms:.2f}×"


def target_lines(result: dict) -> list[str]:
    lo = result["ratio_range"][0]
    shapes = [tuple(s) for s in result["shapes"]]
    target_shape = TARGET_SHAPE if TARGET_SHAPE in shapes else (shapes[0] if result["quick"] else None)
    lines = ["### 1. 4096×4096 TTN layer at >= 2,000× compression", ""]
    if result["quick"]:
        lines += [
            f"*Quick run: checked on {shape_name(target_shape)} with compression >= {lo:,.0f}× instead; "
            "the verdicts say nothing about the real targets.*",
            "",
        ]
    ttn = [
        r
        for r in result["runs"]
        if _ok(r) and r["kind"] == "tn" and r["arch"] == "ttn" and target_shape and tuple(r["shape"]) == target_shape
    ]
    configs = sorted({r["bond"] for r in ttn if r["compression"] >= lo}, reverse=True)
    if not configs:
        return [*lines, "Not measured: no TTN run on a 4096×4096 layer at >= 2,000× compression in this run.", ""]
    shape = list(target_shape)
    for bond in configs:
        by_mode = {r["mode"]: r for r in ttn if r["bond"] == bond}
        any_run = next(iter(by_mode.values()))
        lines.append(
            f"**TTN χ={bond}** ({any_run['compression']:,.0f}× compression, {any_run['params']:,} parameters):"
        )
        lines.append("")
        # (a) batch 256, auto mode: the measured row of the mode auto picks (its forward runs exactly that path)
        dense = _dense_ms(result, shape, 256)
        rows = {m: _row(r, 256) for m, r in by_mode.items()}
        if dense is None or not any(rows.values()):
            lines.append("- batch 256: not measured")
        else:
            auto = next(r["auto"] for r in rows.values() if r)
            both = ", ".join(
                f"{m} {_fmt_ms(r['median_ms'])} ms ({dense / r['median_ms']:.2f}×)" for m, r in rows.items() if r
            )
            if rows.get(auto) is None:
                lines.append(f"- batch 256, auto mode picks {auto}, which was not run: **not measured** ({both})")
            else:
                t = rows[auto]["median_ms"]
                verdict = "PASS" if t <= dense else "FAIL"
                lines.append(
                    f"- batch 256, auto mode ({auto}): {_fmt_ms(t)} ms vs dense {_fmt_ms(dense)} ms "
                    f"= {dense / t:.2f}× → **{verdict}** (target: no slower than dense). Every mode: {both}."
                )
        dense = _dense_ms(result, shape, 1)
        row = _row(by_mode["stream"], 1) if "stream" in by_mode else None
        if dense is None or row is None:
            lines.append("- batch 1, stream mode: not measured")
        else:
            speed = dense / row["median_ms"]
            verdict = "PASS" if speed >= STREAM_SPEEDUP_TARGET else "FAIL"
            lines.append(
                f"- batch 1, stream mode: {_fmt_ms(row['median_ms'])} ms vs dense {_fmt_ms(dense)} ms = {speed:.2f}× "
                f"→ **{verdict}** (target: >= {STREAM_SPEEDUP_TARGET:g}× faster)."
            )
        lines.append("")

    lines += ["### 2. Planning once per layer shape", ""]
    tn = [r for r in result["runs"] if _ok(r) and r["kind"] == "tn"]
    seen: set[tuple] = set()
    firsts, later, bad_later, first_planned = 0, 0, [], 0
    for r in tn:
        key = (tuple(r["shape"]), r["arch"], r["bond"])
        statuses = [s["cache"] for s in r["statuses"]]
        if key in seen:
            later += 1
            if any(s not in ("hit", "off") for s in statuses):
                bad_later.append(f"{shape_name(r['shape'])} {config_name(r)} {r['mode']}")
        else:
            seen.add(key)
            firsts += 1
            first_planned += "miss" in statuses
    verdict = "PASS" if later and not bad_later else "FAIL" if bad_later else "not measured (one construction each)"
    detail = f"; planned again: {', '.join(bad_later)}" if bad_later else ""
    lines.append(
        f"- Cache hits on every later construction: {later} later construction(s), "
        f"{later - len(bad_later)} with every network hit/off{detail} → **{verdict}**."
    )
    note = "" if result["cache_dir_was_empty"] else " (the cache directory was not empty at the start)"
    lines.append(
        f'- First constructions: {firsts}, of which {first_planned} searched ("miss") and '
        f"{firsts - first_planned} found every plan already cached{note}."
    )
    calls = [(r, r["planner_calls_fwd_bwd"]) for r in result["runs"] if _ok(r)]
    total = sum(c for _, c in calls)
    worst = [f"{shape_name(r['shape'])} {config_name(r)} {r['mode']}: {c}" for r, c in calls if c]
    lines.append(
        f"- `tnplan.plan` calls during forward+backward: {total} over {len(calls)} worker(s)"
        f"{' (' + '; '.join(worst) + ')' if worst else ''} → **{'PASS' if calls and total == 0 else 'FAIL'}**."
    )
    return [*lines, ""]


def markdown(result: dict) -> str:
    lo, hi = result["ratio_range"]
    title = "# TN layers vs nn.Linear: forward+backward time and peak memory"
    if result["quick"]:
        title += " (quick smoke run)"
    lines = [
        title,
        "",
        f"Machine: {result['machine']}; {result['date']}; torch, 1 thread. Produced by `benchmarks/layers/run.py"
        f"{' --quick' if result['quick'] else ''}`.",
        "",
        f"One step = `layer.zero_grad(); x.grad = None; y = layer(x); y.sum().backward()` with `x` requiring grad. "
        f"Each (shape, config, mode) runs in a fresh process; per batch one untimed warm-up step, one step for "
        f"peak memory (VmHWM after the step minus VmRSS before it, the high-water mark reset through "
        f'/proc/self/clear_refs), then {result["reps"]} timed steps: the median (and min) in ms. "vs dense" is the '
        f"dense median over this row's median (> 1: faster than dense). Compression = dense weight entries / "
        f"generator parameters (bias excluded); bond dims chosen so it lies in [{lo:,.0f}, {hi:,.0f}]. "
        f'"auto picks" is the mode `TNLinear(mode="auto")` uses at that batch (`layer.mode_for(b)`).',
        "",
    ]
    for shape in result["shapes"]:
        runs = [r for r in result["runs"] if r["shape"] == shape and _ok(r)]
        n_in, n_out = shape
        lines += [
            f"## {n_in} → {n_out} (`nn.Linear({n_in}, {n_out})`, {n_in * n_out:,} weights)",
            "",
            "| config | params | compression | mode | batch | median ms | min ms | vs dense | peak MiB | auto picks |",
            "|---|---:|---:|---|---:|---:|---:|---:|---:|---|",
        ]
        for r in runs:
            ratio = "1×" if r["kind"] == "dense" else f"{r['compression']:,.0f}×"
            if r["kind"] == "tn" and not lo <= r["compression"] <= hi:
                ratio += " (outside range)"
            pred = r.get("predicted_compression")
            if pred and abs(r["compression"] / pred - 1) > 1e-9:
                ratio += f" (predicted {pred:,.0f}×)"
            for row in r["batches"]:
                dense = _dense_ms(result, shape, row["batch"])
                peak = "n/a" if row["peak_mib"] is None else f"{row['peak_mib']:.1f}"
                lines.append(
                    f"| {config_name(r)} | {r['params']:,} | {ratio} | {r['mode']} | {row['batch']} | "
                    f"{_fmt_ms(row['median_ms'])} | {_fmt_ms(row['min_ms'])} | {_speedup(dense, row['median_ms'])} | "
                    f"{peak} | {row.get('auto', '—')} |"
                )
        lines.append("")
    skipped = result["skipped"]
    failed = [r for r in result["runs"] if not _ok(r)]
    if skipped or failed:
        lines += ["## Skipped and failed", ""]
        for s in skipped:
            lines.append(f"- skipped {shape_name(s['shape'])} {ARCH_NAMES[s['arch']]} χ={s['bond']}: {s['reason']}")
        for r in failed:
            lines.append(f"- FAILED {shape_name(r['shape'])} {config_name(r)} {r['mode']}: {r['error']}")
        lines.append("")
    lines += ["## Target check", "", *target_lines(result)]
    lines += [
        "## Plan cache log",
        "",
        f"Plan cache: `{result['cache_dir']}`"
        f"{' (a fresh temporary directory)' if result.get('cache_dir_temporary') else ''}"
        f"{'' if result['cache_dir_was_empty'] else ', not empty at the start'}. One construction per worker process, "
        'in run order; statuses from `layer.generator.plan_report()` ("off": <= 3 tensors, never cached). '
        "`plan` calls: `tnplan.plan` calls while building / during all forward+backward steps.",
        "",
        "| # | layer | mode | build s | plan calls (build / fwd+bwd) | compression (predicted) | cache statuses |",
        "|---:|---|---|---:|---|---|---|",
    ]
    for k, r in enumerate(result["runs"], 1):
        if not _ok(r):
            lines.append(
                f"| {k} | {shape_name(r['shape'])} {config_name(r)} | {r['mode']} | — | — | — | failed: {r['error']} |"
            )
            continue
        statuses = ", ".join(f"{s['network']}: {s['cache']}" for s in r["statuses"]) or "—"
        comp = "—"
        if r["kind"] == "tn":
            pred = r.get("predicted_compression")
            comp = f"{r['compression']:,.0f}× ({pred:,.0f}×)" if pred else f"{r['compression']:,.0f}×"
        lines.append(
            f"| {k} | {shape_name(r['shape'])} {config_name(r)} | {r['mode']} | {r['build_s']:.2f} | "
            f"{r['plans_at_build']} / {r['planner_calls_fwd_bwd']} | {comp} | {statuses} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
