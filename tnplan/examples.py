"""Deterministic generators of standard benchmark tensor networks.

Every generator returns a :class:`~tnplan.network.Network` whose tensor order and labels depend only on
its arguments (random graphs take an explicit ``seed``; no global random state is touched), so two
calls with the same arguments give equal networks. :data:`FAMILIES` names the instances the planner
benchmark runs.

Label conventions: :func:`random_regular` uses integer labels (one per graph edge); the others use
short strings -- ``"p3"`` for the physical leg of site 3, ``"b7"`` / ``"h2_1"`` / ``"v2_1"`` for
internal bonds, and a trailing ``"*"`` for a bond of the mirrored (bra) copy in a closed network.

Examples:
    >>> mera(8, 2).num_tensors, mera(8, 2).output[:3]
    (11, ('p0', 'p1', 'p2'))
    >>> sorted(FAMILIES)[:2]
    ['lattice_4x4_b2', 'lattice_5x5_b2']
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import networkx as nx

from tnplan.errors import NetworkError
from tnplan.network import Label, Network

__all__ = ["FAMILIES", "lattice_2d", "mera", "random_regular", "scrambled", "ttn"]


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise NetworkError(f"{name} must be an integer >= 1, got {value!r}")


def _check_power_of_two(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or value & (value - 1):
        raise NetworkError(f"{name} must be a power of two >= {minimum}, got {value!r}")


def _build(
    inputs: Sequence[Sequence[Label]], output: Sequence[Label], size_dict: Mapping[str, int] | Mapping[int, int]
) -> Network:
    sizes: dict[Label, int] = dict(size_dict.items())
    return Network.from_opt_einsum(inputs, output, sizes)


def _physical(sites: int) -> list[str]:
    return [f"p{i}" for i in range(sites)]


def _with_mirror(
    inputs: list[tuple[str, ...]], physical: list[str], size_dict: dict[str, int], closed: bool
) -> Network:
    """The open network (physical legs as output), or its norm with a mirrored copy when ``closed``.

    The mirror has the same tensors in the same order, every non-physical label suffixed with ``"*"``.
    """
    if not closed:
        return _build(inputs, physical, size_dict)
    phys = set(physical)

    def conj(label: str) -> str:
        return label if label in phys else label + "*"

    bra = [tuple(conj(lab) for lab in term) for term in inputs]
    sizes = dict(size_dict)
    sizes.update({conj(lab): size for lab, size in size_dict.items()})
    return _build(inputs + bra, (), sizes)


def random_regular(n: int, degree: int = 3, bond: int = 2, seed: int = 0) -> Network:
    """A closed network on a random ``degree``-regular graph: one tensor per node, one index per edge.

    The graph is ``networkx.random_regular_graph(degree, n, seed=seed)``. Edges ``(u, v)`` with
    ``u < v`` are sorted and labelled ``0, 1, ...`` in that order; tensor ``i`` is node ``i`` and
    carries the labels of its edges in increasing order. There are ``n`` tensors and
    ``n * degree / 2`` indices, all of size ``bond``, and no output.

    Args:
        n: Number of nodes (tensors); ``n * degree`` must be even and ``degree < n``.
        degree: Degree of every node (rank of every tensor).
        bond: Size of every index.
        seed: Seed of the graph generator.

    Raises:
        NetworkError: If no such regular graph exists or an argument is out of range.

    Examples:
        >>> net = random_regular(10, 3)
        >>> net.num_tensors, net.num_indices, net.output
        (10, 15, ())
    """
    _check_positive("n", n)
    _check_positive("degree", degree)
    _check_positive("bond", bond)
    if degree >= n or (n * degree) % 2:
        raise NetworkError(f"no {degree}-regular graph on {n} nodes; need degree < n and n * degree even")
    graph = nx.random_regular_graph(degree, n, seed=seed)
    edges = sorted((min(u, v), max(u, v)) for u, v in graph.edges())
    incident: list[list[int]] = [[] for _ in range(n)]
    for label, (u, v) in enumerate(edges):
        incident[u].append(label)
        incident[v].append(label)
    size_dict = dict.fromkeys(range(len(edges)), bond)
    return _build([sorted(t) for t in incident], (), size_dict)


def ttn(sites: int, bond: int, *, phys: int = 2, closed: bool = False) -> Network:
    """A binary tree tensor network (TTN) over ``sites`` physical legs.

    The leaf layer has ``sites / 2`` tensors ``(p_{2i}, p_{2i+1}, b)`` joining two physical legs into
    one bond; each higher layer joins pairs of bonds ``(b_left, b_right, b_up)`` until a single root
    ``(b_left, b_right)`` remains (for ``sites == 2`` the one leaf is the root and has no bond).
    Tensors are ordered layer by layer from the leaves up, left to right.

    Counts: the open TTN has ``sites - 1`` tensors and ``2 * sites - 2`` indices, the ``sites``
    physical legs being the output in site order. The closed TTN (the norm ``<psi|psi>``, the tree
    and its mirror joined on the physical legs) has ``2 * sites - 2`` tensors, ``3 * sites - 4``
    indices and no output.

    Args:
        sites: Number of physical legs, a power of two >= 2.
        bond: Size of every internal bond.
        phys: Size of every physical leg.
        closed: Return the norm network instead of the open state.

    Raises:
        NetworkError: If ``sites`` is not a power of two >= 2 or a size is < 1.

    Examples:
        >>> net = ttn(4, 3)
        >>> net.inputs
        (('p0', 'p1', 'b0'), ('p2', 'p3', 'b1'), ('b0', 'b1'))
    """
    _check_power_of_two("sites", sites, 2)
    _check_positive("bond", bond)
    _check_positive("phys", phys)
    physical = _physical(sites)
    size_dict = dict.fromkeys(physical, phys)
    inputs: list[tuple[str, ...]] = []
    counter = 0

    def new_bond() -> str:
        nonlocal counter
        label = f"b{counter}"
        counter += 1
        size_dict[label] = bond
        return label

    legs = physical
    while len(legs) > 2:
        upper = []
        for left, right in zip(legs[::2], legs[1::2], strict=True):
            up = new_bond()
            inputs.append((left, right, up))
            upper.append(up)
        legs = upper
    inputs.append(tuple(legs))
    return _with_mirror(inputs, physical, size_dict, closed)


def mera(sites: int, bond: int, *, phys: int | None = None, closed: bool = False) -> Network:
    """A binary one-dimensional MERA with open boundary over ``sites`` physical legs.

    Each layer acts on the ``n`` legs of the level below it (``n = sites`` at the bottom): first
    ``n / 2 - 1`` disentanglers ``(in_left, in_right, out_left, out_right)`` on the adjacent pairs
    ``(1, 2), (3, 4), ..., (n - 3, n - 2)`` straddling the isometry blocks (the two boundary legs
    pass through), then ``n / 2`` isometries ``(in_left, in_right, out)`` on the pairs
    ``(0, 1), (2, 3), ...``, halving the number of legs. Layers repeat until two legs are left, which
    a top tensor closes. Disentanglers keep the size of their legs (``phys`` at the bottom level,
    ``bond`` above); every isometry output and the top tensor's legs have size ``bond``. Tensors are
    ordered layer by layer from the bottom, each layer's disentanglers then isometries left to right.

    Every disentangler shares both of its outputs with two different isometries that meet again
    higher up, so the network is loopy (not a tree), unlike :func:`ttn`.

    Counts, with ``L = log2(sites)``: the open MERA has ``sites - 2`` isometries,
    ``sites - L - 1`` disentanglers and the top, ``2 * sites - L - 2`` tensors in all, and
    ``4 * sites - 2 * L - 4`` indices, the ``sites`` physical legs being the output in site order. The
    closed MERA (the norm: the network and its mirrored copy joined on the physical legs) has
    ``4 * sites - 2 * L - 4`` tensors, ``7 * sites - 4 * L - 8`` indices and no output:

    ====== ============== ============== ================ ================
    sites  open tensors   open indices   closed tensors   closed indices
    ====== ============== ============== ================ ================
    4      4              8              8                12
    8      11             22             22               36
    16     26             52             52               88
    32     57             114            114              196
    64     120            240            240              416
    ====== ============== ============== ================ ================

    Args:
        sites: Number of physical legs, a power of two >= 4.
        bond: Size of the bonds above the bottom level.
        phys: Size of the physical legs (and of the bottom disentanglers' outputs); defaults to ``bond``.
        closed: Return the norm network instead of the open state.

    Raises:
        NetworkError: If ``sites`` is not a power of two >= 4 or a size is < 1.

    Examples:
        >>> net = mera(4, 2)
        >>> net.inputs
        (('p1', 'p2', 'b0', 'b1'), ('p0', 'b0', 'b2'), ('b1', 'p3', 'b3'), ('b2', 'b3'))
    """
    _check_power_of_two("sites", sites, 4)
    _check_positive("bond", bond)
    phys = bond if phys is None else phys
    _check_positive("phys", phys)
    physical = _physical(sites)
    size_dict = dict.fromkeys(physical, phys)
    inputs: list[tuple[str, ...]] = []
    counter = 0

    def new_bond(size: int) -> str:
        nonlocal counter
        label = f"b{counter}"
        counter += 1
        size_dict[label] = size
        return label

    legs = list(physical)
    while len(legs) > 2:
        for i in range(1, len(legs) - 1, 2):
            size = size_dict[legs[i]]
            out = (new_bond(size), new_bond(size))
            inputs.append((legs[i], legs[i + 1], *out))
            legs[i], legs[i + 1] = out
        upper = []
        for left, right in zip(legs[::2], legs[1::2], strict=True):
            up = new_bond(bond)
            inputs.append((left, right, up))
            upper.append(up)
        legs = upper
    inputs.append(tuple(legs))
    return _with_mirror(inputs, physical, size_dict, closed)


def lattice_2d(rows: int, cols: int, bond: int = 2, *, open_legs: bool = False, phys: int = 2) -> Network:
    """A PEPS-like ``rows x cols`` grid: one tensor per site, nearest-neighbour bonds, open boundary.

    Site ``(r, c)`` is tensor ``r * cols + c`` (row-major). The bond to the right neighbour is
    ``"h{r}_{c}"`` and to the neighbour below ``"v{r}_{c}"``; each tensor lists its bonds in the order
    up, left, right, down (those that exist), then its physical leg ``"p{r * cols + c}"`` when
    ``open_legs``. There are ``rows * cols`` tensors and ``rows * (cols - 1) + cols * (rows - 1)``
    bonds; with ``open_legs`` the ``rows * cols`` physical legs are the output, otherwise the network is
    closed.

    Args:
        rows: Number of rows.
        cols: Number of columns.
        bond: Size of every bond.
        open_legs: Give every site a physical output leg.
        phys: Size of the physical legs (used only with ``open_legs``).

    Raises:
        NetworkError: If an argument is < 1.

    Examples:
        >>> net = lattice_2d(2, 2)
        >>> net.inputs
        (('h0_0', 'v0_0'), ('h0_0', 'v0_1'), ('v0_0', 'h1_0'), ('v0_1', 'h1_0'))
    """
    for name, value in (("rows", rows), ("cols", cols), ("bond", bond), ("phys", phys)):
        _check_positive(name, value)
    size_dict: dict[str, int] = {}
    inputs: list[tuple[str, ...]] = []
    output: list[str] = []
    for r in range(rows):
        for c in range(cols):
            term = []
            if r > 0:
                term.append(f"v{r - 1}_{c}")
            if c > 0:
                term.append(f"h{r}_{c - 1}")
            if c < cols - 1:
                term.append(f"h{r}_{c}")
            if r < rows - 1:
                term.append(f"v{r}_{c}")
            size_dict.update(dict.fromkeys(term, bond))
            if open_legs:
                leg = f"p{r * cols + c}"
                term.append(leg)
                size_dict[leg] = phys
                output.append(leg)
            inputs.append(tuple(term))
    return _build(inputs, output, size_dict)


def scrambled(network: Network, seed: int = 0) -> Network:
    """The same network with its tensors shuffled, indices shuffled within tensors and all renamed.

    The plan cache must treat it as ``network`` (same key, plan mapped back); tests and the cache
    benchmark use it as "another caller's presentation".
    """
    rng = random.Random(seed)
    order = list(range(network.num_tensors))
    rng.shuffle(order)
    names = list(range(network.num_indices))
    rng.shuffle(names)
    new = {lab: f"i{names[k]}" for k, lab in enumerate(network.labels)}
    inputs = []
    for t in order:
        term = list(network.inputs[t])
        rng.shuffle(term)
        inputs.append(tuple(new[x] for x in term))
    sizes = {new[k]: v for k, v in network.size_dict.items()}
    return Network(tuple(inputs), tuple(new[x] for x in network.output), sizes)


def _families() -> dict[str, Callable[[], Network]]:
    # Open networks output the dense state (phys ** sites entries), so they stop at 2 ** 32 outputs.
    fams: dict[str, Callable[[], Network]] = {}
    for n in (20, 26, 40, 60, 200):
        fams[f"rr3_n{n}_b2_s0"] = partial(random_regular, n, 3, 2, 0)
    ttns = (
        ("open", 8, 2), ("open", 16, 4), ("open", 32, 8),
        ("closed", 8, 2), ("closed", 16, 4), ("closed", 32, 8), ("closed", 64, 4), ("closed", 64, 8),
    )  # fmt: skip
    for kind, sites, bond in ttns:
        fams[f"ttn_{kind}_{sites}_b{bond}"] = partial(ttn, sites, bond, closed=kind == "closed")
    meras = (
        ("open", 8, 4), ("open", 16, 2), ("open", 32, 2),
        ("closed", 8, 2), ("closed", 16, 4), ("closed", 16, 8), ("closed", 32, 4), ("closed", 64, 2),
    )  # fmt: skip
    for kind, sites, bond in meras:
        fams[f"mera_{kind}_{sites}_b{bond}"] = partial(mera, sites, bond, closed=kind == "closed")
    for side in (4, 5, 6, 8):
        fams[f"lattice_{side}x{side}_b2"] = partial(lattice_2d, side, side, 2)
    return fams


FAMILIES: dict[str, Callable[[], Network]] = _families()
"""Benchmark instances by name, each a zero-argument callable building its network.

Random 3-regular graphs (``rr3_n{n}_b2_s0``, 20 to 200 nodes, seed 0), binary TTNs
(``ttn_{open,closed}_{sites}_b{bond}``, physical size 2) and binary MERAs
(``mera_{open,closed}_{sites}_b{bond}``, physical size = bond), 8 to 64 sites with bonds 2 to 8, and
closed square lattices (``lattice_{L}x{L}_b2``, 4x4 to 8x8). Open TTNs and MERAs output the dense
state, ``phys ** sites`` entries, so they go up to 32 sites only (at most ``2 ** 32`` outputs); the
64-site ones are closed (norm) networks.
"""
