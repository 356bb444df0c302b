"""The one check for numbers read from JSON: bools, NaN, infinities and ints too large for a
float (``math.isfinite(10**400)`` raises OverflowError) are not numbers."""

import math

from imaging_assist.jsonvalues import is_number, is_whole
from imaging_assist.validation.ood_spec import check_spec


def test_numbers_from_json():
    for v in (0, -3, 2.5, 1e300):
        assert is_number(v)
    for v in (True, False, None, "1", [1], float("nan"), math.inf, -math.inf, 10**400, -10**400, 1e308):
        assert not is_number(v), v
    assert is_number(0.5, 0, 1) and not is_number(1.5, 0, 1) and not is_number(-0.1, 0)
    assert is_whole(3) and is_whole(3.0) and not is_whole(3.5) and not is_whole(True) and not is_whole(10**400)


def test_a_card_ood_threshold_of_10_to_the_400_is_a_problem_not_an_overflow():
    problems = check_spec({"method": "mahalanobis", "threshold": 10**400})
    assert any("threshold" in p for p in problems)
