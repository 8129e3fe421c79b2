"""Write audit events for lifecycle changes; never a secret in them."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from shared.state.models import AuditEvent, Connection

log = logging.getLogger("dbsync.audit")


def record(
    session: Session,
    actor: str,
    action: str,
    conn: Connection | None,
    reason: str | None = None,
    **details: Any,
) -> None:
    session.add(
        AuditEvent(
            actor=actor,
            action=action,
            connection_id=conn.id if conn is not None else None,
            connection_name=conn.name if conn is not None else None,
            reason=reason,
            details=details,
        )
    )
    log.info(
        "audit action=%s actor=%s connection=%s status=%s",
        action,
        actor,
        conn.id if conn is not None else "-",
        conn.status if conn is not None else "-",
    )
