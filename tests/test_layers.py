import collections
import copy
import io
import math
import pickle
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional

import adntn
import tnplan
from adntn import AdntnError, TNConv2d, TNLinear, compress
from adntn.layers import DECISION_ROWS, WRITE_WEIGHT

STREAMABLE = [
    ("ttn", {"bond_dim": 3, "n_factors": 3}),
    ("attn", {"bond_dim": 3, "n_factors": 4, "disentangle_legs": "both"}),
    ("mera", {"bond_dim": 3, "n_factors": 4, "activation": "tanh"}),
]


@pytest.mark.parametrize(("arch", "kwargs"), STREAMABLE)
def test_stream_and_materialize_agree_on_outputs_and_gradients(arch, kwargs):
    torch.manual_seed(0)
    layer = TNLinear(30, 20, arch, mode="materialize", **kwargs).double()  # 30 and 20 pad to the factors
    x = torch.randn(7, 30, dtype=torch.float64, requires_grad=True)
    results = []
    for mode in ("materialize", "stream"):
        layer.mode = mode
        layer.zero_grad()
        x.grad = None
        y = layer(x)
        (y * torch.arange(y.numel(), dtype=y.dtype).reshape(y.shape).cos()).sum().backward()
        results.append((y.detach(), x.grad.clone(), {k: p.grad.clone() for k, p in layer.named_parameters()}))
    (y0, gx0, gp0), (y1, gx1, gp1) = results
    torch.testing.assert_close(y0, y1, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gx0, gx1, rtol=1e-10, atol=1e-12)
    for k in gp0:
        torch.testing.assert_close(gp0[k], gp1[k], rtol=1e-10, atol=1e-12)


def test_leading_dimensions_are_kept_like_nn_linear():
    layer = TNLinear(16, 12, bond_dim=2, n_factors=2, mode="stream")
    x = torch.randn(2, 3, 16)
    assert layer(x).shape == (2, 3, 12)
    torch.testing.assert_close(layer(x), functional.linear(x, layer.generate_weight(), layer.bias))


def test_auto_mode_follows_the_planned_costs_on_cuda():
    layer = TNLinear(4096, 4096, "ttn", bond_dim=8)
    gen = layer.generator
    for b in DECISION_ROWS:
        cuda_cost = gen.stream_cost_at(b, WRITE_WEIGHT["cuda"]) < gen.materialize_cost(b, WRITE_WEIGHT["cuda"])
        for regime in ("forward", "weights", "input"):
            assert layer.uses_stream(b, torch.device("cuda"), regime) == layer.uses_stream(b, "cuda:1") == cuda_cost
    # Streaming 4096 rows writes ~10x the elements of materialising: on a GPU, where GEMM flops are
    # cheap and writes are not, the built weight wins; one sample through the root beats building 16.7M weights.
    assert layer.uses_stream(1, "cuda") and not layer.uses_stream(4096, "cuda")
    assert layer.mode_for(1) != "materialize"  # on the CPU too (adntn/timing.py; tests/test_timing.py)
    assert layer.compression_ratio() >= 2000


def test_auto_mode_materialises_when_the_last_segment_is_not_linear():
    layer = TNLinear(16, 16, "ttn", bond_dim=2, n_factors=2, root_activation="tanh")
    assert not layer.generator.streamable and not layer.uses_stream(1)
    with pytest.raises(AdntnError, match="mode='stream' needs a linear last segment"):
        TNLinear(16, 16, "ttn", bond_dim=2, n_factors=2, root_activation="tanh", mode="stream")


def test_forward_and_backward_never_call_the_planner(monkeypatch):
    layer = TNLinear(64, 64, "attn", bond_dim=2, n_factors=3)

    def forbidden(*args, **kwargs):
        raise AssertionError("planner called during forward")

    assert layer.generator.kron is not None and layer.generator.kron.mixer  # kron: factors and mixer
    monkeypatch.setattr(tnplan, "plan", forbidden)
    monkeypatch.setattr(tnplan.planner, "plan", forbidden)
    for mode in ("materialize", "stream", "kron"):
        layer.mode = mode
        layer(torch.randn(5, 64)).sum().backward()


