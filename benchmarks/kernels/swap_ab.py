"""A/B/C of the generator weight's layout: the last step's operand order, the wide copy, the broadcast product.

``tnplan.contract.compile_plan`` writes a program's last step in one of three ways:

- "plain": the plan's operand order, then a permuting copy into the output order (``_run`` patched to a
  constant and ``PRODUCT_MIN`` out of reach: the code as it was on 2026-11-27);
- "swap": the operand order that leaves the final permutation the longest contiguous runs, which
  ``Generator.padded_weight`` copies as 16-byte elements (``adntn.layout``; ``PRODUCT_MIN`` out of reach);
- "product": where the output splits into outer legs, rows and columns, one ``matmul`` broadcast over the
  outer legs that writes the output order directly (``tnplan.contract._broadcast_product``; the default).

Per configuration the three are captured in CUDA graphs (``W = generator.padded_weight();
torch.autograd.grad(W, cores, G)``) and timed one replay of each in turn (``gpu.Timer.interleaved``, 120
replays each); each configuration runs in its own process (``--config N``); ``run`` without it loops over
all of ``gpu.py``'s.

    python3 benchmarks/kernels/swap_ab.py run --plans out/kernels-gpu/plans.json --results $OUT   # on the GPU
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for _p in (HERE, HERE.parent, REPO):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from harness import check_output_dir, write_atomic  # noqa: E402


def measure(index: int, plans: Path) -> dict[str, Any]:
    import gpu
    import torch

    import tnplan.contract as contract

    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    cache = gpu.imported_plans(plans)
    spec = gpu.CONFIGS[index]
    real_run, real_min = contract._run, contract.PRODUCT_MIN
    patches = {"plain": (lambda *a: 1, 1 << 62), "swap": (real_run, 1 << 62), "product": (real_run, real_min)}
    runs, finishes = {}, {}
    for name, (run, least) in patches.items():
        contract._run, contract.PRODUCT_MIN = run, least
        try:
            g = gpu.build_generator(*spec, cache, True).to(dev)
        finally:
            contract._run, contract.PRODUCT_MIN = real_run, real_min
        params = list(g.cores.values())
        grad_w = torch.randn(g.out_padded, g.in_padded, device=dev)
        runs[name] = gpu._graphed(lambda g=g, p=params, gw=grad_w: torch.autograd.grad(g.padded_weight(), p, gw), dev)
        last = g.groups[-1].program
        finishes[name] = "product" if last.product is not None else last.finish[0]
    ms = gpu.Timer(dev, 3, 40).interleaved(runs)
    arch, bond, n_in, n_out = spec
    return {
        "config": f"{arch} χ={bond} {n_in}x{n_out}",
        **ms,
        "finish": finishes,
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    head = next((r for r in rows if "device" in r), {"device": "?", "torch": "?"})
    lines = [
        "# Generator weight layout: last-step operand order, the wide copy, the broadcast product",
        "",
        f"Device: {head['device']}; torch {head['torch']}; {time.strftime('%Y-%m-%d')}. Generator forward+backward "
        "(`torch.autograd.grad` of `padded_weight()`), each variant in its own CUDA graph, one replay of each in "
        "turn, median of 120 (ms). Produced by `benchmarks/kernels/swap_ab.py`.",
        "",
        "| config | plain | swap | product | product / swap | last step: plain | swap | product |",
        "|---|---:|---:|---:|---:|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | error: {r['error']} | | | | | | |")
            continue
        f = r["finish"]
        lines.append(
            f"| {r['config']} | {r['plain']:.3f} | {r['swap']:.3f} | {r['product']:.3f} | "
            f"{r['product'] / r['swap']:.2f} | `{f['plain']}` | `{f['swap']}` | `{f['product']}` |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["run"])
    ap.add_argument("--plans", type=Path, default=REPO / "out" / "kernels-gpu" / "plans.json")
    ap.add_argument("--results", type=Path, default=REPO / "out" / "kernels-gpu" / "results")
    ap.add_argument("--config", type=int, help="one configuration (index into gpu.CONFIGS), JSON to stdout")
    args = ap.parse_args(argv)
    if args.config is not None:
        print(json.dumps(measure(args.config, args.plans), ensure_ascii=False))
        return 0
    import gpu
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("swap_ab.py times CUDA graphs: run it on a GPU machine")
    check_output_dir(args.results)
    rows = []
    for k, (arch, bond, n_in, n_out) in enumerate(gpu.CONFIGS):
        cmd = [sys.executable, __file__, "run", "--plans", str(args.plans), "--config", str(k)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        try:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        except (IndexError, json.JSONDecodeError):
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            rows.append({"config": f"{arch} χ={bond} {n_in}x{n_out}", "error": tail[:120].replace("|", "/")})
        print(rows[-1], flush=True)
    text = markdown(rows)  # first: rows that cannot be rendered replace nothing
    write_atomic(args.results / "kernels-gpu-swap.json", json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
    write_atomic(args.results / "kernels-gpu-swap.md", text)
    print(f"wrote {args.results / 'kernels-gpu-swap.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
