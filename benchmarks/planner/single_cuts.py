"""How far one sliced bond can go: the overhead of slicing each index of a network, one at a time.

Slicing index ``c`` (size ``d``) runs ``d`` contractions of the network with ``c`` fixed, so the best
single-cut plan costs ``d * F(N_c)``, where ``N_c`` is the network with ``c``'s size set to 1 and
``F`` the flops of its best tree; the overhead is ``d * F(N_c) / F(N)``. For each index this plans
``N_c`` with no size cap (a relaxation: a cap can only make a cut dearer) and reports the overhead
against the unsliced plan of the same budget. On a network whose bonds all have size 4, slicing 2 bits
below the unsliced width needs one cut (or a tree of that width with no cut at all), so the smallest
overhead this scan finds is what the 2-bit slicing target has to beat.

Two further parts turn the scan into a floor for every sliced plan:

* ``width_bound.py`` proves (integer programming, exact) that no tree is as narrow as 2 and 4 bits
  below the unsliced width, so every plan for those caps slices at least one index;
* slicing one more index never lowers a plan's contraction cost (each step's product of sizes either
  loses the index and is run ``d`` times, or keeps it), so in that convention every plan costs at
  least its cheapest single cut. Flops add a factor 2 to every step that sums an index, which slicing
  removes only from steps that sum nothing but sliced indices; the scan reports both conventions.

The cheapest cuts are re-planned with a longer budget and several seeds (``--recheck``), since each
scan entry is only as good as its 1 s plan.

Below a cap that no single cut reaches, the same argument goes one level up (``--sets``): a third
proof shows that no tree fits 4 bits below the width with any one index sliced, so every such plan
slices two or more; it costs at least the cheapest pair of cuts planned with no cap, or, when one of
its cuts lies outside the cheapest ``P``, at least that cut alone. The scan plans every pair of the
``P`` cheapest cuts (with and without the cap) and every triple of the ``T`` cheapest (under it), which
also shows how many cuts a plan at that cap needs in practice.

Usage: ``python benchmarks/planner/single_cuts.py [--network mera_closed_32_b4] [--budget 1] [--base-budget 5]
[--recheck 8 --recheck-budget 10 --recheck-seeds 0,1,2] [--prove-depth 3] [--sets 32,12 --sets-below 4]``
Writes ``benchmarks/results/single-cuts.md`` and ``single-cuts.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

import tnplan
from tnplan.examples import FAMILIES

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from harness import check_output_dir, fail, int_list, positive_float, write_atomic  # noqa: E402
from machine import describe  # noqa: E402  (benchmarks/machine.py: one machine description)


def _sets(text: str) -> tuple[int, int]:
    """argparse type: ``"P,T"``, two integers >= 0."""
    values = int_list(0)(text)
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"{text!r} is not P,T (two integers, e.g. 32,12)")
    return values[0], values[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="mera_closed_32_b4", help="a name from tnplan.examples.FAMILIES")
    parser.add_argument("--budget", type=positive_float, default=1.0, help="seconds per cut network")
    parser.add_argument("--base-budget", type=positive_float, default=5.0, help="seconds for the unsliced plan")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recheck", type=int, default=8, help="cheapest cuts to plan again (0: none)")
    parser.add_argument("--recheck-budget", type=positive_float, default=10.0)
    parser.add_argument("--recheck-seeds", type=int_list(0), default=[0, 1, 2])
    parser.add_argument("--prove-depth", type=int, default=3, help="width proof template depth (0: skip)")
    parser.add_argument("--prove-limit", type=float, default=1800.0, help="seconds per width proof")
    parser.add_argument(
        "--sets",
        type=_sets,
        default=(32, 12),
        help="P,T: plan every pair of the P cheapest cuts and every triple of the T cheapest under the"
        " cap --sets-below bits below the unsliced width (0,0: none)",
    )
    parser.add_argument("--sets-below", type=int, default=4)
    parser.add_argument("--sets-budget", type=positive_float, default=1.0, help="seconds per cut set")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if args.network not in FAMILIES:
        fail(f"--network {args.network!r} is not in tnplan.examples.FAMILIES (e.g. mera_closed_32_b4)")
    out = check_output_dir(args.out)
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
        p = tnplan.plan(_cut(net, label), max_time=args.budget, seed=args.seed, cache=False)
        rows.append({"index": str(label), "label": label, "size": d, **_scores(p, d, base)})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "label"}), flush=True)
    rows.sort(key=lambda r: r["overhead"])
    recheck_seeds = args.recheck_seeds
    for r in rows[: args.recheck]:
        # The best of several longer searches; the 1 s entry stays as it was.
        plans = [
            tnplan.plan(_cut(net, r["label"]), max_time=args.recheck_budget, seed=sd, cache=False)
            for sd in recheck_seeds
        ]
        best = min(plans, key=lambda p: p.flops)
        r["recheck"] = _scores(best, r["size"], base)
        print("recheck", r["index"], json.dumps(r["recheck"]), flush=True)
    pairs_of, triples_of = args.sets
    set_bits = round(base.log2_size) - args.sets_below
    cut_sets = [
        *_cut_sets(net, rows, base, 2, pairs_of, set_bits, args.sets_budget, args.seed),
        *_cut_sets(net, rows, base, 3, triples_of, set_bits, args.sets_budget, args.seed),
    ]
    for r in rows:
        del r["label"]
    proofs = []
    if args.prove_depth:
        # The one-cut proof only serves the pair scan's floor: without pairs it would be ~25 min for nothing.
        one_cut_below = args.sets_below if pairs_of >= 2 else None
        proofs = _width_proofs(net, round(base.log2_size), args.prove_depth, args.prove_limit, one_cut_below)
    meta = {
        "network": args.network,
        "tensors": net.num_tensors,
        "unsliced_log10_flops": base.log10_flops,
        "unsliced_log2_size": base.log2_size,
        "base_budget_s": args.base_budget,
        "budget_s": args.budget,
        "seed": args.seed,
        "recheck_budget_s": args.recheck_budget if args.recheck else None,
        "recheck_seeds": recheck_seeds if args.recheck else [],
        "width_proofs": proofs,
        "sets": {"pairs_of": pairs_of, "triples_of": triples_of, "bits": set_bits, "budget_s": args.sets_budget},
        "machine": describe(),
        "date": time.strftime("%Y-%m-%d"),
    }
    floor, cheapest = cheapest_cut(rows, "overhead")
    cost_floor, cheapest_cost = cheapest_cut(rows, "cost_overhead")
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
    ]
    if args.recheck:
        lines += [
            f"The {args.recheck} cheapest cuts planned again with {args.recheck_budget:g} s on seeds"
            f" {args.recheck_seeds} (best of them): smallest flops overhead **{floor:.3f}x** (`{cheapest['index']}`);"
            f" smallest contraction-cost overhead **{cost_floor:.3f}x** (`{cheapest_cost['index']}`).",
        ]
    lines += [
        "",
        "| index | size | log10 flops per slice | log2 size per slice | overhead (flops) |"
        " overhead (contraction cost) | recheck: overhead (flops / cost) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| `{r['index']}` | {r['size']} | {r['log10_flops_per_slice']:.4f} | {r['log2_size_per_slice']:.1f} |"
        f" {r['overhead']:.3f}x | {r['cost_overhead']:.3f}x |"
        + (f" {r['recheck']['overhead']:.3f}x / {r['recheck']['cost_overhead']:.3f}x |" if "recheck" in r else " |")
        for r in rows[:15]
    ]
    if proofs:
        lines += ["", "## Can a plan avoid slicing?", "", "Width lower bounds from `benchmarks/planner/width_bound.py`"
                  " (exact integer programs, scipy HiGHS):", ""]  # fmt: skip
        lines += [
            f"- {p['bits']:g} bits ({p['below']} below the unsliced width): balanced-cut bound"
            f" {p['balanced_cut_bits']:g} bits; nested-split template of depth {p['depth']}: **{p['verdict']}**"
            f" ({p['seconds']:.0f} s)"
            if p["free_cuts"] == 0
            else f"- {p['bits']:g} bits with any one index sliced (the program picks it): nested-split template of"
            f" depth {p['depth']}: **{p['verdict']}** ({p['seconds']:.0f} s)"
            for p in proofs
        ]
        if all(p["verdict"] == "no tree fits" for p in proofs if p["free_cuts"] == 0):
            lines += [
                "",
                "So every plan for these caps slices at least one index. Slicing one more index never lowers a"
                " plan's contraction cost, so in that convention every such plan costs at least"
                f" {cost_floor:.3f}x the unsliced plan, the cheapest"
                " single cut found (as good as the searches behind it). In flops a step that sums only sliced"
                " indices loses its factor 2, so there the single-cut figure"
                f" ({floor:.3f}x) is measured, not proven, as the floor.",
            ]
    if cut_sets:
        two_cuts = any(p["free_cuts"] == 1 and p["verdict"] == "no tree fits" for p in proofs)
        lines += ["", *_cut_sets_section(cut_sets, meta["sets"], args.sets_below, rows, two_cuts)]
    # Both rendered before either is written: a failed rendering replaces nothing.
    write_atomic(out / "single-cuts.json", json.dumps({"meta": meta, "rows": rows, "cut_sets": cut_sets}, indent=1))
    write_atomic(out / "single-cuts.md", "\n".join([*lines, ""]))
    print("\n".join(lines))
    return 0


def _cut_sets(
    net: tnplan.Network, rows: list[dict], base: tnplan.Plan, k: int, among: int, bits: int, budget: float, seed: int
) -> list[dict]:
    """Every ``k``-set of the ``among`` cheapest single cuts, fixed and planned under a ``bits``-bit cap.

    The planner may slice further indices (``extra``) when the set alone does not let a tree fit. A
    pair is also planned with no cap (``floor_*``): what every plan slicing both of its indices costs
    at least, by the same argument as for one cut.
    """
    out = []
    for labels in itertools.combinations([r["label"] for r in rows[:among]], k):
        cut = _cut(net, *labels)
        n = math.prod(net.size_dict[x] for x in labels)
        try:
            p = tnplan.plan(cut, max_time=budget, seed=seed, cache=False, max_size=2**bits)
        except tnplan.PlanError:  # the cap is out of reach even with every other index sliced
            out.append({"cuts": [str(x) for x in labels], "extra": None, "overhead": None, "cost_overhead": None})
            continue
        out.append(
            {
                "cuts": [str(x) for x in labels],
                "extra": [str(x) for x in p.sliced_indices],
                "overhead": n * p.flops / base.flops,
                "cost_overhead": n * p.contraction_cost / base.contraction_cost,
            }
        )
        if k == 2:
            free = tnplan.plan(cut, max_time=budget, seed=seed, cache=False)
            out[-1]["floor_overhead"] = n * free.flops / base.flops
            out[-1]["floor_cost_overhead"] = n * free.contraction_cost / base.contraction_cost
        print(json.dumps(out[-1]), flush=True)
    return sorted(out, key=lambda r: (math.inf if r["overhead"] is None else r["overhead"], r["cuts"]))


def _cut_sets_section(
    cut_sets: list[dict], sets: dict, below: int, rows: list[dict], two_cuts_needed: bool
) -> list[str]:
    """The markdown summary of the cut-set scan: per set size, how many fit alone and the cheapest;
    with ``two_cuts_needed`` (proven), the floor that every plan at the cap pays."""
    lines = [
        f"## Cut sets at {sets['bits']} bits ({below} below the unsliced width)",
        "",
        f"Every pair of the {sets['pairs_of']} cheapest single cuts and every triple of the {sets['triples_of']}"
        f" cheapest, fixed and planned under a {sets['bits']}-bit cap ({sets['budget_s']:g} s each); the"
        " planner slices more indices where the set alone does not let a tree fit. Overhead counts every"
        " slice, against the unsliced plan.",
        "",
        "| set size | sets | fit with no further cut | cheapest (flops) | its cuts | cheapest that fits alone |",
        "|---:|---:|---:|---:|---|---:|",
    ]
    for k in (2, 3):
        group = [r for r in cut_sets if len(r["cuts"]) == k]
        if not group:
            continue
        alone = [r for r in group if r["extra"] == []]
        best = group[0]
        if best["overhead"] is None:
            lines.append(f"| {k} | {len(group)} | 0 | cap out of reach | — | — |")
            continue
        cuts = ", ".join(f"`{x}`" for x in best["cuts"]) + "".join(f" + `{x}`" for x in best["extra"] or [])
        lines.append(
            f"| {k} | {len(group)} | {len(alone)} | {best['overhead']:.3f}x | {cuts} |"
            + (f" {alone[0]['overhead']:.3f}x |" if alone else " — |")
        )
    floor = pair_floor(rows, cut_sets, sets["pairs_of"]) if two_cuts_needed else None
    if floor is not None:
        floor, pair, outside = floor
        found = min((r for r in cut_sets if r["cost_overhead"] is not None), key=lambda r: r["cost_overhead"])
        lines += [
            "",
            f"Every plan at {sets['bits']} bits slices at least two indices (the one-cut proof above). One that"
            f" slices two of the {sets['pairs_of']} cheapest single cuts costs at least that pair with no cap"
            f" (cheapest pair: {pair['floor_cost_overhead']:.3f}x, `{pair['cuts'][0]}` and `{pair['cuts'][1]}`);"
            f" one that slices any other index costs at least that index alone ({outside:.3f}x or more). So"
            f" in contraction cost every {sets['bits']}-bit plan costs at least **{floor:.3f}x** the unsliced"
            f" plan (as good as the searches behind these figures); the cheapest found here costs"
            f" {found['cost_overhead']:.3f}x.",
        ]
    return lines


def pair_floor(rows: list[dict], cut_sets: list[dict], pairs_of: int) -> tuple[float, dict, float] | None:
    """Contraction-cost floor of every plan that slices two or more indices, from the pair scan.

    Such a plan slices either a pair of the ``pairs_of`` cheapest single cuts (it costs at least that
    pair with no cap) or some other index (at least that index alone). Returns the floor, the cheapest
    pair's row and the cheapest other index's overhead, or ``None`` without a complete pair scan.
    """
    pairs = [r for r in cut_sets if len(r["cuts"]) == 2 and "floor_cost_overhead" in r]
    if not pairs or len(pairs) != pairs_of * (pairs_of - 1) // 2 or len(rows) <= pairs_of:
        return None
    outside = min(r["cost_overhead"] for r in rows[pairs_of:])
    pair = min(pairs, key=lambda r: r["floor_cost_overhead"])
    return min(outside, pair["floor_cost_overhead"]), pair, outside


def cheapest_cut(rows: list[dict], key: str) -> tuple[float, dict]:
    """The smallest ``key`` overhead of any cut (its rechecked value where there is one), and its row."""
    row = min(rows, key=lambda r: r.get("recheck", r)[key])
    return row.get("recheck", row)[key], row


def _cut(net: tnplan.Network, *labels) -> tnplan.Network:
    """``net`` with ``labels`` at size 1: one slice of the plan that slices them."""
    return tnplan.Network(net.inputs, net.output, {**net.size_dict, **dict.fromkeys(labels, 1)})


def _scores(p: tnplan.Plan, d: int, base: tnplan.Plan) -> dict:
    return {
        "log10_flops_per_slice": round(p.log10_flops, 4),
        "log2_size_per_slice": round(p.log2_size, 2),
        "overhead": d * p.flops / base.flops,
        "cost_overhead": d * p.contraction_cost / base.contraction_cost,
    }


def _width_proofs(net: tnplan.Network, width: int, depth: int, limit: float, one_cut_below: int | None) -> list[dict]:
    """Whether any tree fits 2 and 4 bits below ``width`` with no slicing, and (unless ``None``)
    ``one_cut_below`` bits below it with any one index sliced (see width_bound.py)."""
    from width_bound import balanced_cut_bits, narrow_tree_possible

    verdicts = {False: "no tree fits", True: "not ruled out", None: "solver ran out of time"}
    balanced = balanced_cut_bits(net)
    proofs = []
    cases = [(2, 0), (4, 0)] + ([(one_cut_below, 1)] if one_cut_below is not None else [])
    for below, free_cuts in cases:
        bits = width - below
        start = time.perf_counter()
        if free_cuts == 0 and balanced > bits:
            verdict = "no tree fits"  # the balanced cut alone rules it out
        else:
            verdict = verdicts[narrow_tree_possible(net, bits, depth=depth, free_cuts=free_cuts, time_limit=limit)]
        proofs.append(
            {"bits": bits, "below": below, "free_cuts": free_cuts, "balanced_cut_bits": round(balanced, 6),
             "depth": depth, "verdict": verdict, "seconds": time.perf_counter() - start}
        )  # fmt: skip
        print(json.dumps(proofs[-1]), flush=True)
    return proofs


if __name__ == "__main__":
    raise SystemExit(main())
