"""admin console: the operator's password and the key its sessions are signed with

Revision ID: 0005_admin
Revises: 0004_state
Create Date: 2026-11-27 21:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import shared.db

revision = "0005_admin"
down_revision = "0007_peer"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dbsync_admin",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=True),
        sa.Column("session_key", sa.String(length=64), nullable=False),
        sa.Column("updated_at", shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dbsync_admin")),
    )


def downgrade() -> None:
    op.drop_table("dbsync_admin")
