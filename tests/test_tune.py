"""Near-ties between the fused loop and BLAS are settled by timing the step (kernels.tune)."""

import json
from types import SimpleNamespace

import pytest
import torch

import adntn
from kernels import calibrate, numba_weight, tune
from kernels.executor import compiled_steps, group_steps
from tnplan import Network


def _pinned_calibration(monkeypatch, numba: float, blas: float) -> None:
    cal = {side: dict.fromkeys(calibrate.KEYS, v) for side, v in (("numba", numba), ("blas", blas), ("direct", blas))}
    monkeypatch.setattr("kernels.calibrate._MEMO", {torch.get_num_threads(): cal})


def _group(activation: str = "identity") -> SimpleNamespace:
    # 64 rows x K 8 x 4096 columns: a few milliseconds of real work per path, so timing it is quick.
    net = Network.from_einsum("ij,jk->ik", (64, 8), (8, 4096))
    return SimpleNamespace(activation=activation, network=net, ssa_path=((0, 1),))


def _entries() -> dict:
    return json.loads(tune.cache_file().read_text())["entries"]


def _forbid_timing(monkeypatch) -> None:
    def fail(*args):
        raise AssertionError("a step was timed")

    monkeypatch.setattr(tune, "_time", fail)


def test_a_near_tie_is_settled_by_the_steps_own_timing_and_kept(monkeypatch):
    monkeypatch.setattr(tune, "_MEMO", {})
    _pinned_calibration(monkeypatch, numba=1.0, blas=1.0)  # a tie, priced far above MIN_SECONDS
    (step,) = group_steps(_group()).steps
    ((key, times),) = _entries().items()
    assert set(times) == {"fused", "blas"} and all(t > 0 for t in times.values())
    assert step.blas == (times["blas"] < times["fused"])

    # A later process reads the timing back instead of measuring again.
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


def test_a_damaged_timing_is_measured_again_and_the_others_kept(monkeypatch):
    monkeypatch.setattr(tune, "_MEMO", {})
    _pinned_calibration(monkeypatch, numba=1.0, blas=1.0)
    group_steps(_group())
    group_steps(_group("relu"))  # the activation is part of the key: a second entry
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


@pytest.mark.parametrize(("numba", "blas"), [(1.0, 1.6), (1.6, 1.0), (1e-14, 1e-14)])
def test_steps_the_model_can_call_are_not_timed(numba, blas, monkeypatch):
    # Prices more than TIE apart, or too small for a wrong pick to matter: the model decides.
    monkeypatch.setattr(tune, "_MEMO", {})
    _pinned_calibration(monkeypatch, numba=numba, blas=blas)
    _forbid_timing(monkeypatch)
    (step,) = group_steps(_group()).steps
    if numba != blas:
        assert step.blas == (blas < numba)
    assert not tune.cache_file().exists()


def test_a_generator_with_timed_steps_still_matches_torch(monkeypatch):
    # Every step a tie: each one is timed (the last, with GELU keeping its pre-activation, and the
    # inner ones), and the weight and gradients are the reference's whichever path won.
    monkeypatch.setattr(tune, "_MEMO", {})
    _pinned_calibration(monkeypatch, numba=1.0, blas=1.0)
    torch.manual_seed(0)
    g = adntn.make_generator("ttn", 20, 30, bond_dim=2, n_factors=3, arity=3, activation="gelu", executor="torch")
    g = g.to(torch.float64)
    steps = [st for gs in compiled_steps(g) for st in gs.steps]
    assert len(_entries()) == len({(st.bkn, st.flops, st.run) for st in steps}) > 1
    grad = torch.randn(g.out_padded, g.in_padded, dtype=torch.float64)
    w_ref = g.run_groups()[-1].reshape(g.out_padded, g.in_padded)
    (w_ref * grad).sum().backward()
    ref = {k: p.grad.clone() for k, p in g.cores.items()}
    g.zero_grad()
    w = numba_weight(g)
    (w * grad).sum().backward()
    torch.testing.assert_close(w.detach(), w_ref.detach(), rtol=1e-10, atol=1e-12)
    for k, p in g.cores.items():
        torch.testing.assert_close(p.grad, ref[k], rtol=1e-10, atol=1e-12)
