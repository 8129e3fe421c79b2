"""Read and change the site's switches: enabled, incoming mode, incoming password."""

from __future__ import annotations

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shared.errors import ErrorKind, SyncError
from shared.security import hash_password
from shared.state.models import INCOMING_MODES, ModuleSettings


def get(session: Session) -> ModuleSettings:
    row = session.get(ModuleSettings, 1)
    if row is None:
        # The first requests of a fresh site may come at once (threads of one
        # web process): whoever inserts first wins, the others read its row.
        defaults = {"id": 1, "enabled": False, "incoming_mode": "require_approval"}
        dialect = session.bind.dialect.name if session.bind is not None else ""
        if dialect in ("postgresql", "sqlite"):
            insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            session.execute(
                insert(ModuleSettings)
                .values(**defaults)
                .on_conflict_do_nothing(index_elements=[ModuleSettings.id])
            )
            row = session.get(ModuleSettings, 1)
        if row is None:
            row = ModuleSettings(**defaults)
            session.add(row)
            session.flush()
    return row


def status_body(row: ModuleSettings) -> dict[str, object]:
    return {
        "success": True,
        "enabled": row.enabled,
        "incoming_mode": row.incoming_mode,
        "password_required": row.incoming_mode == "require_password",
        "accepting_connections": row.enabled and row.incoming_mode != "deny_all",
        "protocol": 1,
    }


def set_mode(session: Session, mode: str) -> ModuleSettings:
    if mode not in INCOMING_MODES:
        raise SyncError(
            ErrorKind.BAD_REQUEST,
            f"incoming_mode must be one of {', '.join(INCOMING_MODES)}",
        )
    row = get(session)
    row.incoming_mode = mode
    return row


def set_password(session: Session, password: str) -> ModuleSettings:
    row = get(session)
    row.incoming_password_hash = hash_password(password) if password else None
    return row
