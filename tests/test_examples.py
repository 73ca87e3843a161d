"""Tests of the benchmark network generators in :mod:`tnplan.examples`."""

from __future__ import annotations

import math
from collections import Counter
from typing import cast

import networkx as nx
import pytest

from tnplan.errors import NetworkError
from tnplan.examples import FAMILIES, lattice_2d, mera, random_regular, ttn
from tnplan.network import Network


def occurrences(net: Network) -> Counter:
    """How many tensors carry each label."""
    return Counter(lab for term in net.inputs for lab in set(term))


def tensor_graph(net: Network) -> nx.MultiGraph:
    """Tensors as nodes, one edge per (index, pair of tensors sharing it)."""
    graph = nx.MultiGraph()
    graph.add_nodes_from(range(net.num_tensors))
    holders: dict = {}
    for pos, term in enumerate(net.inputs):
        for lab in set(term):
            holders.setdefault(lab, []).append(pos)
    for lab, tensors in holders.items():
        for i in range(len(tensors)):
            for j in range(i + 1, len(tensors)):
                graph.add_edge(tensors[i], tensors[j], key=lab)
    return graph


def assert_closed_pairs(net: Network) -> None:
    assert net.output == ()
    assert set(occurrences(net).values()) == {2}


def assert_open_physical(net: Network, sites: int, phys: int) -> None:
    physical = tuple(f"p{i}" for i in range(sites))
    assert net.output == physical
    counts = occurrences(net)
    for lab in net.labels:
        assert counts[lab] == (1 if lab in physical else 2), lab
    assert all(net.size_dict[p] == phys for p in physical)


def cycle_rank(net: Network) -> int:
    """Independent loops of the tensor graph: edges - nodes + components."""
    graph = tensor_graph(net)
    return graph.number_of_edges() - graph.number_of_nodes() + nx.number_connected_components(graph)


# ---------------------------------------------------------------------- random_regular


@pytest.mark.parametrize(("n", "degree"), [(10, 3), (20, 3), (12, 4), (8, 5)])
def test_random_regular_counts_and_degree(n: int, degree: int) -> None:
    net = random_regular(n, degree, bond=3, seed=1)
    assert net.num_tensors == n
    assert net.num_indices == n * degree // 2
    assert all(len(term) == degree for term in net.inputs)
    assert all(len(set(term)) == degree for term in net.inputs)
    assert all(size == 3 for size in net.size_dict.values())
    assert all(list(term) == sorted(cast(tuple[int, ...], term)) for term in net.inputs)
    assert_closed_pairs(net)


def test_random_regular_matches_networkx_graph() -> None:
    graph = nx.random_regular_graph(3, 20, seed=0)
    net = random_regular(20, 3, 2, seed=0)
    edges = sorted((min(u, v), max(u, v)) for u, v in graph.edges())
    assert set(net.labels) == set(range(len(edges)))
    for label, (u, v) in enumerate(edges):
        assert label in net.inputs[u]
        assert label in net.inputs[v]
    assert nx.is_isomorphic(nx.Graph(tensor_graph(net)), graph)


def test_random_regular_deterministic_and_seeded() -> None:
    assert random_regular(26, 3, 2, seed=0) == random_regular(26, 3, 2, seed=0)
    assert random_regular(26, 3, 2, seed=0) != random_regular(26, 3, 2, seed=1)


@pytest.mark.parametrize(("n", "degree"), [(5, 3), (3, 3), (0, 3)])
def test_random_regular_rejects_impossible(n: int, degree: int) -> None:
    with pytest.raises(NetworkError):
        random_regular(n, degree)


# ---------------------------------------------------------------------- ttn


def test_ttn_small_by_hand() -> None:
    net = ttn(4, 3)
    assert net.inputs == (("p0", "p1", "b0"), ("p2", "p3", "b1"), ("b0", "b1"))
    assert net.output == ("p0", "p1", "p2", "p3")
    assert net.size_dict == {"p0": 2, "p1": 2, "b0": 3, "p2": 2, "p3": 2, "b1": 3}
    assert ttn(2, 5).inputs == (("p0", "p1"),)


def test_ttn_closed_small_by_hand() -> None:
    net = ttn(4, 3, phys=5, closed=True)
    assert net.inputs == (
        ("p0", "p1", "b0"),
        ("p2", "p3", "b1"),
        ("b0", "b1"),
        ("p0", "p1", "b0*"),
        ("p2", "p3", "b1*"),
        ("b0*", "b1*"),
    )
    assert net.output == ()
    assert net.size_dict["p2"] == 5
    assert net.size_dict["b1*"] == 3


