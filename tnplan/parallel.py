"""Run independent search trials in several processes, on this machine or on a Dask cluster.

:func:`run_tasks` maps a function over a list of tasks and returns the results in task order, so a
caller that reduces them in that order stays deterministic whichever way they ran:

- ``executor=None`` / ``"local"`` with ``workers=1``: in this process, one after the other;
- ``executor=None`` / ``"local"`` with ``workers > 1``: a pool of worker processes on this machine;
- ``executor="dask://HOST:PORT"`` (or ``"tcp://HOST:PORT"``): the workers of a Dask distributed
  cluster whose scheduler listens there (``dask scheduler``, then ``dask worker HOST:PORT`` on each
  machine).

Errors are uniform across the three: a task raising a :class:`~tnplan.errors.TnplanError` re-raises
that exception (same type, same message); any other exception becomes a
:class:`~tnplan.errors.PlanError` naming the task, the exception type and its message, chained to the
original (whose worker traceback is attached).

Local processes. On Linux workers are forked by default: a search runs with a budget of about a
second, and a forked worker starts in tens of milliseconds with everything the parent has already
imported and compiled (numba kernels included), while a spawned one re-imports numpy, numba and torch
for seconds. ``TNPLAN_MP_START=fork|spawn|forkserver`` overrides the choice (elsewhere the platform's
default is used: fork is unsafe on macOS). The pool is kept between calls and reused, because
starting one costs far more than a call on a warm one (2-core EPYC, parent with torch and tnplan
loaded, two trivial tasks): fork, new pool 30 to 40 ms against under 1 ms reused; spawn or
forkserver, 3.5 to 16 s (each worker imports torch and numba) against under 5 ms. It is rebuilt when
``workers`` or the start method changes, when a worker died, and in a forked child; :func:`shutdown`
(also run at exit) stops it. One consequence of reuse with fork: workers see the parent as it was
when the pool started, so a function defined in ``__main__`` after that (in a notebook, say) cannot
be found by them; call :func:`shutdown` to start afresh. Fork also copies open sockets: a pool forked
after an in-process server started (a Dask ``LocalCluster`` scheduler, say) keeps its port open after
it closes, so start the pool first or use spawn there.

Why Dask rather than Ray. ``distributed`` is a small pure-Python wheel; a scheduler address is all a
user has to give; tasks are plain picklable functions and arguments, which is all a search trial is;
and ``distributed.LocalCluster`` runs a real multi-process cluster on one machine, so the remote path
is tested like the local one. Ray is a large binary with its own object store, raylets and dashboard:
machinery a few dozen independent trials of a second each do not need. Connecting costs ~10 ms on a
local network, so the client is kept per scheduler address (and replaced when it is closed or
broken); a call of two trivial tasks on a kept client takes 20 to 40 ms (``LocalCluster`` on the same
2-core machine), one scheduler round trip of which checks that the cluster has workers.

Examples:
    >>> from tnplan.parallel import run_tasks
    >>> run_tasks(abs, [-1, 2, -3])
    [1, 2, 3]
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import numbers
import os
import pickle
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any, TypeVar

from tnplan.errors import PlanError, TnplanError

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["CONNECT_TIMEOUT", "START_METHOD_ENV", "run_tasks", "shutdown"]

T = TypeVar("T")
R = TypeVar("R")

#: Environment variable that picks how local worker processes start: fork, spawn or forkserver.
START_METHOD_ENV = "TNPLAN_MP_START"
#: Seconds allowed to reach a Dask scheduler and complete the client handshake.
CONNECT_TIMEOUT = 10.0

_START_METHODS = ("fork", "spawn", "forkserver")
_EXECUTOR_FORMS = "'local', 'dask://HOST:PORT' or 'tcp://HOST:PORT'"
# HOST is a name, an IPv4 address or a bracketed IPv6 address; PORT is decimal.
_DASK_ADDRESS = re.compile(r"(?:dask|tcp)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):([0-9]{1,5})")

# One lock guards both caches: creating or discarding a pool or a client is rare, and serialising it
# keeps two threads from starting two pools (or two connections) for the same key.
_lock = threading.Lock()
# (pool, workers, start method, pid of the process that created it).
_pool: tuple[ProcessPoolExecutor, int, str, int] | None = None
# scheduler address -> (client, pid of the process that connected it).
_clients: dict[str, tuple[Client, int]] = {}
_clients_atexit = False


def run_tasks(fn: Callable[[T], R], tasks: Sequence[T], *, workers: int = 1, executor: str | None = None) -> list[R]:
    """Apply ``fn`` to every task, possibly in other processes, and return the results in task order.

    Args:
        fn: Called once per task as ``fn(task)``. For local worker processes it must be picklable by
            reference (a module-level function or a ``functools.partial`` of one); Dask also accepts
            lambdas and closures (it uses cloudpickle). Tasks and results must be picklable.
        tasks: The arguments, one per call.
        workers: Local worker processes; 1 runs the tasks in this process, one after the other. With
            Dask it is only validated: the cluster's scheduler decides how many tasks run at once.
        executor: ``None`` or ``"local"`` for this machine, ``"dask://HOST:PORT"`` or
            ``"tcp://HOST:PORT"`` for the Dask scheduler listening there.

    Returns:
        ``[fn(t) for t in tasks]``, in that order.

    Raises:
        TnplanError: The exception a task raised, when it is one of tnplan's (first failing task in
            task order among those that had finished).
        PlanError: On a bad ``workers`` or ``executor``, a task raising any other exception, a worker
            process dying, ``distributed`` missing or the scheduler unreachable.

    Examples:
        >>> run_tasks(abs, [-2, 3], workers=1)
        [2, 3]
    """
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1:
        raise PlanError(f"workers must be an integer >= 1, got {workers!r}")
    workers = int(workers)
    address = _parse_executor(executor)
    tasks = list(tasks)
    if not tasks:
        return []
    if address is not None:
        return _run_dask(fn, tasks, *address)
    if workers == 1 or len(tasks) == 1:
        # One task gains nothing from another process and would pay for the pool.
        return _run_here(fn, tasks)
    return _run_pool(fn, tasks, workers)


def shutdown() -> None:
    """Stop the cached local worker pool and close the cached Dask clients (run at exit too).

    The next :func:`run_tasks` call starts a fresh pool or connection as needed.
    """
    global _pool
    with _lock:
        cached, _pool = _pool, None
        clients = list(_clients.values())
        _clients.clear()
    if cached is not None and cached[3] == os.getpid():
        cached[0].shutdown(wait=True, cancel_futures=True)
    for client, pid in clients:
        if pid == os.getpid():
            _close_quietly(client)


atexit.register(shutdown)


# --- argument checks ---------------------------------------------------------------------------


def _parse_executor(executor: str | None) -> tuple[str, int] | None:
    """``None`` for local execution, else the Dask scheduler's (host, port)."""
    if executor is None or executor == "local":
        return None
    if not isinstance(executor, str):
        raise PlanError(f"executor must be {_EXECUTOR_FORMS}, got {type(executor).__name__} {executor!r}")
    match = _DASK_ADDRESS.fullmatch(executor.strip())
    if match is None:
        raise PlanError(f"executor must be {_EXECUTOR_FORMS}, got {executor!r}")
    host, port = match.group(1).strip("[]"), int(match.group(2))
    if not 0 < port < 65536:
        raise PlanError(f"executor {executor!r} has port {port}; a TCP port is 1..65535")
    return host, port


