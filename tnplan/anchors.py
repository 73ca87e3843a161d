"""Anchor planners (opt_einsum, cotengra) behind one interface, re-scored by tnplan's cost model.

Used wherever tnplan is compared with the field: ``tnplan compare`` and ``benchmarks/planner``.
Every method returns a :class:`~tnplan.plan.Plan` built from the anchor's path, so all numbers come
from :func:`tnplan.cost.score_path`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from tnplan.errors import PlanError
from tnplan.network import Network
from tnplan.plan import Plan, from_path

METHODS = ("tnplan", "oe-greedy", "oe-auto", "oe-auto-hq", "oe-dp", "ctg-default", "ctg-optimal")


def _oe_args(network: Network) -> tuple[list[set[int]], set[int], dict[int, int]]:
    inputs = [set(t) for t in network.int_inputs]
    return inputs, set(network.int_output), dict(enumerate(network.int_sizes))


def _oe_path(optimize: str) -> Callable[[Network, float, int], list]:
    def run(network: Network, max_time: float, seed: int) -> list:
        import opt_einsum as oe

        inputs, output, sizes = _oe_args(network)
        if optimize == "dp":
            return oe.paths.DynamicProgramming()(inputs, output, sizes)
        if optimize == "greedy":
            return oe.paths.greedy(inputs, output, sizes)
        fn = oe.paths.get_path_fn(optimize)
        return fn(inputs, output, sizes)

    return run


def _ctg_default(network: Network, max_time: float, seed: int) -> list:
    import cotengra as ctg

    opt = ctg.HyperOptimizer(max_time=max_time)
    inputs = [list(t) for t in network.int_inputs]
    tree = opt.search(inputs, list(network.int_output), dict(enumerate(network.int_sizes)))
    return tree.get_path()


def _ctg_optimal(network: Network, max_time: float, seed: int) -> list:
    from cotengra.pathfinders.path_basic import optimize_optimal

    inputs = [list(t) for t in network.int_inputs]
    return optimize_optimal(inputs, list(network.int_output), dict(enumerate(network.int_sizes)), minimize="flops")


_RUNNERS: dict[str, Callable[[Network, float, int], list]] = {
    "oe-greedy": _oe_path("greedy"),
    "oe-auto": _oe_path("auto"),
    "oe-auto-hq": _oe_path("auto-hq"),
    "oe-dp": _oe_path("dp"),
    "ctg-default": _ctg_default,
    "ctg-optimal": _ctg_optimal,
}


def run_method(method: str, network: Network, *, max_time: float = 1.0, seed: int = 0) -> Plan:
    """Plan ``network`` with ``method`` (see :data:`METHODS`) and return a re-scored :class:`Plan`.

    Raises:
        PlanError: On an unknown method name.
    """
    if method == "tnplan":
        from tnplan.planner import plan

        return plan(network, max_time=max_time, seed=seed)
    if method not in _RUNNERS:
        raise PlanError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    start = time.perf_counter()
    path = _RUNNERS[method](network, max_time, seed)
    elapsed = time.perf_counter() - start
    return dataclasses.replace(from_path(network, [tuple(p) for p in path]), planning_time=elapsed, method=method)
