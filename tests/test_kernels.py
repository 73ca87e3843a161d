"""Executors: the numba kernels agree with the torch reference, forward and gradients."""

import json
import threading

import pytest
import torch

import adntn
import kernels
from kernels import KernelsError, calibrate, get_executor, numba_weight
from kernels.calibrate import cache_file, calibration

ARCHS = [
    ("ttn", {"bond_dim": 3, "n_factors": 4}),
    ("ttn", {"bond_dim": 2, "n_factors": 3, "arity": 3, "activation": "gelu", "lateral": True}),
    ("attn", {"bond_dim": 3, "n_factors": 4, "disentangle": ("root", 1), "disentangle_legs": "both"}),
    ("mera", {"bond_dim": 3, "n_factors": 4, "activation": "leaky_relu"}),
    ("mera", {"bond_dim": 2, "n_factors": 8, "activation_every": 2, "lateral": True, "activation": "relu"}),
]


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("blas", [None, True, False])
@pytest.mark.parametrize(("arch", "kwargs"), ARCHS)
def test_numba_matches_torch_forward_and_gradients(arch, kwargs, blas, dtype, tol, torch_reference):
    torch.manual_seed(0)
    g = adntn.make_generator(arch, 20, 30, executor="torch", **kwargs).to(dtype)
    grad = torch.randn(g.out_padded, g.in_padded, dtype=dtype)
    w_ref, g_ref = torch_reference(g, grad)
    g.zero_grad()
    w = numba_weight(g, blas)
    (w * grad).sum().backward()
    scale = float(w_ref.abs().max())
    torch.testing.assert_close(w.detach(), w_ref, rtol=tol, atol=tol * scale)
    for key, p in g.cores.items():
        torch.testing.assert_close(p.grad, g_ref[key], rtol=tol, atol=tol * float(g_ref[key].abs().max()))


# Fused loops; BLAS tiles split by row blocks (tiles of 64 elements: many blocks); BLAS split by
# single tiles (columns two wide, the default elements: every row of these small steps in one block).
@pytest.mark.parametrize(
    ("blas", "tile"), [(False, None), (True, ("TILE_ELEMENTS", 64)), (True, ("TILE_MAX_WIDTH", 2))]
)
@pytest.mark.parametrize(("arch", "kwargs"), [ARCHS[1], ARCHS[2], ARCHS[4]])
def test_parallel_kernels_match_torch_with_two_threads(arch, kwargs, blas, tile, monkeypatch, torch_reference):
    import kernels.numba_cpu as cpu

    calls = {"forward": 0, "backward": 0}
    names = ("forward_step_parallel", "backward_step_parallel")
    if blas:
        names = ("blas_forward_parallel", "blas_backward_parallel")
    splits = []
    split = cpu._blas_split
    monkeypatch.setattr(cpu, "_blas_split", lambda *a: splits.append(split(*a)) or splits[-1])

    def count(name, fn):
        def wrapped(*args):
            calls[name] += 1
            return fn(*args)

        return wrapped

    for side, name in zip(("forward", "backward"), names, strict=True):
        monkeypatch.setattr(cpu, name, count(side, getattr(cpu, name)))
    monkeypatch.setattr(cpu, "PARALLEL_MIN_WORK", 0)  # the test shapes are small: force the parallel form
    if blas:  # every BLAS step through the tiled kernels (none written in place by torch)
        monkeypatch.setattr(kernels.steps, "_blocks", lambda *a: None)
        monkeypatch.setattr(f"kernels.executor.{tile[0]}", tile[1])
        kernels.executor._tiles.cache_clear()
    torch.manual_seed(3)
    g = adntn.make_generator(arch, 40, 60, executor="torch", **kwargs).to(torch.float64)
    grad = torch.randn(g.out_padded, g.in_padded, dtype=torch.float64)
    w_ref, g_ref = torch_reference(g, grad)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        results = []
        for _ in range(2):
            g.zero_grad()
            w = numba_weight(g, blas)
            (w * grad).sum().backward()
            results.append((w.detach(), {k: p.grad.clone() for k, p in g.cores.items()}))
    finally:
        torch.set_num_threads(before)
        kernels.executor._tiles.cache_clear()
    assert calls["forward"] > 0 and calls["backward"] > 0
    if blas:  # the split the case is for ran (with tiles of 64 elements, by row blocks only)
        by_tile = {t for n, t in splits if n}
        assert by_tile == {False} if tile[0] == "TILE_ELEMENTS" else True in by_tile
    w, grads = results[0]
    torch.testing.assert_close(w, w_ref, rtol=1e-10, atol=1e-10 * float(w_ref.abs().max()))
    for key in g.cores:
        torch.testing.assert_close(grads[key], g_ref[key], rtol=1e-10, atol=1e-10 * float(g_ref[key].abs().max()))
    # Same thread count, same blocks: bit-identical results.
    assert torch.equal(results[1][0], w) and all(torch.equal(results[1][1][k], grads[k]) for k in grads)


