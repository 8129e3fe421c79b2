"""Create engines and sessions for the service's own state and the data database."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import DateTime, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import TypeDecorator


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse_uuid(value: object) -> uuid.UUID | None:
    """The UUID an operator typed, or None when it is not one."""
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Store aware UTC timestamps on every engine and always read them back aware.

    SQLite has no time zone support and returns naive values; this keeps
    comparisons with ``utcnow()`` correct on both engines.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class _NoRowEcho(logging.Filter):
    """Drop SQLAlchemy's DEBUG row echo: rows may hold token hashes and payloads."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (
            record.levelno <= logging.DEBUG and msg.startswith(("Row ", "Col "))
        )


logging.getLogger("sqlalchemy.engine.Engine").addFilter(_NoRowEcho())


def make_engine(url: str, **kwargs: object) -> Engine:
    """Build an engine; SQLite gets WAL and a busy timeout so processes share it.

    Parameters are hidden from logs and error texts: they include token hashes.
    """
    kwargs.setdefault("hide_parameters", True)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


class Database:
    """Own the state engine, the data engine and the session factory of one site."""

    def __init__(
        self,
        database_url: str,
        data_database_url: str | None = None,
        **engine_options: object,
    ) -> None:
        self.engine = make_engine(database_url, **engine_options)
        if data_database_url and data_database_url != database_url:
            self.data_engine = make_engine(data_database_url, **engine_options)
        else:
            self.data_engine = self.engine
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One unit of work: commit on success, roll back on error, always close."""
        session = self.sessionmaker()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self, close: bool = True) -> None:
        self.engine.dispose(close=close)
        if self.data_engine is not self.engine:
            self.data_engine.dispose(close=close)


def after_commit(session: Session, fn) -> None:
    """Run ``fn`` once the session's current transaction has committed.

    Work for a worker is enqueued from here, never earlier, so the worker always
    finds the rows it was told about.
    """
    session.info.setdefault("after_commit", []).append(fn)


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    for fn in session.info.pop("after_commit", []):
        fn()


@event.listens_for(Session, "after_rollback")
def _drop_after_commit(session: Session) -> None:
    session.info.pop("after_commit", None)
