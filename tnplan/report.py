"""``tnplan report``: the schedule costs of several planners side by side, as Markdown, HTML and JSON.

:func:`build_report` plans every network with every method (tnplan and the anchors of
:mod:`tnplan.anchors`), re-scored by :func:`tnplan.cost.score_path`; :func:`write_report` writes
``report.md`` (figures as PNG files under ``figures/``), a self-contained ``report.html`` (the same
figures as ``data:`` URIs) and ``report.json``.

Examples:
    >>> import tnplan
    >>> from tnplan.report import build_report
    >>> net = tnplan.Network.from_einsum("ab,bc,cd->ad", (2, 8), (8, 8), (8, 2))
    >>> rep = build_report([("chain", net)], methods="tnplan,opt_einsum-greedy", progress=False)
    >>> rep.networks[0].results["tnplan"].ratio_to_best
    1.0
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import html
import io
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tnplan import anchors
from tnplan.cost import finite_or_inf
from tnplan.describe import render_markdown_table, render_table
from tnplan.errors import TnplanError
from tnplan.network import Label, Network
from tnplan.plan import Plan

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FORMAT = "tnplan.report/1"
DEFAULT_METHODS = ("tnplan", "cotengra", "opt_einsum-greedy", "opt_einsum-auto-hq")
DEFAULT_MAX_TIME = 1.0
FIGURE_DPI = 80  # small PNGs keep the self-contained HTML modest
FIGURE_SIZE = (6.4, 3.6)
TREE_LABEL_MAX_LEAVES = 32  # above this, leaf numbers would overlap

NetworkInput = str | Path | Network | tuple[str, Network]


# ---------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class MethodResult:
    """One method's plan for one network, or the error that stopped it.

    Attributes:
        method: The method's name (a :data:`tnplan.anchors.METHOD_NAMES` spelling).
        plan: The re-scored plan, or None when the method failed.
        error: ``"ExceptionType: message"`` when the method failed.
        ratio_to_best: Flops over the flops of the network's best plan (1.0 for the best); None
            without a plan, or when the best plan has no flops and this one has some.
        fits: Whether the plan's peak memory is within the memory limit; None without a limit or a plan.
        ignores_memory_limit: True when a memory limit was given but the method cannot slice, so its
            plan is the unsliced one.
    """

    method: str
    plan: Plan | None = None
    error: str | None = None
    ratio_to_best: float | None = None
    fits: bool | None = None
    ignores_memory_limit: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this result: its costs and path, or ``{"error": ...}``."""
        if self.plan is None:
            return {"error": self.error or "no plan"}
        p = self.plan
        return {
            "log10_flops": p.log10_flops,
            "flops": p.flops,
            "log2_size": p.log2_size,
            "peak_size": p.peak_size,
            "peak_memory": p.peak_memory(),
            "write": p.write,
            "n_slices": p.n_slices,
            "sliced_indices": [_json_label(x) for x in p.sliced_indices],
            "planning_time_s": round(p.planning_time, 6),
            "ratio_to_best": self.ratio_to_best,
            "fits": self.fits,
            "ignores_memory_limit": self.ignores_memory_limit,
            "path": [list(s) for s in p.path],
        }


@dataclass(frozen=True)
class NetworkResults:
    """Every method's result on one network.

    Attributes:
        name: A name unique within the report (the file's stem by default).
        file: The file it was read from, or None for a network given as an object.
        network: The network.
        results: Per method name, in the report's method order.
        best: The method with the fewest flops among the plans that fit the memory limit (among all
            plans when none fits, or without a limit); None when every method failed.
    """

    name: str
    file: str | None
    network: Network
    results: dict[str, MethodResult]
    best: str | None

    @property
    def best_plan(self) -> Plan | None:
        """The best method's plan (the one the figures show)."""
        return None if self.best is None else self.results[self.best].plan

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "file": self.file,
            "tensors": self.network.num_tensors,
            "indices": self.network.num_indices,
            "results": {m: r.to_dict() for m, r in self.results.items()},
            "best": self.best,
        }


