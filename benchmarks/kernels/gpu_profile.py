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

CONFIGS = [("ttn", 16, 4096, 4096), ("attn", 9, 4096, 4096), ("mera", 8, 4096, 4096)]


def profile(spec: tuple, cache: Any, reps: int) -> list[str]:
    import gpu
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    arch, bond, n_in, n_out = spec
    dev = torch.device("cuda")
    g = gpu.build_generator(arch, bond, n_in, n_out, cache, True).to(dev)
    params = list(g.cores.values())
    grad_w = torch.randn(g.out_padded, g.in_padded, device=dev)

    def forward() -> Any:
        return g.run_groups()[-1].reshape(g.out_padded, g.in_padded)

    for _ in range(5):
        torch.autograd.grad(forward(), params, grad_w)
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            w = forward()
            torch.cuda.synchronize()
            torch.autograd.grad(w, params, grad_w)
        torch.cuda.synchronize()
    rows: dict[str, list[float]] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            rows.setdefault(e.name, []).append(e.time_range.elapsed_us())
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
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plans", type=Path, default=REPO / "out" / "kernels-gpu" / "plans.json")
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args(argv)
    import gpu
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_profile.py profiles CUDA kernels: run it on a GPU machine")
    torch.backends.cuda.matmul.allow_tf32 = True
    cache = gpu.imported_plans(args.plans)
    lines = [
        "# Generator kernels on the GPU (torch profiler)",
        "",
        f"Device: {torch.cuda.get_device_name()}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}. "
        f"Forward then backward of the torch executor, eager, {args.reps} steps; device time per kernel name "
        "(the 15 largest per configuration). Produced by `benchmarks/kernels/gpu_profile.py`.",
    ]
    for spec in CONFIGS:
        lines += profile(spec, cache, args.reps)
        print(f"profiled {spec}", flush=True)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "kernels-gpu-profile.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.results / 'kernels-gpu-profile.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
