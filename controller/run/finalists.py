"""Selection's finalists, measured again in interleaved rounds on the board that measured them.

A speed-up is a ratio of two medians, and two jobs of a run are measured minutes apart: a noisy
minute moves one median and not the other (a classifier's fp32 baseline once ran at 1.24 ms
while its fp16 variant on the same engine ran at 0.52 ms, and the chosen configuration was
reported 3.98x faster). So once a run's own jobs are done, the finalists of each (board, model)
are measured again in ``selection.rounds`` rounds, A B C A B C ..., where A is the baseline
(ONNX Runtime fp32 at default settings) and B, C ... every configuration within the accuracy
budget (as ``controller.results.selection`` decides it, on this board's results of this run)
whose p50 is within ``selection.finalist_margin`` of the best such p50. Within a round the
medians come from the same minute; ``controller.results.selection`` pairs them round by round.

A round is a short job with the latency figures only (``ROUND_MEASURE``): no accuracy (the run's
own job has it), no throughput, no e2e, no precision target, so every round samples alike.
32 samples and 0.5 s: the median of 32 samples is known to within about its 30th to 70th
percentile, small beside the round-to-round variation the rounds are there to sample, and half
a second spans enough scheduler ticks that one preempted call does not set a round's median,
while a round stays short: loading the engine, not sampling, is most of a round of a fast model.
The spec's warm-up is kept: each round loads the engine anew and needs the same warm-up as the job.

Only the latency objective has rounds: they time batch 1, and the throughput objective ranks on
items/s at other batch sizes, one figure per batch that rounds of batch-1 latency do not speak to.
A (board, model) without a baseline with raw samples, or without a second finalist, has none; nor
does a configuration without raw samples (a native tool's summary).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.config.spec import Spec
from controller.results.selection import Candidate, stored_candidates, within_budget
from controller.results.store import Job, Result
from controller.run.planning import Planned
from controller.run.repeats import FollowUp, Repeat

ROUND_ITERATIONS = 32
ROUND_SECONDS = 0.5
ROUND_MAX_SECONDS = 5.0  # a slow model's round: fewer samples rather than minutes per round


def round_measure(spec: Spec) -> dict[str, Any]:
    """A round's measure settings, over the job's own."""
    return {"warmup": spec.measure.warmup, "min_iterations": ROUND_ITERATIONS, "min_seconds": ROUND_SECONDS,
            "max_seconds": min(spec.measure.max_seconds, ROUND_MAX_SECONDS), "batch_sizes": [],
            "accuracy": False, "e2e": False, "precision": None, "stop_above_ms": None}


def finalist_rounds(spec: Spec) -> FollowUp:
    """The follow-up that asks for the finalists' rounds once, and for nothing after."""
    asked = False

    def follow_up(db: Session, run_id: int, plan: list[Planned]) -> list[Repeat]:
        nonlocal asked
        if asked or spec.selection.rounds == 0 or spec.selection.objective != "latency":
            return []
        asked = True
        if db.scalar(select(Job.id).where(Job.run_id == run_id, Job.purpose == "round").limit(1)):
            return []  # a resumed run that got to its rounds before the interruption keeps those

        return interleaved(finalists(db, run_id, plan, spec), spec.selection.rounds, round_measure(spec))

    return follow_up


def finalists(db: Session, run_id: int, plan: list[Planned], spec: Spec) -> list[list[Planned]]:
    """Per (board, model) with two or more, the finalists in the order a round measures them: the
    baseline first, then the fastest first."""
    planned = {p.row_id: p for p in plan}
    measured = [c for c in stored_candidates(db, run_id) if c.job_id in planned]
    summaries = set(db.scalars(select(Result.job_id).where(
        Result.job_id.in_([c.job_id for c in measured]),
        Result.raw["latency_source"].as_string() != "agent")))  # a native tool's summary: no samples
    groups: dict[tuple[str, str], list[Candidate]] = {}
    for c in measured:
        if c.job_id not in summaries:
            groups.setdefault((c.board, c.model), []).append(c)
    out = []
    for _, group in sorted(groups.items()):
        baseline = next((c for c in group if c.is_baseline()), None)
        eligible = within_budget(group, spec.selection.budget)
        if baseline is None or not eligible:
            continue
        best = min(c.p50_ms for c in eligible)
        close = sorted((c for c in eligible if c is not baseline
                        and c.p50_ms <= best * (1 + spec.selection.finalist_margin)),
                       key=lambda c: (c.p50_ms, c.job_id))
        if close:
            out.append([planned[c.job_id] for c in (baseline, *close)])
    return out


def interleaved(groups: list[list[Planned]], rounds: int, measure: dict[str, Any]) -> list[Repeat]:
    """Each group's finalists ``rounds`` times over, A B C A B C ...; groups one after the other."""
    return [Repeat(p, "round", dict(measure)) for group in groups for _ in range(rounds) for p in group]
