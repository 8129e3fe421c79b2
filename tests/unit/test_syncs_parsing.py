"""``--every`` intervals and the merging of adjacent delta ranges."""

from __future__ import annotations

import pytest

from shared.data.receiver import delta, syncs
from shared.errors import SyncError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("30s", 30), ("15m", 900), ("2h", 7200), ("1d", 86400), (" 5s ", 5)],
)
def test_every_takes_a_number_and_a_unit(text: str, seconds: int) -> None:
    assert syncs.parse_every(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "5x", "-5s", "1.5m", "m", "5 m 3"])
def test_a_bad_interval_is_a_clear_error(text: str) -> None:
    with pytest.raises(SyncError) as caught:
        syncs.parse_every(text)
    assert caught.value.message in (
        "--every takes a number with s, m, h or d (15m)",
        "--every must be at least 1 second",
    )


def test_adjacent_ranges_merge_and_gaps_stay() -> None:
    leaves = [(None, [10]), ([10], [20]), ([30], [40]), ([40], None)]
    assert delta.merge(leaves) == [(None, [20]), ([30], None)]
    assert delta.merge([]) == []


def test_leaves_are_grouped_by_rows_and_by_ranges_for_one_rows_call() -> None:
    many = [([i], [i + 1]) for i in range(0, 2500, 2)]  # 1,250 apart, 1 row each
    counts = {delta._range_key(r): 1 for r in many}
    groups = delta._chunks(many, counts)
    assert [len(g) for g in groups] == [1000, 250]
    big = [([i], [i + 1]) for i in range(0, 6, 2)]
    groups = delta._chunks(big, {delta._range_key(r): 20_000 for r in big})
    assert [len(g) for g in groups] == [1, 1, 1]
