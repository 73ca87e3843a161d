"""``tnplan.plan``: choose a contraction tree (and slicing) for a network.

The search is a pipeline of small stages, each deterministic for a given seed:

1. trivial networks (<= 3 tensors) are enumerated directly, without touching numba or kahypar;
2. a greedy tree gives a first bound;
3. for up to 40 tensors (64 with a budget of 10 s or more), a short heuristic round tightens the
   bound and exact DP over connected sub-networks (:mod:`tnplan.optimal`) runs within a share of the
   budget; when it completes the plan is proven optimal;
4. otherwise a portfolio of trials — KaHyPar recursive partitioning with sampled parameters
   (:mod:`tnplan.partition`), variable elimination (:mod:`tnplan.eliminate`) and randomised greedy
   (:mod:`tnplan.greedy`; each greedy trial screens several cheap raw trees), each quickly refined —
   keeps the best few trees; later KaHyPar and greedy trials sample around the best parameters
   found so far;
5. each of the best few trees climbs a ladder of subtree sizes, re-solving subtrees exactly
   (:mod:`tnplan.tree`) and re-bracketing its whole leaf order by interval DP (:mod:`tnplan.interval`)
   on every rung; the best climbs further; time left over goes back to trials and then to refining
   what they found;
6. with a memory cap every trial is scored sliced (:mod:`tnplan.slicing`), and the most promising
   cuts are fixed while the search runs again around them.

Every candidate is compared with the same float objective; the returned plan is scored by
:func:`tnplan.cost.score_path`.
"""

from __future__ import annotations

import math
import numbers
import time
import warnings
from dataclasses import dataclass, field, replace
from os import PathLike
from typing import TYPE_CHECKING

import numpy as np

from tnplan.cache import CacheOptions, CacheWarning, PlanCache
from tnplan.cache import resolve as resolve_cache
from tnplan.cost import (
    OBJECTIVES,
    input_elements,
    itemsize,
    leaf_legs,
    legs_path_cost,
    over_slices,
    rank_key,
    score_path,
)
from tnplan.errors import PlanError
from tnplan.network import Network
from tnplan.plan import Plan

if TYPE_CHECKING:
    from tnplan.tree import Tree

# Trials run when no max_time is given (a deterministic effort), and the time cap in that case.
DEFAULT_REPEATS = 24
EXACT_MAX_TENSORS = 64
TOP_K = 3
# Rounds of fixing one more cut of the best sliced plan and searching around it, and the share of the
# time after the first sliced round that goes to the cut sets found there (the rest is for deepening).
MAX_DEEPENING = 8
SPREAD_SHARE = 0.5
# Share of the budget for search trials before the best trees are refined; of any time left after
# refining, the share that goes back to trials.
TRIAL_SHARE = 0.65
TRIAL_SHARE_AFTER = 0.5
# Subtree sizes every kept tree is re-solved with, then the best tree alone.
LADDER = (9, 12, 16)
DEEP_LADDER = (20, 24)
# After its cost-first pass every trial tree is re-solved over breadth-first subtrees of this many
# tensors until a pass changes nothing (at most BFS_PASSES): a greedy tree merges big pieces late, and
# the cost-first frontier under such a merge digs down one branch. On cubic_6x6x10 this took greedy
# trials from 10^23-10^34 to 10^18-10^21 flops and the 5 s plan (median of 3 seeds) from 10^19.7 to
# 10^18.4 in the benchmark; subtrees of 8 or 10 ran fewer trials in the budget and did no better.
BFS_SUBTREE = 6
BFS_PASSES = 16
# How the ladder's rungs grow the subtrees they re-solve (see Tree._frontier).
RUNG_EXPANDS = ("cost", "leaves", "bfs")
# A tree this many times dearer than the best after a rung of the ladder stops climbing.
LADDER_KEEP = 4.0
# Interval-DP re-bracketing (O(n^3)) is used by trials when one costs at most this share of the
# search's whole budget, and by refinement under the larger share: on a 381-tensor circuit one
# re-bracketing (60 ms) cuts the flops 10x, so refinement affords it from 1 s budgets on.
REBRACKET_TRIAL_SHARE = 0.02
REBRACKET_DEEP_SHARE = 0.1


# Without max_time the effort is a trial count, and the clock only guards against a runaway search:
# every choice is sized from the nominal budget below, the search may run this many times longer
# before the guard stops it, and on any machine up to that much slower the plan is the same.
FIXED_EFFORT_GUARD = 10.0
# A search under a memory cap re-solves its trees after every cut and searches each cut set again: its
# fixed effort runs 4-6x its nominal budget on the benchmark machine, so its guard is this much longer
# for the plan to stay the same on a machine several times slower.
SLICED_GUARD_FACTOR = 4.0


# When this process imported the planner (wall clock): a worker started after a search was submitted
# is not charged its own start-up (see _search_task).
_IMPORTED_AT = time.time()


def _effort(num_tensors: int, max_time: float | None, max_repeats: int | None) -> float:
    """The search effort a request asks for, in (nominal) seconds, as the cache records and compares it.

    A fixed-effort search counts as its nominal budget (scaled by its trial count), so a plan stored
    by a short ``max_time`` search never answers a request without one.
    """
    if max_time is not None:
        return float(max_time)
    repeats = DEFAULT_REPEATS if max_repeats is None else max_repeats
    return default_time_cap(num_tensors) * repeats / DEFAULT_REPEATS


def default_time_cap(num_tensors: int) -> float:
    """Nominal budget of a search without ``max_time``: grows with the network, 1 s to 60 s.

    It sizes the fixed effort's choices (exact-search work, phase shares) in place of the clock; the
    wall-clock guard is :data:`FIXED_EFFORT_GUARD` times longer.
    """
    return float(min(60.0, max(1.0, 0.05 * num_tensors)))


@dataclass
class _Candidate:
    cost: float
    ssa: list[tuple[int, int]]
    method: str
    sliced: tuple[int, ...] = ()


@dataclass(frozen=True)
class _Budget:
    """How long a search, or one phase of it, may run.

    A time-bound search (``max_time`` given) runs until ``deadline`` and sizes its phases from the
    time left. A fixed-effort search (no ``max_time``) stops after its trial counts: its phases are
    sized from ``seconds``, a nominal length, never from the clock, so a slower or busier machine
    gives the same plan; its ``deadline`` only guards against a runaway search.
    """

    deadline: float
    seconds: float
    fixed: bool = False

    def left(self) -> float:
        """Seconds left: nominal for a fixed effort, by the clock otherwise."""
        return self.seconds if self.fixed else max(0.0, self.deadline - time.perf_counter())

    def sub(self, seconds: float) -> _Budget:
        """A phase of ``seconds`` from now."""
        if self.fixed:
            return _Budget(self.deadline, seconds, True)
        return _Budget(min(self.deadline, time.perf_counter() + seconds), seconds)

    def spend(self, phase: _Budget) -> _Budget:
        """What is left once ``phase`` has run (the clock keeps that account for a time-bound search)."""
        return _Budget(self.deadline, max(0.0, self.seconds - phase.seconds), True) if self.fixed else self

    def over(self) -> bool:
        return time.perf_counter() >= self.deadline


