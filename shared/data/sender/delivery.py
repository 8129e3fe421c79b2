"""A pull-data answer on its way to the receiver, and what happens when it does not arrive.

The page's counts (the connection's records and downloads, the pull's
``send`` transfer and the cursor its next page is free to start after) are
committed before the answer is written, as a served page's are. If the
answer is not written whole (the client stopped reading and the server cut
it after ``SYNC_STREAM_STALL_SECONDS``, the connection broke, the COPY behind
it failed), ``undeliver`` takes this page off those counts again: the
receiver keeps nothing of a cut page and asks for it again from its
checkpoint, and that request is the same free next page it would have been.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from shared.data.sender.streams import StreamSlot
from shared.db import utcnow
from shared.state.models import Connection, Transfer

log = logging.getLogger("dbsync.delivery")

# The fingerprints handlers keep on a pull's transfer: of the cursor its next
# page starts after, and of where its last page started (a retry of it).
NEXT_KEY = "next_cursor_sha256"
AFTER_KEY = "after_cursor_sha256"
JSON_SLICE = 256 * 1024  # a JSON answer is handed to the server in slices


@dataclass(frozen=True)
class PageReceipt:
    """What serving one page added to the counts."""

    connection_id: uuid.UUID
    transfer_id: uuid.UUID
    records: int
    new_download: bool
    transfer_created: bool
    pages_after: int  # the transfer's page count once this page was recorded
    prior_next_key: str | None  # the free next cursor before this page
    prior_after_key: str | None  # where the pull's last page started, before this one
    completed: bool  # this page completed the transfer


@dataclass
class Served:
    """A page ready to go: a JSON answer (dict) or a copy_out.CopyPage, its
    receipt and the pull-data slot it holds."""

    answer: Any
    receipt: PageReceipt
    slot: StreamSlot

    def abandon(self) -> None:
        """Nothing of it will be written: free what it holds (counts roll back
        with the request's transaction)."""
        try:
            close = getattr(self.answer, "close", None)
            if close is not None:
                close()
        finally:
            self.slot.release()


class Delivery:
    """The answer's body as the server iterates it; on close, settle the page.

    Delivered means every chunk was handed over and ``write_failed()`` (the
    server's word on its writes; gunicorn's closing chunk included, since the
    server closes the body after it) says none failed. Otherwise the page is
    taken off the counts. The slot is released either way.
    """

    def __init__(
        self,
        served: Served,
        chunks: Iterator[bytes],
        engine: Engine,
        write_failed: Callable[[], bool],
    ) -> None:
        self._served = served
        self._chunks = chunks
        self._engine = engine
        self._write_failed = write_failed
        self._exhausted = False
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self._exhausted = True
            raise
        self._served.slot.renew()
        return chunk

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        served = self._served
        try:
            close = getattr(served.answer, "close", None)
            if close is not None:
                close()
            delivered = self._exhausted and not self._write_failed()
            if not delivered:
                undeliver(self._engine, served.receipt)
        finally:
            served.slot.release()


def json_chunks(body: bytes) -> Iterator[bytes]:
    for start in range(0, len(body), JSON_SLICE):
        yield body[start : start + JSON_SLICE]


def undeliver(engine: Engine, receipt: PageReceipt) -> None:
    """Take a page that did not reach the receiver off every count it added."""
    try:
        with Session(engine) as session, session.begin():
            _undeliver(session, receipt)
    except Exception:
        log.exception("could not take an undelivered page off the counts")
        return
    log.warning(
        "pull-data page of %s rows not delivered (transfer %s); not counted",
        receipt.records,
        receipt.transfer_id,
    )


def _undeliver(session: Session, receipt: PageReceipt) -> None:
    # The transfer's row is locked before the connection's, in the order a
    # page being served takes them (handlers: the pull's transfer, then the
    # connection), so the two never wait on each other.
    stmt = select(Transfer).where(Transfer.id == receipt.transfer_id)
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    transfer = session.scalar(stmt)
    values: dict[str, Any] = {
        "records_downloaded": Connection.records_downloaded - receipt.records,
        "total_records_transferred": Connection.total_records_transferred
        - receipt.records,
    }
    if receipt.new_download:
        values["downloads_used"] = Connection.downloads_used - 1
        values["total_transfers"] = Connection.total_transfers - 1
    session.execute(
        update(Connection)
        .where(Connection.id == receipt.connection_id)
        .values(**values)
    )
    if transfer is None:
        return
    transfer.records_transferred -= receipt.records
    meta = dict(transfer.meta or {})
    pages = int(meta.get("pages", 0))
    meta["pages"] = max(0, pages - 1)
    if pages == receipt.pages_after:
        # No page of this pull was served since: its next free cursor is again
        # the one before this page, and a last page that was cut leaves the
        # pull in progress.
        for key, prior in (
            (NEXT_KEY, receipt.prior_next_key),
            (AFTER_KEY, receipt.prior_after_key),
        ):
            meta.pop(key, None)
            if prior is not None:
                meta[key] = prior
        if receipt.completed and transfer.status == "completed":
            transfer.status = "in_progress"
            transfer.completed_at = None
    if receipt.transfer_created and meta["pages"] == 0:
        # The pull's only page never arrived; a new pull starts afresh.
        transfer.status = "failed"
        transfer.error_message = "Page not delivered: the receiver stopped reading"
        transfer.completed_at = utcnow()
    transfer.meta = meta
