"""Where a generator's GPU time goes: the CUDA kernels of one forward+backward, by the torch profiler.

The graphed generator step is ~0.3-0.7 ms on an H200 (``kernels-gpu.md``), made of tens of small kernels;
this lists them per configuration (count, total and mean device time, grouped by kernel name) so that
fusing work can start from the largest. Plans come from the CPU machine's export, as in ``gpu.py``.

    python3 benchmarks/kernels/gpu_profile.py --plans out/kernels-gpu/plans.json --results $OUT   # on the GPU
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for _p in (HERE, HERE.parent, REPO):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from harness import check_output_dir, fail, positive_int, write_atomic  # noqa: E402

CONFIGS = [("ttn", 16, 4096, 4096), ("attn", 9, 4096, 4096), ("mera", 8, 4096, 4096)]


def profile(spec: tuple, cache: Any, reps: int, dev: Any) -> list[str]:
    import gpu
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    arch, bond, n_in, n_out = spec
    on_gpu = dev.type == "cuda"
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    g = gpu.build_generator(arch, bond, n_in, n_out, cache, True).to(dev)
    params = list(g.cores.values())
    grad_w = torch.randn(g.out_padded, g.in_padded, device=dev)

    def forward() -> Any:
        return g.padded_weight()

    for _ in range(5):
        torch.autograd.grad(forward(), params, grad_w)
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with torch_profile(activities=activities, record_shapes=True) as prof:
        for _ in range(reps):
            w = forward()
            sync()
            torch.autograd.grad(w, params, grad_w)
        sync()
    kind = torch.autograd.DeviceType.CUDA if on_gpu else torch.autograd.DeviceType.CPU
    rows: dict[str, list[float]] = {}
    sequence: list[tuple[str, float]] = []
    for e in prof.events():
        if e.device_type == kind and (on_gpu or not e.cpu_children):  # CPU: leaf ops stand in for kernels
            rows.setdefault(e.name, []).append(e.time_range.elapsed_us())
            sequence.append((e.name, e.time_range.elapsed_us()))
    total = sum(sum(v) for v in rows.values()) / reps
    count = sum(len(v) for v in rows.values()) / reps
    lines = [
        "",
        f"## {arch} χ={bond} {n_in}x{n_out}: {count:.0f} kernels, {total:.1f} us of kernel time per forward+backward",
        "",
        "| kernel | per step | us per step | mean us |",
        "|---|---:|---:|---:|",
    ]
    for name, times in sorted(rows.items(), key=lambda kv: -sum(kv[1]))[:15]:
        short = name if len(name) <= 90 else name[:87] + "..."
        short = short.replace("|", "/")
        lines.append(
            f"| `{short}` | {len(times) / reps:.0f} | {sum(times) / reps:.1f} | {sum(times) / len(times):.2f} |"
        )
    lines += _op_table(prof, reps, on_gpu)
    per_step = len(sequence) // reps
    lines += ["", f"One forward+backward in launch order ({per_step} kernels; us):", ""]
    lines.append(" ".join(f"`{_short(n, 40)}` {t:.1f};" for n, t in sequence[:per_step]))
    return lines


def _short(name: str, n: int) -> str:
    name = name.replace("|", "/")
    return name if len(name) <= n else name[: n - 3] + "..."


def _op_table(prof: Any, reps: int, on_gpu: bool) -> list[str]:
    """The aten ops that launched the most device time, by input shapes (which contraction step they are)."""
    stats = prof.key_averages(group_by_input_shape=True)
    attr = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    top = sorted(
        (e for e in stats if getattr(e, attr, 0) > 0 and e.key.startswith("aten::")), key=lambda e: -getattr(e, attr)
    )
    lines = ["", "| aten op | input shapes | calls per step | us per step |", "|---|---|---:|---:|"]
    for e in top[:15]:
        shapes = _short(str([list(s) for s in e.input_shapes if s]), 80)
        lines.append(f"| `{e.key}` | `{shapes}` | {e.count / reps:.0f} | {getattr(e, attr) / reps:.1f} |")
    return lines


def floor(spec: tuple, cache: Any, dev: Any, batch: int, rounds: int = 3) -> str:
    """Graphed ms of the input-layer step: dense, the materialised layer's GEMMs alone (its weight given: the
    generated one, or a copy of the dense layer's), the whole materialised layer, and the generator's
    forward+backward alone; one replay of each in turn, ``rounds * 30`` each, the median."""
    import gpu
    import torch
    from torch import nn
    from torch.nn import functional

    arch, bond, n_in, n_out = spec
    timer = gpu.Timer(dev, 3, 30)
    x = torch.randn(batch, n_in, device=dev)
    dy = torch.randn(batch, n_out, device=dev)
    dense = nn.Linear(n_in, n_out).to(dev)
    layer = gpu.build_layer(arch, bond, n_in, n_out, cache, True, "materialize").to(dev)
    layer.overlap = False
    generated = layer.generator().detach().clone().requires_grad_(True)
    copied = dense.weight.detach().clone().requires_grad_(True)
    for p in [generated, copied, *layer.parameters(), *dense.parameters()]:
        p.grad = torch.zeros_like(p)
    grad_w = torch.randn(n_out, n_in, device=dev)
    steps = {
        "dense": lambda: dense(x).backward(dy),
        "gemms": lambda: functional.linear(x, generated, layer.bias).backward(dy),
        "gemms-dense-w": lambda: functional.linear(x, copied, layer.bias).backward(dy),
        "layer": lambda: layer(x).backward(dy),
        "generator": lambda: layer.generator().backward(grad_w),
    }
    runs = {k: (gpu._graphed(f, dev) if dev.type == "cuda" else f) for k, f in steps.items()}
    m = timer.interleaved(runs, rounds)
    return (
        f"| {arch} χ={bond} | {m['dense']:.3f} | {m['gemms']:.3f} | {m['gemms-dense-w']:.3f} | {m['layer']:.3f} | "
        f"{m['generator']:.3f} | {m['layer'] - m['gemms']:.3f} |"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plans", type=Path, default=REPO / "out" / "kernels-gpu" / "plans.json")
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--reps", type=positive_int, default=10)
    ap.add_argument("--batch", type=positive_int, default=8192)
    ap.add_argument("--device", default="cuda", help="cpu: a test of the script (CPU ops stand in for kernels)")
    args = ap.parse_args(argv)
    import gpu
    import torch

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        fail("gpu_profile.py profiles CUDA kernels: run it on a GPU machine (or --device cpu to test it)")
    check_output_dir(args.results)
    torch.backends.cuda.matmul.allow_tf32 = True
    if dev.type == "cpu":
        torch.set_num_threads(1)
    cache = gpu.imported_plans(args.plans)
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "CPU (script test)"
    lines = [
        "# Generator kernels on the GPU (torch profiler)",
        "",
        f"Device: {name}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}. "
        f"Forward then backward of the torch executor, eager, {args.reps} steps; device time per kernel name "
        "(the 15 largest per configuration). Produced by `benchmarks/kernels/gpu_profile.py`.",
    ]
    for spec in CONFIGS:
        lines += profile(spec, cache, args.reps, dev)
        print(f"profiled {spec}", flush=True)
    lines += [
        "",
        f"## The materialised input layer's floor (batch {args.batch}, graphed; one replay of each in turn, "
        "the order rotating; median of 90)",
        "",
        "gemms: the layer's own forward and dW GEMMs with its weight given (the generated one; or, in the next",
        "column, a copy of the dense layer's), no generator; layer - gemms is what the generator adds to a step.",
        "",
        "| config | dense | gemms | gemms, dense's W | layer | generator alone | layer - gemms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for spec in CONFIGS:
        lines.append(floor(spec, cache, dev, args.batch))
        print(lines[-1], flush=True)
    write_atomic(args.results / "kernels-gpu-profile.md", "\n".join(lines) + "\n")
    print(f"wrote {args.results / 'kernels-gpu-profile.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
