"""The forward-adjoint calculus of a generator, as code (see ``docs/generators.md``).

For a group ``g`` with operands ``T_1..T_m``, pre-activation ``Z_g = contract(T_1, ..., T_m)`` and
output ``Y_g = σ_g(Z_g)``, and a loss ``L`` whose gradient with respect to ``W`` is ``Ḡ``:

* the last group's output adjoint is ``Ȳ = Ḡ`` (zero-padded to the generated size);
* the pre-activation adjoint is ``Z̄_g = Ȳ_g ⊙ σ_g'(Z_g)``;
* the adjoint of operand ``T_j`` is its *environment*: the network of group ``g`` with ``T_j``
  removed and ``Z̄_g`` attached on the output legs, contracted onto ``T_j``'s legs
  (``T̄_j = contract(T_1, .., T_{j-1}, Z̄_g, T_{j+1}, .., T_m -> legs(T_j))``);
* a core's gradient is its operand adjoint; an earlier group's output adjoint ``Ȳ`` is the sum of
  the adjoints of every operand it feeds (members scattered back by index).

Every environment is a tnplan network planned through the plan cache, so this is the reference a
custom backward (``kernels``) must match; the tests check it against autograd to 1e-10 in float64.
"""

from __future__ import annotations

from typing import Any

import torch

import tnplan
from adntn import activations
from adntn.errors import AdntnError
from adntn.generator import Generator, Group
from tnplan.contract import Program


def environment_network(group: Group, j: int) -> tnplan.Network:
    """The network whose contraction is the adjoint of operand ``j`` of ``group``."""
    net = group.network
    inputs = [t for k, t in enumerate(net.inputs) if k != j] + [tuple(net.output)]
    return tnplan.Network(inputs, tuple(net.inputs[j]), net.size_dict)


def _env_program(generator: Generator, gi: int, j: int) -> Program:
    memo: dict[tuple[int, int], Program] = generator.__dict__.setdefault("_adjoint_programs", {})
    if (gi, j) not in memo:
        plan = tnplan.plan(environment_network(generator.groups[gi], j), **generator._plan_kwargs)
        memo[gi, j] = plan.compile()
    return memo[gi, j]


def output_adjoint(generator: Generator, grad_weight: torch.Tensor) -> torch.Tensor:
    """``Ḡ`` zero-padded to the generated size and shaped like the last group's output."""
    if tuple(grad_weight.shape) != (generator.out_features, generator.in_features):
        raise AdntnError(
            f"grad_weight has shape {tuple(grad_weight.shape)}; the generator makes "
            f"{(generator.out_features, generator.in_features)}"
        )
    padded = grad_weight.new_zeros(generator.out_padded, generator.in_padded)
    padded[: generator.out_features, : generator.in_features] = grad_weight
    return padded.reshape(generator.groups[-1].out_shape)


@torch.no_grad()
def core_gradients(generator: Generator, grad_weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients of ``sum(grad_weight * W)`` with respect to every core, by environments.

    Args:
        generator: The generator.
        grad_weight: ``∂L/∂W``, shape ``(out_features, in_features)``.

    Returns:
        Core name (as in ``generator.cores``) -> gradient of the same shape.
    """
    outputs, pre = generator.run_groups(keep_preactivations=True)
    adj_out: list[torch.Tensor | None] = [None] * len(generator.groups)
    adj_out[-1] = output_adjoint(generator, grad_weight)
    grads: dict[str, torch.Tensor] = {k: torch.zeros_like(p) for k, p in generator.cores.items()}
    for gi in range(len(generator.groups) - 1, -1, -1):
        g = generator.groups[gi]
        y_bar = adj_out[gi]
        if y_bar is None:  # feeds nothing that reaches W
            continue
        z_bar = y_bar * activations.derivative(g.activation, pre[gi])
        ops = [generator._operand(op, outputs) for op in g.operands]
        for j, op in enumerate(g.operands):
            env = _env_program(generator, gi, j)(*ops[:j], *ops[j + 1 :], z_bar)
            if op.kind == "core":
                grads[op.key] += env
            else:
                _scatter(adj_out, generator, op, env)
    return grads


def _scatter(adj_out: list[Any], generator: Generator, op: Any, env: torch.Tensor) -> None:
    src = op.key
    if adj_out[src] is None:
        shape = (generator.groups[src].size, *generator.groups[src].out_shape)
        adj_out[src] = torch.zeros(shape, dtype=env.dtype, device=env.device)
        if generator.groups[src].size == 1:
            adj_out[src] = adj_out[src][0]
    if generator.groups[src].size == 1:
        adj_out[src] += env
    elif isinstance(op.index, tuple):
        for k, i in enumerate(op.index):
            adj_out[src][i] += env[k]
    else:
        adj_out[src][op.index] += env