@dataclass(frozen=True)
class Report:
    """The outcome of :func:`build_report`: options and per-network results.

    Attributes:
        methods: Method names, in column order.
        max_time: Seconds given to each budgeted planner (tnplan, cotengra) per network.
        memory_limit: Bytes that may be alive at once, or None.
        dtype: Element type of the memory figures.
        seed: tnplan's seed.
        networks: One entry per network, in input order.
    """

    methods: tuple[str, ...]
    max_time: float
    memory_limit: int | None
    dtype: str
    seed: int
    networks: tuple[NetworkResults, ...]

    @property
    def options(self) -> dict[str, Any]:
        return {"max_time": self.max_time, "memory_limit": self.memory_limit, "dtype": self.dtype, "seed": self.seed}

    def to_dict(self) -> dict[str, Any]:
        """The ``report.json`` object (format ``tnplan.report/1``)."""
        return {
            "format": FORMAT,
            "methods": list(self.methods),
            "options": self.options,
            "networks": [n.to_dict() for n in self.networks],
        }

    def to_json(self) -> str:
        # allow_nan=False: a stray inf or nan must fail here rather than write non-standard JSON.
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=1, allow_nan=False)


def _json_label(label: Label) -> str | int:
    return label if isinstance(label, str | int) and not isinstance(label, bool) else str(label)


# ---------------------------------------------------------------------------------------------- building


def parse_methods(methods: str | Sequence[str]) -> tuple[str, ...]:
    """Method names (a comma-separated string or a sequence) in their report spelling, deduplicated.

    Raises:
        TnplanError: If no method is given or any name is unknown (all unknown names are listed).
    """
    names = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods)]
    names = [m for m in names if m]
    if not names:
        raise TnplanError(f"no methods given; choose from {', '.join(anchors.METHOD_NAMES)}")
    unknown = [m for m in names if m not in anchors.METHODS]
    if unknown:
        aliases = ", ".join(f"{k}={v}" for k, v in anchors.ALIASES.items())
        raise TnplanError(
            f"unknown method(s) {', '.join(repr(m) for m in unknown)}; "
            f"choose from {', '.join(anchors.METHOD_NAMES)} (aliases: {aliases})"
        )
    return tuple(dict.fromkeys(anchors.canonical_method(m) for m in names))


def _is_named_network(item: object) -> bool:
    return isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Network)


def _load_networks(inputs: NetworkInput | Sequence[NetworkInput]) -> list[tuple[str, str | None, Network]]:
    """(name, file, network) per input; folders contribute their ``*.json`` files, sorted."""
    items: Sequence[NetworkInput] = (
        [inputs] if isinstance(inputs, str | Path | Network) or _is_named_network(inputs) else inputs  # type: ignore[list-item]
    )
    loaded: list[tuple[str, str | None, Network]] = []
    for k, item in enumerate(items):
        if isinstance(item, Network):
            loaded.append((f"network{k + 1}", None, item))
        elif isinstance(item, tuple) and _is_named_network(item):
            loaded.append((str(item[0]), None, item[1]))
        elif isinstance(item, str | Path):
            path = Path(item)
            if path.is_dir():
                # A report written into the folder earlier (--out inside the input folder) is no input.
                files = sorted(f for f in path.rglob("*.json") if not _is_report(f))
                if not files:
                    raise TnplanError(f"{path}: folder holds no network JSON files")
            else:
                files = [path]
            # Network.from_json names the file and the problem (missing, not JSON, not a network).
            loaded.extend((f.stem, str(f), Network.from_json(f)) for f in files)
        else:
            raise TnplanError(
                f"input {k} is a {type(item).__name__}; give network files, folders, Networks or (name, Network)"
            )
    if not loaded:
        raise TnplanError("no network files given; pass one or more network JSON files")
    used: set[str] = set()
    named = []
    for name, file, net in loaded:
        # Files with the same stem in different folders still need distinct rows and figure names.
        unique, k = name, 1
        while unique in used:
            k += 1
            unique = f"{name}-{k}"
        used.add(unique)
        named.append((unique, file, net))
    return named


