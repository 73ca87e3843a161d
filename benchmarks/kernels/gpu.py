"""GPU executors: generator forward+backward and a full layer training step on one CUDA device.

Issue 5's GPU targets: a 4096x4096 TTN generator (bond 16) forward+backward in <= 1.0 ms, a full
ADNTN layer training step at batch 8192 no slower than the dense TF32 layer in the same run, and no
planner call and no host-device synchronisation inside a training step.

The GPU machine has no kahypar or cotengra, so this is the product's offline-planning workflow:

    .venv/bin/python benchmarks/kernels/gpu.py plan                 # here: plan, export out/kernels-gpu/plans.json
    python3 benchmarks/kernels/gpu.py run --plans out/kernels-gpu/plans.json --results $OUT   # on the GPU

``run`` imports the export into a private SQLite cache and builds every generator with
``cache_only=True`` (a missing plan is an error, never a search). Per configuration it times, with CUDA
events (median of ``--reps`` after ``--warmup``), ``W = generator(); W.backward(G)`` for:

- ``torch-eager``: the planned einsum programs (``executor="torch"``);
- ``cuda``: the numba-cuda kernels (``kernels.numba_weight``: fused steps, cuBLAS for long summed extents);
- ``torch-graph`` / ``cuda-graph``: the same step captured once in a CUDA graph and replayed
  (static parameters and output adjoint; what a training loop with fixed shapes can do);
- ``compile-default`` / ``compile-reduce-overhead``: ``torch.compile`` of the einsum programs, for the first
  ``--compile`` configurations only (default 1: inductor spends tens of seconds per graph and mode).

Then a layer training step at ``--batch`` rows, ``zero_grad(); y = layer(x); y.backward(dy)``: dense
``nn.Linear`` in TF32 against ``TNLinear`` materialised (torch and cuda executors, eager and graphed)
and streamed, twice: as an input layer (``x`` needs no gradient) and as a hidden layer (it does, so
there is a dx GEMM, beside which ``adntn.overlap`` runs the generator's backward; those rows are
checked against the serial layer's gradients). Each TN step also runs once under
``torch.cuda.set_sync_debug_mode("error")`` with ``tnplan.plan`` replaced by a counter, which records
host-device synchronisations and planner calls.
The ``kron-triton`` rows stream through the root's Kronecker factors with the fused Triton kernels
(``kernels/kronsum.py``), with the launch settings ``kron_gpu.py`` tuned (``--kron-config``) or the
defaults; configurations whose root has no split that they take and that costs fewer flops than
materialising say n/a.
A sweep of ``kernels.cuda.BLAS_MIN_K`` on the first configuration says where cuBLAS should take over.
Results are rewritten after every configuration; ``--deadline S`` starts none after S seconds, so a
time-limited call still returns what it measured.

Without a GPU (``--device cpu``, e.g. ``--smoke`` here) the same script runs with the numba CPU
kernels in the ``cuda`` rows, no graphs and wall-clock timing: a test of the script, not a result.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import json
import shutil
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
for _p in (HERE.parent, REPO):  # benchmarks/machine.py, adntn/tnplan/kernels from this checkout
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from harness import check_output_dir, copy_report, one_line, positive_int, write_report  # noqa: E402

DEFAULT_PLANS = REPO / "out" / "kernels-gpu" / "plans.json"
# (arch, bond, in, out): the 4096x4096 TTN at bond 16 first, then the CPU benchmark's configurations.
CONFIGS = [
    ("ttn", 16, 4096, 4096),
    ("ttn", 2, 4096, 4096),
    ("ttn", 13, 4096, 4096),
    ("attn", 2, 4096, 4096),
    ("attn", 9, 4096, 4096),
    ("mera", 2, 4096, 4096),
    ("mera", 8, 4096, 4096),
    ("ttn", 24, 25088, 4096),
]
SMOKE_CONFIGS = [("ttn", 3, 64, 64), ("mera", 2, 64, 64), ("attn", 3, 64, 64)]
GEN_METHODS = ("torch-eager", "cuda", "torch-graph", "cuda-graph", "compile-default", "compile-reduce-overhead")
TARGET_MS = 1.0


def _configs(args: argparse.Namespace) -> list[tuple[str, int, int, int]]:
    return SMOKE_CONFIGS if args.smoke else CONFIGS


def imported_plans(export: Path) -> Any:
    """A private plan cache holding the CPU machine's export (``gpu.py plan``), for ``cache_only`` builds."""
    from tnplan.cache import PlanCache

    if not export.exists():
        raise SystemExit(f"no plan export at {export}; run `gpu.py plan` where kahypar is installed first")
    folder = tempfile.mkdtemp(prefix="gpu-plans-")
    atexit.register(shutil.rmtree, folder, True)
    cache = PlanCache(Path(folder) / "plans.sqlite")
    cache.import_(export)
    return cache


