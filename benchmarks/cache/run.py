"""Plan-cache latency: in-process hits, fresh-process hits and the canonical key.

Targets (issue 3): a hit in the same process <= 50 us for networks of <= 200 tensors; a hit from a
fresh process <= 2 ms including decode and verification; the canonical key <= 1 ms for 400 tensors.

Usage::

    python benchmarks/cache/run.py            # writes benchmarks/results/cache.{md,json}
    python benchmarks/cache/run.py --quick    # fewer repetitions (a smoke run) -> cache-quick.* in a temp dir

Every figure is a median over repetitions. "Fresh process" is timed inside a new Python process,
after ``import tnplan`` and loading the network from JSON, around the first ``tnplan.plan`` call:
opening the SQLite file, the key, the query, decoding, mapping and re-scoring the plan.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tnplan
from tnplan.canonical import canonical
from tnplan.examples import lattice_2d, mera, random_regular, scrambled, ttn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import check_output_dir, output_dir, write_report
from machine import describe  # benchmarks/machine.py: one machine description

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "bench" / "instances"

# Every plan is searched and asked for at this budget: the cache answers a request only with a plan
# found with at least the effort it asks for, and a request without max_time asks for more than this.
MAX_TIME = 0.5

HIT_TARGET_US = 50.0
FRESH_TARGET_MS = 2.0
KEY_TARGET_MS = 1.0


def hit_networks() -> dict[str, tnplan.Network]:
    nets = {
        "ttn_16": ttn(16, 4),
        "mera_closed_16": mera(16, 2),
        "lattice_7x7": lattice_2d(7, 7, bond=2),
        "rr_50": random_regular(50, 3, 2, seed=0),
        "ttn_128": ttn(128, 2),
        "rr_100": random_regular(100, 3, 2, seed=0),
        "lattice_10x10": lattice_2d(10, 10, bond=2),
        "rr_200": random_regular(200, 3, 2, seed=0),
    }
    for name in ("cotengra/mps_mpo_L100_chi64_D5.json", "einsum-benchmark/str_nw_mera_closed_120.json"):
        path = SHARED / name
        if path.exists():
            nets[path.stem[:24]] = tnplan.Network.from_json(path)
    return nets


def key_networks() -> dict[str, tnplan.Network]:
    nets = {"rr_400": random_regular(400, 3, 2, seed=0), "lattice_20x20": lattice_2d(20, 20, bond=2)}
    for name in (
        "einsum-benchmark/tensornetwork_permutation_light_415.json",
        "cotengra/sycamore_n53_m20_s0_e0_pABCDCDAB.json",
        "cotengra/cubic_6x6x10.json",
    ):
        path = SHARED / name
        if path.exists():
            nets[path.stem[:24]] = tnplan.Network.from_json(path)
    return nets


def copy(net: tnplan.Network) -> tnplan.Network:
    """A new Network object with nothing cached on it (no key, no memo entry)."""
    return tnplan.Network(net.inputs, net.output, dict(net.size_dict))


def per_call_us(fn, calls: int, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - t) / calls * 1e6)
    return statistics.median(samples)


_FRESH = """
import json, sys, time
import tnplan
net = tnplan.Network.from_json(sys.argv[1])
t = time.perf_counter()
p = tnplan.plan(net, cache=sys.argv[2], max_time=float(sys.argv[3]))
elapsed = time.perf_counter() - t
print(json.dumps({"ms": elapsed * 1e3, "status": p.cache_status, "flops": p.flops,
                  "searched": "tnplan.partition" in sys.modules}))
