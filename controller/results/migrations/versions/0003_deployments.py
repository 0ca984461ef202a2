"""Deployments: one row per deploy or rollback of a bundle on a board (``edgefarm deploy``), and
each reading of the release a board really runs (``release_readings``, for drift).

New tables, nothing else changes: databases written before them keep every row and gain empty
``deployments`` and ``release_readings`` tables.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("board", sa.String(64), nullable=False),
        sa.Column("bundle_id", sa.String(16), nullable=False),
        sa.Column("previous_bundle_id", sa.String(16), nullable=True),
        sa.Column("chip", sa.String(128), nullable=False),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("smoke", sa.JSON(), nullable=True),
        sa.Column("canary", sa.Boolean(), nullable=False),
        sa.Column("serve_port", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_deployments_board", "deployments", ["board"])
    op.create_table(
        "release_readings",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("board", sa.String(64), nullable=False),
        sa.Column("release", sa.String(16), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("read_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_release_readings_board", "release_readings", ["board"])


def downgrade() -> None:
    op.drop_index("ix_release_readings_board", table_name="release_readings")
    op.drop_table("release_readings")
    op.drop_index("ix_deployments_board", table_name="deployments")
    op.drop_table("deployments")