def build_generator(arch: str, bond: int, n_in: int, n_out: int, cache: Any, cache_only: bool) -> Any:
    import adntn

    return adntn.make_generator(arch, n_out, n_in, bond_dim=bond, executor="torch", cache=cache, cache_only=cache_only)


def build_layer(arch: str, bond: int, n_in: int, n_out: int, cache: Any, cache_only: bool, mode: str) -> Any:
    import adntn

    return adntn.TNLinear(n_in, n_out, arch, bond, mode=mode, executor="torch", cache=cache, cache_only=cache_only)


# ------------------------------------------------------------------------------------------------ plan


def cmd_plan(args: argparse.Namespace) -> int:
    """Build every configuration (generators and layers) into a fresh cache and export it."""
    from tnplan.cache import PlanCache

    args.plans.parent.mkdir(parents=True, exist_ok=True)
    cache_file = args.plans.with_suffix(".sqlite")
    cache_file.unlink(missing_ok=True)
    cache = PlanCache(cache_file)
    for arch, bond, n_in, n_out in _configs(args):
        t = time.perf_counter()
        g = build_generator(arch, bond, n_in, n_out, cache, False)
        for mode in ("materialize", "stream"):
            build_layer(arch, bond, n_in, n_out, cache, False, mode)
        print(f"{arch} bond {bond} {n_in}x{n_out}: {g.num_parameters():,} params, {time.perf_counter() - t:.1f} s")
    n = cache.export(args.plans)
    print(f"exported {n} plans to {args.plans}")
    return 0


# ------------------------------------------------------------------------------------------------- run


class Timer:
    """Median milliseconds of a callable: CUDA events on a GPU, the wall clock on the CPU."""

    def __init__(self, device: Any, warmup: int, reps: int) -> None:
        self.device, self.warmup, self.reps = device, warmup, reps

    def __call__(self, fn: Callable[[], Any]) -> dict[str, float]:
        for _ in range(self.warmup):
            fn()
        samples = [self.once(fn) for _ in range(self.reps)]
        return {"median_ms": statistics.median(samples), "min_ms": min(samples)}

    def once(self, fn: Callable[[], Any]) -> float:
        """Milliseconds of one call (on a GPU: CUDA events around it, then a wait for the end event)."""
        import torch

        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3

    def interleaved(self, runs: dict[str, Callable[[], Any]], rounds: int = 3) -> dict[str, float]:
        """Each callable's median over ``rounds * reps`` calls, timed one call of each in turn.

        The order rotates every pass, so clock and thermal drift reach every variant alike. Timed in blocks
        (``reps`` calls of one, then the next), the block after a light one runs on a cooler chip: on the
        H200 the same two GEMMs measured 1.918 and 1.993 ms as the first and third block of a round.
        """
        names = list(runs)
        for k in names:
            for _ in range(self.warmup):
                runs[k]()
        samples: dict[str, list[float]] = {k: [] for k in names}
        for p in range(rounds * self.reps):
            shift = p % len(names)
            for k in names[shift:] + names[:shift]:
                samples[k].append(self.once(runs[k]))
        return {k: statistics.median(v) for k, v in samples.items()}


