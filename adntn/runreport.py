"""``adntn report``: compare training runs in Markdown and a self-contained HTML page."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import numbers
import os
from pathlib import Path
from typing import Any

from adntn.errors import AdntnError

# What the report reads from a run, as ``adntn.train`` writes it: (key, accepted types). ``None`` stands
# for a run stopped before its first epoch ended.
_SUMMARY_KEYS: tuple[tuple[str, tuple[type, ...]], ...] = (
    ("config", (dict,)),
    ("layers", (list,)),
    ("total_params", (int,)),
    ("test_acc", (numbers.Real, type(None))),
    ("best_test_acc", (numbers.Real, type(None))),
    ("epochs_done", (int,)),
    ("wall_time_s", (numbers.Real, type(None))),
    ("planned_networks", (int,)),
    ("plan_searches", (int,)),
)
_CONFIG_KEYS = ("model", "dataset")
_LAYER_KEYS: tuple[tuple[str, tuple[type, ...]], ...] = (
    ("layer", (str,)),
    ("arch", (str,)),
    ("dense_params", (int,)),
    ("generator_params", (int,)),
    ("compression", (numbers.Real,)),
)
_METRIC_KEYS: tuple[tuple[str, tuple[type, ...]], ...] = (("epoch", (int,)), ("test_acc", (numbers.Real,)))


def _problem(record: Any, keys: tuple[tuple[str, tuple[type, ...]], ...]) -> str | None:
    """What is wrong with one JSON record (``None`` when it has every key, each of the right type)."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__} where an object belongs"
    for key, types in keys:
        if key not in record:
            return f"no {key!r}"
        if not isinstance(record[key], types) or isinstance(record[key], bool):
            value = repr(record[key])
            return f"{key!r} is {value if len(value) <= 60 else value[:57] + '...'}"
    return None


def _check_run(summary: Any, metrics: list[Any]) -> str | None:
    """The first thing in a run's files that the report cannot read, or ``None``."""
    problem = _problem(summary, _SUMMARY_KEYS)
    if problem:
        return f"summary.json: {problem}"
    missing = [k for k in _CONFIG_KEYS if k not in summary["config"]]
    if missing:
        return f"summary.json: config has no {missing[0]!r}"
    for k, row in enumerate(summary["layers"], 1):
        problem = _problem(row, _LAYER_KEYS)
        if problem:
            return f"summary.json: layers row {k}: {problem}"
    for k, row in enumerate(metrics, 1):
        problem = _problem(row, _METRIC_KEYS)
        if problem:
            return f"metrics.jsonl line {k}: {problem}"
    return _inconsistency(summary, metrics)


def _inconsistency(summary: dict[str, Any], metrics: list[dict[str, Any]]) -> str | None:
    """Where the run's files, each readable, disagree with each other or hold impossible numbers."""
    for key in ("test_acc", "best_test_acc", "wall_time_s"):
        value = summary[key]
        if value is not None and not (math.isfinite(value) and value >= 0):
            return f"summary.json: {key!r} is {value!r}"
    for k, row in enumerate(summary["layers"], 1):
        if not (math.isfinite(row["compression"]) and row["compression"] > 0):
            return f"summary.json: layers row {k}: 'compression' is {row['compression']!r}"
    for k, row in enumerate(metrics, 1):
        if not math.isfinite(row["test_acc"]):
            return f"metrics.jsonl line {k}: 'test_acc' is {row['test_acc']!r}"
    epochs = summary["config"].get("epochs")
    if isinstance(epochs, int) and summary["epochs_done"] > epochs:
        return f"summary.json: epochs_done {summary['epochs_done']} exceeds the config's {epochs} epochs"
    if summary["epochs_done"] != len(metrics):
        # A write that failed between the two (a full disk) leaves them apart; the checkpoint has both.
        return (
            f"summary.json reports {summary['epochs_done']} epoch(s) but metrics.jsonl holds {len(metrics)}; "
            "`adntn train ... --resume` rewrites both from the checkpoint"
        )
    return None


def load_run(path: str | Path) -> dict[str, Any]:
    """A run directory's ``summary.json`` and ``metrics.jsonl``, checked to hold what the report reads.

    Raises:
        AdntnError: If the directory is not an adntn run, or one of its files is damaged.
    """
    path = Path(path)
    if not (path / "summary.json").exists() and (path / "config.json").is_file():
        raise AdntnError(
            f"{path} has no summary.json: no epoch has finished yet, or an older version (which wrote it at "
            "the end) stopped it; `adntn train ... --resume` writes one"
        )
    try:
        summary = json.loads((path / "summary.json").read_text())
        lines = (path / "metrics.jsonl").read_text().splitlines()
    except (OSError, ValueError) as exc:
        raise AdntnError(f"{path} is not an adntn run: cannot read summary.json / metrics.jsonl: {exc}") from None
    metrics = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                metrics.append(json.loads(line))
            except ValueError as exc:
                raise AdntnError(f"{path} is not an adntn run: metrics.jsonl line {number}: {exc}") from None
    problem = _check_run(summary, metrics)
    if problem:
        raise AdntnError(f"{path} is not an adntn run: {problem}")
    return {"name": path.name, "path": str(path), "summary": summary, "metrics": metrics}


