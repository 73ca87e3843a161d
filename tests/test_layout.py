"""Reshaping generated weights: permuting copies that move contiguous runs as wide elements."""

from __future__ import annotations

import pytest
import torch

from adntn import layout, make_generator


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_permute_copy_matches_torch_and_differentiates(dtype):
    x = torch.randn(3, 4, 5, 8, dtype=dtype, requires_grad=True)
    perm = (2, 0, 1, 3)
    assert layout._wide_dtype(x, perm) is not None  # 8-element runs tile 16-byte elements
    y = layout.permute_copy(x, perm)
    assert y.is_contiguous()
    assert torch.equal(y, x.permute(*perm))
    g = torch.randn_like(y)
    y.backward(g)
    assert torch.equal(x.grad, g.permute(1, 2, 0, 3))
    if dtype == torch.float64:
        small = x.detach()[:, :2, :2].clone().requires_grad_()
        assert torch.autograd.gradcheck(lambda t: layout.permute_copy(t, perm), (small,))


def test_permute_copy_falls_back_where_no_wide_element_tiles_the_runs():
    x = torch.randn(3, 4, 6)
    assert layout._wide_dtype(x, (0, 2, 1)) is None  # the last axis moves
    assert layout._wide_dtype(torch.randn(4, 3), (1, 0)) is None
    assert layout._wide_dtype(torch.randn(5, 3), (0, 1)) is None  # 12-byte runs
    assert layout._wide_dtype(torch.randn(5, 4), (1, 0)) is None
    assert layout._wide_dtype(torch.randn(3, 2, 2), (1, 0, 2)) is torch.float64  # 8-byte runs
    assert torch.equal(layout.permute_copy(x, (0, 2, 1)), x.permute(0, 2, 1))
    with pytest.raises(ValueError, match=r"permutation of 0\.\.2"):
        layout.permute_copy(x, (0, 1))


def test_reshape_of_a_permuted_view_copies_wide_and_keeps_views_free(monkeypatch):
    monkeypatch.setattr(layout, "DEVICES", ("cpu",))  # the path CUDA takes, run here
    base = torch.randn(4, 6, 5, 8, requires_grad=True)
    x = base.permute(0, 2, 1, 3)  # a contraction's result seen through a permutation
    calls = []
    real = layout._BlockPermute.apply
    monkeypatch.setattr(layout._BlockPermute, "apply", lambda *a: calls.append(1) or real(*a))
    y = layout.reshape(x, (20, 48))
    assert calls == [1]
    assert torch.equal(y, x.reshape(20, 48))
    g = torch.randn(20, 48)
    y.backward(g)
    assert torch.equal(base.grad, g.reshape(4, 5, 6, 8).permute(0, 2, 1, 3))
    # A reshape that is a view stays a view (no copy at all).
    v = layout.reshape(base.detach(), (24, 40))
    assert v.data_ptr() == base.data_ptr()
    assert calls == [1]


def test_reshape_leaves_cpu_tensors_to_torch():
    x = torch.randn(4, 6, 5, 8).permute(0, 2, 1, 3)
    assert layout.DEVICES == ("cuda",)
    assert torch.equal(layout.reshape(x, (20, 48)), x.reshape(20, 48))


def test_generator_weight_through_the_wide_copy_matches_torch(monkeypatch):
    torch.manual_seed(0)
    g = make_generator("ttn", 64, 64, bond_dim=3, cache=False, executor="torch").double()
    reference = g.run_groups()[-1].reshape(g.out_padded, g.in_padded)
    monkeypatch.setattr(layout, "DEVICES", ("cpu",))
    calls = []
    real = layout._BlockPermute.apply
    monkeypatch.setattr(layout._BlockPermute, "apply", lambda *a: calls.append(a[1]) or real(*a))
    w = g.padded_weight()
    assert len(calls) == 1 and calls[0][-1] == len(calls[0]) - 1  # the wide copy ran, the last axis in place
    assert torch.equal(w, reference)
    grad = torch.randn_like(w)
    got = torch.autograd.grad(w, list(g.cores.values()), grad)
    want = torch.autograd.grad(reference, list(g.cores.values()), grad)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
