"""Apply a pulled page to its table: the one writer every pull goes through.

A page is JSON rows or COPY data (shared.data.receiver.pages); the writer
picks the way for this site's data database: COPY into PostgreSQL
(shared.data.receiver.copy_in, through bulk_in for COPY data), one
executemany upsert on SQLite (shared.data.receiver.sqlite_writer). It runs
inside the caller's transaction (the caller advances its checkpoint in the
same one) and never commits. The counts it returns are exact:
``created + updated + skipped + failed`` is the page's row count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any

from sqlalchemy import Connection

from shared.data.receiver import bulk_in, sqlite_writer
from shared.data.receiver import copy_in as copyin
from shared.data.receiver.pages import BulkPage, Page, PageResult, choose_columns
from shared.data.schema import TableInfo
from shared.state.models import STRATEGIES


class Writes(set[int]):
    """Ids of the transactions that wrote a table's rows (PostgreSQL).

    ``subtransactions``: some rows may carry the id of a savepoint inside
    one of them instead, which this set does not hold.
    """

    subtransactions: bool = False


class Writer:
    """Apply pages to one table with one conflict strategy."""

    def __init__(self, info: TableInfo, strategy: str) -> None:
        self.info = info
        self.strategy = strategy
        # Ids of the transactions that wrote here (PostgreSQL), for the next
        # delta run to tell this site's own writes from local changes.
        self.txids = Writes()

    def apply(
        self, conn: Connection, page: Page, *, direct: bool = False
    ) -> PageResult:
        """Write ``page`` in ``conn``'s transaction; its exact counts.

        ``direct`` (PostgreSQL) copies straight into a target expected to
        hold none of the page's keys. Raises ImportRefused when the page
        cannot apply to this table at all; Rejected (PostgreSQL) when COPY
        data could not be applied as asked and the page must be fetched
        again; BrokeOff when a COPY body falls short of its count.
        """
        if conn.dialect.name == "postgresql":
            self.txids.add(
                int(
                    conn.exec_driver_sql(
                        "SELECT pg_current_xact_id()::text"
                    ).scalar_one()
                )
            )
        if not (isinstance(page, BulkPage) and direct):
            # Staged pages apply in a savepoint (copy_in.CopyApplier), and
            # direct JSON pages try one: only a direct COPY writes as the
            # transaction whose id is noted above.
            self.txids.subtransactions = True
        if isinstance(page, BulkPage):
            return bulk_in.apply_page(
                conn,
                self.info,
                page.incoming,
                page.body.iter_bytes(),
                self.strategy,
                direct=direct,
            )
        return import_page(conn, self.info, page.rows, self.strategy, direct=direct)


def import_page(
    conn: Connection,
    table_info: TableInfo,
    rows: Sequence[Mapping[str, Any]],
    strategy: str,
    *,
    direct: bool = False,
) -> PageResult:
    """Apply wire rows to ``table_info``'s table with a conflict strategy.

    Values are decoded by the target's own column kinds; incoming columns the
    target lacks (or computes itself) are ignored and listed once in
    ``ignored_columns``. Raises ImportRefused (AppendNotSupported for
    append) when the strategy cannot apply to this table at all, e.g. a
    table without a primary key. ``direct`` (PostgreSQL) copies straight
    into a target expected to hold none of the rows' keys.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown conflict strategy {strategy!r}")
    result = PageResult()
    incoming = dict.fromkeys(chain.from_iterable(rows))  # every name, first seen first
    columns, result.ignored_columns = choose_columns(
        table_info, list(incoming), strategy, check_keys=bool(rows)
    )
    if not rows:
        return result
    if conn.dialect.name == "postgresql":
        copyin.import_rows(
            conn, table_info, columns, rows, strategy, result, direct=direct
        )
    else:
        sqlite_writer.write_rows(conn, table_info, columns, rows, strategy, result)
    return result
