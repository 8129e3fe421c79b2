"""Every common type, pulled from one site into an empty other, row for row."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine

from tests.datasets import EVERYTHING
from tests.e2e.conftest import SiteProcesses, field, pair
from tests.e2e.test_pulls import FAST, checksum, pull
from tests.helpers import as_text

pytestmark = pytest.mark.e2e

JSONISH = {"c_json", "c_jsonb"}


def rows_as_text(site: SiteProcesses, table: str) -> list[tuple]:
    """Each value as PostgreSQL prints it, under fixed session settings."""
    engine = create_engine(site.db_url)
    try:
        return as_text(engine, table, jsonish=JSONISH)
    finally:
        engine.dispose()


@FAST
@pytest.mark.parametrize("target", ["created", "prepared"])
def test_every_type_round_trips_between_two_sites(two_sites, target: str) -> None:
    sender, receiver = two_sites
    sender.sql(EVERYTHING)
    if target == "prepared":
        # The receiver already has the same table (enum included).
        receiver.sql(EVERYTHING.split("INSERT INTO")[0])
    pair(sender, receiver)
    data = pull(receiver, "everything", "--create-missing")
    assert (data["records_created"], data["records_failed"]) == (5, 0)
    assert rows_as_text(receiver, "everything") == rows_as_text(sender, "everything")
    assert checksum(receiver, "everything") == checksum(sender, "everything")
    assert field(receiver, "status") == "active"
