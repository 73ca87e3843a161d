"""Executing plans: numpy and torch, sliced and unsliced, with autograd."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from spec import assert_program_matches_einsum

import tnplan
from tnplan.examples import lattice_2d, mera


def _arrays(net: tnplan.Network, seed: int = 0, dtype=np.float64) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in net.shapes]


def _reference(net: tnplan.Network, arrays: list[np.ndarray]) -> np.ndarray:
    import opt_einsum as oe

    return oe.contract(net.equation, *arrays, optimize="greedy")


@pytest.mark.parametrize(
    ("equation", "shapes"),
    [
        ("ab,bc->ac", [(3, 4), (4, 5)]),
        ("ab,bc,cd", [(3, 4), (4, 5), (5, 2)]),  # implicit output
        ("abc,ab,bc->b", [(2, 3, 4), (2, 3), (3, 4)]),  # hyperedge kept open
        ("aab,bc->ac", [(3, 3, 4), (4, 2)]),  # repeated index (diagonal)
        ("ab,bc,cd,de->", [(2, 3), (3, 4), (4, 5), (5, 2)]),  # scalar
        ("ab,cd->abcd", [(2, 3), (4, 5)]),  # outer product
        ("abz,bcz,cdz->adz", [(2, 3, 2), (3, 4, 2), (4, 2, 2)]),  # batch hyperedge
        ("abx,bc->ac", [(2, 3, 4), (3, 2)]),  # index summed inside one tensor
    ],
)
def test_numpy_contract_matches_einsum(equation: str, shapes) -> None:
    net = tnplan.Network.from_einsum(equation, *shapes)
    arrays = _arrays(net)
    p = tnplan.plan(net, max_time=0.5)
    np.testing.assert_allclose(p.contract(*arrays), np.einsum(equation, *arrays), rtol=1e-10, atol=1e-12)


def test_loopy_network_contract_matches_reference() -> None:
    net = mera(8, 2, closed=True)
    arrays = _arrays(net, 1)
    p = tnplan.plan(net, max_time=1)
    np.testing.assert_allclose(p.contract(*arrays), _reference(net, arrays), rtol=1e-9)


@pytest.mark.parametrize("open_legs", [False, True])
def test_sliced_contract_equals_unsliced(open_legs: bool) -> None:
    net = lattice_2d(3, 3, bond=4, open_legs=open_legs, phys=2)
    arrays = _arrays(net, 2)
    full = tnplan.plan(net, max_time=1)
    sliced = tnplan.plan(net, max_time=1, max_size=max(4, full.peak_size // 16))
    assert sliced.n_slices > 1
    assert sliced.peak_size <= max(4, full.peak_size // 16)
    np.testing.assert_allclose(sliced.contract(*arrays), full.contract(*arrays), rtol=1e-9, atol=1e-12)


def test_sliced_open_index_is_stitched() -> None:
    net = tnplan.Network.from_einsum("ab,bc->ac", (6, 50), (50, 7))
    plan = tnplan.from_path(net, [(0, 1)], sliced=("a",))
    arrays = _arrays(net, 3)
    assert plan.n_slices == 6
    np.testing.assert_allclose(plan.contract(*arrays), arrays[0] @ arrays[1], rtol=1e-12)


def test_torch_autograd_through_sliced_plan_matches_unsliced() -> None:
    torch.set_num_threads(1)
    net = lattice_2d(3, 3, bond=3, open_legs=True, phys=2)
    full = tnplan.plan(net, max_time=1)
    sliced = tnplan.plan(net, max_time=1, max_size=max(3, full.peak_size // 9))
    assert sliced.n_slices > 1
    base = [torch.tensor(a, requires_grad=True) for a in _arrays(net, 4)]
    twin = [t.detach().clone().requires_grad_(True) for t in base]
    weights = torch.tensor(np.random.default_rng(5).standard_normal([2] * 9))
    (full.contract(*base) * weights).sum().backward()
    (sliced.contract(*twin) * weights).sum().backward()
    for a, b in zip(base, twin, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)


def test_torch_float32_matches_numpy() -> None:
    net = mera(8, 2, closed=True)
    arrays = _arrays(net, 6)
    p = tnplan.plan(net, max_time=1)
    got = p.contract(*[torch.tensor(a, dtype=torch.float32) for a in arrays])
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), p.contract(*arrays), rtol=1e-4)


def test_contract_rejects_wrong_arrays() -> None:
    net = tnplan.Network.from_einsum("ab,bc->ac", (2, 3), (3, 4))
    p = tnplan.plan(net)
    with pytest.raises(tnplan.PlanError, match="2 tensor"):
        p.contract(np.ones((2, 3)))
    with pytest.raises(tnplan.PlanError, match=r"array 1 has shape \(4, 3\)"):
        p.contract(np.ones((2, 3)), np.ones((4, 3)))


def test_compiled_program_matches_einsum_and_fuses_legs_that_travel_together():
    net = tnplan.Network.from_einsum("abcx,defx->adbecf", (2, 3, 4, 5), (6, 7, 8, 5))
    prog = tnplan.plan(net).compile()
    (step,) = prog.steps
    assert step[2] == "ab,cb->ac"  # (a, b, c) and (d, e, f) each become one axis
    rng = np.random.default_rng(0)
    xs = [rng.random(s) for s in net.shapes]
    np.testing.assert_allclose(prog(*xs), np.einsum("abcx,defx->adbecf", *xs))
    again = pickle.loads(pickle.dumps(prog))
    np.testing.assert_allclose(again(*xs), prog(*xs))


def test_compiled_program_with_a_free_batch_axis_runs_any_batch_size():
    net = tnplan.Network.from_einsum("bij,jk,kl->bil", (4, 3, 5), (5, 6), (6, 2))
    prog = tnplan.plan(net).compile(free="b")
    rng = np.random.default_rng(1)
    for rows in (1, 4, 9):
        xs = [rng.random((rows, 3, 5)), rng.random((5, 6)), rng.random((6, 2))]
        np.testing.assert_allclose(prog(*xs), np.einsum("bij,jk,kl->bil", *xs))
    with pytest.raises(tnplan.PlanError, match="free index 'z' is not in the network"):
        tnplan.plan(net).compile(free="z")


def test_a_sliced_plan_does_not_compile():
    net = tnplan.Network.from_einsum("ab,bc,cd->ad", (8, 8), (8, 8), (8, 8))
    sliced = tnplan.from_path(net, [(0, 1), (0, 1)], sliced=("b",))
    with pytest.raises(tnplan.PlanError, match="sliced plan cannot be compiled"):
        sliced.compile()


def test_last_step_operand_order_keeps_the_longest_contiguous_runs_for_the_final_permutation():
    # A TTN root: W[o0, o1, i0, i1] = sum_k A[o0, i0, k] B[o1, i1, k]. Planned as (B, A), the product's
    # layout (o1, i1, o0, i0) has to move single elements; as (A, B) it moves runs of i1.
    net = tnplan.Network.from_einsum("bdk,ack->abcd", (3, 4, 5), (6, 7, 5))
    plan = tnplan.from_path(net, [(0, 1)])
    prog = plan.compile()
    ((left, right, *_),) = prog.steps
    assert (left, right) == (1, 0)  # swapped: A's legs (o0, i0) come first
    assert prog.finish[0] == "abcd->acbd"  # the last axis (i1) stays in place
    rng = np.random.default_rng(2)
    xs = [rng.random(s) for s in net.shapes]
    np.testing.assert_allclose(prog(*xs), np.einsum("bdk,ack->abcd", *xs))
    # A hyperedge kept by the last step leaves its operand order alone.
    batch = tnplan.Network.from_einsum("zbk,zak->zab", (2, 3, 5), (2, 4, 5))
    ((left, right, *_),) = tnplan.from_path(batch, [(0, 1)]).compile().steps
    assert (left, right) == (0, 1)


def test_a_generator_root_is_written_in_output_order_by_one_broadcast_product():
    # W[o0, o1, i0, i1] = sum_k A[o0, i0, k] B[k, o1, i1]: einsum writes (o0, i0, o1, i1) and leaves a
    # permuting copy of the whole weight; matmul broadcast over (o0, o1) writes W's order directly.
    eq = "aik,kbj->abij"
    net = tnplan.Network.from_einsum(eq, (64, 32, 4), (4, 64, 32))
    prog = tnplan.from_path(net, [(0, 1)]).compile()
    assert prog.product is not None and prog.steps == ()
    assert prog.finish[0] == "a->a"  # no permutation left
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal(s) for s in net.shapes]
    np.testing.assert_allclose(prog(*xs), np.einsum(eq, *xs), rtol=1e-10, atol=1e-12)
    ts = [torch.tensor(x, requires_grad=True) for x in xs]
    out = prog(*ts)
    assert out.is_contiguous()
    grad = torch.randn_like(out)
    out.backward(grad)
    ref = [torch.tensor(x, requires_grad=True) for x in xs]
    torch.einsum(eq, *ref).backward(grad)
    for a, b in zip(ts, ref, strict=True):
        torch.testing.assert_close(a.grad, b.grad)
    assert pickle.loads(pickle.dumps(prog)) == prog


@pytest.mark.parametrize(
    ("equation", "shapes", "path", "used"),
    [
        ("zaik,zkbj->zabij", [(3, 4, 32, 2), (3, 2, 5, 32)], [(0, 1)], True),  # a kept hyperedge is an outer leg
        ("ab,cd->acbd", [(8, 64), (8, 64)], [(0, 1)], True),  # outer product: nothing summed
        ("aik,kbj->abij", [(64, 8, 4), (4, 64, 8)], [(0, 1)], False),  # 8-wide matrices: einsum keeps it
        ("aik,kbj->abij", [(4, 64, 64), (64, 4, 64)], [(0, 1)], False),  # expanded halves outgrow the output
        ("ai,ij,jbc->bac", [(64, 5), (5, 6), (6, 4, 40)], [(0, 1), (0, 1)], True),  # last of several steps
    ],
)
def test_broadcast_product_matches_einsum_where_it_is_used(equation, shapes, path, used):
    net = tnplan.Network.from_einsum(equation, *shapes)
    prog = tnplan.from_path(net, path).compile()
    assert (prog.product is not None) == used
    rng = np.random.default_rng(5)
    assert_program_matches_einsum(prog, equation, [rng.standard_normal(s) for s in net.shapes])


def test_a_python_number_operand_works_sliced_as_unsliced() -> None:
    net = tnplan.Network.from_einsum("ab,bc,->ac", (2, 3), (3, 4), ())
    a, b = np.ones((2, 3)), np.ones((3, 4))
    sliced = tnplan.plan(net, cache=False, max_size=4)
    assert sliced.n_slices > 1
    np.testing.assert_allclose(sliced.contract(a, b, 2.0), 2.0 * a @ b)
    np.testing.assert_allclose(tnplan.plan(net, cache=False).contract(a, b, 2.0), 2.0 * a @ b)


def test_torch_operands_of_mixed_dtype_are_promoted_and_numpy_among_them_is_a_plan_error() -> None:
    # torch.einsum's matmul-based steps refuse mixed dtypes where numpy's einsum promotes.
    net = tnplan.Network.from_einsum("ab,bc->ac", (2, 3), (3, 4))
    p = tnplan.plan(net, cache=False)
    a, b = torch.rand(2, 3), torch.rand(3, 4, dtype=torch.float64)
    out = p.contract(a, b)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, a.double() @ b)
    with pytest.raises(tnplan.PlanError, match="array 1 is a ndarray among torch tensors"):
        p.contract(torch.ones(2, 3), np.ones((3, 4)))


def test_program_checks_operand_shapes_it_would_otherwise_reshape() -> None:
    # A transposed operand has the right size: the steps' reshapes would take it and give a wrong answer.
    net = tnplan.Network.from_einsum("ab,bc->ac", (2, 3), (3, 2))
    program = tnplan.plan(net, cache=False).compile()
    a, b = np.random.default_rng(0).random((2, 3)), np.random.default_rng(1).random((3, 2))
    np.testing.assert_allclose(program(a, b), a @ b)
    with pytest.raises(tnplan.PlanError, match=r"operand 0 has shape \(3, 2\) but the program expects \(2, 3\)"):
        program(a.T.copy(), b)
    with pytest.raises(tnplan.PlanError, match="operand 1 is a str"):
        program(a, "b")


def test_program_takes_any_size_on_its_free_axis_and_python_scalars() -> None:
    net = tnplan.Network.from_einsum("xa,ab->xb", (4, 3), (3, 2))
    program = tnplan.plan(net, cache=False).compile(free="x")
    assert program(np.ones((7, 3)), np.ones((3, 2))).shape == (7, 2)
    with pytest.raises(tnplan.PlanError, match=r"expects \(any, 3\)"):
        program(np.ones((7, 2)), np.ones((3, 2)))
    scalars = tnplan.plan(tnplan.Network.from_einsum(",->", (), ()), cache=False)
    assert float(scalars.compile()(2.0, 3.0)) == float(scalars.contract(2.0, 3.0)) == 6.0


def test_program_makes_a_python_scalar_among_tensors_a_tensor() -> None:
    net = tnplan.Network.from_einsum("ab,,bc->ac", (2, 3), (), (3, 2))
    program = tnplan.plan(net, cache=False).compile()
    a = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    c = torch.randn(3, 2, dtype=torch.float64)
    out = program(a, 2.0, c)
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, 2.0 * a @ c)
    out.sum().backward()
    assert a.grad is not None
    with pytest.raises(tnplan.PlanError, match="among torch tensors"):
        program(a, np.ones(()), np.ones((3, 2)))
