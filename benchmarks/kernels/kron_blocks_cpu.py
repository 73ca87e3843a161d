"""When do the Kronecker sum's CPU blocks pay? The blocked route against the einsum route, batch by batch.

:func:`kernels.kronsum_cpu.kron_rows` runs ``Y_b = Σ_r A_r X_b B_rᵀ`` in cache-sized blocks of rows,
recomputing each block's intermediate in the backward, unless the whole batch's intermediate fits
:data:`kernels.kronsum_cpu.MIN_BLOCKED_BYTES` (then the einsum route, :func:`kernels.kronsum.reference`).
This measures both routes on the same operands, forced through that threshold (``-1``: blocks wherever
:func:`kernels.kronsum_cpu.plan_mirror` allows them; past any batch: the einsum route), taking turns call
by call, one thread, float32: a ``TNLinear(width, width, mode="kron")`` training step through the torch
route (x needing its gradient) for four generators, and the bare op on a small factor shape. Median milliseconds; "rule"
is the route the default threshold takes, "rule's cost" its time over the faster route's.

    .venv/bin/python benchmarks/kernels/kron_blocks_cpu.py          # -> benchmarks/results/kernels-kron-blocks-cpu.*
    .venv/bin/python benchmarks/kernels/kron_blocks_cpu.py --quick  # width 512, two batches: a temp dir
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for _p in (HERE.parent, REPO):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from harness import width_cli, write_report  # noqa: E402

LAYERS = [("ttn", 2), ("ttn", 13), ("attn", 2), ("mera", 2)]
LAYER_ROWS = (1, 8, 32, 64, 256)
# (R, M, P, N, Q) and batches: narrow factors (640 elements a row), and 16-wide ones (4 KiB of
# intermediate a row: 1 MiB at 256 rows, the core's 2 MiB L2 at 512)
OP_CASES = (((2, 8, 40, 8, 2), (1, 64, 1024, 4096)), ((4, 16, 16, 16, 16), (64, 256, 512, 1024, 2048)))
ROUTES = {"blocked": -1, "einsum": 1 << 62}  # MIN_BLOCKED_BYTES forcing each


def _pairs(rows: int) -> int:
    return 31 if rows <= 64 else 11


def _time_routes(step: Callable[[], None], pairs: int) -> tuple[dict[str, float], dict[str, int]]:
    """Median ms of ``step`` per route, and how many blocked forwards each route's warm-up step ran
    (so a forcing that failed to force shows in the results)."""
    import kernels.kronsum_cpu as kc

    default, forward = kc.MIN_BLOCKED_BYTES, kc._forward
    times: dict[str, list[float]] = {name: [] for name in ROUTES}
    blocked = dict.fromkeys(ROUTES, 0)
    try:
        for name, threshold in ROUTES.items():  # warm both, counting the blocks' forwards

            def counted(*args: Any, _name: str = name) -> Any:
                blocked[_name] += 1
                return forward(*args)

            kc.MIN_BLOCKED_BYTES, kc._forward = threshold, counted
            step()
            kc._forward = forward
        for _ in range(pairs):
            for name, threshold in ROUTES.items():
                kc.MIN_BLOCKED_BYTES = threshold
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
    finally:
        kc.MIN_BLOCKED_BYTES, kc._forward = default, forward
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}, blocked


def _row(kind: str, config: str, rows: int, shape: tuple[int, ...], itemsize: int, timed: tuple) -> dict:
    import kernels.kronsum_cpu as kc

    ms, blocked_forwards = timed
    r, m, p, n, q = shape
    mirror = kc.plan_mirror(p, q, m, n, r, itemsize)
    inter = kc.batch_bytes(rows, p, q, m, n, r, itemsize, bool(mirror))
    rule = "einsum" if kc.plan_blocks(rows, p, q, m, n, r, itemsize) is None else "blocked"
    faster = min(ms, key=ms.__getitem__)
    return {
        "kind": kind, "config": config, "rows": rows, "shape": list(shape), "mirror": mirror,
        "intermediate_mib": inter / 2**20, "ms": ms, "faster": faster, "rule": rule,
        "rule_cost": ms[rule] / ms[faster], "blocked_speedup": ms["einsum"] / ms["blocked"],
        "blocked_forwards": blocked_forwards,
    }  # fmt: skip


def measure_layer(arch: str, bond: int, width: int, rows: int) -> dict[str, Any]:
    import torch

    import adntn

    torch.manual_seed(0)
    layer = adntn.TNLinear(width, width, arch, bond, mode="kron")
    x = torch.randn(rows, width, requires_grad=True)

    def step() -> None:
        layer.zero_grad()
        x.grad = None
        # The torch route, the one a layer takes on the CPU (under TRITON_INTERPRET=1, as in the tests,
        # backend="auto" would interpret the Triton kernels instead).
        (layer.generator.stream_kron(x, backend="torch") + layer.bias).sum().backward()

    split = layer.generator.kron
    m, p, n, q = split.shape
    return _row("layer", f"{arch} χ={bond}", rows, (split.rank, m, p, n, q), 4, _time_routes(step, _pairs(rows)))


def measure_op(shape: tuple[int, int, int, int, int], rows: int) -> dict[str, Any]:
    import torch

    from kernels.kronsum_cpu import kron_rows

    r, m, p, n, q = shape
    g = torch.Generator().manual_seed(rows)
    x, a, b = (torch.randn(s, generator=g).requires_grad_() for s in ((rows, p, q), (r, m, p), (r, n, q)))
    dy = torch.randn(rows, m, n, generator=g)

    def step() -> None:
        torch.autograd.grad(kron_rows(x, a, b), (x, a, b), dy)

    return _row("op", "op", rows, shape, 4, _time_routes(step, _pairs(rows)))


def markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    good = sum(r["rule"] == r["faster"] for r in rows)
    worst = max(rows, key=lambda r: r["rule_cost"])
    # Before the threshold the route blocked wherever plan_mirror allowed (every case here).
    always = [r["ms"]["blocked"] / r["ms"][r["faster"]] for r in rows]
    lines = [
        "# The Kronecker sum's CPU blocks against the einsum route",
        "",
        f"Machine: {result['machine']}; torch {result['torch']}, 1 thread, float32; {result['date']}. Produced by "
        "`benchmarks/kernels/kron_blocks_cpu.py`. Both routes on the same operands, taking turns call by call "
        "(forced through `kernels.kronsum_cpu.MIN_BLOCKED_BYTES`); median ms of 31 steps per route at <= 64 rows, "
        f'11 above. Layer: `TNLinear({result["width"]}, {result["width"]}, mode="kron")` training step through the '
        "torch route, x needing its gradient; op: `kron_rows` forward and the gradients of x, A and B. "
        "Shape (R, M, P, N, Q); intermediate: the whole batch's, in the frame the blocks start from. "
        f"Rule: the route the default threshold ({result['min_blocked_bytes'] / 2**20:g} MiB) takes; its cost: "
        "its time over the faster route's.",
        "",
        f"**The rule took the faster route in {good} of {len(rows)} cases; its worst cost {worst['rule_cost']:.2f}x "
        f"({worst['config']}, a batch of {worst['rows']}).** Blocking every batch (the route before the threshold): "
        f"the faster route in {sum(r['faster'] == 'blocked' for r in rows)}, worst cost {max(always):.2f}x.",
        "",
        "| case | shape | rows | intermediate MiB | blocked ms | einsum ms | einsum / blocked | faster | rule | "
        "rule's cost |",
        "|---|---|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {tuple(r['shape'])} | {r['rows']} | {r['intermediate_mib']:.3f} | "
            f"{r['ms']['blocked']:.3f} | {r['ms']['einsum']:.3f} | {r['blocked_speedup']:.2f}x | {r['faster']} | "
            f"{r['rule']} | {r['rule_cost']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parsed = width_cli(__doc__, "kernels-kron-blocks-cpu", "width 512, batches 1 and 64 (smoke test)", markdown, argv)
    if parsed is None:
        return 0
    args, results, name = parsed
    import torch
    from machine import describe

    import kernels.kronsum_cpu as kc

    torch.set_num_threads(1)
    layer_rows, ops = ((1, 64), OP_CASES[:1]) if args.quick else (LAYER_ROWS, OP_CASES)
    width = args.width
    result: dict[str, Any] = {"machine": describe(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                              "width": width, "min_blocked_bytes": kc.MIN_BLOCKED_BYTES, "rows": []}  # fmt: skip
    cases = [(measure_layer, (arch, bond, width, rows)) for arch, bond in LAYERS for rows in layer_rows]
    cases += [(measure_op, (shape, rows)) for shape, batches in ops for rows in batches[: 2 if args.quick else None]]
    result["rows"] = [_logged(fn(*fn_args)) for fn, fn_args in cases]
    # Written once, complete: an interrupted run leaves the committed results as they were.
    write_report(results, name, result, markdown)
    return 0


def _logged(row: dict[str, Any]) -> dict[str, Any]:
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    raise SystemExit(main())
