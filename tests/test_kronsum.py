"""The Kronecker-sum stream: Triton kernels (in Triton's CPU interpreter), the split, and mode='kron'."""

from __future__ import annotations

import math
import os

import pytest
import torch

import adntn
import tnplan
from adntn.errors import AdntnError
from kernels import KernelsError
from kernels.kronsum import kron_stream, reference

torch.set_num_threads(1)
pytest.importorskip("triton", reason="dev extras install triton (pyproject.toml)")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":  # pragma: no cover
    pytest.fail("tests/conftest.py sets TRITON_INTERPRET=1 on machines without a GPU", pytrace=False)

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _rel(u: torch.Tensor, v: torch.Tensor) -> float:
    return float((u - v).detach().norm() / v.detach().norm())


def _operands(rows, r, m, p, n, q, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(shape, generator=g, dtype=dtype, requires_grad=True)
        for shape in ((rows, p, q), (r, m, p), (r, n, q))
    ]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    ("rows", "r", "m", "p", "n", "q", "config"),
    [
        (5, 3, 16, 16, 16, 16, {}),  # one program, a partial row block
        (7, 2, 20, 12, 9, 33, {}),  # every extent padded to a power of two, masked
        (37, 4, 16, 32, 16, 16, {"rows_per_program": 2, "programs": 5}),  # several slices, a ragged last one
        (21, 2, 16, 16, 16, 16, {"forward": {"rows_per_program": 4}, "grad_b": {"rows_per_program": 2}}),
        (11, 3, 20, 16, 16, 24, {"backward": "gemm"}),  # the factors' gradients through dW
        (3, 1, 16, 16, 32, 16, {"rows_per_program": 1}),
    ],
)
def test_triton_matches_reference_forward_and_gradients(dtype, rows, r, m, p, n, q, config):
    x, a, b = _operands(rows, r, m, p, n, q, dtype, seed=rows)
    y = kron_stream(x, a, b, backend="triton", config=config)
    dy = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, a, b), dy)
    want_y = torch.einsum("rmp,bpq,rnq->bmn", a, x, b)
    want = torch.autograd.grad(want_y, (x, a, b), dy)
    assert y.shape == (rows, m, n)
    assert _rel(y, want_y) < TOL[dtype]
    for g, w in zip(got, want, strict=True):
        assert _rel(g, w) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    ("rows", "r", "m", "p", "n", "q"),
    [
        (3, 2, 130, 140, 16, 20),  # A wide: tiles of output rows, P in chunks
        (3, 2, 16, 20, 150, 130),  # B wide: the transposed problem puts it in A's place
    ],
)
def test_a_wide_factor_is_tiled_and_its_gradients_go_through_dw(dtype, rows, r, m, p, n, q):
    x, a, b = _operands(rows, r, m, p, n, q, dtype, seed=m)
    y = kron_stream(x, a, b, backend="triton")
    dy = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, a, b), dy)
    want_y = reference(x, a, b)
    want = torch.autograd.grad(want_y, (x, a, b), dy)
    assert y.shape == (rows, m, n) and _rel(y, want_y) < TOL[dtype]
    for g, w in zip(got, want, strict=True):
        assert _rel(g, w) < TOL[dtype]


def test_reference_is_the_kronecker_sum_of_the_factors():
    x, a, b = (t.detach() for t in _operands(4, 3, 2, 5, 3, 4, torch.float64, seed=1))
    w = sum(torch.kron(a[i], b[i]) for i in range(3))  # rows (m, n), columns (p, q)
    want = (x.reshape(4, -1) @ w.T).reshape(4, 2, 3)
    assert _rel(reference(x, a, b), want) < 1e-12


def test_only_the_needed_gradients_are_computed():
    x, a, b = _operands(6, 2, 16, 16, 16, 16, torch.float64, seed=2)
    x = x.detach()
    y = kron_stream(x, a, b, backend="triton")
    ga, gb = torch.autograd.grad(y.sum(), (a, b))
    ra, rb = torch.autograd.grad(reference(x, a, b).sum(), (a, b))
    assert _rel(ga, ra) < 1e-10 and _rel(gb, rb) < 1e-10


