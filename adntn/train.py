"""The training workflow: build (and compress) a model with cached plans, train it with atomic
per-epoch checkpoints that resume exactly, and write ``metrics.jsonl`` and ``summary.json``.

The data order of epoch ``e`` is a permutation drawn from ``(seed, e)`` alone, so a resumed run sees
exactly the batches an uninterrupted one would, and a ``torchrun`` job (each rank taking its share
of every batch) matches the single-process run on the same data.
"""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import time
import tomllib
import types
import typing
import warnings
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adntn.compress import CompressionReport, compress
from adntn.data import load_dataset, pad_to
from adntn.errors import AdntnError
from adntn.layers import DECISION_ROWS, TNLinear, _TNLayer
from adntn.models import build_model
from adntn.timing import REGIMES

CHECKPOINT = "checkpoint.pt"
AMP_MODES = (None, "bf16")
# Settings that change how a run is executed, not what it computes: a resume may change them (plan on
# one machine, train with --cache-only on another). threads is one only up to rounding: CPU kernels
# split their sums by thread, so a resume with another count is warned that it will not match exactly.
RUNTIME_KEYS = frozenset({"threads", "cache", "cache_only", "data_dir"})


@dataclass
class TrainConfig:
    """Everything a run depends on; a run directory stores it as ``config.json``.

    Attributes:
        model: ``alexnet`` or ``vgg16``.
        dataset: ``digits``, ``fashion-mnist``, ``mnist`` or ``cifar10``.
        compress: Layer name -> spec (``"ttn:bond=8"``); empty for the dense model.
        epochs: Training epochs.
        batch_size: Global batch size (split across ``torchrun`` ranks).
        lr: Peak learning rate (one-cycle schedule).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        clip_grad: Largest global gradient norm (``torch.nn.utils.clip_grad_norm_``), or ``None``
            for no clipping. Generated layers trained by SGD at dense learning rates need it: a step
            moves every core of a product at once, and without a cap fc6/fc7 TTN heads at 77,000x
            diverged to NaN within three steps at lr 0.05 (``benchmarks/compression``).
        amp: ``"bf16"`` runs each forward pass and loss under ``torch.autocast`` in bfloat16 (the
            parameters, gradients and optimizer stay float32), or ``None`` for float32 throughout.
            The autocast region is one step's forward, never the whole loop: autocast caches the
            bfloat16 copies of the weights until its region ends, so a region around several steps
            keeps using the first step's weights.
        seed: Seeds the init, the data order and dropout.
        device: ``cpu`` or ``cuda``.
        width: Channel multiplier of the convolutions.
        fc_dim: Width of fc6/fc7.
        dropout: Dropout before fc6 and fc7.
        batch_norm: Batch norm after every convolution.
        data_dir: Where the data set files are (default lookup otherwise).
        train_limit: Use only the first N training images (0 = all).
        cache: Plan cache file (default: tnplan's).
        cache_only: Refuse to plan: every segment must be in the cache.
        threads: torch CPU threads.
    """

    model: str = "alexnet"
    dataset: str = "digits"
    compress: dict[str, str] = field(default_factory=dict)
    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    clip_grad: float | None = None
    amp: str | None = None
    seed: int = 0
    device: str = "cpu"
    width: float = 1.0
    fc_dim: int = 4096
    dropout: float = 0.5
    batch_norm: bool = True
    data_dir: str | None = None
    train_limit: int = 0
    cache: str | None = None
    cache_only: bool = False
    threads: int = 1

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a ``.toml`` or ``.json`` config; ``overrides`` (not ``None``) win.

        Raises:
            AdntnError: On an unreadable file or unknown keys.
        """
        path = Path(path)
        try:
            text = path.read_text()
            data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
        except (OSError, ValueError) as exc:
            raise AdntnError(f"cannot read config {path}: {exc}") from None
        if not isinstance(data, dict):
            raise AdntnError(f"config {path} must hold a table of settings, got a {type(data).__name__}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a mapping, rejecting unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise AdntnError(f"unknown config key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        cfg = cls(**{k: _plain(v) for k, v in data.items()})
        cfg.check()
        return cfg

    def check(self) -> None:
        """Validate types, then values (one clear error naming the key)."""
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            if not _has_type(value, hints[f.name]):
                raise AdntnError(
                    f"config key {f.name} must be {_type_name(hints[f.name])}, got {type(value).__name__} {value!r}"
                )
        for layer, spec in self.compress.items():
            if not isinstance(layer, str) or not isinstance(spec, str | dict):
                raise AdntnError(
                    f"config key compress.{layer} must be a spec string such as 'ttn:bond=8' or a table, "
                    f"got {type(spec).__name__} {spec!r}"
                )
        for name in ("epochs", "batch_size", "fc_dim", "threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise AdntnError(f"{name} must be a positive integer, got {value!r}")
        if not 0 < self.lr < math.inf:
            raise AdntnError(f"lr must be a finite number > 0, got {self.lr!r}")
        for name in ("momentum", "weight_decay"):
            if not 0 <= getattr(self, name) < math.inf:
                raise AdntnError(f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.seed < 2**63:
            raise AdntnError(f"seed must be an integer from 0 to 2**63 - 1, got {self.seed!r}")
        if not 0 < self.width < math.inf:
            raise AdntnError(f"width must be a positive channel multiplier, got {self.width!r}")
        if self.train_limit < 0:
            raise AdntnError(f"train_limit must be >= 0 (0 uses every training image), got {self.train_limit!r}")
        if self.clip_grad is not None and not (isinstance(self.clip_grad, int | float) and self.clip_grad > 0):
            raise AdntnError(f"clip_grad must be a positive gradient norm or omitted, got {self.clip_grad!r}")
        if self.amp not in AMP_MODES:
            raise AdntnError(f"amp must be bf16 or omitted (float32), got {self.amp!r}")
        if self.device not in ("cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise AdntnError(f"device must be cpu or cuda, got {self.device!r}")


def _plain(value: Any) -> Any:
    """A config value as TOML/JSON would give it: paths as strings, numpy scalars as Python numbers
    (the config is compared on resume and written to JSON)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        return value.item()
    return value