@pytest.mark.parametrize(("numba", "blas"), [(1.0, 4.0), (4.0, 1.0)])
def test_layers_pick_numba_on_the_cpu_and_torch_under_compile(numba, blas, pin_calibration):
    from kernels.executor import compiled_steps

    torch.manual_seed(1)
    # Whether the cost model sends the steps to the fused loops or to BLAS, both run in the numba
    # executor, which beats torch eager on both (benchmarks/results/kernels-cpu.md).
    pin_calibration(numba=numba, blas=blas)
    layer = adntn.TNLinear(32, 24, "ttn", bond_dim=2, mode="materialize")
    assert layer.generator.executor == "auto" and layer.generator.uses_kernels()
    steps = [st for gs in compiled_steps(layer.generator) for st in gs.steps]
    assert any(st.blas for st in steps) == (blas < numba)
    reference = adntn.TNLinear(32, 24, "ttn", bond_dim=2, mode="materialize", executor="torch")
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(5, 32)
    torch.testing.assert_close(layer(x), reference(x), rtol=1e-5, atol=1e-6)
    layer(x).square().sum().backward()
    reference(x).square().sum().backward()
    for (name, a), (_, b) in zip(layer.named_parameters(), reference.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), reference(x), rtol=1e-5, atol=1e-6)


def test_executor_names_and_unsupported_segments_fail_clearly():
    assert get_executor("numba") == "numba" and set(kernels.EXECUTORS) == {"torch", "numba", "cuda", "auto"}
    with pytest.raises(KernelsError, match="unknown executor 'fast'"):
        get_executor("fast")
    if not torch.cuda.is_available():
        with pytest.raises(KernelsError, match="needs a CUDA device"):
            get_executor("cuda")
    with pytest.raises(KernelsError, match="has no fused kernel"):
        adntn.TTNGenerator(16, 16, bond_dim=2, activation=torch.sin, executor="numba")
    auto = adntn.TTNGenerator(16, 16, bond_dim=2, activation=torch.sin)
    assert not auto.uses_kernels()  # falls back to torch
    assert issubclass(KernelsError, ValueError)


