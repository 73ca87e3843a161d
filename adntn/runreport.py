"""``adntn report``: compare training runs in Markdown and a self-contained HTML page."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from adntn.errors import AdntnError


def load_run(path: str | Path) -> dict[str, Any]:
    """A run directory's ``summary.json`` and ``metrics.jsonl``.

    Raises:
        AdntnError: If the directory is not a finished run.
    """
    path = Path(path)
    try:
        summary = json.loads((path / "summary.json").read_text())
        metrics = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise AdntnError(f"{path} is not a finished adntn run (summary.json / metrics.jsonl): {exc}") from None
    return {"name": path.name, "path": str(path), "summary": summary, "metrics": metrics}


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
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
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
            f"| {run['name']} | {c['model']} | {c['dataset']} | {s['epochs_done']} | {s['total_params']} | "
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
    (out / "report.md").write_text(markdown)
    figs = _figures(runs)
    body = "".join(
        f"<h2>{html.escape(k.replace('_', ' '))}</h2><img src='data:image/png;base64,{v}'/>" for k, v in figs.items()
    )
    table = "<pre>" + html.escape(markdown) + "</pre>"
    head = "<!doctype html><html><head><meta charset='utf-8'><title>adntn report</title></head>"
    page = f"{head}<body>{table}{body}</body></html>"
    (out / "report.html").write_text(page)
    return out
