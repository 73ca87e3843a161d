"""Aggregate planner.json rows and render planner.md: machine header, one table per budget, target checks.

Everything here is computed from the JSON alone, so ``run.py --report-only`` can re-render at any time.
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from planners import BUDGETED, METHODS

OPT_MAX_TENSORS = 26  # target 1: networks this small must be proven optimal ...
OPT_MAX_TIME_S = 0.5  # ... with median planning time at most this
REF_BUDGET = 5.0  # target 2: budget at which tnplan must meet the einsum-benchmark reference
REF_TOL = 1e-9  # target 2: log10 slack (the reference is re-scored with the same scorer, so none is needed)
CTG_WORSE_TOL = 0.01  # target 3: tnplan may never be worse than ctg-default by more than this (log10)
STRICT_BETTER = 1e-4  # target 3: "strictly better" means lower by more than this (log10)
BIG_TENSORS = 30  # target 3: ... on at least half of the networks with more than this many tensors
CTG_BUDGETS = (1.0, 5.0)  # target 3 budgets
NEAR_BEST_TOL = 0.005  # target 4: within this of the best any method found
NEAR_BEST_BUDGET = 1.0
REGULAR_SIZES = frozenset({40, 60})  # target 4: 3-regular graphs with this many nodes
MERA_SITES = frozenset({16, 32})  # target 4: MERA with this many sites
OVERRUN_FACTOR = 1.5  # a budgeted run slower than this x budget + slack is listed as an overrun
OVERRUN_SLACK_S = 0.25
BEST_TIE = 1e-9  # values within this of the row's best are bold


@dataclass
class Cell:
    """The median over seeds of one (instance, method, budget)."""

    status: str  # ok | timeout | skipped | error | partial (some seeds ok) | missing
    log10: float | None = None
    log2: float | None = None
    time_s: float | None = None
    n_ok: int = 0
    n: int = 0
    all_optimal: bool | None = None
    note: str = ""


class Results:
    """Indexed view of planner.json."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.meta: dict[str, Any] = data.get("meta") or {}
        self.instances: dict[str, dict[str, Any]] = data.get("instances") or {}
        self.rows: list[dict[str, Any]] = data.get("rows") or []
        present = {r["method"] for r in self.rows}
        self.methods = [m for m in METHODS if m in present]
        self.budgets = sorted({float(r["budget"]) for r in self.rows if r["budget"] is not None})
        names = list(dict.fromkeys(r["instance"] for r in self.rows))
        for name in names:
            self.instances.setdefault(name, {"suite": "?", "n_tensors": self._n(name)})
        order = {"einsum-benchmark": 0, "cotengra": 1, "generated": 2}
        self.names = sorted(names, key=lambda n: (order.get(self.instances[n].get("suite"), 3), n))
        self._by: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for r in self.rows:
            self._by[(r["instance"], r["method"])].append(r)
        self.best: dict[str, float] = {}
        for r in self.rows:
            if r["status"] == "ok":
                cur = self.best.get(r["instance"])
                if cur is None or r["log10_flops"] < cur:
                    self.best[r["instance"]] = r["log10_flops"]

    def _n(self, name: str) -> int:
        return next((r["n_tensors"] for r in self.rows if r["instance"] == name), 0)

    def rows_for(self, name: str, method: str, budget: float) -> list[dict[str, Any]]:
        rows = self._by.get((name, method), [])
        if method in BUDGETED:
            return [r for r in rows if r["budget"] is not None and float(r["budget"]) == budget]
        return rows

    def cell(self, name: str, method: str, budget: float) -> Cell:
        rows = self.rows_for(name, method, budget)
        if not rows:
            return Cell("missing")
        ok = [r for r in rows if r["status"] == "ok"]
        if not ok:
            statuses = sorted({r["status"] for r in rows})
            note = next((r["error"] for r in rows if r.get("error")), "") or ""
            times = [r["planning_time_s"] for r in rows if r["planning_time_s"] is not None]
            return Cell("/".join(statuses), n=len(rows), time_s=_median(times), note=note)
        opts = [r["optimal"] for r in rows]
        return Cell(
            "ok" if len(ok) == len(rows) else "partial",
            log10=_median(r["log10_flops"] for r in ok),
            log2=_median(r["log2_size"] for r in ok),
            time_s=_median(r["planning_time_s"] for r in ok),
            n_ok=len(ok),
            n=len(rows),
            all_optimal=None if any(o is None for o in opts) else all(opts),
        )

    def excess(self, name: str, cell: Cell) -> float | None:
        if cell.log10 is None or name not in self.best:
            return None
        return cell.log10 - self.best[name]