def _graphed(step: Callable[[], Any], device: Any) -> Callable[[], Any]:
    """``step`` captured once in a CUDA graph (after warm-up on a side stream); the replay runs it."""
    import torch

    if device.type != "cuda":
        raise RuntimeError("CUDA graphs need a CUDA device")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return functools.partial(_replay, graph, step)


def _replay(graph: Any, step: Callable[[], Any]) -> None:
    # ``step`` rides along so that it, and every tensor the graph reads and writes, lives as long as the
    # replay does: a bare graph.replay keeps neither, and a replay after they are freed is an illegal access.
    graph.replay()


@contextlib.contextmanager
def _float32_matmuls() -> Any:
    """TF32 off for a correctness check: TF32 rounds products to ~1e-3 relative, which is not an error."""
    import torch

    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def generator_rows(g: Any, device: Any, timer: Timer, with_compile: bool) -> dict[str, Any]:
    import torch

    from kernels import numba_weight

    params = list(g.cores.values())
    grad_w = torch.randn(g.out_padded, g.in_padded, device=device)

    def torch_step() -> Any:
        w = g.padded_weight()
        return torch.autograd.grad(w, params, grad_w)

    def cuda_step() -> Any:
        return torch.autograd.grad(numba_weight(g), params, grad_w)

    def compiled(mode: str) -> Callable[[], Any]:
        torch._dynamo.reset()
        weight = torch.compile(g.padded_weight, mode=mode)
        return lambda: torch.autograd.grad(weight(), params, grad_w)

    with _float32_matmuls():
        ref = torch_step()
    makers: dict[str, Callable[[], Callable[[], Any]]] = {
        "torch-eager": lambda: torch_step,
        "cuda": lambda: cuda_step,
        "torch-graph": lambda: _graphed(torch_step, device),
        "cuda-graph": lambda: _graphed(cuda_step, device),
    }
    if with_compile:  # inductor compiles for tens of seconds per graph and mode: only where asked
        makers["compile-default"] = lambda: compiled("default")
        makers["compile-reduce-overhead"] = lambda: compiled("reduce-overhead")
    if device.type == "cuda":  # how much of the step is the forward, which nothing can hide in a layer step
        makers["forward-graph"] = lambda: _graphed(g.padded_weight, device)
    rows: dict[str, Any] = {}
    for name, make in makers.items():
        try:
            fn = make()
            if not name.endswith("graph"):  # a graph's outputs live in its pool; compare the direct calls
                with _float32_matmuls():
                    got = fn()
                err = _max_rel(got, ref)
                if err > 1e-4:
                    raise RuntimeError(f"gradients differ from torch eager by {err:.2e} (relative)")
            rows[name] = timer(fn)
        except Exception as exc:  # a method that cannot run here is reported, the others still run
            rows[name] = {"error": one_line(exc)}
            if device.type == "cuda":  # the whole story in the log, for a fix without another GPU session
                traceback.print_exc(limit=-8)
    return rows


def sync_and_planner_check(step: Callable[[], Any], device: Any) -> dict[str, Any]:
    """Run ``step`` once with synchronisations made errors and ``tnplan.plan`` counted."""
    import torch

    import tnplan
    import tnplan.planner

    calls = {"plan": 0}
    original = tnplan.planner.plan

    def counted(*a: Any, **k: Any) -> Any:
        calls["plan"] += 1
        return original(*a, **k)

    tnplan.planner.plan, tnplan.plan = counted, counted
    out: dict[str, Any] = {}
    try:
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            step()
            out["host_syncs"] = 0 if device.type == "cuda" else None
        except RuntimeError as exc:
            out["host_syncs"] = ">= 1"
            out["sync_error"] = str(exc).splitlines()[0][:200]
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
    finally:
        tnplan.planner.plan, tnplan.plan = original, original
    out["planner_calls"] = calls["plan"]
    return out


