"""Read transfers for operators: status, counts, progress and errors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db import parse_uuid
from shared.errors import ErrorKind, SyncError
from shared.state.models import Transfer, TransferTable


def get(session: Session, transfer_id: str) -> Transfer:
    key = parse_uuid(transfer_id)
    transfer = session.get(Transfer, key) if key is not None else None
    if transfer is None:
        raise SyncError(ErrorKind.NOT_FOUND, f"No transfer {transfer_id}")
    return transfer


def newest(session: Session, limit: int) -> list[Transfer]:
    return list(
        session.scalars(
            select(Transfer).order_by(Transfer.created_at.desc()).limit(limit)
        )
    )


def describe(transfer: Transfer, with_tables: bool = True) -> dict[str, Any]:
    def iso(v):
        return v.isoformat() if v else None

    data: dict[str, Any] = {
        "id": str(transfer.id),
        "direction": transfer.direction,
        "connection": transfer.connection_name,
        "connection_id": str(transfer.connection_id)
        if transfer.connection_id
        else None,
        "remote_site_url": transfer.remote_site_url,
        "status": transfer.status,
        "strategy": transfer.conflict_strategy,
        "table_name": transfer.table_name,
        "records_expected": transfer.records_expected,
        "records_transferred": transfer.records_transferred,
        "records_created": transfer.records_created,
        "records_updated": transfer.records_updated,
        "records_skipped": transfer.records_skipped,
        "records_failed": transfer.records_failed,
        "rows_per_second": transfer.rows_per_second,
        "eta_seconds": transfer.eta_seconds,
        "error": transfer.error_message,
        "attempts": transfer.attempts,
        "created_at": iso(transfer.created_at),
        "started_at": iso(transfer.started_at),
        "completed_at": iso(transfer.completed_at),
        "mode": (transfer.meta or {}).get("mode"),
        "sync_id": (transfer.meta or {}).get("sync_id"),
        "verification": (transfer.meta or {}).get("verification"),
        "delta": (transfer.meta or {}).get("delta"),
        "cursor": (transfer.meta or {}).get("cursor"),
        "drift": (transfer.meta or {}).get("drift"),
    }
    if with_tables:
        session = Session.object_session(transfer)
        rows: Sequence[TransferTable] = (
            session.scalars(
                select(TransferTable)
                .where(TransferTable.transfer_id == transfer.id)
                .order_by(TransferTable.position)
            ).all()
            if session
            else []
        )
        data["tables"] = [
            {
                "table": t.table_name,
                "status": t.status,
                "rows_expected": t.rows_expected,
                "rows_done": t.rows_done,
                "pages": t.pages_done,
                "created": t.created,
                "updated": t.updated,
                "skipped": t.skipped,
                "failed": t.failed,
                "errors": t.errors or [],
            }
            for t in rows
        ]
    return data