def test_segments_are_planned_once_per_shape_then_hit_the_cache(tmp_path):
    cache = tnplan.PlanCache(tmp_path / "plans.sqlite")
    first = TNLinear(64, 64, "mera", bond_dim=2, n_factors=4, cache=cache)
    second = TNLinear(64, 64, "mera", bond_dim=2, n_factors=4, cache=cache)
    before = [r["cache"] for r in first.generator.plan_report()]
    after = [r["cache"] for r in second.generator.plan_report()]
    assert "miss" in before
    assert all(s in ("hit", "off") for s in after)
    assert [s == "off" for s in before] == [s == "off" for s in after]
    # The Kronecker split's factor networks are planned too, and reported (they were left out: a
    # build counted 12 searches and exported 13 plans).
    assert first.generator.kron is not None
    kron_rows = [r for r in first.generator.plan_report() if r["network"].startswith("kron:")]
    assert [r["network"] for r in kron_rows][:2] == ["kron:A", "kron:B"]
    assert sum(r["flops"] for r in kron_rows) == first.generator.kron.flops


def test_cache_only_refuses_to_plan(tmp_path):
    with pytest.raises(tnplan.PlanError, match="cache_only"):
        TNLinear(
            64, 64, "mera", bond_dim=2, n_factors=4, cache=tnplan.PlanCache(tmp_path / "empty.sqlite"), cache_only=True
        )


def test_state_dict_pickle_and_dtype_round_trips():
    torch.manual_seed(2)
    layer = TNLinear(32, 24, "attn", bond_dim=2)
    x = torch.randn(4, 32)
    other = TNLinear(32, 24, "attn", bond_dim=2)
    other.load_state_dict(layer.state_dict())
    torch.testing.assert_close(other(x), layer(x))
    clone = pickle.loads(pickle.dumps(layer))
    torch.testing.assert_close(clone(x), layer(x))
    buf = io.BytesIO()
    torch.save(layer, buf)
    buf.seek(0)
    torch.testing.assert_close(torch.load(buf, weights_only=False)(x), layer(x))
    double = copy.deepcopy(layer).double()
    assert all(p.dtype == torch.float64 for p in double.parameters())
    torch.testing.assert_close(double(x.double()).float(), layer(x), rtol=1e-5, atol=1e-6)
    moved = copy.deepcopy(layer).to("cpu", torch.float64)
    assert moved.generator.cores[next(iter(moved.generator.cores))].dtype == torch.float64


@pytest.mark.parametrize("mode", ["materialize", "stream"])
def test_torch_compile_and_export(mode):
    torch.manual_seed(3)
    layer = TNLinear(32, 24, "ttn", bond_dim=2, mode=mode)
    x = torch.randn(4, 32)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), layer(x))
    exported = torch.export.export(layer, (x,))
    torch.testing.assert_close(exported.module()(x), layer(x))


