"""A benchmark's history and the noise band its baseline gives: what nightly judges a night against,
and what the dashboard draws.

A benchmark is (model name, board, engine, configuration label) within one spec. Its history is
its ``measure`` jobs in the spec's finished runs (``run`` and ``nightly``; never a bisect's, which
measures on purpose with other engine versions), newest first. It is kept to one spec because a
model name is the spec's own name for a file (two specs may both call different models "det"), and
the spec's measure settings (warm-up, counts, time limits) shape every sample: two specs measuring
the same file are two benchmarks.

The baseline is the newest ``history`` good runs, a good run being one that ran (status ok) and
that nightly did not judge a confirmed regression (``CONFIRMED``), so that a regression never
becomes the yardstick the next nights are measured with, nor "noise": a night whose median its own
re-runs did not reproduce was an outlier by that night's own measure, and one outlier among a
few runs would widen the band for the nights after it, hiding a real slowdown. One exception keeps a team from a red nightly
for ever after a change it decided to keep: when ``history`` runs in a row were each confirmed a
regression, they become the level (``accepted``), and the baselines after them are made of them.

The noise band is how far a run's median strays from run to run on its own: the baseline runs'
medians give a centre (their median) and a half-width, the larger of ``band`` standard deviations
of those medians and the farthest any of them lies from the centre, so a band never claims a
steadiness its own runs did not show. Nor one they cannot show: two or three runs may agree to a
tenth of a percent by chance, and a band that narrow would call the next few percent of ordinary
drift a change. So the standard deviation is estimated as if ``PRIOR_RUNS`` more runs had strayed
by ``PRIOR_SPREAD`` of the centre, what runs minutes apart on a quiet machine do (a board whose
runs stray more shows it, and its own spread takes over as its runs add up).

Pure functions of plain dataclasses, apart from the queries (``histories``, ``benchmark_history``,
``benchmarks``, ``pooled_samples``), which select columns explicitly and load no raw samples: a
year of nightlies' samples is left in the database until a baseline needs five runs of them.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.results.store import Board, Job, Model, Result, Run, Variant

Key = tuple[str, str, str, str]  # model, board, engine, configuration label

KINDS = ("run", "nightly")  # the runs a history is made of; a bisect's measure other engine versions on purpose

# jobs.verdict values that keep a run out of later baselines: what nightly reported and confirmed.
CONFIRMED = frozenset({"regression", "accuracy-regression", "failing"})
# ... and those of a night whose slowdown its re-runs did not see, which is no yardstick either.
OUT_OF_BASELINE = CONFIRMED | {"noise"}

# The board facts that are part of a setup; the rest of a fingerprint (clock, temperature, host
# name) changes from run to run on its own and explains nothing.
BOARD_FACTS = ("os", "python", "governor", "cores")


@dataclass(frozen=True)
class Setup:
    """Everything about a job that may explain a change of its figures, apart from the board's
    load: what nightly names when it compares a night with its baseline (``what_changed``)."""

    model_sha256: str
    variant: str
    variant_sha256: str
    recipe: dict[str, Any]
    artifact_sha256: str | None  # what a converter made for an engine that does not read ONNX
    converter: dict[str, str]  # the converter's tools and their versions
    engine_version: str | None  # None for a job that failed before the engine said it
    options: dict[str, Any]
    chip: str
    board: dict[str, Any]  # BOARD_FACTS and any firmware key of the job's fingerprint
    edgefarm_version: str | None
    measure: dict[str, Any]  # the spec's measure settings


@dataclass(frozen=True)
class Point:
    """One run of a benchmark: a ``measure`` job and its figures."""

    key: Key
    run_id: int
    job_id: int
    kind: str  # run | nightly
    started: datetime  # when the run started
    status: str  # ok | failed
    message: str | None  # why it failed
    p50_ms: float | None
    mean_ms: float | None
    accuracy: float | None
    metric: str | None
    verdict: str | None  # what nightly judged it (jobs.verdict); None for a plain run
    setup: Setup

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def figure(self) -> float | None:
        """The latency a band is made of: the p50, or the mean where a native tool printed no median."""
        return self.p50_ms if self.p50_ms is not None else self.mean_ms


@dataclass(frozen=True)
class Band:
    """Where a run's median falls on a steady board: ``center`` +/- ``half_width`` (ms)."""

    center: float
    half_width: float

    @property
    def low(self) -> float:
        return max(0.0, self.center - self.half_width)  # a wide band still ends at no time at all

    @property
    def high(self) -> float:
        return self.center + self.half_width

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Baseline:
    """The runs a night is judged against (newest first) and their band; ``band`` is None when
    fewer than two runs give one (no baseline yet)."""

    points: tuple[Point, ...]
    band: Band | None
    accepted_since: int | None = None  # the run a regression accepted as the new level first appeared in

    @property
    def newest(self) -> Point | None:
        return self.points[0] if self.points else None


