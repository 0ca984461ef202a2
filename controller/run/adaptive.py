"""Early stopping across a board's jobs: a configuration already clearly slower than the best one
within the accuracy budget on its board stops at the minimum sample count.

``EarlyStop(spec)`` follows a run's own jobs as they are stored (``observe``) and gives each job
about to be sent its ceiling (``measure_for``): ``measure.slower_factor`` times the lowest p50, on
that board and for that model, among the configurations measured so far whose accuracy is within
``selection.budget`` of the reference. The agent stops a job whose median passes it after
``min_iterations``, and measures none of its accuracy, throughput or e2e: with a p50 that many
times the best one's, it cannot be chosen whatever its accuracy.

The rules are selection's (``controller.results.selection``), applied to what the run has measured
so far: the accuracy reference is ONNX Runtime's fp32 on that board, else the best fp32 figure of
any engine; a configuration without an accuracy figure is never within the budget, so a model
that has none (or no reference yet) stops nothing. Only the latency objective ranks on the p50:
under the throughput objective every configuration is measured in full.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controller.config.spec import Spec
from controller.results.selection import BUDGET_SLACK, accuracy_reference
from controller.results.store import Job
from controller.run.planning import Planned


@dataclass(frozen=True)
class Measured:
    """One stored ok job of the run, as the rules read it."""

    engine: str
    label: str
    p50_ms: float
    accuracy: float | None


class EarlyStop:
    def __init__(self, spec: Spec) -> None:
        latency = spec.selection.objective == "latency"
        self.factor = spec.measure.slower_factor if latency else None
        self.budget = spec.selection.budget
        self.measured: dict[tuple[str, str], list[Measured]] = {}  # (board, model) -> its jobs so far

    def measure_for(self, p: Planned) -> dict[str, Any]:
        """The extra measure settings of job ``p``: its ceiling, once its board has a best."""
        if self.factor is None:
            return {}
        best = self.best_ms(p.board, p.model.spec.name)
        return {} if best is None else {"stop_above_ms": best * self.factor}

    def observe(self, p: Planned, job: Job) -> None:
        """Take in a stored job of the run (its status and result row)."""
        result = job.result
        if self.factor is None or job.status != "ok" or result is None or result.p50_ms is None:
            return  # a failure, or a native tool that printed no median: nothing to rank on
        self.measured.setdefault((p.board, p.model.spec.name), []).append(
            Measured(p.engine, p.label, float(result.p50_ms), result.accuracy))

    def best_ms(self, board: str, model: str) -> float | None:
        """The lowest p50 within the accuracy budget of ``model`` on ``board`` so far, if any."""
        seen = self.measured.get((board, model), [])
        reference = accuracy_reference((m.engine, m.label, m.accuracy) for m in seen)
        if reference is None:
            return None
        within = [m.p50_ms for m in seen
                  if m.accuracy is not None and reference - m.accuracy <= self.budget + BUDGET_SLACK]
        return min(within, default=None)
