"""Tune and time the fused Kronecker-sum stream (``kernels/kronsum.py``) on one CUDA device.

1. ``check``: at the full layer shape, float32 with TF32 off against float64 torch (forward and all
   three gradients), and with TF32 on (reported, not judged: TF32 rounds to ~1e-3).
2. ``sweep``: each kernel (forward, ``Ā``, ``B̄``) at every candidate launch setting, at the first
   configuration's bond (16; the bond is a compile-time constant, so each bond compiles anew); median ms
   over ``--reps`` calls (CUDA events) and TFLOP/s, beside the dense layer's two TF32 GEMMs on the same
   rows. The candidates are the settings ``kron_compile.py`` found viable: Triton's sm_90a compiler and
   ptxas, run here with no GPU, showed them without register spills and within 227 KB of shared memory.
3. ``layer``: ``TNLinear(mode="kron")`` with the fastest setting of each kernel against dense
   ``nn.Linear`` and the materialised layer: input- and hidden-layer training steps at ``--batch`` rows,
   each captured in a CUDA graph, timed one replay of each in turn (``gpu.Timer.interleaved``).
   The fastest settings are also written to ``kron-config.json`` for ``gpu.py run --kron-config``.

Plans come from the CPU machine's export (``gpu.py plan``), as for ``gpu.py``:

    python3 benchmarks/kernels/kron_gpu.py --plans out/kernels-gpu/plans.json --results $OUT     # on the GPU
    .venv/bin/python benchmarks/kernels/kron_gpu.py --smoke --device cpu --plans P --results R   # script test
    .venv/bin/python benchmarks/kernels/kron_gpu.py table benchmarks/results/kernels-gpu-kron.json

``--smoke --device cpu`` runs tiny shapes through Triton's interpreter (``TRITON_INTERPRET=1``) with no
graphs and wall-clock times: a test of the script, not a result.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for _p in (HERE, HERE.parent, REPO):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from harness import check_output_dir, render_results, write_atomic, write_report  # noqa: E402

SMOKE_CONFIGS = [("ttn", 3, 64, 64), ("attn", 3, 64, 64)]  # attn: the mixer after the kernel
COMPILED = REPO / "benchmarks" / "results" / "kernels-kron-compile.json"


def candidates() -> dict[str, list[tuple[int, int, int]]]:
    """Per kernel, the (rows_per_program, num_warps, num_stages) settings ``kron_compile.py`` found viable
    (no spills, shared memory within bounds) when it built the kernels for sm_90a."""
    if not COMPILED.exists():
        raise SystemExit(f"no {COMPILED}; run benchmarks/kernels/kron_compile.py (here, no GPU needed) first")
    out: dict[str, list[tuple[int, int, int]]] = {}
    for key, row in json.loads(COMPILED.read_text())["rows"].items():
        kernel, setting = key.split(" ")
        if row.get("viable"):
            out.setdefault(kernel, []).append(tuple(int(v) for v in setting.split("x")))  # type: ignore[arg-type]
    # One compiled reduction serves both factors' gradients; they differ in strides, so time each.
    reduce = out.pop("reduce", [])
    return {**out, "grad_a": reduce, "grad_b": reduce}


def _setting(t: tuple[int, int, int]) -> dict[str, int]:
    return {"rows_per_program": t[0], "num_warps": t[1], "num_stages": t[2]}


def _flops(kernel: str, rows: int, r: int, m: int, p: int, n: int, q: int) -> int:
    per_term = {"forward": p * q * n + m * p * n, "grad_a": m * n * q + m * q * p, "grad_b": m * p * q + n * m * q}
    return 2 * rows * r * per_term[kernel]


def _rel(u: Any, v: Any) -> float:
    return float((u.double() - v).norm() / v.norm())


def check(device: Any, rows: int, r: int, width: int) -> dict[str, Any]:
    """Forward and gradients against float64 torch, TF32 off (judged) and on (reported)."""
    import gpu
    import torch

    from kernels.kronsum import kron_stream, reference

    g = torch.Generator(device=device).manual_seed(7)
    shapes = ((rows, width, width), (r, width, width), (r, width, width))
    ops = [torch.randn(s, generator=g, device=device) / width**0.5 for s in shapes]
    dy = torch.randn((rows, width, width), generator=g, device=device)
    exact = [t.double().requires_grad_() for t in ops]
    want_y = reference(*exact)
    want = [want_y.detach(), *torch.autograd.grad(want_y, exact, dy.double())]
    out: dict[str, Any] = {}
    for label, ctx in (("float32", gpu._float32_matmuls), ("tf32", contextlib.nullcontext)):
        with ctx():
            leaves = [t.clone().requires_grad_() for t in ops]
            y = kron_stream(*leaves, backend="triton")
            got = [y.detach(), *torch.autograd.grad(y, leaves, dy)]
        errors = (_rel(a, b) for a, b in zip(got, want, strict=True))
        out[label] = dict(zip(("y", "dx", "da", "db"), errors, strict=True))
    out["pass"] = max(out["float32"].values()) < 1e-5
    return out


def sweep(device: Any, timer: Any, rows: int, bonds: list[int], width: int, per_kernel: int = 0) -> dict[str, Any]:
    """Median ms and TFLOP/s of each kernel at each candidate setting (the first ``per_kernel`` if given),
    per bond; the dense GEMMs beside."""
    import torch

    from kernels import kronsum

    out: dict[str, Any] = {"rows": rows, "width": width, "kernels": {}, "dense": {}}
    x = torch.randn(rows, width * width, device=device)
    w = torch.randn(width * width, width * width, device=device)
    dy = torch.randn(rows, width * width, device=device)
    gemm = timer(lambda: x @ w.T)["median_ms"]
    out["dense"] = {"forward_ms": gemm, "dw_ms": timer(lambda: dy.T @ x)["median_ms"]}
    out["dense"]["tflops"] = 2 * rows * width**4 / gemm / 1e9
    xs, dys = x.reshape(rows, width, width), dy.reshape(rows, width, width)
    for kernel, settings in candidates().items():
        settings = settings[:per_kernel] if per_kernel else settings
        table: dict[str, Any] = {}
        for bond in bonds:
            a = torch.randn(bond, width, width, device=device)
            b = torch.randn(bond, width, width, device=device)
            flops = _flops(kernel, rows, bond, width, width, width, width)
            for t in settings:
                cfg = {kernel: _setting(t)}
                if kernel == "forward":
                    call = lambda cfg=cfg, a=a, b=b: kronsum._forward(xs, a, b, cfg)  # noqa: E731
                else:
                    other, shape = (b, a.shape) if kernel == "grad_a" else (a, b.shape)
                    which = kernel[-1]
                    call = lambda cfg=cfg, o=other, s=shape, k=which: kronsum._reduce(k, xs, dys, o, s, cfg)  # noqa: E731
                key = "x".join(map(str, t))
                try:
                    ms = timer(call)["median_ms"]
                    table.setdefault(key, {})[str(bond)] = {"ms": ms, "tflops": flops / ms / 1e9}
                except Exception as exc:
                    table.setdefault(key, {})[str(bond)] = {"error": _one_line(exc)}
        out["kernels"][kernel] = table
    # The other backward for the factors: the dense weight gradient (one GEMM), then two small contractions.
    out["gemm_backward_ms"] = {}
    for bond in bonds:
        a = torch.randn(bond, width, width, device=device)
        b = torch.randn(bond, width, width, device=device)

        def through_dw(a: Any = a, b: Any = b) -> None:
            dw = torch.mm(dy.T, x).reshape(width, width, width, width)
            torch.einsum("mnpq,rnq->rmp", dw, b)
            torch.einsum("mnpq,rmp->rnq", dw, a)

        out["gemm_backward_ms"][str(bond)] = timer(through_dw)["median_ms"]
    return out


def best_config(swept: dict[str, Any], bond: int, target: int | None = None) -> dict[str, Any]:
    """The fastest setting of each kernel at the swept ``bond``, and the faster backward for the factors
    (fused reductions or through ``dW``) at ``target`` (default ``bond``; the reductions' time scaled by
    ``target / bond``, their flops' ratio, and the GEMM's kept): a ``kron_stream`` config."""
    config: dict[str, Any] = {}
    fastest = {}
    for kernel, table in swept["kernels"].items():
        timed = [(v[str(bond)]["ms"], k) for k, v in table.items() if "ms" in v.get(str(bond), {})]
        if timed:
            fastest[kernel], key = min(timed)
            config[kernel] = _setting(tuple(int(s) for s in key.split("x")))  # type: ignore[arg-type]
    gemm = swept.get("gemm_backward_ms", {}).get(str(bond))
    fused = (fastest.get("grad_a", float("inf")) + fastest.get("grad_b", float("inf"))) * (target or bond) / bond
    config["backward"] = "gemm" if gemm is not None and gemm < fused else "fused"
    return config


def layer(
    spec: tuple, device: Any, timer: Any, batch: int, cache: Any, hidden: bool, half: bool = False
) -> dict[str, Any]:
    """Dense, materialised and Kronecker-streamed training steps, interleaved (graphed on a GPU);
    ``half``: every forward under float16 autocast (the dense column is then dense float16)."""
    import gpu
    import torch
    from torch import nn

    arch, bond, n_in, n_out = spec
    x = torch.randn(batch, n_in, device=device, requires_grad=hidden)
    dy = torch.randn(batch, n_out, device=device)

    def step_of(module: nn.Module) -> Any:
        def step() -> None:
            module.zero_grad(set_to_none=False)
            x.grad = None
            with torch.autocast(device.type, dtype=torch.float16, enabled=half):
                y = module(x)
            y.backward(dy.to(y.dtype))

        return step

    dense = "dense-fp16" if half else "dense-tf32"
    layers: dict[str, nn.Module] = {dense: nn.Linear(n_in, n_out).to(device)}
    grads = {}
    for mode in ("materialize", "kron"):
        torch.manual_seed(1234)
        module = gpu.build_layer(arch, bond, n_in, n_out, cache, True, mode).to(device)
        module.overlap = False
        for p in module.parameters():
            p.grad = torch.zeros_like(p)
        with gpu._float32_matmuls():
            step_of(module)()
        grads[mode] = gpu._grads(module, x)
        layers[mode] = module
    err = gpu._max_rel(grads["kron"], grads["materialize"])
    runs = {name: step_of(m) for name, m in layers.items()}
    if device.type == "cuda":
        runs = {name: gpu._graphed(step, device) for name, step in runs.items()}
    ms = timer.interleaved(runs, rounds=4)
    return {"ms": ms, "grad_rel_err": err, "speedup": ms[dense] / ms["kron"]}


def _one_line(exc: BaseException) -> str:
    from harness import one_line

    return one_line(exc)


def cmd_run(args: argparse.Namespace) -> int:
    check_output_dir(args.results)
    import gpu
    import torch

    from kernels import kronsum

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda but torch sees no CUDA device; use --smoke --device cpu for a script test")
        torch.backends.cuda.matmul.allow_tf32 = True
    elif not kronsum.interpreting():
        raise SystemExit("--device cpu runs the kernels in Triton's interpreter: set TRITON_INTERPRET=1")
    width = 16 if args.smoke else 64
    rows = 32 if args.smoke else args.batch
    cache = gpu.imported_plans(args.plans)
    # gpu.py's configurations whose root splits into factors the kernels take with fewer planned flops
    # than materialising (all but MERA χ=8, whose root is a full-rank Tucker core); the first, TTN χ=16,
    # sets the swept bond.
    configs = SMOKE_CONFIGS if args.smoke else [c for c in gpu.CONFIGS if gpu.kron_applies(*c, cache, rows)]
    timer = gpu.Timer(device, args.warmup, args.reps)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (Triton interpreter)"
    clock = "CUDA events" if device.type == "cuda" else "wall clock"
    result: dict[str, Any] = {"device": name, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                              "batch": rows, "reps": args.reps, "clock": clock}  # fmt: skip
    print(f"device: {name}", flush=True)
    bonds = [c[1] for c in configs]
    steps = [
        ("check", lambda: check(device, rows, bonds[0], width)),
        ("sweep", lambda: sweep(device, timer, rows, bonds[:1], width, 2 if args.smoke else 0)),
    ]
    for key, fn in steps:
        try:
            result[key] = fn()
        except Exception as exc:
            result[key] = {"error": _one_line(exc)}
            traceback.print_exc(limit=-6)
        print(key, json.dumps(result[key])[:2000], flush=True)
        _write(result, args.results)
    swept = result.get("sweep", {})
    tuned = {str(bond): best_config(swept, bonds[0], bond) if "kernels" in swept else {} for bond in bonds}
    # Written before the layer steps: gpu.py run (next in the session) needs it even if they overrun.
    write_atomic(args.results / "kron-config.json", json.dumps(tuned, indent=1))
    result["layers"] = {}
    for spec in configs:
        arch, bond, n_in, n_out = spec
        config = tuned[str(bond)]
        kronsum.DEFAULT_CONFIG = config
        label = f"{arch} χ={bond} {n_in}x{n_out}"
        for where, hidden in (("input", False), ("hidden", True)):
            try:
                row = layer(spec, device, timer, rows, cache, hidden)
            except Exception as exc:
                row = {"error": _one_line(exc)}
                traceback.print_exc(limit=-6)
            result["layers"][f"{label} {where}"] = {**row, "config": config}
            print(label, where, json.dumps(row), flush=True)
            _write(result, args.results)
    # Float16 autocast, the TTN χ=16 only: dense float16 GEMMs against the float16 kernels.
    result["autocast"] = {}
    spec = configs[0]
    config = tuned.get(str(spec[1]), {})
    kronsum.DEFAULT_CONFIG = config
    for where, hidden in (("input", False), ("hidden", True)):
        label = f"{spec[0]} χ={spec[1]} {spec[2]}x{spec[3]} {where}"
        try:
            row = layer(spec, device, timer, rows, cache, hidden, half=True)
        except Exception as exc:
            row = {"error": _one_line(exc)}
            traceback.print_exc(limit=-6)
        result["autocast"][label] = {**row, "config": config}
        print(label, "float16 autocast", json.dumps(row), flush=True)
        _write(result, args.results)
    kronsum.DEFAULT_CONFIG = {}
    print(f"wrote {args.results / 'kernels-gpu-kron.md'}")
    return 0


def _write(result: dict[str, Any], folder: Path) -> None:
    write_report(folder, "kernels-gpu-kron", result, markdown)


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Fused Kronecker-sum stream on the GPU",
        "",
        f"Device: {result['device']}; torch {result['torch']}; {result['date']}. Produced by "
        f"`benchmarks/kernels/kron_gpu.py`. Rows: {result['batch']}; medians of {result['reps']} calls "
        f"({result.get('clock', 'CUDA events')}).",
        "",
        "`Y_b = Σ_r A_r X_b B_rᵀ` (kernels/kronsum.py): a TTN root's two halves as the factors, the bond "
        "intermediate kept on chip.",
        "",
        "## Check (relative error against float64 torch)",
        "",
    ]
    chk = result.get("check", {})
    if "error" in chk:
        lines.append(f"error: {chk['error']}")
    elif chk:
        lines += ["| precision | y | dx | dA | dB |", "|---|---:|---:|---:|---:|"]
        for label in ("float32", "tf32"):
            e = chk[label]
            lines.append(f"| {label} | {e['y']:.1e} | {e['dx']:.1e} | {e['da']:.1e} | {e['db']:.1e} |")
        lines += ["", f"float32 (TF32 off) below 1e-5: {'PASS' if chk['pass'] else 'FAIL'}"]
    sw = result.get("sweep", {})
    if "kernels" in sw:
        d = sw["dense"]
        lines += [
            "",
            "## Kernels by launch setting (ms, TFLOP/s)",
            "",
            f"Dense TF32 on the same rows: x @ W.T {d['forward_ms']:.3f} ms ({d['tflops']:.0f} TFLOP/s), "
            f"dW {d['dw_ms']:.3f} ms. Setting: rows per program x warps x stages.",
        ]
        for kernel, table in sw["kernels"].items():
            bonds = sorted({b for v in table.values() for b in v}, key=int, reverse=True)
            lines += ["", f"### {kernel}", "", "| setting | " + " | ".join(f"R={b}" for b in bonds) + " |"]
            lines.append("|---|" + "---:|" * len(bonds))
            for key, v in table.items():
                cells = [
                    (f"{v[b]['ms']:.3f} ({v[b]['tflops']:.0f})" if "ms" in v.get(b, {}) else "error") for b in bonds
                ]
                lines.append(f"| {key} | " + " | ".join(cells) + " |")
        gemm = sw.get("gemm_backward_ms", {})
        if gemm:
            lines += [
                "",
                "Factors' gradients through the dense `dW` GEMM instead of `grad_a` + `grad_b` (ms): "
                + ", ".join(f"R={b}: {ms:.3f}" for b, ms in gemm.items()),
            ]
    elif "error" in sw:
        lines += ["", f"Sweep error: {sw['error']}"]
    tables = (
        ("layers", "Layer training step (graphed, interleaved; median ms)", "dense-tf32", "fp32"),
        (
            "autocast",
            "Under float16 autocast (dense: float16 GEMMs; kron: the float16 kernels at the TF32-tuned launches)",
            "dense-fp16",
            "fp16",
        ),
    )
    for key, title, dense, precision in tables:
        if not result.get(key):
            continue
        lines += [
            "",
            f"## {title}",
            "",
            f"| config | {dense} | materialize | kron | dense / kron | kron grads vs materialize ({precision}) "
            "| backward |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for label, row in result[key].items():
            if "error" in row:
                lines.append(f"| {label} | error: {row['error'][:120]} | | | | | |")
                continue
            ms = row["ms"]
            lines.append(
                f"| {label} | {ms[dense]:.3f} | {ms['materialize']:.3f} | {ms['kron']:.3f} | "
                f"{row['speedup']:.2f}x | {row['grad_rel_err']:.1e} | {row['config'].get('backward', 'fused')} |"
            )
    return "\n".join(lines) + "\n"


def cmd_table(args: argparse.Namespace) -> int:
    _, text = render_results(Path(args.json), ("device", "torch", "date", "batch", "reps"), markdown)
    folder = check_output_dir(args.results or Path(args.json).parent)
    write_atomic(folder / "kernels-gpu-kron.md", text)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "table":
        p = argparse.ArgumentParser(prog="kron_gpu.py table")
        p.add_argument("json")
        p.add_argument("--results", type=Path)
        return cmd_table(p.parse_args(argv[1:]))
    p = argparse.ArgumentParser(prog="kron_gpu.py", description=__doc__.split("\n")[0])
    p.add_argument("--plans", type=Path, default=REPO / "out" / "kernels-gpu" / "plans.json")
    p.add_argument("--results", type=Path, default=REPO / "out" / "kernels-gpu")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=8192)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU interpreter: a test of the script")
    return cmd_run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
