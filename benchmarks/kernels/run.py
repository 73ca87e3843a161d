"""Generator forward+backward and a layer training step on the CPU: the numba executor vs torch and friends.

For every layer shape (``IN x OUT``) and architecture (TTN, aTTN, MERA) at two bond dimensions (the ends of
the 2,000x-77,000x compression range measured by ``benchmarks/layers/run.py``), one generator is built
(``executor="torch"``, seeded) and its weight ``W`` is produced, forward and backward, by:

- ``torch-eager``: the generator's compiled einsum programs (``executor="torch"``);
- ``numba``: the same generator with ``executor="numba"`` (``kernels.numba_weight``: fused CPU kernels,
  step adjoints as backward);
- ``torch.compile`` (default mode) and ``torch.compile(mode="reduce-overhead")`` of a function running
  ``generator.run_groups()`` (on the CPU, reduce-overhead has no CUDA graphs to capture);
- ``opt_einsum``: one ``opt_einsum.contract_expression`` per group on the group's network, along the
  group's planned path (``tnplan.cost.ssa_to_linear`` of its ``ssa_path``), with the activation in torch;
- ``cotengra``: one ``cotengra.ContractionTree.from_path(...)`` per group on the same path, contracted with
  ``backend="torch"``.

One step is ``zero_grad(); W = method(); W.backward(G)`` with a fixed random ``G``. Every method's first
call (the warm-up; for the compiled methods it includes compilation) is timed and reported separately, its
``W`` is checked against torch-eager's (max abs difference / max abs entry < 1e-4; mismatching methods are
not timed) and its core gradients are compared too; then ``--reps`` timed steps (median and min).

A full layer training step at batch 256 is measured as well: ``TNLinear(mode="materialize")`` with the
torch and the numba executor, ``TNLinear(mode="auto")`` with the default executor (it may stream, or take
the Kronecker route), and the dense ``nn.Linear``; one step is
``zero_grad(); y = layer(x); y.sum().backward()`` with ``x`` requiring grad.

Everything runs once at 1 thread and once at 2 (``torch.set_num_threads`` and ``numba.set_num_threads``,
``OMP_NUM_THREADS``/``MKL_NUM_THREADS``), each (threads, shape, config) in a fresh process. Plans, the
numba calibration, numba's compiled kernels and inductor's cache live in private temporary directories
shared by the run's workers. Writes ``benchmarks/results/kernels-cpu.{md,json}``.

Examples::

    .venv/bin/python benchmarks/kernels/run.py                        # the full benchmark
    .venv/bin/python benchmarks/kernels/run.py --quick                # smoke test -> a temp dir
    .venv/bin/python benchmarks/kernels/run.py --shapes 4096x4096 --archs ttn --threads 1 --reps 2
    .venv/bin/python benchmarks/kernels/run.py --report-only          # re-render the Markdown from the JSON
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for _p in (HERE.parent, REPO):  # benchmarks/machine.py, adntn/kernels/tnplan from this checkout
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from harness import (  # noqa: E402
    check_output_dir,
    fail,
    int_list,
    name_list,
    one_line,
    output_dir,
    parse_bonds,
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

STEM = "kernels-cpu"
ARCHS = ("ttn", "attn", "mera")
ARCH_NAMES = {"ttn": "TTN", "attn": "aTTN", "mera": "MERA"}
DEFAULT_SHAPES = "4096x4096,25088x4096"
QUICK_SHAPES = "256x256"
# The bond dims benchmarks/layers/run.py chose (compression nearest 2,000x and 77,000x), keyed by (in, out).
DEFAULT_BONDS = {
    (4096, 4096): {"ttn": [2, 13], "attn": [2, 9], "mera": [2, 8]},
    (25088, 4096): {"ttn": [5, 24], "attn": [5, 24], "mera": [3, 14]},
}
QUICK_BONDS = {"ttn": [2, 4], "attn": [2, 4], "mera": [2, 4]}
METHODS = ("torch-eager", "numba", "compile-default", "compile-reduce-overhead", "opt_einsum", "cotengra")
METHOD_NAMES = {
    "torch-eager": "torch eager",
    "numba": "numba",
    "compile-default": "torch.compile",
    "compile-reduce-overhead": 'torch.compile "reduce-overhead"',
    "opt_einsum": "opt_einsum",
    "cotengra": "cotengra",
}
LAYER_KINDS = ("dense", "materialize-torch", "materialize-numba", "auto")
LAYER_NAMES = {
    "dense": "dense nn.Linear",
    "materialize-torch": "materialize, torch",
    "materialize-numba": "materialize, numba",
    "auto": "auto (default executor)",
}
BATCH = 256
LARGE = 32 * 2**20  # shapes with more weights than this take --large-reps timed steps
TOLERANCE = 1e-4  # relative max error of W against torch eager (float32)
GRAD_TOLERANCE = 1e-3  # relative max error of the core gradients (reported, not gating)
TARGET_SPEEDUP = 2.0
WORKER_MARK = "KERNELS-RESULT "


# ---------------------------------------------------------------------------------------------- helpers


def rel_err(a: Any, ref: Any) -> float:
    """``max |a - ref| / max |ref|``."""
    scale = float(ref.abs().max())
    return float((a - ref).abs().max()) / (scale if scale > 0 else 1.0)


def _ms(seconds: float) -> float:
    return seconds * 1e3


# ---------------------------------------------------------------------------------------------- worker


def _set_threads(n: int) -> dict[str, Any]:
    import numba
    import torch

    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    numba.set_num_threads(n)
    return {"torch_threads": torch.get_num_threads(), "numba_threads": numba.get_num_threads()}


def _group_runner(g: Any, kind: str) -> tuple[Callable[[], Any], float]:
    """A function producing the padded weight through per-group opt_einsum / cotengra contractions on
    the generator's planned paths (activation in torch, operands gathered by ``Generator._operand``),
    and the seconds spent building the expressions / trees."""
    from adntn import activations
    from tnplan.cost import complete_ssa_path, ssa_to_linear

    start = time.perf_counter()
    contractors = []
    for gr in g.groups:
        net = gr.network
        linear = ssa_to_linear(complete_ssa_path(net, gr.ssa_path), net.num_tensors)
        eq = net.equation
        if kind == "opt_einsum":
            import opt_einsum

            expr = opt_einsum.contract_expression(eq, *net.shapes, optimize=linear)
            contractors.append(lambda ops, expr=expr: expr(*ops, backend="torch"))
        else:
            import cotengra

            lhs, out = eq.split("->")
            inputs = lhs.split(",")
            sizes = {
                c: d for term, shape in zip(inputs, net.shapes, strict=True) for c, d in zip(term, shape, strict=True)
            }
            tree = cotengra.ContractionTree.from_path(inputs, out, sizes, path=linear)
            contractors.append(lambda ops, tree=tree: tree.contract(ops, backend="torch"))
    setup = time.perf_counter() - start

    def run() -> Any:
        outputs: list[Any] = []
        for gr, contract in zip(g.groups, contractors, strict=True):
            z = contract([g._operand(op, outputs) for op in gr.operands])
            outputs.append(activations.apply(gr.activation, z))
        return outputs[-1].reshape(g.out_padded, g.in_padded)

    return run, setup


def _inductor_counters() -> dict[str, int]:
    with contextlib.suppress(Exception):
        from torch._dynamo.utils import counters

        return {k: int(v) for k, v in counters["inductor"].items() if k.startswith("fxgraph_cache")}
    return {}


def step_picks(g: Any) -> list[dict[str, Any]]:
    """Per numba step: its extents, the path it ran, the cost model's prices, and the timings that
    settled a near tie (:mod:`kernels.tune`), as ``compiled_steps`` chose them."""
    from kernels import tune
    from kernels.executor import compiled_steps, step_cost

    rows = []
    for gs in compiled_steps(g):
        for k, st in enumerate(gs.steps):
            last = k == len(gs.steps) - 1
            blas, fused = step_cost(st, last, gs.code, True), step_cost(st, last, gs.code, False)
            row = {"bkn": list(st.bkn), "flops": st.flops, "blas": st.blas, "model_s": {"blas": blas, "fused": fused}}
            timed = tune.step_times(st, last, gs.code, gs.keep_pre, measure=False)
            if timed is not None:
                row["timed_s"] = timed
            rows.append(row)
    return rows


def generator_methods(spec: dict, log: Any) -> dict[str, Any]:
    """Build the generator and measure every method's forward+backward."""
    import torch

    import adntn

    n_in, n_out = spec["shape"]
    reps = spec["reps"]
    torch.manual_seed(0)
    start = time.perf_counter()
    g = adntn.make_generator(spec["arch"], n_out, n_in, bond_dim=spec["bond"], executor="torch")
    out: dict[str, Any] = {
        "build_s": time.perf_counter() - start,
        "params": g.num_parameters(),
        "compression": n_out * n_in / g.num_parameters(),
        "padded": [g.out_padded, g.in_padded],
        "groups": [
            {
                "name": gr.name,
                "tensors": gr.network.num_tensors,
                "activation": gr.activation if isinstance(gr.activation, str) else "callable",
                "flops": gr.flops,
                "cache": gr.cache,
            }
            for gr in g.groups
        ],
    }
    print(
        f"  generator built in {out['build_s']:.2f} s: {out['params']:,} params, {out['compression']:,.0f}x, "
        f"groups {', '.join(x['name'] + '=' + x['cache'] for x in out['groups'])}",
        file=log,
        flush=True,
    )
    grad_out = torch.randn(g.out_padded, g.in_padded, generator=torch.Generator().manual_seed(1))
    grad_out = grad_out[: g.out_features, : g.in_features].contiguous()
    keys = list(g.cores.keys())

    def eager() -> Any:
        g.executor = "torch"
        return g()

    def numba_fn() -> Any:
        g.executor = "numba"
        return g()

    def compiled(mode: str) -> tuple[Callable[[], Any], float]:
        torch._dynamo.reset()

        def weight() -> Any:
            return g.run_groups()[-1].reshape(g.out_padded, g.in_padded)[: g.out_features, : g.in_features]

        fn = torch.compile(weight, mode=mode)

        def run() -> Any:
            g.executor = "torch"
            return fn()

        return run, 0.0

    def padded(run: Callable[[], Any]) -> Callable[[], Any]:
        return lambda: run()[: g.out_features, : g.in_features]

    factories: dict[str, Callable[[], tuple[Callable[[], Any], float]]] = {
        "torch-eager": lambda: (eager, 0.0),
        "numba": lambda: (numba_fn, 0.0),
        "compile-default": lambda: compiled("default"),
        "compile-reduce-overhead": lambda: compiled("reduce-overhead"),
        "opt_einsum": lambda: (lambda r: (padded(r[0]), r[1]))(_group_runner(g, "opt_einsum")),
        "cotengra": lambda: (lambda r: (padded(r[0]), r[1]))(_group_runner(g, "cotengra")),
    }
    ref_w = None
    ref_grads: dict[str, Any] = {}
    results: dict[str, Any] = {}
    for name in spec["methods"]:
        res: dict[str, Any] = {}
        results[name] = res
        try:
            run, setup = factories[name]()
            res["setup_ms"] = _ms(setup)

            def step(run: Callable[[], Any] = run) -> Any:
                g.zero_grad(set_to_none=True)
                w = run()
                w.backward(grad_out)
                return w

            before = _inductor_counters()
            t = time.perf_counter()
            w = step()
            res["first_ms"] = _ms(time.perf_counter() - t)
            if name.startswith("compile"):
                after = _inductor_counters()
                res["inductor_cache"] = {k: after.get(k, 0) - before.get(k, 0) for k in after}
            w = w.detach()
            grads = {k: g.cores[k].grad.detach().clone() for k in keys}
            if ref_w is None:
                if name != "torch-eager":
                    raise RuntimeError("torch-eager must run first: it is the reference")
                ref_w, ref_grads = w.clone(), grads
            res["w_err"] = rel_err(w, ref_w)
            res["grad_err"] = max(rel_err(grads[k], ref_grads[k]) for k in keys)
            del w, grads
            if not res["w_err"] < TOLERANCE:
                res["mismatch"] = True
                print(f"  {name:<24} MISMATCH: W rel err {res['w_err']:.2e} (not timed)", file=log, flush=True)
                continue
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                step()
                times.append(_ms(time.perf_counter() - t))
            res.update(median_ms=statistics.median(times), min_ms=min(times), times_ms=times)
            if name == "numba":
                res["steps"] = step_picks(g)
            print(
                f"  {name:<24} median {res['median_ms']:9.1f} ms  min {res['min_ms']:9.1f} ms  "
                f"first {res['first_ms']:9.1f} ms  W err {res['w_err']:.1e}  grad err {res['grad_err']:.1e}",
                file=log,
                flush=True,
            )
        except Exception as exc:  # a method that cannot run is a cell, not a crash
            res["error"] = one_line(exc)
            res["traceback"] = traceback.format_exc().splitlines()[-4:]
            print(f"  {name:<24} FAILED: {res['error']}", file=log, flush=True)
        finally:
            g.zero_grad(set_to_none=True)
            torch._dynamo.reset()
    out["methods"] = results
    g.executor = "torch"
    return out