@dataclass
class _Searched:
    """A plan found by searching around fixed cuts: its own extra cuts are what deepening may fix next."""

    cand: _Candidate
    fixed: tuple[int, ...]
    tried: set[int] = field(default_factory=set)

    def untried(self) -> list[int]:
        """Extra cuts of the plan (beyond the fixed ones) not fixed by deepening yet."""
        return [i for i in self.cand.sliced if i not in self.fixed and i not in self.tried]


@dataclass
class _Pool:
    """The best few distinct trees found so far."""

    minimize: str
    items: list[_Candidate] = field(default_factory=list)

    def offer(self, cand: _Candidate) -> bool:
        if any(c.ssa == cand.ssa and c.sliced == cand.sliced for c in self.items):
            return False
        self.items.append(cand)
        self.items.sort(key=lambda c: c.cost)
        del self.items[TOP_K:]
        return self.items[0] is cand

    @property
    def best(self) -> _Candidate:
        return self.items[0]


def _is_real(value: object) -> bool:
    """A real number (Python or numpy), not a bool and not NaN."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)


def _is_int(value: object) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_seed(seed: object) -> None:
    """Refuse a seed numpy's generators cannot take (they need an integer >= 0).

    Raises:
        PlanError: Naming the seed.
    """
    if not (_is_int(seed) and seed >= 0):  # type: ignore[operator]
        raise PlanError(f"seed must be an integer >= 0, got {seed!r}")


def plan(
    network: Network,
    *,
    minimize: str = "flops",
    memory_limit: int | None = None,
    max_size: int | None = None,
    dtype: str = "float64",
    max_time: float | None = None,
    max_repeats: int | None = None,
    seed: int = 0,
    cache: bool | str | PathLike | PlanCache | None = True,
    cache_only: bool = False,
    refine: bool = False,
    workers: int = 1,
    executor: str | None = None,
) -> Plan:
    """Find a cost-minimal contraction plan for ``network``.

    Plans are looked up in and stored to the plan cache (:class:`~tnplan.cache.PlanCache`) by
    default: a network that differs from a stored one only by tensor order, index order or index
    names gets the stored plan mapped to its own numbering, verified, with
    ``plan.cache_status == "hit"``. Networks of up to 3 tensors bypass the cache (``"off"``): they
    are enumerated exactly faster than a lookup. A stored plan is used when it came from at least ``max_time``
    seconds of search; otherwise the search runs and the better of the two plans is kept.

    Args:
        network: The tensor network.
        minimize: ``"flops"``, ``"size"``, ``"write"`` or ``"combo"`` (flops + 64 * write).
        memory_limit: Bytes that may be alive at once (inputs included) for ``dtype``; indices are
            sliced until the plan fits.
        max_size: Largest intermediate allowed per slice, in elements (cotengra's ``target_size``).
        dtype: Element type used to convert ``memory_limit`` to elements.
        max_time: Seconds to search; the best plan found by then is returned. ``None`` runs a fixed,
            deterministic effort (``max_repeats`` trials, each phase sized from
            :func:`default_time_cap`, never from the clock), so the plan does not depend on the
            machine's speed or load; it takes about that long (up to ~2x on 400–900-tensor
            networks, ~4.7x on the 50-tensor hyperedge network rand_50_5_a, 11.7 s against 2.5 s, whose
            exact refinement of subtrees is not sized by the budget, and ~4x when a memory cap needs
            many cuts: an 80-tensor 3-regular graph cut 14 times took 17.6 s against 4 s, each cut set
            being searched again), and a guard stops it
            at :data:`FIXED_EFFORT_GUARD` times that (times :data:`SLICED_GUARD_FACTOR` under a cap).
            Give ``max_time`` to bound the wall time (a capped search overruns it by at most one
            slicing of its first tree). The first
            search in a process also loads numba's compiled kernel (~0.7 s) before the budget
            starts; ``plan.planning_time`` includes it.
        max_repeats: Number of search trials; with ``max_time`` given the default is unlimited.
        seed: Seed of every random choice; the same inputs and seed give the same plan. The seed is
            part of the cache key.
        cache: ``True`` for the default cache file (``$TNPLAN_CACHE_DIR/plans.sqlite`` or the
            platform cache directory), ``False`` for none, a path or a ``PlanCache`` for another.
        cache_only: Never search: return the cached plan whatever its effort, or raise
            :class:`~tnplan.errors.PlanError` on a miss (for machines without kahypar).
        refine: Search again from the cached plan with this budget and keep the better plan.
        workers: Independent search processes; the result is deterministic for a given seed and
            worker count (without ``max_time``).
        executor: ``None``/``"local"`` for processes on this machine, or ``"dask://HOST:PORT"`` to
            run the searches on a Dask distributed cluster.

    Returns:
        The :class:`~tnplan.plan.Plan`.

    Raises:
        PlanError: On an unknown objective, a non-positive budget, an unreachable memory limit (or
            one no slicing found in the time allowed meets), or a cache miss with ``cache_only``.
    """
    start = time.perf_counter()
    if not isinstance(network, Network):
        raise PlanError(
            f"plan() needs a tnplan.Network, got {type(network).__name__}; build one with Network.from_einsum"
        )
    if minimize not in OBJECTIVES:
        raise PlanError(f"unknown objective {minimize!r}; choose one of {', '.join(OBJECTIVES)}")
    if max_time is not None and not (_is_real(max_time) and 0 < max_time < math.inf):
        raise PlanError(f"max_time must be a finite number of seconds > 0, got {max_time!r}")
    if max_repeats is not None and not (_is_int(max_repeats) and max_repeats >= 1):
        raise PlanError(f"max_repeats must be an integer >= 1, got {max_repeats!r}")
    item_bytes = itemsize(dtype)
    for name, value, least in (("memory_limit", memory_limit, 1), ("max_size", max_size, 1)):
        if value is not None and not (_is_real(value) and least <= value < math.inf):
            raise PlanError(f"{name} must be a finite number >= {least}, got {value!r}")
    check_seed(seed)
    if not (_is_int(workers) and workers >= 1):
        raise PlanError(f"workers must be a positive integer, got {workers!r}")
    store = resolve_cache(cache)
    if (cache_only or refine) and store is None:
        raise PlanError(f"{'cache_only' if cache_only else 'refine'}=True needs a plan cache; do not pass cache=False")
    if network.num_tensors <= 3:
        # Enumerated exactly in microseconds, with no search code: a cache lookup would cost more.
        store = None
    options = CacheOptions(
        minimize=minimize,
        memory_limit=None if memory_limit is None else int(memory_limit),
        max_size=None if max_size is None else int(max_size),
        itemsize=item_bytes,
        seed=int(seed),
    )
    dtype_name = str(np.dtype(dtype))
    effort = _effort(network.num_tensors, max_time, max_repeats)
    cached = None
    # The default cache is a convenience: where it cannot be used (a read-only home, a full disk), the
    # plan is made without it. A cache the caller named, or one cache_only/refine needs, must work.
    optional = (cache is True or cache is None) and not (cache_only or refine)
    if store is not None:
        try:
            found = store.lookup(network, options, min_effort=effort)
        except PlanError as exc:
            if not optional:
                raise
            _skip_cache(exc)
            store = found = None
        if found is not None:
            cached, enough = found  # a plan short of the effort asked for still seeds the search
            if (enough or cache_only) and not refine:
                return cached if cached.dtype == dtype_name else replace(cached, dtype=dtype_name)
        elif cache_only:
            raise PlanError(
                f"no cached plan for this {network.num_tensors}-tensor network with {options.text()} in "
                f"{store.path}; plan it where kahypar is installed, then `tnplan cache export` / `tnplan cache import`"
            )

    if network.num_tensors > 3:
        from tnplan.optimal import compiling, kernel_ready

        # Loading numba and the compiled exact-search kernel (~0.7 s, once per process) is not
        # search: it happens before the budget starts. Without a budget, results must not depend
        # on whether numba had compiled yet, so that case waits for a compilation too.
        if not kernel_ready(block=max_time is None) and compiling():
            # This search runs without the exact kernel, which is still compiling in the background: its
            # plan may be unproven where the next search of the same budget proves one, so it is stored
            # as the least effort (any later request searches again).
            effort = 0.0
    begin, start = start, time.perf_counter()
    fixed = max_time is None
    if fixed:
        budget = default_time_cap(network.num_tensors)
        repeats = max_repeats if max_repeats is not None else DEFAULT_REPEATS
    else:
        budget = float(max_time)
        repeats = max_repeats if max_repeats is not None else 1 << 30
    slicing = memory_limit is not None or max_size is not None
    wall = FIXED_EFFORT_GUARD * (SLICED_GUARD_FACTOR if slicing else 1.0) * budget if fixed else budget
    deadline = start + wall
    # With a memory cap the search slices as it goes; the last 10% is kept for a fallback slicing
    # pass in case the memory limit (which also counts live inputs) is not met.
    share = 0.9 if slicing else 1.0
    search_deadline = start + share * wall

    legs = leaf_legs(network)
    output = network.int_output
    sizes = [float(s) for s in network.int_sizes]
    target = size_target(network, memory_limit, max_size, dtype)
    seeds = [] if cached is None else [list(cached.ssa_path)]
    budgets = (share * budget, search_deadline - time.perf_counter(), fixed)  # (nominal, left, fixed effort)
    ssa, sliced, optimal, method, unsliced, unsliced_optimal = _search_workers(
        (legs, output, sizes, minimize, budgets, repeats, seed, target, seeds), workers, executor
    )

    unsliced_flops = None
    if slicing:
        from tnplan.slicing import fits, slice_tree

        limit = None if memory_limit is None else int(memory_limit) // item_bytes
        best_unsliced = score_path(network, unsliced)
        if sliced and fits(network, ssa, (), memory_limit=limit, max_size=max_size):
            sliced = ()  # the search aims below the caps (size_target); this tree fits them whole
        elif (
            sliced
            and fits(network, unsliced, (), memory_limit=limit, max_size=max_size)
            and best_unsliced.objective(minimize) <= score_path(network, ssa, sliced).objective(minimize)
        ):
            ssa, sliced = list(unsliced), ()  # the best tree fits whole: slicing it would only add work
        # The unsliced optimum that fits the caps is optimal under them too: slicing never lowers flops,
        # writes or combo (it may lower a slice's peak, so not for "size").
        whole = score_path(network, ssa)
        proven = unsliced_optimal and whole.objective(minimize) <= best_unsliced.objective(minimize)
        if not sliced and proven and minimize != "size":
            optimal, method = True, "optimal"
        if not fits(network, ssa, sliced, memory_limit=limit, max_size=max_size):
            ssa, sliced = slice_tree(
                network,
                unsliced,
                minimize=minimize,
                memory_limit=limit,
                max_size=max_size,
                deadline=deadline,
                seed=seed,
                attempts=64 if max_time is not None else 8,
            )
            whole = score_path(network, ssa)
        # The baseline of slicing_overhead: the cheaper of the best unsliced tree the search kept and
        # the returned tree whole (sliced flops are never below the same tree's, so overhead >= 1).
        unsliced_flops = min(best_unsliced.flops, whole.flops)
        if sliced:
            optimal = False
    costs = score_path(network, ssa, sliced)
    result = Plan(
        network=network,
        ssa_path=tuple(ssa),
        sliced=tuple(sliced),
        costs=costs,
        minimize=minimize,
        optimal=optimal,
        planning_time=time.perf_counter() - begin,
        method=method,
        dtype=dtype_name,
        unsliced_flops=unsliced_flops,
        cache_status="off" if store is None else "miss",
    )
    if store is None:
        return result
    old_rank = None if cached is None else rank_key(cached.costs.objective(minimize), cached.flops, minimize)
    new_rank = rank_key(costs.objective(minimize), costs.flops, minimize)
    if old_rank is not None and (old_rank < new_rank or (old_rank == new_rank and cached.optimal >= optimal)):
        # The stored plan is cheaper, or as cheap and as proven: keep it (and record the longer search behind it).
        result = replace(cached, dtype=dtype_name, cache_status="miss", planning_time=result.planning_time)
    try:
        store.put(result, options, effort=effort)
    except PlanError as exc:
        if not optional:
            raise
        _skip_cache(exc)
    return result


def _skip_cache(exc: PlanError) -> None:
    warnings.warn(f"planning without the default plan cache: {exc}", CacheWarning, stacklevel=3)


def _search_workers(args: tuple, workers: int, executor: str | None):
    """Run :func:`_search` in ``workers`` independent processes (or in this one) and keep the best.

    Worker ``k`` searches with its own seed; only worker 0 tries the exact search (the others
    would repeat it). Results are reduced in worker order, so ties resolve the same way every time.
    """
    if workers == 1 and executor in (None, "local"):
        return _search_task((*args, True))[1]
    from tnplan.parallel import run_tasks

    legs, output, sizes, minimize, budget, repeats, seed, target, seeds = args
    per_worker = repeats if repeats >= 1 << 30 else max(1, -(-repeats // workers))
    # The caller's deadline on the wall clock too: a task that waits in a cluster's queue behind the
    # others must share the budget, not start a whole one late (4 tasks on 1 slot took 4x max_time).
    now = time.time()
    budget = (*budget, now + budget[1], now)
    tasks = [
        (legs, output, sizes, minimize, budget, per_worker, seed if k == 0 else seed * 7919 + 104729 * k,
         target, seeds, k == 0)
        for k in range(workers)
    ]  # fmt: skip
    results = run_tasks(_search_task, tasks, workers=workers, executor=executor)
    best = min(range(workers), key=lambda k: (results[k][0], k))
    return results[best][1]


def _search_task(task: tuple):
    """One search (picklable, for worker processes): ``(cost, _search result)``.

    The budget travels as ``(nominal, left, fixed)`` seconds, not as a deadline: clocks differ between
    machines. Tasks sent to worker processes also carry the caller's deadline on the wall clock, so a
    task that waited in a queue gets only what is left of the budget. The exact search sizes its work
    from the nominal budget, so that runs without ``max_time`` do not depend on how long the set-up
    took; ``fixed`` marks such a run (see :class:`_Budget`).
    """
    legs, output, sizes, minimize, (nominal, left, fixed, *wall), repeats, seed, target, seeds, exact = task
    if wall:  # a worker process (local pool or Dask), possibly fresh, possibly queued
        from tnplan.optimal import kernel_ready

        # Loading numba's cached kernels (~0.7 s in a new process) is not charged to the budget, as in
        # the caller's process; without it the exact search and refinement sit the search out.
        loading = time.perf_counter()
        kernel_ready()
        loading = time.perf_counter() - loading
        if not fixed:
            # Cluster clocks agree to milliseconds (NTP); a skewed one only moves this task's share. A
            # process started (and tnplan imported) after the caller set the deadline — a fresh spawned
            # pool, a Dask worker's first task — is credited that start-up, as the load above: only time
            # spent waiting behind other tasks comes out of the budget.
            deadline, submitted = wall
            startup = max(0.0, _IMPORTED_AT - submitted)
            left = min(left, deadline - time.time() + loading + startup)
    budget = _Budget(time.perf_counter() + max(left, 0.0), nominal, fixed)
    result = _search(legs, output, sizes, minimize, budget, repeats, seed, target, seeds, exact)
    ssa, sliced = result[0], result[1]

    return _sliced_cost(legs, output, sizes, ssa, tuple(sliced), minimize), result


def size_target(network: Network, memory_limit: int | None, max_size: int | None, dtype: str) -> float | None:
    """Largest intermediate (elements) a search should aim for under the caps; None when uncapped.

    Shared with the cotengra anchor, so that both planners aim at the same size under a memory limit.

    Raises:
        PlanError: If the input tensors alone do not fit in ``memory_limit`` (no slicing can help).
    """
    if memory_limit is None and max_size is None:
        return None
    target = float(max_size) if max_size is not None else math.inf
    if memory_limit is not None:
        item_bytes = itemsize(dtype)
        inputs = input_elements(network)
        if inputs * item_bytes >= memory_limit:
            raise PlanError(
                f"memory_limit is {int(memory_limit)} bytes but the input tensors alone hold {inputs * item_bytes} "
                f"bytes of {np.dtype(dtype).name}; raise the limit (slicing only shrinks intermediates)"
            )
        # A few intermediates are alive at once next to the inputs; aim at a third of what is left.
        target = min(target, max(1.0, (memory_limit // item_bytes - inputs) / 3.0))
    return target


def _search(
    legs: list[tuple[int, ...]],
    output: frozenset[int],
    sizes: list[float],
    minimize: str,
    budget: _Budget,
    repeats: int,
    seed: int,
    target: float | None = None,
    seeds: list[list[tuple[int, int]]] | None = None,
    exact: bool = True,
) -> tuple[list[tuple[int, int]], tuple[int, ...], bool, str, list[tuple[int, int]], bool]:
    """(best tree, its sliced ids, proven optimal, method, best unsliced tree, that tree proven optimal).

    With ``target`` every trial is scored as it will run: sliced to the cap and re-optimised under it.
    ``seeds`` are trees to start from (a cached plan being refined); ``exact=False`` skips the exact
    search (parallel workers other than the first).
    """
    n = len(legs)
    if n <= 3:
        path = _enumerate(legs, output, sizes, minimize)
        return path, (), True, "enumerate", path, True

    from tnplan.greedy import greedy_ssa
    from tnplan.tree import Tree

    def cost(path: list[tuple[int, int]]) -> float:
        return _sliced_cost(legs, output, sizes, path, (), minimize)

    pool = _Pool(minimize)
    unsliced = _Pool(minimize)
    greedy = greedy_ssa(legs, output, sizes)
    # Every evaluation stops re-optimising at the deadline: slicing a large tree to a cap re-solves it
    # after each cut, which alone can take seconds.
    end = budget.deadline
    pool.offer(_evaluate(legs, output, sizes, minimize, greedy, "greedy", target, unsliced, end))
    for path in seeds or ():
        pool.offer(_evaluate(legs, output, sizes, minimize, [tuple(p) for p in path], "cached", target, unsliced, end))

    optimum = None  # the proven optimal cost of an unsliced tree, where the exact search completed
    if exact and _exact_feasible(legs, budget.seconds):
        # A short heuristic round first (past 16 tensors): the exact search's final cost cap is
        # the best cost known, and a tight cap is worth far more than the time it takes.
        pre = _Pool(minimize)
        pre.offer(_Candidate(cost(greedy), greedy, "greedy"))
        for path in seeds or ():
            pre.offer(_Candidate(cost([tuple(p) for p in path]), [tuple(p) for p in path], "cached"))
        if n > 16:
            first = budget.sub(min(0.15 * budget.left(), 0.005 * n))
            _portfolio(legs, output, sizes, minimize, pre, cost, first, max(1, repeats // 4), seed + 7919)
        exact = _try_exact(legs, output, sizes, minimize, pre.best.cost, budget.seconds)
        if exact is not None:
            if target is None or Tree(legs, output, sizes, exact).peak_size() <= target:
                return exact, (), True, "optimal", exact, True
            optimum = cost(exact)
            pool.offer(_evaluate(legs, output, sizes, minimize, exact, "optimal", target, unsliced, end))
        for cand in pre.items:
            pool.offer(_evaluate(legs, output, sizes, minimize, cand.ssa, cand.method, target, unsliced, end))

    if target is None:
        best = _portfolio(legs, output, sizes, minimize, pool, cost, budget, repeats, seed)
    else:
        best = _sliced_search(legs, output, sizes, minimize, pool, cost, budget, repeats, seed, target, unsliced)
    whole = unsliced.best if unsliced.items else None
    # Where the exact search's tree was over the target, an unsliced tree of its cost is an optimum too.
    proven = whole is not None and optimum is not None and whole.cost <= optimum
    return best.ssa, best.sliced, False, best.method, (whole.ssa if whole else best.ssa), proven


def _sliced_search(
    legs,
    output,
    sizes,
    minimize,
    pool: _Pool,
    cost,
    budget: _Budget,
    repeats: int,
    seed: int,
    target: float,
    unsliced: _Pool,
) -> _Candidate:
    """Search under a size cap: find good trees and their cuts, then re-search each promising cut.

    A first round scores every trial sliced to the cap. Each distinct set of cuts among the best
    trials is then fixed (its indices given size 1) and the whole search runs again on that
    network, so the tree is rebuilt around the cuts instead of merely sliced; any extra cuts the
    new trees need are added per trial. With the second half of the time, the cheapest plan that
    still needed extra cuts gets the cheapest of them not yet tried on it fixed as well and is
    searched again, round after round (:data:`MAX_DEEPENING`).
    """
    from tnplan.tree import Tree

    first = budget.sub(0.4 * budget.left())
    # Phase 1: the best unsliced tree (cuts cost least on a tree that is good to begin with).
    for cand in pool.items:
        unsliced.offer(_Candidate(cost(cand.ssa), cand.ssa, cand.method))
    _portfolio(legs, output, sizes, minimize, unsliced, cost, first, max(1, repeats // 3), seed)
    budget = budget.spend(first)
    for cand in unsliced.items:
        pool.offer(_evaluate(legs, output, sizes, minimize, cand.ssa, cand.method, target, None, budget.deadline))
    cut_sets: list[tuple[int, ...]] = []
    seeds: list[_Candidate] = []
    for cand in pool.items:
        if cand.sliced and cand.sliced not in cut_sets:
            cut_sets.append(cand.sliced)
            seeds.append(cand)
    if unsliced.items:
        # Single cuts that cost the best unsliced tree least (S_c + d (T - S_c)) are also worth a
        # search of their own: the greedy cut sequence above can miss them.
        from tnplan.slicing import cheapest_cuts

        base = unsliced.best
        for c in cheapest_cuts(Tree(legs, output, sizes, base.ssa), target, 3):
            if (c,) not in cut_sets:
                cut_sets.append((c,))
                seeds.append(base)
    # Every candidate with the cuts its search had fixed (the rest of its cuts its trials added) and the
    # extra cuts deepening has tried on it. Kept per candidate, not per cut set: searches around
    # different cuts often end on the same set, and a set first searched whole would otherwise mark
    # them all as having nothing left to fix.
    results = [_Searched(c, ()) for c in pool.items]

    def search_around(cuts: tuple[int, ...], seed_cand: _Candidate, phase: _Budget, k: int) -> None:
        cut_sizes = _cut_sizes(sizes, cuts)
        sub = _Pool(minimize)
        sub.offer(
            _evaluate(legs, output, cut_sizes, minimize, seed_cand.ssa, seed_cand.method, target, None, phase.deadline)
        )

        def sub_cost(path: list[tuple[int, int]], _sizes: list[float] = cut_sizes) -> float:
            return _sliced_cost(legs, output, _sizes, path, (), minimize)

        found = _portfolio(
            legs, output, cut_sizes, minimize, sub, sub_cost, phase, max(1, repeats // 3), seed + 1 + k, target, None
        )
        merged = tuple(sorted(set(cuts) | set(found.sliced)))
        cost = _sliced_cost(legs, output, sizes, found.ssa, merged, minimize)
        cand = _Candidate(cost, found.ssa, found.method + "+cut", merged)
        results.append(_Searched(cand, cuts))
        pool.offer(cand)

    # The cut sets found so far get a share of the time left, deepening the rest.
    spread = budget.sub(SPREAD_SHARE * budget.left())
    budget = budget.spend(spread)
    for k, (cuts, seed_cand) in enumerate(zip(cut_sets, seeds, strict=True)):
        if spread.over():
            break
        phase = spread.sub(spread.left() / (len(cut_sets) - k))
        search_around(cuts, seed_cand, phase, k)
        spread = spread.spend(phase)
    # Deepening: the cheapest plan whose trials still added cuts of their own to the fixed ones gets the
    # cheapest of those not tried on it yet fixed too, and the search runs again so the tree is rebuilt
    # around it (on the 32-site closed MERA sliced to 14 bits, a few rounds take one cut's plan from
    # ~20x to ~5x). A plan stays open until every extra cut of it has been tried: the searches often
    # return the same cut set, and the next cut of the same plan is then a better bet than a dearer plan.
    from tnplan.slicing import cut_costs

    searched = set(cut_sets)
    rounds = 0
    while rounds < MAX_DEEPENING:
        open_ = [r for r in results if r.untried()]
        if budget.over() or not open_:
            break
        chosen = min(open_, key=lambda r: r.cand.cost)
        extra = chosen.untried()
        _cost, c = min(cut_costs(Tree(legs, output, _cut_sizes(sizes, chosen.fixed), chosen.cand.ssa), extra))
        chosen.tried.add(c)
        cuts = tuple(sorted((*chosen.fixed, c)))
        if cuts in searched:
            continue  # a candidate that leads where a search has been costs no round
        searched.add(cuts)
        phase = budget.sub(budget.left() / len(extra))
        search_around(cuts, chosen.cand, phase, len(cut_sets) + rounds)
        budget = budget.spend(phase)
        rounds += 1
    return pool.best


def _enumerate(legs, output, sizes, minimize) -> list[tuple[int, int]]:
    from itertools import combinations

    n = len(legs)
    if n == 1:
        return []
    if n == 2:
        return [(0, 1)]
    options = [[(a, b), (3 - a - b, 3)] for a, b in combinations(range(3), 2)]
    return min(options, key=lambda p: _sliced_cost(legs, output, sizes, p, (), minimize))


def _exact_feasible(legs, budget: float) -> bool:
    """Exact search up to 40 tensors; up to 64 only with a budget of 10 s or more, because past 40
    tensors it rarely completes in less and the heuristics need the time."""
    from tnplan.optimal import ALL_TREES_MAX_TENSORS, MAX_TENSORS, _connected

    if len(legs) <= ALL_TREES_MAX_TENSORS:
        return True  # every tree is searched, connected or not
    limit = min(EXACT_MAX_TENSORS, MAX_TENSORS) if budget >= 10.0 else 40
    return len(legs) <= limit and _connected(legs)


def _try_exact(legs, output, sizes, minimize, upper, seconds: float) -> list[tuple[int, int]] | None:
    """Run the exact search within a share of the budget; the SSA path when it completes.

    Networks whose cost sits in their last contractions (large results) first get a top-down
    branch and bound (:mod:`tnplan.topdown`) with half of that share; the bottom-up DP gets the rest.
    """
    from tnplan import topdown
    from tnplan.optimal import ALL_TREES_MAX_TENSORS, PAIRS_PER_SECOND, kernel_ready, solve_all_trees, solve_legs

    if not kernel_ready():
        return None  # still compiling in the background: a compilation must not eat the budget

    n = len(legs)
    if n <= ALL_TREES_MAX_TENSORS:
        # Milliseconds, and the connected-only search below can miss a cheaper tree with an outer product.
        path = solve_all_trees(legs, output, sizes, minimize)
        if path is not None:
            return path
    # The work budget derives from the whole (nominal) budget, not the time left, so that runs
    # without an explicit max_time stay deterministic. Small networks get most of it; larger ones a
    # quarter, because when the exact search fails the heuristic search still needs time.
    share = 0.8 if n <= 40 else 0.25
    max_work = int(max(seconds, 0.0) * share * PAIRS_PER_SECOND)
    if max_work <= 0:
        return None
    if minimize in topdown.OBJECTIVES and topdown.top_heavy(legs, output, sizes, upper):
        steps = int(0.5 * max_work * topdown.STEPS_PER_SECOND / PAIRS_PER_SECOND)
        path, _cost, used = topdown.solve_topdown(legs, output, sizes, minimize, upper * (1 + 1e-9), steps)
        if path is not None:
            return path
        max_work -= int(used * PAIRS_PER_SECOND / topdown.STEPS_PER_SECOND)
    path, _work = solve_legs(legs, output, sizes, minimize, upper=upper, max_work=max_work)
    return path


# Discrete parameter space of the KaHyPar driver; trials first sample it uniformly, then mostly
# around the best parameters seen.
_SPACE = {
    "parts": (2, 2, 3, 4, 6, 8),
    "imbalance": (0.01, 0.05, 0.1, 0.2, 0.4, 0.7),
    "mode": ("recursive", "direct"),
    "objective": ("cut", "km1"),
    "cutoff": (8, 12, 16, 24, 32),
    "jitter": (0.0, 0.1, 0.3, 0.6),
    "parts_decay": (0.3, 0.5, 0.8, 1.0),
}


def _portfolio(
    legs,
    output,
    sizes,
    minimize,
    pool: _Pool,
    cost,
    budget: _Budget,
    repeats: int,
    seed: int,
    target: float | None = None,
    unsliced: _Pool | None = None,
) -> _Candidate:
    """Run trials (each quickly refined), then refine the best deeply; loop while time remains.

    A fixed-effort budget runs exactly ``repeats`` trials before refining, and returns after that.
    """
    from tnplan.eliminate import elimination_ssa
    from tnplan.partition import PartitionParams, kahypar_available, partition_ssa
    from tnplan.tree import Tree

    n = len(legs)
    use_kahypar = kahypar_available() and n >= 8
    cycle = ("kahypar", "eliminate", "kahypar", "greedy") if use_kahypar else ("eliminate", "greedy")
    rng = np.random.default_rng([seed, 0x7A11])
    start = time.perf_counter()
    deadline = budget.deadline
    whole = budget.seconds if budget.fixed else deadline - start
    # Trials get the first share of the budget; refining the best few trees gets the rest, and any
    # time refinement leaves over is split again between trials and refining what they found.
    search_deadline = deadline if budget.fixed else start + TRIAL_SHARE * whole
    from tnplan.optimal import PAIRS_PER_SECOND

    # Exact ordering of partition groups may take up to ~10% of the budget per group.
    exact_work = int(min(2e7, max(5e5, 0.02 * whole * PAIRS_PER_SECOND)))
    # Whether trials and refinement re-bracket trees by interval DP, decided once from this call's
    # whole budget (not the time left), so that a run without max_time does not depend on speed.
    rebracket_trials = _rebracket_seconds(n) <= REBRACKET_TRIAL_SHARE * whole
    rebracket_deep = _rebracket_seconds(n) <= REBRACKET_DEEP_SHARE * whole
    best_params: dict[str, object] | None = None
    best_cost = math.inf
    greedy = _GreedyDraws(np.random.default_rng([seed, 0x6EED]))  # its own stream: the others draw as before
    trial_time: dict[str, float] = {}
    kind_best: dict[str, float] = {}
    trial = 0
    refined: set[tuple] = set()
    best = pool.best
    while True:
        now = time.perf_counter()
        if trial >= repeats or now >= search_deadline:
            best = _deep_refine(legs, output, sizes, minimize, pool, deadline, target, refined, rebracket_deep)
            now = time.perf_counter()
            if trial >= repeats or now >= deadline:
                return best
            # Time left goes back to trials, then to refining what they found, in halves.
            search_deadline = now + TRIAL_SHARE_AFTER * (deadline - now)
            continue
        kind = cycle[trial % len(cycle)]
        if kind != "greedy" and _outclassed(kind, kind_best):
            kind = min(kind_best, key=kind_best.__getitem__)  # the slot goes to the leading driver
        if trial > 0 and now + trial_time.get(kind, 0.0) > search_deadline:
            if kind != "greedy" and now + trial_time.get("greedy", 0.0) <= search_deadline:
                kind = "greedy"
            else:
                search_deadline = now
                continue
        trial_seed = int(rng.integers(0, 2**31 - 1))
        t0 = time.perf_counter()
        params = None
        if kind == "kahypar":
            # The first KaHyPar trial uses robust defaults: on big networks it may be the only one.
            params = dict(_FIRST_PARAMS) if trial == 0 else _sample_params(rng, best_params if trial >= 8 else None)
            path = partition_ssa(
                legs,
                output,
                sizes,
                PartitionParams(**params, exact_work=exact_work),  # type: ignore[arg-type]
                trial_seed,
                # A trial may run a little past the search phase, never far past the budget.
                deadline=max(search_deadline, time.perf_counter() + 0.05 * whole),
            )
        elif kind == "eliminate":
            temperature = 0.0 if trial < len(cycle) else float(rng.choice([0.05, 0.2, 0.5, 1.0]))
            path = elimination_ssa(
                legs,
                output,
                sizes,
                temperature=temperature,
                seed=trial_seed,
                deadline=max(search_deadline, time.perf_counter() + 0.05 * whole),
            )
        else:
            # A raw greedy tree costs a fraction of a refined trial, and on lattices its cost spreads
            # over many orders of magnitude that refining does not undo: draw several, refine the
            # cheapest. A time-bound search draws for as long as the slowest other driver's trial
            # took (times GREEDY_SCREEN_SHARE), so the screen never starves them; a fixed effort
            # draws a fixed number, never reading the clock.
            if budget.fixed:
                count, until = GREEDY_SCREEN_FIXED, search_deadline
            else:
                others = [t for k, t in trial_time.items() if k != "greedy"]
                until = min(search_deadline, t0 + GREEDY_SCREEN_SHARE * max(others, default=math.inf))
                count = GREEDY_SCREEN
            path = greedy.cheapest(legs, output, sizes, cost, trial_seed, count, until)
        tree = Tree(legs, output, sizes, path)
        tree.reconfigure(minimize, subtree_size=8, max_passes=1, min_fraction=1e-3, deadline=deadline)
        tree.reconfigure(
            minimize, subtree_size=BFS_SUBTREE, max_passes=BFS_PASSES, min_fraction=1e-3, deadline=deadline,
            expand="bfs",
        )  # fmt: skip
        if rebracket_trials and _in_time(n, deadline):
            tree.rebracket(minimize)
        cand = _evaluate(legs, output, sizes, minimize, tree.ssa_path(), kind, target, unsliced, deadline)
        c = cand.cost
        elapsed = time.perf_counter() - t0
        trial_time[kind] = max(elapsed, 0.7 * trial_time.get(kind, elapsed) + 0.3 * elapsed)
        kind_best[kind] = min(c, kind_best.get(kind, math.inf))
        pool.offer(cand)
        if params is not None and c < best_cost:
            best_cost, best_params = c, params
        trial += 1
        if pool.best.cost < best.cost:
            best = pool.best


# A driver whose best trial costs this many times the best of another driver gets no more trials
# (its turns go to the leading driver): variable elimination, which wins on hyperedge-heavy networks,
# is 100x-1000x off on MERA, where its trials are better spent on KaHyPar.
OUTCLASSED = 10.0


def _outclassed(kind: str, kind_best: dict[str, float]) -> bool:
    mine = kind_best.get(kind)
    others = [c for k, c in kind_best.items() if k != kind]
    return mine is not None and bool(others) and mine > OUTCLASSED * min(others)


def _evaluate(
    legs,
    output,
    sizes,
    minimize,
    path,
    method: str,
    target: float | None,
    unsliced: _Pool | None,
    deadline: float = math.inf,
) -> _Candidate:
    """Score a tree as it will run: with a size target it is sliced to the cap and re-optimised under it."""
    c = _sliced_cost(legs, output, sizes, path, (), minimize)
    if target is None:
        return _Candidate(c, list(path), method)
    from tnplan.slicing import slice_legs

    if unsliced is not None:
        unsliced.offer(_Candidate(c, list(path), method))
    s_path, s_sliced, s_cost = slice_legs(
        legs, output, sizes, list(path), target, minimize, passes=1, deadline=deadline
    )
    return _Candidate(s_cost, s_path, method, s_sliced)


_FIRST_PARAMS = {
    "parts": 2,
    "imbalance": 0.1,
    "mode": "recursive",
    "objective": "cut",
    "cutoff": 12,
    "jitter": 0.1,
    "parts_decay": 0.5,
}


def _sample_params(rng: np.random.Generator, around: dict[str, object] | None) -> dict[str, object]:
    params: dict[str, object] = {}
    for key, options in _SPACE.items():
        if around is not None and rng.random() < 0.75:
            k = options.index(around[key]) if around[key] in options else 0
            k = int(np.clip(k + rng.integers(-1, 2), 0, len(options) - 1))
            params[key] = options[k]
        else:
            params[key] = options[int(rng.integers(0, len(options)))]
    return params


# The greedy driver's score weight ``costmod`` and noise ``temperature`` are drawn from these ranges
# (temperature log-uniformly) for the first GREEDY_EXPLORE draws, then mostly near the best pair
# seen. Lattices need a high costmod: on cubic_6x6x10 raw greedy trees cost 10^30-10^35 flops at
# costmod <= 1.5 and 10^16.4-10^18.3 at 3.0 (a 0.5-2.0 range never got there), while permutation
# networks want it below 1. Noise past 0.3 spoils high-costmod draws (tensornetwork_permutation_light
# raw trees at costmod 3: 10^9.5-10^10.3 at 0.01, 10^17-10^21 at 0.5); with this range cubic's 5 s
# plan reached 10^16.2-10^16.6 on eight of eight seeds, against seven with 0.001-1.0.
GREEDY_COSTMOD = (0.1, 4.0)
GREEDY_TEMPERATURE = (0.001, 0.3)
GREEDY_EXPLORE = 6
GREEDY_SCREEN = 24
GREEDY_SCREEN_SHARE = 1.0
GREEDY_SCREEN_FIXED = 4


@dataclass
class _GreedyDraws:
    """The greedy driver's raw draws over one portfolio: its random stream, how many it drew, and the
    cheapest draw's cost and parameters (later draws gather near them)."""

    rng: np.random.Generator
    drawn: int = 0
    best: tuple[float, dict[str, float] | None] = (math.inf, None)

    def cheapest(self, legs, output, sizes, cost, seed: int, count: int, until: float) -> list[tuple[int, int]]:
        """Draw up to ``count`` raw greedy trees (the first always, no more once ``until`` has passed);
        the cheapest one's SSA path (the first of equal costs)."""
        from tnplan.greedy import greedy_ssa

        cheapest: tuple[float, list[tuple[int, int]]] | None = None
        for k in range(count):
            if k and time.perf_counter() > until:
                break
            params = _greedy_params(self.rng, self.best[1] if self.drawn >= GREEDY_EXPLORE else None)
            self.drawn += 1
            path = greedy_ssa(legs, output, sizes, **params, seed=seed + k)
            c = cost(path)
            if c < self.best[0]:
                self.best = (c, params)
            if cheapest is None or c < cheapest[0]:
                cheapest = (c, path)
        assert cheapest is not None  # the first draw always runs
        return cheapest[1]


