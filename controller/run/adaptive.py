"""Early stopping across a board's jobs: a configuration already clearly slower than the best one
within the accuracy budget on its board stops at the minimum sample count.

(Being written: the interface execute() uses is ``EarlyStop(spec)``, ``measure_for(p)`` -> extra
measure settings for the job about to be sent, and ``observe(p, job_row)`` after each stored job.)
"""

from __future__ import annotations

from typing import Any

from controller.config.spec import Spec
from controller.results.store import Job
from controller.run.planning import Planned


class EarlyStop:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec

    def measure_for(self, p: Planned) -> dict[str, Any]:
        return {}

    def observe(self, p: Planned, job: Job) -> None:
        return None