def _is_report(path: Path) -> bool:
    """Whether ``path`` is a ``report.json`` this module wrote."""
    if path.name != "report.json":
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _check_options(max_time: float, memory_limit: int | None, dtype: str, seed: int = 0) -> tuple[int | None, str]:
    """The memory limit as whole bytes and the dtype's canonical name, once all options are known to be valid."""
    if isinstance(max_time, bool) or not isinstance(max_time, int | float) or not 0 < max_time < math.inf:
        raise TnplanError(f"max_time must be a positive number of seconds, got {max_time!r}")
    from tnplan.planner import check_seed

    check_seed(seed)
    if memory_limit is not None:
        if isinstance(memory_limit, bool) or not isinstance(memory_limit, int | float) or not memory_limit >= 1:
            raise TnplanError(f"memory_limit must be a positive number of bytes, got {memory_limit!r}")
        memory_limit = int(memory_limit)
    try:
        return memory_limit, str(np.dtype(dtype))
    except TypeError:
        raise TnplanError(f"unknown dtype {dtype!r}; use a numpy dtype name such as 'float32'") from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _rank(
    methods: Sequence[str], plans: dict[str, Plan], errors: dict[str, str], memory_limit: int | None
) -> tuple[dict[str, MethodResult], str | None]:
    """Results (ratios, fits) in method order from each method's plan or error, and the best method."""
    fits = {m: None if memory_limit is None else p.peak_memory() <= memory_limit for m, p in plans.items()}
    # A plan that breaks the memory limit is no answer to the question asked, however cheap.
    eligible = [m for m in methods if m in plans and fits[m] is not False] or [m for m in methods if m in plans]
    best = min(eligible, key=lambda m: plans[m].flops) if eligible else None  # ties: the first listed
    best_flops = plans[best].flops if best is not None else 0
    results: dict[str, MethodResult] = {}
    for m in methods:
        ignores = memory_limit is not None and m not in anchors.SLICING_METHODS
        p = plans.get(m)
        if p is None:
            results[m] = MethodResult(m, error=errors[m], ignores_memory_limit=ignores)
            continue
        if best_flops > 0:
            ratio: float | None = p.flops / best_flops
        else:
            ratio = 1.0 if p.flops == 0 else None
        results[m] = MethodResult(m, plan=p, ratio_to_best=ratio, fits=fits[m], ignores_memory_limit=ignores)
    return results, best