def layer_steps(spec: dict, kinds: list[str], log: Any) -> dict[str, Any]:
    """One training step of a layer at batch 256, per layer kind."""
    import torch
    from torch import nn

    import adntn

    n_in, n_out = spec["shape"]
    x = torch.randn(BATCH, n_in, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    results: dict[str, Any] = {}
    probe: Any = None  # the materialize-numba layer, to ask what auto mode would do
    for kind in kinds:
        res: dict[str, Any] = {}
        results[kind] = res
        try:
            torch.manual_seed(0)
            if kind == "dense":
                layer: Any = nn.Linear(n_in, n_out)
            elif kind == "auto" and probe is not None and _timed(results.get("materialize-numba")):
                # Auto mode with the default executor runs exactly the materialize-numba code path when it
                # picks materialize on the CPU: reuse that measurement instead of timing the same path twice.
                probe.mode, probe.generator.executor = "auto", "auto"
                if not probe.uses_stream(BATCH) and probe.generator.uses_kernels():
                    same = results["materialize-numba"]
                    res.update({k: v for k, v in same.items() if k.endswith("_ms")}, same_as="materialize-numba")
                    res.update(path="materialize", executor="numba")
                    print(f"  layer {kind:<20} picks materialize with numba: as materialize-numba", file=log)
                    continue
                layer = adntn.TNLinear(n_in, n_out, spec["arch"], spec["bond"], mode="auto")
            else:
                mode, _, executor = kind.partition("-")
                kwargs = {"executor": executor} if executor else {}
                layer = adntn.TNLinear(n_in, n_out, spec["arch"], spec["bond"], mode=mode, **kwargs)
            if kind != "dense":
                res["path"] = layer.mode_for(BATCH)
                streams = res["path"] != "materialize"
                res["executor"] = "torch" if streams or not layer.generator.uses_kernels() else "numba"

            def step(layer: Any = layer) -> None:
                layer.zero_grad(set_to_none=True)
                x.grad = None
                layer(x).sum().backward()

            t = time.perf_counter()
            step()
            res["first_ms"] = _ms(time.perf_counter() - t)
            times = []
            for _ in range(spec["reps"]):
                t = time.perf_counter()
                step()
                times.append(_ms(time.perf_counter() - t))
            res.update(median_ms=statistics.median(times), min_ms=min(times), times_ms=times)
            how = f" ({res['path']}, {res['executor']})" if "path" in res else ""
            print(
                f"  layer {kind:<20} median {res['median_ms']:9.1f} ms  min {res['min_ms']:9.1f} ms{how}",
                file=log,
                flush=True,
            )
            if kind == "materialize-numba":
                probe = layer
            del layer
        except Exception as exc:
            res["error"] = one_line(exc)
            res["traceback"] = traceback.format_exc().splitlines()[-4:]
            print(f"  layer {kind:<20} FAILED: {res['error']}", file=log, flush=True)
    return results


def run_worker(spec: dict) -> dict:
    threads = _set_threads(spec["threads"])
    import numba
    import torch

    out: dict[str, Any] = {**spec, **threads, "torch": torch.__version__, "numba": numba.__version__}
    if spec["kind"] == "calibrate":
        from kernels.calibrate import cache_file, calibration

        t = time.perf_counter()
        out["calibration"] = calibration()
        out["calibration_s"] = time.perf_counter() - t
        out["calibration_file"] = str(cache_file())
        return out
    if spec["kind"] == "dense":
        out["layers"] = layer_steps(spec, ["dense"], sys.stderr)
        return out
    out.update(generator_methods(spec, sys.stderr))
    if spec.get("layers", True):
        out["layers"] = layer_steps(spec, [k for k in LAYER_KINDS if k != "dense"], sys.stderr)
    return out


# ---------------------------------------------------------------------------------------------- parent


def run_job(spec: dict, env: dict[str, str], timeout: float) -> dict:
    n = str(spec["threads"])
    job_env = {**env, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n}
    return spawn_worker(Path(__file__).resolve(), spec, job_env, timeout, WORKER_MARK)


def _versions() -> dict[str, str]:
    out = {}
    for mod in ("torch", "numba", "numpy", "opt_einsum", "cotengra"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception as exc:  # a missing package becomes a failed cell in the workers
            out[mod] = f"unavailable ({one_line(exc)})"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--shapes",
        type=shape_list,
        default=None,
        help=f"IN x OUT list (default {DEFAULT_SHAPES}; {QUICK_SHAPES} quick)",
    )
    ap.add_argument("--archs", type=name_list(ARCHS), default=list(ARCHS), help=f"comma list from {','.join(ARCHS)}")
    ap.add_argument(
        "--bonds", type=parse_bonds, default={}, help='bond dims, e.g. "ttn:2,13;mera:8" (default: the layers ones)'
    )
    ap.add_argument("--threads", type=int_list(1), default=[1, 2], help="thread counts, each a full pass (default 1,2)")
    ap.add_argument("--reps", type=positive_int, default=3, help="timed steps per method (default 3)")
    ap.add_argument(
        "--large-reps",
        type=positive_int,
        default=None,
        help=f"timed steps for shapes over {LARGE:,} weights (default --reps)",
    )
    ap.add_argument(
        "--methods",
        type=name_list(METHODS),
        default=list(METHODS),
        help=f"generator methods from {','.join(METHODS)} (torch-eager always runs)",
    )
    ap.add_argument("--no-layers", action="store_true", help="skip the layer training steps")
    ap.add_argument("--quick", action="store_true", help=f"smoke test: {QUICK_SHAPES}, small bonds, 2 reps")
    ap.add_argument("--out", type=Path, default=None, help="output dir (default benchmarks/results; quick: temp)")
    ap.add_argument("--timeout", type=positive_float, default=1800.0, help="seconds per worker process")
    ap.add_argument("--report-only", action="store_true", help="re-render the Markdown from the JSON")
    ap.add_argument("--dry-run", action="store_true", help="list the worker runs, run nothing")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        return worker_main(run_worker, args.worker, WORKER_MARK)

    stem = f"{STEM}-quick" if args.quick else STEM
    out_dir = output_dir(args.out, args.quick, "kernels-quick-")
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    if args.report_only:
        write_atomic(md_path, markdown(read_results(json_path, ("runs", "shapes", "threads"))))
        print(f"wrote {md_path}")
        return 0

    shapes = args.shapes or shape_list(QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
    archs = args.archs
    methods = ["torch-eager", *(m for m in METHODS if m in args.methods and m != "torch-eager")]
    threads = args.threads
    reps = 2 if args.quick and args.reps == 3 else args.reps
    large_reps = reps if args.large_reps is None else args.large_reps
    explicit = args.bonds

    jobs: list[dict] = []
    for n in threads:
        for shape in shapes:
            table = QUICK_BONDS if args.quick else DEFAULT_BONDS.get(shape)
            if not args.no_layers:
                jobs.append({"kind": "dense", "threads": n, "shape": list(shape), "arch": None, "bond": None})
            for arch in archs:
                bonds = explicit.get(arch) or (table or {}).get(arch)
                if not bonds:
                    fail(f"no default bond dims for {shape_name(shape)} {arch}: give --bonds")
                for bond in bonds:
                    jobs.append({"kind": "tn", "threads": n, "shape": list(shape), "arch": arch, "bond": bond})
    for job in jobs:
        job.update(
            reps=large_reps if math.prod(job["shape"]) > LARGE else reps, methods=methods, layers=not args.no_layers
        )
    if args.dry_run:
        for job in jobs:
            what = "dense nn.Linear" if job["kind"] == "dense" else f"{ARCH_NAMES[job['arch']]} χ={job['bond']}"
            print(f"{job['threads']} thread(s)  {shape_name(job['shape']):>12}  {what}")
        print(
            f"{len(jobs)} worker runs (+{len(threads)} calibrations), {reps} timed reps each"
            f" ({large_reps} on large shapes)"
        )
        return 0

    check_output_dir(out_dir)
    wall = time.perf_counter()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kernels-bench-")))
        dirs = {k: tmp / k for k in ("tnplan", "adntn", "numba", "inductor")}
        for d in dirs.values():
            d.mkdir()
        env = {
            **os.environ,
            "TNPLAN_CACHE_DIR": str(dirs["tnplan"]),
            "ADNTN_CACHE_DIR": str(dirs["adntn"]),
            "NUMBA_CACHE_DIR": str(dirs["numba"]),
            "TORCHINDUCTOR_CACHE_DIR": str(dirs["inductor"]),
        }
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        from kernels import tune

        result: dict[str, Any] = {
            "machine": describe(),
            "date": time.strftime("%Y-%m-%d"),
            "versions": _versions(),
            "quick": args.quick,
            "shapes": [list(s) for s in shapes],
            "threads": threads,
            "reps": reps,
            "large_reps": large_reps,
            "large": LARGE,
            "batch": BATCH,
            "tolerance": TOLERANCE,
            "tune_tie": tune.TIE,
            "tune_min_ms": tune.MIN_SECONDS * 1e3,
            "methods": methods,
            "cache_dirs": {k: str(v) for k, v in dirs.items()},
            "calibrations": None,
            "runs": [],
        }
        # One calibration per thread count (the cost model is per thread count), before any worker,
        # so every worker at that count reads the same one.
        result["calibrations"] = {}
        for n in threads:
            print(f"[calibrate] numba cost model at {n} thread(s)", flush=True)
            cal = run_job({"kind": "calibrate", "threads": n, "shape": None, "arch": None, "bond": None}, env, 600)
            result["calibrations"][str(n)] = cal
            if "error" in cal:
                print(f"  FAILED: {cal['error']}", flush=True)
            else:
                print(f"  measured in {cal['calibration_s']:.1f} s: {json.dumps(cal['calibration'])}", flush=True)
        for k, job in enumerate(jobs, 1):
            what = "dense nn.Linear" if job["kind"] == "dense" else f"{ARCH_NAMES[job['arch']]} χ={job['bond']}"
            print(f"[{k}/{len(jobs)}] {job['threads']} thread(s) {shape_name(job['shape'])} {what}", flush=True)
            t = time.perf_counter()
            run = run_job(job, env, args.timeout)
            run["wall_s"] = time.perf_counter() - t
            if "error" in run:
                print(f"  FAILED: {run['error']}", flush=True)
                for line in run.get("traceback", []):
                    print(f"    {line}", flush=True)
            result["runs"].append(run)
            result["wall_s"] = time.perf_counter() - wall
            save_runs(result, json_path, md_path, markdown)  # partial results survive
        result["wall_s"] = time.perf_counter() - wall
        if not save_runs(result, json_path, md_path, markdown):
            print(f"every worker failed; {json_path} was not written", file=sys.stderr)
            return 1
    report = markdown(result)
    print()
    print(report[report.index("## Target check") :].rstrip())
    print(f"\nwrote {md_path} and {json_path} (wall {result['wall_s'] / 60:.1f} min)")
    return 0


# ---------------------------------------------------------------------------------------------- report


def _fmt_ms(ms: float) -> str:
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 1000 else f"{ms:,.0f}"


def _cell(res: dict | None) -> str:
    """A method's median, or why there is none."""
    if res is None:
        return "—"
    if "error" in res:
        return f"error: {res['error']}"
    if res.get("mismatch"):
        return f"mismatch (W err {res['w_err']:.1e})"
    return _fmt_ms(res["median_ms"])


def _timed(res: dict | None) -> bool:
    return bool(res) and "median_ms" in res


def _tn_runs(result: dict, shape: list[int] | None = None) -> list[dict]:
    return [
        r for r in result["runs"] if r["kind"] == "tn" and "error" not in r and (shape is None or r["shape"] == shape)
    ]


def _dense(result: dict, shape: list[int], threads: int) -> dict | None:
    for r in result["runs"]:
        if r["kind"] == "dense" and r["shape"] == shape and r["threads"] == threads and "error" not in r:
            return r["layers"].get("dense")
    return None


def _speedup(run: dict) -> float | None:
    m = run["methods"]
    if _timed(m.get("torch-eager")) and _timed(m.get("numba")):
        return m["torch-eager"]["median_ms"] / m["numba"]["median_ms"]
    return None


def _config(run: dict) -> str:
    return f"{ARCH_NAMES[run['arch']]} χ={run['bond']}"


def target_lines(result: dict) -> list[str]:
    lines = [
        f"### numba >= {TARGET_SPEEDUP:g}× faster than torch eager (generator fwd+bwd)",
        "",
        "Per (shape, architecture, bond, threads): torch-eager median / numba median of the generator's "
        "forward+backward on the same plan.",
        "",
    ]
    if result["quick"]:
        lines += ["*Quick run on small shapes: the verdicts say nothing about the real target.*", ""]
    lines += [
        "| shape | config | threads | torch eager ms | numba ms | speed-up | verdict |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    passed = total = 0
    for r in _tn_runs(result):
        m = r["methods"]
        s = _speedup(r)
        total += 1
        if s is None:
            verdict = "**not measured**"
        elif s >= TARGET_SPEEDUP:
            verdict = "**PASS**"
            passed += 1
        else:
            verdict = "**FAIL**"
        lines.append(
            f"| {shape_name(r['shape'])} | {_config(r)} | {r['threads']} | {_cell(m.get('torch-eager'))} | "
            f"{_cell(m.get('numba'))} | {'—' if s is None else f'{s:.2f}×'} | {verdict} |"
        )
    failed = [r for r in result["runs"] if r["kind"] == "tn" and "error" in r]
    total += len(failed)
    for r in failed:
        lines.append(f"| {shape_name(r['shape'])} | {_config(r)} | {r['threads']} | — | — | — | **not measured** |")
    lines += ["", f"**{passed} of {total} PASS** → target **{'PASS' if total and passed == total else 'FAIL'}**.", ""]
    return lines


def _tune_text(result: dict) -> str:
    """The near-tie steps :mod:`kernels.tune` timed, per run, and whether the timing overruled the model."""
    parts, overruled = [], 0
    for r in sorted(_tn_runs(result), key=lambda r: (r["shape"], ARCHS.index(r["arch"]), r["bond"], r["threads"])):
        for st in r["methods"].get("numba", {}).get("steps", []):
            if "timed_s" not in st:
                continue
            model, timed = st["model_s"], st["timed_s"]
            flipped = (model["blas"] < model["fused"]) != st["blas"]
            overruled += flipped
            parts.append(
                f"{_config(r)} {shape_name(r['shape'])} at {r['threads']} thread(s), step {tuple(st['bkn'])} "
                f"({st['flops']:.2g} multiply-adds): model {model['blas'] * 1e3:.1f} / {model['fused'] * 1e3:.1f} ms, "
                f"timed {timed['blas'] * 1e3:.1f} / {timed['fused'] * 1e3:.1f} ms -> "
                f"{'BLAS' if st['blas'] else 'fused'}" + (" (overruled the model)" if flipped else "")
            )
    if not parts:
        return "no step was a near tie."
    return f"{len(parts)} step(s), {overruled} pick(s) overruled the model (BLAS / fused): " + "; ".join(parts) + "."


def _inductor_text(result: dict) -> str:
    """The FX graph cache hits and misses summed over every torch.compile first call."""
    totals: dict[str, int] = {}
    for r in _tn_runs(result):
        for k, res in r["methods"].items():
            if k.startswith("compile"):
                for name, n in (res.get("inductor_cache") or {}).items():
                    totals[name] = totals.get(name, 0) + n
    if not totals:
        return "no compile counters were recorded"
    hits, misses = totals.get("fxgraph_cache_hit", 0), totals.get("fxgraph_cache_miss", 0)
    cold = " (every compile was cold)" if misses and not hits else ""
    return f"{hits} hit(s) and {misses} miss(es) over all compiled graphs{cold} (`inductor_cache` in the JSON)"


def _reps_text(result: dict) -> str:
    reps, large = result["reps"], result.get("large_reps", result["reps"])
    if large == reps:
        return f"{reps} timed steps"
    return f"{reps} timed steps ({large} on shapes over {result['large']:,} weights, to fit the run in 30 minutes)"


def markdown(result: dict) -> str:
    v = result["versions"]
    title = "# Generator executors on the CPU: numba vs torch eager, torch.compile, opt_einsum, cotengra"
    if result["quick"]:
        title += " (quick smoke run)"
    # Older results hold one calibration, measured at 1 thread.
    cals = result.get("calibrations") or {"1": result.get("calibration") or {}}
    parts = []
    for n, cal in cals.items():
        if "calibration" not in cal:
            parts.append(f"at {n} thread(s) failed: {cal.get('error', 'not run')}")
            continue
        c = cal["calibration"]
        parts.append(
            f"at {n} thread(s), measured in {cal['calibration_s']:.1f} s: "
            + ", ".join(f"K={k}: {c['numba'][k]:.2e} / {c['blas'][k]:.2e}" for k in c["numba"])
        )
    cal_text = (
        "seconds per multiply-add, forward+backward, fused loop / BLAS, one calibration per thread count "
        "shared by its workers: " + "; ".join(parts)
    )
    wall = result.get("wall_s")
    lines = [
        title,
        "",
        f"Machine: {result['machine']}; {result['date']}; torch {v['torch']}, numba {v['numba']}, "
        f"opt_einsum {v['opt_einsum']}, cotengra {v['cotengra']}. Produced by `benchmarks/kernels/run.py"
        f"{' --quick' if result['quick'] else ''}`"
        f"{f' in {wall / 60:.1f} min' if wall else ''}.",
        "",
        "**Generator forward+backward.** One step = `zero_grad(); W = method(); W.backward(G)` with a fixed random "
        "`G` of `W`'s shape, all methods on the same generator (same plan, same cores; built with "
        '`executor="torch"`, seeded). Methods: **torch eager** = `generator()` with `executor="torch"` (the einsum '
        'programs); **numba** = `generator()` with `executor="numba"` (`kernels.numba_weight`: fused CPU kernels '
        "with the output permutation and activation fused, step adjoints as the backward, one autograd node); "
        "**torch.compile** = `torch.compile` (inductor) of a function running `generator.run_groups()`, default "
        'mode and `mode="reduce-overhead"` (on the CPU there are no CUDA graphs to capture, so reduce-overhead '
        "is inductor without them); **opt_einsum** = one `opt_einsum.contract_expression(eq, *shapes, "
        "optimize=path)` per group and **cotengra** = one `cotengra.ContractionTree.from_path(...)` per group "
        '(`.contract(arrays, backend="torch")`), both on each group\'s network and planned path '
        "(`tnplan.cost.ssa_to_linear` of its `ssa_path`), activation applied with torch after each group, "
        "operands gathered by `Generator._operand`.",
        "",
        f"Each method's first call (warm-up; for torch.compile it includes compilation, for numba the step "
        f"tables and loading numba's cached kernels) is timed and reported separately; its `W` must match torch "
        f"eager's (max |ΔW| / max |W| < {result['tolerance']:g}, float32) or the method is not timed; the core "
        f"gradients are compared too. Then {_reps_text(result)}: median (min in the JSON and the detail "
        f"table). Each (threads, shape, config) runs in a fresh process with `torch.set_num_threads(n)`, "
        f"`numba.set_num_threads(n)` and `OMP_NUM_THREADS=MKL_NUM_THREADS=n`; at n > 1 the numba loops of big "
        f"steps split their output rows over n threads, and BLAS steps their tiles (each a single-threaded GEMM "
        f"and its scatter; `kernels.numba_cpu.*_parallel`). Speed-up = torch-eager median / numba median.",
        "",
        f"**Layer training step** at batch {result['batch']}: `zero_grad(); y = layer(x); y.sum().backward()` "
        f"with `x` of shape `({result['batch']}, in)` requiring grad, for `nn.Linear`, "
        '`TNLinear(..., mode="materialize")` with `executor="torch"` and `"numba"`, and `TNLinear(mode="auto")` '
        "with the default executor (it picks materialize, stream or kron by seconds predicted for this machine, "
        "`adntn/timing.py`; when it picks materialize with "
        "numba it runs exactly the materialize-numba code path, so that measurement is reused). One warm-up "
        "step, then the same number of timed steps.",
        "",
        f"Numba calibration (`kernels.calibrate`, private `ADNTN_CACHE_DIR`): {cal_text}. Plans, numba's compiled "
        "kernels and inductor's cache live in private temporary directories shared by the run's workers, so "
        "the first worker plans and compiles the numba kernels, and a graph inductor already compiled (the "
        "second thread count, or reduce-overhead after default) could come from inductor's FX graph cache: "
        f"{_inductor_text(result)}.",
        "",
        "Near ties (`kernels.tune`): a step whose two model prices lie within "
        f"{result.get('tune_tie', 1.5)}x of each other and above {result.get('tune_min_ms', 1.0):g} ms is timed "
        "both ways on its own shapes once per machine and thread count, and the faster path runs. "
        + (
            _tune_text(result)
            if any("steps" in r["methods"].get("numba", {}) for r in _tn_runs(result))
            else "(not recorded by this run)."
        ),
        "",
    ]
    for shape in result["shapes"]:
        runs = _tn_runs(result, shape)
        n_in, n_out = shape
        lines += [
            f"## {n_in} → {n_out} (`nn.Linear({n_in}, {n_out})`, {n_in * n_out:,} weights)",
            "",
            "### Generator forward+backward (median ms)",
            "",
            "| config | params | compression | threads | torch eager | numba | speed-up | torch.compile | "
            "reduce-overhead | opt_einsum | cotengra |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in sorted(runs, key=lambda r: (ARCHS.index(r["arch"]), r["bond"], r["threads"])):
            m = r["methods"]
            s = _speedup(r)
            cells = [_cell(m.get(k)) for k in METHODS]
            lines.append(
                f"| {_config(r)} | {r['params']:,} | {r['compression']:,.0f}× | {r['threads']} | {cells[0]} | "
                f"{cells[1]} | {'—' if s is None else f'{s:.2f}×'} | {' | '.join(cells[2:])} |"
            )
        lines += [
            "",
            "### First call (ms): warm-up, including compilation for torch.compile",
            "",
            "| config | threads | build s | torch eager | numba | torch.compile | reduce-overhead | opt_einsum | "
            "cotengra |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in sorted(runs, key=lambda r: (ARCHS.index(r["arch"]), r["bond"], r["threads"])):
            m = r["methods"]
            cells = []
            for k in METHODS:
                res = m.get(k)
                cells.append("—" if not res or "first_ms" not in res else _fmt_ms(res["first_ms"]))
            lines.append(f"| {_config(r)} | {r['threads']} | {r['build_s']:.2f} | {' | '.join(cells)} |")
        lines += [
            "",
            f"### Layer training step at batch {result['batch']} (median ms; vs dense = dense / this)",
            "",
            "| config | threads | dense nn.Linear | materialize, torch | materialize, numba | auto | auto path | "
            "best vs dense |",
            "|---|---:|---:|---:|---:|---:|---|---:|",
        ]
        for n in result["threads"]:
            dense = _dense(result, shape, n)
            lines.append(f"| dense | {n} | {_cell(dense)} | — | — | — | — | 1.00× |")
            for r in sorted(
                (r for r in runs if r["threads"] == n and r.get("layers")),
                key=lambda r: (ARCHS.index(r["arch"]), r["bond"]),
            ):
                lay = r["layers"]
                auto = lay.get("auto") or {}
                path = f"{auto['path']}, {auto['executor']}" if "path" in auto else "—"
                if auto.get("same_as"):
                    path += " (the materialize-numba run)"
                timed = [lay[k]["median_ms"] for k in LAYER_KINDS if k != "dense" and _timed(lay.get(k))]
                vs = f"{dense['median_ms'] / min(timed):.2f}×" if timed and _timed(dense) else "—"
                lines.append(
                    f"| {_config(r)} | {n} | — | {_cell(lay.get('materialize-torch'))} | "
                    f"{_cell(lay.get('materialize-numba'))} | {_cell(auto)} | {path} | {vs} |"
                )
        lines.append("")
    lines += ["## Target check", "", *target_lines(result)]
    lines += [
        "## Verification and detail",
        "",
        "Every method's first-call `W` against torch eager's (relative max error) and the core gradients "
        f"(max over cores of the relative max error; > {GRAD_TOLERANCE:g} is listed under problems), median and "
        "min of the timed steps.",
        "",
        "| shape | config | threads | method | W err | grad err | median ms | min ms | first ms | setup ms |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    problems = []
    for r in _tn_runs(result):
        for k in METHODS:
            res = r["methods"].get(k)
            if res is None:
                continue
            head = f"| {shape_name(r['shape'])} | {_config(r)} | {r['threads']} | {METHOD_NAMES[k]} |"
            where = f"{shape_name(r['shape'])} {_config(r)} {r['threads']} thread(s) {METHOD_NAMES[k]}"
            if "error" in res:
                lines.append(f"{head} — | — | error | — | — | — |")
                problems.append(f"- {where}: {res['error']}")
                continue
            if res.get("mismatch"):
                problems.append(f"- {where}: W mismatch, relative max error {res['w_err']:.2e} (not timed)")
            if res.get("grad_err", 0.0) > GRAD_TOLERANCE:
                problems.append(f"- {where}: core gradients differ, relative max error {res['grad_err']:.2e}")
            timed = _timed(res)
            lines.append(
                f"{head} {res['w_err']:.1e} | {res['grad_err']:.1e} | "
                f"{_fmt_ms(res['median_ms']) if timed else '—'} | {_fmt_ms(res['min_ms']) if timed else '—'} | "
                f"{_fmt_ms(res['first_ms'])} | {res.get('setup_ms', 0.0):.1f} |"
            )
    for r in result["runs"]:
        what = "dense" if r["kind"] == "dense" else _config(r)
        where = f"{shape_name(r['shape'])} {what} {r['threads']} thread(s)"
        if "error" in r:
            problems.append(f"- {where}: worker failed: {r['error']}")
            continue
        for k, res in (r.get("layers") or {}).items():
            if "error" in res:
                problems.append(f"- {where} layer {LAYER_NAMES[k]}: {res['error']}")
    lines += ["", "## Problems", "", *(problems or ["None: every method ran and matched torch eager."]), ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