@dataclass(frozen=True)
class HistoryPoint:
    """A point as the dashboard draws it: with the band it was judged against (the baseline made
    of the points before it) and what changed in its setup since the point before it."""

    point: Point
    band: Band | None
    changed: tuple[str, ...] = field(default_factory=tuple)


# Run-to-run spread assumed before a baseline shows its own: a standard deviation of 3% of the
# centre, weighted as two runs' worth of evidence (medians of runs minutes apart on a quiet
# two-core machine strayed by about 4%; the quiet machine by 9% between two nightlies).
PRIOR_SPREAD = 0.03
PRIOR_RUNS = 2


def noise_band(medians: Sequence[float], width: float) -> Band | None:
    """The band of a baseline's run medians: their median +/- the larger of ``width`` standard
    deviations (pooled with the prior, ``PRIOR_SPREAD`` over ``PRIOR_RUNS`` runs) and the farthest
    of them from it. None for fewer than two medians."""
    if len(medians) < 2:
        return None
    center = statistics.median(medians)
    dof = len(medians) - 1
    spread = ((statistics.variance(medians) * dof + (PRIOR_SPREAD * center) ** 2 * PRIOR_RUNS) / (dof + PRIOR_RUNS)) ** 0.5
    farthest = max(abs(m - center) for m in medians)
    return Band(center, max(width * spread, farthest))


def accepted(history: Sequence[Point], n: int) -> set[int]:
    """Job ids of the runs accepted as a new level: ``n`` or more ok runs in a row, each judged a
    confirmed regression (failed runs between them neither break nor count in the row)."""
    out: set[int] = set()
    row: list[Point] = []
    for p in reversed(history):  # oldest first
        if not p.ok:
            continue
        if p.verdict in CONFIRMED:
            row.append(p)
            if len(row) >= n:
                out.update(q.job_id for q in row)
        else:
            row = []
    return out


def baseline(history: Sequence[Point], n: int, width: float) -> Baseline:
    """The newest ``n`` good runs of ``history`` (newest first) and their band."""
    taken = accepted(history, n)
    good = [p for p in history if p.ok and (p.verdict not in OUT_OF_BASELINE or p.job_id in taken)][:n]
    since = None
    if good and good[0].job_id in taken:  # the level moved: name the run where it first appeared
        row = [p for p in history if p.ok and p.job_id in taken]
        since = min(p.run_id for p in row)
    medians = [p.figure for p in good if p.figure is not None]
    return Baseline(tuple(good), noise_band(medians, width), since)


def bad_since(history: Sequence[Point]) -> int | None:
    """The run where the confirmed regressions or failures leading ``history`` began: the
    oldest of the newest runs in a row whose verdict is in ``CONFIRMED`` (None if the newest is not)."""
    since = None
    for p in history:
        if p.verdict not in CONFIRMED:
            break
        since = p.run_id
    return since


def what_changed(old: Setup, new: Setup) -> list[str]:
    """What differs between two setups, in words, the likeliest cause first; [] when nothing does.

    A change that follows from another is not named again: a new model file makes new variants
    and new converted artifacts, and a new variant a new converted artifact."""
    out: list[str] = []
    if old.model_sha256 != new.model_sha256:
        out.append("model file changed")
    elif old.variant_sha256 != new.variant_sha256:
        recipe = _dict_changes(old.recipe, new.recipe)
        out.append(f"variant {new.variant} recipe {recipe}" if recipe else f"variant {new.variant} artifact changed")
    if old.converter != new.converter:
        out += [f"converter {tool} {old.converter.get(tool, 'none')} -> {new.converter.get(tool, 'none')}"
                for tool in sorted(set(old.converter) | set(new.converter))
                if old.converter.get(tool) != new.converter.get(tool)]
    elif (old.artifact_sha256 != new.artifact_sha256 and old.model_sha256 == new.model_sha256
          and old.variant_sha256 == new.variant_sha256):
        out.append("converted artifact changed")
    if old.engine_version != new.engine_version and None not in (old.engine_version, new.engine_version):
        out.append(f"engine {old.engine_version} -> {new.engine_version}")
    if options := _dict_changes(old.options, new.options):
        out.append(f"engine options {options}")
    if old.chip != new.chip:
        out.append(f"chip {old.chip} -> {new.chip}")
    for fact in sorted(set(old.board) | set(new.board)):
        if old.board.get(fact) != new.board.get(fact):
            out.append(f"board {fact} {_shown(old.board.get(fact))} -> {_shown(new.board.get(fact))}")
    if old.edgefarm_version != new.edgefarm_version:
        out.append(f"EdgeFarm {old.edgefarm_version or 'unknown'} -> {new.edgefarm_version or 'unknown'}")
    if measure := _dict_changes(old.measure, new.measure):
        out.append(f"measure {measure}")
    return out