def _greedy_params(rng: np.random.Generator, around: dict[str, float] | None) -> dict[str, float]:
    """One greedy draw's ``costmod`` and ``temperature``: from their ranges, or (three times in four)
    near ``around``, the best draw's."""
    lo, hi = GREEDY_COSTMOD
    tlo, thi = (math.log(t) for t in GREEDY_TEMPERATURE)
    if around is not None and rng.random() < 0.75:
        costmod = float(np.clip(around["costmod"] + rng.normal(0.0, 0.25), lo, hi))
        temperature = float(np.clip(math.log(around["temperature"]) + rng.normal(0.0, 0.7), tlo, thi))
    else:
        costmod, temperature = float(rng.uniform(lo, hi)), float(rng.uniform(tlo, thi))
    return {"costmod": costmod, "temperature": math.exp(temperature)}


def _deep_refine(
    legs,
    output,
    sizes,
    minimize,
    pool: _Pool,
    deadline: float,
    target: float | None = None,
    refined: set[tuple] | None = None,
    rebracket: bool = True,
) -> _Candidate:
    """Re-solve subtrees of each of the best trees exactly, with growing subtree sizes.

    The trees in the pool not refined before climb the :data:`LADDER` of subtree sizes together,
    one rung at a time: the trials' quick refinement leaves trees whose rank changes once they are
    refined harder (the third-best trial often ends best), so each gets the same effort, except a
    tree :data:`LADDER_KEEP` times dearer than the best after a rung, which stops climbing. The best
    tree then climbs :data:`DEEP_LADDER` while time remains. Sliced candidates are refined on their
    sliced sizes with every intermediate kept under the cap. ``refined`` records trees already done.
    """
    from tnplan.tree import Tree

    cap = math.inf if target is None else target
    done = set() if refined is None else refined

    def tree_of(cand: _Candidate) -> Tree:
        return Tree(legs, output, _cut_sizes(sizes, cand.sliced), cand.ssa)

    climbing: list[tuple[_Candidate, Tree]] = []
    for cand in pool.items:
        key = (tuple(cand.ssa), cand.sliced)
        if key not in done:
            done.add(key)
            climbing.append((cand, tree_of(cand)))

    def cost_of(cand: _Candidate, tree: Tree) -> float:
        return tree.sliced_total(minimize, _n_slices(sizes, cand.sliced))

    def offer(cand: _Candidate, tree: Tree) -> None:
        new = _Candidate(cost_of(cand, tree), tree.ssa_path(), cand.method.removesuffix("+refine") + "+refine",
                         cand.sliced)  # fmt: skip
        done.add((tuple(new.ssa), new.sliced))
        pool.offer(new)

    n = len(legs)
    for size in LADDER:
        for _cand, tree in climbing:
            if time.perf_counter() > deadline:
                break
            _rung(tree, minimize, size, cap, deadline, rebracket)
        if not climbing:
            break
        lead = min(min(cost_of(c, t) for c, t in climbing), pool.best.cost)
        for cand, tree in climbing:
            if cost_of(cand, tree) > LADDER_KEEP * lead:
                offer(cand, tree)
        climbing = [(c, t) for c, t in climbing if cost_of(c, t) <= LADDER_KEEP * lead]
    for cand, tree in climbing:
        if rebracket and _in_time(n, deadline):
            tree.rebracket(minimize, max_size=cap)
        offer(cand, tree)
    best = pool.best
    if ("deep", tuple(best.ssa), best.sliced) not in done and time.perf_counter() < deadline:
        done.add(("deep", tuple(best.ssa), best.sliced))
        tree = tree_of(best)
        for size in DEEP_LADDER:
            if time.perf_counter() > deadline:
                break
            tree.reconfigure(minimize, subtree_size=size, deadline=deadline, max_passes=3, max_size=cap)
            if rebracket and _in_time(n, deadline):
                tree.rebracket(minimize, max_size=cap)
        offer(best, tree)
    return pool.best