def _median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _fmt_time(t: float | None) -> str:
    if t is None:
        return "-"
    return f"{t:.3f}s" if t < 10 else f"{t:.1f}s"


def _fmt_cell(res: Results, name: str, cell: Cell, row_best: float | None) -> str:
    if cell.log10 is None:
        return cell.status if cell.status != "missing" else "–"
    flops = f"{cell.log10:.4f}"
    if row_best is not None and cell.log10 <= row_best + BEST_TIE:
        flops = f"**{flops}**"
    exc = res.excess(name, cell)
    text = f"{flops} / {cell.log2:.1f} / {_fmt_time(cell.time_s)} / +{exc:.4f}"
    if cell.all_optimal:
        text += " opt"
    if cell.status == "partial":
        text += f" [{cell.n_ok}/{cell.n} ok]"
    return text


# ---------------------------------------------------------------------------------------------- markdown


def render(data: dict[str, Any]) -> str:
    res = Results(data)
    out = [*_header(res)]
    for budget in res.budgets or [0.0]:
        out += _budget_table(res, budget)
        out += _summary_table(res, budget)
    out += _overruns(res)
    out += _failures(res)
    out += ["", render_targets(data, res), ""]
    return "\n".join(out)


def _header(res: Results) -> list[str]:
    m = res.meta
    pk = m.get("packages", {})
    runs = m.get("runs", [])
    dates = ", ".join(
        f"{r.get('date')} (`{' '.join(r.get('argv', [])) or 'defaults'}`"
        + (f", tnplan at {r['tnplan_git']}" if r.get("tnplan_git") else "")
        + ")"
        for r in runs
    )
    return [
        "# Planner benchmark: tnplan vs opt_einsum and cotengra",
        "",
        f"- Machine: {m.get('cpu_model')} — `os.cpu_count()` = {m.get('cpu_count')}, "
        f"`platform.processor()` = {m.get('processor')!r}, {m.get('platform')}",
        f"- Python {m.get('python')}; "
        + ", ".join(f"{k} {v}" for k, v in pk.items())
        + f"; tnplan at {m.get('tnplan_git')} (the latest run; each row comes from the run that measured it)",
        f"- Runs: {dates}",
        f"- cotengra `HyperOptimizer(max_time=T)` resolves to: {m.get('cotengra_defaults')}."
        " Its default process pool is kept (so ctg-default may use every core); it is started once before timing."
        " cotengra stops at `max_time` only when a trial completes and leaves the trials already running in its"
        " workers going; after each ctg-default run the benchmark waits, untimed, until they finish (`drain_s` in"
        " the JSON) so that they never overlap the next planner's run.",
        f"- oe-dp and ctg-optimal run in a child process killed after {m.get('hard_timeout_s')} s;"
        f" ctg-optimal only on networks of <= {m.get('ctg_optimal_max_tensors')} tensors.",
        "- Every path is re-scored with `tnplan.cost.score_linear_path`. `log10 flops` uses the einsum-benchmark"
        " convention (x2 when an index is summed), `log2 size` is the largest intermediate, time is wall clock"
        " (`time.perf_counter`) around the planner call. Planners run one at a time.",
        "- Cells: `median log10 flops / median log2 size / median time / excess`, median over seeds; excess = median"
        " minus the best log10 flops any method found on that instance at any budget. Bold: best of the row."
        " `opt`: tnplan proved optimality on every seed. oe-* and ctg-optimal do not depend on the budget;"
        " they ran once and appear in every table.",
        "",
    ]


def _ref_text(meta: dict[str, Any]) -> str:
    if meta.get("ref_log10_flops") is None:
        return ""
    resc = meta.get("ref_rescored_log10_flops")
    text = f"{meta['ref_log10_flops']:.4f}"
    if resc is not None and abs(resc - meta["ref_log10_flops"]) > 6e-5:
        text += f" (rescored {resc:.4f})"
    return text