def _has_type(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits a :class:`TrainConfig` annotation (an int is a float; a bool is no number)."""
    if isinstance(hint, types.UnionType):
        return any(_has_type(value, h) for h in hint.__args__)
    kind = typing.get_origin(hint) or hint
    if kind is type(None):
        return value is None
    if kind in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, int | float) if kind is float else isinstance(value, kind)


def _type_name(hint: Any) -> str:
    if isinstance(hint, types.UnionType):
        return " or ".join(_type_name(h) for h in hint.__args__)
    kind = typing.get_origin(hint) or hint
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a table"}
    return "omitted (null)" if kind is type(None) else names.get(kind, kind.__name__)


def parse_compress(text: str | None) -> dict[str, str]:
    """``"fc6=ttn:bond=8,fc7=mera:bond=4"`` -> ``{"fc6": "ttn:bond=8", "fc7": "mera:bond=4"}``."""
    rules: dict[str, str] = {}
    if not text:
        return rules
    for part in text.split(","):
        name, sep, spec = part.partition("=")
        if not sep or not name or not spec:
            raise AdntnError(f"bad --compress entry {part!r}; write LAYER=ARCH[:key=value...], e.g. fc6=ttn:bond=8")
        rules[name.strip()] = spec.strip()
    return rules


def build(cfg: TrainConfig, in_channels: int, classes: int) -> tuple[nn.Module, CompressionReport, list[dict]]:
    """The model with its layers compressed (every segment planned or loaded from the cache).

    Returns:
        The model, the compression table and one log row per planned network.
    """
    torch.manual_seed(cfg.seed)
    model = build_model(
        cfg.model,
        in_channels,
        classes,
        width=cfg.width,
        fc_dim=cfg.fc_dim,
        dropout=cfg.dropout,
        batch_norm=cfg.batch_norm,
    )
    rules = {name: _with_cache(spec, cfg) for name, spec in cfg.compress.items()}
    report = compress(model, rules)
    log = []
    for name, mod in model.named_modules():
        if isinstance(mod, _TNLayer):
            for row in mod.generator.plan_report():
                log.append({"layer": name, **row})
    return model, report, log


def _with_cache(spec: str | dict, cfg: TrainConfig) -> dict[str, Any]:
    from adntn.compress import parse_spec

    opts = parse_spec(spec)
    if cfg.cache is not None:
        opts["cache"] = cfg.cache
    if cfg.cache_only:
        opts["cache_only"] = True
    return opts


def _atomic_save(obj: Any, path: Path) -> None:
    _atomic(path, lambda tmp: torch.save(obj, tmp))


def _atomic_write(text: str, path: Path) -> None:
    _atomic(path, lambda tmp: tmp.write_text(text))


def _atomic(path: Path, write: Any) -> None:
    """Write ``path`` through a temporary file, so a failure leaves the previous version whole.

    Raises:
        AdntnError: On a failed write (a full disk): one line, the temporary file removed.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
        tmp.unlink(missing_ok=True)
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise AdntnError(
            f"cannot write {path} ({reason}; a full disk?); the previous version is intact, so after "
            "freeing space --resume continues the run"
        ) from None


def _lock(out: Path) -> Any:
    """An exclusive lock on the run directory for this process's lifetime in it (None where the
    platform has no flock): two trainings into one directory would interleave their files.

    Raises:
        AdntnError: If another process holds it.
    """
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    fd = None
    try:
        fd = os.open(out, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except OSError as exc:
        if fd is not None:
            os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise AdntnError(f"another training is writing to {out}; wait for it or choose another --out") from None
        # A file system without flock (some network mounts): train, as before the lock existed.
        warnings.warn(f"cannot lock {out} ({exc.strerror}); training without the lock", stacklevel=3)
        return None


def make_optimizer(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int) -> tuple[Any, Any]:
    """SGD (momentum, weight decay) under a one-cycle schedule peaking at ``cfg.lr`` over the whole run."""
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    return opt, sched


def update(model: nn.Module, opt: Any, sched: Any, cfg: TrainConfig) -> None:
    """The step after ``backward``: clip the gradients' global norm (``cfg.clip_grad``), step, advance the schedule."""
    if cfg.clip_grad is not None:
        nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
    opt.step()
    sched.step()


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the ``n`` training examples in ``epoch``: it depends only on the seed and the epoch."""
    # Modulo 2**63 (a generator's seed is a signed 64-bit integer): equal to the plain sum for every seed
    # below ~9e13, so no such run's order changes.
    return torch.randperm(n, generator=torch.Generator().manual_seed((seed * 100_003 + epoch) % 2**63))


def _dist(device: str) -> tuple[int, int]:
    """(rank, world size); joins the process group when launched by ``torchrun``."""
    dist = torch.distributed
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if str(device).startswith("cuda") else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def _sum_across(values: list[float], world: int) -> list[float]:
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return t.tolist()


def autocast(amp: str | None, device: str | torch.device) -> Any:
    """The autocast context of one forward pass for ``TrainConfig.amp`` (a no-op for float32)."""
    kind = torch.device(device).type
    return torch.autocast(device_type=kind, dtype=torch.bfloat16, enabled=amp == "bf16")


@torch.no_grad()
def evaluate(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 512, amp: str | None = None
) -> float:
    """Top-1 accuracy in percent (forward passes under ``amp``, as in training)."""
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch):
        with autocast(amp, images.device):
            out = model(images[start : start + batch])
        correct += int((out.argmax(1) == labels[start : start + batch]).sum())
    return 100.0 * correct / max(1, len(labels))


def train(
    cfg: TrainConfig, out: str | Path, *, resume: bool = False, progress: bool = True, stop_after: int | None = None
) -> dict[str, Any]:
    """Train ``cfg`` into run directory ``out``; returns the summary.

    Args:
        cfg: The configuration.
        out: The run directory.
        resume: Continue from ``out``'s checkpoint (same configuration required).
        progress: Show the plan log, a progress bar and per-epoch lines.
        stop_after: Stop (checkpointed, resumable) after this many epochs in this call, e.g. to fit
            a time-limited job; ``summary.json`` then describes the epochs done so far.

    Raises:
        AdntnError: If ``out`` holds another run's files and ``resume`` is off, on bad config or
            ``stop_after``, on a device this machine lacks, or on an unreadable checkpoint.
    """
    if stop_after is not None and (not isinstance(stop_after, int) or stop_after < 1):
        raise AdntnError(f"stop_after must be a positive number of epochs, got {stop_after!r}")
    _check_device(cfg.device)
    out = Path(out)
    rank, world = _dist(cfg.device)
    torch.set_num_threads(cfg.threads)
    start_time = time.perf_counter()
    ckpt_path = out / CHECKPOINT
    if not (resume and ckpt_path.exists()):
        _check_free(out, resume)
    device = torch.device(cfg.device)
    state = None
    if resume and ckpt_path.exists():
        # Before the data and the model: a wrong checkpoint is refused before minutes of planning.
        state = _load_checkpoint(ckpt_path, device)
        _check_resumable(state["config"], cfg, ckpt_path)
    _barrier(world)  # every rank checks the directory before rank 0 writes to it
    lock = None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        lock = _lock(out)
        try:
            if state is None:  # again: a run may have ended between the check above and the lock
                _check_free(out, resume)
        except AdntnError:
            if lock is not None:
                os.close(lock)
            raise
    try:
        return _train(cfg, out, state, rank, world, device, start_time, progress, stop_after)
    finally:
        if lock is not None:
            os.close(lock)


def _check_free(out: Path, resume: bool) -> None:
    """Refuse to start a fresh run in ``out`` where it would overwrite files: another run's history, or
    someone's own.

    Raises:
        AdntnError: Saying why and what to do.
    """
    if not resume and out.exists() and any(out.iterdir()):
        raise AdntnError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if resume and not _fresh(out):
        raise AdntnError(f"{out} holds run files but no {CHECKPOINT} to resume from; choose another --out")


def _fresh(out: Path) -> bool:
    """Whether ``out`` holds nothing a fresh start would lose: no run files, or only those a run killed
    in its first epoch leaves (its config and an empty ``metrics.jsonl``)."""
    if (out / "summary.json").exists():
        return False
    try:
        if (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().strip():
            return False
        if (out / "config.json").exists():
            config = json.loads((out / "config.json").read_text())
            return isinstance(config, dict) and set(config) <= {f.name for f in fields(TrainConfig)}
    except (OSError, ValueError):
        return False
    return True


def _auto_modes(model: nn.Module) -> dict[str, Any]:
    """What every ``mode="auto"`` layer picks per batch size: decided from this machine's timings, so a
    resume elsewhere must take them from the checkpoint to compute the same numbers."""
    return {name: m.auto_modes for name, m in model.named_modules() if isinstance(m, TNLinear) and m.mode == "auto"}


def _restore_auto_modes(model: nn.Module, saved: dict[str, Any]) -> None:
    """Give the checkpoint's picks back to the layers that made them (checkpoints before them have none)."""
    for name, m in model.named_modules():
        picks = saved.get(name)
        if not (isinstance(m, TNLinear) and m.mode == "auto" and isinstance(picks, dict)):
            continue
        # Picks of another decision grid (another adntn version) are left: this layer's own decide.
        if all((b, r) in picks.get(kind, {}) for kind in ("cpu", "cuda") for b in DECISION_ROWS for r in REGIMES):
            m.auto_modes = picks


def _check_resumable(saved: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    """Refuse a resume whose configuration computes something else than the checkpoint's.

    Raises:
        AdntnError: Naming the differing settings.
    """
    now = asdict(cfg)
    if saved.get("threads", now["threads"]) != now["threads"]:
        warnings.warn(
            f"resuming with threads {now['threads']} (the run so far used {saved['threads']}): sums split "
            "differently round differently, so the run will not match an uninterrupted one bit for bit",
            stacklevel=2,
        )
    differ = sorted(k for k in set(saved) | set(now) if k not in RUNTIME_KEYS and saved.get(k) != now.get(k))
    if differ:
        shown = ", ".join(f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in differ[:4])
        raise AdntnError(
            f"{path} was written by a different configuration ({shown}); resume with the same one "
            f"(only {', '.join(sorted(RUNTIME_KEYS))} may change)"
        )


def _train(
    cfg: TrainConfig,
    out: Path,
    state: dict[str, Any] | None,
    rank: int,
    world: int,
    device: torch.device,
    start_time: float,
    progress: bool,
    stop_after: int | None,
) -> dict[str, Any]:
    ckpt_path = out / CHECKPOINT

    train_split = load_dataset(cfg.dataset, "train", cfg.data_dir)
    test_split = load_dataset(cfg.dataset, "test", cfg.data_dir)
    x_train, y_train = pad_to(train_split.images), train_split.labels
    if cfg.train_limit:
        x_train, y_train = x_train[: cfg.train_limit], y_train[: cfg.train_limit]
    x_test, y_test = pad_to(test_split.images), test_split.labels
    if len(y_train) == 0 or len(y_test) == 0:
        empty = "training" if len(y_train) == 0 else "test"
        raise AdntnError(f"the {empty} set of {cfg.dataset} is empty; check --data-dir and train_limit")
    x_train, y_train, x_test, y_test = (t.to(device) for t in (x_train, y_train, x_test, y_test))

    t0 = time.perf_counter()
    model, report, plan_log = build(cfg, x_train.shape[1], train_split.classes)
    build_time = time.perf_counter() - t0
    model.to(device)
    searches = sum(r["cache"] == "miss" for r in plan_log)
    if rank == 0 and progress:
        for r in plan_log:
            print(f"plan {r['layer']:>8} {r['network']:<28} tensors={r['tensors']:<3} cache={r['cache']}")
        print(f"planned networks: {len(plan_log)}, searches: {searches}, build {build_time:.2f} s")
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model)

    if cfg.batch_size > len(y_train) and rank == 0:
        warnings.warn(
            f"batch_size {cfg.batch_size} exceeds the {len(y_train)} training images: every epoch is one step "
            f"of {len(y_train)}",
            stacklevel=2,
        )
    steps_per_epoch = math.ceil(len(y_train) / cfg.batch_size)
    opt, sched = make_optimizer(model, cfg, steps_per_epoch)
    metrics: list[dict[str, Any]] = []
    first_epoch = 0
    # What the calls before this one spent, so that a resumed run's summary covers the whole run.
    earlier_wall, earlier_searches = 0.0, 0
    if state is not None:
        # Popped: the caller's reference to the checkpoint must not keep a second copy of the weights.
        model.load_state_dict(state.pop("model"))
        _restore_auto_modes(model, state.get("auto_modes", {}))
        opt.load_state_dict(state.pop("optimizer"))
        sched.load_state_dict(state.pop("scheduler"))
        metrics = state["metrics"]
        first_epoch = state["epoch"] + 1
        # Checkpoints written before these totals were kept count from this call on.
        earlier_wall, earlier_searches = state.get("wall_time_s", 0.0), state.get("plan_searches", 0)
        torch.set_rng_state(state["rng"].cpu())  # map_location put it on the GPU; the CPU generator's state
    if rank == 0:
        # metrics.jsonl always equals the checkpointed history: nothing lost, nothing repeated.
        _atomic_write("".join(json.dumps(m) + "\n" for m in metrics), out / "metrics.jsonl")
        _atomic_write(json.dumps(asdict(cfg), indent=2), out / "config.json")

    loss_fn = nn.CrossEntropyLoss()
    last = cfg.epochs if stop_after is None else min(cfg.epochs, first_epoch + stop_after)
    for epoch in range(first_epoch, last):
        torch.manual_seed(cfg.seed * 1_000_003 + epoch * 7919 + rank)  # dropout stream per epoch and rank
        order = epoch_order(len(y_train), cfg.seed, epoch).to(device)
        net.train()
        seen, t_epoch = 0, time.perf_counter()
        # Running sums stay on the device; reading them back every step would stall a GPU.
        correct_t = torch.zeros((), dtype=torch.int64, device=device)
        loss_t = torch.zeros((), dtype=torch.float64, device=device)
        bar = _progress(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", progress and rank == 0)
        for step in range(steps_per_epoch):
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            idx = idx[rank::world]  # each rank its share of the global batch
            xb, yb = x_train[idx], y_train[idx]
            opt.zero_grad(set_to_none=True)
            with autocast(cfg.amp, device):
                logits = net(xb)
                loss = loss_fn(logits, yb)
            loss.backward()
            update(model, opt, sched, cfg)
            # The cast weights are stale now; the cache outlives this step's region when a caller's own
            # autocast region encloses train().
            torch.clear_autocast_cache()
            seen += len(yb)
            correct_t += (logits.argmax(1) == yb).sum()
            loss_t += loss.detach().double() * len(yb)
            if bar is not None:
                if step % 10 == 9 or step == steps_per_epoch - 1:
                    rate = seen * world / (time.perf_counter() - t_epoch)
                    loss_now, acc_now = float(loss_t) / seen, 100 * int(correct_t) / seen
                    bar.set_postfix(loss=f"{loss_now:.3f}", acc=f"{acc_now:.1f}", img_s=f"{rate:.0f}")
                bar.update()
        if bar is not None:
            bar.close()
        seen, correct, loss_sum = _sum_across([seen, int(correct_t), float(loss_t)], world)
        test_acc = evaluate(model, x_test, y_test, amp=cfg.amp)
        row = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(seen, 1),
            "train_acc": 100.0 * correct / max(seen, 1),
            "test_acc": test_acc,
            "epoch_time_s": time.perf_counter() - t_epoch,
        }
        metrics.append(row)
        if rank == 0:
            state = {
                "epoch": epoch,
                "config": asdict(cfg),
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "metrics": metrics,
                "rng": torch.get_rng_state(),
                "wall_time_s": earlier_wall + time.perf_counter() - start_time,
                "plan_searches": earlier_searches + searches,
                "auto_modes": _auto_modes(model),
            }
            _atomic_save(state, ckpt_path)
            with open(out / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
            # After every epoch, so that a run stopped any way (a killed job too) reports what it did.
            wall = earlier_wall + time.perf_counter() - start_time
            summary = _summary(cfg, model, report, plan_log, earlier_searches + searches, metrics, wall, world)
            _atomic_write(json.dumps(summary, indent=2), out / "summary.json")
            if progress:
                print(
                    f"epoch {epoch + 1}: loss {row['train_loss']:.4f} "
                    f"train {row['train_acc']:.2f}% test {test_acc:.2f}%"
                )

    wall = earlier_wall + time.perf_counter() - start_time
    summary = _summary(cfg, model, report, plan_log, earlier_searches + searches, metrics, wall, world)
    if rank == 0:
        _atomic_write(json.dumps(summary, indent=2), out / "summary.json")
    _barrier(world)
    return summary


def _check_device(device: str) -> None:
    """Refuse a CUDA device this machine lacks with a clear error (torch fails with an AssertionError)."""
    try:
        kind = torch.device(device)
    except RuntimeError:
        raise AdntnError(f"device must be cpu, cuda or cuda:N, got {device!r}") from None
    if kind.type != "cuda":
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise AdntnError(f"device {device!r} needs CUDA, which this machine (or this torch build) lacks; use cpu")
    if kind.index is not None and kind.index >= count:
        raise AdntnError(f"device {device!r} does not exist; this machine has {count} CUDA device(s)")


def _check_checksums(path: Path) -> None:
    """Raise :class:`zipfile.BadZipFile` if a member of the checkpoint's archive fails its CRC-32 check.

    ``torch.load`` checks no CRCs: flipped bytes inside a tensor would resume as wrong weights.
    """
    with open(path, "rb") as fh:
        # torch.load's own test for its zip format: the legacy format has no checksums to check.
        if fh.read(4) != b"PK\x03\x04":
            return
    # Every member is read once more before torch.load does: for a checkpoint of some GB a few seconds,
    # once per resume, small next to hours of training resumed from silently wrong weights. Reading
    # through ZipFile.open checks each member's CRC-32 at its end.
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.CRC == 0 and info.file_size:
                continue  # saved with torch.serialization.set_crc32_options(False): no checksum to check
            with archive.open(info) as member:
                while member.read(1 << 24):
                    pass


def _load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    try:
        _check_checksums(path)
        state = torch.load(path, map_location=device, weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        # Saves are atomic, so a killed job leaves the previous whole checkpoint: this file was damaged
        # some other way (a full disk, a partial copy, flipped bits). zipfile reports a damaged member name
        # as a UnicodeDecodeError (a ValueError). torch's messages can run to several lines.
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise AdntnError(
            f"cannot read checkpoint {path} to resume, it is damaged or truncated ({reason}); "
            "start a new run in another --out"
        ) from None
    if not isinstance(state, dict) or not {"epoch", "config", "model", "optimizer", "scheduler"} <= state.keys():
        raise AdntnError(f"{path} is not an adntn checkpoint; start a new run in another --out")
    return state


def layer_rows(model: nn.Module, report: CompressionReport) -> list[dict[str, Any]]:
    """One row per Linear/Conv2d child: the compression table's row, or a dense row (ratio 1)."""
    by_name = {r["layer"]: r for r in report.rows}
    rows = []
    for name, mod in model.named_children():
        if name in by_name:
            rows.append({**by_name[name], "params": mod.num_parameters()})
        elif isinstance(mod, (nn.Linear, nn.Conv2d)):
            n = mod.weight.numel()
            rows.append(
                {"layer": name, "kind": type(mod).__name__, "arch": "dense", "dense_params": n,
                 "generator_params": n, "compression": 1.0, "fit_error": None,
                 "params": sum(p.numel() for p in mod.parameters())}
            )  # fmt: skip
    return rows


def _summary(
    cfg: TrainConfig,
    model: nn.Module,
    report: CompressionReport,
    plan_log: list[dict],
    searches: int,
    metrics: list[dict],
    wall: float,
    world: int,
) -> dict[str, Any]:
    layers = layer_rows(model, report)
    return {
        "config": asdict(cfg),
        "layers": layers,
        "total_params": sum(p.numel() for p in model.parameters()),
        "test_acc": metrics[-1]["test_acc"] if metrics else None,
        "best_test_acc": max((m["test_acc"] for m in metrics), default=None),
        "epochs_done": len(metrics),
        "wall_time_s": wall,
        "world_size": world,
        "planned_networks": len(plan_log),
        "plan_searches": searches,
        "plan_cache": plan_log,
    }


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