# name -> (mode, executor, graphed, overlap, SM carveout). "overlap": the generator on a side stream, its
# backward beside the dx GEMM (adntn.overlap); with no dx to hide behind (input layer) it changes nothing.
LAYER_VARIANTS = {
    "materialize-torch": ("materialize", "torch", False, False, 0),
    "materialize-cuda": ("materialize", "cuda", False, False, 0),
    "materialize-torch-graph": ("materialize", "torch", True, False, 0),
    "materialize-cuda-graph": ("materialize", "cuda", True, False, 0),
    "stream-torch": ("stream", "torch", False, False, 0),
    "stream-torch-graph": ("stream", "torch", True, False, 0),
    # The Kronecker-sum stream (kernels/kronsum.py): Triton on CUDA; where the root has no split that
    # fits the kernels, the row says n/a.
    "kron-triton": ("kron", "torch", False, False, 0),
    "kron-triton-graph": ("kron", "torch", True, False, 0),
}
HIDDEN_VARIANTS = {
    **{k: LAYER_VARIANTS[k] for k in ("materialize-torch", "materialize-torch-graph")},
    "overlap-torch": ("materialize", "torch", False, True, 0),
    "overlap-torch-graph": ("materialize", "torch", True, True, 0),
    "overlap-sm8-torch-graph": ("materialize", "torch", True, True, 8),
    "overlap-sm24-torch-graph": ("materialize", "torch", True, True, 24),
    "stream-torch-graph": LAYER_VARIANTS["stream-torch-graph"],
    **{k: LAYER_VARIANTS[k] for k in ("kron-triton", "kron-triton-graph")},
}


# The layer verdicts' source: dense against the fastest graphed variant, one replay of each in turn.
DECIDER = "interleaved"


def _grads(layer: Any, x: Any) -> list[Any]:
    return [p.grad for p in layer.parameters()] + ([x.grad] if x.requires_grad else [])


def _max_rel(got: list[Any], ref: list[Any]) -> float:
    return max(float((a - b).abs().max() / (b.abs().max() + 1e-30)) for a, b in zip(got, ref, strict=True))


