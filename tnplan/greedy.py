"""Greedy and randomised-greedy contraction drivers.

The greedy driver repeatedly contracts the pair of neighbouring tensors with the best local score
``size(out) / costmod - costmod * (size(a) + size(b))`` (cheap outputs that free big inputs first).
With ``temperature > 0`` the score is perturbed by seeded Gumbel noise, which turns the driver into a
sampler for randomised restarts. Disconnected pieces are joined at the end by outer products,
smallest first.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

import numpy as np


def greedy_ssa(
    legs: Sequence[Sequence[int]],
    output: frozenset[int] | set[int],
    sizes: Sequence[float],
    *,
    costmod: float = 1.0,
    temperature: float = 0.0,
    seed: int | None = None,
) -> list[tuple[int, int]]:
    """A complete SSA path from the greedy driver.

    Args:
        legs: Each tensor's index ids (as the pairwise steps see them).
        output: Open index ids.
        sizes: Size of every index id (may be jittered floats for randomisation).
        costmod: Weight of freed input sizes against the output size.
        temperature: Scale of the Gumbel noise on log-scores; 0 means deterministic.
        seed: Seed of the noise.
    """
    n = len(legs)
    rng = np.random.default_rng(seed) if temperature > 0 else None
    noise = rng.gumbel(size=4 * n + 64) if rng is not None else None
    noise_pos = 0
    tensors: dict[int, frozenset[int]] = {k: frozenset(t) for k, t in enumerate(legs)}
    where: dict[int, set[int]] = {}
    for k, t in tensors.items():
        for i in t:
            where.setdefault(i, set()).add(k)

    def size_of(ls: frozenset[int]) -> float:
        p = 1.0
        for i in ls:
            p *= sizes[i]
        return p

    tsize = {k: size_of(t) for k, t in tensors.items()}

    def result_legs(a: int, b: int) -> frozenset[int]:
        la, lb = tensors[a], tensors[b]
        drop = {i for i in la & lb if i not in output and len(where[i]) == 2}
        return (la | lb) - drop

    def score(a: int, b: int) -> float:
        nonlocal noise, noise_pos
        s = size_of(result_legs(a, b)) / costmod - costmod * (tsize[a] + tsize[b])
        if noise is None:
            return s
        if noise_pos >= len(noise):
            noise = rng.gumbel(size=len(noise))  # type: ignore[union-attr]
            noise_pos = 0
        g = noise[noise_pos]
        noise_pos += 1
        # Perturb on a log scale so the noise is relative to the score's magnitude.
        if s > 0:
            return math.log(s) - temperature * g
        if s < 0:
            return -math.log(-s) - temperature * g
        return -temperature * g

    heap: list[tuple[float, int, int, int]] = []
    tie = 0
    seen: set[tuple[int, int]] = set()
    for i in sorted(where):
        ts = sorted(where[i])
        for x in range(len(ts)):
            for y in range(x + 1, len(ts)):
                pair = (ts[x], ts[y])
                if pair not in seen:
                    seen.add(pair)
                    heap.append((score(*pair), tie, *pair))
                    tie += 1
    heapq.heapify(heap)
    path: list[tuple[int, int]] = []
    nxt = n
    while heap:
        _, _, a, b = heapq.heappop(heap)
        if a not in tensors or b not in tensors:
            continue
        new = result_legs(a, b)
        for i in tensors[a] | tensors[b]:
            w = where[i]
            w.discard(a)
            w.discard(b)
            if i in new:
                w.add(nxt)
        del tensors[a], tensors[b]
        tensors[nxt] = new
        tsize[nxt] = size_of(new)
        path.append((a, b))
        neighbours = sorted({k for i in new for k in where[i] if k != nxt})
        for k in neighbours:
            heapq.heappush(heap, (score(k, nxt), tie, k, nxt))
            tie += 1
        nxt += 1
    rest = sorted(tensors, key=lambda k: (tsize[k], k))
    while len(rest) > 1:
        a, b = rest.pop(0), rest.pop(0)
        path.append((a, b))
        tsize[nxt] = tsize[a] * tsize[b]
        rest.append(nxt)
        rest.sort(key=lambda k: (tsize[k], k))
        nxt += 1
    return path
