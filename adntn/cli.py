"""``adntn plan | train | report``: the offline-planning, training and comparison workflow."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adntn.errors import AdntnError
from tnplan.errors import TnplanError


def _config(args: argparse.Namespace):
    from adntn.train import TrainConfig, parse_compress

    overrides = {
        "model": args.model,
        "dataset": args.dataset,
        # --compress "" is an empty rule set: it clears the config file's rules.
        "compress": parse_compress(args.compress) if args.compress is not None else None,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "clip_grad": args.clip_grad,
        "amp": "bf16" if args.amp == "bf16" else None,
        "seed": args.seed,
        "device": args.device,
        "width": args.width,
        "fc_dim": args.fc_dim,
        "train_limit": args.train_limit,
        "data_dir": args.data_dir,
        "cache": args.cache,
        "cache_only": True if args.cache_only else None,
        "threads": args.threads,
    }
    if args.config:
        cfg = TrainConfig.load(args.config, **overrides)
    else:
        cfg = TrainConfig.from_dict({k: v for k, v in overrides.items() if v is not None})
    if args.amp == "off":  # float32 is amp=None, which a None override cannot express
        cfg.amp = None
    return cfg


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="TOML or JSON config (flags override it)")
    p.add_argument("--model", choices=["alexnet", "vgg16"])
    p.add_argument("--dataset", choices=["digits", "fashion-mnist", "mnist", "cifar10"])
    p.add_argument("--compress", help="e.g. fc6=ttn:bond=8,fc7=mera:bond=4 ('' for none: the dense model)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--clip-grad", type=float, help="largest global gradient norm (default: no clipping)")
    p.add_argument("--amp", choices=["bf16", "off"], help="bf16 autocast of each forward pass (default: off)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device")
    p.add_argument("--width", type=float, help="channel multiplier of the convolutions")
    p.add_argument("--fc-dim", type=int, help="width of fc6/fc7 (default 4096)")
    p.add_argument("--train-limit", type=int, help="use only the first N training images (0: all)")
    p.add_argument("--data-dir")
    p.add_argument("--cache", help="plan cache file (default: tnplan's)")
    p.add_argument("--cache-only", action="store_true", help="refuse to plan: every segment must be cached")
    p.add_argument("--threads", type=int)


def build_parser() -> argparse.ArgumentParser:
    """The ``adntn`` command line: ``plan``, ``train`` and ``report``."""
    parser = argparse.ArgumentParser(prog="adntn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_plan = sub.add_parser("plan", help="plan every generator segment of a configuration into the plan cache")
    _add_config_flags(p_plan)
    p_plan.add_argument("--export", help="also export the plan cache to this JSON file")
    p_train = sub.add_parser("train", help="train a (compressed) model with cached plans")
    _add_config_flags(p_train)
    p_train.add_argument("--out", required=True, help="run directory")
    p_train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p_train.add_argument("--quiet", action="store_true")
    p_train.add_argument("--stop-after", type=int, help="stop (resumably) after this many epochs")
    p_report = sub.add_parser("report", help="compare runs: report.md and report.html")
    p_report.add_argument("runs", nargs="+")
    p_report.add_argument("--out", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "plan":
            return _plan(args)
        if args.command == "train":
            from adntn.train import train

            train(_config(args), args.out, resume=args.resume, progress=not args.quiet, stop_after=args.stop_after)
            print(f"run written to {args.out}")
            return 0
        from adntn.runreport import write_report

        out = write_report(args.runs, args.out)
        print(f"report written to {out / 'report.md'} and {out / 'report.html'}")
        return 0
    except KeyboardInterrupt:
        hint = "; --resume continues from the last finished epoch" if args.command == "train" else ""
        print(f"adntn: interrupted{hint}", file=sys.stderr)
        return 130
    except BrokenPipeError as exc:
        from tnplan.cli import stdout_reader_gone

        if not stdout_reader_gone():  # a pipe other than stdout (a download, a worker): an error
            print(f"adntn: error: {exc}", file=sys.stderr)
            return 2
        return 0
    except (AdntnError, TnplanError, ValueError, OSError) as exc:
        print(f"adntn: error: {exc}", file=sys.stderr)
        return 2


def _plan(args: argparse.Namespace) -> int:
    import tnplan
    from adntn.train import build

    cfg = _config(args)
    classes, channels = 10, (3 if cfg.dataset == "cifar10" else 1)
    _, report, log = build(cfg, channels, classes)
    for r in log:
        print(f"{r['layer']:>8} {r['network']:<28} tensors={r['tensors']:<3} flops={r['flops']:<12} cache={r['cache']}")
    print(report.to_markdown())
    searches = sum(r["cache"] == "miss" for r in log)
    print(f"{len(log)} networks, {searches} planned now, {len(log) - searches} from the cache or enumerated")
    if args.export:
        cache = tnplan.PlanCache(cfg.cache) if cfg.cache else tnplan.PlanCache()
        n = cache.export(Path(args.export))
        print(f"exported {n} plan(s) to {args.export}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