def layer_rows(spec: tuple, device: Any, timer: Timer, batch: int, cache: Any, hidden: bool = False) -> dict[str, Any]:
    """Layer training steps; ``hidden``: the input needs its gradient too (a layer inside a network)."""
    import torch
    from torch import nn

    import adntn.overlap

    arch, bond, n_in, n_out = spec
    x = torch.randn(batch, n_in, device=device, requires_grad=hidden)
    dy = torch.randn(batch, n_out, device=device)
    rows: dict[str, Any] = {}

    def step_of(layer: nn.Module) -> Callable[[], Any]:
        def step() -> Any:
            layer.zero_grad(set_to_none=False)
            x.grad = None
            layer(x).backward(dy)

        return step

    dense = nn.Linear(n_in, n_out).to(device)
    rows["dense-tf32"] = timer(step_of(dense))
    replays: dict[str, Callable[[], Any]] = {}  # graphed steps, kept for the interleaved decision
    if device.type == "cuda":
        replays["dense-tf32"] = _graphed(step_of(dense), device)
    reference: Any = None  # the serial layer's gradients, for the overlapped ones to match
    variants = HIDDEN_VARIANTS if hidden else LAYER_VARIANTS
    kron = any(v[0] == "kron" for v in variants.values()) and kron_applies(arch, bond, n_in, n_out, cache, batch)
    for name, (mode, executor, graphed, overlap, carveout) in variants.items():
        if mode == "kron" and not kron:
            rows[name] = {"skipped": "no Kronecker split of the root cheaper than materialising that the kernels take"}
            continue
        try:
            adntn.overlap.SM_CARVEOUT = carveout
            torch.manual_seed(1234)  # every variant starts from the same cores, so their gradients compare
            layer = build_layer(arch, bond, n_in, n_out, cache, True, mode).to(device)
            layer.overlap = overlap
            if executor == "cuda":
                layer.generator.executor = "numba" if device.type != "cuda" else "cuda"  # numba: the CPU stand-in
            for p in layer.parameters():  # graphs need the .grad buffers to exist before capture
                p.grad = torch.zeros_like(p)
            step = step_of(layer)
            row: dict[str, Any] = {}
            if name == "materialize-torch-graph":
                with _float32_matmuls():
                    step()
                reference = [g.clone() for g in _grads(layer, x)]
            elif (overlap or mode == "kron") and not graphed and reference is not None:
                with _float32_matmuls():
                    step()
                err = _max_rel(_grads(layer, x), reference)
                # float32 both ways; the Kronecker stream sums in another order than W-then-GEMM
                if err > (1e-4 if mode == "kron" else 1e-5):
                    raise RuntimeError(f"{name} gradients differ from the serial layer's by {err:.2e} (relative)")
                row["grad_rel_err"] = err
            if not graphed:
                step()  # warm: offset tables on the device, kernels compiled
                row.update(sync_and_planner_check(step, device))
                row.update(timer(step))
            else:
                replays[name] = _graphed(step, device)
                row.update(timer(replays[name]))
                if (overlap or mode == "kron") and reference is not None:  # a missing join shows here (TF32: ~1e-3)
                    err = _max_rel(_grads(layer, x), reference)
                    if err > 2e-2:
                        raise RuntimeError(f"graphed {name} gradients off by {err:.2e} (relative)")
                    row["grad_rel_err"] = err
            rows[name] = row
        except Exception as exc:
            rows[name] = {"error": one_line(exc)}
            if device.type == "cuda":
                traceback.print_exc(limit=-8)
        finally:
            adntn.overlap.SM_CARVEOUT = 0
    best = _best(rows, [k for k in replays if k != "dense-tf32"])
    if best is not None and "dense-tf32" in replays:
        ms = timer.interleaved({"dense-tf32": replays["dense-tf32"], best[0]: replays[best[0]]}, rounds=4)
        rows[DECIDER] = {"variant": best[0], "dense_ms": ms["dense-tf32"], "layer_ms": ms[best[0]]}
    return rows


def kron_applies(arch: str, bond: int, n_in: int, n_out: int, cache: Any, batch: int) -> bool:
    """Whether the root splits into factors the Triton kernels take, with fewer planned flops than
    materialising (the others would only spend device time on a known loss: aTTN χ=9, MERA χ=8)."""
    from kernels.kronsum import fits

    g = build_generator(arch, bond, n_in, n_out, cache, True)
    return g.kron is not None and fits(*g.kron.shape) and g.kron_cost_at(batch) < g.materialize_cost(batch)


def auto_pick(spec: tuple, batch: int, cache: Any, device: str = "cuda") -> str:
    """What a default ``TNLinear`` (``mode="auto"``, ``adntn.layers.WRITE_WEIGHT``) does at ``batch`` rows."""
    arch, bond, n_in, n_out = spec
    layer = build_layer(arch, bond, n_in, n_out, cache, True, "auto")
    return layer.mode_for(batch, device)


def blas_sweep(g: Any, device: Any, timer: Timer) -> dict[str, Any]:
    import torch

    import kernels.cuda as cuda_backend
    from kernels import numba_weight

    if device.type != "cuda":
        return {}
    params = list(g.cores.values())
    grad_w = torch.randn(g.out_padded, g.in_padded, device=device)
    kept = cuda_backend.BLAS_MIN_K
    out = {}
    try:
        for k in (4, 8, 16, 32, 64, 1 << 30):
            cuda_backend.BLAS_MIN_K = k
            out["never" if k == 1 << 30 else str(k)] = timer(
                lambda: torch.autograd.grad(numba_weight(g), params, grad_w)
            )["median_ms"]
    finally:
        cuda_backend.BLAS_MIN_K = kept
    return out