def build_report(
    files_or_networks: NetworkInput | Sequence[NetworkInput],
    *,
    methods: str | Sequence[str] = DEFAULT_METHODS,
    max_time: float = DEFAULT_MAX_TIME,
    memory_limit: int | None = None,
    dtype: str = "float64",
    seed: int = 0,
    progress: bool = True,
) -> Report:
    """Plan every network with every method and collect the re-scored costs.

    All inputs and options are checked before the first search starts, so a typo costs no
    planning time. A method that fails on a network is recorded as an error and the report goes on.

    Args:
        files_or_networks: Network JSON files (any format :meth:`Network.from_json` reads), folders
            of them, :class:`~tnplan.network.Network` objects, or ``(name, Network)`` pairs.
        methods: Names from :data:`tnplan.anchors.METHOD_NAMES` or their aliases, as a sequence or a
            comma-separated string.
        max_time: Seconds per network for the budgeted methods (tnplan, cotengra).
        memory_limit: Bytes that may be alive at once; tnplan and cotengra slice to fit it, the other
            methods cannot and are marked as ignoring it.
        dtype: Element type of the memory figures and the memory limit.
        seed: tnplan's seed.
        progress: Show a progress bar (and a line per failed method) on stderr.

    Returns:
        The :class:`Report`.

    Raises:
        TnplanError: On an unknown method, no inputs, an unreadable or malformed network, or an
            invalid option.
    """
    names = parse_methods(methods)
    memory_limit, dtype = _check_options(max_time, memory_limit, dtype, seed)
    networks = _load_networks(files_or_networks)

    from tqdm import tqdm

    if "tnplan" in names:
        from tnplan.optimal import kernel_ready

        # Loading the exact-search kernel from numba's cache takes about half a second once per
        # process; paying it here keeps it out of the first network's planning time.
        kernel_ready()
    bar = tqdm(total=len(networks) * len(names), unit="plan", file=sys.stderr, disable=not progress)
    entries = []
    try:
        for name, file, net in networks:
            plans: dict[str, Plan] = {}
            errors: dict[str, str] = {}
            for m in names:
                bar.set_description(f"{name[:28]}: {m}")
                reason = anchors.skipped(m, net)
                if reason is not None:
                    errors[m] = reason
                    bar.update(1)
                    continue
                try:
                    plans[m] = anchors.run_method(
                        m, net, max_time=max_time, seed=seed, memory_limit=memory_limit, dtype=dtype
                    )
                except Exception as exc:  # an anchor failing on one network must not stop the report
                    errors[m] = _one_line(exc)
                    if progress:
                        tqdm.write(f"tnplan: {name}: {m} failed: {errors[m]}", file=sys.stderr)
                bar.update(1)
            results, best = _rank(names, plans, errors, memory_limit)
            entries.append(NetworkResults(name=name, file=file, network=net, results=results, best=best))
    finally:
        bar.close()
    return Report(
        methods=names,
        max_time=float(max_time),
        memory_limit=memory_limit,
        dtype=dtype,
        seed=seed,
        networks=tuple(entries),
    )


# ---------------------------------------------------------------------------------------------- tables


def _fmt_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    return f"{ratio:.3f}" if ratio < 1000 else f"{ratio:.3e}"


def results_table(report: Report) -> tuple[tuple[str, ...], list[tuple[str, ...]], tuple[str, ...]]:
    """(header, rows, alignment): one row per network and method, shared by every output format."""
    header: tuple[str, ...] = (
        "network",
        "method",
        "log10 flops",
        "log2 size",
        f"peak memory ({report.dtype})",
        "write",
        "slices",
        "time (s)",
        "ratio to best",
    )
    if report.memory_limit is not None:
        header += ("fits limit",)
    rows: list[tuple[str, ...]] = []
    for entry in report.networks:
        for m, r in entry.results.items():
            if r.plan is None:
                row: tuple[str, ...] = (entry.name, m, f"error: {r.error}", *("-" for _ in header[3:]))
                rows.append(row)
                continue
            p = r.plan
            row = (
                entry.name,
                m,
                f"{p.log10_flops:.3f}",
                f"{p.log2_size:.2f}",
                _fmt_bytes(p.peak_memory()),
                f"{p.write:.3e}",
                str(p.n_slices),
                f"{p.planning_time:.3f}",
                _fmt_ratio(r.ratio_to_best),
            )
            if report.memory_limit is not None:
                fit = "yes" if r.fits else "no"
                row += (f"{fit} (unsliced; ignores limit)" if r.ignores_memory_limit else fit,)
            rows.append(row)
    align = ("l", "l", *("r" for _ in header[2:-1]), "l" if report.memory_limit is not None else "r")
    return header, rows, align


def summary_table(report: Report) -> tuple[tuple[str, ...], list[tuple[str, ...]], tuple[str, ...]]:
    """(header, rows, alignment): one row per network with its size and best method."""
    header: tuple[str, ...] = ("network", "tensors", "indices", "best method", "log10 flops", "log2 size", "slices")
    rows: list[tuple[str, ...]] = []
    for entry in report.networks:
        p = entry.best_plan
        net = entry.network
        cells = ("-", "-", "-") if p is None else (f"{p.log10_flops:.3f}", f"{p.log2_size:.2f}", str(p.n_slices))
        rows.append((entry.name, str(net.num_tensors), str(net.num_indices), entry.best or "all failed", *cells))
    return header, rows, ("l", "r", "r", "l", "r", "r", "r")