def _dict_changes(old: dict[str, Any], new: dict[str, Any], limit: int = 3) -> str:
    """``threads 2 -> 1, providers ...``: the keys whose values differ, at most ``limit`` named."""
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    shown = [f"{k} {_shown(old.get(k))} -> {_shown(new.get(k))}" for k in keys[:limit]]
    return ", ".join(shown) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _shown(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, (dict, list)):
        return "{...}" if isinstance(value, dict) else "[...]"
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def converter_versions(engine: str, conversion: dict[str, Any] | None) -> dict[str, str]:
    """The converter's tool versions as its record keeps them: under the engine's own name
    (OpenVINO's, MNN's), or as a ``tools`` mapping (ncnn's pnnx, Paddle Lite's x2paddle and opt)."""
    if not conversion:
        return {}
    tools = conversion.get("tools")
    out = {str(k): str(v) for k, v in tools.items()} if isinstance(tools, dict) else {}
    if isinstance(conversion.get(engine), str):
        out[engine] = conversion[engine]
    return out


def _board_facts(fingerprint: dict[str, Any] | None) -> dict[str, Any]:
    fp = fingerprint or {}
    return {k: v for k, v in fp.items() if k in BOARD_FACTS or "firmware" in k.lower()}


# -- queries --------------------------------------------------------------------------------------

def histories(session: Session, spec_name: str, before_run: int | None = None, keys: Iterable[Key] | None = None,
              failed: bool = False, last_runs: int | None = None) -> dict[Key, list[Point]]:
    """Every benchmark's history in ``spec_name``'s finished runs (those before ``before_run``; the
    newest ``last_runs`` of them, when given), newest first; only ``keys``, when given; the failed
    runs too, with ``failed``."""
    runs = [Run.spec_name == spec_name, Run.status == "done", Run.kind.in_(KINDS)]
    if before_run is not None:
        runs.append(Run.id < before_run)
    where = [*runs, Job.purpose == "measure"]
    if last_runs is not None:
        newest = session.scalars(select(Run.id).where(*runs).order_by(Run.id.desc()).limit(last_runs)).all()
        where.append(Run.id.in_(newest))
    if not failed:
        where.append(Job.status == "ok")
    wanted = set(keys) if keys is not None else None
    if wanted is not None:
        where.append(Model.name.in_({k[0] for k in wanted}))
    out: dict[Key, list[Point]] = {}
    for p in _points(session, where):
        if wanted is None or p.key in wanted:
            out.setdefault(p.key, []).append(p)
    return out


def run_points(session: Session, run_id: int, purpose: str = "measure") -> list[Point]:
    """The jobs of one run with ``purpose`` (measure, confirm), ok or not, as points."""
    return _points(session, [Job.run_id == run_id, Job.purpose == purpose])


def repeats_of(session: Session, run_id: int) -> dict[int, list[Point]]:
    """A run's confirmation jobs by the job they repeat, in the order they ran."""
    ids: dict[int, int | None] = dict(session.execute(
        select(Job.id, Job.repeat_of).where(Job.run_id == run_id, Job.purpose == "confirm")).all())
    out: dict[int, list[Point]] = {}
    for p in sorted(run_points(session, run_id, "confirm"), key=lambda q: q.job_id):
        of = ids[p.job_id]
        if of is not None:
            out.setdefault(of, []).append(p)
    return out


