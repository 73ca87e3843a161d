"""``TNLinear(mode="kron")`` on the CPU: its torch fallback against the materialised and streamed layers.

Off CUDA the Kronecker-sum stream runs as two torch matmuls (``kernels.kronsum.reference``); this
times one training step (``zero_grad``, forward, backward with ``x`` needing no gradient) of each mode
at one batch size, one thread, the modes taking turns call by call (the order rotating), each step
after an untimed step of a dense ``nn.Linear`` of the same size, and reports medians. On the CPU
``mode="auto"`` weighs this route against the others (adntn/timing.py).

    .venv/bin/python benchmarks/kernels/kron_cpu.py            # -> benchmarks/results/kernels-kron-cpu.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for _p in (HERE.parent, REPO):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from harness import check_output_dir, positive_int, time_after_neighbour, write_report  # noqa: E402

CONFIGS = [("ttn", 2), ("ttn", 16), ("mera", 2), ("mera", 8), ("attn", 2), ("attn", 9)]
MODES = ("materialize", "stream", "kron")


def measure(arch: str, bond: int, width: int, batch: int, reps: int) -> dict[str, Any]:
    """Median seconds per training step of each mode, the modes interleaved call by call, and each
    mode's planned forward flops over the dense product's (``flops``)."""
    import torch

    import adntn

    x = torch.randn(batch, width)
    dy = torch.randn(batch, width)
    steps = {}
    layers = {}
    for mode in MODES:
        torch.manual_seed(0)
        layer = layers[mode] = adntn.TNLinear(width, width, arch, bond, mode=mode)

        def step(layer: Any = layer) -> None:
            layer.zero_grad(set_to_none=False)
            layer(x).backward(dy)

        step()  # warm: first-call allocations
        steps[mode] = step
    gen = layers["kron"].generator
    dense = 2 * batch * width * width
    flops = {
        "materialize": gen.materialize_cost(batch) / dense,
        "stream": gen.stream_cost_at(batch) / dense,
        "kron": gen.kron_cost_at(batch) / dense,
    }
    # Each timed step follows an untimed step of a dense layer of the same size (harness.time_after_neighbour).
    neighbour = torch.nn.Linear(width, width)

    def neighbour_step() -> None:
        neighbour.zero_grad(set_to_none=False)
        neighbour(x).backward(dy)

    samples = time_after_neighbour(steps, neighbour_step, reps)
    return {**{m: statistics.median(v) for m, v in samples.items()}, "flops": flops}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Kronecker-sum layers on the CPU (torch fallback)",
        "",
        f"Machine: {result['machine']}; torch {result['torch']}, 1 thread; {result['date']}. Produced by "
        f"`benchmarks/kernels/kron_cpu.py`. One training step of `TNLinear({result['width']}, {result['width']})` "
        f"at batch {result['batch']} (forward + backward, x without gradient); median seconds of "
        f"{result['reps']} steps per mode, the modes taking turns call by call, each step after an untimed step of "
        "a dense `nn.Linear` of the same size (the same starting state for every mode).",
        "",
        "Planned forward flops over the dense product's (`2 x batch x width²`) beside each time: the",
        "generator's groups, then `W` and one product (materialize), the planned stream through the last",
        "segment, or the Kronecker factors (and mixer) and their products (kron; adntn/kron.py).",
        "",
        "| config | materialize | stream | kron | fastest | flops / dense: materialize | stream | kron |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for label, row in result["rows"].items():
        best = min(MODES, key=lambda m: row[m])
        ratios = " | ".join(f"{row['flops'][m]:.3f}" for m in MODES)
        lines.append(
            f"| {label} | {row['materialize']:.3f} | {row['stream']:.3f} | {row['kron']:.3f} | {best} | {ratios} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=positive_int, default=4096)
    p.add_argument("--width", type=positive_int, default=4096)
    p.add_argument("--reps", type=positive_int, default=5)
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args(argv)
    check_output_dir(args.results)
    import torch
    from machine import describe

    torch.set_num_threads(1)
    result: dict[str, Any] = {"machine": describe(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                              "batch": args.batch, "width": args.width, "reps": args.reps, "rows": {}}  # fmt: skip
    for arch, bond in CONFIGS:
        label = f"{arch} χ={bond}"
        result["rows"][label] = measure(arch, bond, args.width, args.batch, args.reps)
        print(label, json.dumps(result["rows"][label]), flush=True)
    write_report(args.results, "kernels-kron-cpu", result, markdown)
    print(f"wrote {args.results / 'kernels-kron-cpu.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