@pytest.mark.parametrize("sites", [2, 4, 8, 16, 64])
def test_ttn_counts(sites: int) -> None:
    open_net = ttn(sites, 4, phys=3)
    assert open_net.num_tensors == sites - 1
    assert open_net.num_indices == 2 * sites - 2
    assert_open_physical(open_net, sites, 3)
    assert cycle_rank(open_net) == 0  # a tree
    closed = ttn(sites, 4, phys=3, closed=True)
    assert closed.num_tensors == 2 * sites - 2
    assert closed.num_indices == 3 * sites - 4
    assert_closed_pairs(closed)
    assert nx.is_connected(tensor_graph(closed))


def test_ttn_ranks() -> None:
    net = ttn(16, 2)
    ranks = Counter(len(term) for term in net.inputs)
    assert ranks == {3: 14, 2: 1}


@pytest.mark.parametrize("sites", [0, 1, 3, 6, 12])
def test_ttn_rejects_bad_sites(sites: int) -> None:
    with pytest.raises(NetworkError, match="power of two"):
        ttn(sites, 2)


# ---------------------------------------------------------------------- mera


def test_mera_four_sites_by_hand() -> None:
    net = mera(4, 3, phys=2)
    assert net.inputs == (
        ("p1", "p2", "b0", "b1"),  # disentangler on the middle pair
        ("p0", "b0", "b2"),  # isometries
        ("b1", "p3", "b3"),
        ("b2", "b3"),  # top
    )
    assert net.output == ("p0", "p1", "p2", "p3")
    # the disentangler keeps its legs' size (physical at the bottom), isometries output `bond`
    assert net.size_dict == {"p1": 2, "p2": 2, "b0": 2, "b1": 2, "p0": 2, "b2": 3, "p3": 2, "b3": 3}


def test_mera_eight_sites_structure() -> None:
    net = mera(8, 2)
    ranks = [len(term) for term in net.inputs]
    # layer 1: 3 disentanglers, 4 isometries; layer 2: 1 disentangler, 2 isometries; top
    assert ranks == [4, 4, 4, 3, 3, 3, 3, 4, 3, 3, 2]
    assert net.num_tensors == 11
    # 8 physical + 6 + 4 (layer 1) + 2 + 2 (layer 2)
    assert net.num_indices == 22
    assert net.inputs[:3] == (("p1", "p2", "b0", "b1"), ("p3", "p4", "b2", "b3"), ("p5", "p6", "b4", "b5"))
    assert net.inputs[3] == ("p0", "b0", "b6")
    assert net.inputs[6] == ("b5", "p7", "b9")


@pytest.mark.parametrize("sites", [4, 8, 16, 32, 64])
def test_mera_counts_match_docstring(sites: int) -> None:
    levels = int(math.log2(sites))
    open_net = mera(sites, 2)
    assert open_net.num_tensors == 2 * sites - levels - 2
    assert open_net.num_indices == 4 * sites - 2 * levels - 4
    assert_open_physical(open_net, sites, 2)
    closed = mera(sites, 2, closed=True)
    assert closed.num_tensors == 2 * open_net.num_tensors
    assert closed.num_indices == 7 * sites - 4 * levels - 8
    assert_closed_pairs(closed)


def test_mera_32_closed_size() -> None:
    net = mera(32, 4, closed=True)
    assert 100 <= net.num_tensors <= 130
    assert net.num_tensors == 114


@pytest.mark.parametrize("sites", [4, 8, 16, 32])
@pytest.mark.parametrize("closed", [False, True])
def test_mera_is_loopy_and_connected(sites: int, closed: bool) -> None:
    net = mera(sites, 2, closed=closed)
    graph = tensor_graph(net)
    assert nx.is_connected(graph)
    internal = sum(1 for n in occurrences(net).values() if n == 2)
    assert internal > net.num_tensors - 1
    # the open MERA alone has one loop per disentangler
    dis = sum(1 for term in net.inputs if len(term) == 4)
    if not closed:
        assert cycle_rank(net) == dis
    assert cycle_rank(net) > 0