@pytest.mark.parametrize("mode", ["materialize", "stream"])
def test_torch_jit_trace_records_a_layer_that_takes_other_batch_sizes(mode):
    # Under torch.jit.trace the batch size is a tensor, which the mode choice refused.
    torch.manual_seed(3)
    layer = TNLinear(32, 24, "ttn", bond_dim=2, mode=mode, bias=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(layer, torch.randn(4, 32), check_trace=False)
    for rows in (4, 7):
        x = torch.randn(rows, 32)
        torch.testing.assert_close(traced(x), layer(x))


def test_conv_is_a_drop_in_for_nn_conv2d():
    torch.manual_seed(4)
    conv = TNConv2d(3, 8, 3, stride=2, padding=1, dilation=1, arch="ttn", bond_dim=2)
    ref = nn.Conv2d(3, 8, 3, stride=2, padding=1)
    x = torch.randn(2, 3, 9, 9)
    assert conv(x).shape == ref(x).shape
    assert conv.generate_weight().shape == ref.weight.shape
    torch.testing.assert_close(conv(x), functional.conv2d(x, conv.generate_weight(), conv.bias, 2, 1))
    assert conv.compression_ratio() == pytest.approx(8 * 27 / conv.generator.num_parameters())
    with pytest.raises(AdntnError, match="always builds its kernel"):
        TNConv2d(3, 8, 3, mode="stream")
    with pytest.raises(AdntnError, match=r"expects \(N, 3, H, W\)"):
        conv(torch.randn(2, 4, 9, 9))


def test_from_linear_fits_a_representable_weight_and_reports_the_error():
    torch.manual_seed(5)
    teacher = TNLinear(16, 16, "ttn", bond_dim=2, n_factors=2, bias=True)
    dense = nn.Linear(16, 16)
    with torch.no_grad():
        dense.weight.copy_(teacher.generate_weight())
    fitted = TNLinear.from_linear(dense, "ttn", bond_dim=2, n_factors=2, steps=400, lr=0.05)
    w = fitted.generate_weight().detach()
    actual = float((w - dense.weight.detach()).norm() / dense.weight.detach().norm())
    assert fitted.fit_error == pytest.approx(actual, rel=1e-5)
    assert fitted.fit_error < 0.05
    torch.testing.assert_close(fitted.bias, dense.bias)
    again = TNLinear.from_linear(dense, "ttn", bond_dim=2, n_factors=2, steps=400, lr=0.05)
    assert again.fit_error == fitted.fit_error  # deterministic for a seed


def test_from_conv_copies_geometry_and_bias():
    dense = nn.Conv2d(2, 4, (3, 2), stride=(1, 2), padding=(1, 0))
    fitted = TNConv2d.from_conv(dense, "ttn", bond_dim=2, steps=50)
    assert (fitted.stride, fitted.padding, fitted.kernel_size) == ((1, 2), (1, 0), (3, 2))
    torch.testing.assert_close(fitted.bias, dense.bias)
    assert 0 < fitted.fit_error < 1.5


def test_compress_replaces_named_layers_and_reports_ratios():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10), nn.Conv2d(3, 8, 3))
    report = compress(model, {"0": "ttn:bond=2", "2": {"arch": "mera", "bond_dim": 2}, "3": "attn:bond=2"})
    assert isinstance(model[0], TNLinear) and isinstance(model[2], TNLinear) and isinstance(model[3], TNConv2d)
    assert [r["layer"] for r in report.rows] == ["0", "2", "3"]
    for r, idx in zip(report.rows, (0, 2, 3), strict=True):
        assert r["dense_params"] == model[idx].dense_weight_numel()
        assert r["compression"] == pytest.approx(r["dense_params"] / r["generator_params"])
    assert "| 0 | linear | ttn |" in report.to_markdown()
    assert model[:3](torch.randn(3, 64)).shape == (3, 10)


