"""Slicing benchmark: a closed MERA sliced 2 and 4 bits below its unsliced width.

For each seed: plan the network unsliced (``max_time`` = budget), read its width ``w`` (log2 of the
largest intermediate), then plan again with ``max_size = 2**(w - bits)`` and the same budget.
The overhead is sliced flops / unsliced flops of that seed's unsliced plan. cotengra's default
HyperOptimizer with ``slicing_reconf_opts={'target_size': ...}`` runs beside it at the same budget
and target, scored by the same scorer.

Usage: ``python benchmarks/planner/slicing.py [--network mera_closed_32_b4] [--budget 5] [--seeds 0,1,2]``
Writes ``benchmarks/results/slicing.md`` and ``slicing.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import tnplan
from tnplan.examples import FAMILIES

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared harness
from harness import check_output_dir, fail, int_list, positive_float, write_atomic
from machine import cpu_model
from planners import drain_pool  # the planner benchmark's helpers (same folder)

ROOT = Path(__file__).resolve().parents[2]
TARGETS = {2: 1.10, 4: 1.30}


def _cotengra(net: tnplan.Network, budget: float, target_size: int) -> tuple[tnplan.Plan, float]:
    import cotengra as ctg

    opt = ctg.HyperOptimizer(max_time=budget, slicing_reconf_opts={"target_size": target_size})
    start = time.perf_counter()
    try:
        tree = opt.search([list(t) for t in net.int_inputs], list(net.int_output), dict(enumerate(net.int_sizes)))
        elapsed = time.perf_counter() - start
    finally:
        # Trials still running in cotengra's pool would take both cores from the next tnplan run.
        drain_pool(getattr(opt, "_pool", None))
    sliced = tuple(net.labels[i] for i in tree.sliced_inds)
    return tnplan.from_path(net, [tuple(p) for p in tree.get_path()], sliced=sliced), elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="mera_closed_32_b4", help="a name from tnplan.examples.FAMILIES")
    parser.add_argument("--budget", type=positive_float, default=5.0, help="seconds per plan")
    parser.add_argument("--seeds", type=int_list(0), default=[0, 1, 2], help="comma list (default 0,1,2)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if args.network not in FAMILIES:
        fail(f"--network {args.network!r} is not in tnplan.examples.FAMILIES (e.g. mera_closed_32_b4)")
    out = check_output_dir(args.out)
    from tnplan.optimal import kernel_ready

    kernel_ready(block=True)
    net = FAMILIES[args.network]()
    seeds = args.seeds
    rows = []
    for seed in seeds:
        base = tnplan.plan(net, max_time=args.budget, seed=seed, cache=False)
        width = round(base.log2_size)
        for bits in TARGETS:
            target = 2 ** (width - bits)
            ours = tnplan.plan(net, max_time=args.budget, seed=seed, max_size=target, cache=False)
            theirs, ctg_time = _cotengra(net, args.budget, target)
            rows.append(
                {
                    "seed": seed,
                    "bits": bits,
                    "unsliced_log10_flops": base.log10_flops,
                    "unsliced_log2_size": base.log2_size,
                    "target_log2_size": width - bits,
                    "tnplan": {
                        "log10_flops": ours.log10_flops,
                        "log2_size": ours.log2_size,
                        "n_slices": ours.n_slices,
                        "sliced": [str(x) for x in ours.sliced_indices],
                        "overhead": ours.flops / base.flops,
                        "overhead_own_tree": ours.slicing_overhead,
                        "time_s": ours.planning_time,
                    },
                    "ctg-default": {
                        "log10_flops": theirs.log10_flops,
                        "log2_size": theirs.log2_size,
                        "n_slices": theirs.n_slices,
                        "overhead": theirs.flops / base.flops,
                        "time_s": ctg_time,
                    },
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    meta = {
        "network": args.network,
        "tensors": net.num_tensors,
        "budget_s": args.budget,
        "seeds": seeds,
        "cpu": cpu_model(),
        "cores": __import__("os").cpu_count(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
    lines = [
        f"# Slicing benchmark: `{args.network}` ({net.num_tensors} tensors)",
        "",
        f"Machine: {meta['cpu']}, {meta['cores']} cores; Python {meta['python']}; {meta['date']}.",
        f"Budget {args.budget:g} s per plan; seeds {','.join(map(str, seeds))}; overhead = sliced flops / unsliced"
        " flops of the same seed's unsliced tnplan plan (both scored by tnplan's cost model).",
        "",
        "| bits below width | target | method | median overhead | median log2 size | median slices | median time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for bits, limit in TARGETS.items():
        sel = [r for r in rows if r["bits"] == bits]
        for method in ("tnplan", "ctg-default"):
            med = {
                k: statistics.median(r[method][k] for r in sel) for k in ("overhead", "log2_size", "n_slices", "time_s")
            }
            lines.append(
                f"| {bits} | <= {limit:.2f}x | {method} | {med['overhead']:.3f}x | {med['log2_size']:.1f} |"
                f" {med['n_slices']:g} | {med['time_s']:.2f} |"
            )
    lines += [
        "",
        "Unsliced widths per seed: "
        + ", ".join(
            f"seed {r['seed']}: {r['unsliced_log2_size']:.1f} bits, log10 flops {r['unsliced_log10_flops']:.4f}"
            for r in rows
            if r["bits"] == 2
        ),
    ]
    verdict = []
    for bits, limit in TARGETS.items():
        med = statistics.median(r["tnplan"]["overhead"] for r in rows if r["bits"] == bits)
        verdict.append(
            f"- {bits} bits: median overhead {med:.3f}x vs target {limit:.2f}x: "
            f"{'PASS' if med <= limit and math.isfinite(med) else 'FAIL'}"
        )
    lines += ["", "## Target check", *verdict, *_floor(out, args.network), ""]
    # Both rendered before either is written: a failed rendering replaces nothing.
    write_atomic(out / "slicing.json", json.dumps({"meta": meta, "rows": rows}, indent=1))
    write_atomic(out / "slicing.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


def _floor(out: Path, network: str) -> list[str]:
    """What single-cuts.md (same folder, same network) says no plan can beat, when it is there."""
    path = out / "single-cuts.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    if data["meta"]["network"] != network:
        return []
    from single_cuts import cheapest_cut, pair_floor

    best, _ = cheapest_cut(data["rows"], "overhead")
    best_cost, _ = cheapest_cut(data["rows"], "cost_overhead")
    proofs = data["meta"].get("width_proofs", [])
    ruled_out = [p["below"] for p in proofs if p["verdict"] == "no tree fits" and not p.get("free_cuts")]
    one_cut = next((p for p in proofs if p["verdict"] == "no tree fits" and p.get("free_cuts") == 1), None)
    lines = [
        "",
        f"Floor, from `single-cuts.md`: the cheapest single cut of this network found costs {best:.3f}x"
        f" ({best_cost:.3f}x in contraction cost).",
    ]
    if ruled_out:
        lines[-1] += (
            f" No tree is {' or '.join(str(b) for b in sorted(ruled_out))} bits below the unsliced width (proven),"
            " so every plan for those caps slices, and since slicing one more index never lowers the contraction"
            " cost, no plan for them costs less than that cheapest cut (in contraction cost; in flops as measured)."
        )
    sets = data["meta"].get("sets")
    # The one-cut proof is made at the pair scan's cap (single_cuts.py), so its floor applies there.
    floor = pair_floor(data["rows"], data.get("cut_sets", []), sets["pairs_of"]) if sets and one_cut else None
    if floor is not None:
        lines[-1] += (
            f" At {one_cut['below']} bits below, no tree fits with any one index sliced either (proven), and the pair"
            f" scan puts every plan at {floor[0]:.3f}x or more in contraction cost."
        )
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
