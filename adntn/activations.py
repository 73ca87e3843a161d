"""Elementwise activations between generator segments, by name or as a callable, with derivatives."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional

from adntn.errors import AdntnError

Activation = str | Callable[[torch.Tensor], torch.Tensor] | None

_NEGATIVE_SLOPE = 0.01


def _relu_grad(z: torch.Tensor) -> torch.Tensor:
    return (z > 0).to(z.dtype)


def _leaky_grad(z: torch.Tensor) -> torch.Tensor:
    return torch.where(z > 0, torch.ones_like(z), torch.full_like(z, _NEGATIVE_SLOPE))


def _gelu_grad(z: torch.Tensor) -> torch.Tensor:
    cdf = 0.5 * (1.0 + torch.erf(z / 2**0.5))
    pdf = torch.exp(-0.5 * z * z) / (2 * torch.pi) ** 0.5
    return cdf + z * pdf


def _tanh_grad(z: torch.Tensor) -> torch.Tensor:
    return 1.0 - torch.tanh(z) ** 2


def _leaky_relu(z: torch.Tensor) -> torch.Tensor:
    return functional.leaky_relu(z, _NEGATIVE_SLOPE)


_NAMED: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]] = {
    "relu": (torch.relu, _relu_grad),
    "leaky_relu": (_leaky_relu, _leaky_grad),
    "gelu": (functional.gelu, _gelu_grad),
    "tanh": (torch.tanh, _tanh_grad),
}
NAMES = ("identity", *_NAMED)


def check(activation: Activation) -> str | Callable[[torch.Tensor], torch.Tensor]:
    """Validate an activation: a name from :data:`NAMES`, ``None`` (identity) or a callable."""
    if activation is None:
        return "identity"
    if callable(activation):
        return activation
    if activation in NAMES:
        return activation
    raise AdntnError(f"unknown activation {activation!r}; use one of {', '.join(NAMES)} or a callable")


def is_identity(activation: str | Callable) -> bool:
    """Whether the activation is the identity (so its segment merges with the next)."""
    return activation == "identity"


def apply(activation: str | Callable, z: torch.Tensor) -> torch.Tensor:
    """``σ(z)``."""
    if activation == "identity":
        return z
    if callable(activation):
        return activation(z)
    return _NAMED[activation][0](z)


def derivative(activation: str | Callable, z: torch.Tensor) -> torch.Tensor:
    """``σ'(z)`` elementwise; for a callable it comes from autograd."""
    if activation == "identity":
        return torch.ones_like(z)
    if callable(activation):
        with torch.enable_grad():
            zz = z.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(activation(zz).sum(), zz)
        return grad
    return _NAMED[activation][1](z)


def name(activation: str | Callable) -> str:
    """A printable name."""
    return activation if isinstance(activation, str) else getattr(activation, "__name__", type(activation).__name__)