def _notes(report: Report) -> list[str]:
    limit = report.memory_limit
    notes = [
        f"Each budgeted planner (tnplan, cotengra) had {report.max_time:g} s per network; tnplan's seed is "
        f"{report.seed}. cotengra is its HyperOptimizer with default settings (it cannot be seeded).",
        "Every path is re-scored by tnplan's cost model: flops count 2 per multiply-add when an index is summed; "
        "log2 size is the largest intermediate per slice; peak memory counts every tensor alive at once, inputs "
        f"included, as {report.dtype}; write sums all intermediates over all slices.",
        "ratio to best: flops over the flops of the network's best plan (the best shows 1.000).",
    ]
    if limit is not None:
        notes.append(
            f"Memory limit {limit} bytes ({_fmt_bytes(limit)}). The best plan is the cheapest one that fits, so a "
            "plan that breaks the limit may show a ratio below 1."
        )
        ignoring = [m for m in report.methods if m not in anchors.SLICING_METHODS]
        if ignoring:
            notes.append(
                f"{', '.join(ignoring)} cannot slice: their rows show the unsliced plan and ignore the memory limit."
            )
    return notes


# ---------------------------------------------------------------------------------------------- figures


def _new_figure(figsize: tuple[float, float] = FIGURE_SIZE, right: float = 0.97) -> Figure:
    # Imported here: matplotlib is only needed when figures are drawn. A bare Figure on an Agg
    # canvas leaves pyplot's global state (and any interactive backend) untouched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=FIGURE_DPI)
    FigureCanvasAgg(fig)
    # Fixed margins: automatic layouts (tight, constrained) double the drawing time of each figure.
    fig.subplots_adjust(left=0.11, right=right, bottom=0.14, top=0.91, hspace=0.12)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=FIGURE_DPI)
    return buf.getvalue()


def figure_cost_vs_time(report: Report) -> bytes | None:
    """Scatter of log10 flops against planning time, one series per method over all networks."""
    fig = _new_figure()
    ax = fig.add_subplot()
    markers = "osD^v<>Ph*X"
    drawn = False
    for k, m in enumerate(report.methods):
        plans = [p for e in report.networks if (p := e.results[m].plan) is not None]
        if not plans:
            continue
        # Fast anchors take microseconds; the clamp keeps them on the log axis.
        times = [max(p.planning_time, 1e-5) for p in plans]
        ax.scatter(times, [p.log10_flops for p in plans], label=m, marker=markers[k % len(markers)], alpha=0.8)
        drawn = True
    if not drawn:
        return None
    ax.set_xscale("log")
    ax.set_xlabel("planning time (s)")
    ax.set_ylabel("log10 flops")
    ax.set_title("cost against planning time")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _png(fig)


def _step_log_flops(plan: Plan) -> np.ndarray:
    """log10 of each step's flops over the whole contraction (step flops are per slice), at least 0;
    math.log10 of the exact integers, as counts past 10^308 have no float."""
    return np.array([math.log10(max(st.flops * plan.n_slices, 1)) for st in plan.costs.steps])


def figure_step_profile(entry: NetworkResults) -> bytes | None:
    """Bars of flops and intermediate size per step of the network's best plan (None without steps)."""
    plan = entry.best_plan
    if plan is None or not plan.costs.steps:
        return None
    fig = _new_figure((FIGURE_SIZE[0], 4.0))
    top, bottom = fig.subplots(2, 1, sharex=True)
    steps = np.arange(len(plan.costs.steps))
    sizes = np.array([finite_or_inf(st.size) for st in plan.costs.steps])
    log_flops = _step_log_flops(plan)
    top.bar(steps, log_flops, width=0.8, color="tab:blue")
    # The most expensive step answers "where do the flops go" at a glance.
    k = int(np.argmax(log_flops))
    top.bar([k], [log_flops[k]], width=0.8, color="tab:red")
    top.set_ylabel("log10 flops")
    share = 100 * plan.costs.steps[k].flops * plan.n_slices / plan.flops if plan.flops else 0.0
    top.set_title(f"{entry.name}: {entry.best}'s plan, cost per step (step {k}: {share:.0f}% of flops)", fontsize=9)
    bottom.bar(steps, np.log2(np.maximum(sizes, 1.0)), width=0.8, color="tab:green")
    suffix = f", per slice of {plan.n_slices}" if plan.n_slices > 1 else ""
    bottom.set_ylabel(f"log2 size{suffix}", fontsize=8)
    bottom.set_xlabel("step")
    for ax in (top, bottom):
        ax.grid(True, axis="y", alpha=0.3)
    return _png(fig)