def _start_method() -> str:
    """The start method for local workers: ``$TNPLAN_MP_START``, else fork on Linux, else the default."""
    available = multiprocessing.get_all_start_methods()
    chosen = os.environ.get(START_METHOD_ENV, "").strip().lower()
    if chosen:
        if chosen not in _START_METHODS:
            raise PlanError(f"{START_METHOD_ENV} must be fork, spawn or forkserver, got {chosen!r}")
        if chosen not in available:
            raise PlanError(
                f"{START_METHOD_ENV}={chosen} is not available on {sys.platform}; use one of {', '.join(available)}"
            )
        return chosen
    if sys.platform.startswith("linux") and "fork" in available:
        return "fork"
    return multiprocessing.get_start_method(allow_none=False)


# --- in this process ---------------------------------------------------------------------------


def _run_here(fn: Callable[[T], R], tasks: list[T]) -> list[R]:
    results: list[R] = []
    for i, task in enumerate(tasks):
        try:
            results.append(fn(task))
        except TnplanError:
            raise
        except Exception as exc:
            # Same contract as in worker processes, so callers handle one error type whatever `workers` is.
            raise _task_error(i, len(tasks), exc, where="") from exc
    return results


# --- local worker processes --------------------------------------------------------------------


def _run_pool(fn: Callable[[T], R], tasks: list[T], workers: int) -> list[R]:
    try:
        pickle.dumps(fn)
    except Exception as exc:
        # Otherwise the pool reports this per task, as if each task had failed.
        raise PlanError(
            f"fn ({fn!r}) cannot be sent to worker processes ({_one_line(exc)}); pass a module-level "
            "function (or a functools.partial of one), not a lambda, closure or local function"
        ) from exc
    method = _start_method()
    futures: list[Future[R]] = []
    pool = _get_pool(workers, method)
    try:
        futures = [pool.submit(fn, task) for task in tasks]
    except (BrokenProcessPool, RuntimeError):
        # The cached pool broke while idle (a worker was killed) or was shut down meanwhile: cancel
        # what went in and try once more on a fresh pool.
        for f in futures:
            f.cancel()
        _discard_pool(pool)
        pool = _get_pool(workers, method)
        futures = [pool.submit(fn, task) for task in tasks]
    try:
        wait(futures, return_when=FIRST_EXCEPTION)
    except BaseException:
        # Interrupted (Ctrl-C): nobody will read these results; don't leave the trials queued.
        for f in futures:
            f.cancel()
        _discard_pool(pool)
        raise
    failed: list[tuple[int, BaseException]] = []
    for i, f in enumerate(futures):
        error = f.exception() if f.done() and not f.cancelled() else None
        if error is not None:
            failed.append((i, error))
    if failed:
        for f in futures:
            f.cancel()
        if any(isinstance(error, BrokenProcessPool) for _, error in failed):
            _discard_pool(pool)
        i, error = failed[0]
        if isinstance(error, BrokenProcessPool):
            raise PlanError(
                f"a worker process died abruptly while running task {i} of {len(tasks)} (killed, out of memory "
                "or a crash in native code); retry, with fewer workers if memory is short, or with workers=1 "
                "to see the failure in this process"
            ) from error
        if isinstance(error, TnplanError):
            raise error
        raise _task_error(i, len(tasks), error, where=" in a worker process") from error
    if any(f.cancelled() for f in futures):
        raise PlanError(
            "the worker pool was replaced while these tasks ran (run_tasks called concurrently from another "
            "thread with a different workers count or start method); use one workers value per process, or retry"
        )
    return [f.result() for f in futures]


