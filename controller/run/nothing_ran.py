"""A run in which no job could run: every board skipped (unreachable, failing its health check,
quarantined), or none given a job. ``edgefarm run`` and ``nightly`` exit non-zero on it, since a
cron job reads exit 0 as "measured and fine"; a job that ran and failed is a stored result, not this.
"""

from __future__ import annotations

from controller.run.execute import RunOutcome


def why_nothing_ran(outcome: RunOutcome) -> str | None:
    """Why no job of the run could run, in one line; None when one did (or all were stored before)."""
    if outcome.ok + outcome.failed + outcome.resumed > 0:
        return None
    if not outcome.skipped:
        return "no job could run: no board was given one (the inventory allows none of the spec's engines on its boards)"
    boards = "; ".join(f"board {name} skipped: {why}" for name, why in sorted(outcome.skipped.items()))
    return f"no job could run: {boards}"