def tree_layout(num_tensors: int, ssa_path: Sequence[Sequence[int]]) -> tuple[list[float], list[int]]:
    """Positions of the nodes of a contraction tree (inputs ``0..n-1``, step ``k`` makes ``n+k``).

    Leaves sit at height 0 in the left-to-right order of a depth-first walk from the root, so no
    edges cross; a node sits above its higher child, midway between its children.

    Returns:
        ``(x, y)``, one entry per node id.
    """
    n = num_tensors
    children = {n + k: (int(a), int(b)) for k, (a, b) in enumerate(ssa_path)}
    roots = [n + len(ssa_path) - 1] if ssa_path else list(range(n))
    order: list[int] = []
    # Iterative walk: a chain of hundreds of tensors would exceed Python's recursion limit.
    stack = list(reversed(roots))
    while stack:
        v = stack.pop()
        if v < n:
            order.append(v)
        else:
            a, b = children[v]
            stack += [b, a]
    x = [0.0] * (n + len(ssa_path))
    y = [0] * (n + len(ssa_path))
    for pos, leaf in enumerate(order):
        x[leaf] = float(pos)
    for v in range(n, n + len(ssa_path)):  # SSA order: children come before their parent
        a, b = children[v]
        x[v] = (x[a] + x[b]) / 2
        y[v] = 1 + max(y[a], y[b])
    return x, y


def figure_tree(entry: NetworkResults) -> bytes | None:
    """The best plan's contraction tree, internal nodes coloured and sized by their step's flops."""
    plan = entry.best_plan
    if plan is None or not plan.ssa_path:
        return None
    from matplotlib.collections import LineCollection

    n = plan.network.num_tensors
    x, y = tree_layout(n, plan.ssa_path)
    segments = []
    for k, (a, b) in enumerate(plan.ssa_path):
        v = n + k
        segments += [[(x[v], y[v]), (x[a], y[a])], [(x[v], y[v]), (x[b], y[b])]]
    fig = _new_figure(right=1.02)  # the colorbar takes its room from the axes
    ax = fig.add_subplot()
    ax.add_collection(LineCollection(segments, colors="0.6", linewidths=0.8, zorder=1))
    ax.scatter(x[:n], y[:n], s=14, marker="s", color="0.35", zorder=2)
    log_flops = _step_log_flops(plan)
    span = float(log_flops.max() - log_flops.min()) or 1.0
    sizes = 12 + 70 * (log_flops - log_flops.min()) / span
    dots = ax.scatter(x[n:], y[n:], s=sizes, c=log_flops, cmap="viridis", zorder=3, edgecolors="k", linewidths=0.3)
    fig.colorbar(dots, ax=ax, label="log10 flops of step")
    if n <= TREE_LABEL_MAX_LEAVES:
        ax.set_xticks(x[:n], [str(i) for i in range(n)], fontsize=7)
        ax.set_xlabel("input tensor")
    else:
        ax.set_xticks([])
        ax.set_xlabel(f"{n} input tensors")
    ax.set_ylabel("height")
    ax.set_title(f"{entry.name}: {entry.best}'s contraction tree", fontsize=9)
    ax.margins(0.04)
    return _png(fig)


@dataclass(frozen=True)
class _Figure:
    file: str  # name under figures/
    title: str
    png: bytes
    network: str | None  # None for the figure over all networks


