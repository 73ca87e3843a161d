import json

import pytest
import torch

import adntn
from adntn import TNLinear, timing
from adntn.layers import DECISION_ROWS, decision_rows

# This machine's fitted model (AMD EPYC, 1 thread, float32), so the ranking tests below do not
# depend on where they run.
EPYC = {
    "dm": 0.0, "dk": 0.0, "dn": 32.0, "per_flop": 8.56e-12, "write": 1e-18, "write_large": 1.99e-09,
    "read": 2.89e-10, "move": 2.86e-10, "move_large": 1.50e-09, "per_op": 1.12e-05,
}  # fmt: skip


def _products(ops):
    return [op.dims for op in ops if op.kind == "mm"]


@pytest.mark.parametrize("needs_dx", [False, True])
def test_trace_records_the_layer_products_of_a_materialised_step(needs_dx):
    layer = TNLinear(64, 32, "ttn", 2, n_factors=2, mode="materialize")
    products = _products(timing.trace(timing._step(layer.generator, "materialize", 5, needs_dx)))
    # The 5-row products: y = x Wᵀ, dW = dyᵀ x and, for a hidden layer, dx = dy W.
    with_rows = sorted(p for p in products if 5 in p[1:])
    expected = sorted([(1, 5, 64, 32), (1, 32, 5, 64)] + [(1, 5, 32, 64)] * needs_dx)
    assert with_rows == expected


def test_trace_sees_no_data_and_costs_nothing_to_run_at_any_batch():
    layer = TNLinear(4096, 4096, "ttn", 16, mode="materialize")
    ops = timing.trace(timing._step(layer.generator, "stream", 1 << 20, True))
    # A million-row stream would need gigabytes; on meta tensors it is shapes only.
    assert any(op.kind == "mm" and op.dims[0] * op.dims[1] * op.dims[3] >= 1 << 30 for op in ops)


def test_fit_recovers_the_model_that_made_the_timings():
    truth = {**EPYC, "dk": 2.0, "dn": 8.0, "write": 3e-11}
    gemms = [(*s, timing.gemm_seconds(truth, *s)) for s in timing.GEMM_SHAPES]
    price = {n: truth["move"] if n <= timing.LARGE // 4 else truth["move_large"] for n in timing.COPY_SIZES}
    copies = [(n, 2 * n * price[n]) for n in timing.COPY_SIZES]
    fitted = timing.fit(gemms, copies)
    for key in ("dm", "dk", "dn", "move", "move_large"):
        assert fitted[key] == pytest.approx(truth[key], rel=1e-9)
    for shape in [(1, 4096, 4096, 4096), (8, 333, 7, 65536), (1, 3, 3, 3)]:
        assert timing.gemm_seconds(fitted, *shape) == pytest.approx(timing.gemm_seconds(truth, *shape), rel=1e-6)


def test_the_model_ranks_modes_as_measured_on_this_machine():
    # benchmarks/results/kernels-kron-cpu.md, batch 4096, x without gradient: TTN χ=16 materialize
    # 2.92 s, stream 6.50 s; MERA χ=2 kron 1.28 s, materialize 2.96 s, stream 3.33 s. Flops said stream for both.
    ttn = TNLinear(4096, 4096, "ttn", 16, mode="materialize").generator
    sec = {m: timing.mode_seconds(ttn, m, 4096, False, EPYC) for m in ("materialize", "stream")}
    assert sec["materialize"] < sec["stream"]
    assert ttn.stream_cost_at(4096) < ttn.materialize_cost(4096)
    mera = TNLinear(4096, 4096, "mera", 2, mode="materialize").generator
    sec = {m: timing.mode_seconds(mera, m, 4096, False, EPYC) for m in ("materialize", "stream", "kron")}
    assert sec["kron"] < sec["materialize"] < sec["stream"]


def test_auto_takes_the_predicted_fastest_mode_per_bucket_and_regime():
    layer = TNLinear(256, 256, "mera", 2)
    gen = layer.generator
    assert gen.streamable and gen.kron is not None
    for b in DECISION_ROWS:
        for needs_dx in (False, True):
            sec = {m: timing.mode_seconds(gen, m, b, needs_dx) for m in ("materialize", "stream", "kron")}
            assert layer.mode_for(b, "cpu", needs_dx) == min(sec, key=sec.__getitem__)
            assert layer.uses_stream(b, "cpu", needs_dx) == (layer.mode_for(b, "cpu", needs_dx) != "materialize")


@pytest.mark.parametrize("picked", ["materialize", "stream", "kron"])
def test_every_mode_auto_can_pick_gives_the_layer_output_and_gradients(picked):
    torch.manual_seed(0)
    layer = TNLinear(48, 40, "attn", 3, n_factors=4).double()
    reference = TNLinear(48, 40, "attn", 3, n_factors=4, mode="materialize").double()
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(3, 48, dtype=torch.float64, requires_grad=True)
    layer.auto_modes["cpu"][decision_rows(3), True] = picked
    assert layer.mode_for(3) == picked
    ys = [m(x) for m in (layer, reference)]
    torch.testing.assert_close(ys[0], ys[1], rtol=1e-10, atol=1e-12)
    pairs = zip(ys, (layer, reference), strict=True)
    grads = [torch.autograd.grad(y.square().sum(), (x, *m.parameters())) for y, m in pairs]
    for g, r in zip(*grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)


def test_a_batch_takes_the_nearest_decision_size():
    assert [decision_rows(r) for r in (0, 1, 2, 3, 5, 200, 300, 1 << 20)] == [1, 1, 1, 4, 4, 256, 256, 16384]


def test_a_layer_switched_to_auto_decides_then():
    layer = TNLinear(32, 32, "ttn", 2, n_factors=2, mode="stream")
    assert layer.mode_for(4096) == "stream" and not layer.auto_modes["cpu"]
    layer.mode = "auto"
    assert layer.mode_for(4096) in ("materialize", "stream", "kron") and layer.auto_modes["cpu"]


def test_calibration_reads_its_cache_and_remeasures_a_bad_one(monkeypatch):
    monkeypatch.setattr(timing, "_MEMO", {})
    path = timing.cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    stored = {"version": timing.VERSION, "threads": torch.get_num_threads(), "params": {**EPYC, "per_op": 4.25e-6}}
    path.write_text(json.dumps(stored))
    assert timing.calibration()["per_op"] == 4.25e-6  # read, not measured
    monkeypatch.setattr(timing, "_MEMO", {})
    path.write_text('{"version": ' + str(timing.VERSION) + ', "params": {"per_flop": "fast"')  # cut short
    params = timing.calibration()
    assert params["per_op"] != 4.25e-6 and all(v >= 0 for v in params.values())
    assert json.loads(path.read_text())["params"] == params  # rewritten whole
    assert adntn.timing is timing


def test_an_untraceable_activation_falls_back_to_planned_flops():
    def scaled(z):  # reads a value: fine on data, impossible on meta tensors
        return torch.tanh(z / float(z.detach().abs().max().clamp_min(1.0)))

    layer = TNLinear(64, 64, "ttn", 2, n_factors=4, activation=scaled)
    gen = layer.generator
    for b in DECISION_ROWS:
        fewer = gen.stream_cost_at(b) < gen.materialize_cost(b)
        assert layer.mode_for(b) == ("stream" if fewer else "materialize")
    x = torch.randn(5, 64, requires_grad=True)
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.generate_weight(), layer.bias))
