"""Fixtures shared by every test: real PostgreSQL databases and a site around them."""

from __future__ import annotations

import os
import uuid
from typing import Iterator

import pytest
from falcon import testing
from sqlalchemy import create_engine, text

from api.app import create_app
from shared.context import Site
from shared.db import Database
from shared.dispatch import DeferredDispatcher
from shared.migrate import upgrade
from shared.models import Base
from shared.settings import Settings

PG_ADMIN_URL = os.environ.get(
    "SYNC_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("SYNC_TEST_REDIS_URL", "redis://127.0.0.1:6379")
SITE_URL = "http://127.0.0.1:18999"


def pg_url(name: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def create_database(name: str) -> str:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return pg_url(name)


def drop_database(name: str) -> None:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


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
