"""The ``tnplan`` command line: ``tnplan plan`` and ``tnplan compare``.

Bad input (a missing file, malformed JSON, an invalid network or option) prints one line to
stderr and exits with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from tnplan.errors import TnplanError
from tnplan.network import Network

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _positive_int(text: str) -> int:
    try:
        value = int(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _parse_shapes(text: str) -> list[tuple[int, ...]]:
    """``"2x3,3x4"`` -> ``[(2, 3), (3, 4)]``; an empty item is a scalar."""
    shapes = []
    for item in text.split(","):
        item = item.strip()
        try:
            shapes.append(tuple(int(x) for x in item.split("x")) if item else ())
        except ValueError:
            raise TnplanError(f"--shapes item {item!r} is not of the form 2x3x4") from None
    return shapes


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tnplan", description="Contraction-order planning for tensor networks.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("plan", help="plan one network and print the plan")
    p.add_argument("file", nargs="?", help="network JSON (einsum-benchmark, cotengra or tnplan format)")
    p.add_argument("--eq", help='einsum equation instead of a file, e.g. "ab,bc->ac"')
    p.add_argument("--shapes", help="operand shapes for --eq, e.g. 2x3,3x4")
    p.add_argument("--minimize", default="flops", choices=("flops", "size", "write", "combo"))
    p.add_argument("--memory-limit", type=_positive_int, help="bytes that may be alive at once; slices to fit")
    p.add_argument("--max-size", type=_positive_int, help="largest intermediate per slice, in elements")
    p.add_argument("--dtype", default="float64", help="element type for memory figures (default float64)")
    p.add_argument("--max-time", type=_positive_float, help="seconds to search (default: scales with the network)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--save", help="also write the plan (with its network) to this JSON file")

    c = sub.add_parser("compare", help="plan networks with tnplan and anchor planners side by side")
    c.add_argument("paths", nargs="+", help="network JSON files or folders of them")
    c.add_argument("--methods", default="tnplan,oe-greedy,ctg-default", help="comma-separated method names")
    c.add_argument("--max-time", type=_positive_float, default=1.0, help="time budget per planner (default 1 s)")
    c.add_argument("--seed", type=int, default=0)
    return parser


def _load_network(args: argparse.Namespace) -> Network:
    if args.eq is not None:
        if args.file is not None:
            raise TnplanError("give either a FILE or --eq, not both")
        if args.shapes is None:
            raise TnplanError("--eq needs --shapes, e.g. --shapes 2x3,3x4")
        return Network.from_einsum(args.eq, *_parse_shapes(args.shapes))
    if args.file is None:
        raise TnplanError("give a network FILE or --eq with --shapes")
    return Network.from_json(args.file)


def _cmd_plan(args: argparse.Namespace) -> int:
    from tnplan.planner import plan

    network = _load_network(args)
    result = plan(
        network,
        minimize=args.minimize,
        memory_limit=args.memory_limit,
        max_size=args.max_size,
        dtype=args.dtype,
        max_time=args.max_time,
        seed=args.seed,
    )
    if args.save:
        result.to_json(args.save)
    if args.json:
        print(json.dumps(result.summary(), ensure_ascii=False))
    else:
        print(result.describe())
    return 0


def _network_files(paths: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            files.extend(sorted(path.rglob("*.json")))
        elif path.exists():
            files.append(path)
        else:
            raise TnplanError(f"{path}: no such file or folder")
    if not files:
        raise TnplanError("no network JSON files found in the given paths")
    return files


def _cmd_compare(args: argparse.Namespace) -> int:
    from tnplan.anchors import METHODS, run_method
    from tnplan.describe import render_table

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise TnplanError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    rows = []
    for file in _network_files(args.paths):
        network = Network.from_json(file)
        results = {}
        for m in methods:
            try:
                results[m] = run_method(m, network, max_time=args.max_time, seed=args.seed)
            except Exception as exc:  # an anchor failing on one network must not stop the comparison
                print(f"tnplan: {file.name}: {m} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        best = min((r.log10_flops for r in results.values()), default=0.0)
        row = [file.stem[:36], str(network.num_tensors)]
        for m in methods:
            r = results.get(m)
            row.append(
                "failed" if r is None else f"{r.log10_flops:.3f} (+{r.log10_flops - best:.3f}) {r.planning_time:.2f}s"
            )
        rows.append(tuple(row))
        print(f"planned {file.name}", file=sys.stderr)
    header = ("network", "tensors", *(f"{m}: log10 flops (excess) time" for m in methods))
    print(render_table(header, rows))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tnplan`` script."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "plan":
            return _cmd_plan(args)
        return _cmd_compare(args)
    except TnplanError as exc:
        print(f"tnplan: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"tnplan: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