def cmd_run(args: argparse.Namespace) -> int:
    check_output_dir(args.results)
    import torch
    from machine import describe

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda but torch sees no CUDA device; use --device cpu for a script test")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cache = imported_plans(args.plans)
    timer = Timer(device, args.warmup, args.reps)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else describe()
    result: dict[str, Any] = {
        "device": name,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "batch": args.batch,
        "reps": args.reps,
        "configs": [],
    }
    print(f"device: {name}", flush=True)
    start = time.perf_counter()
    for k, spec in enumerate(_configs(args)):
        arch, bond, n_in, n_out = spec
        row: dict[str, Any] = {"arch": arch, "bond": bond, "shape": [n_in, n_out]}
        try:
            if args.deadline is not None and time.perf_counter() - start > args.deadline:
                raise TimeoutError(f"skipped: --deadline {args.deadline:g} s reached")
            g = build_generator(arch, bond, n_in, n_out, cache, True).to(device)
            row["params"] = g.num_parameters()
            row["compression"] = n_in * n_out / g.num_parameters()
            row["generator"] = generator_rows(g, device, timer, with_compile=k < args.compile)
            if k == 0:
                try:
                    row["blas_min_k_ms"] = blas_sweep(g, device, timer)
                except Exception as exc:  # the sweep needs the CUDA kernels; the layer rows do not
                    row["blas_min_k_ms"] = {"error": one_line(exc)}
            if args.kron_config is not None:  # kron_gpu.py's fastest launch settings, per bond
                from kernels import kronsum

                kronsum.DEFAULT_CONFIG = json.loads(args.kron_config.read_text()).get(str(bond), {})
            row["layer"] = layer_rows(spec, device, timer, args.batch, cache)
            row["hidden"] = layer_rows(spec, device, timer, args.batch, cache, hidden=True)
            row["auto_picks"] = auto_pick(spec, args.batch, cache, device.type)
        except TimeoutError as exc:
            row["error"] = str(exc)
        except Exception:
            row["error"] = traceback.format_exc(limit=-3)
        result["configs"].append(row)
        print(json.dumps(row), flush=True)
        _write(result, args.results)  # after every configuration: a run cut off by its limit keeps its rows
    print(f"wrote {args.results / 'kernels-gpu.md'}")
    return 0


def _write(result: dict[str, Any], folder: Path) -> None:
    write_report(folder, "kernels-gpu", result, markdown)


# What a kernels-gpu.json holds at its top level (``cmd_run``'s ``result``).
RESULT_KEYS = ("device", "torch", "date", "batch", "reps", "configs")


def _best(rows: dict[str, Any], names: Any) -> tuple[str, float] | None:
    timed = [(n, rows[n]["median_ms"]) for n in names if "median_ms" in rows.get(n, {})]
    return min(timed, key=lambda t: t[1]) if timed else None


