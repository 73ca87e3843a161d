"""``Generator``: the torch module that turns a :class:`~adntn.graph.Graph` into a weight.

Segments of identical structure at one level form a *group* that runs as one batched contraction:
their cores are stacked into one ``nn.Parameter`` with a leading member axis, and the group's
network carries that axis as a hyperedge on every operand. Every group network (and the streaming
network of the last segment) is planned once, at construction, through the tnplan plan cache; the
module keeps only the compiled einsum programs, so ``forward`` never plans and ``state_dict``,
``.to()``, pickling, ``torch.compile`` and ``torch.export`` see plain parameters and constants.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import tnplan
from adntn import activations, layout
from adntn.errors import AdntnError
from adntn.graph import Graph, Node
from adntn.kron import KronSplit, find_split
from tnplan.contract import Program

BATCH = "_n"  # the member axis of a batched group
ROWS = "_b"  # the batch axis of a streamed input
STREAM_BUCKETS = (1, 8, 64, 512, 4096)  # batch sizes the streaming network is planned for


def nearest_size(rows: int, sizes: Sequence[int]) -> int:
    """The entry of ``sizes`` (ascending) nearest to ``rows`` on a log scale; the smaller on a tie."""
    # A plain loop (not min with a key), so torch.compile traces it.
    best = sizes[0]
    for b in sizes[1:]:
        if abs(math.log(max(rows, 1) / b)) < abs(math.log(max(rows, 1) / best)):
            best = b
    return best


@dataclass(frozen=True)
class Operand:
    """Where one operand of a group comes from.

    Attributes:
        kind: ``"core"`` (a parameter of this group) or ``"node"`` (an earlier group's output).
        key: The parameter name, or the source group's index.
        index: For a node operand: ``None`` (the source's whole output, shared by all members),
            an ``int`` (one member of the source), a ``slice`` or a tuple of member indices.
    """

    kind: str
    key: str | int
    index: Any = None


@dataclass(frozen=True)
class Stream:
    """The last segment with the input batch contracted in, planned for one batch-size bucket.

    Attributes:
        program: The compiled contraction (the batch axis is free, so any batch size runs).
        flops: Planned flops at the bucket's batch size.
        ssa_path: The planned order (re-scored at the actual batch size for mode decisions).
        cache: The plan cache status when it was planned.
    """

    program: Program
    flops: int
    ssa_path: tuple[tuple[int, int], ...]
    cache: str


@dataclass(frozen=True)
class Group:
    """Segments of identical structure run as one contraction, then one activation.

    Attributes:
        name: Readable name (role and level of the members).
        members: Names of the segment nodes, in member order.
        operands: One :class:`Operand` per network tensor.
        network: The planned network (member axis ``_n`` when more than one member).
        program: The compiled contraction.
        activation: Applied to the result.
        out_shape: Shape of one member's result (without the member axis).
        labels: Labels of the template member's operands, then its output (for adjoints and streaming).
        cache: The plan cache status when it was planned.
        flops: The plan's flops.
        write: The plan's write (elements of every intermediate and the result).
        ssa_path: The planned contraction order (executors other than torch rebuild their steps from it).
    """

    name: str
    members: tuple[str, ...]
    operands: tuple[Operand, ...]
    network: tnplan.Network
    program: Program
    activation: str | Callable
    out_shape: tuple[int, ...]
    labels: tuple[tuple[str, ...], ...]
    cache: str
    flops: int
    write: int
    ssa_path: tuple[tuple[int, int], ...] = ()

    @property
    def size(self) -> int:
        """Number of members."""
        return len(self.members)


class Generator(nn.Module):
    """Produces a weight from small trainable cores through a planned nonlinear tensor network.

    Subclasses (:class:`~adntn.generators.TTNGenerator`, ...) build the :class:`Graph`; this class
    groups, plans, initialises and runs it.

    Args:
        graph: The architecture.
        out_features: Rows of the weight (the generated rows beyond it are padding, trimmed).
        in_features: Columns of the weight.
        fan_in: Fan-in for the init scale (``in_features`` for a linear layer, ``in * kh * kw`` for a conv).
        cache: The plan cache (``True`` for the default file, a path, a ``PlanCache`` or ``False``).
        cache_only: Never search: load every plan from the cache or raise.
        executor: ``"torch"`` (einsum programs), ``"numba"`` (fused CPU kernels, :mod:`kernels`),
            ``"cuda"`` (the same kernels on the GPU, for CUDA parameters) or ``"auto"``: numba for
            float32/float64 CPU parameters when every segment has a fused kernel (a named
            activation); torch otherwise (and on GPUs for now). Every executor runs the torch programs
            while ``torch.compile`` / ``torch.export`` trace the module, a ``torch.func`` transform
            (``grad``, ``vmap``, ``jacrev``, ...) runs it or its cores carry forward-mode tangents.
    """

    def __init__(
        self,
        graph: Graph,
        out_features: int,
        in_features: int,
        *,
        fan_in: int | None = None,
        cache: Any = True,
        cache_only: bool = False,
        executor: str = "auto",
    ) -> None:
        super().__init__()
        from kernels import get_executor

        graph.check()
        self.executor = get_executor(executor)
        self.out_features = out_features
        self.in_features = in_features
        self.out_padded = math.prod(graph.sizes[x] for x in graph.out_legs)
        self.in_padded = math.prod(graph.sizes[x] for x in graph.in_legs)
        self.out_legs = graph.out_legs
        self.in_legs = graph.in_legs
        self.sizes = dict(graph.sizes)
        self.cores = nn.ParameterDict()
        self._plan_kwargs = {"cache": cache, "cache_only": cache_only}
        self.groups: tuple[Group, ...] = tuple(self._build_groups(graph))
        self.streams: dict[int, Stream] = {}
        if self.streamable:
            for rows in STREAM_BUCKETS:
                self._plan_stream(rows)
        self.kron: KronSplit | None = find_split(self)
        self.fan_in = fan_in or in_features
        if self.executor in ("numba", "cuda"):
            from kernels.executor import compiled_steps

            # A segment without a fused kernel fails here, not in forward.
            compiled_steps(self, None if self.executor == "numba" else False)
        self.reset_parameters()

    # ------------------------------------------------------------------ structure

    def _build_groups(self, graph: Graph) -> list[Group]:
        segments = graph.segments()
        seg_of = {s.name: s for s in segments}
        height: dict[str, int] = {}
        provisional: dict[str, int] = {}  # segment -> its signature's number, in order of appearance
        numbers: dict[tuple, int] = {}
        members: list[list[Node]] = []
        for s in segments:
            height[s.name] = 1 + max((height[o] for o in s.operands if o in seg_of), default=0)
            sig = self._signature(graph, s, height[s.name], provisional, seg_of)
            if sig not in numbers:
                numbers[sig] = len(numbers)
                members.append([])
            provisional[s.name] = numbers[sig]
            members[numbers[sig]].append(s)
        # Members of one group never depend on each other (their sources sit lower), so running the
        # groups by height, then by first appearance, respects every dependency.
        order = sorted(range(len(members)), key=lambda k: (height[members[k][0].name], k))
        where: dict[str, tuple[int, int]] = {}
        groups: list[Group] = []
        for gi, k in enumerate(order):
            for m, s in enumerate(members[k]):
                where[s.name] = (gi, m)
            groups.append(self._make_group(graph, gi, members[k], where, seg_of))
        return groups

    @staticmethod
    def _signature(graph: Graph, s: Node, h: int, provisional: dict[str, int], seg_of: dict) -> tuple:
        """Structure up to relabelling: segments with equal signatures run as one batched group."""
        rename: dict[str, int] = {}
        parts = []
        for op in s.operands:
            labels = graph.labels_of(op)
            norm = tuple(rename.setdefault(x, len(rename)) for x in labels)
            shape = tuple(graph.sizes[x] for x in labels)
            source = ("node", provisional[op]) if op in seg_of else ("core", graph.cores[op].role)
            parts.append((source, norm, shape))
        out = tuple(rename.setdefault(x, len(rename)) for x in s.labels)
        act = s.activation if isinstance(s.activation, str) else id(s.activation)
        return (h, act, s.level, tuple(parts), out, tuple(graph.sizes[x] for x in s.labels))

    def _make_group(self, graph: Graph, gi: int, members: list[Node], where: dict, seg_of: dict) -> Group:
        n = len(members)
        template = members[0]
        rename: dict[str, str] = {}

        def norm(labels: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(rename.setdefault(x, f"x{len(rename)}") for x in labels)

        inputs: list[tuple[str, ...]] = []
        operands: list[Operand] = []
        labels: list[tuple[str, ...]] = []
        roles: list[str] = []
        for j, op in enumerate(template.operands):
            lab = norm(graph.labels_of(op))
            labels.append(graph.labels_of(op))
            if op in seg_of:
                src = [where[m.operands[j]] for m in members]
                groups = {g for g, _ in src}
                if len(groups) != 1:
                    raise AdntnError(f"internal: group {template.name} takes operand {j} from several groups")
                sg = src[0][0]
                idx = [k for _, k in src]
                if n == 1 or len(set(idx)) == 1:
                    operands.append(Operand("node", sg, idx[0]))
                    inputs.append(lab)
                else:
                    step = idx[1] - idx[0]
                    if step > 0 and all(b - a == step for a, b in itertools.pairwise(idx)):
                        index: Any = slice(idx[0], idx[-1] + 1, step)
                    else:
                        index = tuple(idx)
                    operands.append(Operand("node", sg, index))
                    inputs.append((BATCH, *lab))
            else:
                core = graph.cores[op]
                key = f"g{gi}_{core.role}{j}"
                shape = tuple(graph.sizes[x] for x in core.labels)
                self.cores[key] = nn.Parameter(torch.empty((n, *shape) if n > 1 else shape))
                operands.append(Operand("core", key))
                inputs.append((BATCH, *lab) if n > 1 else lab)
                roles.append(core.role)
        out_labels = norm(template.labels)
        output = (BATCH, *out_labels) if n > 1 else out_labels
        sizes = {f"x{i}": 0 for i in range(len(rename))}
        for orig, new in rename.items():
            sizes[new] = graph.sizes[orig]
        sizes[BATCH] = n
        net = tnplan.Network(inputs, output, sizes)
        plan = tnplan.plan(net, **self._plan_kwargs)
        out_shape = tuple(graph.sizes[x] for x in template.labels)
        name = "+".join(sorted(set(roles))) + f"@{template.level}" + (f" x{n}" if n > 1 else "")
        return Group(
            name=name,
            members=tuple(m.name for m in members),
            operands=tuple(operands),
            network=net,
            program=plan.compile(),
            activation=template.activation,
            out_shape=out_shape,
            labels=(*labels, tuple(template.labels)),
            cache=plan.cache_status,
            flops=plan.flops,
            write=plan.write,
            ssa_path=tuple(plan.ssa_path),
        )

    @property
    def streamable(self) -> bool:
        """Whether ``x @ W.T`` can be contracted through the last segment (no activation after it)."""
        last = self.groups[-1]
        return last.size == 1 and activations.is_identity(last.activation)

    def _stream_network(self, rows: int) -> tnplan.Network:
        last = self.groups[-1]
        base = last.network
        ids = dict(zip(last.labels[-1], base.output, strict=True))
        x_labels = (ROWS, *(ids[leg] for leg in self.in_legs))
        output = (ROWS, *(ids[leg] for leg in self.out_legs))
        sizes = dict(base.size_dict)
        sizes[ROWS] = rows
        return tnplan.Network([*base.inputs, x_labels], output, sizes)

    def _plan_stream(self, rows: int) -> None:
        plan = tnplan.plan(self._stream_network(rows), **self._plan_kwargs)
        self.streams[rows] = Stream(plan.compile(free=ROWS), plan.flops, tuple(plan.ssa_path), plan.cache_status)

    # ------------------------------------------------------------------ execution

    def _operand(
        self, op: Operand, outputs: list[torch.Tensor], cores: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        if op.kind == "core":
            return self.cores[op.key] if cores is None else cores[op.key]  # type: ignore[index]
        src = outputs[op.key]
        if self.groups[op.key].size == 1:
            return src
        if isinstance(op.index, tuple):
            return torch.stack([src[i] for i in op.index])
        return src[op.index]

    def run_groups(
        self,
        upto: int | None = None,
        *,
        keep_preactivations: bool = False,
        cores: Mapping[str, torch.Tensor] | None = None,
    ) -> list[Any]:
        """Run groups ``0..upto-1`` (all by default); returns their activated outputs (and pre-activations).

        ``cores``: tensors by core name to use in place of the module's cores.
        """
        outputs: list[torch.Tensor] = []
        pre: list[torch.Tensor] = []
        end = len(self.groups) if upto is None else upto
        for g in self.groups[:end]:
            z = g.program(*(self._operand(op, outputs, cores) for op in g.operands))
            pre.append(z)
            outputs.append(activations.apply(g.activation, z))
        return [outputs, pre] if keep_preactivations else outputs

    def padded_weight(self, cores: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The weight with its padding, ``(out_padded, in_padded)``, from the torch programs (differentiable).

        ``cores``: tensors by core name to use in place of the module's cores (the kernels' double
        backward differentiates the weight in the cores it saved).
        """
        return layout.reshape(self.run_groups(cores=cores)[-1], (self.out_padded, self.in_padded))

    def uses_kernels(self) -> bool:
        """Whether ``forward`` builds the weight with the kernels (numba CPU or CUDA) right now."""
        # torch.func transforms (grad, vmap, jacrev, ...) and forward-mode AD cannot see into the kernels'
        # autograd.Function (no setup_context, no jvp): they run the torch programs, as torch.compile does.
        from kernels.executor import common_device
        from kernels.transforms import transformed

        traced = torch.compiler.is_compiling() or torch.jit.is_tracing()
        cores = list(self.cores.values())
        if self.executor == "torch" or traced or transformed(*cores):
            return False
        # Every core, not only the first: the kernels run one dtype on one device.
        device = common_device(cores)
        if self.executor == "cuda":
            if device is None or device.type != "cuda":
                raise AdntnError(
                    "executor='cuda' needs float32/float64 parameters of one dtype on a CUDA device; move the "
                    "module with .to('cuda') or use 'auto'"
                )
            return True
        if device is None or device.type != "cpu":
            if self.executor == "numba":
                raise AdntnError(
                    "executor='numba' needs float32/float64 parameters of one dtype on the CPU; use 'torch' or 'auto'"
                )
            # auto on a GPU: torch until the CUDA kernels are measured to win there (kernels-gpu.md).
            return False
        return self.cpu_kernels()

    def cpu_kernels(self) -> bool:
        """Whether ``forward`` builds the weight with the numba kernels for float32/float64 CPU
        parameters, wherever the parameters are now (``uses_kernels`` also checks them).

        Raises:
            KernelsError: With ``executor="numba"``, if a segment has no fused kernel.
        """
        if self.executor not in ("numba", "auto"):
            return False
        if "_kernels_ok" not in self.__dict__:
            from kernels import KernelsError
            from kernels.executor import compiled_steps

            try:
                # Measured (benchmarks/results/kernels-cpu.md): with BLAS steps run as tiled numba
                # kernels, the executor beats torch eager 2.6-11.6x on every configuration there,
                # BLAS-bound ones included, so auto takes it wherever it compiles.
                compiled_steps(self)
                self.__dict__["_kernels_ok"] = True
            except KernelsError:
                if self.executor == "numba":
                    raise
                self.__dict__["_kernels_ok"] = False
        return self.__dict__["_kernels_ok"]

    def forward(self) -> torch.Tensor:
        """The weight, ``(out_features, in_features)`` (padding trimmed)."""
        if self.uses_kernels():
            from kernels import numba_weight

            w = numba_weight(self)
        else:
            w = self.padded_weight()
        if w.shape != (self.out_features, self.in_features):
            w = w[: self.out_features, : self.in_features]
        return w

    def stream(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T`` for ``x`` of shape ``(rows, in_features)``, without building ``W``."""
        if not self.streamable:
            raise AdntnError(
                "this generator's last segment ends in an activation, so it cannot stream; use materialize"
            )
        rows = x.shape[0]
        bucket = self.stream_bucket(rows)
        if self.in_padded != self.in_features:
            x = torch.nn.functional.pad(x, (0, self.in_padded - self.in_features))
        xs = x.reshape(rows, *(self.sizes[leg] for leg in self.in_legs))
        last = self.groups[-1]
        outputs = self.run_groups(len(self.groups) - 1)
        ops = [self._operand(op, outputs) for op in last.operands]
        y = self.streams[bucket].program(*ops, xs).reshape(rows, self.out_padded)
        return y[:, : self.out_features] if self.out_padded != self.out_features else y

    def kron_factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``A`` ``(R, M, P)``, ``B`` ``(R, N, Q)`` and the mixer ``(C, K)`` (``None`` without one), with
        ``W = Σ_r A_r ⊗ B_r`` followed by the mixer (see :mod:`adntn.kron`); differentiable."""
        if self.kron is None:
            raise AdntnError(
                "this generator's last segment is no Kronecker sum (it needs a linear root that splits into a "
                "leading and a trailing half, like a TTN's); use mode='stream' or 'materialize'"
            )
        split = self.kron
        outputs = self.run_groups(len(self.groups) - 1)
        ops = [self._operand(op, outputs) for op in self.groups[-1].operands]
        m, p, n, q = split.shape
        a = split.programs[0](*(ops[i] for i in split.left)).reshape(split.rank, m, p)
        b = split.programs[1](*(ops[i] for i in split.right)).reshape(split.rank, n, q)
        if split.mixer_program is None or split.mix_shape is None:
            return a, b, None
        _, c, k, _ = split.mix_shape
        return a, b, split.mixer_program(*(ops[i] for i in split.mixer)).reshape(c, k)

    def stream_kron(self, x: torch.Tensor, *, backend: str = "auto", config: dict | None = None) -> torch.Tensor:
        """``x @ W.T`` through the Kronecker factors (:func:`kernels.kronsum.kron_stream`), without ``W``.

        ``backend`` and ``config`` go to the factors' stream; a mixer after it runs on the same backend
        at the kernels' default launches (a config tuned for the factors' shapes does not fit its own;
        on the GPU its identity product, padded to 16 wide, adds work that ``kron_cost_at`` leaves out).
        """
        from kernels.kronsum import DTYPES, kron_stream, unsupported

        device = x.device.type
        # Meta tensors (the CPU mode model traces on them, adntn/timing.py) have no autocast.
        amp = torch.amp.is_autocast_available(device)
        cast = torch.get_autocast_dtype(device) if amp and torch.is_autocast_enabled(device) else None
        # Autocast runs the stream in its dtype where the kernels take it (float16 on float32 cores:
        # tensor-core products with float32 accumulators, like the dense layer's); otherwise the factors
        # and the stream run in the cores' dtype (float32: the kernels, in TF32 where torch allows it),
        # the input cast to it. Either way the output comes in autocast's dtype, as nn.Linear's does.
        # Cores cast to bfloat16 take the torch route.
        with torch.autocast(device if amp else "cpu", enabled=False):
            a, b, mix = self.kron_factors()
            rows = x.shape[0]
            if cast is None and x.dtype != a.dtype:
                # As nn.Linear and the other modes: without autocast an input of another dtype is an
                # error, not a silent cast (auto would otherwise succeed or fail by batch size).
                raise RuntimeError(f"mat1 and mat2 must have the same dtype, but got {x.dtype} and {a.dtype}")
            x = x.to(a.dtype)
            if self.in_padded != self.in_features:
                x = torch.nn.functional.pad(x, (0, self.in_padded - self.in_features))
            _, p, _, q = self.kron.shape  # type: ignore[union-attr]
            x = x.reshape(rows, p, q)
            if cast in DTYPES and a.dtype == torch.float32 and backend != "torch" and unsupported(x, a, b) is None:
                x, a, b = x.to(cast), a.to(cast), b.to(cast)
                mix = None if mix is None else mix.to(cast)
            y = kron_stream(x, a, b, backend=backend, config=config)
            if mix is not None:
                y = self._mix(y, mix, backend)
            if cast is not None and y.dtype == torch.float32:
                y = y.to(cast)
        y = y.reshape(rows, self.out_padded)
        return y[:, : self.out_features] if self.out_padded != self.out_features else y

    def _mix(self, y: torch.Tensor, mix: torch.Tensor, backend: str) -> torch.Tensor:
        """The mixer on the streamed rows: each row's ``(L, C, N')`` block becomes ``(L, K, N')``."""
        from kernels.kronsum import kron_stream, unsupported

        _, c, _, trail = self.kron.mix_shape  # type: ignore[union-attr, misc]
        z = y.reshape(-1, c, trail)
        # Per (row, l) it is Mᵀ Z I: a one-term Kronecker sum, so the fused kernels read the streamed
        # rows once and write the mixed ones once, where an einsum copies them permuted both ways (its
        # backward too). Mᵀ copied contiguous (C x K elements) so every program reads its rows coalesced.
        if backend != "torch":
            ops = (z, mix.T.contiguous().unsqueeze(0), torch.eye(trail, dtype=z.dtype, device=z.device).unsqueeze(0))
            if backend == "triton" or unsupported(*ops) is None:
                # Default launches: a tuned config fits the factors' shapes, not these.
                return kron_stream(*ops, backend="triton", config={})
        # The torch route's two matmuls (the identity's among them) cost more than one einsum on the CPU.
        return torch.einsum("zcn,ck->zkn", z, mix)

    @staticmethod
    def stream_bucket(rows: int) -> int:
        """The planned batch size closest to ``rows`` on a log scale (the path is valid for any)."""
        return nearest_size(rows, STREAM_BUCKETS)

    # ------------------------------------------------------------------ costs

    def materialize_cost(self, rows: int, write_weight: float = 0) -> int:
        """Planned flops of building ``W`` and multiplying ``rows`` inputs by it, plus ``write_weight``
        per element written (every intermediate, ``W`` and the output)."""
        sizes = {"b": rows, "i": self.in_padded, "o": self.out_padded}
        mm = tnplan.score_path(tnplan.Network([("b", "i"), ("o", "i")], ("b", "o"), sizes), [(0, 1)])
        return self._groups_cost(self.groups, write_weight) + mm.flops + round(write_weight * mm.write)

    def stream_cost_at(self, rows: int, write_weight: float = 0) -> int:
        """Planned flops of streaming ``rows`` inputs (every group but the last, then the streaming
        network along the path planned for the nearest bucket), plus ``write_weight`` per element written."""
        path = self.streams[self.stream_bucket(rows)].ssa_path
        streamed = tnplan.score_path(self._stream_network(rows), list(path))
        return self._groups_cost(self.groups[:-1], write_weight) + streamed.flops + round(write_weight * streamed.write)

    def streams_cheaper(self, rows: int, write_weight: float = 0) -> bool:
        """Whether streaming ``rows`` inputs costs fewer planned flops (plus ``write_weight`` per element
        written) than materialising: the planned-cost rule of ``mode="auto"`` (CUDA, and CPU fallback)."""
        return self.streamable and self.stream_cost_at(rows, write_weight) < self.materialize_cost(rows, write_weight)

    def kron_cost_at(self, rows: int, write_weight: float = 0) -> int:
        """Flops of streaming ``rows`` inputs through the Kronecker factors (every group but the last,
        the factors and mixer, then two products per bond term and the mixer's product), plus
        ``write_weight`` per element written (the factors, the output and, with a mixer, the streamed
        output it reads; the fused kernels keep their intermediates on chip)."""
        if self.kron is None:
            raise AdntnError("this generator's last segment is no Kronecker sum")
        split = self.kron
        m, p, n, q = split.shape
        written = split.rank * (m * p + n * q) + rows * m * n
        if split.mix_shape is not None:
            lead, c, k, trail = split.mix_shape
            written += c * k + rows * lead * k * trail
        return (
            self._groups_cost(self.groups[:-1], write_weight)
            + split.flops
            + split.stream_flops(rows)
            + round(write_weight * written)
        )

    @staticmethod
    def _groups_cost(groups: Any, write_weight: float) -> int:
        return sum(g.flops + round(write_weight * g.write) for g in groups)

    # ------------------------------------------------------------------ init and reporting

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random cores, rescaled member by member so every pre-activation has unit spread and the
        weight has the standard deviation of ``nn.Linear``'s Kaiming-uniform init.

        The generator has no data dependence, so the scale of each node can be measured exactly at
        init instead of assumed; deep nonlinear trees then neither vanish nor explode. Each node's
        sign is also chosen so that it has more positive than negative pre-activations: a small node whose
        entries all fall below zero would make a ReLU output zero, and a product with a zero child
        is zero, so one dead node would zero the whole weight.
        """
        for p in self.cores.values():
            p.normal_()
        target = 1.0 / math.sqrt(3.0 * self.fan_in)
        outputs: list[torch.Tensor] = []
        for gi, g in enumerate(self.groups):
            z = g.program(*(self._operand(op, outputs) for op in g.operands))
            keys = [op.key for op in g.operands if op.kind == "core"]
            if gi == len(self.groups) - 1:
                w = z.reshape(self.out_padded, self.in_padded)[: self.out_features, : self.in_features]
                scale = (target / _spread(w)).reshape(1)
                sign = torch.ones_like(scale)
            else:
                per = z.reshape(g.size, -1)  # one row per member
                flip = (per > 0).sum(1) < (per < 0).sum(1)  # ReLU children give exact zeros: count both signs
                sign = torch.where(flip, -1.0, 1.0).to(per.dtype)
                scale = 1.0 / torch.stack([_spread(row) for row in per])
            # The segment is linear in each core: share the rescale evenly among them, so no single
            # core ends up orders of magnitude smaller than the rest (and takes huge gradient steps).
            share = scale ** (1.0 / len(keys))
            for k, key in enumerate(keys):
                f = share * sign if k == 0 else share
                p = self.cores[key]
                p.mul_(f.reshape((g.size,) + (1,) * (p.dim() - 1)) if g.size > 1 else f[0])
            total = scale * sign
            z = z * (total.reshape((g.size,) + (1,) * (z.dim() - 1)) if g.size > 1 else total[0])
            outputs.append(activations.apply(g.activation, z))

    def num_parameters(self) -> int:
        """Trainable numbers in the cores."""
        return sum(p.numel() for p in self.cores.values())

    def plan_report(self) -> list[dict[str, Any]]:
        """One row per planned network: group, members, tensors, flops, cache status."""
        rows = [
            {"network": g.name, "members": g.size, "tensors": g.network.num_tensors, "flops": g.flops, "cache": g.cache}
            for g in self.groups
        ]
        for b, st in sorted(self.streams.items()):
            rows.append(
                {
                    "network": f"stream@rows={b}",
                    "members": 1,
                    "tensors": self.groups[-1].network.num_tensors + 1,
                    "flops": st.flops,
                    "cache": st.cache,
                }
            )
        for name, tensors, flops, cache in self.kron.planned if self.kron is not None else ():
            rows.append({"network": name, "members": 1, "tensors": tensors, "flops": flops, "cache": cache})
        return rows


def _spread(t: torch.Tensor) -> torch.Tensor:
    """Standard deviation (the magnitude for a single entry), never zero or non-finite."""
    s = t.std() if t.numel() > 1 else t.abs().reshape(())
    return torch.where(torch.isfinite(s) & (s > 0), s, torch.ones_like(s))
