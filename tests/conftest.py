"""Fixtures shared by every test: scratch PostgreSQL databases and a site around them.

Every database a test needs comes from one factory, ScratchDatabases
(tests/helpers.py), at the scope the test needs: `scratch_db_factory` per test,
`module_db_factory` per module, `session_db_factory` per session. Each makes
uniquely named databases on the test server and drops them at its teardown.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from falcon import testing
from sqlalchemy import text

from api.app import create_app
from shared.context import Site
from shared.db import Database
from shared.dispatch import DeferredDispatcher
from shared.state.models import Base
from tests.helpers import ScratchDatabases, make_settings


def _databases() -> Iterator[ScratchDatabases]:
    with ScratchDatabases() as databases:
        yield databases


@pytest.fixture
def scratch_db_factory() -> Iterator[ScratchDatabases]:
    """Databases that live for one test."""
    yield from _databases()


@pytest.fixture(scope="module")
def module_db_factory() -> Iterator[ScratchDatabases]:
    """Databases that live for one module (its tests empty them as they need)."""
    yield from _databases()


@pytest.fixture(scope="session")
def session_db_factory() -> Iterator[ScratchDatabases]:
    """Databases that live for the whole session."""
    yield from _databases()


@pytest.fixture(scope="session")
def pg_database(session_db_factory: ScratchDatabases) -> str:
    """One migrated PostgreSQL database for the session's integration tests."""
    return session_db_factory.create("site", migrate=True)


@pytest.fixture
def settings_env() -> dict[str, str]:
    """Extra SYNC_* variables a test wants for its site (set before `site` is built)."""
    return {}


@pytest.fixture
def site(pg_database: str, settings_env: dict[str, str]) -> Iterator[Site]:
    """A site on the session database, emptied before each test."""
    settings = make_settings(pg_database, **settings_env)
    db = Database(settings.database_url, settings.data_database_url)
    with db.engine.begin() as conn:
        names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    yield Site(settings, db, DeferredDispatcher())
    db.dispose()


@pytest.fixture
def client(site: Site) -> testing.TestClient:
    return testing.TestClient(create_app(site))
