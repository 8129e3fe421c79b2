"""The data endpoints' fixture: their small tables, made by name, dropped after."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from shared.context import Site
from tests.datasets import DATA_ENDPOINT_TABLES


@pytest.fixture
def tables(site: Site) -> Iterator[Callable[..., None]]:
    """Create data tables by name; every table these tests know is dropped after."""

    def make(*names: str) -> None:
        with site.db.data_engine.begin() as conn:
            for name in names:
                conn.exec_driver_sql(DATA_ENDPOINT_TABLES[name])

    drop = ", ".join(DATA_ENDPOINT_TABLES)
    with site.db.data_engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {drop} CASCADE")
    yield make
    with site.db.data_engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {drop} CASCADE")
