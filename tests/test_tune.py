"""Near-ties between the fused loop and BLAS are settled by timing the step (kernels.tune)."""

import contextlib
import hashlib
import json
from dataclasses import replace
from types import SimpleNamespace

import numba
import pytest
import torch

import adntn
from kernels import numba_weight, tune
from kernels.executor import compiled_steps, group_steps
from kernels.numba_cpu import GELU, IDENTITY
from kernels.steps import signature
from tnplan import Network


@pytest.fixture(autouse=True)
def _fresh_memo(monkeypatch):
    monkeypatch.setattr(tune, "_MEMO", {})


def _group(activation: str = "identity") -> SimpleNamespace:
    # 64 rows x K 8 x 4096 columns: a few milliseconds of real work per path, so timing it is quick.
    net = Network.from_einsum("ij,jk->ik", (64, 8), (8, 4096))
    return SimpleNamespace(activation=activation, network=net, ssa_path=((0, 1),))


def _entries() -> dict:
    return json.loads(tune.cache_file().read_text())["entries"]


def _forbid_timing(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("a step was timed")

    monkeypatch.setattr(tune, "_time", fail)


def test_a_near_tie_is_settled_by_the_steps_own_timing_and_kept(monkeypatch, pin_calibration):
    pin_calibration(numba=1.0, blas=1.0)  # a tie, priced far above MIN_SECONDS
    (step,) = group_steps(_group()).steps
    ((key, times),) = _entries().items()
    assert set(times) == {"fused", "blas"} and all(t > 0 for t in times.values())
    assert step.blas == (times["blas"] < times["fused"])

    # A later process reads the timing back instead of measuring again.
    real = tune._time
    monkeypatch.setattr(tune, "_MEMO", {})
    _forbid_timing(monkeypatch)
    assert group_steps(_group()).steps[0].blas == step.blas

    # The pick follows the stored times, whichever path they favour.
    path = tune.cache_file()
    data = json.loads(path.read_text())
    for fused, blas in ((1.0, 2.0), (2.0, 1.0)):
        data["entries"][key] = {"fused": fused, "blas": blas}
        path.write_text(json.dumps(data))
        monkeypatch.setattr(tune, "_MEMO", {})
        assert group_steps(_group()).steps[0].blas == (blas < fused)

    # Timings from another machine are not used.
    path.write_text(json.dumps({**data, "machine": "elsewhere"}))
    monkeypatch.setattr(tune, "_MEMO", {})
    monkeypatch.setattr(tune, "_time", real)
    group_steps(_group())
    assert json.loads(path.read_text())["machine"] != "elsewhere"
    assert all(t < 1 for t in _entries()[key].values())  # measured again, not the stored 1-2 s


def test_a_damaged_timing_is_measured_again_and_the_others_kept(monkeypatch, pin_calibration):
    pin_calibration(numba=1.0, blas=1.0)
    group_steps(_group())
    group_steps(_group("relu"))  # the last step's activation is part of the key: a second entry
    entries = _entries()
    assert len(entries) == 2
    damaged, kept = sorted(entries)
    entries[damaged] = {"fused": "fast", "blas": 1.0}
    entries[kept] = {"fused": 7.0, "blas": 8.0}
    path = tune.cache_file()
    path.write_text(json.dumps({**json.loads(path.read_text()), "entries": entries}))
    monkeypatch.setattr(tune, "_MEMO", {})
    group_steps(_group())
    group_steps(_group("relu"))
    after = _entries()
    assert after[kept] == {"fused": 7.0, "blas": 8.0}
    assert all(isinstance(t, float) and 0 < t < 1 for t in after[damaged].values())


@pytest.mark.parametrize(
    ("numba", "blas", "timed"),
    [(1.0, 1.4, True), (1.4, 1.0, True), (1.0, 1.6, False), (1.6, 1.0, False), (1e-14, 1e-14, False)],
)
def test_only_near_ties_worth_the_time_are_timed(numba, blas, timed, monkeypatch, pin_calibration):
    # Prices within TIE (1.5x) of each other are timed; further apart, or too small for a wrong pick to
    # matter, the model decides.
    pin_calibration(numba=numba, blas=blas)
    if not timed:
        _forbid_timing(monkeypatch)
    (step,) = group_steps(_group()).steps
    assert tune.cache_file().exists() == timed
    if not timed and numba != blas:
        assert step.blas == (blas < numba)


@pytest.mark.parametrize("context", ["no_grad", "inference_mode", "meta_device", "float64_default"])
def test_steps_are_timed_on_cpu_float32_data_whatever_the_callers_context(context, monkeypatch, pin_calibration):
    pin_calibration(numba=1.0, blas=1.0)
    timed = []
    real = tune._time

    def spy(step, last, code, keep_pre, reps=3):
        from kernels.executor import _CPU

        forward = _CPU.forward_step

        def record(st, x, yc, *args):
            timed.extend((x, yc))
            return forward(st, x, yc, *args)

        monkeypatch.setattr(_CPU, "forward_step", staticmethod(record))
        try:
            return real(step, last, code, keep_pre, reps)
        finally:
            monkeypatch.setattr(_CPU, "forward_step", staticmethod(forward))

    monkeypatch.setattr(tune, "_time", spy)
    contexts = {
        "no_grad": torch.no_grad,
        "inference_mode": torch.inference_mode,
        "meta_device": lambda: torch.device("meta"),
        "float64_default": _float64_default,
    }
    with contexts[context]():
        group_steps(_group())
    assert timed and all(t.device.type == "cpu" and t.dtype == torch.float32 and not t.is_inference() for t in timed)
    assert len(_entries()) == 1


@contextlib.contextmanager
def _float64_default():
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


def test_a_generator_with_timed_steps_still_matches_torch(pin_calibration, torch_reference):
    # Every step a tie: each one is timed (the last, with GELU keeping its pre-activation, and the
    # inner ones, which share one entry per shape whatever the activation), and the weight and
    # gradients are the reference's whichever path won.
    pin_calibration(numba=1.0, blas=1.0)
    torch.manual_seed(0)
    g = adntn.make_generator("ttn", 20, 30, bond_dim=2, n_factors=4, activation="gelu", executor="torch")
    g = g.to(torch.float64)
    expected = set()
    plans = compiled_steps(g)
    assert any(gs.code == GELU and gs.keep_pre for gs in plans)
    for gs in plans:
        for k, st in enumerate(gs.steps):
            last = k == len(gs.steps) - 1
            code, keep = (gs.code, gs.keep_pre) if last else (IDENTITY, False)
            threads = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
            text = repr((signature(replace(st, blas=False)), last, code, keep, threads))
            expected.add(hashlib.sha256(text.encode()).hexdigest()[:24])
    assert set(_entries()) == expected and len(expected) > 1
    grad = torch.randn(g.out_padded, g.in_padded, dtype=torch.float64)
    w_ref, ref = torch_reference(g, grad)
    g.zero_grad()
    w = numba_weight(g)
    (w * grad).sum().backward()
    torch.testing.assert_close(w.detach(), w_ref, rtol=1e-10, atol=1e-12)
    for k, p in g.cores.items():
        torch.testing.assert_close(p.grad, ref[k], rtol=1e-10, atol=1e-12)


def test_concurrent_writers_keep_each_others_entries(tmp_path):
    import threading
    import time

    from kernels.calibrate import add_entry

    path = tmp_path / "cache.json"

    def slow_read(p):  # a slow reader widens the window between read and write
        try:
            entries = json.loads(p.read_text())["entries"]
        except OSError:
            entries = {}
        time.sleep(0.05)
        return entries

    threads = [
        threading.Thread(target=add_entry, args=(path, {"version": 1}, f"k{i}", float(i), slow_read)) for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["entries"] == {f"k{i}": float(i) for i in range(8)}
