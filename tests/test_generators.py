import math

import pytest
import torch

import adntn
from adntn import AdntnError, ATTNGenerator, MERAGenerator, TTNGenerator, make_generator
from adntn.adjoint import core_gradients, environment_network


def _kaiming_std(fan_in: int) -> float:
    w = torch.empty(2000, fan_in)
    torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5))
    return float(w.std())


def test_linear_ttn_equals_the_ordinary_contraction():
    torch.manual_seed(0)
    g = TTNGenerator(16, 16, bond_dim=3, n_factors=4, activation="identity").double()
    assert len(g.groups) == 1  # identity everywhere: one segment
    c = g.cores
    # Merged operand order: the left node's leaves and core, the right node's, then the root.
    l0, l1, n1, l2, l3, n2, r = (c[k] for k in c)
    ref = torch.einsum("aib,cjd,bde,fkg,lmh,ghn,en->acflijkm", l0, l1, n1, l2, l3, n2, r).reshape(16, 16)
    torch.testing.assert_close(g(), ref, rtol=1e-12, atol=1e-12)


def test_nonlinear_ttn_applies_the_activation_per_node_in_one_batched_group():
    torch.manual_seed(1)
    g = TTNGenerator(16, 16, bond_dim=3, n_factors=4, activation="tanh").double()
    first, root = g.groups
    assert first.size == 2 and root.size == 1  # the two level-1 nodes run as one contraction
    leaves_a, leaves_b, nodes = (g.cores[op.key] for op in first.operands)
    (r,) = (g.cores[op.key] for op in root.operands if op.kind == "core")
    kids = [torch.tanh(torch.einsum("aib,cjd,bde->acije", leaves_a[k], leaves_b[k], nodes[k])) for k in range(2)]
    ref = torch.einsum("acije,fgklh,eh->acfgijkl", kids[0], kids[1], r).reshape(16, 16)
    torch.testing.assert_close(g(), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("depth", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("arch", ["ttn", "attn"])
def test_init_matches_kaiming_scale_at_every_depth(depth, arch):
    torch.manual_seed(depth)
    leaves = 2 ** (depth - 1) + 1  # the fewest leaves that need `depth` binary levels
    factors = (2,) * min(leaves, 5) + (1,) * (leaves - min(leaves, 5))
    dim = math.prod(factors)
    g = make_generator(arch, dim, dim, bond_dim=4, out_factors=factors, in_factors=factors, activation="relu")
    assert max(grp.network.num_tensors for grp in g.groups) >= 3
    _, pre = g.run_groups(keep_preactivations=True)
    assert len({grp.name.split("@")[1] for grp in g.groups}) >= depth - 1
    ratio = float(g().detach().std()) / _kaiming_std(dim)
    assert 0.7 <= ratio <= 1.3
    for z in pre[:-1]:  # no level vanishes or explodes on the way up
        assert 0.5 < float(z.detach().std()) < 2.0


@pytest.mark.parametrize("leaves", [4, 8, 16])
def test_mera_init_matches_kaiming_scale(leaves):
    torch.manual_seed(leaves)
    factors = (2,) * 5 + (1,) * (leaves - 5) if leaves > 5 else (4, 2, 2, 2)
    g = MERAGenerator(32, 32, bond_dim=2, out_factors=factors, in_factors=factors)
    ratio = float(g().detach().std()) / _kaiming_std(32)
    assert 0.7 <= ratio <= 1.3


def test_attn_root_segment_is_a_loopy_planned_network():
    g = ATTNGenerator(64, 64, bond_dim=3, n_factors=4)
    root = g.groups[-1]
    roles = [g.cores[op.key].shape for op in root.operands if op.kind == "core"]
    assert any(len(s) == 4 for s in roles)  # the disentangler sits in the root's segment
    net = root.network
    # A cycle: more tensors' worth of internal edges than a tree on them allows.
    internal = [lab for lab in net.size_dict if lab not in net.output]
    assert len(internal) >= net.num_tensors
    assert root.cache == "miss"  # planned by tnplan (4 tensors go through the planner and its cache)


def test_mera_activation_every_merges_layers_into_one_segment():
    every1 = MERAGenerator(64, 64, bond_dim=2, n_factors=8)
    every2 = MERAGenerator(64, 64, bond_dim=2, n_factors=8, activation_every=2)
    assert len(every1.groups) == 3 and len(every2.groups) == 2
    assert every2.groups[0].network.num_tensors > every1.groups[0].network.num_tensors


def test_lateral_mixers_add_cores_to_every_segment():
    plain = TTNGenerator(16, 16, bond_dim=2, n_factors=4)
    mixed = TTNGenerator(16, 16, bond_dim=2, n_factors=4, lateral=True)
    assert mixed.num_parameters() == plain.num_parameters() + 3 * 2**4
    assert all(grp.network.num_tensors == plain.groups[i].network.num_tensors + 1 for i, grp in enumerate(mixed.groups))


ARCHS = [
    ("ttn", {"bond_dim": 3, "n_factors": 4}),
    ("ttn", {"bond_dim": 2, "n_factors": 3, "arity": 3, "activation": "gelu", "lateral": True}),
    (
        "attn",
        {"bond_dim": 3, "n_factors": 4, "disentangle": ("root", 1), "disentangle_legs": "both", "activation": "tanh"},
    ),
    ("mera", {"bond_dim": 3, "n_factors": 4, "activation": "leaky_relu"}),
    ("mera", {"bond_dim": 2, "n_factors": 8, "activation_every": 2, "lateral": True}),
    ("ttn", {"bond_dim": 2, "n_factors": 4, "grouping": "single", "activation": torch.sin}),
]


@pytest.mark.parametrize(("arch", "kwargs"), ARCHS)
def test_adjoint_environments_match_autograd(arch, kwargs):
    torch.manual_seed(3)
    g = make_generator(arch, 20, 30, **kwargs).double()
    grad_w = torch.randn(20, 30, dtype=torch.float64)
    (g() * grad_w).sum().backward()
    ours = core_gradients(g, grad_w)
    assert set(ours) == set(g.cores)
    for key, p in g.cores.items():
        torch.testing.assert_close(ours[key], p.grad, rtol=1e-10, atol=1e-10)


def test_environment_network_has_the_operand_legs_as_output():
    g = ATTNGenerator(16, 16, bond_dim=2, n_factors=4)
    root = g.groups[-1]
    for j, legs in enumerate(root.network.inputs):
        env = environment_network(root, j)
        assert env.output == tuple(legs) and env.num_tensors == root.network.num_tensors


def test_core_gradients_reject_a_wrong_shape():
    g = TTNGenerator(16, 16, bond_dim=2, n_factors=4)
    with pytest.raises(AdntnError, match=r"grad_weight has shape \(3, 3\)"):
        core_gradients(g, torch.zeros(3, 3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arch": "ttn", "bond_dim": 0}, "bond_dim must be a positive integer"),
        ({"arch": "ttn", "activation": "swish"}, "unknown activation 'swish'"),
        ({"arch": "ttn", "arity": 1}, "arity must be at least 2"),
        ({"arch": "ttn", "out_factors": (2, 2)}, "multiply to 4 < out_features 16"),
        ({"arch": "mera", "n_factors": 3}, "power-of-two number of leaves"),
        ({"arch": "attn", "disentangle": (7,)}, "disentangle levels must be"),
        ({"arch": "attn", "disentangle_legs": "up"}, "disentangle_legs must be one of"),
        ({"arch": "ttn", "activation": ["relu"], "n_factors": 8}, "needs an activation for each of its 2 levels"),
        ({"arch": "ttn", "activation": ["relu"] * 7, "n_factors": 8}, "each of its 2 levels, got 7"),
        ({"arch": "cp"}, "unknown architecture 'cp'"),
        ({"arch": "ttn", "colour": "red"}, "ttn: .*colour"),
    ],
)
def test_bad_configurations_raise_one_clear_value_error(kwargs, message):
    arch = kwargs.pop("arch")
    with pytest.raises(adntn.AdntnError, match=message):
        make_generator(arch, 16, 16, **kwargs)
