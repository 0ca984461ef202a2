"""Confirming a suspected regression the same night: nightly's follow-up for ``execute``.

After the night's own jobs, every benchmark that looks slower than its baseline (or fails where
it ran before) is measured again on the same board, one re-run at a time, up to
``regression.confirm`` times; the rule (``controller.results.regression``) judges each re-run
against the same baseline, and asks for no more once one does not reproduce the suspect. A
slowdown is re-measured for its latency alone (no accuracy, end-to-end or throughput stages: the
night's own job measured those); a failure is run as it was, so that it can happen again.

A job that never reached a board (its variant did not compile, its engine is missing) is not sent
again: that failure is the controller's own finding and would be the same.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from controller.config.spec import RegressionSpec
from controller.results import regression
from controller.results.store import Run
from controller.run.planning import Planned
from controller.run.repeats import FollowUp, Repeat


def confirmations(rules: RegressionSpec) -> FollowUp:
    def follow_up(db: Session, run_id: int, plan: list[Planned]) -> list[Repeat]:
        run = db.get(Run, run_id)
        assert run is not None, f"run {run_id} is not in the database"
        sent = {p.row_id: p for p in plan if p.failure is None}
        return [Repeat(of=sent[job_id], purpose="confirm", measure=measure)
                for job_id, measure in regression.to_confirm(db, run, rules) if job_id in sent]

    return follow_up
