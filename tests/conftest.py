"""Fixtures shared by every test: real PostgreSQL databases and a site around them."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from falcon import testing
from sqlalchemy import text

from api.app import create_app
from shared.context import Site
from shared.db import Database
from shared.dispatch import DeferredDispatcher
from shared.settings import Settings
from shared.state.migrate import upgrade
from shared.state.models import Base
from tests.pg import SITE_URL, create_database, drop_database


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """One migrated PostgreSQL database for the session's integration tests."""
    name = f"dbsync_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = create_database(name)
    upgrade(url)
    yield url
    drop_database(name)


def make_settings(database_url: str, **overrides: str) -> Settings:
    env = {
        "SYNC_DATABASE_URL": database_url,
        "SYNC_SITE_URL": SITE_URL,
        "SYNC_ALLOW_PRIVATE_URLS": "true",
        "SYNC_HOME": "/tmp/dbsync-test-home",
    }
    env.update(overrides)
    return Settings.from_env(env)


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
