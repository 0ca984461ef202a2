"""Repeated jobs and judged jobs: what the regression and selection statistics need.

- ``jobs.purpose``: ``measure`` (the run's own job), ``confirm`` (nightly measuring a suspected
  regression again in the same night) or ``round`` (a finalist re-measured in interleaved rounds
  for selection); ``jobs.repeat_of`` names the job a repeat measures again.
- ``jobs.verdict``: what nightly judged the job (regression, noise, unchanged, ...); a job judged a
  confirmed regression is not a "good run" and never enters a later baseline.
- ``runs.edgefarm_version``: the release that ran it, one of the causes a regression can name.

Existing rows keep their figures: old jobs are ``measure`` jobs with no verdict.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMNs: no table rebuild on SQLite. ``repeat_of`` holds a job id of the same run;
    # it has no foreign key because SQLite cannot add one in place.
    op.add_column("jobs", sa.Column("purpose", sa.String(16), nullable=False, server_default="measure"))
    op.add_column("jobs", sa.Column("repeat_of", sa.Integer(), nullable=True))
    op.add_column("jobs", sa.Column("verdict", sa.String(24), nullable=True))
    op.add_column("runs", sa.Column("edgefarm_version", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("edgefarm_version")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("verdict")
        batch.drop_column("repeat_of")
        batch.drop_column("purpose")
