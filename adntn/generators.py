"""The architectures: TTN, augmented TTN (aTTN) and MERA weight generators.

The default activation is ``tanh``. With ReLU or GELU every child tensor is mostly positive, so the
generated weight is dominated by the product of the children's means: a near-constant, low-rank
matrix that maps every input to almost the same output. An AlexNet on the digits with ReLU
generators in fc6/fc7 stays at chance for 60 Adam steps while the same model with tanh generators
reaches a loss of 0.05 (measured when this default was chosen); ReLU remains available.

Each builder describes its architecture as a :class:`~adntn.graph.Graph`; :class:`Generator` plans
and runs it. ``docs/generators.md`` gives the forward contraction and the adjoints of each.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

from adntn import activations
from adntn.errors import AdntnError
from adntn.generator import Generator
from adntn.graph import Core, Graph, Node
from adntn.tensorize import Tensorization, tensorize

PerLevel = activations.Activation | Sequence[activations.Activation]
DISENTANGLE_LEGS = ("out", "in", "both")
MIN_LEGS = 4


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AdntnError(f"{name} must be a positive integer, got {value!r}")
    return value


class _Builder:
    """Fresh labels, cores and nodes for one graph."""

    def __init__(self, t: Tensorization) -> None:
        self.t = t
        self.sizes = dict(t.leg_sizes)
        self.cores: dict[str, Core] = {}
        self.nodes: list[Node] = []
        # Size-1 legs (from factors of 1) carry nothing; leaving them out keeps every step's einsum
        # within its 52 letters however many leaves there are.
        self.out_legs = tuple(x for x in t.out_legs if self.sizes[x] > 1)
        self.in_legs = tuple(x for x in t.in_legs if self.sizes[x] > 1)
        self.current = {leg: f"{leg}.0" for leg in (*self.out_legs, *self.in_legs)}
        self._count = itertools.count()
        for leg in self.current:
            self.sizes[self.current[leg]] = self.sizes[leg]

    def label(self, size: int, stem: str = "b") -> str:
        name = f"{stem}{next(self._count)}"
        self.sizes[name] = size
        return name

    def core(self, name: str, labels: tuple[str, ...], role: str) -> str:
        self.cores[name] = Core(name, labels, role)
        return name

    def legs(self, legs: tuple[str, ...]) -> list[str]:
        """The legs that carry something (size > 1)."""
        return [x for x in legs if x in self.current]

    def disentangle(self, a: str, b: str, where: str) -> str | None:
        """A 2-in/2-out core on physical legs ``a`` and ``b``; they get fresh labels after it."""
        if a not in self.current or b not in self.current:
            return None
        la, lb = self.current[a], self.current[b]
        na, nb = self.label(self.sizes[a], f"{a}."), self.label(self.sizes[b], f"{b}.")
        self.current[a], self.current[b] = na, nb
        return self.core(f"dis.{where}.{a}{b}", (la, lb, na, nb), "disentangler")

    def lateral(self, bonds: list[str], where: str) -> tuple[list[str], list[str]]:
        """Brick pattern of 2-in/2-out mixers on adjacent bonds; returns the new bonds and the cores."""
        bonds = list(bonds)
        made = []
        for start in (0, 1):
            for j in range(start, len(bonds) - 1, 2):
                a, b = bonds[j], bonds[j + 1]
                na, nb = self.label(self.sizes[a]), self.label(self.sizes[b])
                made.append(self.core(f"lat.{where}.{j}", (a, b, na, nb), "lateral"))
                bonds[j], bonds[j + 1] = na, nb
        return bonds, made

    def finish(self) -> Graph:
        """Rename each physical leg's last label to the leg itself (the weight's legs)."""
        final = {v: k for k, v in self.current.items()}

        def ren(labels: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(final.get(x, x) for x in labels)

        cores = {n: Core(c.name, ren(c.labels), c.role) for n, c in self.cores.items()}
        nodes = [Node(n.name, n.operands, ren(n.labels), n.activation, n.level) for n in self.nodes]
        graph = Graph(cores, nodes, self.sizes, self.out_legs, self.in_legs)
        graph.check()
        return graph


def _split(items: list[int], parts: int) -> list[list[int]]:
    parts = min(parts, len(items))
    base, extra = divmod(len(items), parts)
    out, start = [], 0
    for p in range(parts):
        stop = start + base + (1 if p < extra else 0)
        out.append(items[start:stop])
        start = stop
    return out


def _per_level(activation: PerLevel, levels: int, what: str) -> list[str | Callable]:
    """One checked activation per level ``1..levels``."""
    if isinstance(activation, (list, tuple)):
        if len(activation) != levels:
            # Too many is an error too: the extra ones would be dropped without a word.
            raise AdntnError(f"{what} needs an activation for each of its {levels} levels, got {len(activation)}")
        return [activations.check(a) for a in activation]
    return [activations.check(activation)] * levels


def ttn_graph(
    t: Tensorization,
    bond_dim: int,
    *,
    arity: int = 2,
    activation: PerLevel = "tanh",
    root_activation: activations.Activation = "identity",
    lateral: bool = False,
    disentangle: Sequence[int | str] = (),
    disentangle_legs: str = "out",
) -> Graph:
    """A balanced tree over the leaves; see :class:`TTNGenerator` and :class:`ATTNGenerator`."""
    _positive("bond_dim", bond_dim)
    if _positive("arity", arity) < 2:
        raise AdntnError(f"arity must be at least 2, got {arity}")
    if disentangle_legs not in DISENTANGLE_LEGS:
        raise AdntnError(f"disentangle_legs must be one of {', '.join(DISENTANGLE_LEGS)}, got {disentangle_legs!r}")
    leaves = t.leaves
    if len(leaves) < 2:
        raise AdntnError("a tree needs at least 2 leaves; use n_factors >= 2 (or grouping='single')")
    root_act = activations.check(root_activation)
    bld = _Builder(t)

    # Heights first, so per-level options can be validated before building.
    def height(ids: list[int]) -> int:
        return 0 if len(ids) == 1 else 1 + max(height(g) for g in _split(ids, arity))

    top = height(list(range(len(leaves))))
    acts = _per_level(activation, max(top - 1, 0), "activation")
    levels = set()
    for d in disentangle:
        if d == "root":
            levels.add(top)
        elif isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= top:
            levels.add(d)
        else:
            raise AdntnError(f"disentangle levels must be 'root' or heights 1..{top}, got {d!r}")

    def build(ids: list[int]) -> tuple[str, list[str], str | None]:
        if len(ids) == 1:
            k = ids[0]
            b = bld.label(bond_dim)
            legs = bld.legs(leaves[k])
            name = bld.core(f"leaf{k}", (*(bld.current[x] for x in legs), b), "leaf")
            return name, list(leaves[k]), b
        kids = [build(g) for g in _split(ids, arity)]
        h = height(ids)
        is_root = len(ids) == len(leaves)
        where = f"{h}.{ids[0]}"
        operands = [k[0] for k in kids]
        bonds = [k[2] for k in kids]
        if lateral:
            bonds, made = bld.lateral(bonds, where)
            operands += made
        if h in levels:
            for (_, left, _), (_, right, _) in itertools.pairwise(kids):
                a_leaf = next(lf for lf in leaves if left[-1] in lf)
                b_leaf = next(lf for lf in leaves if right[0] in lf)
                pairs = _boundary_legs(a_leaf, b_leaf, disentangle_legs)
                operands += [d for a, b in pairs if (d := bld.disentangle(a, b, where))]
        phys = [x for k in kids for x in k[1]]
        if is_root:
            operands.append(bld.core("root", tuple(bonds), "root"))
            labels = tuple(bld.current[x] for x in (*bld.out_legs, *bld.in_legs))
            bld.nodes.append(Node("W", tuple(operands), labels, root_act, h))
            return "W", phys, None
        bv = bld.label(bond_dim)
        operands.append(bld.core(f"node{where}", (*bonds, bv), "node"))
        name = f"n{where}"
        # Output legs before input legs (each in leaf order): the root then meets (O, I) blocks that
        # fuse into four axes, so building W ends in a cheap 4-d transpose.
        ordered = [x for x in phys if x in bld.out_legs] + [x for x in phys if x in bld.in_legs]
        labels = (*(bld.current[x] for x in ordered), bv)
        bld.nodes.append(Node(name, tuple(operands), labels, acts[h - 1], h))
        return name, phys, bv

    build(list(range(len(leaves))))
    return bld.finish()


def _boundary_legs(a_leaf: tuple[str, ...], b_leaf: tuple[str, ...], which: str) -> list[tuple[str, str]]:
    if len(a_leaf) == 1:  # single-leg leaves: the two legs that meet at the boundary
        return [(a_leaf[0], b_leaf[0])]
    pairs = []
    if which in ("out", "both"):
        pairs.append((a_leaf[0], b_leaf[0]))
    if which in ("in", "both"):
        pairs.append((a_leaf[1], b_leaf[1]))
    return pairs


def mera_graph(
    t: Tensorization,
    bond_dim: int,
    *,
    activation: PerLevel = "tanh",
    activation_every: int = 1,
    lateral: bool = False,
) -> Graph:
    """A binary MERA read top-down; see :class:`MERAGenerator`."""
    _positive("bond_dim", bond_dim)
    every = _positive("activation_every", activation_every)
    leaves = t.leaves
    n = len(leaves)
    if n < 2 or n & (n - 1):
        raise AdntnError(
            f"a binary MERA needs a power-of-two number of leaves, got {n}; set n_factors (or out_factors/in_factors)"
        )
    layers = n.bit_length() - 2  # 2 legs at the top, doubled by each layer
    acts = _per_level(activation, layers, "activation")
    bld = _Builder(t)
    state = [bld.label(bond_dim, "t"), bld.label(bond_dim, "t")]
    prev = bld.core("top", tuple(state), "top")
    for layer in range(1, layers + 1):
        operands = [prev]
        new: list[str] = []
        for j, a in enumerate(state):
            pair = [bld.label(bond_dim), bld.label(bond_dim)]
            operands.append(bld.core(f"iso{layer}.{j}", (a, *pair), "isometry"))
            if lateral:
                pair, made = bld.lateral(pair, f"{layer}.{j}")
                operands += made
            new += pair
        for j in range(1, len(new) - 2, 2):
            na, nb = bld.label(bond_dim), bld.label(bond_dim)
            operands.append(bld.core(f"dis{layer}.{j}", (new[j], new[j + 1], na, nb), "disentangler"))
            new[j], new[j + 1] = na, nb
        act = acts[layer - 1] if layer % every == 0 else "identity"
        name = f"layer{layer}"
        bld.nodes.append(Node(name, tuple(operands), tuple(new), act, layer))
        state, prev = new, name
    operands = [prev]
    for k, legs in enumerate(leaves):
        operands.append(bld.core(f"leaf{k}", (state[k], *(bld.current[x] for x in bld.legs(legs))), "leaf"))
    labels = tuple(bld.current[x] for x in (*bld.out_legs, *bld.in_legs))
    bld.nodes.append(Node("W", tuple(operands), labels, "identity", layers + 1))
    return bld.finish()


class _Configured(Generator):
    """A generator that remembers its configuration for ``repr`` and copies."""

    config: dict[str, Any]

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={activations.name(v) if callable(v) else v}" for k, v in self.config.items())
        return f"{self.out_features}x{self.in_features}, {opts}, params={self.num_parameters()}"


def _tensorization(
    out_features: int, in_features: int, tens: dict[str, Any], *, power_of_two: bool = False
) -> Tensorization:
    _positive("out_features", out_features)
    _positive("in_features", in_features)
    if all(tens.get(k) is None for k in ("n_factors", "out_factors", "in_factors")):
        # At least 4 legs per dimension, so even a small layer gets a nonlinear level.
        k = max(MIN_LEGS, len(tensorize(out_features, in_features).out_factors))
        if power_of_two and k & (k - 1):  # the MERA doubles its legs per layer: take the nearest power of two
            k = 1 << round(math.log2(k))
        tens = {**tens, "n_factors": k}
    return tensorize(out_features, in_features, **tens)


class TTNGenerator(_Configured):
    """A nonlinear tree tensor network generator.

    Leaf ``k`` maps its physical legs to a bond of size ``bond_dim``; each internal node contracts
    its children with its core over their bonds and applies the activation of its level; the root
    (linear by default, so the last segment can stream the input) yields ``W``.

    Args:
        out_features: Rows of ``W``.
        in_features: Columns of ``W`` (for a conv kernel: ``in_channels * kh * kw``).
        bond_dim: Bond size ``χ``.
        arity: Children per node.
        activation: One activation for every level below the root, or one per level (bottom first).
        root_activation: Activation after the root (``"identity"`` keeps streaming possible).
        lateral: Add 2-in/2-out mixers on adjacent sibling bonds before each parent core.
        n_factors: Legs per dimension (the number of leaves with ``grouping="pair"``).
        out_factors: Explicit output factors (product >= ``out_features``).
        in_factors: Explicit input factors.
        grouping: ``"pair"`` (one output and one input leg per leaf) or ``"single"``.
        fan_in: Fan-in for the init scale (default ``in_features``).
        cache: Plan cache for the segment plans.
        cache_only: Refuse to search: every plan must come from the cache.
        executor: ``"auto"``, ``"torch"`` or ``"numba"``; see :class:`~adntn.generator.Generator`.
    """

    def __init__(
        self,
        out_features: int,
        in_features: int,
        *,
        bond_dim: int = 8,
        arity: int = 2,
        activation: PerLevel = "tanh",
        root_activation: activations.Activation = "identity",
        lateral: bool = False,
        n_factors: int | None = None,
        out_factors: Sequence[int] | None = None,
        in_factors: Sequence[int] | None = None,
        grouping: str = "pair",
        fan_in: int | None = None,
        cache: Any = True,
        cache_only: bool = False,
        executor: str = "auto",
        **extra: Any,
    ) -> None:
        tens = {"n_factors": n_factors, "out_factors": out_factors, "in_factors": in_factors, "grouping": grouping}
        t = _tensorization(out_features, in_features, tens)
        graph = ttn_graph(
            t, bond_dim, arity=arity, activation=activation, root_activation=root_activation, lateral=lateral, **extra
        )
        super().__init__(
            graph, out_features, in_features, fan_in=fan_in, cache=cache, cache_only=cache_only, executor=executor
        )
        self.tensorization = t
        self.config = {
            "bond_dim": bond_dim,
            "arity": arity,
            "activation": activation,
            "factors": (t.out_factors, t.in_factors),
        }
        if lateral:
            self.config["lateral"] = True
        self.config.update(extra)


class ATTNGenerator(TTNGenerator):
    """A TTN plus boundary disentanglers: 2-in/2-out cores on the physical legs either side of each
    boundary between neighbouring subtrees, contracted in the segment of the node they straddle.

    That segment becomes a loopy network whose order tnplan plans.

    Args:
        disentangle: Levels whose nodes get disentanglers: ``"root"`` and/or tree heights.
        disentangle_legs: Which legs of the two boundary leaves are coupled: ``"out"``, ``"in"``
            or ``"both"`` (one disentangler each).
        **kwargs: As for :class:`TTNGenerator`.
    """

    def __init__(
        self,
        out_features: int,
        in_features: int,
        *,
        disentangle: Sequence[int | str] = ("root",),
        disentangle_legs: str = "out",
        **kwargs: Any,
    ) -> None:
        if not disentangle:
            raise AdntnError("an aTTN needs at least one disentangled level, e.g. disentangle=('root',)")
        super().__init__(
            out_features, in_features, disentangle=tuple(disentangle), disentangle_legs=disentangle_legs, **kwargs
        )


class MERAGenerator(_Configured):
    """A nonlinear binary MERA generator, read top-down.

    A top tensor with two bonds; then per layer an isometry on every leg (one leg -> two) and
    disentanglers on the adjacent pairs straddling isometry blocks (the two boundary legs pass);
    the activation after every ``activation_every``-th layer; finally leaf cores map each bond to
    its physical legs (a linear last segment, so the input can stream).

    Args:
        out_features: Rows of ``W``.
        in_features: Columns of ``W``.
        bond_dim: Bond size ``χ``.
        activation: One activation for every layer, or one per layer (top first).
        activation_every: Apply it only after every k-th layer; the layers between merge into one
            loopy segment.
        lateral: Add a 2-in/2-out mixer on the two outputs of each isometry.
        n_factors: Legs per dimension (a power of two with ``grouping="pair"``; chosen so by default).
        out_factors: Explicit output factors.
        in_factors: Explicit input factors.
        grouping: ``"pair"`` or ``"single"``.
        fan_in: Fan-in for the init scale.
        cache: Plan cache for the segment plans.
        cache_only: Refuse to search.
        executor: ``"auto"``, ``"torch"`` or ``"numba"``; see :class:`~adntn.generator.Generator`.
    """

    def __init__(
        self,
        out_features: int,
        in_features: int,
        *,
        bond_dim: int = 4,
        activation: PerLevel = "tanh",
        activation_every: int = 1,
        lateral: bool = False,
        n_factors: int | None = None,
        out_factors: Sequence[int] | None = None,
        in_factors: Sequence[int] | None = None,
        grouping: str = "pair",
        fan_in: int | None = None,
        cache: Any = True,
        cache_only: bool = False,
        executor: str = "auto",
    ) -> None:
        tens = {"n_factors": n_factors, "out_factors": out_factors, "in_factors": in_factors, "grouping": grouping}
        t = _tensorization(out_features, in_features, tens, power_of_two=True)
        graph = mera_graph(t, bond_dim, activation=activation, activation_every=activation_every, lateral=lateral)
        super().__init__(
            graph, out_features, in_features, fan_in=fan_in, cache=cache, cache_only=cache_only, executor=executor
        )
        self.tensorization = t
        self.config = {"bond_dim": bond_dim, "activation": activation, "factors": (t.out_factors, t.in_factors)}
        if activation_every != 1:
            self.config["activation_every"] = activation_every
        if lateral:
            self.config["lateral"] = True


ARCHITECTURES: dict[str, type[Generator]] = {"ttn": TTNGenerator, "attn": ATTNGenerator, "mera": MERAGenerator}


def generator_options(arch: str) -> set[str]:
    """The keyword options the ``arch`` generator's constructors declare (empty for an unknown ``arch``)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names: set[str] = set()
    for klass in getattr(ARCHITECTURES.get(arch), "__mro__", ()):
        init = vars(klass).get("__init__")
        if init is not None and issubclass(klass, Generator):
            names |= {p.name for p in inspect.signature(init).parameters.values() if p.kind in kinds}
    return names - {"self", "graph", "out_features", "in_features"}


def make_generator(arch: str, out_features: int, in_features: int, **kwargs: Any) -> Generator:
    """The generator for ``arch`` (``"ttn"``, ``"attn"`` or ``"mera"``)."""
    if arch not in ARCHITECTURES:
        raise AdntnError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    try:
        return ARCHITECTURES[arch](out_features, in_features, **kwargs)
    except TypeError as exc:
        raise AdntnError(f"{arch}: {exc}") from None