def targets(result: dict[str, Any]) -> list[str]:
    """PASS/FAIL lines for issue 5's GPU targets, from the measured rows."""
    out = []
    first = result["configs"][0] if result["configs"] else {}
    best = _best(first.get("generator", {}), GEN_METHODS)
    label = f"{first.get('arch')} χ={first.get('bond')} {'x'.join(map(str, first.get('shape', [])))}"
    if best:
        verdict = "PASS" if best[1] <= TARGET_MS else "FAIL"
        out.append(f"- {verdict} — {label} generator forward+backward <= {TARGET_MS} ms: {best[1]:.3f} ms ({best[0]})")
    else:
        out.append(f"- not measured — {label} generator forward+backward")
    for where, what in (("layer", "input layer (no dx)"), ("hidden", "hidden layer (with dx)")):
        for c in result["configs"]:
            layer = c.get(where, {})
            decided = layer.get(DECIDER)
            if decided:
                dense, tn, how = decided["dense_ms"], (decided["variant"], decided["layer_ms"]), "interleaved"
            else:
                dense = layer.get("dense-tf32", {}).get("median_ms")
                tn, how = _best(layer, [k for k in layer if k not in ("dense-tf32", DECIDER)]), "single pass"
            if dense is None or tn is None:
                continue
            verdict = "PASS" if tn[1] <= dense else "FAIL"
            out.append(
                f"- {verdict} — {c['arch']} χ={c['bond']} {c['shape'][0]}x{c['shape'][1]} ({c['compression']:,.0f}x) "
                f"{what} step at batch {result['batch']} no slower than dense TF32: {tn[1]:.3f} ms ({tn[0]}) vs "
                f"{dense:.3f} ms ({dense / tn[1]:.2f}x, {how})"
            )
    clean = [
        e.get("host_syncs") == 0 and e["planner_calls"] == 0
        for c in result["configs"]
        for where in ("layer", "hidden")
        for e in c.get(where, {}).values()
        if isinstance(e, dict) and "planner_calls" in e
    ]
    if clean:
        out.append(
            f"- {'PASS' if all(clean) else 'FAIL'} — zero host-device synchronisations and zero planner calls in a "
            f"training step: {sum(clean)} of {len(clean)} checked steps clean"
        )
    return out


