"""``adntn.compress``: replace named layers of a model by tensor-network layers, with a table."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from adntn.errors import AdntnError
from adntn.layers import TNConv2d, TNLinear

_ALIASES = {"bond": "bond_dim", "every": "activation_every", "legs": "n_factors"}
_INT_OPTIONS = {"bond_dim", "arity", "n_factors", "activation_every", "steps", "seed"}


def parse_spec(spec: str | Mapping[str, Any]) -> dict[str, Any]:
    """``"ttn:bond=8:activation=gelu"`` (or a dict) -> layer options with ``arch``.

    Raises:
        AdntnError: On a malformed spec.
    """
    if isinstance(spec, Mapping):
        opts = dict(spec)
        opts.setdefault("arch", "ttn")
        return opts
    if not isinstance(spec, str) or not spec:
        raise AdntnError(f"a compression spec is 'arch[:key=value...]' or a dict, got {spec!r}")
    arch, *pairs = spec.split(":")
    opts: dict[str, Any] = {"arch": arch}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise AdntnError(f"bad option {pair!r} in spec {spec!r}; write key=value, e.g. ttn:bond=8")
        key = _ALIASES.get(key, key)
        if key in _INT_OPTIONS:
            try:
                opts[key] = int(value)
            except ValueError:
                raise AdntnError(f"option {key} in spec {spec!r} must be an integer, got {value!r}") from None
        elif value in ("true", "false"):
            opts[key] = value == "true"
        else:
            opts[key] = value
    return opts


@dataclass
class CompressionReport:
    """One row per replaced layer: dense params, generator params, ratio, fit error."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_markdown(self) -> str:
        """The table as Markdown."""
        lines = [
            "| layer | kind | arch | dense params | generator params | compression | fit error |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            fit = "" if r["fit_error"] is None else f"{r['fit_error']:.4f}"
            lines.append(
                f"| {r['layer']} | {r['kind']} | {r['arch']} | {r['dense_params']} | {r['generator_params']} | "
                f"{r['compression']:.1f}x | {fit} |"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()


def compress(model: nn.Module, rules: Mapping[str, str | Mapping[str, Any]], *, fit: bool = False) -> CompressionReport:
    """Replace the ``nn.Linear`` / ``nn.Conv2d`` layers named by ``rules`` in place.

    Args:
        model: The model; modified in place.
        rules: Layer name (or ``fnmatch`` pattern, e.g. ``"features.*"``) -> spec such as
            ``"ttn:bond=8"`` or ``{"arch": "mera", "bond_dim": 4}``. The first matching rule wins.
        fit: Fit each generator to the layer's current weight (``from_linear`` / ``from_conv``)
            instead of a fresh init.

    Returns:
        The per-layer :class:`CompressionReport`.

    Raises:
        AdntnError: If a rule matches no replaceable layer or a layer is of an unsupported type.
    """
    layers = {name: mod for name, mod in model.named_modules() if name}
    replaceable = {n for n, m in layers.items() if isinstance(m, (nn.Linear, nn.Conv2d))}
    parsed = [(pattern, parse_spec(spec)) for pattern, spec in rules.items()]
    chosen: dict[str, dict[str, Any]] = {}
    for pattern, opts in parsed:
        hits = [n for n in layers if n == pattern or fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise AdntnError(
                f"rule {pattern!r} matches no layer; layers that can be compressed: "
                f"{', '.join(sorted(replaceable)) or 'none'}"
            )
        for name in hits:
            if name not in replaceable:
                if name == pattern:
                    raise AdntnError(
                        f"layer {name!r} is a {type(layers[name]).__name__}; only Linear and Conv2d compress"
                    )
                continue
            chosen.setdefault(name, opts)
    report = CompressionReport()
    for name, opts in chosen.items():
        old = layers[name]
        opts = dict(opts)
        arch = opts.pop("arch")
        steps = opts.pop("steps", 500)
        seed = opts.pop("seed", 0)
        if isinstance(old, nn.Linear):
            if fit:
                new: nn.Module = TNLinear.from_linear(old, arch, steps=steps, seed=seed, **opts)
            else:
                new = TNLinear(old.in_features, old.out_features, arch, bias=old.bias is not None, **opts)
            kind = "linear"
        else:
            if old.groups != 1 or old.padding_mode != "zeros":
                raise AdntnError(f"layer {name!r}: only groups=1, zero-padded convolutions compress")
            if fit:
                new = TNConv2d.from_conv(old, arch, steps=steps, seed=seed, **opts)
            else:
                new = TNConv2d(
                    old.in_channels,
                    old.out_channels,
                    old.kernel_size,
                    old.stride,
                    old.padding,
                    old.dilation,
                    arch,
                    bias=old.bias is not None,
                    **opts,
                )
            kind = "conv2d"
        new.to(device=old.weight.device, dtype=old.weight.dtype)
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, new)
        report.rows.append(
            {
                "layer": name,
                "kind": kind,
                "arch": arch,
                "dense_params": old.weight.numel(),
                "generator_params": new.generator.num_parameters(),
                "compression": new.compression_ratio(),
                "fit_error": new.fit_error,
            }
        )
    return report
