"""The planners under comparison, each behind one small adapter returning an opt_einsum linear path.

Every adapter takes the same ``(inputs, output, size_dict)`` problem built by :func:`anchor_problem`
(or the :class:`~tnplan.network.Network` itself for ``tnplan``) and returns a :class:`Planned`.
Timing is wall clock (``time.perf_counter``) around the planner call only: building the problem and
re-scoring the path are outside it. The exact planners (``oe-dp``, ``ctg-optimal``) run in a spawned
child process that is killed at the hard timeout; their time is measured inside the child.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from tnplan.network import Network

METHODS = ("tnplan", "oe-greedy", "oe-auto", "oe-auto-hq", "oe-dp", "ctg-default", "ctg-optimal")
BUDGETED = frozenset({"tnplan", "ctg-default"})  # run once per (budget, seed); the others once per instance
HARD_TIMEOUT_S = 60.0  # oe-dp and ctg-optimal are killed after this many seconds
CTG_OPTIMAL_MAX_TENSORS = 40  # ctg-optimal is attempted only on networks this small

Problem = tuple[list[tuple[Hashable, ...]], tuple[Hashable, ...], dict[Hashable, int]]


@dataclass
class Planned:
    """What one planner run produced."""

    path: list[tuple[int, ...]]
    time_s: float
    optimal: bool | None = None
    reported_time_s: float | None = None  # the planner's own account of its time, where it gives one
    drain_s: float | None = None  # untimed wait for cotengra's pool to finish trials left running


class PlannerTimeoutError(Exception):
    """The planner did not finish within its hard timeout."""


def anchor_problem(network: Network) -> Problem:
    """The network as the ``(inputs, output, size_dict)`` triple given to opt_einsum and cotengra.

    Labels are passed as given (both libraries accept any hashable when their path functions are
    called directly, so opt_einsum's one-character symbols are never needed). An index repeated
    within one tensor is listed once, as :attr:`Network.int_inputs` does for the scorer.
    """
    inputs = [tuple(dict.fromkeys(term)) for term in network.inputs]
    return inputs, tuple(network.output), dict(network.size_dict)


def pairwise_linear_path(path: Sequence[Sequence[int]], num_tensors: int) -> list[tuple[int, int]]:
    """Rewrite any opt_einsum linear path as an equivalent one of pairwise steps only.

    opt_einsum semantics: every step pops the listed positions and appends its result at the end.
    cotengra's exact optimizer emits single-operand steps (a reduction that moves the tensor to the
    end of the list); dropping them without moving the tensor would re-pair the remaining steps, so
    they are replayed here. Steps of three or more operands are split left to right.
    """
    ids = list(range(num_tensors))
    nxt = num_tensors
    ssa: list[tuple[int, int]] = []
    for step in path:
        picked = [ids[int(x)] for x in step]
        for x in sorted((int(x) for x in step), reverse=True):
            ids.pop(x)
        acc = picked[0]
        for other in picked[1:]:
            ssa.append((acc, other))
            acc = nxt
            nxt += 1
        ids.append(acc)
    # back to linear form
    alive = list(range(num_tensors))
    out: list[tuple[int, int]] = []
    nxt = num_tensors
    for a, b in ssa:
        i, j = sorted((alive.index(a), alive.index(b)))
        out.append((i, j))
        alive.pop(j)
        alive.pop(i)
        alive.append(nxt)
        nxt += 1
    return out


# ---------------------------------------------------------------------------------------------- adapters


def plan_tnplan(network: Network, budget: float, seed: int) -> Planned:
    import tnplan

    plan_fn = getattr(tnplan, "plan", None)
    if plan_fn is None:
        raise RuntimeError("tnplan.plan does not exist yet")
    t0 = time.perf_counter()
    plan = plan_fn(network, minimize="flops", max_time=budget, seed=seed, cache=False)
    elapsed = time.perf_counter() - t0
    return Planned(
        path=[tuple(int(x) for x in step) for step in plan.path],
        time_s=elapsed,
        optimal=bool(plan.optimal),
        reported_time_s=float(plan.planning_time),
    )


def _oe_sets(problem: Problem) -> tuple[list[frozenset[Hashable]], frozenset[Hashable], dict[Hashable, int]]:
    inputs, output, size_dict = problem
    return [frozenset(t) for t in inputs], frozenset(output), size_dict


def _oe_fn(method: str) -> Callable[..., Any]:
    import opt_einsum as oe

    if method == "oe-greedy":
        return oe.paths.greedy
    if method == "oe-auto":
        return oe.paths.auto
    if method == "oe-auto-hq":
        return oe.paths.auto_hq
    if method == "oe-dp":
        return oe.paths.DynamicProgramming(minimize="flops")
    raise ValueError(f"not an opt_einsum method: {method!r}")


def plan_oe(method: str, problem: Problem) -> Planned:
    """opt_einsum's path function ``method`` on the problem, in this process."""
    fn = _oe_fn(method)
    inputs, output, size_dict = _oe_sets(problem)
    t0 = time.perf_counter()
    path = fn(inputs, output, size_dict)
    elapsed = time.perf_counter() - t0
    return Planned(path=[tuple(int(x) for x in step) for step in path], time_s=elapsed)


def plan_ctg_default(problem: Problem, budget: float) -> Planned:
    """``cotengra.HyperOptimizer(max_time=budget)`` with every other setting at its default.

    The default ``parallel='auto'`` gives cotengra its own process pool (one worker per core); it is
    kept, and warmed once by :func:`warm_up_cotengra` so that no run pays for starting it.
    """
    import cotengra as ctg

    inputs, output, size_dict = problem
    t0 = time.perf_counter()
    opt = ctg.HyperOptimizer(max_time=budget)
    try:
        path = opt(list(inputs), list(output), dict(size_dict))
        elapsed = time.perf_counter() - t0
    finally:
        drain = drain_pool(getattr(opt, "_pool", None))
    return Planned(path=[tuple(int(x) for x in step) for step in path], time_s=elapsed, drain_s=drain)


