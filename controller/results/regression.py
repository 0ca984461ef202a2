"""The regression rule: compare like with like, and call a change only when it is real.

A latency change needs both a significant Mann-Whitney U test on the raw samples
(p <= p_value) and an effect above the threshold (relative change of the median); an accuracy
change is an absolute difference above its threshold. Improvements are reported too. Two
results are alike when model file, variant artifact, engine version, board and the chip the
board was declared as when each job ran are the same; anything else is reported as "not
comparable" rather than judged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.config.spec import RegressionSpec
from controller.results.store import Board, Job, Model, Result, Run, Variant

Key = tuple[str, str, str, str]  # model, board, engine, configuration label


@dataclass(frozen=True)
class Measured:
    status: str
    message: str | None
    chip: str
    model_sha: str
    variant_sha: str
    engine_version: str | None
    samples: list[float]
    p50: float | None
    accuracy: float | None
    metric: str | None


@dataclass(frozen=True)
class Change:
    key: Key
    verdict: str  # regression | improvement | unchanged | new | gone | failing | not comparable
    what: str  # latency | accuracy | status | setup
    before: float | None = None
    after: float | None = None
    change: float | None = None  # relative for latency, absolute for accuracy
    p_value: float | None = None
    note: str = ""

    @property
    def bad(self) -> bool:
        return self.verdict in ("regression", "failing")


def run_results(session: Session, run_id: int) -> dict[Key, Measured]:
    rows = session.execute(
        select(Job, Board, Variant, Model, Result)
        .join(Board, Board.id == Job.board_id).join(Variant, Variant.id == Job.variant_id)
        .join(Model, Model.id == Variant.model_id).outerjoin(Result, Result.job_id == Job.id)
        .where(Job.run_id == run_id, Job.purpose == "measure")
    ).all()
    out = {}
    for job, board, variant, model, res in rows:
        out[(model.name, board.name, job.engine, job.label)] = Measured(
            job.status, job.message, job.chip, model.sha256, variant.sha256,
            res.engine_version if res else None, list(res.samples_ms) if res else [],
            res.p50_ms if res else None, res.accuracy if res else None, res.accuracy_metric if res else None,
        )
    return out


def previous_run(session: Session, run: Run) -> Run | None:
    return session.scalars(
        select(Run).where(Run.spec_name == run.spec_name, Run.id < run.id, Run.status == "done")
        .order_by(Run.id.desc()).limit(1)
    ).first()


def latency_change(before: list[float], after: list[float], rules: RegressionSpec) -> tuple[str, float, float]:
    """(verdict, relative change of the median, p-value)."""
    import numpy as np
    from scipy.stats import mannwhitneyu

    m0, m1 = float(np.median(before)), float(np.median(after))
    rel = (m1 - m0) / m0 if m0 > 0 else 0.0
    p = float(mannwhitneyu(after, before, alternative="two-sided").pvalue)
    if p <= rules.p_value and abs(rel) > rules.latency_threshold:
        return ("regression" if rel > 0 else "improvement"), rel, p
    return "unchanged", rel, p


def compare(before: dict[Key, Measured], after: dict[Key, Measured], rules: RegressionSpec) -> list[Change]:
    changes: list[Change] = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old is None or new is None:
            changes.append(Change(key, "new" if old is None else "gone", "status"))
            continue
        if new.status != "ok":
            verdict = "failing" if old.status == "ok" else "unchanged"
            changes.append(Change(key, verdict, "status", note=new.message or ""))
            continue
        if old.status != "ok":
            changes.append(Change(key, "improvement", "status", note="was failing, now runs"))
            continue
        if _setup(old) != _setup(new):
            changes.append(Change(key, "not comparable", "setup",
                                  note=_setup_diff(old, new)))
            continue
        if old.samples and new.samples:
            verdict, rel, p = latency_change(old.samples, new.samples, rules)
            changes.append(Change(key, verdict, "latency", old.p50, new.p50, rel, p))
        else:  # a native tool's summary: no raw samples to test, so no verdict is claimed
            changes.append(Change(key, "not comparable", "latency", old.p50, new.p50,
                                  note="no raw samples (a native tool's own summary)"))
        if old.accuracy is not None and new.accuracy is not None:
            diff = new.accuracy - old.accuracy
            acc_verdict = ("regression" if diff < -rules.accuracy_threshold else
                           "improvement" if diff > rules.accuracy_threshold else "unchanged")
            changes.append(Change(key, acc_verdict, "accuracy", old.accuracy, new.accuracy, diff, note=new.metric or ""))
    return changes


def _setup(m: Measured) -> tuple[str | None, ...]:
    return m.chip, m.model_sha, m.variant_sha, m.engine_version


def _setup_diff(old: Measured, new: Measured) -> str:
    parts = []
    if old.chip != new.chip:
        parts.append(f"chip {old.chip} -> {new.chip}")
    if old.model_sha != new.model_sha:
        parts.append("model file changed")
    if old.variant_sha != new.variant_sha:
        parts.append("variant artifact changed")
    if old.engine_version != new.engine_version:
        parts.append(f"engine {old.engine_version} -> {new.engine_version}")
    return ", ".join(parts)


def summary(changes: list[Change]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for c in changes:
        counts[c.verdict] = counts.get(c.verdict, 0) + 1
    return counts