# The names render_figures gives its files.
_FIGURE_NAME = re.compile(r"cost_vs_time\.png|\d{2,}_[A-Za-z0-9_.-]*_(profile|tree)\.png")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:60] or "network"


def render_figures(report: Report) -> list[_Figure]:
    """Every figure of the report as PNG bytes, in the order the report shows them."""
    figures = []
    png = figure_cost_vs_time(report)
    if png is not None:
        figures.append(_Figure("cost_vs_time.png", "Cost against planning time", png, None))
    for k, entry in enumerate(report.networks):
        # The index keeps file names unique even when two network names share a slug.
        stem = f"{k + 1:02d}_{_slug(entry.name)}"
        for kind, title, draw in (
            ("profile", "cost per step", figure_step_profile),
            ("tree", "contraction tree", figure_tree),
        ):
            png = draw(entry)
            if png is not None:
                figures.append(_Figure(f"{stem}_{kind}.png", f"{entry.name}: {entry.best} {title}", png, entry.name))
    return figures


# ---------------------------------------------------------------------------------------------- documents


def _header_lines(report: Report) -> list[str]:
    limit = "none" if report.memory_limit is None else f"{report.memory_limit} bytes ({report.dtype})"
    return [
        f"networks: {len(report.networks)}",
        f"methods: {', '.join(report.methods)}",
        f"max time: {report.max_time:g} s per planner and network",
        f"memory limit: {limit}",
        f"dtype: {report.dtype}   seed: {report.seed}",
    ]


def to_markdown(report: Report, figures: Sequence[_Figure] = ()) -> str:
    """``report.md``: header, notes, summary and results tables, then figures linked from ``figures/``."""
    out = ["# tnplan report", ""]
    out += [f"- {line}" for line in _header_lines(report)]
    out += ["", "## Best plan per network", "", render_markdown_table(*summary_table(report))]
    out += ["", "## Schedule costs", "", render_markdown_table(*results_table(report)), ""]
    out += [f"- {note}" for note in _notes(report)]
    if figures:
        out += ["", "## Figures"]
        section: str | None = None
        for fig in figures:
            if fig.network is not None and fig.network != section:
                section = fig.network
                out += ["", f"### {section}"]
            out += ["", f"![{fig.title}](figures/{fig.file})"]
    return "\n".join(out) + "\n"


def _html_table(header: tuple[str, ...], rows: list[tuple[str, ...]], align: tuple[str, ...]) -> str:
    cls = {"l": "", "r": ' class="num"', "c": ' class="mid"'}
    head = "".join(f"<th{cls[a]}>{html.escape(h)}</th>" for h, a in zip(header, align, strict=True))
    body = "\n".join(
        "<tr>" + "".join(f"<td{cls[a]}>{html.escape(c)}</td>" for c, a in zip(r, align, strict=True)) + "</tr>"
        for r in rows
    )
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f2f2f2; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; }
figcaption { font-size: 0.85em; color: #555; }
"""


def to_html(report: Report, figures: Sequence[_Figure] = ()) -> str:
    """``report.html``: the Markdown report's content with figures embedded as base64 ``data:`` URIs."""
    esc = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8"><title>tnplan report</title>',
        f"<style>{_CSS}</style></head>",
        "<body>",
        "<h1>tnplan report</h1>",
        "<ul>" + "".join(f"<li>{esc(line)}</li>" for line in _header_lines(report)) + "</ul>",
        "<h2>Best plan per network</h2>",
        _html_table(*summary_table(report)),
        "<h2>Schedule costs</h2>",
        _html_table(*results_table(report)),
        "<ul>" + "".join(f"<li>{esc(note)}</li>" for note in _notes(report)) + "</ul>",
    ]
    if figures:
        out.append("<h2>Figures</h2>")
        section: str | None = None
        for fig in figures:
            if fig.network is not None and fig.network != section:
                section = fig.network
                out.append(f"<h3>{esc(section)}</h3>")
            data = base64.b64encode(fig.png).decode("ascii")
            out.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{esc(fig.title)}">'
                f"<figcaption>{esc(fig.title)}</figcaption></figure>"
            )
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise TnplanError(f"{out_dir}: exists and is not a folder; --out needs a folder (created when missing)")