def drain_pool(pool: Any, timeout_s: float = 600.0) -> float | None:
    """Wait (untimed) until ``pool`` has no work left; return how long that took.

    When its time is up, ``HyperOptimizer`` cancels the queued trials but returns while the trials already
    running in its workers go on. Left alone they would keep both cores busy during the next planner's
    run, so the benchmark waits for them here. Works for ``concurrent.futures`` process pools (the default
    without loky); for other pools it does nothing and returns None.
    """
    pending = getattr(pool, "_pending_work_items", None)
    if pending is None:
        return None
    t0 = time.perf_counter()
    while pending and time.perf_counter() - t0 < timeout_s:
        time.sleep(0.01)
    return time.perf_counter() - t0


def plan_ctg_optimal(problem: Problem) -> Planned:
    from cotengra.pathfinders.path_basic import optimize_optimal

    inputs, output, size_dict = problem
    t0 = time.perf_counter()
    path = optimize_optimal(list(inputs), list(output), dict(size_dict), minimize="flops")
    elapsed = time.perf_counter() - t0
    return Planned(path=[tuple(int(x) for x in step) for step in path], time_s=elapsed)


def warm_up_cotengra() -> None:
    """Start cotengra's default worker pool (as any long-lived user process would have it)."""
    import cotengra as ctg

    opt = ctg.HyperOptimizer(max_repeats=4)
    opt([("a", "b"), ("b", "c"), ("c", "d")], ["a", "d"], {"a": 2, "b": 3, "c": 4, "d": 5})


def cotengra_defaults() -> str:
    """A one-line description of what ``HyperOptimizer()`` resolves to on this machine."""
    import cotengra as ctg

    opt = ctg.HyperOptimizer()
    pool = getattr(opt, "_pool", None)
    workers = getattr(opt, "_num_workers", None) if pool is not None else None
    pool_desc = f"{type(pool).__module__}.{type(pool).__name__} with {workers} workers" if pool else "no pool"
    return (
        f"methods={list(opt._methods)}, optlib={type(opt._optimizer).__name__}, max_repeats={opt.max_repeats}, "
        f"parallel={opt.parallel!r} ({pool_desc}), minimize={opt.minimize!r}"
    )


# ---------------------------------------------------------------------------------------------- hard timeouts

CHILD_MEMORY_FRACTION = 0.6  # an exact planner may use this share of physical memory before MemoryError


def _limit_memory() -> None:
    try:
        import os
        import resource

        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        limit = int(total * CHILD_MEMORY_FRACTION)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, OSError, ValueError):
        pass


_CHILD_FNS: dict[str, Callable[[Problem], Planned]] = {
    "oe-dp": lambda problem: plan_oe("oe-dp", problem),
    "ctg-optimal": plan_ctg_optimal,
}


def _child(method: str, problem: Problem, conn: Any) -> None:
    try:
        planned = _CHILD_FNS[method](problem)
        conn.send(("ok", planned.path, planned.time_s))
    except BaseException as exc:  # report anything, including MemoryError, to the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}", None))
    finally:
        conn.close()


def _wait(conn: Any, seconds: float, should_stop: Callable[[], bool]) -> bool:
    """``conn.poll(seconds)`` in short slices; raise KeyboardInterrupt as soon as ``should_stop()``."""
    deadline = time.perf_counter() + seconds
    while True:
        left = deadline - time.perf_counter()
        if conn.poll(max(0.0, min(0.25, left))):
            return True
        if should_stop():
            raise KeyboardInterrupt
        if left <= 0:
            return False


def plan_in_child(
    method: str,
    problem: Problem,
    timeout_s: float = HARD_TIMEOUT_S,
    should_stop: Callable[[], bool] = lambda: False,
) -> Planned:
    """Run an exact planner in a spawned process; kill it and raise :class:`PlannerTimeoutError` after ``timeout_s``.

    The time limit covers the search only: the wait starts after the child has imported its libraries
    (signalled by its first message), and the recorded time is measured inside the child. The child
    ignores SIGINT; when ``should_stop()`` turns true the child is killed and KeyboardInterrupt raised.
    """
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_entry, args=(method, problem, child), daemon=True)
    proc.start()
    child.close()
    try:
        if not _wait(parent, 120.0, should_stop):  # imports only; generous
            raise RuntimeError("exact planner child did not start within 120 s")
        msg = parent.recv()
        if msg != "ready":
            raise RuntimeError(f"unexpected message from child: {msg!r}")
        if not _wait(parent, timeout_s, should_stop):
            raise PlannerTimeoutError(f"no result within {timeout_s:g} s")
        status, payload, elapsed = parent.recv()
    except EOFError:
        raise RuntimeError(f"exact planner child died (exit code {proc.exitcode})") from None
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(10.0)
        parent.close()
    if status != "ok":
        raise RuntimeError(payload)
    return Planned(path=[tuple(step) for step in payload], time_s=float(elapsed))


def _child_entry(method: str, problem: Problem, conn: Any) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    _limit_memory()
    # Import the planner libraries before starting the clock the parent waits on.
    import cotengra.pathfinders.path_basic  # noqa: F401
    import opt_einsum  # noqa: F401

    conn.send("ready")
    _child(method, problem, conn)
