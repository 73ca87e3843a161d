"""The ``tnplan`` command line: ``tnplan plan``, ``tnplan cache``, ``tnplan report`` and ``tnplan compare``.

Bad input (a missing file, malformed JSON, an invalid network or option) prints one line to
stderr and exits with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
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
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


MAX_WORKERS = 1024  # one search task each: more only queue (a typo such as 1e9 would hang building them)


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of workers, got {text!r}") from None
    if not 1 <= value <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"expected 1 to {MAX_WORKERS} workers, got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not 0 < value < math.inf:
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
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--save", help="also write the plan (with its network) to this JSON file")
    p.add_argument("--workers", type=_workers, default=1, help="independent search processes (default 1)")
    p.add_argument("--executor", help="where workers run: local (default) or dask://HOST:PORT")
    _add_cache_arguments(p)
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the plan cache")
    p.add_argument("--cache-only", action="store_true", help="never search: use the cached plan or fail")
    p.add_argument("--refine", action="store_true", help="search again from the cached plan; keep the better")

    c = sub.add_parser("compare", help="plan networks with tnplan and anchor planners side by side")
    c.add_argument("paths", nargs="+", help="network JSON files or folders of them")
    c.add_argument("--methods", default="tnplan,oe-greedy,ctg-default", help="comma-separated method names")
    c.add_argument("--max-time", type=_positive_float, default=1.0, help="time budget per planner (default 1 s)")
    c.add_argument("--seed", type=_seed, default=0)

    from tnplan import report

    report.add_parser(sub)

    k = sub.add_parser("cache", help="inspect and move the plan cache")
    ks = k.add_subparsers(dest="action", required=True, parser_class=_Parser)
    for name, text in (("ls", "list stored plans"), ("stats", "file, plan and hit counts"), ("clear", "delete all")):
        _add_cache_arguments(ks.add_parser(name, help=text))
    show = ks.add_parser("show", help="describe one stored plan")
    show.add_argument("key", help="a key, or a unique prefix of one, from `tnplan cache ls`")
    _add_cache_arguments(show)
    exp = ks.add_parser("export", help="write every stored plan to a JSON file")
    exp.add_argument("file")
    _add_cache_arguments(exp)
    imp = ks.add_parser("import", help="merge plans from an export file (a better plan wins)")
    imp.add_argument("file")
    _add_cache_arguments(imp)
    return parser


def _add_cache_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", metavar="FILE", help="plan cache file (default: $TNPLAN_CACHE_DIR/plans.sqlite)")


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
    if args.no_cache and (args.cache or args.cache_only or args.refine):
        raise TnplanError("--no-cache cannot be combined with --cache, --cache-only or --refine")
    result = plan(
        network,
        minimize=args.minimize,
        memory_limit=args.memory_limit,
        max_size=args.max_size,
        dtype=args.dtype,
        max_time=args.max_time,
        seed=args.seed,
        cache=False if args.no_cache else (args.cache or True),
        cache_only=args.cache_only,
        refine=args.refine,
        workers=args.workers,
        executor=args.executor,
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
    from tnplan.anchors import METHODS, run_method, skipped
    from tnplan.describe import render_table

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise TnplanError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if "tnplan" in methods:
        from tnplan.optimal import kernel_ready

        kernel_ready()  # loading numba once is no search: the first network's time must not carry it
    rows = []
    for file in _network_files(args.paths):
        network = Network.from_json(file)
        results = {}
        reasons = {m: skipped(m, network) for m in methods}
        for m in methods:
            if reasons[m] is not None:
                continue
            try:
                results[m] = run_method(m, network, max_time=args.max_time, seed=args.seed)
            except Exception as exc:  # an anchor failing on one network must not stop the comparison
                print(f"tnplan: {file.name}: {m} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        best = min((r.log10_flops for r in results.values()), default=0.0)
        row = [file.stem[:36], str(network.num_tensors)]
        for m in methods:
            r = results.get(m)
            if r is None:
                row.append("skipped" if reasons[m] is not None else "failed")
            else:
                row.append(f"{r.log10_flops:.3f} (+{r.log10_flops - best:.3f}) {r.planning_time:.2f}s")
        rows.append(tuple(row))
        print(f"planned {file.name}", file=sys.stderr)
    header = ("network", "tensors", *(f"{m}: log10 flops (excess) time" for m in methods))
    print(render_table(header, rows))
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    from tnplan.cache import PlanCache
    from tnplan.describe import render_table

    cache = PlanCache(args.cache) if args.cache else PlanCache()
    if args.action == "ls":
        rows = [
            (
                e.key[:12],
                str(e.tensors),
                e.options,
                f"{e.log10_flops:.4f}",
                e.method + (" (optimal)" if e.optimal else ""),
                f"{e.effort:g}",
                str(e.hits),
                time.strftime("%Y-%m-%d %H:%M", time.localtime(e.updated)),
            )
            for e in cache.entries()
        ]
        header = ("key", "tensors", "options", "log10 flops", "method", "effort s", "hits", "updated")
        print(render_table(header, rows))
        print(f"{len(rows)} plan(s) in {cache.path}")
    elif args.action == "show":
        found = cache.find(args.key)
        if not found:
            raise TnplanError(f"no cached plan has a key starting with {args.key!r}; see `tnplan cache ls`")
        if len({e.key for e in found}) > 1:
            raise TnplanError(f"key prefix {args.key!r} is ambiguous ({len(found)} plans); give more characters")
        for e in found:
            print(f"key: {e.key}\noptions: {e.options}\neffort: {e.effort:g} s   hits: {e.hits}")
            print(cache.load(e).describe())
    elif args.action == "stats":
        for name, value in cache.stats().items():
            print(f"{name}: {value}")
    elif args.action == "clear":
        print(f"deleted {cache.clear()} plan(s) from {cache.path}")
    elif args.action == "export":
        print(f"exported {cache.export(args.file)} plan(s) to {args.file}")
    else:
        counts = cache.import_(args.file)
        print(
            f"imported {args.file} into {cache.path}: {counts['added']} added or improved, "
            f"{counts['kept']} already as good, {counts['skipped']} skipped"
        )
    return 0


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"tnplan: warning: {message}", file=sys.stderr)


def stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has left (`tnplan cache ls | head`); if so, stdout is
    pointed at /dev/null so that the command can end quietly, as cat does (Python would otherwise
    report the pipe again while flushing stdout at exit). Any other broken pipe is an error."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        gone = any(event & select.POLLERR for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or stdout is not a file
        return False
    if gone:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return gone


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tnplan`` script."""
    args = build_parser().parse_args(argv)
    # Cache repairs and similar notices: one line each, not a source excerpt.
    previous, warnings.showwarning = warnings.showwarning, _one_line_warning
    try:
        if args.command == "plan":
            return _cmd_plan(args)
        if args.command == "cache":
            return _cmd_cache(args)
        if args.command == "report":
            from tnplan import report

            return report.run(args)
        return _cmd_compare(args)
    except TnplanError as exc:
        print(f"tnplan: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError as exc:
        if not stdout_reader_gone():
            print(f"tnplan: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        return 0
    except OSError as exc:
        print(f"tnplan: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        warnings.showwarning = previous


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