def test_compress_with_globs_and_fit():
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16), nn.ReLU())
    report = compress(model, {"*": "ttn:bond=2:steps=20"}, fit=True)
    assert len(report.rows) == 2 and all(r["fit_error"] is not None for r in report.rows)


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"fc9": "ttn"}, "rule 'fc9' matches no layer; layers that can be compressed: 0, 2"),
        ({"1": "ttn"}, "layer '1' is a ReLU"),
        ({"0": "ttn:bond"}, "bad option 'bond'"),
        ({"0": "ttn:bond=x"}, "must be an integer"),
        ({"0": "cp:bond=2"}, "unknown architecture 'cp'"),
        ({"1*": "ttn:bond=2"}, r"rule '1\*' matches only layers that cannot compress \('1' is a ReLU.*can: 0, 2"),
        ({"0": "ttn:bnd=2"}, "layer '0': TNLinear: unknown option 'bnd'"),
        ({"*": "ttn:bond=2:mode=kron"}, "layer '.*': mode='kron' needs"),
        ({"0": "ttn:bond=2:lr=0.1"}, "layer '0': option\\(s\\) lr set how a layer is fitted; pass fit=True"),
        (["0"], "rules must map layer names or patterns to specs"),
    ],
)
def test_compress_rejects_bad_rules(rules, message):
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    with pytest.raises(AdntnError, match=message):
        compress(model, rules)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"mode": "fast"}, "unknown mode 'fast'"), ({"bond_dim": -1}, "bond_dim must be a positive integer")],
)
def test_bad_layer_configuration(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TNLinear(16, 16, **kwargs)
    with pytest.raises(AdntnError, match="last dimension 16"):
        TNLinear(16, 16, bond_dim=2)(torch.randn(2, 15))
    assert adntn.TNLinear is TNLinear


@pytest.mark.parametrize(
    ("shape", "x_grad", "bias"), [((5, 64), True, True), ((2, 3, 64), True, False), ((5, 64), False, True)]
)
def test_overlapped_linear_gives_the_plain_layers_outputs_and_gradients(shape, x_grad, bias):
    from adntn.overlap import overlapped_linear

    torch.manual_seed(0)
    layer = TNLinear(64, 32, "ttn", 3, mode="materialize", bias=bias).double()
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=x_grad)
    dy = torch.randn(*shape[:-1], 32, dtype=torch.float64)
    wrt = [*layer.parameters()] + ([x] if x_grad else [])
    plain = torch.nn.functional.linear(x, layer.generator(), layer.bias).relu()
    split = overlapped_linear(x, layer.generator, layer.bias).relu_()  # in place on the output is allowed
    torch.testing.assert_close(split, plain, rtol=0, atol=1e-12)
    for got, want in zip(torch.autograd.grad(split, wrt, dy), torch.autograd.grad(plain, wrt, dy), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_overlap_is_a_setting_not_state():
    a, b = TNLinear(16, 8, "ttn", 2, overlap=False), TNLinear(16, 8, "ttn", 2)
    assert (a.overlap, b.overlap) == (False, True)
    assert a.state_dict().keys() == b.state_dict().keys()


def test_overlapped_linear_follows_autocast_like_linear():
    from adntn.overlap import overlapped_linear

    torch.manual_seed(0)
    layer = TNLinear(64, 32, "ttn", 3, mode="materialize")
    x = torch.randn(5, 64, requires_grad=True)
    wrt = [*layer.parameters(), x]
    results = []
    for run in (lambda: functional.linear(x, layer.generator(), layer.bias),
                lambda: overlapped_linear(x, layer.generator, layer.bias)):  # fmt: skip
        with torch.autocast("cpu", torch.bfloat16):
            y = run()
        results.append((y, torch.autograd.grad(y.float().square().sum(), wrt)))
    (plain, plain_grads), (split, split_grads) = results
    assert split.dtype == plain.dtype == torch.bfloat16
    torch.testing.assert_close(split, plain, rtol=0, atol=0)
    for got, want, like in zip(split_grads, plain_grads, wrt, strict=True):
        assert got.dtype == like.dtype
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_a_failing_compress_leaves_the_model_unchanged():
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    with pytest.raises(AdntnError, match="bond_dim must be a positive integer"):
        compress(model, {"0": "ttn:bond=2", "2": "ttn:bond=0"})  # layer 0 builds, layer 2 fails
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear]


def test_compress_keeps_a_shared_layer_shared_under_every_name():
    shared = nn.Linear(16, 16)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    report = compress(model, {"*": "ttn:bond=2"})
    assert isinstance(model[0], TNLinear) and model[2] is model[0]
    assert len(report.rows) == 1
    assert sum(p.numel() for p in model.parameters()) == model[0].num_parameters()
    model = nn.Sequential(shared, nn.ReLU(), shared)
    compress(model, {"2": "ttn:bond=2"})  # the second name of the layer matches too
    assert isinstance(model[0], TNLinear) and model[2] is model[0]


