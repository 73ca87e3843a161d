"""The tensor-network model: a hypergraph of tensors over sized index labels.

A :class:`Network` is an immutable value: an ordered list of tensors (each an ordered tuple of index
labels), the size of every index, and the ordered open (output) indices. An index may sit on any
number of tensors (hyperedges) and also be open. Internally every label is mapped to a dense integer
id in order of first appearance, which is what the cost model and the planners work on.
"""

from __future__ import annotations

import itertools
import json
import math
import numbers
import reprlib
import threading
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from tnplan.errors import NetworkError

Label = Hashable

FORMAT = "tnplan.network/1"


MAX_SIZE = 2**62  # one index's extent; past 2^63 the canonical keys' fixed-width integers overflow


def _check_size(label: Label, size: Any) -> int:
    bad = f"index {label!r} has size {reprlib.repr(size)}; sizes must be integers >= 1"
    if isinstance(size, bool) or not isinstance(size, numbers.Real):
        raise NetworkError(bad)
    if isinstance(size, numbers.Integral):
        value = int(size)
    else:
        real = float(size)
        if not math.isfinite(real) or not real.is_integer():
            raise NetworkError(bad)
        value = int(real)
    if value < 1:
        raise NetworkError(f"index {label!r} has size {size}; sizes must be >= 1")
    if value > MAX_SIZE:
        raise NetworkError(f"index {label!r} has size {value}; sizes above 2**62 are not supported")
    return value


def _as_tuple(value: Any, what: str) -> tuple:
    if not isinstance(value, Iterable):
        raise NetworkError(f"{what} must be a list, got {reprlib.repr(value)}")
    return tuple(value)


