"""When a kept state may vouch for the rows changed since it (xmin)."""

from __future__ import annotations

from typing import Any

from shared.data.sender.changes import public, usable

SINCE = {"xid": 1_000, "node": "16384", "vacuums": 2, "autovacuums": 5}


def now(**over: Any) -> dict[str, Any]:
    base = {
        "xid": 1_500,
        "node": "16384",
        "vacuums": 2,
        "autovacuums": 5,
        "_xmax": 1_600,
        "_version": 150004,
        "_freeze_age": 50_000_000,
        "_freeze_option": False,
    }
    return {**base, **over}


def test_an_unchanged_table_vouches() -> None:
    assert usable(SINCE, now()) is True


def test_no_state_or_a_malformed_one_does_not() -> None:
    assert usable(None, now()) is False
    assert usable({"xid": "x", "node": "1"}, now()) is False
    assert usable({**SINCE, "vacuums": None}, now()) is False


def test_a_new_file_or_a_manual_vacuum_does_not() -> None:
    assert usable(SINCE, now(node="99999")) is False
    assert usable(SINCE, now(vacuums=3)) is False


def test_autovacuum_vouches_only_below_the_freeze_age_before_16() -> None:
    assert usable(SINCE, now(autovacuums=6)) is True
    assert usable(SINCE, now(autovacuums=6, _freeze_age=500)) is False
    assert usable(SINCE, now(autovacuums=6, _freeze_option=True)) is False
    assert usable(SINCE, now(autovacuums=6, _version=160000)) is False


def test_a_horizon_too_old_or_ahead_does_not() -> None:
    assert usable(SINCE, now(_xmax=1_000 + (1 << 30))) is False
    assert usable({**SINCE, "xid": 2_000}, now()) is False


def test_the_public_state_leaves_out_working_values() -> None:
    assert public(now()) == {
        "xid": 1_500,
        "node": "16384",
        "vacuums": 2,
        "autovacuums": 5,
    }
