"""Data sets for the training workflow: IDX (MNIST, Fashion-MNIST), CIFAR-10 pickles, 8x8 digits.

Every loader returns a :class:`Split` of float images ``(N, C, H, W)`` scaled to ``[0, 1]`` and int64
labels. Files are looked up in the directory given, then in the system location (the Debian package
``dataset-fashion-mnist`` installs ``/usr/share/datasets/fashion-mnist/``), then downloaded from the
data set's official source when the machine is online; otherwise the error says how to get them.
"""

from __future__ import annotations

import builtins
import codecs
import functools
import gzip
import math
import os
import pickle
import struct
import tarfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from adntn.errors import AdntnError

DATASETS = ("digits", "fashion-mnist", "mnist", "cifar10")
SYSTEM_DIRS = {
    "fashion-mnist": Path("/usr/share/datasets/fashion-mnist"),
    "mnist": Path("/usr/share/datasets/mnist"),
    "cifar10": Path("/usr/share/datasets/cifar10"),
}
SOURCES = {
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
}
HOW_TO_GET = {
    "fashion-mnist": (
        "install it with `apt-get install dataset-fashion-mnist` or put the four *-idx?-ubyte(.gz) files in DIR"
    ),
    "mnist": "put the four MNIST *-idx?-ubyte(.gz) files (train-images-idx3-ubyte, ...) in DIR",
    "cifar10": "unpack cifar-10-python.tar.gz so that DIR/cifar-10-batches-py/data_batch_1 exists",
}
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_TYPES = {0x08: np.uint8}


@dataclass(frozen=True)
class Split:
    """One split of a data set.

    Attributes:
        images: ``(N, C, H, W)`` float32 in ``[0, 1]``.
        labels: ``(N,)`` int64.
        classes: Number of classes.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: int

    def __len__(self) -> int:
        return len(self.labels)


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into an array.

    Raises:
        AdntnError: If the file is not a well-formed unsigned-byte IDX file.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as exc:  # zlib.error: damaged compressed data inside a .gz
        raise AdntnError(f"cannot read IDX file {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise AdntnError(f"{path} is not an IDX file (bad magic number)")
    kind, ndim = raw[2], raw[3]
    if kind not in _IDX_TYPES:
        raise AdntnError(f"{path}: IDX element type 0x{kind:02x} is not supported (only unsigned bytes)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise AdntnError(f"{path} is truncated inside its header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    # Python ints: np.prod wraps around int64, and a damaged header then "promises" 0 bytes.
    expected = math.prod(dims)
    if len(raw) - header != expected:
        raise AdntnError(
            f"{path} holds {len(raw) - header} data bytes but its header promises {expected} for shape {dims}; "
            "the file is damaged or truncated, download it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _idx_names(stem: str) -> tuple[str, ...]:
    """The names an IDX file goes by, in the order they are looked for."""
    dotted = stem.replace("-idx", ".idx")
    return (stem, stem + ".gz", dotted, dotted + ".gz")


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in _idx_names(stem):
        if (directory / name).is_file():
            return directory / name
    return None


def load_idx_split(directory: str | Path, split: str) -> Split:
    """A train or test split from the four IDX files in ``directory``.

    Raises:
        AdntnError: On missing, corrupt or mismatched files.
    """
    directory = Path(directory)
    img_stem, lab_stem = IDX_FILES[split]
    img_path, lab_path = _find_idx(directory, img_stem), _find_idx(directory, lab_stem)
    if img_path is None or lab_path is None:
        missing = img_stem if img_path is None else lab_stem
        raise AdntnError(f"{directory} has no {missing}(.gz)")
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or labels.ndim != 1:
        raise AdntnError(f"{img_path} must hold (N, H, W) images and {lab_path} (N,) labels")
    if len(images) != len(labels):
        raise AdntnError(f"{img_path} has {len(images)} images but {lab_path} has {len(labels)} labels")
    _check_labels(labels, 10, lab_path)
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return Split(x, torch.from_numpy(labels.astype(np.int64)), 10)


def _check_labels(labels: np.ndarray, classes: int, path: Path) -> None:
    # A label out of range would fail deep inside the loss (or index out of bounds on a GPU).
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise AdntnError(
            f"{path}: labels must lie in 0..{classes - 1}, got values from {labels.min()} to {labels.max()}"
        )


def _cifar_batches(directory: Path, split: str) -> list[Path]:
    """The batch files of ``split`` under ``directory`` (or its ``cifar-10-batches-py``), present or not."""
    root = directory / "cifar-10-batches-py" if (directory / "cifar-10-batches-py").is_dir() else directory
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    return [root / name for name in names]


def _cifar_entry(batch: Any, key: str) -> Any:
    if not isinstance(batch, dict):
        raise TypeError(f"expected a dict of data and labels, got a {type(batch).__name__}")
    # The original batches, read with encoding="bytes", have bytes keys; batches re-pickled under
    # Python 3 have str keys.
    return batch[key.encode()] if key.encode() in batch else batch[key]


_CIFAR_FIX = "replace it with the file from a fresh cifar-10-python.tar.gz"
_NUMPY_PICKLE_MODULES = frozenset(
    {"numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric"}
)
_BUILTIN_PICKLE_MODULES = frozenset({"builtins", "__builtin__"})  # __builtin__: batches pickled by Python 2
_BUILTIN_PICKLE_NAMES = frozenset({"bytearray", "bytes", "dict", "float", "int", "list", "str", "tuple"})


@functools.cache
def _numpy_pickle_globals() -> dict[str, Any]:
    """The installed numpy's array-rebuilding functions, by the names pickles give them.

    Asked of numpy itself: numpy 1 keeps them in ``numpy.core``, numpy 2 in ``numpy._core``, and a batch
    pickled under one must load under the other.
    """
    array = np.zeros(1, np.uint8)
    return {
        "_reconstruct": array.__reduce__()[0],
        "_frombuffer": array.__reduce_ex__(5)[0],
        "scalar": np.uint8(0).__reduce__()[0],
        "ndarray": np.ndarray,
        "dtype": np.dtype,
    }


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR-10 batches hold: numpy arrays and scalars, builtin containers, bytes, str.

    A pickle can name any callable, so a plain ``pickle.load`` of a downloaded or copied file could run code.
    """

    def __init__(self, fh: BinaryIO, path: Path) -> None:
        super().__init__(fh, encoding="bytes")  # the original batches are Python 2 str: keep them bytes
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if module in _NUMPY_PICKLE_MODULES and name in _numpy_pickle_globals():
            return _numpy_pickle_globals()[name]
        if module in _BUILTIN_PICKLE_MODULES and name in _BUILTIN_PICKLE_NAMES:
            return getattr(builtins, name)
        if (module, name) == ("_codecs", "encode"):  # how protocols 0-2 store bytes
            return codecs.encode
        raise AdntnError(
            f"{self._path} is not a CIFAR-10 batch: it asks for {module}.{name}, which CIFAR-10 batches never "
            f"use and which was not loaded, as it could run code; {_CIFAR_FIX}"
        )


