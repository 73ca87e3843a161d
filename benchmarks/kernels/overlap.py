"""Does the generator's backward hide behind the input-gradient GEMM? (``adntn.overlap``, one CUDA device)

A hidden layer's training step at batch 8192, every variant captured in its own CUDA graph and replayed:
dense ``nn.Linear`` (TF32), the materialised ``TNLinear`` with the generator in line ("serial"), and with
the generator on a side stream ("ov"), at normal or high stream priority ("hi") and with cuBLAS held to
fewer SMs while it computes ``dx`` ("smN": ``adntn.overlap.SM_CARVEOUT``). The variants are timed one
replay of each in turn, the order rotating (``gpu.Timer.interleaved``, 180 replays each), so clock and thermal
drift reach all alike; the table gives each one's median.

    python3 benchmarks/kernels/overlap.py --plans out/kernels-gpu/plans.json --results $OUT   # on the GPU
    .venv/bin/python benchmarks/kernels/overlap.py table benchmarks/results/kernels-gpu-overlap.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for _p in (HERE, HERE.parent, REPO):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from harness import check_output_dir, fail, positive_int, render_results, write_atomic, write_report  # noqa: E402

CONFIGS = [("ttn", 16, 4096, 4096), ("attn", 9, 4096, 4096), ("mera", 8, 4096, 4096), ("ttn", 24, 25088, 4096)]
# name -> (overlap, side-stream priority (lower is higher), SM carveout)
VARIANTS = {
    "serial": (False, 0, 0),
    "ov": (True, 0, 0),
    "ov-hi": (True, -1, 0),
    "ov-hi-sm8": (True, -1, 8),
    "ov-hi-sm16": (True, -1, 16),
    "ov-hi-sm32": (True, -1, 32),
    "ov-sm16": (True, 0, 16),
}


def measure(spec: tuple, cache: Any, batch: int) -> dict[str, float]:
    import gpu
    import torch

    import adntn.overlap as ov

    arch, bond, n_in, n_out = spec
    dev = torch.device("cuda", torch.cuda.current_device())
    x = torch.randn(batch, n_in, device=dev, requires_grad=True)
    dy = torch.randn(batch, n_out, device=dev)

    def step_of(layer: Any) -> Any:
        def step() -> None:
            layer.zero_grad(set_to_none=False)
            x.grad = None
            layer(x).backward(dy)

        return step

    keep = [torch.nn.Linear(n_in, n_out).to(dev)]  # a graph does not keep its modules (or their grads) alive
    replays = {"dense": gpu._graphed(step_of(keep[0]), dev)}
    for name, (overlap, priority, carveout) in VARIANTS.items():
        ov._SIDE_STREAMS[dev] = torch.cuda.Stream(dev, priority=priority)
        ov.SM_CARVEOUT = carveout
        try:
            layer = gpu.build_layer(arch, bond, n_in, n_out, cache, True, "materialize").to(dev)
            layer.overlap = overlap
            for p in layer.parameters():
                p.grad = torch.zeros_like(p)
            keep.append(layer)
            replays[name] = gpu._graphed(step_of(layer), dev)
        finally:
            ov.SM_CARVEOUT = 0
            ov._SIDE_STREAMS.pop(dev, None)
    medians = gpu.Timer(dev, warmup=5, reps=60).interleaved(replays)
    return {k: round(v, 3) for k, v in medians.items()}


def markdown(result: dict[str, Any]) -> str:
    names = ["dense", *VARIANTS]
    lines = [
        "# Generator backward beside the dx GEMM (adntn.overlap)",
        "",
        f"Device: {result['device']}; torch {result['torch']}; {result['date']}. Hidden-layer training step "
        f"(forward, dW and dx GEMMs) at batch {result['batch']}, each variant in its own CUDA graph; one replay of "
        "each in turn, the order rotating, median of 180 (ms). Produced by `benchmarks/kernels/overlap.py`.",
        "",
        "| config | " + " | ".join(names) + " | best TN / dense |",
        "|---|" + "---:|" * (len(names) + 1),
    ]
    for label, row in result["configs"].items():
        best = min(v for k, v in row.items() if k != "dense")
        cells = " | ".join(f"{row[k]:.3f}" if k in row else "—" for k in names)
        lines.append(f"| {label} | {cells} | {row['dense'] / best:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("table", nargs="*", metavar="table JSON", help="re-render the markdown from this json and stop")
    ap.add_argument("--plans", type=Path, default=REPO / "out" / "kernels-gpu" / "plans.json")
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--batch", type=positive_int, default=8192)
    args = ap.parse_args(argv)
    if args.table and (len(args.table) != 2 or args.table[0] != "table"):
        ap.error("to re-render, give `table FILE.json`; to measure, no positional argument")
    if args.table:
        # Only the Markdown is written, and only once the file has rendered.
        _, text = render_results(Path(args.table[1]), ("device", "torch", "date", "batch", "configs"), markdown)
        write_atomic(check_output_dir(args.results) / "kernels-gpu-overlap.md", text)
    else:
        check_output_dir(args.results)
        import time

        import gpu
        import torch

        if not torch.cuda.is_available():
            fail("overlap.py measures CUDA streams: run it on a GPU machine")
        torch.backends.cuda.matmul.allow_tf32 = True
        cache = gpu.imported_plans(args.plans)
        result = {
            "device": torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"),
            "batch": args.batch,
            "configs": {},
        }
        for spec in CONFIGS:
            label = f"{spec[0]} χ={spec[1]} {spec[2]}x{spec[3]}"
            result["configs"][label] = measure(spec, cache, args.batch)
            print(label, json.dumps(result["configs"][label]), flush=True)
        write_report(args.results, "kernels-gpu-overlap", result, markdown)
    print(f"wrote {args.results / 'kernels-gpu-overlap.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