"""


def fresh_process_ms(
    net_file: Path, cache_file: Path, runs: int, copy_cache: bool = False
) -> tuple[float, list[float], str]:
    times, status = [], ""
    for k in range(runs):
        target = cache_file
        if copy_cache:
            target = cache_file.with_name(f"copy{k}.sqlite")
            shutil.copyfile(cache_file, target)
        out = subprocess.run(
            [sys.executable, "-c", _FRESH, str(net_file), str(target), str(MAX_TIME)],
            capture_output=True,
            text=True,
            check=True,
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        times.append(row["ms"])
        status = row["status"] + (" (searched!)" if row["searched"] else "")
    return statistics.median(times), times, status


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (writes cache-quick.*)")
    ap.add_argument("--out", type=Path, default=None, help="output dir (default benchmarks/results; quick: temp)")
    ap.add_argument("--only", default=None, help="only the networks whose name contains this (needs --quick)")
    args = ap.parse_args(argv)
    if args.only is not None and not args.quick:
        # A subset under the full run's name would replace the committed results with fewer rows.
        ap.error("--only needs --quick (a subset run writes cache-quick.*)")
    out = output_dir(args.out, args.quick, "cache-quick-")
    check_output_dir(out)
    stem = "cache-quick" if args.quick else "cache"
    runs = 3 if args.quick else 11
    rounds = 5 if args.quick else 21
    rows, key_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        cache_file = Path(tmp) / "bench.sqlite"
        for name, original in hit_networks().items():
            if args.only is not None and args.only not in name:
                continue
            net_file = Path(tmp) / f"{name}.json"
            original.to_json(net_file)
            net = tnplan.Network.from_json(net_file)  # the presentation a later process will load
            planned = tnplan.plan(net, cache=cache_file, max_time=MAX_TIME)
            cache = tnplan.PlanCache(cache_file)
            same = copy(net)
            status = tnplan.plan(same, cache=cache, max_time=MAX_TIME).cache_status
            if status != "hit":
                # Timing a search as a hit would be a wrong answer: stop before anything is written.
                print(f"error: {name}: the plan just stored was not a cache hit ({status})", file=sys.stderr)
                return 1
            hit_us = per_call_us(
                lambda same=same, cache=cache: tnplan.plan(same, cache=cache, max_time=MAX_TIME), 200, rounds
            )
            fresh_ms, samples, status = fresh_process_ms(net_file, cache_file, runs)
            # Another caller's presentation (tensors reordered, indices renamed): the canonical key,
            # the stored network and possibly an isomorphism search. A fresh copy of the cache per
            # run, so that the presentation learnt on the first hit does not turn it into the above.
            other_file = Path(tmp) / f"{name}.scrambled.json"
            scrambled(net).to_json(other_file)
            other_ms, _, other_status = fresh_process_ms(other_file, cache_file, runs, copy_cache=True)
            rows.append(
                {
                    "network": name,
                    "tensors": net.num_tensors,
                    "log10_flops": round(planned.log10_flops, 4),
                    "same_process_hit_us": round(hit_us, 2),
                    "fresh_process_hit_ms": round(fresh_ms, 3),
                    "fresh_process_samples_ms": [round(x, 3) for x in samples],
                    "fresh_status": status,
                    "fresh_other_presentation_ms": round(other_ms, 3),
                    "other_status": other_status,
                }
            )
            print(
                f"{name:26s} {net.num_tensors:4d}  same {hit_us:7.2f} us   fresh {fresh_ms:6.3f} ms  {status}"
                f"   other presentation {other_ms:6.3f} ms  {other_status}"
            )
        for name, net in key_networks().items():
            if args.only is not None and args.only not in name:
                continue
            canonical(copy(net))  # warm numpy's code paths once
            samples = []
            for _ in range(rounds):
                fresh = copy(net)
                gc.disable()  # as timeit does: a collection of the benchmark's own garbage is not the key's cost
                t = time.perf_counter()
                canonical(fresh)
                samples.append((time.perf_counter() - t) * 1e3)
                gc.enable()
            ms = statistics.median(samples)
            key_rows.append({"network": name, "tensors": net.num_tensors, "key_ms": round(ms, 3)})
            print(f"key {name:26s} {net.num_tensors:4d}  {ms:6.3f} ms")
    result = {
        "machine": describe(),
        "date": time.strftime("%Y-%m-%d"),
        "targets": {
            "same_process_hit_us": HIT_TARGET_US,
            "fresh_process_hit_ms": FRESH_TARGET_MS,
            "key_ms": KEY_TARGET_MS,
        },
        "hits": rows,
        "keys": key_rows,
    }
    write_report(out, stem, result, markdown)
    print(f"wrote {out / (stem + '.md')}")
    return 0


def markdown(result: dict) -> str:
    def ok(value: float, target: float) -> str:
        return "yes" if value <= target else "**no**"

    lines = [
        "# Plan-cache latency",
        "",
        f"Machine: {result['machine']}; {result['date']}. Medians; produced by `benchmarks/cache/run.py`.",
        "",
        f"## Hits (targets: same process <= {HIT_TARGET_US:g} us, fresh process <= {FRESH_TARGET_MS:g} ms)",
        "",
        "Same process: a new `Network` object equal to the planned one, `tnplan.plan(net, cache=cache)` in a loop "
        "(in-process memo). Fresh process: the first `tnplan.plan` call in a new interpreter, after `import tnplan` "
        "and loading the network file that was planned (open SQLite, find the presentation, decode, map, re-score "
        "on the caller's network). Other presentation: the same network with tensors shuffled and indices renamed, "
        "each run on a fresh copy of the cache (canonical key, stored network, isomorphism when tied, re-score); "
        "no target, shown for reference.",
        "",
        "| network | tensors | same-process hit (us) | <= target | fresh-process hit (ms) | <= target "
        "| fresh, other presentation (ms) |",
        "|---|---:|---:|:---:|---:|:---:|---:|",
    ]
    for r in result["hits"]:
        lines.append(
            f"| {r['network']} | {r['tensors']} | {r['same_process_hit_us']:.1f} | "
            f"{ok(r['same_process_hit_us'], HIT_TARGET_US)} | {r['fresh_process_hit_ms']:.2f} | "
            f"{ok(r['fresh_process_hit_ms'], FRESH_TARGET_MS)} | {r['fresh_other_presentation_ms']:.2f} |"
        )
    lines += [
        "",
        f"## Canonical key (target <= {KEY_TARGET_MS:g} ms at ~400 tensors)",
        "",
        "A new `Network` object each time (nothing cached on it); includes its label maps. Garbage collection "
        "is paused around each timed call, as `timeit` does.",
        "",
        "| network | tensors | key (ms) | <= target |",
        "|---|---:|---:|:---:|",
    ]
    for r in result["keys"]:
        lines.append(f"| {r['network']} | {r['tensors']} | {r['key_ms']:.3f} | {ok(r['key_ms'], KEY_TARGET_MS)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