def write_report(report: Report, out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.md``, ``report.html``, ``report.json`` and ``figures/*.png`` into ``out_dir``.

    The folder (and its parents) is created when missing; files of an earlier report there are
    overwritten.

    Args:
        report: From :func:`build_report`.
        out_dir: The folder to write into.

    Returns:
        The written paths under the keys ``"markdown"``, ``"html"``, ``"json"`` and ``"figures"`` (the
        figures folder).

    Raises:
        TnplanError: If ``out_dir`` exists and is not a folder.
    """
    out = Path(out_dir)
    _check_out_dir(out)
    figures = render_figures(report)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for stale in fig_dir.glob("*.png"):
        # An earlier report's figures would sit beside these, linked from nothing; other files stay.
        if _FIGURE_NAME.fullmatch(stale.name):
            stale.unlink()
    for fig in figures:
        (fig_dir / fig.file).write_bytes(fig.png)
    paths = {"markdown": out / "report.md", "html": out / "report.html", "json": out / "report.json"}
    paths["markdown"].write_text(to_markdown(report, figures), encoding="utf-8")
    paths["html"].write_text(to_html(report, figures), encoding="utf-8")
    paths["json"].write_text(report.to_json() + "\n", encoding="utf-8")
    return {**paths, "figures": fig_dir}


# ---------------------------------------------------------------------------------------------- command line


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``report`` options to ``parser``."""
    # Imported here: tnplan.cli imports this module to register the subcommand.
    from tnplan.cli import _positive_float, _positive_int, _seed

    parser.add_argument("files", nargs="*", metavar="FILE.json", help="network JSON files or folders of them")
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated, from {','.join(anchors.METHOD_NAMES)} (default {','.join(DEFAULT_METHODS)})",
    )
    parser.add_argument(
        "--max-time",
        type=_positive_float,
        default=DEFAULT_MAX_TIME,
        help=f"seconds per network for tnplan and cotengra (default {DEFAULT_MAX_TIME:g})",
    )
    parser.add_argument("--memory-limit", type=_positive_int, help="bytes that may be alive at once; slices to fit")
    parser.add_argument("--dtype", default="float64", help="element type for memory figures (default float64)")
    parser.add_argument("--seed", type=_seed, default=0, help="tnplan's seed (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for report.md, report.html, report.json")
    return parser


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``report`` subcommand on an ``add_subparsers()`` object; returns its parser."""
    parser = subparsers.add_parser(
        "report",
        help="compare schedule costs of planners side by side; write report.md/.html/.json",
        description="Plan networks with tnplan and anchor planners; write a Markdown, HTML and JSON report.",
    )
    return configure_parser(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``tnplan report`` for parsed arguments; returns the exit status.

    Raises:
        TnplanError: On bad input (the caller prints it as one line and exits with status 2).
    """
    out = Path(args.out)
    _check_out_dir(out)  # before the searches, so a wrong --out costs no planning time
    quiet = bool(args.quiet)
    # --quiet silences library chatter too (warnings, matplotlib's font-cache notice); errors still
    # propagate and are printed by the caller.
    sink = contextlib.redirect_stderr(io.StringIO()) if quiet else contextlib.nullcontext()
    with sink:
        report = build_report(
            args.files,
            methods=args.methods,
            max_time=args.max_time,
            memory_limit=args.memory_limit,
            dtype=args.dtype,
            seed=args.seed,
            progress=not quiet,
        )
        paths = write_report(report, out)
    if not quiet:
        header, rows, _ = results_table(report)
        print(render_table(header, rows))
        print(f"\nwrote {paths['markdown']}, {paths['html']}, {paths['json']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tnplan.report`` (the same options as ``tnplan report``)."""
    from tnplan.cli import main as cli_main

    return cli_main(["report", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