def _rung(tree: Tree, minimize: str, size: int, cap: float, deadline: float, rebracket: bool = True) -> None:
    """One rung of the ladder: re-bracket the tree's leaf order (when asked and in time), then re-solve its
    subtrees, grown from their costliest steps, from their smallest pieces, then breadth-first
    (:data:`RUNG_EXPANDS`, :meth:`Tree._frontier`)."""
    if rebracket and _in_time(tree.n, deadline):
        tree.rebracket(minimize, max_size=cap)
    for expand in RUNG_EXPANDS:
        tree.reconfigure(
            minimize, subtree_size=size, deadline=deadline, max_passes=2, max_size=cap, min_fraction=1e-4, expand=expand
        )


def _rebracket_seconds(n: int) -> float:
    """Predicted seconds of an interval DP over ``n`` leaves (~n^3/6 steps); inf past its size limit."""
    from tnplan.interval import MAX_TENSORS, STEPS_PER_SECOND

    return n**3 / 6.0 / STEPS_PER_SECOND if n <= MAX_TENSORS else math.inf


def _in_time(n: int, deadline: float) -> bool:
    """Whether an interval DP still ends before the deadline (it only binds when the budget is spent)."""
    return _rebracket_seconds(n) <= deadline - time.perf_counter()


def _sliced_cost(legs, output, sizes, ssa, sliced: tuple[int, ...], minimize: str) -> float:
    """The objective of a tree run with ``sliced`` cut, over all its slices (:func:`tnplan.cost.over_slices`;
    every candidate the search ranks is scored here, sliced or not, so ``"size"`` ties break by flops
    in every pool alike)."""
    cut, n = _cut_sizes(sizes, sliced), _n_slices(sizes, sliced)
    flops = legs_path_cost(legs, output, cut, ssa, "flops") * n if minimize == "size" else 0.0
    return over_slices(legs_path_cost(legs, output, cut, ssa, minimize), n, minimize, flops)


def _n_slices(sizes: list[float], sliced: tuple[int, ...]) -> float:
    return math.prod(sizes[i] for i in sliced)


def _cut_sizes(sizes: list[float], sliced: tuple[int, ...]) -> list[float]:
    """Index sizes as one slice sees them: the sliced indices at size 1."""
    return [1.0 if i in sliced else x for i, x in enumerate(sizes)]
