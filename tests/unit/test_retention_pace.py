"""Retention's pacing: how long a cleanup rests after each batch."""

from __future__ import annotations

import pytest

from durable_trio._errors import InvalidInput
from durable_trio._retention import check_duty, rest_after


def test_a_batch_is_followed_by_enough_rest_for_its_duty() -> None:
    assert rest_after(0.04, 0.2) == pytest.approx(0.16)
    assert rest_after(0.04, 0.5) == pytest.approx(0.04)
    assert rest_after(0.04, 1.0) == 0


@pytest.mark.parametrize("duty", [0, -0.5, 1.01, float("nan"), float("inf"), True, "half"])
def test_a_duty_is_a_share_of_the_time(duty: object) -> None:
    with pytest.raises(InvalidInput, match="duty must be a number above 0 and at most 1"):
        check_duty(duty)
    assert check_duty(1) == 1.0