def _budget_table(res: Results, budget: float) -> list[str]:
    head = ["instance", "tensors", "reference", *res.methods]
    lines = [f"## Budget {budget:g} s", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in res.names:
        meta = res.instances[name]
        cells = [res.cell(name, m, budget) for m in res.methods]
        vals = [c.log10 for c in cells if c.log10 is not None]
        row_best = min(vals) if vals else None
        body = [_fmt_cell(res, name, c, row_best) for c in cells]
        lines.append(f"| {name} | {meta.get('n_tensors', '')} | {_ref_text(meta)} | " + " | ".join(body) + " |")
    lines.append("")
    return lines


def _summary_table(res: Results, budget: float) -> list[str]:
    lines = [
        f"Summary at {budget:g} s: instances where the method is best of the row, within {NEAR_BEST_TOL} of the best"
        " found anywhere, median and max excess, and instances with no path.",
        "",
        "| method | best of row | near best | median excess | max excess | no path |",
        "|---|---|---|---|---|---|",
    ]
    per_name_best: dict[str, float | None] = {}
    for name in res.names:
        vals = [c.log10 for m in res.methods if (c := res.cell(name, m, budget)).log10 is not None]
        per_name_best[name] = min(vals) if vals else None
    for m in res.methods:
        best = near = none = 0
        excesses: list[float] = []
        for name in res.names:
            c = res.cell(name, m, budget)
            if c.status == "missing":
                continue
            if c.log10 is None:
                none += 1
                continue
            rb = per_name_best[name]
            best += rb is not None and c.log10 <= rb + BEST_TIE
            e = res.excess(name, c)
            if e is not None:
                excesses.append(e)
                near += e <= NEAR_BEST_TOL
        med = f"{statistics.median(excesses):.4f}" if excesses else "-"
        mx = f"{max(excesses):.4f}" if excesses else "-"
        lines.append(f"| {m} | {best} | {near} | {med} | {mx} | {none} |")
    lines.append("")
    return lines


def _overruns(res: Results) -> list[str]:
    lines = []
    for budget in res.budgets:
        for m in res.methods:
            if m not in BUDGETED:
                continue
            for name in res.names:
                times = [
                    r["planning_time_s"] for r in res.rows_for(name, m, budget) if r["planning_time_s"] is not None
                ]
                med = _median(times)
                if med is not None and med > OVERRUN_FACTOR * budget + OVERRUN_SLACK_S:
                    lines.append(f"| {name} | {m} | {budget:g} | {_fmt_time(med)} | {_fmt_time(max(times))} |")
    if not lines:
        return []
    head = [
        "## Budget overruns",
        "",
        f"Runs whose median wall time exceeded {OVERRUN_FACTOR:g} x budget + {OVERRUN_SLACK_S:g} s. cotengra checks"
        " `max_time` only when a trial completes, and one trial (kahypar partition + subtree reconfiguration) can"
        " take many seconds on a large network, so ctg-default can run for several times its budget; compare its"
        " flops with that in mind.",
        "",
        "| instance | method | budget s | median time | max time |",
        "|---|---|---|---|---|",
    ]
    return [*head, *lines, ""]


def _failures(res: Results) -> list[str]:
    bad = [r for r in res.rows if r["status"] in ("error", "timeout")]
    if not bad:
        return []
    lines = ["## Errors and timeouts", ""]
    seen: set[tuple[str, str, str]] = set()
    for r in bad:
        key = (r["instance"], r["method"], r["status"])
        if key in seen:
            continue
        seen.add(key)
        n = sum(1 for x in bad if (x["instance"], x["method"], x["status"]) == key)
        lines.append(f"- {r['instance']} / {r['method']}: {r['status']} ×{n} — {r.get('error') or ''}")
    lines.append("")
    return lines


# ---------------------------------------------------------------------------------------------- targets


def _first_number_after(pattern: str, name: str) -> int | None:
    m = re.search(pattern + r"\D*?(\d+)", name.lower())
    return int(m.group(1)) if m else None


def target4_instances(res: Results) -> list[str]:
    """3-regular graphs of 40/60 nodes (by structure, or a name like ``rr3_n40``) and MERA of 16/32 sites.

    A MERA's site count is the first number after ``mera`` in its name (``mera_open_16_b2`` -> 16).
    """
    picked = []
    for name in res.names:
        meta = res.instances[name]
        regular = meta.get("regular_degree") == 3 and meta.get("n_tensors") in REGULAR_SIZES
        regular |= _first_number_after(r"(?:rr3|3reg|randreg|rrg)", name) in REGULAR_SIZES
        mera = _first_number_after("mera", name) in MERA_SITES
        if regular or mera:
            picked.append(name)
    return picked


def render_targets(data: dict[str, Any], res: Results | None = None) -> str:
    res = res or Results(data)
    out = ["## Target checks", ""]
    if "tnplan" not in res.methods:
        return "\n".join([*out, "NOT RUN: no tnplan rows in the results."])
    for title, status, lines in (_target1(res), _target2(res), _target3(res), _target4(res)):
        out.append(f"### {status} — {title}")
        out.append("")
        # An empty entry would render as an empty bullet: skip it.
        out += [f"- {x}" for x in lines if x.strip()] or ["- (nothing to report)"]
        out.append("")
    sanity = _optimality_sanity(res)
    if sanity:
        out += ["### Sanity: tnplan claimed optimal but another method found fewer flops", ""]
        out += [f"- {x}" for x in sanity]
    return "\n".join(out)


def _target1(res: Results) -> tuple[str, str, list[str]]:
    title = (
        f"(1) every network with <= {OPT_MAX_TENSORS} tensors: tnplan optimal on all seeds,"
        f" median time <= {OPT_MAX_TIME_S} s"
    )
    names = [n for n in res.names if res.instances[n].get("n_tensors", 0) <= OPT_MAX_TENSORS]
    fails, checked = [], 0
    for name in names:
        for budget in res.budgets:
            rows = res.rows_for(name, "tnplan", budget)
            if not rows:
                continue
            checked += 1
            n_opt = sum(1 for r in rows if r["status"] == "ok" and r["optimal"])
            med = _median(r["planning_time_s"] for r in rows)
            if n_opt < len(rows) or med is None or med > OPT_MAX_TIME_S:
                fails.append(
                    f"{name} @ {budget:g} s: optimal on {n_opt}/{len(rows)} seeds, median time {_fmt_time(med)}"
                )
    if not checked:
        return title, "NOT RUN", [f"no tnplan rows on networks of <= {OPT_MAX_TENSORS} tensors"]
    return title, "FAIL" if fails else "PASS", [f"{checked} (network, budget) pairs checked", *fails]


def _target2(res: Results) -> tuple[str, str, list[str]]:
    title = f"(2) every einsum-benchmark instance: tnplan log10 flops <= reference at {REF_BUDGET:g} s"
    if REF_BUDGET not in res.budgets:
        return title, "NOT RUN", [f"no rows at budget {REF_BUDGET:g} s"]
    names = [n for n in res.names if res.instances[n].get("suite") == "einsum-benchmark"]
    lines = [
        "reference = the file's `paths.opt_flops` path re-scored with our scorer (the file's own figure in brackets"
        " where it differs)",
    ]
    fails = 0
    for name in names:
        meta = res.instances[name]
        ref = meta.get("ref_rescored_log10_flops", meta.get("ref_log10_flops"))
        c = res.cell(name, "tnplan", REF_BUDGET)
        if ref is None:
            continue
        ok = c.log10 is not None and c.log10 <= ref + REF_TOL
        fails += not ok
        file_ref = meta.get("ref_log10_flops")
        bracket = f" [file {file_ref:.4f}]" if file_ref is not None and abs(file_ref - ref) > 6e-5 else ""
        got = f"{c.log10:.4f}" if c.log10 is not None else c.status
        lines.append(f"{'ok  ' if ok else 'FAIL'} {name}: tnplan {got} vs reference {ref:.4f}{bracket}")
    return title, "FAIL" if fails else "PASS", [f"{fails} of {len(names)} fail", *lines]


def _target3(res: Results) -> tuple[str, str, list[str]]:
    title = (
        f"(3) tnplan never worse than ctg-default by > {CTG_WORSE_TOL} and strictly better (> {STRICT_BETTER:g}) on"
        f" at least half of the networks with > {BIG_TENSORS} tensors, at {', '.join(f'{b:g}' for b in CTG_BUDGETS)} s"
    )
    if "ctg-default" not in res.methods:
        return title, "NOT RUN", ["no ctg-default rows"]
    lines, failed, ran, missing = [], False, False, False
    for budget in CTG_BUDGETS:
        if budget not in res.budgets:
            lines.append(f"budget {budget:g} s: not run")
            missing = True
            continue
        ran = True
        worse, better, big, not_cmp = [], [], [], []
        for name in res.names:
            t, c = res.cell(name, "tnplan", budget), res.cell(name, "ctg-default", budget)
            if t.status == "missing" or c.status == "missing":
                continue
            if c.log10 is None:
                not_cmp.append(f"{name} (ctg-default {c.status})")
                continue
            if t.log10 is None:
                worse.append(f"{name} (tnplan {t.status})")
                continue
            diff = t.log10 - c.log10
            if diff > CTG_WORSE_TOL:
                worse.append(f"{name} (+{diff:.4f})")
            if res.instances[name].get("n_tensors", 0) > BIG_TENSORS:
                big.append(name)
                if diff < -STRICT_BETTER:
                    better.append(name)
        half_ok = 2 * len(better) >= len(big)
        failed |= bool(worse) or not half_ok
        lines.append(
            f"budget {budget:g} s: worse by > {CTG_WORSE_TOL} on {len(worse)}; strictly better on {len(better)} of "
            f"{len(big)} networks with > {BIG_TENSORS} tensors (need {(len(big) + 1) // 2})"
            + (f"; worse: {', '.join(worse)}" if worse else "")
            + (f"; not compared: {', '.join(not_cmp)}" if not_cmp else "")
        )
        not_better = [n for n in big if n not in better]
        if not_better:
            lines.append(f"budget {budget:g} s: not strictly better on: {', '.join(not_better)}")
    if not ran:
        return title, "NOT RUN", lines
    return title, "FAIL" if failed else "INCOMPLETE" if missing else "PASS", lines


def _target4(res: Results) -> tuple[str, str, list[str]]:
    title = (
        f"(4) 3-regular graphs of {'/'.join(map(str, sorted(REGULAR_SIZES)))} nodes and MERA of "
        f"{'/'.join(map(str, sorted(MERA_SITES)))} sites: tnplan within {NEAR_BEST_TOL} of the best found, at "
        f"{NEAR_BEST_BUDGET:g} s"
    )
    if NEAR_BEST_BUDGET not in res.budgets:
        return title, "NOT RUN", [f"no rows at budget {NEAR_BEST_BUDGET:g} s"]
    names = target4_instances(res)
    if not names:
        return title, "NOT RUN", ["no matching instance in the results (is the generated suite in?)"]
    lines, fails = [], 0
    for name in names:
        c = res.cell(name, "tnplan", NEAR_BEST_BUDGET)
        e = res.excess(name, c)
        ok = e is not None and e <= NEAR_BEST_TOL
        fails += not ok
        got = f"excess +{e:.4f}" if e is not None else f"tnplan {c.status}"
        lines.append(f"{'ok  ' if ok else 'FAIL'} {name}: {got} (best {res.best.get(name, float('nan')):.4f})")
    return title, "FAIL" if fails else "PASS", [f"matched: {', '.join(names)}", *lines]


def _optimality_sanity(res: Results) -> list[str]:
    out = []
    for name in res.names:
        best = res.best.get(name)
        for r in (r for b in res.budgets for r in res.rows_for(name, "tnplan", b)):
            if r["status"] == "ok" and r["optimal"] and best is not None and r["log10_flops"] > best + 1e-9:
                out.append(
                    f"{name} @ {r['budget']:g} s seed {r['seed']}: {r['log10_flops']:.6f} vs best {best:.6f}"
                    " (an outer product or a hyperedge convention may explain it; check)"
                )
    return out
