"""Drop-in ``nn.Linear`` and ``nn.Conv2d`` replacements whose weight comes from a generator."""

from __future__ import annotations

import difflib
import itertools
import math
import numbers
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from adntn.errors import AdntnError
from adntn.generator import Generator, nearest_size
from adntn.generators import generator_options, make_generator
from adntn.overlap import overlapped_linear

MODES = ("auto", "materialize", "stream", "kron")
# On a GPU mode="auto" compares planned flops plus this weight per element written: a written element
# costs about a thousand flops of TF32 GEMM time. On an H200 at batch 8192
# (benchmarks/results/kernels-gpu.md) the weight that picks the faster mode in every measured
# configuration lies between 663 and 2,520; by flops alone streaming was picked where it ran 2-13x
# slower. On the CPU the modes' predicted seconds decide (adntn/timing.py): flops alone streamed a
# TTN χ=16 at 4096 rows, 2.2x slower than materialising (benchmarks/results/kernels-kron-cpu.md).
WRITE_WEIGHT = {"cuda": 1024}
# Batch sizes auto has a pick for (a batch takes the nearest on a log scale): every power of two, as
# batches usually are. Finer than the stream plans' buckets: TTN χ=16 and MERA χ=8 4096x4096 stream
# fastest at 256 rows and materialise fastest at 1024, and TTN χ=13 is predicted to stream fastest at
# 8-16 rows but to run the Kronecker sum fastest at 4 and at 32 (1.4-1.5x cheaper than streaming there;
# measured, a near tie: two runs of benchmarks/results/layers.md timed kron 1.19x, then stream 1.07x faster).
DECISION_ROWS = tuple(1 << i for i in range(15))
# The CPU model traces these always, and a size between two of them only where their picks differ:
# a crossover lies there. Elsewhere the size between takes its neighbours' shared pick, which saves
# most of its tracing (0.3-0.4 s per 4096-wide layer instead of ~0.5 s); tracing every size would
# change 2 of the 273 untraced picks of the 13 configurations in benchmarks/results/layers-auto-cpu.md
# and layers.md, both predicted within 1%.
TRACED_ROWS = DECISION_ROWS[::2]


def decision_rows(rows: int) -> int:
    """The entry of :data:`DECISION_ROWS` nearest to ``rows`` on a log scale (the smaller on a tie)."""
    return nearest_size(rows, DECISION_ROWS)


def _mode(mode: str) -> str:
    if mode not in MODES:
        raise AdntnError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


def _make_generator(
    layer: str, arch: str, out_features: int, in_features: int, own: tuple[str, ...], kwargs: dict[str, Any]
) -> Generator:
    """``make_generator``, with an error naming the unknown option instead of an internal function."""
    try:
        return make_generator(arch, out_features, in_features, **kwargs)
    except AdntnError as exc:
        # make_generator turns the TypeError of an unexpected keyword into an AdntnError whose message
        # names whichever internal function refused it; name the option and the valid ones instead.
        if not isinstance(exc.__context__, TypeError):
            raise
        valid = generator_options(arch) | set(own)
        unknown = sorted(set(kwargs) - valid)
        if not unknown:
            raise
        hints = [f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(u, valid, 1)) else "" for u in unknown]
        names = ", ".join(f"{u!r}{h}" for u, h in zip(unknown, hints, strict=True))
        raise AdntnError(
            f"{layer}: unknown option {names} for arch={arch!r}; valid options: {', '.join(sorted(valid))}"
        ) from None


def _check_can_fit() -> None:
    if torch.is_inference_mode_enabled():
        raise AdntnError(
            "fitting a generator needs autograd, which torch.inference_mode() turns off; "
            "fit outside inference_mode (torch.no_grad() is fine)"
        )


