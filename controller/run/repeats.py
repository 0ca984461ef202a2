"""Repeats: jobs measured again once a run's own jobs are done, asked for by follow-ups.

A nightly confirmation of a suspected regression and a selection finalist's interleaved round
are both repeats: each is a new job row naming the job it repeats (``jobs.repeat_of``) and why
(``jobs.purpose``), measured by ``controller.run.execute`` on the same boards with the same actors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from sqlalchemy.orm import Session

from controller.run.planning import Planned


@dataclass
class Repeat:
    """A job measured again once the run's own jobs are done: a nightly confirmation of a suspected
    regression, or a selection finalist's round. Each is a new job row naming the job it repeats."""

    of: Planned
    purpose: str  # confirm | round
    measure: dict[str, Any] = field(default_factory=dict)  # over the job's measure settings


# Asked, after the run's own jobs and again after each batch of repeats, what to measure again;
# the run ends when every follow-up answers []. Reads the stored results through the session.
FollowUp = Callable[[Session, int, list[Planned]], list[Repeat]]
