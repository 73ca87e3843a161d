"""The generator graph: cores, multilinear nodes with an activation after each, and their segments.

Builders (:mod:`adntn.generators`) describe an architecture as a :class:`Graph`: trainable
:class:`Core` tensors and :class:`Node` s, each the contraction of some cores and earlier nodes
followed by an elementwise activation. :meth:`Graph.segments` merges every node whose activation is
the identity into its consumer, so each remaining node is a *segment*: a maximal multilinear piece
between activations, which is what the planner sees.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from adntn.errors import AdntnError


@dataclass(frozen=True)
class Core:
    """A trainable tensor.

    Attributes:
        name: Unique name, e.g. ``"leaf3"`` or ``"node1.0"``.
        labels: One label per leg (labels are unique to the graph except where legs connect).
        role: What it is in the architecture: ``leaf``, ``node``, ``root``, ``top``, ``isometry``,
            ``disentangler`` or ``lateral``.
    """

    name: str
    labels: tuple[str, ...]
    role: str


@dataclass(frozen=True)
class Node:
    """A contraction of cores and earlier nodes, followed by ``activation``.

    Attributes:
        name: Unique name.
        operands: Names of the cores and nodes contracted, in order.
        labels: The result's legs, in order.
        activation: An activation from :mod:`adntn.activations` (``"identity"`` merges the node
            into its consumer).
        level: The architectural level (tree height, MERA layer) that picks per-level options.
    """

    name: str
    operands: tuple[str, ...]
    labels: tuple[str, ...]
    activation: str | Callable
    level: int


@dataclass
class Graph:
    """A whole generator: cores, nodes in topological order (the last one produces the weight).

    Attributes:
        cores: Every core by name.
        nodes: Every node, producers before consumers; the last one's labels are the physical legs
            ``out_legs + in_legs`` in order.
        sizes: Size of every label.
        out_legs: Output legs of the weight, most significant first.
        in_legs: Input legs of the weight.
    """

    cores: dict[str, Core]
    nodes: list[Node]
    sizes: dict[str, int]
    out_legs: tuple[str, ...]
    in_legs: tuple[str, ...]

    def check(self) -> None:
        """Assert the graph is well formed (a builder bug otherwise, never a user error)."""
        known = set(self.cores)
        for node in self.nodes:
            for op in node.operands:
                if op not in known:
                    raise AdntnError(f"internal: node {node.name} uses {op} before it is defined")
            known.add(node.name)
        final = self.nodes[-1]
        if tuple(final.labels) != self.out_legs + self.in_legs:
            raise AdntnError(f"internal: the last node yields {final.labels}, not the physical legs")

    def labels_of(self, name: str) -> tuple[str, ...]:
        """The legs of a core or node."""
        if name in self.cores:
            return self.cores[name].labels
        return self.node(name).labels

    def node(self, name: str) -> Node:
        """The node called ``name``."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def segments(self) -> list[Node]:
        """The nodes left after merging every identity node into its only consumer.

        A merged node's operands replace it in its consumer's operand list, so the consumer becomes
        one multilinear network spanning both.
        """
        consumers: dict[str, list[str]] = {}
        for node in self.nodes:
            for op in node.operands:
                consumers.setdefault(op, []).append(node.name)
        merged: dict[str, Node] = {}
        out: list[Node] = []
        for node in self.nodes:
            ops: list[str] = []
            for op in node.operands:
                if op in merged:
                    ops.extend(merged.pop(op).operands)
                else:
                    ops.append(op)
            node = replace(node, operands=tuple(ops))
            last = node is self.nodes[-1] or node.name == self.nodes[-1].name
            if node.activation == "identity" and not last and len(consumers.get(node.name, ())) == 1:
                merged[node.name] = node
            else:
                out.append(node)
        return out
