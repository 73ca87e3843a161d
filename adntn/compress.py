"""``adntn.compress``: replace named layers of a model by tensor-network layers, with a table."""

from __future__ import annotations

import fnmatch
import math
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

    Values become booleans (``true`` / ``false``), ints or floats (``lr=0.1``) where they read as
    such, and stay strings otherwise (``activation=gelu``).

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
        else:
            opts[key] = _value(value)
    return opts


def _value(text: str) -> bool | int | float | str:
    """A spec value as the layer wants it: ``true``/``false``, an int, a finite float, else the text."""
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    # "inf" and "nan" parse as floats but are names here (an activation could be called so).
    return number if math.isfinite(number) else text


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

    Every replacement is built before any is swapped in, so a call that raises leaves ``model`` as
    it was. A layer used under several names (weight sharing) is one layer: a rule naming any of its
    names replaces it under all of them by one new layer, which keeps the sharing.

    Args:
        model: The model; modified in place.
        rules: Layer name (or ``fnmatch`` pattern, e.g. ``"features.*"``) -> spec such as
            ``"ttn:bond=8"`` or ``{"arch": "mera", "bond_dim": 4}``. The first matching rule wins.
            A pattern skips the layers that cannot compress (other types, grouped or non-zero-padded
            convolutions, ``nn.MultiheadAttention``'s ``out_proj``); a rule naming one exactly is an error.
        fit: Fit each generator to the layer's current weight (``from_linear`` / ``from_conv``)
            instead of a fresh init.

    Returns:
        The per-layer :class:`CompressionReport`.

    Raises:
        AdntnError: If a rule matches no replaceable layer, names a layer that cannot compress, or
            builds no layer (a bad spec).
    """
    if not isinstance(rules, Mapping):
        raise AdntnError(
            f"rules must map layer names or patterns to specs (e.g. {{'classifier.1': 'ttn:bond=8'}}), "
            f"got a {type(rules).__name__}"
        )
    names, modules, places = _references(model)
    # nn.MultiheadAttention hands out_proj.weight to F.multi_head_attention_forward and never calls it.
    out_projs = {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    refusals = {key: _refusal(mod, key in out_projs) for key, mod in modules.items()}
    replaceable = sorted(n for key, ns in names.items() if refusals[key] is None for n in ns)
    chosen: dict[int, dict[str, Any]] = {}
    for pattern, spec in rules.items():
        opts = parse_spec(spec)
        hits = [(key, n) for key, ns in names.items() for n in ns if n == pattern or fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise AdntnError(
                f"rule {pattern!r} matches no layer; layers that can be compressed: {', '.join(replaceable) or 'none'}"
            )
        for key, name in hits:
            if refusals[key] is not None:
                if name == pattern:
                    raise AdntnError(f"layer {name!r} {refusals[key]}")
                continue
            chosen.setdefault(key, opts)
        if all(refusals[key] is not None for key, _ in hits):
            # Else the model would train dense while the rule reads as if it compressed something.
            name, key = hits[0][1], hits[0][0]
            raise AdntnError(
                f"rule {pattern!r} matches only layers that cannot compress ({name!r} {refusals[key]}); "
                f"layers that can: {', '.join(replaceable) or 'none'}"
            )
    report = CompressionReport()
    built: list[tuple[int, nn.Module]] = []
    for key, opts in chosen.items():
        name = names[key][0]
        try:
            new, kind, arch = _replacement(name, modules[key], opts, fit)
        except AdntnError as exc:
            message = str(exc)
            raise AdntnError(message if message.startswith("layer ") else f"layer {name!r}: {message}") from None
        built.append((key, new))
        old = modules[key]
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
    for key, new in built:  # nothing raises from here on: the model changes all at once or not at all
        for parent, attr in places[key]:
            setattr(parent, attr, new)
    return report


def _references(
    model: nn.Module,
) -> tuple[dict[int, list[str]], dict[int, nn.Module], dict[int, list[tuple[nn.Module, str]]]]:
    """Every place a submodule is held, by the module's id: its names, the module, and (parent, attribute).

    ``named_modules()`` keeps only a shared module's first name, and ``remove_duplicate=False`` walks
    a shared subtree once per path (exponential for nested sharing, endless for a module graph with a
    back-reference). Each module is visited once here and each of its attributes read once, so a
    layer held under several names is found under all of them.
    """
    names: dict[int, list[str]] = {}
    modules: dict[int, nn.Module] = {}
    places: dict[int, list[tuple[nn.Module, str]]] = {}
    for parent_name, parent in model.named_modules():
        for attr, child in parent._modules.items():
            if child is None or child is model:
                continue
            key = id(child)
            names.setdefault(key, []).append(f"{parent_name}.{attr}" if parent_name else attr)
            modules[key] = child
            places.setdefault(key, []).append((parent, attr))
    return names, modules, places


# Taken from the layer being replaced, so a spec may not set them.
_FROM_LAYER = {
    "in_features",
    "out_features",
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "groups",
    "padding_mode",
    "device",
    "dtype",
}


def _refusal(mod: nn.Module, out_proj: bool) -> str | None:
    """Why ``mod`` cannot be compressed (the end of an error message), or ``None`` if it can."""
    if not isinstance(mod, (nn.Linear, nn.Conv2d)):
        return f"is a {type(mod).__name__}; only Linear and Conv2d compress"
    if out_proj:
        return (
            "is an nn.MultiheadAttention's out_proj, whose weight the attention reads directly; "
            "a generated layer there would never run"
        )
    if isinstance(mod, nn.Conv2d) and (mod.groups != 1 or mod.padding_mode != "zeros"):
        return "is a grouped or non-zero-padded convolution; only groups=1, zero-padded convolutions compress"
    return None


def _replacement(name: str, old: nn.Module, opts: dict[str, Any], fit: bool) -> tuple[nn.Module, str, str]:
    """The TN layer replacing ``old`` under ``opts`` (on its device and dtype), its kind and arch."""
    if isinstance(old, nn.modules.lazy.LazyModuleMixin) and old.has_uninitialized_params():
        raise AdntnError(f"layer {name!r} is an uninitialised {type(old).__name__}; run a forward pass first")
    opts = dict(opts)
    taken = sorted(_FROM_LAYER & set(opts))
    if taken:
        raise AdntnError(f"layer {name!r}: option(s) {', '.join(taken)} come from the layer replaced; drop them")
    arch = opts.pop("arch")
    given = sorted({"steps", "seed", "lr"} & set(opts))
    if given and not fit:
        raise AdntnError(f"option(s) {', '.join(given)} set how a layer is fitted; pass fit=True or drop them")
    fitting = {"steps": opts.pop("steps", 500), "seed": opts.pop("seed", 0), "lr": opts.pop("lr", 0.02)}
    opts.setdefault("bias", old.bias is not None)
    if isinstance(old, nn.Linear):
        if fit:
            new: nn.Module = TNLinear.from_linear(old, arch, **fitting, **opts)
        else:
            new = TNLinear(old.in_features, old.out_features, arch, **opts)
        kind = "linear"
    else:
        if fit:
            new = TNConv2d.from_conv(old, arch, **fitting, **opts)
        else:
            geometry = (old.kernel_size, old.stride, old.padding, old.dilation)
            new = TNConv2d(old.in_channels, old.out_channels, *geometry, arch, **opts)
        kind = "conv2d"
    new.to(device=old.weight.device, dtype=old.weight.dtype)
    return new, kind, arch