def _cell(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "—"
    if "error" in entry:
        return "error"
    if "skipped" in entry:
        return "n/a"
    return f"{entry['median_ms']:.3f}"


def _layer_table(result: dict[str, Any], where: str, title: str) -> list[str]:
    names = sorted(
        {k for c in result["configs"] for k in c.get(where, {}) if k != DECIDER}, key=lambda k: (k != "dense-tf32", k)
    )
    if not names:
        return []
    lines = [
        "",
        f"## {title} at batch {result['batch']} (median ms; syncs / planner calls in one eager step)",
        "",
        "| config | " + " | ".join(names) + " | default (auto) picks |",
        "|---|" + "---:|" * len(names) + "---|",
    ]
    for c in result["configs"]:
        if where not in c:
            continue
        cells = []
        for k in names:
            e = c[where].get(k)
            cell = _cell(e)
            if e and "planner_calls" in e:
                cell += f" ({e.get('host_syncs')} / {e['planner_calls']})"
            cells.append(cell)
        lines.append(f"| {c['arch']} χ={c['bond']} | " + " | ".join(cells) + f" | {c.get('auto_picks', '—')} |")
    decided = [(c, c[where][DECIDER]) for c in result["configs"] if DECIDER in c.get(where, {})]
    if decided:
        lines += [
            "",
            "Interleaved (dense and the fastest graphed variant above, one replay of each in turn, the order",
            "rotating; median ms): the verdicts below come from these.",
            "",
            "| config | variant | dense-tf32 | layer | dense / layer |",
            "|---|---|---:|---:|---:|",
        ]
        lines += [
            f"| {c['arch']} χ={c['bond']} | {d['variant']} | {d['dense_ms']:.3f} | {d['layer_ms']:.3f} | "
            f"{d['dense_ms'] / d['layer_ms']:.2f}x |"
            for c, d in decided
        ]
    return lines


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Generator executors on the GPU",
        "",
        f"Device: {result['device']}; torch {result['torch']}; {result['date']}. Produced by "
        f"`benchmarks/kernels/gpu.py run` (plans from the CPU machine's export, `cache_only`). Medians of "
        f"{result['reps']} timed calls (CUDA events). Target: 4096x4096 TTN bond 16 forward+backward <= "
        f"{TARGET_MS} ms; layer step at batch {result['batch']} no slower than dense TF32.",
        "",
        "Each variant in the layer tables is timed once, right after its capture, and dense's own step drifts by a "
        "few percent between configurations; the layer verdicts come from the interleaved table under each (dense "
        "and the fastest graphed variant, one replay of each in turn).",
        "",
        "## Generator forward+backward (median ms)",
        "",
        "| config | params | compression | " + " | ".join(GEN_METHODS) + " | forward only, graph |",
        "|---|---:|---:|" + "---:|" * (len(GEN_METHODS) + 1),
    ]
    for c in result["configs"]:
        label = f"{c['arch']} χ={c['bond']} {c['shape'][0]}x{c['shape'][1]}"
        if "error" in c and "generator" not in c:
            lines.append(f"| {label} | error: {c['error'].splitlines()[-1][:80]} |")
            continue
        cells = [_cell(c["generator"].get(m)) for m in (*GEN_METHODS, "forward-graph")]
        lines.append(f"| {label} | {c['params']:,} | {c['compression']:,.0f}x | " + " | ".join(cells) + " |")
    titles = {
        "layer": "Input-layer training step (x needs no gradient: forward GEMM + dW GEMM)",
        "hidden": "Hidden-layer training step (x needs its gradient: forward, dW and dx GEMMs)",
    }
    for where, title in titles.items():
        lines += _layer_table(result, where, title)
    failed: dict[str, list[str]] = {}  # one line per distinct error, naming every cell it hit
    for c in result["configs"]:
        for where in ("generator", "layer", "hidden"):
            for name, e in c.get(where, {}).items():
                if isinstance(e, dict) and "error" in e:
                    failed.setdefault(e["error"], []).append(f"{c['arch']} χ={c['bond']} {where}/{name}")
    if failed:
        lines += ["", "## Errors", ""]
        lines += [f"- `{msg}` ({len(hits)}): {', '.join(hits)}" for msg, hits in failed.items()]
    lines += ["", "## Targets", "", *targets(result)]
    sweep = next((c.get("blas_min_k_ms") for c in result["configs"] if c.get("blas_min_k_ms")), None)
    if sweep and "error" not in sweep:
        lines += ["", "## cuBLAS threshold (first config, cuda executor, ms by BLAS_MIN_K)", ""]
        lines += [
            "| " + " | ".join(sweep) + " |",
            "|" + "---:|" * len(sweep),
            "| " + " | ".join(f"{v:.3f}" for v in sweep.values()) + " |",
        ]
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    tp = sub.add_parser("table", help="re-render kernels-gpu.md from a kernels-gpu.json")
    tp.add_argument("json", type=Path)
    tp.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    for name in ("plan", "run"):
        p = sub.add_parser(name)
        p.add_argument("--plans", type=Path, default=DEFAULT_PLANS, help="plan export (plan: written; run: read)")
        p.add_argument("--smoke", action="store_true", help="tiny shapes: a test of the script")
        if name == "run":
            p.add_argument("--device", default="cuda")
            p.add_argument("--results", type=Path, default=REPO / "out" / "kernels-gpu" / "results")
            p.add_argument("--batch", type=positive_int, default=8192)
            p.add_argument("--warmup", type=int, default=5)
            p.add_argument("--reps", type=positive_int, default=30)
            p.add_argument("--threads", type=positive_int, default=1)
            p.add_argument("--compile", type=int, default=1, help="torch.compile rows for the first N configs")
            p.add_argument("--deadline", type=float, help="start no configuration after this many seconds")
            p.add_argument("--kron-config", type=Path, help="kron_gpu.py's kron-config.json: tuned Triton launches")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    with contextlib.suppress(AttributeError):
        args.plans = args.plans.resolve()
    if args.command == "table":
        md = copy_report(args.json, args.results, "kernels-gpu", RESULT_KEYS, markdown)
        print(f"wrote {md}")
        return 0
    return cmd_plan(args) if args.command == "plan" else cmd_run(args)


if __name__ == "__main__":
    sys.exit(main())
