"""tnplan.parallel: task order, where tasks ran, error contract, local pool and a real Dask cluster."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tnplan
from tnplan import parallel, score_path
from tnplan.errors import NetworkError, PlanError
from tnplan.examples import random_regular
from tnplan.parallel import run_tasks

TASKS = list(range(7))
REPO = Path(__file__).resolve().parents[1]


# Module-level so that worker processes can unpickle them by reference.
def square_and_pid(x: int) -> tuple[int, int]:
    if x % 2:
        time.sleep(0.01)  # uneven durations: completion order differs from task order
    return x * x, os.getpid()


def network_error_at_2(x: int) -> int:
    if x == 2:
        raise NetworkError(f"tensor {x} has a bad index")
    return x


def key_error_at_1(x: int) -> int:
    if x == 1:
        raise KeyError("missing label")
    return x


def die_at_1(x: int) -> int:
    if x == 1:
        os._exit(3)  # a worker dying without a Python exception (as when killed or out of memory)
    return x


def expected() -> list[int]:
    return [x * x for x in TASKS]


@pytest.fixture(autouse=True)
def _fork_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(parallel.START_METHOD_ENV, raising=False)


def test_one_worker_runs_in_this_process_in_order() -> None:
    results = run_tasks(square_and_pid, TASKS)
    assert [r for r, _ in results] == expected()
    assert {pid for _, pid in results} == {os.getpid()}
    assert run_tasks(square_and_pid, []) == []


def test_two_workers_match_sequential_and_use_other_processes() -> None:
    results = run_tasks(square_and_pid, TASKS, workers=2)
    assert [r for r, _ in results] == expected()
    pids = {pid for _, pid in results}
    assert os.getpid() not in pids
    assert 1 <= len(pids) <= 2


def test_pool_is_reused_and_rebuilt_when_workers_change() -> None:
    run_tasks(square_and_pid, TASKS, workers=2)
    assert parallel._pool is not None
    pool = parallel._pool[0]
    run_tasks(square_and_pid, TASKS, workers=2)
    assert parallel._pool[0] is pool
    results = run_tasks(square_and_pid, TASKS, workers=3)
    assert [r for r, _ in results] == expected()
    assert parallel._pool[0] is not pool
    parallel.shutdown()
    assert parallel._pool is None


@pytest.mark.parametrize("workers", [1, 2])
def test_tnplan_error_comes_back_as_itself(workers: int) -> None:
    with pytest.raises(NetworkError, match="tensor 2 has a bad index"):
        run_tasks(network_error_at_2, TASKS, workers=workers)


@pytest.mark.parametrize("workers", [1, 2])
def test_other_error_becomes_plan_error_naming_it(workers: int) -> None:
    with pytest.raises(PlanError, match=r"task 1 of 7 raised KeyError.*missing label") as info:
        run_tasks(key_error_at_1, TASKS, workers=workers)
    assert isinstance(info.value.__cause__, KeyError)
    # The pool survives a task's exception.
    assert run_tasks(network_error_at_2, [0, 1], workers=workers) == [0, 1]


def test_dead_worker_is_plan_error_and_the_pool_recovers() -> None:
    with pytest.raises(PlanError, match="worker process died abruptly"):
        run_tasks(die_at_1, TASKS, workers=2)
    results = run_tasks(square_and_pid, TASKS, workers=2)
    assert [r for r, _ in results] == expected()


_KILLED_PARENT = """
import multiprocessing, os, signal
from tnplan.parallel import run_tasks
run_tasks(abs, [-1, -2, -3], workers=2)
print(' '.join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_kept_workers_exit_when_the_parent_is_killed() -> None:
    # The workers hold the pipe's write end too: without the watchdog, communicate() never returns.
    proc = subprocess.run([sys.executable, "-c", _KILLED_PARENT], capture_output=True, text=True, timeout=20, cwd=REPO)
    pids = [int(p) for p in proc.stdout.split()]
    assert len(pids) == 2, proc.stderr
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_unpicklable_function_is_refused_before_submitting() -> None:
    with pytest.raises(PlanError, match="module-level function"):
        run_tasks(lambda x: x, TASKS, workers=2)


def test_spawn_start_method_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(parallel.START_METHOD_ENV, "bogus")
    with pytest.raises(PlanError, match="TNPLAN_MP_START must be fork, spawn or forkserver"):
        run_tasks(square_and_pid, TASKS, workers=2)


@pytest.mark.parametrize("workers", [0, -1, 1.5, "2", True, None])
def test_bad_workers(workers: object) -> None:
    with pytest.raises(PlanError, match="workers must be an integer >= 1"):
        run_tasks(square_and_pid, TASKS, workers=workers)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "executor", ["", "ray://host:1", "dask://host", "dask://host:port", "localhost:8786", "dask://a b:1", 8786]
)
def test_bad_executor(executor: object) -> None:
    with pytest.raises(PlanError, match=r"executor must be 'local', 'dask://HOST:PORT' or 'tcp://HOST:PORT'"):
        run_tasks(square_and_pid, TASKS, executor=executor)  # type: ignore[arg-type]