def test_compress_globs_skip_layers_that_cannot_compress_and_names_refuse_them():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2)
            self.conv = nn.Conv2d(4, 16, 3)
            self.att = nn.MultiheadAttention(16, 2, batch_first=True)
            self.ff = nn.Linear(16, 16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.conv(self.grouped(x)).flatten(2).transpose(1, 2)
            return self.ff(self.att(x, x, x)[0])

    block = Block()
    report = compress(block, {"*": "ttn:bond=2"})
    assert [r["layer"] for r in report.rows] == ["conv", "ff"]
    assert type(block.grouped) is nn.Conv2d and type(block.att.out_proj) is not TNLinear
    assert block(torch.randn(2, 4, 5, 5)).shape == (2, 9, 16)
    with pytest.raises(AdntnError, match="'grouped' is a grouped or non-zero-padded convolution"):
        compress(Block(), {"grouped": "ttn:bond=2"})
    with pytest.raises(AdntnError, match=r"'att\.out_proj' is an nn\.MultiheadAttention's out_proj"):
        compress(Block(), {"att.out_proj": "ttn:bond=2"})
    with pytest.raises(AdntnError, match="uninitialised LazyLinear; run a forward pass first"):
        compress(nn.Sequential(nn.LazyLinear(4)), {"0": "ttn:bond=2"})


def test_spec_values_become_numbers_and_booleans_and_bias_follows_the_spec():
    from adntn.compress import parse_spec

    assert parse_spec("ttn:bond=4:steps=5:lr=0.1:lateral=true:activation=gelu") == {
        "arch": "ttn",
        "bond_dim": 4,
        "steps": 5,
        "lr": 0.1,
        "lateral": True,
        "activation": "gelu",
    }
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 8, bias=False))
    rules = {"0": "ttn:bond=2:steps=3:lr=0.1:bias=false", "1": "ttn:bond=2:steps=3:bias=true"}
    report = compress(model, rules, fit=True)
    assert all(r["fit_error"] is not None for r in report.rows)
    assert model[0].bias is None
    torch.testing.assert_close(model[1].bias, torch.zeros(8))  # a zero bias keeps the fitted function
    assert TNLinear.from_linear(nn.Linear(16, 8), "ttn", bond_dim=2, steps=2, bias=False).bias is None


def test_fitting_runs_under_no_grad_and_refuses_inference_mode():
    torch.manual_seed(7)
    dense = nn.Linear(16, 16)
    free = TNLinear.from_linear(dense, "ttn", bond_dim=2, n_factors=2, steps=20, lr=0.05)
    with torch.no_grad():
        fitted = TNLinear.from_linear(dense, "ttn", bond_dim=2, n_factors=2, steps=20, lr=0.05)
        report = compress(nn.Sequential(nn.Linear(16, 16)), {"0": "ttn:bond=2:steps=5"}, fit=True)
    assert fitted.fit_error == pytest.approx(free.fit_error) and report.rows[0]["fit_error"] is not None
    with torch.inference_mode(), pytest.raises(AdntnError, match="inference_mode"):
        TNLinear.from_linear(dense, "ttn", bond_dim=2, steps=2)


def test_tn_layers_expose_their_generated_weight_like_dense_layers():
    torch.manual_seed(8)
    layer = TNLinear(16, 12, "ttn", bond_dim=2)
    assert layer.weight.shape == nn.Linear(16, 12).weight.shape
    x = torch.randn(3, 16)
    torch.testing.assert_close(functional.linear(x, layer.weight, layer.bias), layer(x))
    layer.weight.square().sum().backward()
    assert all(p.grad is not None for p in layer.generator.parameters())
    assert not any(key.endswith("weight") for key in layer.state_dict())
    with pytest.raises(AttributeError):
        layer.weight = torch.zeros(12, 16)
    conv = TNConv2d(3, 8, (3, 2), bond_dim=2)
    assert conv.weight.shape == nn.Conv2d(3, 8, (3, 2)).weight.shape == conv.weight_shape()


def test_unknown_options_are_named_with_the_valid_ones():
    with pytest.raises(AdntnError, match=r"unknown option 'activaton' \(did you mean 'activation'\?\) for arch='ttn'"):
        TNLinear(16, 16, "ttn", 2, activaton="relu")
    with pytest.raises(AdntnError, match=r"TNLinear: unknown option 'bnd'.*valid options: .*bond_dim"):
        compress(nn.Sequential(nn.Linear(16, 16)), {"0": "ttn:bnd=2"})
    with pytest.raises(AdntnError, match="supports groups=1 and padding_mode='zeros' only, got groups=2"):
        TNConv2d(4, 6, 3, groups=2)
    with pytest.raises(AdntnError, match="padding_mode='reflect'"):
        TNConv2d(4, 6, 3, padding_mode="reflect")
    with pytest.raises(AdntnError, match="in_features come from the layer replaced"):
        compress(nn.Sequential(nn.Linear(16, 16)), {"0": "ttn:bond=2:in_features=8"})
    assert TNConv2d(4, 6, 3, bond_dim=2, groups=1, padding_mode="zeros").weight.shape == (6, 4, 3, 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"padding": "full"}, "padding must be 'same', 'valid', an int or a pair of ints, got 'full'"),
        ({"padding": "same", "stride": 2}, "padding='same' is not supported for strided convolutions"),
        ({"stride": 0}, "stride must be >= 1, got 0"),
        ({"dilation": (1, 0)}, r"dilation must be >= 1, got \(1, 0\)"),
    ],
)
def test_conv_refuses_what_conv2d_would_at_construction(kwargs, message):
    with pytest.raises(AdntnError, match=message):
        TNConv2d(4, 6, 3, bond_dim=2, **kwargs)


