"""beat heartbeats

Revision ID: 0003_beat
Revises: 0002
Create Date: 2026-11-27 15:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import shared.db

revision = "0003_beat"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dbsync_beat_heartbeats",
        sa.Column("job", sa.String(length=64), nullable=False),
        sa.Column("last_run_at", shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("runs", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("job", name=op.f("pk_dbsync_beat_heartbeats")),
    )


def downgrade() -> None:
    op.drop_table("dbsync_beat_heartbeats")