def _get_pool(workers: int, method: str) -> ProcessPoolExecutor:
    """The cached pool when it matches (size, start method, this process), else a new one."""
    global _pool
    with _lock:
        if _pool is not None:
            pool, size, start, pid = _pool
            if (size, start, pid) == (workers, method, os.getpid()):
                return pool
            _pool = None
            if pid == os.getpid():
                pool.shutdown(wait=False, cancel_futures=True)
            # A pool inherited through fork belongs to the parent: its threads do not exist here.
        pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context(method),
            initializer=_exit_with_parent,
            initargs=(os.getpid(),),
        )
        _pool = (pool, workers, method, os.getpid())
        return pool


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: end this worker when its parent dies.

    A kept pool outlives the calls that use it, and if the parent is killed (SIGKILL, the OOM killer)
    its idle forked workers would wait for ever on a queue whose write end they hold themselves.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="tnplan-exit-with-parent", daemon=True).start()


def _discard_pool(pool: ProcessPoolExecutor) -> None:
    global _pool
    with _lock:
        if _pool is not None and _pool[0] is pool:
            _pool = None
    pool.shutdown(wait=False, cancel_futures=True)


# --- Dask ----------------------------------------------------------------------------------------


def _run_dask(fn: Callable[[T], R], tasks: list[T], host: str, port: int) -> list[R]:
    where = _host_port(host, port)
    client = _client(host, port)
    try:
        # Tasks sent to a scheduler without workers would wait silently for ever; this also finds
        # out, within a bounded time, whether the cached client's scheduler still answers.
        _bounded(lambda: client.wait_for_workers(1, timeout=CONNECT_TIMEOUT), "the scheduler")
    except Exception as exc:
        _discard_client(client)
        raise PlanError(
            f"the Dask scheduler at {where} has no running workers or does not answer ({_one_line(exc)}); "
            f"start workers with `dask worker {where}`, or check the scheduler"
        ) from exc
    futures = []
    try:
        futures = client.map(fn, tasks, pure=False)
        lost = not _wait_dask(client, futures)
    except BaseException as exc:
        if futures:
            client.cancel(futures)  # interrupted, or the scheduler went away: stop the trials
        if not isinstance(exc, Exception):
            raise
        _discard_client(client)
        raise PlanError(
            f"running {len(tasks)} tasks on the Dask scheduler at {where} failed ({_one_line(exc)}); "
            f"check that the scheduler and its workers are up (`dask scheduler`, `dask worker {where}`)"
        ) from exc
    for i, f in enumerate(futures):
        if f.status == "error":
            error = f.exception()
            tb = f.traceback()
            client.cancel(futures)  # after reading the error: a cancelled future forgets it
            if tb is not None:
                error = error.with_traceback(tb)  # the worker's frames, for whoever reads the chain
            if isinstance(error, TnplanError):
                raise error
            raise _task_error(i, len(tasks), error, where=f" on a Dask worker of {where}") from error
    if lost or any(f.status != "finished" for f in futures):
        client.cancel(futures)
        _discard_client(client)  # reconnect next time
        raise PlanError(
            f"lost the Dask scheduler at {where} while running {len(tasks)} tasks (client {client.status}); "
            f"check that it is still up and retry"
        )
    return client.gather(futures)