def _names(paths: list[str]) -> list[str]:
    """Each run's name: its fewest trailing folder names that no other run ends with, so that
    ``.../ttn/seed0`` and ``.../mera/seed0`` read ``ttn/seed0`` and ``mera/seed0``, not ``seed0`` twice."""
    parts = [Path(p).resolve().parts for p in paths]
    names: list[str] = []
    for i, mine in enumerate(parts):
        others = [p for j, p in enumerate(parts) if j != i]
        k = 1
        while k < len(mine) and any(o[-k:] == mine[-k:] for o in others):
            k += 1
        name = str(Path(*mine[-k:]))
        names.append(name if name not in names else f"{name} ({names.count(name) + 1})")  # the same folder twice
    return names


def _epochs(summary: dict[str, Any]) -> str:
    """Epochs done, and of how many when the run stopped early (``--stop-after``, a time limit)."""
    done, planned = summary["epochs_done"], summary["config"].get("epochs")
    if isinstance(planned, int) and done < planned:
        return f"{done}/{planned} (partial)"
    return str(done)


def _number(value: float | None, digits: int) -> str:
    """``value`` to ``digits`` decimals, or ``-`` for a run that stopped before its first epoch ended."""
    return "-" if value is None else f"{value:.{digits}f}"


def _max_ratio(run: dict[str, Any]) -> float:
    return max((r["compression"] for r in run["summary"]["layers"]), default=1.0)


def _figures(runs: list[dict[str, Any]]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = {}
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for run in runs:
        if run["summary"]["test_acc"] is not None:  # no epoch finished: no point to plot
            ax.scatter([_max_ratio(run)], [run["summary"]["test_acc"]], label=run["name"])
    ax.set_xscale("log")
    ax.set_xlabel("largest per-layer compression ratio")
    ax.set_ylabel("test accuracy (%)")
    if ax.get_legend_handles_labels()[0]:  # matplotlib warns about a legend without entries
        ax.legend(fontsize=7)
    figs["accuracy_vs_compression"] = fig
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for run in runs:
        ax.plot(
            [m["epoch"] for m in run["metrics"]], [m["test_acc"] for m in run["metrics"]], marker="o", label=run["name"]
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7)
    figs["training_curves"] = fig
    out = {}
    for name, f in figs.items():
        buf = io.BytesIO()
        f.tight_layout()
        f.savefig(buf, format="png", dpi=110)
        plt.close(f)
        out[name] = base64.b64encode(buf.getvalue()).decode()
    return out


def write_report(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Write ``report.md`` and ``report.html`` comparing ``run_dirs`` into ``out``; returns the folder."""
    if not run_dirs:
        raise AdntnError("give at least one run directory")
    runs = [load_run(r) for r in run_dirs]
    for run, name in zip(runs, _names([str(r) for r in run_dirs]), strict=True):
        run["name"] = name
    out = Path(out)
    lines = [
        "# Training runs",
        "",
        "| run | model | dataset | epochs | params | max ratio | test acc | best | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        s = run["summary"]
        c = s["config"]
        lines.append(
            f"| {run['name']} | {c['model']} | {c['dataset']} | {_epochs(s)} | {s['total_params']} | "
            f"{_max_ratio(run):.0f}x | {_number(s['test_acc'], 2)} | {_number(s['best_test_acc'], 2)} | "
            f"{_number(s['wall_time_s'], 1)} |"
        )
    lines += [
        "",
        "## Per-layer",
        "",
        "| run | layer | arch | dense params | generator params | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for run in runs:
        for r in run["summary"]["layers"]:
            lines.append(
                f"| {run['name']} | {r['layer']} | {r['arch']} | {r['dense_params']} | {r['generator_params']} | "
                f"{r['compression']:.1f}x |"
            )
    lines += ["", "## Plan cache", ""]
    for run in runs:
        s = run["summary"]
        lines.append(f"- {run['name']}: {s['planned_networks']} planned networks, {s['plan_searches']} searches")
    markdown = "\n".join(lines) + "\n"
    figs = _figures(runs)
    body = "".join(
        f"<h2>{html.escape(k.replace('_', ' '))}</h2><img src='data:image/png;base64,{v}'/>" for k, v in figs.items()
    )
    table = "<pre>" + html.escape(markdown) + "</pre>"
    head = "<!doctype html><html><head><meta charset='utf-8'><title>adntn report</title></head>"
    page = f"{head}<body>{table}{body}</body></html>"
    # Written only now that both are built, each file replaced whole: a failure above leaves an older
    # report as it was, never a new report.md beside an old report.html.
    out.mkdir(parents=True, exist_ok=True)
    files = {out / "report.md": markdown, out / "report.html": page}
    for path, text in files.items():
        path.with_name(path.name + ".tmp").write_text(text)
    for path in files:
        os.replace(path.with_name(path.name + ".tmp"), path)
    return out
