"""How well does the kernels' per-step cost model price a whole weight? Measured against the kernels.

For each generator of ``benchmarks/kernels/run.py`` (TTN, aTTN and MERA at 4096x4096 and 25088x4096, the
bond dims nearest 2,000x and 77,000x compression): the numba kernels' forward+backward time for the
weight (``adntn.timing.kernel_weight_seconds``' measurement: float32, best of 3 after a warm call) and
the sum of ``kernels.calibrate.step_seconds`` over its compiled steps (what the executor uses to send
each step to the fused loop or to BLAS), at one thread. The ratio says whether that model could price a
weight in ``mode="auto"``'s decision instead of measuring it.

    .venv/bin/python benchmarks/kernels/weight_model.py   # -> benchmarks/results/kernels-weight-model.{md,json}
    .venv/bin/python benchmarks/kernels/weight_model.py --results /tmp/wm   # -> another folder
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for _p in (HERE.parent, REPO):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from harness import RESULTS, check_output_dir, write_report  # noqa: E402
from machine import describe  # noqa: E402
from run import ARCH_NAMES, DEFAULT_BONDS  # noqa: E402

STEM = "kernels-weight-model"


def predicted_seconds(generator: Any) -> float:
    """Forward+backward seconds of the generator's steps, each on the path it takes, by the kernels'
    per-step model."""
    from kernels.executor import compiled_steps, step_cost

    return sum(
        step_cost(st, k == len(group.steps) - 1, group.code, st.blas)
        for group in compiled_steps(generator)
        for k, st in enumerate(group.steps)
    )


def markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    ratios = [r["measured_s"] / r["predicted_s"] for r in rows]
    lines = [
        "# The kernels' per-step model against the whole weight",
        "",
        f"Machine: {result['machine']}; torch {result['torch']}, 1 thread; {result['date']}. Produced by "
        "`benchmarks/kernels/weight_model.py`. Measured: the numba kernels building the weight forward and "
        "backward (float32, best of 3 after a warm call, `adntn.timing._measure_weight`). Predicted: "
        "`kernels.calibrate.step_seconds` summed over the compiled steps, the model that sends each step to "
        "the fused loop or to BLAS.",
        "",
        f"**Measured over predicted: {min(ratios):.2f}x to {max(ratios):.2f}x** over {len(rows)} generators. "
        '`mode="auto"` therefore prices a weight the kernels build by measuring it '
        "(`adntn.timing.kernel_weight_seconds`), not by this sum.",
        "",
        "| shape | config | steps | forward ms | forward+backward ms | predicted ms | measured / predicted |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r, ratio in zip(rows, ratios, strict=True):
        lines.append(
            f"| {r['shape']} | {r['config']} | {r['steps']} | {1e3 * r['forward_s']:.1f} | "
            f"{1e3 * r['measured_s']:.1f} | {1e3 * r['predicted_s']:.1f} | {ratio:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=RESULTS, help="output dir (default benchmarks/results)")
    args = ap.parse_args(argv)
    check_output_dir(args.results)
    import torch

    torch.set_num_threads(1)
    import adntn
    from adntn import timing
    from kernels.executor import compiled_steps

    result: dict[str, Any] = {"machine": describe(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                              "rows": []}  # fmt: skip
    for (n_in, n_out), bonds in DEFAULT_BONDS.items():
        for arch, dims in bonds.items():
            for bond in dims:
                torch.manual_seed(0)
                gen = adntn.TNLinear(n_in, n_out, arch, bond, mode="materialize").generator
                measured = timing._measure_weight(gen)
                row = {
                    "shape": f"{n_in}x{n_out}", "config": f"{ARCH_NAMES[arch]} χ={bond}",
                    "steps": sum(len(g.steps) for g in compiled_steps(gen)),
                    "forward_s": measured["forward"], "measured_s": measured["backward"],
                    "predicted_s": predicted_seconds(gen),
                }  # fmt: skip
                result["rows"].append(row)
                print(json.dumps(row), flush=True)
    write_report(args.results, STEM, result, markdown)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