def test_state_dicts_of_another_size_are_refused_even_when_the_cores_match():
    wide, narrow = TNLinear(64, 64, "ttn", 2, bias=False), TNLinear(64, 63, "ttn", 2, bias=False)
    assert {k: v.shape for k, v in wide.state_dict().items()} == {k: v.shape for k, v in narrow.state_dict().items()}
    with pytest.raises(RuntimeError, match=r"saved by a layer generating a \(64, 64\) weight, this one generates"):
        narrow.load_state_dict(wide.state_dict())
    rebuilt = {k: v for k, v in wide.state_dict().items()}  # as when stripping DDP's "module.": no metadata
    with pytest.raises(RuntimeError, match=r"saved by a layer generating a \(64, 64\) weight"):
        narrow.load_state_dict(rebuilt)
    with pytest.raises(RuntimeError, match=r"saved by a layer generating a \(64, 64\) weight"):
        narrow.load_state_dict({k: v.float() for k, v in rebuilt.items()})  # cast as a whole
    older = {k: v for k, v in rebuilt.items() if k != "_extra_state"}
    narrow.load_state_dict(older)  # state dicts saved before the shape was recorded load as before
    recorded = collections.OrderedDict(older)  # saved when the shape was kept in the metadata
    recorded._metadata = {"": {"weight_shape": [64, 64]}}
    with pytest.raises(RuntimeError, match=r"saved by a layer generating a \(64, 64\) weight"):
        narrow.load_state_dict(recorded)
    same = TNLinear(64, 64, "ttn", 2, bias=False)
    same.load_state_dict(wide.state_dict())
    torch.testing.assert_close(same.weight, wide.weight)


def _penalised_grads(layer_out, params, x):
    """Parameter gradients of a gradient penalty (second-order terms through dx)."""
    (gx,) = torch.autograd.grad(layer_out(x).pow(2).sum(), x, create_graph=True)
    return torch.autograd.grad(gx.pow(2).sum(), params)