@dataclass(frozen=True, eq=False)
class Network:
    """A tensor network as a hypergraph.

    Args:
        inputs: One tuple of index labels per tensor, in tensor order.
        output: The open indices, in output order.
        size_dict: The size of every index.

    Raises:
        NetworkError: If the network is malformed; the message names the culprit.

    Examples:
        >>> net = Network.from_einsum("ab,bc->ac", (2, 3), (3, 4))
        >>> net.num_tensors, net.size_dict["b"]
        (2, 3)
    """

    inputs: tuple[tuple[Label, ...], ...]
    output: tuple[Label, ...]
    size_dict: Mapping[Label, int] = field(repr=False)

    def __post_init__(self) -> None:
        inputs = tuple(_as_tuple(t, f"tensor {k}'s indices") for k, t in enumerate(_as_tuple(self.inputs, "inputs")))
        output = _as_tuple(self.output, "output")
        if not isinstance(self.size_dict, Mapping):
            raise NetworkError(f"size_dict must be a mapping from index to size, got {type(self.size_dict).__name__}")
        if not inputs:
            raise NetworkError("the network has no tensors; give at least one input tensor")
        sizes: dict[Label, int] = {}
        for label, size in dict(self.size_dict).items():
            sizes[label] = _check_size(label, size)
        seen: set[Label] = set()
        for pos, term in enumerate(inputs):
            for label in term:
                try:
                    hash(label)
                except TypeError:
                    raise NetworkError(f"tensor {pos} has unhashable index label {label!r}") from None
                if label not in sizes:
                    hint = (
                        f" (size_dict has {str(label)!r}: JSON keys are strings, so write integer labels as strings)"
                        if not isinstance(label, str) and str(label) in sizes
                        else ""
                    )
                    raise NetworkError(f"index {label!r} on tensor {pos} has no size; add it to size_dict{hint}")
                seen.add(label)
        out_seen: set[Label] = set()
        for label in output:
            try:
                hash(label)
            except TypeError:
                raise NetworkError(f"output has unhashable index label {label!r}") from None
            if label in out_seen:
                raise NetworkError(f"output index {label!r} is repeated; each open index may appear once")
            out_seen.add(label)
            if label not in seen:
                raise NetworkError(f"output index {label!r} appears on no input tensor")
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "output", output)
        object.__setattr__(self, "size_dict", {lab: sizes[lab] for lab in self.labels})

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_einsum(cls, equation: str, *shapes: Sequence[int]) -> Network:
        """Build a network from an einsum equation and one shape per operand.

        Labels are any unicode letters. Without ``->`` the output follows numpy's implicit rule:
        the indices that appear exactly once, in sorted order.

        Args:
            equation: e.g. ``"ab,bc->ac"``; spaces are ignored.
            *shapes: one shape per operand (a single list of shapes is also accepted).

        Raises:
            NetworkError: On an unparseable equation, a rank mismatch or inconsistent sizes.
        """
        if (
            len(shapes) == 1
            and isinstance(shapes[0], list | tuple)
            and shapes[0]
            and all(isinstance(s, list | tuple) for s in shapes[0])
        ):
            shapes = tuple(shapes[0])  # type: ignore[assignment,arg-type]
        terms, output = parse_einsum(equation)
        if len(terms) != len(shapes):
            raise NetworkError(
                f"equation {equation!r} has {len(terms)} operand(s) but {len(shapes)} shape(s) were given"
            )
        size_dict: dict[Label, int] = {}
        for pos, (term, shape) in enumerate(zip(terms, shapes, strict=True)):
            if hasattr(shape, "shape") and hasattr(shape, "ndim"):  # opt_einsum's habit: arrays, not shapes
                raise NetworkError(f"operand {pos} is an array; from_einsum takes shapes, so pass its .shape")
            shape = _as_tuple(shape, f"shape of operand {pos}")
            if len(term) != len(shape):
                raise NetworkError(
                    f"operand {pos} of {equation!r} has {len(term)} index(es) {''.join(term)!r} "
                    f"but shape {shape} has rank {len(shape)}"
                )
            for label, size in zip(term, shape, strict=True):
                size = _check_size(label, size)
                if size_dict.setdefault(label, size) != size:
                    raise NetworkError(
                        f"index {label!r} has size {size_dict[label]} and {size} in {equation!r}; "
                        "one index must have one size"
                    )
        return cls(tuple(tuple(t) for t in terms), tuple(output), size_dict)

    @classmethod
    def from_opt_einsum(
        cls, inputs: Iterable[Iterable[Label]], output: Iterable[Label], size_dict: Mapping[Label, int]
    ) -> Network:
        """Build a network from opt_einsum / cotengra style ``(inputs, output, size_dict)``."""
        inputs = _as_tuple(inputs, "inputs")
        if not isinstance(size_dict, Mapping):
            raise NetworkError(f"size_dict must be a mapping from index to size, got {type(size_dict).__name__}")
        return cls(
            tuple(_as_tuple(t, f"tensor {k}'s indices") for k, t in enumerate(inputs)),
            _as_tuple(output, "output"),
            dict(size_dict),
        )

    @classmethod
    def from_json(cls, path: str | Path) -> Network:
        """Read a network from a JSON file.

        Three formats are understood: einsum-benchmark (``format_string`` + ``shapes``), cotengra
        (``inputs``/``output``/``size_dict``) and this package's own (written by :meth:`to_json`).

        Raises:
            NetworkError: If the file is missing, not JSON, or holds no valid network.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise NetworkError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise NetworkError(f"{path}: cannot read ({exc})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise NetworkError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        try:
            return cls.from_dict(data)
        except NetworkError as exc:
            raise NetworkError(f"{path}: {exc}") from None

    @classmethod
    def from_dict(cls, data: Any) -> Network:
        """Build a network from a decoded JSON object in any of the formats of :meth:`from_json`."""
        if not isinstance(data, dict):
            raise NetworkError("expected a JSON object describing a network")
        if data.get("format") == FORMAT:
            try:
                sizes = {_json_label(lab): size for lab, size in data["sizes"]}
                inputs = [[_json_label(x) for x in t] for t in data["inputs"]]
                output = [_json_label(x) for x in data["output"]]
            except (KeyError, TypeError, ValueError) as exc:
                raise NetworkError(f"malformed {FORMAT} object ({exc!r})") from None
            return cls.from_opt_einsum(inputs, output, sizes)
        if "format_string" in data:
            shapes = data.get("shapes")
            if not isinstance(shapes, list):
                raise NetworkError("einsum-benchmark object has 'format_string' but no 'shapes' list")
            return cls.from_einsum(str(data["format_string"]), *shapes)
        if "inputs" in data and "size_dict" in data:
            inputs, size_dict = data["inputs"], data["size_dict"]
            if not isinstance(inputs, list) or not isinstance(size_dict, dict):
                raise NetworkError("cotengra object needs 'inputs' as a list and 'size_dict' as an object")
            output = data.get("output", [])
            return cls.from_opt_einsum(inputs, output, size_dict)
        raise NetworkError(
            "unrecognised network JSON: expected 'format_string'+'shapes' (einsum-benchmark), "
            f"'inputs'+'output'+'size_dict' (cotengra) or format {FORMAT!r}"
        )

    def to_dict(self) -> dict[str, Any]:
        """This network as a JSON-ready object (labels must be str or int)."""
        for label in self.labels:
            if not isinstance(label, str | int) or isinstance(label, bool):
                raise NetworkError(f"index label {label!r} cannot be written to JSON; use str or int labels")
            if isinstance(label, str) and not label.isascii():
                try:
                    label.encode("utf-8")
                except UnicodeEncodeError:  # a lone surrogate, from a bad decode: no UTF-8 file holds it
                    raise NetworkError(f"index label {label!r} is not valid unicode; rename it") from None
        return {
            "format": FORMAT,
            "inputs": [list(t) for t in self.inputs],
            "output": list(self.output),
            "sizes": [[lab, self.size_dict[lab]] for lab in self.labels],
        }

    def to_json(self, path: str | Path | None = None) -> str:
        """Serialise to this package's JSON format; also write it to ``path`` when given."""
        text = json.dumps(self.to_dict(), ensure_ascii=False)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    # ------------------------------------------------------------------ derived views

    @cached_property
    def labels(self) -> tuple[Label, ...]:
        """Every index label, in order of first appearance (inputs first, then output)."""
        return tuple(dict.fromkeys(itertools.chain.from_iterable(self.inputs)))

    @cached_property
    def label_ids(self) -> dict[Label, int]:
        """Dense integer id of every label."""
        return dict(zip(self.labels, range(len(self.labels)), strict=True))

    @cached_property
    def int_inputs(self) -> tuple[tuple[int, ...], ...]:
        """Tensors with integer index ids, repeated indices within a tensor collapsed."""
        get = self.label_ids.__getitem__
        out = []
        for term in self.inputs:
            t = tuple(map(get, term))
            # Traces are rare: dedupe (keeping first appearances) only when a label repeats.
            out.append(t if len(set(t)) == len(t) else tuple(dict.fromkeys(t)))
        return tuple(out)

    @cached_property
    def int_output(self) -> frozenset[int]:
        """The open indices as integer ids."""
        ids = self.label_ids
        return frozenset(ids[lab] for lab in self.output)

    @cached_property
    def int_sizes(self) -> tuple[int, ...]:
        """Size of each integer index id."""
        # __post_init__ rebuilds size_dict in label order, so its values are already the id order.
        return tuple(self.size_dict.values())

    @property
    def num_tensors(self) -> int:
        return len(self.inputs)

    @property
    def num_indices(self) -> int:
        return len(self.labels)

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """The shape of every input tensor."""
        return tuple(tuple(self.size_dict[lab] for lab in term) for term in self.inputs)

    @cached_property
    def equation(self) -> str:
        """An einsum equation for this network, with labels mapped to letters when needed."""
        if all(isinstance(lab, str) and len(lab) == 1 and lab.isalpha() for lab in self.labels):
            symbols = {lab: str(lab) for lab in self.labels}
        else:
            symbols = {lab: _symbol(i) for i, lab in enumerate(self.labels)}
        terms = ",".join("".join(symbols[lab] for lab in t) for t in self.inputs)
        return terms + "->" + "".join(symbols[lab] for lab in self.output)

    def log2_input_size(self) -> float:
        """log2 of the largest input tensor."""
        return max(sum(math.log2(self.size_dict[lab]) for lab in set(t)) for t in self.inputs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Network):
            return NotImplemented
        return (self.inputs, self.output, dict(self.size_dict)) == (other.inputs, other.output, dict(other.size_dict))

    def __hash__(self) -> int:
        # Networks key the plan cache's in-process memo: hash once (the value is immutable).
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash((self.inputs, self.output, tuple(self.size_dict.items())))
            self.__dict__["_hash"] = h
        return h

    def __repr__(self) -> str:
        return f"Network(tensors={self.num_tensors}, indices={self.num_indices}, open={len(self.output)})"


