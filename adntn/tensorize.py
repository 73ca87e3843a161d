"""Tensorisation: factor a layer's output and input dimensions into physical legs, grouped into leaves.

A weight ``W`` of shape ``(out, in)`` is viewed as a tensor with legs ``o_0..o_{K-1}`` and
``i_0..i_{K-1}`` (``out = prod(o_k)``, ``in = prod(i_k)``). A dimension that factors badly is padded
up to a nearby number that factors well; the generator then produces the padded tensor and the layer
trims it, and :attr:`Tensorization.waste` says how much was generated for nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from adntn.errors import AdntnError

LEAF_GROUPINGS = ("pair", "single")
_SMALL_PRIMES = (2, 3, 5, 7, 11, 13)
_MAX_PAD = 0.25  # never pad a dimension by more than a quarter
_PAD_PENALTY = 1.1  # padding must shrink the factor sum by >10% to beat an exact factorisation


@dataclass(frozen=True)
class Tensorization:
    """How a weight matrix is cut into physical legs and leaves.

    Attributes:
        out_features: Rows of the weight.
        in_features: Columns of the weight.
        out_factors: ``o_k`` per leaf (their product may exceed ``out_features``: padding).
        in_factors: ``i_k`` per leaf.
        grouping: ``"pair"`` (leaf ``k`` holds ``o_k`` and ``i_k``, MPO-style) or ``"single"``
            (every leg its own leaf, in the order ``o_0, i_0, o_1, i_1, ...``).
    """

    out_features: int
    in_features: int
    out_factors: tuple[int, ...]
    in_factors: tuple[int, ...]
    grouping: str = "pair"

    @property
    def out_padded(self) -> int:
        """Rows the generator produces (``prod(out_factors)``)."""
        return math.prod(self.out_factors)

    @property
    def in_padded(self) -> int:
        """Columns the generator produces (``prod(in_factors)``)."""
        return math.prod(self.in_factors)

    @property
    def waste(self) -> float:
        """Fraction of generated entries that are trimmed away (0 when both dimensions factor exactly)."""
        return 1.0 - (self.out_features * self.in_features) / (self.out_padded * self.in_padded)

    @property
    def out_legs(self) -> tuple[str, ...]:
        """Labels of the output legs, most significant first."""
        return tuple(f"o{k}" for k in range(len(self.out_factors)))

    @property
    def in_legs(self) -> tuple[str, ...]:
        """Labels of the input legs, most significant first."""
        return tuple(f"i{k}" for k in range(len(self.in_factors)))

    @property
    def leg_sizes(self) -> dict[str, int]:
        """Size of every physical leg by label."""
        return {
            **dict(zip(self.out_legs, self.out_factors, strict=True)),
            **dict(zip(self.in_legs, self.in_factors, strict=True)),
        }

    @property
    def leaves(self) -> tuple[tuple[str, ...], ...]:
        """Physical legs per leaf, left to right."""
        if self.grouping == "pair":
            return tuple(zip(self.out_legs, self.in_legs, strict=True))
        return tuple((leg,) for pair in zip(self.out_legs, self.in_legs, strict=True) for leg in pair)


def tensorize(
    out_features: int,
    in_features: int,
    *,
    n_factors: int | None = None,
    out_factors: Sequence[int] | None = None,
    in_factors: Sequence[int] | None = None,
    grouping: str = "pair",
) -> Tensorization:
    """Factor ``out_features`` and ``in_features`` into the same number of legs.

    Args:
        out_features: Rows of the weight.
        in_features: Columns of the weight.
        n_factors: Legs per dimension; by default about ``log8`` of the larger dimension (4096 -> 4
            legs of 8, 25088 -> 5 legs ``8, 8, 8, 7, 7``).
        out_factors: Explicit output factors (product >= ``out_features``; a larger product pads).
        in_factors: Explicit input factors.
        grouping: ``"pair"`` or ``"single"``; see :class:`Tensorization`.

    Raises:
        AdntnError: On non-positive sizes, factors that do not cover the dimension, or
            mismatched factor counts.
    """
    for name, value in (("out_features", out_features), ("in_features", in_features)):
        if not isinstance(value, int) or value < 1:
            raise AdntnError(f"{name} must be a positive integer, got {value!r}")
    if grouping not in LEAF_GROUPINGS:
        raise AdntnError(f"unknown leaf grouping {grouping!r}; choose one of {', '.join(LEAF_GROUPINGS)}")
    k = len(out_factors) if out_factors is not None else len(in_factors) if in_factors is not None else n_factors
    if k is None:
        k = max(2, round(math.log(max(out_features, in_features)) / math.log(8)))
    if not isinstance(k, int) or k < 1:
        raise AdntnError(f"n_factors must be a positive integer, got {k!r}")
    outs = _checked("out", out_factors, out_features, k) if out_factors is not None else best_factors(out_features, k)
    ins = _checked("in", in_factors, in_features, k) if in_factors is not None else best_factors(in_features, k)
    return Tensorization(out_features, in_features, outs, ins, grouping)


def _checked(side: str, factors: Sequence[int], dim: int, k: int) -> tuple[int, ...]:
    fs = tuple(factors)
    if len(fs) != k:
        raise AdntnError(
            f"{side}_factors has {len(fs)} factors but {k} are needed (one output and one input factor per leaf)"
        )
    if any(not isinstance(f, int) or f < 1 for f in fs):
        raise AdntnError(f"{side}_factors must be positive integers, got {fs}")
    if math.prod(fs) < dim:
        raise AdntnError(
            f"{side}_factors {fs} multiply to {math.prod(fs)} < {side}_features {dim}; "
            f"give factors whose product is at least {dim}"
        )
    return fs


def best_factors(n: int, k: int) -> tuple[int, ...]:
    """``k`` factors (largest first) of ``n`` or of a slightly larger, better-factoring number.

    The score is the sum of the factors (a proxy for the leaf cores' size) times the squared padding ratio
    (and 10% more for any padding),
    so 4096 -> (8, 8, 8, 8), 25088 -> (8, 8, 8, 7, 7) and a prime such as 4099 is padded to 4116 =
    (12, 7, 7, 7) instead of keeping a leg of 4099.
    """
    best: tuple[float, int, tuple[int, ...]] | None = None
    for m in range(n, math.floor(n * (1 + _MAX_PAD)) + 1):
        if m != n and not _smooth(m):
            continue
        fs = _balanced(m, k)
        score = (sum(fs) * (m / n) ** 2 * (1.0 if m == n else _PAD_PENALTY), m, fs)
        if best is None or score[:2] < best[:2]:
            best = score
    assert best is not None
    return best[2]


def _smooth(m: int) -> bool:
    for p in _SMALL_PRIMES:
        while m % p == 0:
            m //= p
    return m == 1


@lru_cache(maxsize=4096)
def _balanced(m: int, k: int) -> tuple[int, ...]:
    """``k`` factors of ``m`` minimising the largest, then the sum; largest first."""
    if k == 1:
        return (m,)
    best: tuple[int, ...] | None = None
    target = m ** (1.0 / k)
    for d in _divisors(m):
        if d > target * 1.0000001 and best is not None:
            break
        rest = _balanced(m // d, k - 1)
        cand = tuple(sorted((d, *rest), reverse=True))
        if best is None or (cand[0], sum(cand)) < (best[0], sum(best)):
            best = cand
    assert best is not None
    return best


@lru_cache(maxsize=4096)
def _divisors(m: int) -> tuple[int, ...]:
    small = [d for d in range(1, math.isqrt(m) + 1) if m % d == 0]
    return tuple(sorted(set(small) | {m // d for d in small}))