def load_cifar10_split(directory: str | Path, split: str) -> Split:
    """A CIFAR-10 split from the python pickle batches (``cifar-10-batches-py``).

    Batches are unpickled allowing only numpy arrays and builtin containers, as a pickle can run code.

    Raises:
        AdntnError: On missing or malformed batches, or one that names anything else.
    """
    xs, ys = [], []
    for path in _cifar_batches(Path(directory), split):
        if not path.is_file():
            raise AdntnError(f"{path.parent} has no CIFAR-10 batch {path.name}")
        try:
            with open(path, "rb") as fh:
                batch = _CifarUnpickler(fh, path).load()
            data = np.asarray(_cifar_entry(batch, "data"))
            raw_labels = np.asarray(_cifar_entry(batch, "labels"))
        except AdntnError:
            raise
        except OSError as exc:
            raise AdntnError(f"cannot read CIFAR-10 batch {path}: {exc}") from None
        except Exception as exc:
            # Damaged bytes make unpickling fail with almost any exception (pickle's documentation says
            # as much; fuzzing found AttributeError, LookupError, MemoryError among others).
            raise AdntnError(f"{path} is not a CIFAR-10 batch ({exc!r}); {_CIFAR_FIX}") from None
        if data.ndim != 2 or data.shape[1] != 3072 or raw_labels.ndim != 1 or len(data) != len(raw_labels):
            raise AdntnError(f"{path}: expected (N, 3072) data and N labels, got {data.shape} and {raw_labels.shape}")
        # Casting straight to int64 would truncate 3.7 to 3 without a word.
        if raw_labels.size and (
            raw_labels.dtype.kind not in "iuf" or not np.array_equal(raw_labels, np.round(raw_labels))
        ):
            raise AdntnError(f"{path}: CIFAR-10 labels are whole numbers in 0..9, got {raw_labels.dtype} values")
        labels = raw_labels.astype(np.int64)
        # Casting straight to uint8 would wrap 300 to 44 and truncate 0.5 to 0 without a word.
        if data.dtype.kind not in "iuf":
            raise AdntnError(f"{path}: CIFAR-10 pixels are whole numbers in 0..255, got {data.dtype} data")
        if data.size and (data.min() < 0 or data.max() > 255 or not np.array_equal(data, np.round(data))):
            raise AdntnError(
                f"{path}: CIFAR-10 pixels are whole numbers in 0..255, got {data.dtype} values "
                f"from {data.min()} to {data.max()}"
            )
        _check_labels(raw_labels, 10, path)
        xs.append(data.astype(np.uint8).reshape(-1, 3, 32, 32))
        ys.append(labels)
    x = torch.from_numpy(np.concatenate(xs).astype(np.float32) / 255.0)
    return Split(x, torch.from_numpy(np.concatenate(ys)), 10)