def test_executor_port_out_of_range() -> None:
    with pytest.raises(PlanError, match=r"port 70000; a TCP port is 1\.\.65535"):
        run_tasks(square_and_pid, TASKS, executor="dask://localhost:70000")


def test_missing_distributed_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # makes `import distributed` fail
    with pytest.raises(PlanError, match=r"pip install 'dask\[distributed\]'"):
        run_tasks(square_and_pid, TASKS, executor="dask://127.0.0.1:8786")


def test_unreachable_scheduler_fails_fast() -> None:
    pytest.importorskip("distributed")
    start = time.perf_counter()
    expected_message = r"cannot reach the Dask scheduler at 127\.0\.0\.1:1 .*dask worker 127\.0\.0\.1:1"
    with pytest.raises(PlanError, match=expected_message):
        run_tasks(square_and_pid, TASKS, executor="dask://127.0.0.1:1")
    assert time.perf_counter() - start < 15


def test_scheduler_that_never_answers_is_given_up_on(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("distributed")
    monkeypatch.setattr(parallel, "CONNECT_TIMEOUT", 1.0)
    with socket.socket() as silent:  # accepts connections (the kernel does) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        start = time.perf_counter()
        expected_message = f"cannot reach the Dask scheduler at 127.0.0.1:{port} .*handshake: no answer"
        with pytest.raises(PlanError, match=expected_message):
            run_tasks(square_and_pid, TASKS, executor=f"dask://127.0.0.1:{port}")
        assert time.perf_counter() - start < 5


# --- a real multi-process Dask cluster on this machine -------------------------------------------


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    """HOST:PORT of a two-process LocalCluster, closed (with the cached clients) at the end."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.CRITICAL,  # task failures are expected here; the workers log them as errors
    )
    try:
        yield cluster.scheduler_address.removeprefix("tcp://")
    finally:
        # Clients first: a client whose scheduler vanishes keeps trying to reconnect (and logs it).
        parallel.shutdown()
        cluster.close()


@pytest.mark.parametrize("scheme", ["dask", "tcp"])
def test_dask_matches_sequential_in_other_processes(scheduler: str, scheme: str) -> None:
    results = run_tasks(square_and_pid, TASKS, executor=f"{scheme}://{scheduler}")
    assert [r for r, _ in results] == expected()
    assert os.getpid() not in {pid for _, pid in results}


def test_dask_errors_follow_the_same_contract(scheduler: str) -> None:
    executor = f"dask://{scheduler}"
    with pytest.raises(NetworkError, match="tensor 2 has a bad index"):
        run_tasks(network_error_at_2, TASKS, executor=executor)
    with pytest.raises(PlanError, match=r"task 1 of 7 raised KeyError on a Dask worker.*missing label"):
        run_tasks(key_error_at_1, TASKS, executor=executor)


def test_dask_client_is_cached_and_replaced_when_closed(scheduler: str) -> None:
    executor = f"dask://{scheduler}"
    run_tasks(square_and_pid, [1], executor=executor)
    (client, _pid) = parallel._clients[f"tcp://{scheduler}"]
    run_tasks(square_and_pid, [2], executor=executor)
    assert parallel._clients[f"tcp://{scheduler}"][0] is client
    client.close()
    assert run_tasks(square_and_pid, [3], executor=executor)[0][0] == 9
    assert parallel._clients[f"tcp://{scheduler}"][0] is not client


def test_tasks_queued_on_a_cluster_share_the_callers_deadline(scheduler: str) -> None:
    # 8 searches on 2 single-thread workers run in 4 waves; each used to start a whole budget when it
    # left the queue, so the call took about 4 x max_time.
    net = random_regular(60, 3, 2, seed=1)
    executor = f"dask://{scheduler}"
    tnplan.plan(net, max_time=0.2, workers=2, cache=False, executor=executor)  # workers load numba's kernels
    start = time.perf_counter()
    p = tnplan.plan(net, max_time=0.5, workers=8, cache=False, executor=executor)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.25, elapsed
    assert p.flops == score_path(net, p.ssa_path).flops