def _wait_dask(client: Client, futures: list[Any]) -> bool:
    """Wait until every task is done or one failed; False when the client lost its scheduler.

    (``distributed.wait`` has no FIRST_EXCEPTION and uses the default client, not ours.) Futures
    are cancelled when the connection drops, except those submitted while the client was already
    reconnecting, which would wait for ever: hence the look at the client's status every second.
    """
    cond = threading.Condition()
    ended: list[Any] = []

    def on_done(future: Any) -> None:  # runs in a thread of the client
        with cond:
            ended.append(future)
            cond.notify()

    for f in futures:
        f.add_done_callback(on_done)
    with cond:
        while len(ended) < len(futures) and all(f.status == "finished" for f in ended):
            cond.wait(timeout=1.0)
            if client.status != "running":
                return False
    return True


def _client(host: str, port: int) -> Client:
    """A connected client for the scheduler at (host, port): the cached one while it is usable."""
    global _clients_atexit
    try:
        import distributed
    except ImportError as exc:
        raise PlanError(
            f"the Dask executor needs the distributed package ({_one_line(exc)}); pip install 'dask[distributed]'"
        ) from exc
    address = f"tcp://{_host_port(host, port)}"
    with _lock:
        cached = _clients.pop(address, None)
        if cached is not None:
            client, pid = cached
            if pid == os.getpid() and client.status == "running":
                _clients[address] = cached
                return client
            if pid == os.getpid():
                _close_quietly(client)
        # A plain TCP connect first: distributed retries a refused connection until its timeout,
        # while nothing listening is known in a millisecond.
        try:
            with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
                pass
            client = _bounded(
                lambda: distributed.Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False),
                "connection accepted but the handshake",
                on_late=_close_quietly,
            )
        except Exception as exc:
            raise PlanError(
                f"cannot reach the Dask scheduler at {_host_port(host, port)} ({_one_line(exc)}); start one with "
                f"`dask scheduler` and workers with `dask worker {_host_port(host, port)}`"
            ) from exc
        _clients[address] = (client, os.getpid())
        if not _clients_atexit:
            # Registered after distributed's own exit hooks, so it runs before them (atexit is LIFO),
            # while the client's event loop is still alive.
            atexit.register(shutdown)
            _clients_atexit = True
        return client


def _bounded(fn: Callable[[], R], what: str, on_late: Callable[[R], None] | None = None) -> R:
    """``fn()``, given up on (TimeoutError) after :data:`CONNECT_TIMEOUT` plus a 2 s margin.

    distributed bounds a TCP connect by its ``timeout`` but not the handshake or the request that
    follow, so a peer that accepts connections without answering (a hung scheduler, another
    service on that port, a host gone silent) would block a call for ever. ``fn`` runs in a thread
    we can stop waiting for; ``on_late`` disposes of a result that arrives after we gave up.
    """
    values: list[R] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    gave_up = False

    def call() -> None:
        try:
            value = fn()
        except BaseException as exc:
            with lock:
                errors.append(exc)
            return
        with lock:
            late = gave_up
            values.append(value)
        if late and on_late is not None:
            on_late(value)

    thread = threading.Thread(target=call, name="tnplan-dask", daemon=True)
    thread.start()
    thread.join(CONNECT_TIMEOUT + 2.0)
    with lock:
        if not values and not errors:
            gave_up = True
            raise TimeoutError(f"{what}: no answer within {CONNECT_TIMEOUT:g} s")
    if errors:
        raise errors[0]
    return values[0]


def _discard_client(client: Client) -> None:
    with _lock:
        for address, (cached, _pid) in list(_clients.items()):
            if cached is client:
                del _clients[address]
    _close_quietly(client)


def _close_quietly(client: Client) -> None:
    """Close a client, saying nothing if it is already closed or its scheduler is gone.

    A client that lost its scheduler is retrying to connect; closing it cancels that retry, which
    distributed logs as an error with a traceback. We close on purpose, so that is not news.
    """
    logger = logging.getLogger("distributed.client")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with contextlib.suppress(Exception):
            client.close(timeout=2)
    finally:
        logger.setLevel(level)


# --- messages ----------------------------------------------------------------------------------


def _task_error(i: int, n: int, exc: BaseException, *, where: str) -> PlanError:
    return PlanError(
        f"task {i} of {n} raised {type(exc).__name__}{where}: {_one_line(exc)} "
        "(its traceback is chained below; fix the task or the function it runs)"
    )


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
