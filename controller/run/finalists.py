"""Selection's finalists re-measured in interleaved rounds (being written).

``finalist_rounds(spec)`` is a follow-up for ``controller.run.execute``: it returns the repeats to
measure, and [] once they are measured.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from controller.config.spec import Spec
from controller.run.planning import Planned
from controller.run.repeats import FollowUp, Repeat


def finalist_rounds(spec: Spec) -> FollowUp:
    def follow_up(db: Session, run_id: int, plan: list[Planned]) -> list[Repeat]:
        return []

    return follow_up
