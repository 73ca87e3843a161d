"""Quality reached at a fixed wall-clock budget with 1 and 2 search workers.

Issue 3 asks for this on cotengra's ``randreg_200_3_a`` and ``sycamore_n53_m20...`` instances.
Each (instance, budget, workers, seed) runs ``tnplan.plan(net, max_time=B, workers=W, seed=S,
cache=False)``; the table reports the median log10 flops over seeds, the median wall time and the
gain of 2 workers over 1 (positive: 2 workers found cheaper plans).

Usage::

    python benchmarks/parallel/run.py [--budgets 1,5] [--seeds 0,1,2] [--out DIR]

Writes ``benchmarks/results/parallel.{md,json}``. Run it alone: it measures wall-clock quality, and
the worker processes need the cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import tnplan
from tnplan.parallel import run_tasks

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "bench" / "instances" / "cotengra"
RESULTS = ROOT / "benchmarks" / "results"
INSTANCES = ("randreg_200_3_a.json", "sycamore_n53_m20_s0_e0_pABCDCDAB.json")

sys.path.insert(0, str(ROOT / "benchmarks"))
from harness import budget_list, check_output_dir, int_list, write_report  # noqa: E402
from machine import describe  # noqa: E402  (benchmarks/machine.py: one machine description)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", type=budget_list, default=[1.0, 5.0], help="max_time values in seconds (1,5)")
    ap.add_argument("--seeds", type=int_list(0), default=[0, 1, 2], help="comma list (default 0,1,2)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    budgets, seeds = args.budgets, args.seeds
    check_output_dir(args.out)
    from tnplan.optimal import kernel_ready

    kernel_ready(block=True)
    run_tasks(abs, [-1, -2], workers=2)  # start the worker pool once, as a long-lived process would
    rows = []
    for name in INSTANCES:
        net = tnplan.Network.from_json(SHARED / name)
        for budget in budgets:
            by_workers = {}
            for workers in (1, 2):
                flops, walls = [], []
                for seed in seeds:
                    t = time.perf_counter()
                    p = tnplan.plan(net, max_time=budget, workers=workers, seed=seed, cache=False)
                    walls.append(time.perf_counter() - t)
                    flops.append(p.log10_flops)
                by_workers[workers] = (flops, walls)
                print(
                    f"{name[:28]:28s} {budget:4g}s  workers={workers}  "
                    f"median log10 flops {statistics.median(flops):.4f}  wall {statistics.median(walls):.2f}s"
                )
            one, two = statistics.median(by_workers[1][0]), statistics.median(by_workers[2][0])
            rows.append(
                {
                    "network": Path(name).stem,
                    "tensors": net.num_tensors,
                    "budget_s": budget,
                    "workers_1": {"log10_flops": by_workers[1][0], "wall_s": by_workers[1][1]},
                    "workers_2": {"log10_flops": by_workers[2][0], "wall_s": by_workers[2][1]},
                    "median_1": round(one, 4),
                    "median_2": round(two, 4),
                    "gain_log10": round(one - two, 4),
                }
            )
    result = {"machine": describe(), "date": time.strftime("%Y-%m-%d"), "seeds": seeds, "rows": rows}
    write_report(args.out, "parallel", result, markdown)
    print(f"wrote {args.out / 'parallel.md'}")
    return 0


def markdown(result: dict) -> str:
    lines = [
        "# Parallel search: quality at a fixed wall-clock budget",
        "",
        f"Machine: {result['machine']}; {result['date']}. `tnplan.plan(net, max_time=B, workers=W, seed=S, "
        f"cache=False)`, seeds {', '.join(map(str, result['seeds']))}; medians. Gain = median log10 flops with "
        "1 worker minus with 2 (positive: 2 workers found cheaper plans). Produced by `benchmarks/parallel/run.py`.",
        "",
        "| network | tensors | budget (s) | 1 worker: log10 flops | wall (s) | 2 workers: log10 flops | wall (s) "
        "| gain |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        w1 = statistics.median(r["workers_1"]["wall_s"])
        w2 = statistics.median(r["workers_2"]["wall_s"])
        lines.append(
            f"| {r['network']} | {r['tensors']} | {r['budget_s']:g} | {r['median_1']:.4f} | {w1:.2f} | "
            f"{r['median_2']:.4f} | {w2:.2f} | {r['gain_log10']:+.4f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
