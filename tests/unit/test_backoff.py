"""The one backoff: exponential, capped, jittered in its upper half, a hint a floor."""

from __future__ import annotations

import pytest

from shared.backoff import backoff


@pytest.mark.parametrize(
    ("attempts", "draw", "expected"),
    [
        (1, 0.0, 2.5),
        (1, 0.999, 4.9975),
        (3, 0.5, 15.0),
        (10, 0.0, 450.0),
        (0, 1.0, 5.0),
    ],
)
def test_backoff_doubles_up_to_the_cap_with_jitter(
    attempts: int, draw: float, expected: float
) -> None:
    assert backoff(attempts, 5, 900, rand=lambda: draw) == pytest.approx(expected)


def test_a_hint_is_a_floor_itself_capped() -> None:
    assert backoff(1, 5, 900, hint=120, rand=lambda: 0.0) == 120
    assert backoff(1, 5, 900, hint=5000, rand=lambda: 0.0) == 900
    assert backoff(5, 5, 900, hint=1, rand=lambda: 0.0) == 40
