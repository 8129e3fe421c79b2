"""Suspensions made before the upgrade keep their owner (migration 0004).

A peer may lift only a suspension it made; rows suspended by an earlier
version carry only a reason, so the migration reads the owner from it. One
the peer made stays the peer's; any other (the operator's, the module's,
verify's) becomes this site's, which the peer cannot lift.
"""

from __future__ import annotations

import uuid

from sqlalchemy import create_engine, text

from shared.state.migrate import upgrade
from tests.helpers import ScratchDatabases

REASONS = {
    "Suspended by the peer site": "peer",
    "DB Sync module disabled": "module",
    "Remote site reports connection not found": "verify",
    "caught exfiltrating": "operator",
}


def test_upgrade_records_who_suspended_each_connection(
    scratch_db_factory: ScratchDatabases,
) -> None:
    url = scratch_db_factory.create("state_migration")
    upgrade(url, "0003_beat")
    engine = create_engine(url)
    rows = {reason: uuid.uuid4() for reason in [*REASONS, "active one", "revoked one"]}
    try:
        with engine.begin() as conn:
            for n, (reason, conn_id) in enumerate(rows.items()):
                status = reason.split()[0] if reason.endswith(" one") else "suspended"
                conn.execute(
                    text(
                        "INSERT INTO dbsync_connections (id, name, direction,"
                        " site_url, auth_token_hash, status, allowed_tables,"
                        " excluded_tables, downloads_used, records_downloaded,"
                        " max_records_per_request, rate_limit_requests_per_minute,"
                        " ip_allowlist, default_conflict_strategy,"
                        " create_missing_tables, total_transfers,"
                        " total_records_transferred, total_bytes_transferred,"
                        " verify_not_found_count, metadata, created_at, updated_at,"
                        " suspended_reason)"
                        " VALUES (:id, 'c', 'sender', :url, :hash, :status, '[]',"
                        " '[]', 0, 0, 100, 60, '[]', 'skip', true, 0, 0, 0, 0,"
                        " '{}', now(), now(), :reason)"
                    ),
                    {
                        "id": conn_id,
                        "url": f"http://127.0.0.1:{20000 + n}",
                        "hash": f"{n:064x}",
                        "status": status,
                        "reason": None if status != "suspended" else reason,
                    },
                )
        upgrade(url)
        with engine.connect() as conn:
            found = dict(
                conn.execute(
                    text("SELECT id, suspended_by FROM dbsync_connections")
                ).all()
            )
            peer_signs = set(
                conn.execute(text("SELECT peer_signs FROM dbsync_connections"))
                .scalars()
                .all()
            )
    finally:
        engine.dispose()
    assert {reason: found[conn_id] for reason, conn_id in rows.items()} == {
        **REASONS,
        "active one": None,
        "revoked one": None,
    }
    # No connection made before signing existed is assumed to sign.
    assert peer_signs == {False}