def test_kernels_release_the_gil_and_run_from_threads():
    from kernels.numba_cpu import backward_step, forward_step

    assert forward_step.targetoptions["nogil"] and backward_step.targetoptions["nogil"]
    g = adntn.TTNGenerator(64, 64, bond_dim=4)
    with torch.no_grad():
        expected = numba_weight(g)
    results = []
    threads = [threading.Thread(target=lambda: results.append(numba_weight(g).detach())) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and all(torch.equal(r, expected) for r in results)


def test_calibration_is_measured_once_and_survives_a_damaged_file(tmp_path, monkeypatch):
    monkeypatch.setenv("ADNTN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr("kernels.calibrate._MEMO", {})
    cal = calibration()
    assert cache_file().parent == tmp_path and json.loads(cache_file().read_text()) == cal
    assert cal["threads"] == torch.get_num_threads() and cache_file().name.endswith("-1t.json")
    assert all(v > 0 for table in ("numba", "blas", "direct") for v in cal[table].values())
    monkeypatch.setattr("kernels.calibrate._MEMO", {})
    cache_file().write_text("{not json")
    again = calibration()
    assert set(again["numba"]) == set(cal["numba"]) and json.loads(cache_file().read_text()) == again
    monkeypatch.setattr("kernels.calibrate._MEMO", {})
    partial = {**again, "blas": {k: v for k, v in again["blas"].items() if k != "large-16"}}
    cache_file().write_text(json.dumps(partial))  # this version's file, one entry lost
    assert set(calibration()["blas"]) == set(cal["blas"])


def test_cost_model_interpolates_piecewise_in_log_k():
    from kernels.calibrate import _interp

    table = {"large-4": 1.0, "large-16": 4.0, "large-64": 4.0}
    points = (4, 16, 64)
    assert _interp(table, 8, points, "large-") == pytest.approx(2.0)  # halfway in log K: the geometric mean
    assert _interp(table, 32, points, "large-") == pytest.approx(4.0)
    assert _interp(table, 1, points, "large-") == 1.0 and _interp(table, 1000, points, "large-") == 4.0


def test_cost_model_prices_in_place_blas_apart(monkeypatch):
    from kernels.calibrate import step_seconds

    keys = calibrate.KEYS
    cal = {side: dict.fromkeys(keys, value) for side, value in (("numba", 2.0), ("blas", 3.0), ("direct", 1.0))}
    monkeypatch.setattr("kernels.calibrate._MEMO", {torch.get_num_threads(): cal})
    assert step_seconds(10, 8, blas=False) == pytest.approx(20.0)
    assert step_seconds(10, 8, blas=True) == pytest.approx(30.0)
    assert step_seconds(10, 8, blas=True, direct=True) == pytest.approx(10.0)
    assert step_seconds(10, 8, blas=True, y_size=1 << 20, direct=True) == pytest.approx(10.0)


_SIMULATED = """
import sys
import torch
import adntn
import kernels.cuda
from kernels import numba_weight
from kernels.executor import _backend

assert _backend(torch.device("cpu")) is kernels.cuda  # the simulator stands in for the GPU
kernels.cuda.BLAS_MIN_K = int(sys.argv[1])
kernels.cuda.REDUCE_BLAS_MIN = int(sys.argv[2])
cases = [
    ("ttn", {"bond_dim": 2, "n_factors": 2}),
    ("attn", {"bond_dim": 2, "n_factors": 2, "disentangle_legs": "both", "activation": "gelu"}),
    ("mera", {"bond_dim": 2, "n_factors": 4, "activation": "relu"}),
]
worst = 0.0
for arch, kw in cases:
    torch.manual_seed(0)
    g = adntn.make_generator(arch, 6, 8, executor="torch", **kw).double()
    grad = torch.randn(g.out_padded, g.in_padded, dtype=torch.float64)
    w = g.run_groups()[-1].reshape(g.out_padded, g.in_padded)
    (w * grad).sum().backward()
    ref = {k: p.grad.clone() for k, p in g.cores.items()}
    g.zero_grad()
    w2 = numba_weight(g)
    (w2 * grad).sum().backward()
    worst = max(worst, float((w2 - w).detach().abs().max()))
    worst = max(worst, *(float((p.grad - ref[k]).abs().max() / ref[k].abs().max()) for k, p in g.cores.items()))
print(worst)
"""


@pytest.mark.parametrize(
    ("blas_min_k", "reduce_blas_min"),
    # fused kernels only; every product through matmul; fused forward with a matmul backward
    [(1000, 10**6), (1, 10**6), (1000, 1)],
)
def test_cuda_kernels_agree_with_torch_under_the_simulator(tmp_path, blas_min_k, reduce_blas_min):
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "TNPLAN_CACHE_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", _SIMULATED, str(blas_min_k), str(reduce_blas_min)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) < 1e-10


def test_cuda_module_restores_numpy_row_stack_for_numba_cuda():
    import os
    import subprocess
    import sys

    # NumPy 2.5 dropped np.row_stack, which numba-cuda still overloads when it first compiles.
    code = (
        "import numpy as np\n"
        "del np.row_stack\n"
        "import kernels.cuda\n"
        "assert np.row_stack is np.vstack, np.row_stack\n"
        "print('ok')\n"
    )
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_intermediates_are_written_in_the_layout_their_consumer_reads(monkeypatch):
    from types import SimpleNamespace

    from kernels import executor
    from tnplan import Network

    # The second step reads the first's output transposed to (j, m, k) unless it was written so.
    net = Network.from_einsum("ij,jkl,lm->imk", (4, 5), (5, 8, 6), (6, 8))
    group = SimpleNamespace(activation="identity", network=net, ssa_path=((1, 2), (0, 3)))
    last = executor.group_steps(group, blas=False).steps[1]
    assert last.right == 3 and last.y_axes == (0, 1, 2)  # no transposing copy of the intermediate
    monkeypatch.setattr(executor, "_wanted_layouts", lambda *args: {})
    assert executor.group_steps(group, blas=False).steps[1].y_axes != (0, 1, 2)


@pytest.mark.parametrize(("rows", "blas"), [(16, True), (1, False)])
def test_a_right_operand_past_the_caches_goes_to_blas_whatever_the_calibration(rows, blas, pin_calibration):
    from types import SimpleNamespace

    from kernels import executor
    from tnplan import Network

    # A calibration where the fused loop is 4x cheaper per flop; |Yc| = 16 x 2^20 is past HUGE_Y. With
    # 16 output rows the fused loop would stream Yc 16 times, BLAS once; one row streams it once either way.
    pin_calibration(numba=1.0, blas=4.0)
    net = Network.from_einsum("ij,jk->ik", (rows, 16), (16, 1 << 20))
    group = SimpleNamespace(activation="identity", network=net, ssa_path=((0, 1),))
    (step,) = executor.group_steps(group).steps
    assert step.bkn[0] * step.bkn[1] * step.bkn[2] > executor.HUGE_Y
    assert step.blas == blas


@pytest.mark.parametrize(("arch", "kwargs"), [ARCHS[1], ARCHS[2]])
def test_numpy_backed_buffers_change_no_number(arch, kwargs, monkeypatch, torch_reference):
    from kernels import memory

    monkeypatch.setattr(memory, "HUGE_BYTES", 1)  # every buffer through numpy's huge-page allocator
    torch.manual_seed(2)
    g = adntn.make_generator(arch, 20, 30, executor="torch", **kwargs).to(torch.float64)
    grad = torch.randn(g.out_padded, g.in_padded, dtype=torch.float64)
    w_ref, g_ref = torch_reference(g, grad)
    for blas in (True, False):
        g.zero_grad()
        w = numba_weight(g, blas)
        (w * grad).sum().backward()
        torch.testing.assert_close(w.detach(), w_ref, rtol=1e-10, atol=1e-10 * float(w_ref.abs().max()))
        for key, p in g.cores.items():
            torch.testing.assert_close(p.grad, g_ref[key], rtol=1e-10, atol=1e-10 * float(g_ref[key].abs().max()))


def test_host_buffers_permute_and_zero_like_torch(monkeypatch):
    from kernels import memory

    t = torch.randn(3, 4, 5, dtype=torch.float64)
    for huge in (1, memory.HUGE_BYTES):
        monkeypatch.setattr(memory, "HUGE_BYTES", huge)
        out = memory.permuted(t.reshape(-1), (3, 4, 5), (2, 0, 1))
        assert out.shape == (60,) and torch.equal(out, t.permute(2, 0, 1).reshape(-1))
        assert memory.permuted(t, (3, 4, 5), (0, 1, 2)).data_ptr() == t.data_ptr()  # no copy
        zeros = memory.zeros(1 << 20, torch.float32)
        assert zeros.dtype == torch.float32 and zeros.shape == (1 << 20,) and not zeros.any()
        assert memory.empty(7, torch.float64).shape == (7,)


# (1, 1): every run split into single columns, one row per tile; (48, 4): whole short runs, long
# ones split, blocks of rows; the defaults: whole-width tiles of many rows.
@pytest.mark.parametrize(("elements", "width"), [(1, 1), (48, 4), (None, None)])
@pytest.mark.parametrize(("arch", "kwargs"), ARCHS)
def test_blas_steps_in_tiles_match_torch(arch, kwargs, elements, width, monkeypatch, torch_reference):
    import kernels.executor as ex

    seen = []
    tiles = ex._tiles

    def checked(nn, run, outer, rows):
        table, block = tiles(nn, run, outer, rows)
        seen.append((len(table), -(-rows // block)))
        lo, hi, r0, length, c0, w = table.T
        # The tiles cover the nn columns once, in order: whole runs, or pieces of one run.
        assert c0[0] == 0 and (c0[1:] == c0[:-1] + w[:-1]).all() and c0[-1] + w[-1] == nn
        assert (c0 == lo * run + r0).all() and (w == (hi - lo) * length).all() and (r0 + length <= run).all()
        assert ((r0 == 0) & (length == run) | (hi - lo == 1)).all()
        assert 1 <= block <= rows
        return table, block

    # Small tiles, and the scatter-to-Z path for every BLAS step.
    if elements is not None:
        monkeypatch.setattr(ex, "TILE_ELEMENTS", elements)
        monkeypatch.setattr(ex, "TILE_MAX_WIDTH", width)
    monkeypatch.setattr(ex, "_tiles", checked)
    monkeypatch.setattr(kernels.steps, "_blocks", lambda *a: None)
    torch.manual_seed(0)
    g = adntn.make_generator(arch, 20, 30, executor="torch", **kwargs).double()
    grad = torch.randn(g.out_padded, g.in_padded, dtype=torch.float64)
    w_ref, g_ref = torch_reference(g, grad)
    g.zero_grad()
    try:
        w = numba_weight(g, True)
        (w * grad).sum().backward()
    finally:
        tiles.cache_clear()
    if elements is not None:  # the steps really ran in several tiles and row blocks
        assert max(n for n, _ in seen) > 1 and max(b for _, b in seen) > 1
    torch.testing.assert_close(w.detach(), w_ref, rtol=1e-10, atol=1e-10 * float(w_ref.abs().max()))
    for key, p in g.cores.items():
        torch.testing.assert_close(p.grad, g_ref[key], rtol=1e-10, atol=1e-10 * float(g_ref[key].abs().max()))


def test_blas_kernels_leave_the_blas_thread_count_as_they_found_it():
    import kernels.numba_cpu as cpu

    libraries = cpu._blas_libraries()
    before = [lib["num_threads"] for lib in libraries.info()]
    with cpu._one_blas_thread():
        with cpu._one_blas_thread():  # nested (or concurrent) users share the limit
            assert all(lib["num_threads"] == 1 for lib in libraries.info())
        assert all(lib["num_threads"] == 1 for lib in libraries.info())
    assert [lib["num_threads"] for lib in libraries.info()] == before


def test_the_kernels_leave_torch_at_the_thread_count_it_was_given(tmp_path):
    import os
    import subprocess
    import sys

    # numba's thread pool, started by the first parallel step, sets the OpenMP thread count that
    # torch reads back to NUMBA_NUM_THREADS.
    code = (
        "import numba, torch\n"
        "torch.set_num_threads(2)\n"
        "import adntn\n"
        "layer = adntn.TNLinear(64, 64, 'ttn', 2, n_factors=4, mode='materialize')\n"
        "layer(torch.randn(3, 64)).sum().backward()\n"
        "print(torch.get_num_threads(), numba.get_num_threads())\n"
    )
    env = {**os.environ, "NUMBA_NUM_THREADS": "4", "TNPLAN_CACHE_DIR": str(tmp_path), "ADNTN_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["2", "2"]


def test_host_buffer_cache_reuses_only_what_nothing_refers_to(monkeypatch):
    from kernels import memory

    memory.empty_cache()
    n = memory.HUGE_BYTES // 4  # a big float32 buffer
    a = memory.empty(n, torch.float32)
    a.fill_(7.0)
    ptr = a.data_ptr()
    view, arr = a[1:], a.numpy()
    del a
    b = memory.empty(n, torch.float32)
    assert b.data_ptr() != ptr  # a view and a numpy array still hold the first buffer
    del view, arr
    c = memory.zeros(n, torch.float32)
    assert c.data_ptr() == ptr and not c.any()  # reused, and zeroed as asked
    assert memory.cached_bytes() == (2 * n * 4, 0)
    del b, c
    assert memory.cached_bytes() == (0, 2 * n * 4)
    memory.empty_cache()
    assert memory.cached_bytes() == (0, 0)

    # Over the cap the oldest free buffers go; a cap of 0 keeps none.
    monkeypatch.setattr(memory, "CACHE_BYTES", n * 4)
    for _ in range(3):
        memory.empty(n, torch.float32)
    assert memory.cached_bytes() == (0, n * 4)
    monkeypatch.setattr(memory, "CACHE_BYTES", 0)
    memory.empty_cache()
    memory.empty(n, torch.float32)
    assert memory.cached_bytes() == (0, 0)


def test_host_buffer_cache_never_hands_one_buffer_to_two_threads():
    from kernels import memory

    memory.empty_cache()
    n = memory.HUGE_BYTES // 4
    held, errors = [], []

    def grab():
        try:
            for _ in range(20):
                t = memory.empty(n, torch.float32)
                held.append(t)  # every buffer stays in use, so none may be handed out twice
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=grab) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({t.data_ptr() for t in held}) == len(held) == 80
    held.clear()
    memory.empty_cache()
