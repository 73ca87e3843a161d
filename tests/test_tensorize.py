import math

import pytest

from adntn import AdntnError, tensorize
from adntn.tensorize import best_factors


@pytest.mark.parametrize(("n", "k", "expected"), [(4096, 4, (8, 8, 8, 8)), (25088, 5, (8, 8, 8, 7, 7))])
def test_the_issue_examples_factor_exactly(n, k, expected):
    assert best_factors(n, k) == expected


def test_default_leg_count_follows_the_larger_dimension():
    t = tensorize(4096, 25088)
    assert len(t.out_factors) == len(t.in_factors) == 5
    assert t.in_factors == (8, 8, 8, 7, 7)
    assert math.prod(t.out_factors) == 4096 and t.waste == 0


def test_a_prime_is_padded_with_small_reported_waste():
    t = tensorize(4099, 64, n_factors=4)
    assert math.prod(t.out_factors) >= 4099
    assert max(t.out_factors) < 20  # no leg of size 4099
    assert 0 < t.waste < 0.25
    assert t.out_padded == math.prod(t.out_factors)


def test_exact_factorisation_wins_over_marginal_padding():
    assert math.prod(best_factors(128, 2)) == 128
    assert math.prod(best_factors(10, 4)) == 10


def test_user_factors_pad_and_group():
    t = tensorize(100, 12, out_factors=(4, 4, 7), in_factors=(2, 2, 3), grouping="single")
    assert t.out_padded == 112 and t.in_padded == 12
    assert t.leaves == (("o0",), ("i0",), ("o1",), ("i1",), ("o2",), ("i2",))
    assert tensorize(16, 16, n_factors=2).leaves == (("o0", "i0"), ("o1", "i1"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"out_factors": (4, 4)}, "multiply to 16 < out_features 100"),
        ({"out_factors": (10, 10), "in_factors": (2, 2, 3)}, "has 3 factors but 2"),
        ({"out_factors": (10, 0, 10)}, "positive integers"),
        ({"grouping": "triple"}, "unknown leaf grouping"),
        ({"n_factors": 0}, "n_factors must be a positive integer"),
    ],
)
def test_bad_factorisations_raise_one_clear_error(kwargs, message):
    with pytest.raises(AdntnError, match=message):
        tensorize(100, 12, **kwargs)
    assert issubclass(AdntnError, ValueError)
