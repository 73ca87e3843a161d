"""How far one sliced bond can go: the overhead of slicing each index of a network, one at a time.

Slicing index ``c`` (size ``d``) runs ``d`` contractions of the network with ``c`` fixed, so the best
single-cut plan costs ``d * F(N_c)``, where ``N_c`` is the network with ``c``'s size set to 1 and
``F`` the flops of its best tree; the overhead is ``d * F(N_c) / F(N)``. For each index this plans
``N_c`` with no size cap (a relaxation: a cap can only make a cut dearer) and reports the overhead
against the unsliced plan of the same budget. On a network whose bonds all have size 4, slicing 2 bits
below the unsliced width needs one cut (or a tree of that width with no cut at all), so the smallest
overhead this scan finds is what the 2-bit slicing target has to beat.

Usage: ``python benchmarks/planner/single_cuts.py [--network mera_closed_32_b4] [--budget 1] [--base-budget 5]``
Writes ``benchmarks/results/single-cuts.md`` and ``single-cuts.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import tnplan
from tnplan.examples import FAMILIES

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import describe  # noqa: E402  (benchmarks/machine.py: one machine description)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="mera_closed_32_b4")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per cut network")
    parser.add_argument("--base-budget", type=float, default=5.0, help="seconds for the unsliced plan")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    from tnplan.optimal import kernel_ready

    kernel_ready(block=True)
    net = FAMILIES[args.network]()
    base = tnplan.plan(net, max_time=args.base_budget, seed=args.seed, cache=False)
    sizes = dict(net.size_dict)
    rows = []
    for label in sorted(sizes, key=str):
        d = sizes[label]
        if d == 1 or label in net.output:
            continue
        cut = tnplan.Network(net.inputs, net.output, {**sizes, label: 1})
        p = tnplan.plan(cut, max_time=args.budget, seed=args.seed, cache=False)
        rows.append(
            {
                "index": str(label),
                "size": d,
                "log10_flops_per_slice": round(p.log10_flops, 4),
                "log2_size_per_slice": round(p.log2_size, 2),
                "overhead": d * p.flops / base.flops,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    rows.sort(key=lambda r: r["overhead"])
    meta = {
        "network": args.network,
        "tensors": net.num_tensors,
        "unsliced_log10_flops": base.log10_flops,
        "unsliced_log2_size": base.log2_size,
        "base_budget_s": args.base_budget,
        "budget_s": args.budget,
        "seed": args.seed,
        "machine": describe(),
        "date": time.strftime("%Y-%m-%d"),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "single-cuts.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [
        f"# Single cuts of `{args.network}` ({net.num_tensors} tensors)",
        "",
        f"Machine: {meta['machine']}; {meta['date']}.",
        f"Unsliced plan: log10 flops {base.log10_flops:.4f}, width {base.log2_size:.1f} bits ({args.base_budget:g} s,"
        f" seed {args.seed}). Each of the {len(rows)} indices is cut alone: the network with that index at size 1"
        f" is planned with no size cap ({args.budget:g} s), and overhead = size x its flops / the unsliced"
        " flops. Produced by `benchmarks/planner/single_cuts.py`.",
        "",
        f"Smallest overhead of any single cut: **{rows[0]['overhead']:.3f}x** (index `{rows[0]['index']}`);"
        f" median over all cuts {rows[len(rows) // 2]['overhead']:.2f}x.",
        "",
        "| index | size | log10 flops per slice | log2 size per slice | overhead |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| `{r['index']}` | {r['size']} | {r['log10_flops_per_slice']:.4f} | {r['log2_size_per_slice']:.1f} |"
        f" {r['overhead']:.3f}x |"
        for r in rows[:15]
    ]
    (out / "single-cuts.md").write_text("\n".join([*lines, ""]))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
