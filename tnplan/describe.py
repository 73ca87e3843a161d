"""Readable tables of plans, shared by :meth:`Plan.describe` and the command line."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from fractions import Fraction
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tnplan.plan import Plan


def _fmt_labels(labels: list[object], limit: int = 24) -> str:
    text = ",".join(str(x) for x in labels)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summary_lines(plan: Plan) -> list[str]:
    """The headline numbers of a plan, one ``name: value`` per line."""
    net = plan.network
    sliced = ", ".join(str(x) for x in plan.sliced_indices) or "none"
    return [
        f"  tensors: {net.num_tensors}   indices: {net.num_indices}   open: {len(net.output)}",
        f"  objective: {plan.minimize}   method: {plan.method}   optimal: {plan.optimal}",
        f"  flops: {_sci(plan.flops, 4)} (log10 {plan.log10_flops:.4f})   "
        f"contraction cost: {_sci(plan.contraction_cost, 4)}",
        f"  largest intermediate: {_sci(plan.peak_size, 4)} elements (log2 {plan.log2_size:.2f})   "
        f"write: {_sci(plan.write, 4)}",
        f"  peak memory: {_mib(plan.peak_memory())} MiB ({plan.dtype})",
        f"  sliced: {sliced}   slices: {plan.n_slices}   overhead: {plan.slicing_overhead:.3f}x",
        f"  planning time: {plan.planning_time:.4f} s   plan cache: {plan.cache_status}",
    ]


def step_rows(plan: Plan) -> list[tuple[str, ...]]:
    """One row per pairwise step: step, operands, contracted indices, result, scaling, flops, size."""
    labels = plan.network.labels
    rows: list[tuple[str, ...]] = []
    total = plan.costs.flops  # every slice's: a step's share is its flops times the slices over it
    for k, st in enumerate(plan.costs.steps):
        involved = set(st.legs_left) | set(st.legs_right)
        rows.append(
            (
                str(k),
                f"{st.left},{st.right}->{st.result}",
                _fmt_labels([labels[i] for i in st.summed]) or "-",
                _fmt_labels([labels[i] for i in st.legs_out]) or "scalar",
                str(len(involved)),
                _sci(st.flops * plan.n_slices, 3),
                f"{100 * st.flops * plan.n_slices / total:.1f}" if total else "0.0",
                _sci(st.size, 3),
            )
        )
    return rows


def _sci(count: float, digits: int) -> str:
    """``count`` in scientific notation, exact integers past the largest float (10^308) too."""
    try:
        return format(float(count), f".{digits}e")
    except OverflowError:
        return format(Decimal(count), f".{digits}e")


def _mib(nbytes: int) -> str:
    mib = Fraction(nbytes, 2**20)
    return f"{float(mib):.3f}" if mib < 2**1000 else _sci(round(mib), 3)


def render_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    """Left-aligned fixed-width text table."""
    widths = [max(len(h), *(len(r[c]) for r in rows)) if rows else len(h) for c, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def _md_cell(text: str) -> str:
    # A pipe would end the cell and a newline the row; Markdown has no other structural characters here.
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def render_markdown_table(
    header: tuple[str, ...], rows: Sequence[tuple[str, ...]], align: tuple[str, ...] | None = None
) -> str:
    """A GitHub-flavoured Markdown table of the same header and rows :func:`render_table` takes.

    Args:
        header: Column titles.
        rows: One tuple of cell strings per row, as long as ``header``.
        align: Per column ``"l"``, ``"r"`` or ``"c"`` (default: all left).

    Raises:
        ValueError: If a row or ``align`` does not have one entry per column.
    """
    align = align or ("l",) * len(header)
    rules = {"l": ":--", "r": "--:", "c": ":-:"}
    if len(align) != len(header) or any(a not in rules for a in align):
        raise ValueError(f"align needs one of 'l', 'r', 'c' per column ({len(header)}), got {align!r}")
    lines = [
        "| " + " | ".join(_md_cell(h) for h in header) + " |",
        "| " + " | ".join(rules[a] for a in align) + " |",
    ]
    for k, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"row {k} has {len(row)} cells for {len(header)} columns")
        lines.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
    return "\n".join(lines)


def describe_plan(plan: Plan, max_steps: int = 60) -> str:
    """The summary plus the per-step table (the most expensive ``max_steps`` steps when longer)."""
    header = ("step", "tensors", "summed", "result indices", "scaling", "flops", "% flops", "size")
    rows = step_rows(plan)
    note = ""
    if len(rows) > max_steps:
        keep = sorted(range(len(rows)), key=lambda k: -plan.costs.steps[k].flops)[:max_steps]
        rows = [rows[k] for k in sorted(keep)]
        note = f"\n  ({max_steps} most expensive of {len(plan.costs.steps)} steps shown)"
    head = "Contraction plan\n" + "\n".join(summary_lines(plan))
    return head + "\n\n" + render_table(header, rows) + note
