"""Alembic environment: runs against the URL the caller put in the config."""

from __future__ import annotations

from alembic import context
from sqlalchemy import pool

from shared.db import make_engine
from shared.state.models import Base

config = context.config
target_metadata = Base.metadata


def include_name(name, type_, parent_names):
    """Only ever compare our own tables: the data database may share this one."""
    if type_ == "table":
        return name in target_metadata.tables
    return True


def migrate(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        include_name=include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        migrate(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("alembic: no sqlalchemy.url to migrate")
    engine = make_engine(url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        migrate(conn)
    engine.dispose()


run_migrations_online()