def _points(session: Session, where: list[Any]) -> list[Point]:
    rows = session.execute(
        select(Job.id, Job.run_id, Job.engine, Job.label, Job.options, Job.chip, Job.fingerprint, Job.artifact,
               Job.status, Job.message, Job.verdict, Run.kind, Run.started_at, Run.edgefarm_version,
               Board.name.label("board"), Model.name.label("model"), Model.sha256.label("model_sha256"),
               Variant.id.label("variant_id"), Variant.name.label("variant"), Variant.sha256.label("variant_sha256"),
               Result.p50_ms, Result.mean_ms, Result.accuracy, Result.accuracy_metric, Result.engine_version)
        .join(Run, Run.id == Job.run_id).join(Board, Board.id == Job.board_id)
        .join(Variant, Variant.id == Job.variant_id).join(Model, Model.id == Variant.model_id)
        .outerjoin(Result, Result.job_id == Job.id)
        .where(*where)
        .order_by(Run.id.desc(), Job.id)
    ).all()
    # Read once each, not once a job: a spec's measure settings per run, a variant's recipe per variant.
    measure = _measure_settings(session, {r.run_id for r in rows})
    recipes = _recipes(session, {r.variant_id for r in rows})
    out = []
    for r in rows:
        artifact = r.artifact or {}
        setup = Setup(
            model_sha256=r.model_sha256, variant=r.variant, variant_sha256=r.variant_sha256, recipe=recipes.get(r.variant_id, {}),
            artifact_sha256=artifact.get("sha256"), converter=converter_versions(r.engine, artifact.get("conversion")),
            engine_version=r.engine_version, options=dict(r.options or {}), chip=r.chip,
            board=_board_facts(r.fingerprint), edgefarm_version=r.edgefarm_version, measure=measure.get(r.run_id, {}),
        )
        out.append(Point(
            key=(r.model, r.board, r.engine, r.label), run_id=r.run_id, job_id=r.id, kind=r.kind,
            started=r.started_at, status=r.status, message=r.message, p50_ms=r.p50_ms, mean_ms=r.mean_ms,
            accuracy=r.accuracy, metric=r.accuracy_metric, verdict=r.verdict, setup=setup,
        ))
    return out


def _measure_settings(session: Session, run_ids: set[int]) -> dict[int, dict[str, Any]]:
    if not run_ids:
        return {}
    return {run_id: dict((spec or {}).get("measure") or {})
            for run_id, spec in session.execute(select(Run.id, Run.spec).where(Run.id.in_(run_ids)))}


def _recipes(session: Session, variant_ids: set[int]) -> dict[int, dict[str, Any]]:
    if not variant_ids:
        return {}
    return {variant_id: dict(recipe or {})
            for variant_id, recipe in session.execute(select(Variant.id, Variant.recipe).where(Variant.id.in_(variant_ids)))}


def pooled_samples(session: Session, job_ids: Iterable[int]) -> dict[int, list[float]]:
    """The raw latency samples (ms) of each job; a job with none (a native tool's summary) is absent."""
    ids = list(job_ids)
    if not ids:
        return {}
    rows = session.execute(select(Result.job_id, Result.samples_ms).where(Result.job_id.in_(ids)))
    return {job_id: [float(s) for s in samples] for job_id, samples in rows if samples}


def benchmarks(session: Session) -> list[tuple[str, Key]]:
    """Every (spec name, benchmark) with at least one ok run in a finished run, sorted."""
    rows = session.execute(
        select(Run.spec_name, Model.name, Board.name, Job.engine, Job.label).distinct()
        .join(Run, Run.id == Job.run_id).join(Board, Board.id == Job.board_id)
        .join(Variant, Variant.id == Job.variant_id).join(Model, Model.id == Variant.model_id)
        .where(Run.status == "done", Run.kind.in_(KINDS), Job.purpose == "measure", Job.status == "ok")
    )
    return sorted((spec, (model, board, engine, label)) for spec, model, board, engine, label in rows)


def benchmark_history(session: Session, spec_name: str, key: Key, history: int = 5, width: float = 3.0,
                      limit: int | None = None) -> list[HistoryPoint]:
    """One benchmark's ok runs, newest first (at most ``limit``), each with the band nightly judged
    it against (made, as nightly makes it, of the ``history`` good runs before it; None while
    there were fewer than two) and what changed since the run before it. ``history`` and ``width``
    are the spec's ``regression.history`` and ``regression.band``."""
    points = histories(session, spec_name, keys=[key]).get(key, [])
    out = []
    for i, p in enumerate(points[:limit] if limit is not None else points):
        older = points[i + 1:]
        changed = tuple(what_changed(older[0].setup, p.setup)) if older else ()
        out.append(HistoryPoint(p, baseline(older, history, width).band, changed))
    return out
