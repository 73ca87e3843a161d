"""Does ``TNLinear(mode="auto")`` pick the fastest mode on the CPU? Measured against every mode.

For each configuration (4096x4096, TTN/aTTN/MERA at two bond sizes), batch size and regime
(``forward``: no backward, under ``no_grad``; ``weights``: backward to the cores, ``x`` needing no
gradient, as an input layer's; ``input``: ``x`` needing its gradient too, as a hidden layer's): one step
of each mode the generator has (materialize, stream, kron through its torch route), the modes taking
turns call by call, each after an untimed step of a dense ``nn.Linear`` of the same size, one thread;
median seconds. Batches 8, 32 and 512 lie between two of
``TRACED_ROWS``; 384 is no power of two. Beside them: the seconds :mod:`adntn.timing` predicts,
the mode auto picks, the mode the old flops rule picked (stream where its planned flops are
fewer), and each pick's regret (its time over the fastest's).

    .venv/bin/python benchmarks/layers/auto_cpu.py          # -> benchmarks/results/layers-auto-cpu.{md,json}
    .venv/bin/python benchmarks/layers/auto_cpu.py --quick  # two configs, small: layers-auto-cpu-quick.* in a temp dir
    .venv/bin/python benchmarks/layers/auto_cpu.py --width 1024 --results /tmp/a  # -> layers-auto-cpu-w1024.*
    .venv/bin/python benchmarks/layers/auto_cpu.py --report-only  # re-render the Markdown from the JSON
"""

from __future__ import annotations

import functools
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

from harness import finish_report, interrupted, partial_stem, time_after_neighbour, width_cli, write_report  # noqa: E402

CONFIGS = [("ttn", 2), ("ttn", 16), ("attn", 2), ("attn", 9), ("mera", 2), ("mera", 8)]
BATCHES = (1, 8, 32, 64, 256, 384, 512, 1024, 4096)
REGIMES = ("forward", "weights", "input")
MODES = ("materialize", "stream", "kron")


def _reps(batch: int) -> int:
    return 7 if batch <= 64 else 5 if batch <= 256 else 3


def measure(arch: str, bond: int, width: int, batch: int, regime: str) -> dict[str, Any]:
    """Median step seconds per mode, predicted seconds, and the picks of auto and of the flops rule."""
    import torch

    import adntn
    from adntn import timing

    x = torch.randn(batch, width, requires_grad=regime == "input")
    dy = torch.randn(batch, width)
    torch.manual_seed(0)
    auto = adntn.TNLinear(width, width, arch, bond)
    gen = auto.generator
    modes = [m for m in MODES if m == "materialize" or (m == "stream" and gen.streamable) or (m == "kron" and gen.kron)]

    def run(layer: Any) -> None:
        if regime == "forward":
            with torch.no_grad():
                layer(x)
            return
        layer.zero_grad(set_to_none=False)
        x.grad = None
        layer(x).backward(dy)

    layers = {}
    for mode in modes:
        torch.manual_seed(0)
        layer = layers[mode] = adntn.TNLinear(width, width, arch, bond, mode=mode)
        if mode == "kron":
            # The route auto times and takes on the CPU (mode="kron" would take Triton's interpreter if set).
            layer.forward = lambda x, layer=layer: layer.generator.stream_kron(x, backend="torch") + layer.bias
        run(layer)  # warm: first-call allocations
    # Every timed step follows an untimed step of a dense layer (a neighbouring layer in a model), so
    # each mode starts from the same caches and heap (harness.time_after_neighbour says why).
    neighbour = torch.nn.Linear(width, width)
    steps = {mode: functools.partial(run, layers[mode]) for mode in modes}
    samples = time_after_neighbour(steps, functools.partial(run, neighbour), _reps(batch))
    seconds = {m: statistics.median(v) for m, v in samples.items()}
    fastest = min(seconds, key=seconds.__getitem__)
    flops_pick = "stream" if gen.streams_cheaper(batch) else "materialize"
    pick = auto.mode_for(batch, "cpu", regime)
    return {
        "seconds": seconds,
        "predicted": {m: timing.mode_seconds(gen, m, batch, regime) for m in modes},
        "fastest": fastest,
        "auto": pick,
        "auto_regret": seconds[pick] / seconds[fastest],
        "flops_rule": flops_pick,
        "flops_regret": seconds[flops_pick] / seconds[fastest],
        "compression": auto.compression_ratio(),
    }


def markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    n = len(rows)
    hits = sum(r["auto"] == r["fastest"] for r in rows)
    old = sum(r["flops_rule"] == r["fastest"] for r in rows)
    worst = max(rows, key=lambda r: r["auto_regret"])
    worst_old = max(rows, key=lambda r: r["flops_regret"])
    lines = [
        '# mode="auto" on the CPU: its pick against every mode',
        "",
        f"Machine: {result['machine']}; torch {result['torch']}, 1 thread; {result['date']}. Produced by "
        f"`benchmarks/layers/auto_cpu.py`. `TNLinear({result['width']}, {result['width']})`; one training step "
        "(zero_grad, forward, backward) per mode, the modes taking turns call by call, each step after an "
        "untimed step of a dense `nn.Linear` of the same size (the same starting state for every mode); median seconds "
        "(7 steps at batch <= 64, 5 at 256, 3 above). kron runs its torch route (the one auto takes on the CPU). "
        "Regime: `forward` (no backward, under no_grad), `weights` (backward to the cores; x needs no gradient, "
        "an input layer) or `input` (x needs its gradient too, a hidden layer). Batches 8, 32 and 512 lie "
        "between two of the sizes auto always traces (1, 4, 16, ..., 16384): it traces them only where those "
        "two sizes' picks differ and otherwise takes their shared pick; batch 384 takes the pick for 512.",
        "",
        "Predicted: `adntn.timing.mode_seconds` (the step traced on meta tensors, priced by this machine's "
        "calibration; a weight the numba kernels build, as materialize does by default, adds the kernels' "
        "own time, measured once per kernel program and cached). Flops rule: what auto picked before "
        "(stream where its planned flops are fewer). Regret: the pick's time over the fastest mode's.",
        "",
        f"**auto picked the fastest mode in {hits} of {n} cases; worst regret {worst['auto_regret']:.2f}x "
        f"({worst['label']}); median regret {statistics.median(r['auto_regret'] for r in rows):.2f}x.** "
        f"The flops rule: {old} of {n}, worst regret {worst_old['flops_regret']:.2f}x ({worst_old['label']}).",
        "",
        "| config | batch | regime | materialize | stream | kron | predicted m / s / k | fastest | auto | regret | "
        "flops rule | regret |",
        "|---|---:|---|---:|---:|---:|---|---|---|---:|---|---:|",
    ]
    for r in rows:
        sec = " | ".join(f"{r['seconds'][m]:.4f}" if m in r["seconds"] else "—" for m in MODES)
        pred = " / ".join(f"{r['predicted'][m]:.4f}" if m in r["predicted"] else "—" for m in MODES)
        lines.append(
            f"| {r['config']} | {r['batch']} | {r['regime']} | {sec} | {pred} | {r['fastest']} | "
            f"{r['auto']} | {r['auto_regret']:.2f}x | {r['flops_rule']} | {r['flops_regret']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parsed = width_cli(
        __doc__, "layers-auto-cpu", "two configs at width 512, batches 1 and 64 (smoke test)", markdown, argv
    )
    if parsed is None:
        return 0
    args, results, name = parsed
    import torch
    from machine import describe

    torch.set_num_threads(1)
    configs, batches = (CONFIGS[:2], (1, 64)) if args.quick else (CONFIGS, BATCHES)
    width = args.width
    result: dict[str, Any] = {"machine": describe(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                              "width": width, "rows": []}  # fmt: skip
    try:
        for batch in batches:
            for arch, bond in configs:
                for regime in REGIMES:
                    row = measure(arch, bond, width, batch, regime)
                    row.update(config=f"{arch} χ={bond}", batch=batch, regime=regime)
                    row["label"] = f"{row['config']}, batch {batch}, {regime}"
                    result["rows"].append(row)
                    print(json.dumps(row), flush=True)
                    # Beside the results, not over them: an interrupted run keeps what it measured and
                    # leaves the complete results it would otherwise replace as they were.
                    write_report(results, partial_stem(name), result, markdown)
    except KeyboardInterrupt:
        return interrupted(results, name, len(result["rows"]))
    finish_report(results, name, result, markdown)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