def test_overlapped_linear_second_order_and_torch_func_match_the_plain_layer():
    # dx = dy W used a detached W, so a gradient penalty's second-order terms in W were silently lost.
    from adntn.overlap import overlapped_linear

    torch.manual_seed(0)
    layer = TNLinear(37, 29, "ttn", 3, mode="materialize").double()
    params = [*layer.parameters()]
    x = torch.randn(4, 37, dtype=torch.float64, requires_grad=True)
    plain = _penalised_grads(lambda v: functional.linear(v, layer.generator(), layer.bias), params, x)
    split = _penalised_grads(lambda v: overlapped_linear(v, layer.generator, layer.bias), params, x)
    for got, want in zip(split, plain, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # torch.func transforms cannot run its autograd nodes: it computes the plain layer then.
    loss = lambda v: overlapped_linear(v, layer.generator, layer.bias).square().sum()  # noqa: E731
    want = torch.autograd.grad(loss(x), x)[0]
    torch.testing.assert_close(torch.func.grad(loss)(x.detach()), want, rtol=1e-12, atol=1e-12)


def test_mode_for_checks_its_arguments_and_matches_forward_on_an_empty_batch():
    layer = TNLinear(37, 29, "ttn", 3)
    assert layer.mode_for(0) == "materialize"  # what forward runs for an empty batch
    for rows, regime in ((-1, "input"), (1.5, "input"), (4, "train")):
        with pytest.raises(AdntnError, match=r"rows must be|unknown regime"):
            layer.mode_for(rows, regime=regime)
    with pytest.raises(AdntnError, match="last dimension 37"):
        layer(torch.tensor(1.0))


def test_conv_mode_is_checked_when_set_later_too():
    conv = TNConv2d(4, 6, 3, arch="ttn", bond_dim=2)
    for bad in ("stream", "kron", "bogus"):
        with pytest.raises(AdntnError):
            conv.mode = bad
    conv.mode = "materialize"
    assert conv.mode == "materialize"
    assert pickle.loads(pickle.dumps(conv)).mode == "materialize"


def test_compress_handles_back_references_and_nested_sharing():
    # named_modules(remove_duplicate=False) recursed forever on a back-reference and walked a shared
    # subtree once per path (2**depth).
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 16)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(16, 16)
            self.head = Head()

    m = Model()
    m.head.owner = m
    compress(m, {"a": "ttn:bond=2", "head.fc": "ttn:bond=2"})
    assert isinstance(m.a, TNLinear) and isinstance(m.head.fc, TNLinear) and m.head.owner is m

    class Block(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.left = inner
            self.right = inner

    inner = nn.Linear(8, 8)
    top = inner
    for _ in range(40):
        top = Block(top)
    compress(top, {"*": "ttn:bond=2"})
    deepest = top
    for _ in range(39):
        deepest = deepest.left
    assert isinstance(deepest.left, TNLinear) and deepest.left is deepest.right


def test_setting_auto_again_decides_again(monkeypatch):
    layer = TNLinear(32, 24, "ttn", bond_dim=2, mode="auto")
    calls = []
    monkeypatch.setattr(TNLinear, "_decide", lambda self: calls.append(1) or {"cpu": {}, "cuda": {}})
    layer.mode = "auto"  # after torch.set_num_threads changed, say
    layer.mode = "auto"
    assert calls == [1, 1] and layer.auto_modes == {"cpu": {}, "cuda": {}}


@pytest.mark.parametrize("case", ["zero", "float16"])
def test_fitting_a_zero_or_half_precision_weight_keeps_finite_cores(case):
    linear = nn.Linear(32, 16)
    if case == "zero":
        nn.init.zeros_(linear.weight)  # no relative error: the absolute one, ||W||, is fitted
    else:
        linear = linear.half()  # Adam's steps in float16 overflowed to nan
    fitted = TNLinear.from_linear(linear, "ttn", bond_dim=2, steps=20)
    assert math.isfinite(fitted.fit_error)
    assert all(torch.isfinite(p).all() for p in fitted.parameters())
    assert next(fitted.generator.parameters()).dtype == linear.weight.dtype
    if case == "zero":
        assert fitted.fit_error == pytest.approx(float(fitted.weight.detach().float().norm()), rel=1e-4)
    with pytest.raises(AdntnError, match="steps must be an integer >= 0, got -1"):
        TNLinear.from_linear(nn.Linear(32, 16), "ttn", bond_dim=2, steps=-1)
    broken = nn.Linear(32, 16)
    with torch.no_grad():
        broken.weight[0, 0] = float("nan")
    with pytest.raises(AdntnError, match="inf or nan"):
        TNLinear.from_linear(broken, "ttn", bond_dim=2, steps=2)


def test_a_cache_without_the_kron_split_builds_the_layer_and_says_so(tmp_path):
    # An export from before the split's factor networks were planned: under cache_only the split was
    # dropped without a word, so mode="kron" vanished and auto never weighed it.
    from adntn.generator import STREAM_BUCKETS

    # A MERA's split: its B factor is a 4-tensor network (smaller ones are enumerated, never cached).
    full = TNLinear(256, 256, "mera", bond_dim=4, cache=tnplan.PlanCache(tmp_path / "full.sqlite"))
    gen = full.generator
    assert gen.kron is not None
    partial = tnplan.PlanCache(tmp_path / "partial.sqlite")
    for network in [g.network for g in gen.groups] + [gen._stream_network(b) for b in STREAM_BUCKETS]:
        tnplan.plan(network, cache=partial)
    with pytest.warns(UserWarning, match="lacks this generator's Kronecker split"):
        layer = TNLinear(256, 256, "mera", bond_dim=4, cache=partial, cache_only=True)
    assert layer.generator.kron is None
    assert "kron" not in {m for picks in layer.auto_modes.values() for m in picks.values()}