def test_same_inputs_give_identical_bits():
    x, a, b = _operands(19, 3, 16, 16, 16, 16, torch.float32, seed=3)
    cfg = {"rows_per_program": 2, "programs": 4}
    runs = []
    for _ in range(2):
        y = kron_stream(x, a, b, backend="triton", config=cfg)
        runs.append([y, *torch.autograd.grad(y.square().sum(), (x, a, b))])
    for u, v in zip(*runs, strict=True):
        assert torch.equal(u, v)


def test_auto_uses_torch_where_triton_cannot_run(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, a, b = (t.detach() for t in _operands(3, 2, 16, 16, 16, 16, torch.float64, seed=4))
    assert torch.equal(kron_stream(x, a, b), kron_stream(x, a, b, backend="torch"))
    with pytest.raises(KernelsError, match="needs CUDA tensors"):
        kron_stream(x, a, b, backend="triton")


@pytest.mark.parametrize(
    ("shapes", "dtypes", "match"),
    [
        (((3, 4, 5), (2, 6, 4), (2, 7, 5)), None, None),  # the valid case, checked below
        (((3, 4, 5), (2, 6, 4), (3, 7, 5)), None, "shapes disagree"),
        (((3, 4, 5), (2, 6, 5), (2, 7, 5)), None, "shapes disagree"),
        (((3, 4), (2, 6, 4), (2, 7, 5)), None, r"needs x \(rows, P, Q\)"),
        (((3, 4, 5), (2, 6, 4), (2, 7, 5)), (torch.float32, torch.float64, torch.float64), "one dtype of float16"),
        (((3, 4, 5), (2, 6, 4), (2, 7, 5)), (torch.int64,) * 3, "one dtype of float16"),
    ],
)
def test_bad_inputs_get_one_line_errors(shapes, dtypes, match):
    dtypes = dtypes or (torch.float64,) * 3
    x, a, b = (torch.randn(s).to(d) for s, d in zip(shapes, dtypes, strict=True))
    if match is None:
        assert kron_stream(x, a, b, backend="torch").shape == (3, 6, 7)
        return
    with pytest.raises(KernelsError, match=match):
        kron_stream(x, a, b)


def test_unknown_backend_and_too_wide_factors():
    x, a, b = (torch.randn(s, dtype=torch.float64) for s in ((2, 200, 4), (1, 3, 200), (1, 150, 4)))
    with pytest.raises(KernelsError, match="unknown kron_stream backend 'cuda'"):
        kron_stream(x, a, b, backend="cuda")
    with pytest.raises(KernelsError, match="one factor with both extents at most 128"):
        kron_stream(x, a, b, backend="triton")
    assert kron_stream(x, a, b).shape == (2, 3, 150)  # auto falls back to torch
    b = b[:, :5]
    x, a = x[:, :16], a[:, :, :16]
    with pytest.raises(KernelsError, match="rows_per_program must be a power of two"):
        kron_stream(x, a, b, backend="triton", config={"rows_per_program": 3})
    with pytest.raises(KernelsError, match=r"unknown kron_stream config keys \['warps'\]"):
        kron_stream(x, a, b, backend="triton", config={"warps": 4})
    with pytest.raises(KernelsError, match=r"unknown kron_stream config keys \['stages'\]"):
        kron_stream(x, a, b, backend="triton", config={"grad_a": {"stages": 4}})
    with pytest.raises(KernelsError, match="backward must be one of fused, gemm, got 'dense'"):
        kron_stream(x, a, b, backend="triton", config={"backward": "dense"})


# ------------------------------------------------------------------------------------ the split


def _rebuilt_weight(gen):
    """``W`` from the split's factors (and mixer), by one einsum."""
    a, b, mix = gen.kron_factors()
    split = gen.kron
    m, p, n, q = split.shape
    if mix is None:
        # W[(m, n), (p, q)] = Σ_r A_r[m, p] B_r[n, q]
        w = torch.einsum("rmp,rnq->mnpq", a, b)
    else:
        # A's rows are (its output legs, its mixer bonds), B's (its mixer bonds, its output legs); the
        # mixer maps the bond pair to the middle output legs.
        lead, c, k, trail = split.mix_shape
        a = a.reshape(split.rank, lead, m // lead, p)
        b = b.reshape(split.rank, n // trail, trail, q)
        w = torch.einsum("rlap,rbnq,abk->lknpq", a, b, mix.reshape(m // lead, n // trail, k))
        assert c == (m // lead) * (n // trail)
    return w.reshape(gen.out_padded, gen.in_padded)


@pytest.mark.parametrize(
    ("arch", "bond", "rank", "mixed"),
    [("ttn", 3, 3, False), ("ttn", 5, 5, False), ("mera", 2, 2, False), ("attn", 2, 2, True), ("attn", 3, 3, True)],
)
def test_split_factors_rebuild_the_weight(arch, bond, rank, mixed):
    gen = adntn.make_generator(arch, 64, 64, bond_dim=bond, cache=False).double()
    split = gen.kron
    assert split is not None and split.rank == rank and bool(split.mixer) == mixed
    m, p, n, q = split.shape
    assert p * q == gen.in_padded
    assert m * n == gen.out_padded if not mixed else math.prod(split.mix_shape[i] for i in (0, 2, 3)) == gen.out_padded
    assert _rel(_rebuilt_weight(gen), gen.padded_weight()) < 1e-12


def test_an_attn_root_streams_with_its_disentangler_as_mixer():
    # Inside a half, the boundary disentangler multiplies the cut by its leg (rank 72 at bond 9, more
    # flops than the dense product); kept out as a mixer, the cut is the root bond.
    gen = adntn.make_generator("attn", 4096, 4096, bond_dim=9, cache=False)
    split = gen.kron
    assert split.rank == 9 and split.shape == (64, 64, 64, 64) and split.mix_shape == (8, 64, 64, 8)
    dense = 2 * 8192 * 4096 * 4096
    assert split.stream_flops(8192) == 2 * 8192 * (9 * 2 * 64**3 + 8 * 64 * 64 * 8)
    assert split.stream_flops(8192) < 0.3 * dense
    assert gen.kron_cost_at(8192, 1024) < gen.materialize_cost(8192, 1024)


def test_a_ttn_root_splits_at_its_bond():
    gen = adntn.make_generator("ttn", 4096, 4096, bond_dim=16, cache=False)
    assert gen.kron.rank == 16 and gen.kron.shape == (64, 64, 64, 64)
    assert gen.kron.stream_flops(8192) == 2 * 8192 * 16 * 2 * 64**3
    # Half the dense product's flops at this bond, and the intermediates never written.
    assert gen.kron_cost_at(8192) < gen.materialize_cost(8192)
    assert gen.kron_cost_at(8192, 1024) < gen.stream_cost_at(8192, 1024)


def test_a_mera_root_splits_into_halves_the_kernels_take():
    # The smallest cut (one subtree, bond 2) leaves halves 8 and 512 wide; two subtrees (cut 2x2) give
    # 64-wide halves and, with half the bond-2 split's flops, an eighth of the dense layer's.
    gen = adntn.make_generator("mera", 4096, 4096, bond_dim=2, cache=False)
    assert gen.kron.rank == 4 and gen.kron.shape == (64, 64, 64, 64)
    assert 8 * gen.kron.stream_flops(8192) == 2 * 8192 * 4096 * 4096


def test_no_mixer_through_a_hyperedge_of_all_three_sets():
    from adntn.kron import _candidate

    # o0 and i0 on T0, o2 and i1 on T1, the middle output leg o1 on D; h is on all three.
    net = tnplan.Network([("o0", "i0", "h"), ("o2", "i1", "h"), ("o1", "h")], ("o0", "o1", "o2", "i0", "i1"),
                         dict.fromkeys(("o0", "o1", "o2", "i0", "i1", "h"), 2))  # fmt: skip
    owner = {"o0": 0, "i0": 0, "o2": 1, "i1": 1, "o1": 2}
    outs, ins = ["o0", "o1", "o2"], ["i0", "i1"]
    assert _candidate(net, outs, ins, owner, ((0,), (1,), (2,))) is None
    # Without the shared label the same partition is a split with a mixer.
    labels = ("o0", "o1", "o2", "i0", "i1", "h", "a", "b")
    net = tnplan.Network([("o0", "i0", "h", "a"), ("o2", "i1", "h", "b"), ("o1", "a", "b")],
                         ("o0", "o1", "o2", "i0", "i1"), dict.fromkeys(labels, 2))  # fmt: skip
    found = _candidate(net, outs, ins, owner, ((0,), (1,), (2,)))
    assert found is not None and found.legs["cut"] == ["h"] and found.legs["la"] == ["a"] and found.legs["rb"] == ["b"]


@pytest.mark.parametrize(
    ("kernel", "blocks", "rows"),
    [
        ("forward", (64, 64, 64, 64), 2),
        ("grad_a", (64, 64, 64, 64), 1),
        ("forward", (64, 64, 16, 16), 8),  # the mixer: Mᵀ by the 8-wide identity
        ("grad_a", (64, 64, 16, 16), 4),
        ("forward", (16, 16, 16, 16), 8),  # capped: more rows would leave few programs per wave
        ("grad_b", (128, 128, 16, 16), 2),
        ("forward", (128, 128, 128, 128), 1),
    ],
)
def test_default_rows_per_program_follow_the_on_chip_tiles(kernel, blocks, rows):
    from kernels.kronsum import _settings

    assert _settings({}, kernel, blocks)[0] == rows
    assert _settings({"rows_per_program": 4}, kernel, blocks)[0] == 4
    assert _settings({"rows_per_program": 4, kernel: {"rows_per_program": 1}}, kernel, blocks)[0] == 1


def test_no_split_without_a_linear_root():
    gen = adntn.make_generator("ttn", 64, 64, bond_dim=3, root_activation="tanh", cache=False)
    assert gen.kron is None
    with pytest.raises(AdntnError, match="no Kronecker sum"):
        gen.kron_factors()
    with pytest.raises(AdntnError, match="mode='kron' needs"):
        adntn.TNLinear(64, 64, "ttn", 3, mode="kron", root_activation="tanh", cache=False)
    with pytest.raises(AdntnError, match="always builds its kernel"):
        adntn.TNConv2d(4, 8, 3, mode="kron", cache=False)


# ------------------------------------------------------------------------------------ the layer


@pytest.mark.parametrize("interpret", ["1", "0"])
@pytest.mark.parametrize(("in_f", "out_f"), [(64, 64), (40, 48)])
@pytest.mark.parametrize("arch", ["ttn", "attn"])
def test_kron_layer_matches_materialize(monkeypatch, interpret, in_f, out_f, arch):
    monkeypatch.setenv("TRITON_INTERPRET", interpret)
    torch.manual_seed(0)
    kron = adntn.TNLinear(in_f, out_f, arch, 3, mode="kron", cache=False).double()
    dense = adntn.TNLinear(in_f, out_f, arch, 3, mode="materialize", cache=False).double()
    assert bool(kron.generator.kron.mixer) == (arch == "attn")
    dense.load_state_dict(kron.state_dict())
    x = torch.randn(2, 5, in_f, dtype=torch.float64, requires_grad=True)
    ys = [layer(x) for layer in (kron, dense)]
    assert ys[0].shape == (2, 5, out_f)
    assert _rel(ys[0], ys[1]) < 1e-10
    dy = torch.randn_like(ys[0])
    grads = [torch.autograd.grad(y, (x, *layer.parameters()), dy) for y, layer in zip(ys, (kron, dense), strict=True)]
    for g, w in zip(*grads, strict=True):
        assert _rel(g, w) < 1e-10
    assert kron.uses_stream(10) and not dense.uses_stream(10)


@pytest.mark.parametrize("config", [{}, {"rows_per_program": 2, "programs": 5}, {"backward": "gemm"}])
def test_float16_runs_on_the_kernels_with_float32_accumulators(config):
    x, a, b = _operands(37, 3, 20, 12, 9, 33, torch.float64, seed=5)
    dy = torch.randn((37, 20, 9), dtype=torch.float64)
    want = [reference(x, a, b).detach(), *torch.autograd.grad(reference(x, a, b), (x, a, b), dy)]
    half = [t.detach().half().requires_grad_() for t in (x, a, b)]
    y = kron_stream(*half, backend="triton", config=config)
    got = [y.detach(), *torch.autograd.grad(y, half, dy.half())]
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float16 and _rel(g.double(), w) < 2e-3


def test_bfloat16_takes_the_torch_route():
    # Triton's interpreter cannot check bfloat16 kernels, so the kernels refuse it and auto uses torch.
    x, a, b = (t.detach().to(torch.bfloat16) for t in _operands(5, 2, 16, 16, 16, 16, torch.float32, seed=9))
    assert torch.equal(kron_stream(x, a, b), kron_stream(x, a, b, backend="torch"))
    with pytest.raises(
        KernelsError, match=r"take float16, float32 or float64, got torch\.bfloat16; use backend='torch'"
    ):
        kron_stream(x, a, b, backend="triton")
    for arch in ("ttn", "attn"):
        torch.manual_seed(0)
        kron = adntn.TNLinear(64, 64, arch, 3, mode="kron", cache=False)
        dense = adntn.TNLinear(64, 64, arch, 3, mode="materialize", cache=False)
        dense.load_state_dict(kron.state_dict())
        x = torch.randn(4, 64)
        want = dense(x)
        got = kron.bfloat16()(x.bfloat16())
        assert got.dtype == torch.bfloat16 and _rel(got.float(), want) < 0.05


@pytest.mark.parametrize("arch", ["ttn", "attn"])
def test_float16_autocast_runs_the_stream_in_float16(monkeypatch, arch):
    from kernels import kronsum

    seen = []
    real = kronsum._forward

    def spy(x, a, b, config):
        seen.append(x.dtype)
        return real(x, a, b, config)

    monkeypatch.setattr(kronsum, "_forward", spy)
    torch.manual_seed(0)
    layer = adntn.TNLinear(64, 64, arch, 3, mode="kron", cache=False)
    x = torch.randn(6, 64)
    want = layer(x).detach()
    assert set(seen) == {torch.float32}
    seen.clear()
    with torch.autocast("cpu", dtype=torch.float16):
        y = layer(x)
    # The factors' launch and, for the aTTN, the mixer's: both in float16; the output too.
    assert seen == [torch.float16] * (2 if arch == "attn" else 1)
    assert y.dtype == torch.float16 and _rel(y.float(), want) < 2e-3
    y.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
    # Where the kernels cannot run, the float32 stream's output still comes in float16.
    seen.clear()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with torch.autocast("cpu", dtype=torch.float16):
        y = layer(x)
    assert not seen and y.dtype == torch.float16 and _rel(y.float(), want) < 2e-3


def test_kron_layer_under_bf16_autocast_runs_in_the_cores_dtype():
    # The kernels do not take bfloat16: the stream runs on the float32 cores, the output comes in
    # autocast's dtype (as nn.Linear's does), the bias added in it.
    torch.manual_seed(0)
    layer = adntn.TNLinear(64, 64, "ttn", 3, mode="kron", cache=False)
    x = torch.randn(4, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x.bfloat16())
        assert torch.nn.Linear(64, 64)(x).dtype == y.dtype == torch.bfloat16
    want = layer(x.bfloat16().float())
    assert _rel(y.float(), want) < 1e-2


def test_batches_past_32_bit_offsets_run_in_slices_of_rows(monkeypatch):
    from kernels import kronsum

    monkeypatch.setattr(kronsum, "MAX_ELEMENTS", 16 * 16 * 5)  # 5 rows of 16x16 per launch
    x, a, b = _operands(13, 2, 16, 16, 16, 16, torch.float64, seed=3)
    y = kron_stream(x, a, b, backend="triton")
    want = reference(x, a, b)
    assert _rel(y, want) < 1e-12
    dy = torch.randn_like(y)
    for g, w in zip(torch.autograd.grad(y, (x, a, b), dy), torch.autograd.grad(want, (x, a, b), dy), strict=True):
        assert _rel(g, w) < 1e-12
    monkeypatch.setattr(kronsum, "MAX_ELEMENTS", 100)  # not even one row
    with pytest.raises(KernelsError, match="so a row holds at most 100 elements; this one has 256"):
        kron_stream(x, a, b, backend="triton")
    assert _rel(kron_stream(x, a, b), want) < 1e-12  # auto: the torch route


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inside dynamo
@pytest.mark.parametrize("arch", ["ttn", "attn"])  # attn: with the mixer's product after the kernel
def test_compile_and_export_keep_the_kernels_as_operators(arch):
    torch.manual_seed(0)
    layer = adntn.TNLinear(64, 64, arch, 3, mode="kron", cache=False).double()
    x = torch.randn(5, 64, dtype=torch.float64, requires_grad=True)
    want = layer(x)
    want_grads = torch.autograd.grad(want.sum(), [x, *layer.parameters()])
    compiled = torch.compile(layer, fullgraph=True)  # no graph break at the Triton launch
    got = compiled(x)
    got_grads = torch.autograd.grad(got.sum(), [x, *layer.parameters()])
    assert _rel(got, want) < 1e-12
    for g, w in zip(got_grads, want_grads, strict=True):
        assert _rel(g, w) < 1e-10
    exported = torch.export.export(layer, (x.detach(),))
    code = "".join(m.code for m in exported.graph_module.modules() if hasattr(m, "code"))
    # The aTTN's mixer runs through the kernels too (a second launch), not an einsum.
    assert code.count("adntn.kron_forward") == (2 if arch == "attn" else 1)
    assert _rel(exported.module()(x.detach()), want) < 1e-12


def test_second_order_and_forward_mode_through_the_triton_route_match_the_reference():
    # The reduction kernels have no derivative: a Hessian-vector product crashed, and forward-mode
    # AD returned a zero tangent.
    x, a, b = _operands(5, 3, 16, 16, 16, 16, torch.float64, seed=1)
    v = [torch.randn_like(t) for t in (x, a, b)]

    def hvp(backend: str) -> tuple[torch.Tensor, ...]:
        g = torch.autograd.grad(kron_stream(x, a, b, backend=backend).pow(2).sum(), (x, a, b), create_graph=True)
        return torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, v, strict=True)), (x, a, b))

    for got, want in zip(hvp("triton"), hvp("torch"), strict=True):
        assert _rel(got, want) < 1e-10
    f = lambda t: kron_stream(t, a.detach(), b.detach(), backend="auto")  # noqa: E731
    tangent = torch.func.jvp(f, (x.detach(),), (v[0],))[1]
    assert _rel(tangent, reference(v[0], a.detach(), b.detach())) < 1e-10
    with pytest.raises(KernelsError, match="forward-mode AD"):
        torch.func.jvp(lambda t: kron_stream(t, a.detach(), b.detach(), backend="triton"), (x.detach(),), (v[0],))


def test_an_input_of_another_dtype_fails_in_kron_as_in_the_other_modes():
    # kron used to cast it silently, so mode="auto" succeeded or failed by batch size.
    layer = adntn.TNLinear(37, 29, "ttn", bond_dim=3).double()
    x = torch.randn(4, 37)
    for mode in ("materialize", "stream", "kron"):
        layer.mode = mode
        with pytest.raises(RuntimeError, match=r"same dtype|expected scalar type"):
            layer(x)
    assert layer(x.double()).dtype == torch.float64
