"""Pull checkpoints, kept in the *data* database beside the rows they describe.

A page and its checkpoint commit in one transaction of the data database, so a
worker killed at any instant resumes with no row lost or doubled, even when the
service's own state lives in another database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    select,
)

CHECKPOINT_TABLE = "dbsync_pull_checkpoints"
_metadata = MetaData()
checkpoints = Table(
    CHECKPOINT_TABLE,
    _metadata,
    Column("transfer_id", String(36), primary_key=True),
    Column("table_name", String(255), primary_key=True),
    Column("cursor", JSON),
    Column("done", Boolean, nullable=False, default=False),
    Column("pages", Integer, nullable=False, default=0),
    Column("rows_done", BigInteger, nullable=False, default=0),
    Column("created", BigInteger, nullable=False, default=0),
    Column("updated", BigInteger, nullable=False, default=0),
    Column("skipped", BigInteger, nullable=False, default=0),
    Column("failed", BigInteger, nullable=False, default=0),
    Column("bytes_done", BigInteger, nullable=False, default=0),
    Column("errors", JSON, nullable=False, default=list),
)

MAX_KEPT_ERRORS = 100


@dataclass
class Checkpoint:
    transfer_id: str
    table_name: str
    cursor: Any = None
    done: bool = False
    pages: int = 0
    rows_done: int = 0
    created: int = 0
    updated: int = 0
    skipped: int = 0
    failed: int = 0
    bytes_done: int = 0
    errors: list[Any] = field(default_factory=list)
    stored: bool = False


def ensure_table(engine: Engine) -> None:
    _metadata.create_all(engine, checkfirst=True)


def load(conn: Connection | Engine, transfer_id: str, table_name: str) -> Checkpoint:
    stmt = select(checkpoints).where(
        checkpoints.c.transfer_id == transfer_id, checkpoints.c.table_name == table_name
    )
    if isinstance(conn, Engine):
        with conn.connect() as c:
            row = c.execute(stmt).mappings().first()
    else:
        row = conn.execute(stmt).mappings().first()
    if row is None:
        return Checkpoint(transfer_id, table_name)
    return Checkpoint(**{**dict(row), "errors": list(row["errors"] or [])}, stored=True)


def save(conn: Connection, cp: Checkpoint) -> None:
    """Write the checkpoint inside the caller's (page) transaction."""
    values = {
        "cursor": cp.cursor,
        "done": cp.done,
        "pages": cp.pages,
        "rows_done": cp.rows_done,
        "created": cp.created,
        "updated": cp.updated,
        "skipped": cp.skipped,
        "failed": cp.failed,
        "bytes_done": cp.bytes_done,
        "errors": cp.errors[:MAX_KEPT_ERRORS],
    }
    if cp.stored:
        conn.execute(
            checkpoints.update()
            .where(
                checkpoints.c.transfer_id == cp.transfer_id,
                checkpoints.c.table_name == cp.table_name,
            )
            .values(**values)
        )
    else:
        conn.execute(
            checkpoints.insert().values(
                transfer_id=cp.transfer_id, table_name=cp.table_name, **values
            )
        )
        cp.stored = True