def fit_generator(
    generator: Generator, target: torch.Tensor, *, steps: int = 500, lr: float = 0.02, seed: int = 0
) -> float:
    """Fit a generator's cores to ``target`` (minimising the relative Frobenius error) with Adam.

    The cores are re-initialised from ``seed`` first, so the result depends only on the inputs. Cores in
    float16 or bfloat16 are fitted in float32 and cast back (Adam's steps in half precision overflow).
    An all-zero target has no relative error: its absolute one, ``||W||``, is minimised and returned.
    The cores end at the step with the smallest error (a step that diverged is never kept).

    Runs under ``torch.no_grad()`` too: the fitting needs autograd and turns it back on.

    Returns:
        The final relative error ``||W - target|| / ||target||`` (``||W||`` for an all-zero target).

    Raises:
        AdntnError: Under ``torch.inference_mode()``, when ``target`` has the wrong shape or holds
            values that are not finite, or when ``steps`` is negative.
    """
    _check_can_fit()
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise AdntnError(f"steps must be an integer >= 0, got {steps!r}")
    if tuple(target.shape) != (generator.out_features, generator.in_features):
        raise AdntnError(
            f"target weight has shape {tuple(target.shape)} but the generator makes "
            f"{(generator.out_features, generator.in_features)}"
        )
    dtype = next(generator.parameters()).dtype
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    target = target.detach().to(work)
    if not bool(torch.isfinite(target).all()):
        raise AdntnError("target weight holds inf or nan values; fit a weight whose values are all finite")
    norm = target.norm()
    norm = norm if float(norm) > 0 else torch.ones((), dtype=work, device=target.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator.reset_parameters()
    generator.to(work)
    try:
        best = _fit_steps(generator, target, norm, steps, lr)
    finally:
        generator.to(dtype)
    return best


def _fit_steps(generator: Generator, target: torch.Tensor, norm: torch.Tensor, steps: int, lr: float) -> float:
    """Adam on the relative error; the generator ends at its best step, whose error is returned."""
    opt = torch.optim.Adam(generator.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    best = math.inf
    best_state = None
    with torch.enable_grad():  # a caller's no_grad() would leave the error without a graph to step on
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            err = (generator() - target).norm() / norm
            value = float(err.detach())
            if not math.isfinite(value):
                break  # diverged: the steps after it would only spread the inf or nan through the cores
            if value < best:
                best = value
                best_state = {k: v.detach().clone() for k, v in generator.state_dict().items()}
            err.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        final = float((generator() - target).norm() / norm)
    if best_state is not None and not final <= best:  # also when the last step left a nan
        generator.load_state_dict(best_state)
        final = best
    return final


class _TNLayer(nn.Module):
    """What TN layers share: the generator, parameter counts and fitting."""

    generator: Generator
    fit_error: float | None
    bias: nn.Parameter | None

    def _finish_init(self, out: int, bias: bool, device: Any, dtype: torch.dtype | None) -> None:
        self.bias = nn.Parameter(torch.empty(out)) if bias else None
        self.fit_error = None
        self.reset_bias()
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    @torch.no_grad()
    def reset_bias(self) -> None:
        """The dense layer's bias init: uniform in ``±1/sqrt(fan_in)``."""
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.generator.fan_in)
            self.bias.uniform_(-bound, bound)

    def reset_parameters(self) -> None:
        """Re-initialise the generator and the bias."""
        self.generator.reset_parameters()
        self.reset_bias()
        self.fit_error = None

    def generate_weight(self) -> torch.Tensor:
        """The dense weight the generator currently produces."""
        raise NotImplementedError

    @property
    def weight(self) -> torch.Tensor:
        """The generated dense weight, shaped like the replaced layer's (read-only, differentiable).

        For code that reads ``layer.weight`` of an ``nn.Linear`` / ``nn.Conv2d``; every read runs the
        generator. Not a parameter: the state dict holds the generator's cores only.
        """
        return self.generate_weight()

    def dense_weight_numel(self) -> int:
        """Entries of the dense weight this layer replaces."""
        return math.prod(self.weight_shape())

    def weight_shape(self) -> tuple[int, ...]:
        """The shape of :attr:`weight`, known without generating it."""
        raise NotImplementedError

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Layers of neighbouring sizes pad to the same factors and have cores of equal shapes, so
        # without a bias nothing else would notice 64x64 weights loaded into a 64x63 layer. The shape
        # is an entry of the state dict (so a dict rebuilt key by key, as when stripping DDP's
        # "module." prefix, keeps it); state dicts saved before kept it in their metadata, or had none.
        key = prefix + "_extra_state"
        entry = state_dict.get(key)
        saved = local_metadata.get("weight_shape") if entry is None else _shape_from_entry(entry)
        if saved is not None and tuple(saved) != self.weight_shape():
            error_msgs.append(
                f"size mismatch for {prefix[:-1] or type(self).__name__}: the state dict was saved by a layer "
                f"generating a {tuple(saved)} weight, this one generates {self.weight_shape()}"
            )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if entry is None and key in missing_keys:
            missing_keys.remove(key)  # an older state dict: it loads as it always did

    def get_extra_state(self) -> torch.Tensor:
        """The generated weight's shape, a small int64 tensor (state-dict entry ``_extra_state``; a tensor,
        so formats that hold only tensors, such as safetensors, take the state dict)."""
        return torch.tensor(self.weight_shape(), dtype=torch.int64, device="cpu")  # not the default device

    def set_extra_state(self, state: Any) -> None:
        """Nothing to set: the shape was checked against this layer's in ``_load_from_state_dict``."""

    @torch.no_grad()
    def _copy_bias(self, bias: torch.Tensor | None) -> None:
        """Take a fitted dense layer's bias (zero when it had none and this layer keeps one)."""
        if self.bias is not None:
            self.bias.copy_(bias if bias is not None else torch.zeros_like(self.bias))

    def num_parameters(self) -> int:
        """Trainable numbers in the layer (generator cores plus bias)."""
        return sum(p.numel() for p in self.parameters())

    def compression_ratio(self) -> float:
        """Dense weight entries per generator parameter (biases excluded on both sides)."""
        return self.dense_weight_numel() / self.generator.num_parameters()


def _shape_from_entry(entry: Any) -> tuple[int, ...] | None:
    """The weight shape a state dict's ``_extra_state`` entry records (``None`` if it is no shape)."""
    # Any dtype: a state dict cast as a whole (.float(), checkpoint averaging) casts this entry too.
    if isinstance(entry, torch.Tensor) and entry.dim() == 1 and not entry.is_meta:
        values = entry.detach().cpu().double().round().tolist()
        return tuple(int(v) for v in values)
    return None


class TNLinear(_TNLayer):
    """A linear layer whose ``(out_features, in_features)`` weight is generated by a nonlinear
    tensor network; a drop-in replacement for ``nn.Linear``.

    Args:
        in_features: Size of each input sample.
        out_features: Size of each output sample.
        arch: ``"ttn"``, ``"attn"`` or ``"mera"``.
        bond_dim: Bond size of the generator.
        bias: Learn an additive bias.
        mode: ``"materialize"`` (build ``W``, then ``x @ W.T``), ``"stream"`` (contract the input
            through the last segment), ``"kron"`` (stream through the last segment's Kronecker factors
            with the fused Triton kernels of :mod:`kernels.kronsum` on CUDA, torch matmuls elsewhere;
            TTN roots split this way) or ``"auto"`` (per batch size, device and regime, see
            :meth:`mode_for`: on the CPU the fastest of the modes the generator has by predicted
            seconds, :mod:`adntn.timing`; on a GPU materialize or stream by planned flops and writes).
        overlap: On a CUDA device, materialise the weight on a side stream so that the generator's
            backward runs while the main stream computes the input gradient (``adntn.overlap``).
        device: Where the parameters live.
        dtype: Their dtype.
        **kwargs: Generator options (``activation``, ``arity``, ``n_factors``, ``activation_every``, ...).

    Examples:
        >>> layer = TNLinear(256, 128, arch="ttn", bond_dim=4)
        >>> layer(torch.randn(3, 256)).shape
        torch.Size([3, 128])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        arch: str = "ttn",
        bond_dim: int | None = None,
        *,
        bias: bool = True,
        mode: str = "auto",
        overlap: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.overlap = overlap
        self.in_features = in_features
        self.out_features = out_features
        self.arch = arch
        _mode(mode)  # an unknown name fails before the generator is built
        if bond_dim is not None:
            kwargs["bond_dim"] = bond_dim
        own = ("bond_dim", "bias", "mode", "overlap", "device", "dtype")
        self.generator = _make_generator("TNLinear", arch, out_features, in_features, own, kwargs)
        # Decided once per device kind, batch size (DECISION_ROWS) and regime (timing.REGIMES: forward
        # only, backward to the cores, to the cores and x), so forward only looks the answer up: on the
        # CPU the fastest of the modes this generator has by predicted seconds (adntn/timing.py, the
        # Kronecker sum through its torch route); on a GPU materialize or stream by planned flops and
        # writes (the Triton Kronecker sum is not yet measured there). Filled when the mode becomes auto.
        self.auto_modes: dict[str, dict[tuple[int, str], str]] = {"cpu": {}, "cuda": {}}
        self.mode = mode
        self._finish_init(out_features, bias, device, dtype)

    def generate_weight(self) -> torch.Tensor:
        """The ``(out_features, in_features)`` weight."""
        return self.generator()

    def weight_shape(self) -> tuple[int, ...]:
        """``(out_features, in_features)``."""
        return (self.out_features, self.in_features)

    @property
    def mode(self) -> str:
        """``"auto"``, ``"materialize"``, ``"stream"`` or ``"kron"``; setting ``"auto"`` decides its picks then."""
        return self._mode_name

    @mode.setter
    def mode(self, value: str) -> None:
        gen = self.generator
        if _mode(value) == "stream" and not gen.streamable:
            raise AdntnError("mode='stream' needs a linear last segment; drop root_activation (or use mode='auto')")
        if value == "kron" and gen.kron is None:
            raise AdntnError(
                f"mode='kron' needs a last segment that splits into a Kronecker sum (a linear TTN root); "
                f"arch={self.arch!r} with these options has none; use mode='auto'"
            )
        self.__dict__["_mode_name"] = value
        if value == "auto":  # again too: the machine's thread count (or the cached timings) may have changed
            self.auto_modes = self._decide()

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Layers pickled before auto decided by predicted seconds kept "mode" and "stream_at".
        state.pop("stream_at", None)
        if "mode" in state:
            state["_mode_name"] = state.pop("mode")
        super().__setstate__(state)
        # Layers pickled before auto decided at every power of two hold picks for every fourth.
        picked = self.__dict__.get("auto_modes", {}).get("cpu")
        if picked is None or (self._mode_name == "auto" and any((b, "input") not in picked for b in DECISION_ROWS)):
            self.auto_modes = {"cpu": {}, "cuda": {}}
            self.mode = self._mode_name

    def _decide(self) -> dict[str, dict[tuple[int, str], str]]:
        from adntn import timing

        gen = self.generator
        modes = ["materialize"] + ["stream"] * gen.streamable + ["kron"] * (gen.kron is not None)
        # Outside the try below: a calibration that fails is an error, not a reason to fall back.
        prices = timing.calibration() if len(modes) > 1 else {}
        decided: dict[str, dict[tuple[int, str], str]] = {"cpu": {}, "cuda": {}}
        for b in DECISION_ROWS:
            cuda = "stream" if gen.streams_cheaper(b, WRITE_WEIGHT["cuda"]) else "materialize"
            decided["cuda"].update({(b, regime): cuda for regime in timing.REGIMES})
        for regime in timing.REGIMES:
            if len(modes) == 1:
                picks = dict.fromkeys(DECISION_ROWS, "materialize")
            else:
                try:
                    picks = self._cpu_picks(modes, regime, prices)
                except Exception:
                    # The trace runs the generator's activations on meta tensors, and a user's callable
                    # may refuse them with any exception (reading a value, numpy, a device check): then
                    # planned flops decide for this layer, as they did before the timing model.
                    picks = {b: "stream" if gen.streams_cheaper(b) else "materialize" for b in DECISION_ROWS}
            decided["cpu"].update({(b, regime): mode for b, mode in picks.items()})
        return decided

    def _cpu_picks(self, modes: list[str], regime: str, prices: dict[str, float]) -> dict[int, str]:
        """The predicted fastest of ``modes`` per :data:`DECISION_ROWS` size: traced at :data:`TRACED_ROWS`,
        and at the size between two of them only where their picks differ (else their shared pick)."""
        picks = {b: self._fastest(modes, b, regime, prices) for b in TRACED_ROWS}
        for lo, hi in itertools.pairwise(TRACED_ROWS):
            same = picks[lo] == picks[hi]
            picks[2 * lo] = picks[lo] if same else self._fastest(modes, 2 * lo, regime, prices)
        return picks

    def _fastest(self, modes: list[str], rows: int, regime: str, prices: dict[str, float]) -> str:
        from adntn import timing

        seconds = [timing.mode_seconds(self.generator, m, rows, regime, prices) for m in modes]
        # The first of equal predictions (plain min over the list), so every run picks alike.
        return modes[seconds.index(min(seconds))]

    def mode_for(self, rows: int, device: str | torch.device = "cpu", regime: str = "input") -> str:
        """The mode a batch of ``rows`` samples on ``device`` runs in: ``"materialize"``, ``"stream"`` or
        ``"kron"``. ``regime``: ``"forward"`` (no backward: grad disabled), ``"weights"`` (x needs no
        gradient, as an input layer's) or ``"input"`` (x needs one, as a hidden layer's)."""
        if isinstance(rows, bool) or not isinstance(rows, numbers.Integral | torch.SymInt) or rows < 0:
            raise AdntnError(f"rows must be an integer >= 0, got {rows!r}")
        if regime not in ("forward", "weights", "input"):
            raise AdntnError(f"unknown regime {regime!r}; choose one of forward, weights, input")
        if rows == 0:
            return "materialize"  # as forward runs an empty batch
        if self.mode != "auto":
            return self.mode
        kind = "cuda" if getattr(device, "type", str(device)).startswith("cuda") else "cpu"
        try:
            return self.auto_modes[kind][decision_rows(rows), regime]
        except KeyError:
            raise AdntnError(f"unknown regime {regime!r}; choose one of forward, weights, input") from None

    def uses_stream(self, rows: int, device: str | torch.device = "cpu", regime: str = "input") -> bool:
        """Whether a batch of ``rows`` samples on ``device`` avoids building ``W`` (streams, or kron)."""
        return self.mode_for(rows, device, regime) != "materialize"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise AdntnError(
                f"TNLinear expects inputs with last dimension {self.in_features}, got shape {tuple(x.shape)}"
            )
        lead = x.shape[:-1]
        rows = math.prod(lead)
        if isinstance(rows, torch.Tensor):  # torch.jit.trace gives sizes as tensors
            rows = int(rows)  # the trace keeps the mode of this batch size, as it keeps every Python branch
        regime = "forward" if not torch.is_grad_enabled() else "input" if x.requires_grad else "weights"
        mode = self.mode_for(rows, x.device, regime)
        if mode != "materialize":
            flat = x.reshape(-1, self.in_features)  # not `rows`: a trace would fix the batch size
            if mode == "stream":
                y = self.generator.stream(flat)
            else:
                # auto picks kron on the CPU only, where its model timed the torch route.
                y = self.generator.stream_kron(flat, backend="auto" if self.mode == "kron" else "torch")
            y = y.reshape(*lead, self.out_features)
            # In the output's dtype, as nn.Linear adds it under autocast (a float32 bias would promote).
            return y if self.bias is None else y + self.bias.to(y.dtype)
        if self.overlap and x.is_cuda and torch.is_grad_enabled() and not torch.compiler.is_compiling():
            return overlapped_linear(x, self.generator, self.bias)
        return functional.linear(x, self.generator(), self.bias)

    @classmethod
    def from_linear(
        cls, layer: nn.Linear, arch: str = "ttn", *, steps: int = 500, lr: float = 0.02, seed: int = 0, **kwargs: Any
    ) -> TNLinear:
        """A TN layer fitted to a pretrained ``nn.Linear`` (bias copied); ``fit_error`` holds the
        relative Frobenius error of the fitted weight.

        ``bias`` defaults to whether ``layer`` has one; ``bias=False`` drops it, ``bias=True`` on a
        bias-free layer adds a zero bias. Works under ``torch.no_grad()``.

        Raises:
            AdntnError: If ``layer`` is not an ``nn.Linear``, or under ``torch.inference_mode()``.
        """
        if not isinstance(layer, nn.Linear):
            raise AdntnError(f"from_linear needs an nn.Linear, got {type(layer).__name__}")
        _check_can_fit()  # before the generator is built and planned
        kwargs.setdefault("bias", layer.bias is not None)
        new = cls(layer.in_features, layer.out_features, arch, **kwargs)
        new.to(device=layer.weight.device, dtype=layer.weight.dtype)
        new.fit_error = fit_generator(new.generator, layer.weight, steps=steps, lr=lr, seed=seed)
        new._copy_bias(layer.bias)
        return new

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, arch={self.arch}, mode={self.mode}, "
            f"bias={self.bias is not None}, compression={self.compression_ratio():.1f}x"
        )


def _pair(value: Any, name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if not (isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) and v >= 0 for v in value)):
        raise AdntnError(f"{name} must be an int or a pair of ints, got {value!r}")
    return value


class TNConv2d(_TNLayer):
    """A 2-D convolution whose ``(out, in, kh, kw)`` kernel is generated by a nonlinear tensor
    network; a drop-in replacement for ``nn.Conv2d`` (``groups=1``, zero padding).

    The kernel is generated as an ``out x (in * kh * kw)`` matrix (fan-in ``in * kh * kw``) and
    applied with ``functional.conv2d``; convolutions always materialise the kernel.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Kernel size (int or pair).
        stride: As for ``nn.Conv2d``.
        padding: As for ``nn.Conv2d`` (int, pair, ``"same"`` or ``"valid"``).
        dilation: As for ``nn.Conv2d``.
        arch: ``"ttn"``, ``"attn"`` or ``"mera"``.
        bond_dim: Bond size.
        bias: Learn an additive bias.
        mode: ``"auto"`` or ``"materialize"``.
        groups: Only ``1`` (accepted for ``nn.Conv2d``'s signature).
        padding_mode: Only ``"zeros"``.
        device: Where the parameters live.
        dtype: Their dtype.
        **kwargs: Generator options.

    Raises:
        AdntnError: On a geometry ``nn.Conv2d`` would refuse, grouped or non-zero-padded convolutions,
            or unknown options.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        arch: str = "ttn",
        bond_dim: int | None = None,
        *,
        bias: bool = True,
        mode: str = "auto",
        groups: int = 1,
        padding_mode: str = "zeros",
        device: Any = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.mode = mode
        if groups != 1 or padding_mode != "zeros":
            raise AdntnError(
                f"TNConv2d supports groups=1 and padding_mode='zeros' only, got groups={groups!r}, "
                f"padding_mode={padding_mode!r}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size, "kernel_size")
        if min(self.kernel_size) < 1:
            raise AdntnError(f"kernel_size must be >= 1, got {kernel_size!r}")
        self.stride = _pair(stride, "stride")
        self.dilation = _pair(dilation, "dilation")
        # What functional.conv2d would refuse only in forward, refused here as nn.Conv2d does.
        for name, given, pair in (("stride", stride, self.stride), ("dilation", dilation, self.dilation)):
            if min(pair) < 1:
                raise AdntnError(f"{name} must be >= 1, got {given!r}")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise AdntnError(f"padding must be 'same', 'valid', an int or a pair of ints, got {padding!r}")
            if padding == "same" and self.stride != (1, 1):
                raise AdntnError("padding='same' is not supported for strided convolutions")
            self.padding: str | tuple[int, int] = padding
        else:
            self.padding = _pair(padding, "padding")
        self.arch = arch
        if bond_dim is not None:
            kwargs["bond_dim"] = bond_dim
        kh, kw = self.kernel_size
        fan_in = in_channels * kh * kw
        kwargs.setdefault("fan_in", fan_in)
        own = ("stride", "padding", "dilation", "bond_dim", "bias", "mode", "groups", "padding_mode", "device", "dtype")
        self.generator = _make_generator("TNConv2d", arch, out_channels, fan_in, own, kwargs)
        self._finish_init(out_channels, bias, device, dtype)

    def generate_weight(self) -> torch.Tensor:
        """The ``(out_channels, in_channels, kh, kw)`` kernel."""
        return self.generator().reshape(self.out_channels, self.in_channels, *self.kernel_size)

    def weight_shape(self) -> tuple[int, ...]:
        """``(out_channels, in_channels, kh, kw)``."""
        return (self.out_channels, self.in_channels, *self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (3, 4) or x.shape[-3] != self.in_channels:
            raise AdntnError(
                f"TNConv2d expects (N, {self.in_channels}, H, W) or ({self.in_channels}, H, W) inputs, "
                f"got shape {tuple(x.shape)}"
            )
        return functional.conv2d(x, self.generate_weight(), self.bias, self.stride, self.padding, self.dilation)

    @classmethod
    def from_conv(
        cls, layer: nn.Conv2d, arch: str = "ttn", *, steps: int = 500, lr: float = 0.02, seed: int = 0, **kwargs: Any
    ) -> TNConv2d:
        """A TN conv fitted to a pretrained ``nn.Conv2d`` (bias copied; ``fit_error`` reported).

        ``bias`` and ``torch.no_grad()`` as for :meth:`TNLinear.from_linear`.

        Raises:
            AdntnError: If ``layer`` is not a plain (``groups=1``, zero-padded) ``nn.Conv2d``, or under
                ``torch.inference_mode()``.
        """
        if not isinstance(layer, nn.Conv2d):
            raise AdntnError(f"from_conv needs an nn.Conv2d, got {type(layer).__name__}")
        if layer.groups != 1 or layer.padding_mode != "zeros":
            raise AdntnError("from_conv supports groups=1 and padding_mode='zeros' convolutions only")
        _check_can_fit()  # before the generator is built and planned
        kwargs.setdefault("bias", layer.bias is not None)
        new = cls(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            arch,
            **kwargs,
        )
        new.to(device=layer.weight.device, dtype=layer.weight.dtype)
        target = layer.weight.reshape(layer.out_channels, -1)
        new.fit_error = fit_generator(new.generator, target, steps=steps, lr=lr, seed=seed)
        new._copy_bias(layer.bias)
        return new

    @property
    def mode(self) -> str:
        """``"auto"`` or ``"materialize"``: a convolution always builds its kernel."""
        # Layers pickled before this was a property hold their value under "mode".
        return self.__dict__.get("_conv_mode", self.__dict__.get("mode", "auto"))

    @mode.setter
    def mode(self, value: str) -> None:
        if _mode(value) in ("stream", "kron"):
            raise AdntnError("TNConv2d always builds its kernel; use mode='auto' or 'materialize'")
        self.__dict__["_conv_mode"] = value

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, arch={self.arch}, bias={self.bias is not None}, "
            f"compression={self.compression_ratio():.1f}x"
        )
