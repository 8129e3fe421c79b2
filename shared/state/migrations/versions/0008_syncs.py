"""scheduled syncs

Revision ID: 0008_syncs
Revises: 0004_state
Create Date: 2026-11-27 21:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import shared.db

revision = "0008_syncs"
down_revision = "0005_admin"
branch_labels = None
depends_on = None


def upgrade() -> None:
    when = shared.db.UTCDateTime(timezone=True)
    op.create_table(
        "dbsync_syncs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("connection_id", sa.Uuid(), nullable=False),
        sa.Column("tables", sa.JSON(), nullable=False),
        sa.Column("all_tables", sa.Boolean(), nullable=False),
        sa.Column("every_seconds", sa.Integer(), nullable=False),
        sa.Column("strategy", sa.String(length=20), nullable=False),
        sa.Column("mode", sa.String(length=10), nullable=False),
        sa.Column("mirror_deletes", sa.Boolean(), nullable=False),
        sa.Column("cursor_column", sa.String(length=255), nullable=True),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("next_run_at", when, nullable=False),
        sa.Column("last_transfer_id", sa.Uuid(), nullable=True),
        sa.Column("last_run_at", when, nullable=True),
        sa.Column("last_status", sa.String(length=20), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("runs", sa.Integer(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.Column("updated_at", when, nullable=False),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["dbsync_connections.id"],
            name=op.f("fk_dbsync_syncs_connection_id_dbsync_connections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dbsync_syncs")),
    )
    with op.batch_alter_table("dbsync_syncs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_dbsync_syncs_connection_id"), ["connection_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_dbsync_syncs_next_run_at"), ["next_run_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("dbsync_syncs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dbsync_syncs_next_run_at"))
        batch_op.drop_index(batch_op.f("ix_dbsync_syncs_connection_id"))
    op.drop_table("dbsync_syncs")