_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _symbol(i: int) -> str:
    """The ``i``-th equation letter: ASCII, then letters from U+00C0 on (opt_einsum and cotengra read
    any letter; skipping the non-letters such as '×' shifts every later index, so no two share one)."""
    if i < len(_LETTERS):
        return _LETTERS[i]
    with _LETTERS_LOCK:  # two threads extending the table at once would append one letter twice
        while len(_LETTERS_PAST) <= i - len(_LETTERS):
            code = ord(_LETTERS_PAST[-1]) + 1 if _LETTERS_PAST else 0xC0
            while not chr(code).isalpha():
                code += 1
            _LETTERS_PAST.append(chr(code))
    return _LETTERS_PAST[i - len(_LETTERS)]


_LETTERS_PAST: list[str] = []
_LETTERS_LOCK = threading.Lock()


def _json_label(x: Any) -> Label:
    if isinstance(x, list):
        raise ValueError(f"index label {x!r} must be a string or integer")
    return x


def _valid_symbol(ch: str) -> bool:
    # einsum-benchmark uses digits, symbols such as '×' and even unassigned code points as labels,
    # so accept any character that is not part of the equation syntax.
    return not ch.isspace() and ch not in ",->."


def parse_einsum(equation: str) -> tuple[list[list[str]], list[str]]:
    """Split an einsum equation into operand terms and output (numpy's implicit rule without ``->``).

    Raises:
        NetworkError: If the equation is not of the form ``terms[->output]`` with letter labels.
    """
    if not isinstance(equation, str):
        raise NetworkError(f"einsum equation must be a string, got {type(equation).__name__}")
    eq = equation.replace(" ", "")
    if "..." in eq:
        raise NetworkError(f"equation {equation!r} uses '...'; name every index explicitly")
    if eq.count("->") > 1:
        raise NetworkError(f"equation {equation!r} has more than one '->'")
    lhs, arrow, rhs = eq.partition("->")
    if not lhs and not arrow:
        raise NetworkError(f"equation {equation!r} has no operands")
    terms = [list(term) for term in lhs.split(",")]  # "->": one scalar operand, as numpy reads it
    for term in terms:
        for ch in term:
            if not _valid_symbol(ch):
                raise NetworkError(
                    f"equation {equation!r} has invalid index character {ch!r}; use one non-space character per index"
                )
    for ch in rhs:
        if not _valid_symbol(ch):
            raise NetworkError(
                f"equation {equation!r} has invalid output character {ch!r}; use one non-space character per index"
            )
    if arrow:
        output = list(rhs)
    else:
        counts: dict[str, int] = {}
        for term in terms:
            for ch in term:
                counts[ch] = counts.get(ch, 0) + 1
        output = sorted(ch for ch, n in counts.items() if n == 1)
    return terms, output