def load_digits_split(split: str, *, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """scikit-learn's bundled 8x8 digits (1,797 images), split deterministically."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = round(len(y) * (1 - test_fraction))
    idx = order[:cut] if split == "train" else order[cut:]
    return Split(x[idx], y[idx], 10)


def _download(name: str, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    if name == "cifar10":
        archive = target / "cifar-10-python.tar.gz"
        _fetch(SOURCES[name], archive)
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
        return
    for stems in IDX_FILES.values():
        for stem in stems:
            _fetch(SOURCES[name] + stem + ".gz", target / (stem + ".gz"))
            # An uncompressed copy (or one under the other naming) would be read first: the fresh
            # download replaces it, as a damaged one would otherwise fail on every run.
            for other in _idx_names(stem):
                if other != stem + ".gz":
                    (target / other).unlink(missing_ok=True)


def _fetch(url: str, path: Path) -> None:
    """Download ``url`` to ``path`` through a temporary name: an interrupted download leaves no damaged file."""
    part = path.with_name(path.name + ".part")
    urllib.request.urlretrieve(url, part)
    os.replace(part, path)


def _has_files(name: str, directory: Path, split: str) -> bool:
    """Whether every file of ``split`` of ``name`` exists in ``directory`` (whatever their contents)."""
    if name == "cifar10":
        return all(p.is_file() for p in _cifar_batches(directory, split))
    return all(_find_idx(directory, stem) is not None for stem in IDX_FILES[split])


def load_dataset(name: str, split: str, root: str | Path | None = None, *, download: bool = True) -> Split:
    """One split (``"train"`` / ``"test"``) of ``name`` (see :data:`DATASETS`).

    Args:
        name: The data set.
        split: ``"train"`` or ``"test"``.
        root: Directory holding the files; default: the system location, then
            ``$ADNTN_DATA/<name>`` (``~/.cache/adntn/data/<name>``) where downloads go.
        download: Try the official source when the files are nowhere (needs the network).

    Raises:
        AdntnError: On an unknown name or split, when the files cannot be found or fetched (the
            message says how to get them), or when the files found are damaged.
    """
    if name not in DATASETS:
        raise AdntnError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise AdntnError(f"split must be 'train' or 'test', got {split!r}")
    if name == "digits":
        if root is not None:  # else the run would train on the embedded set while the user meant files
            raise AdntnError(f"digits is embedded in scikit-learn and reads no files; drop the data directory {root}")
        return load_digits_split(split)
    load = load_cifar10_split if name == "cifar10" else load_idx_split
    if root is not None:
        if not Path(root).is_dir():
            what = "is a file, not a directory" if Path(root).exists() else "does not exist"
            raise AdntnError(f"data directory {root} {what}; {HOW_TO_GET[name].replace('DIR', str(root))}")
        return load(root, split)
    cache = Path(os.environ.get("ADNTN_DATA") or Path.home() / ".cache" / "adntn" / "data").expanduser() / name
    damaged: AdntnError | None = None
    for candidate in (SYSTEM_DIRS[name], cache):
        # Incomplete or damaged: try the next place, then a fresh download (which replaces a damaged
        # cached copy). If nothing serves, a damaged copy's error says which file is bad, which "not
        # found" would hide.
        if _has_files(name, candidate, split):
            try:
                return load(candidate, split)
            except AdntnError as exc:
                damaged = damaged or exc
    if download:
        try:
            _download(name, cache)
            return load(cache, split)
        except OSError as exc:
            reason = f"download from {SOURCES[name]} failed ({exc.__class__.__name__})"
    else:
        reason = "downloads are off"
    if damaged is not None:
        raise AdntnError(f"{damaged} ({reason})") from None
    how = HOW_TO_GET[name].replace("DIR", str(cache))
    raise AdntnError(f"{name} not found in {SYSTEM_DIRS[name]} or {cache} and {reason}; {how}")


def pad_to(images: torch.Tensor, size: int = 32) -> torch.Tensor:
    """Centre-pad images to ``size x size`` (28x28 -> 32x32); 8x8 digits are upsampled x4 first."""
    h, w = images.shape[-2:]
    if h * 4 <= size and w * 4 <= size:
        images = images.repeat_interleave(4, dim=-2).repeat_interleave(4, dim=-1)
        h, w = h * 4, w * 4
    if h > size or w > size:
        raise AdntnError(f"images of {h}x{w} do not fit in {size}x{size}")
    top, left = (size - h) // 2, (size - w) // 2
    return torch.nn.functional.pad(images, (left, size - w - left, top, size - h - top))