def test_mera_sizes() -> None:
    net = mera(8, 4, phys=2)
    assert all(net.size_dict[f"p{i}"] == 2 for i in range(8))
    # bottom disentanglers act on physical legs and keep their size
    for term in net.inputs[:3]:
        assert [net.size_dict[lab] for lab in term] == [2, 2, 2, 2]
    # everything above the bottom level has size `bond`
    for term in net.inputs[7:]:
        assert all(net.size_dict[lab] == 4 for lab in term)
    assert mera(8, 3).size_dict["p0"] == 3  # phys defaults to bond


def test_mera_closed_mirrors_open() -> None:
    open_net = mera(16, 2)
    closed = mera(16, 2, closed=True)
    n = open_net.num_tensors
    assert closed.inputs[:n] == open_net.inputs
    for ket, bra in zip(closed.inputs[:n], closed.inputs[n:], strict=True):
        assert bra == tuple(lab if str(lab).startswith("p") else f"{lab}*" for lab in ket)


@pytest.mark.parametrize("sites", [2, 6, 12])
def test_mera_rejects_bad_sites(sites: int) -> None:
    with pytest.raises(NetworkError, match="power of two"):
        mera(sites, 2)


# ---------------------------------------------------------------------- lattice_2d


def test_lattice_small_by_hand() -> None:
    net = lattice_2d(2, 2, 3)
    assert net.inputs == (("h0_0", "v0_0"), ("h0_0", "v0_1"), ("v0_0", "h1_0"), ("v0_1", "h1_0"))
    assert net.output == ()
    assert set(net.size_dict.values()) == {3}


@pytest.mark.parametrize(("rows", "cols"), [(1, 1), (1, 5), (3, 4), (6, 6)])
def test_lattice_counts(rows: int, cols: int) -> None:
    net = lattice_2d(rows, cols)
    assert net.num_tensors == rows * cols
    assert net.num_indices == rows * (cols - 1) + cols * (rows - 1)
    if net.num_indices:
        assert_closed_pairs(net)
    # interior sites have rank 4, corners rank 2
    if rows >= 3 and cols >= 3:
        assert len(net.inputs[cols + 1]) == 4
        assert len(net.inputs[0]) == 2


def test_lattice_open_legs() -> None:
    net = lattice_2d(3, 3, 2, open_legs=True, phys=5)
    assert_open_physical(net, 9, 5)
    assert net.num_indices == 12 + 9
    assert net.inputs[4] == ("v0_1", "h1_0", "h1_1", "v1_1", "p4")


# ---------------------------------------------------------------------- determinism and families


@pytest.mark.parametrize(
    "make",
    [
        lambda: random_regular(40, 3, 2, 0),
        lambda: ttn(16, 4, closed=True),
        lambda: mera(32, 4, closed=True),
        lambda: lattice_2d(4, 5, open_legs=True),
    ],
)
def test_deterministic(make) -> None:
    first, second = make(), make()
    assert first == second
    assert first.to_json() == second.to_json()


def test_families_names() -> None:
    names = set(FAMILIES)
    assert {f"rr3_n{n}_b2_s0" for n in (20, 26, 40, 60, 200)} <= names
    assert {"lattice_4x4_b2", "lattice_5x5_b2", "lattice_6x6_b2", "lattice_8x8_b2"} <= names
    assert "mera_closed_32_b4" in names
    ttns = [n for n in names if n.startswith("ttn_")]
    meras = [n for n in names if n.startswith("mera_")]
    assert 6 <= len(ttns) <= 10
    assert 6 <= len(meras) <= 10
    assert len(names) == 5 + len(ttns) + len(meras) + 4
    for group in (ttns, meras):
        sites = {int(n.split("_")[2]) for n in group}
        bonds = {int(n.split("_b")[1]) for n in group}
        kinds = {n.split("_")[1] for n in group}
        assert {8, 64} <= sites
        assert {2, 8} <= bonds
        assert kinds == {"open", "closed"}
    assert {16, 32} <= {int(n.split("_")[2]) for n in meras}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_builds_connected(name: str) -> None:
    net = FAMILIES[name]()
    assert isinstance(net, Network)
    assert nx.is_connected(tensor_graph(net))
    assert net == FAMILIES[name]()
    if name.startswith(("rr3_", "lattice_")) or "_closed_" in name:
        assert_closed_pairs(net)
    else:
        assert 0 < len(net.output) <= 32  # the dense output stays within 2**32 entries
        assert math.prod(net.size_dict[lab] for lab in net.output) <= 2**32
    if name.startswith("mera_"):
        assert cycle_rank(net) > 0
