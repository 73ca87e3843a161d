"""Whether autograd is running in a form the kernels' custom autograd nodes cannot take part in."""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwad


def transformed(*tensors: torch.Tensor | None) -> bool:
    """A ``torch.func`` transform (``grad``, ``vmap``, ``jacrev``, ...) is running, or one of ``tensors``
    carries a forward-mode tangent.

    The kernels' ``autograd.Function`` nodes have no ``setup_context``/``vmap`` rule and no ``jvp``,
    so their callers run the plain torch path instead whenever this is true.
    """
    if torch._C._are_functorch_transforms_active():
        return True
    return any(t is not None and fwad.unpack_dual(t).tangent is not None for t in tensors)


def batched_grad(t: torch.Tensor) -> bool:
    """Whether ``t`` is a batch of gradients autograd's batched backward made (``is_grads_batched``,
    ``jacobian(vectorize=True)``: a legacy vmap tensor), which the kernels' backwards cannot take."""
    check = getattr(torch._C._functorch, "is_legacy_batchedtensor", None)
    return bool(check is not None and check(t))
