"""Each job records the chip its board was declared as, and the board's fingerprint, when it ran.

Before this revision the chip lived only on ``boards``, one row per board that every run
overwrote, and selection grouped history by it: a run with a typo in a board's ``chip:`` moved
every stored result of that board under the misspelled name. From here on the chip is part of
the job, like its engine and options, and ``boards.chip`` is only what the board is declared as
now.

Jobs stored before this revision get the only chip there is for them, their board's current one,
and the fingerprint their result recorded (else the board's last known one).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("chip", sa.String(128), nullable=True))
    op.add_column("jobs", sa.Column("fingerprint", sa.JSON(), nullable=True))
    jobs = sa.table("jobs", sa.column("id"), sa.column("board_id"), sa.column("chip"),
                    sa.column("fingerprint", sa.JSON()))
    boards = sa.table("boards", sa.column("id"), sa.column("chip"), sa.column("fingerprint", sa.JSON()))
    results = sa.table("results", sa.column("job_id"), sa.column("fingerprint", sa.JSON()))
    board_of_job = sa.select(boards.c.chip).where(boards.c.id == jobs.c.board_id).scalar_subquery()
    op.execute(jobs.update().values(chip=sa.func.coalesce(board_of_job, "unknown")))
    op.execute(jobs.update().values(fingerprint=sa.func.coalesce(
        sa.select(results.c.fingerprint).where(results.c.job_id == jobs.c.id).scalar_subquery(),
        sa.select(boards.c.fingerprint).where(boards.c.id == jobs.c.board_id).scalar_subquery(),
    )))
    # SQLite cannot alter a column in place: batch mode copies the table (foreign keys are off
    # while it runs, see controller.results.database._upgrade).
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("chip", existing_type=sa.String(128), nullable=False)
        batch.create_index("ix_jobs_chip", ["chip"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_chip")
        batch.drop_column("fingerprint")
        batch.drop_column("chip")
