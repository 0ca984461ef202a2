"""Engine selection: for each (model, chip), the fastest configuration within the accuracy budget,
with a 95% confidence interval on every speed-up, the configurations it cannot be told apart from,
and a declared tie-break among them.

"Fastest" follows the spec's objective: the lowest p50 latency at batch 1 (``latency``, the
default, for a camera frame or a request waiting on its answer), or the most items per second
at any measured batch size whose p50 per batch stays under a latency ceiling (``throughput``,
for a queue of images). Selection decides on measurements only. The accuracy reference on a chip is ONNX Runtime
running the fp32 variant at its default settings (falling back to the best fp32 figure of any
engine when ONNX Runtime did not run there), and the speed-up is against that same baseline.

Where the run measured the finalists again in interleaved rounds (``controller.run.finalists``:
baseline A, then B, C, then A B C again, each round a short job on the same board), a finalist's
p50 and p90 are the geometric means of its rounds' figures, and its speed-up is paired within
rounds: each round's ratio of medians (baseline / candidate) compares two medians measured in the
same minute, so drift from one minute to the next cancels in the ratio. The speed-up is the
geometric mean of those ratios and its interval a t-interval on their logarithms across the
rounds (n - 1 degrees of freedom): the rounds are the independent repetitions, and their spread
is the run-to-run noise itself. (A bootstrap over five rounds has only 126 distinct resamples and
comes out too narrow; a log scale because ratios multiply, and a 2x speed-up and its inverse
should be equally far from 1.)

Otherwise (no rounds, or a configuration that was not a finalist) the speed-up is the ratio of the
two p50s as the table shows them: the baseline's is its rounds' geometric mean where it has rounds
(its job may have met a noisy minute: against that, every configuration left out of the rounds
would look faster than the finalists measured against the rounds), the configuration's its job's
median. Its interval adds the two standard errors on the log scale in quadrature: a job's from the
distribution-free 95% interval of its median (order statistics, ``agent.measure.median_ci95``),
the rounds' from their spread. Deterministic and quick (no resampling); a job's part says how well
its median is known within the job and misses drift between jobs measured minutes apart, which is
what the rounds are for. A result without raw samples (a native tool's summary) has no interval.

Where the finalists were measured in rounds, only they (and the baseline) of that run can be chosen
or tied: the run's other configurations were more than the margin slower than the best at their
jobs, and an unpaired ratio must not outrank a paired one because the board drifted between them.

Ties (latency objective): the configurations within budget whose speed-up intervals overlap the
fastest one's cannot be told apart from it, unless an interval lies wholly below another of theirs
(below the baseline's, which is exactly 1, say: shown to be slower than a configuration that is
tied); among the fastest and those tied with it, the pick is the one with the
higher accuracy, then the lower peak memory (a peak within 5% of the lowest counts as as low: it
moves by a megabyte or so between runs), then the smaller artifact, then the faster. The others
are listed in ``tied_with``. The fastest is the one with the highest speed-up (the lowest p50
where there is no baseline): paired in rounds, the speed-up is free of the drift a p50 carries.
The throughput objective ranks on items/s, one figure per batch size without samples, so it
names no ties; its speed-up column is still the batch-1 latency speed-up, with that interval.

Beside the engine's own p50, a candidate shows its end-to-end p50 (``e2e_p50_ms``: decode +
preprocess + infer + postprocess of an image file by the deployment runtime, where the run measured
it), read from the stored result record in the same query. It is shown, not ranked on: the
objective is the engine's own figure, and a board without Python (a native tool) has no e2e figure.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.results.history import KINDS
from controller.results.store import Board, Job, Model, Result, Run, Variant

BASELINE_ENGINE = "onnxruntime"
BASELINE_LABEL = "fp32"
Z95 = 1.96
MEMORY_TOLERANCE = 0.05  # tie-break: a peak within 5% of the lowest counts as as low
# Job ids per IN (...) query: SQLite before 3.32 takes at most 999 parameters.
CHUNK = 900


@dataclass
class Candidate:
    model: str
    chip: str
    board: str
    engine: str
    variant: str  # the configuration's label: artifact variant plus computed precision if different
    artifact: str  # the variant artifact to deploy
    precision: str
    engine_options: dict
    engine_version: str
    p50_ms: float  # from its interleaved rounds where it has them (see ``rounds``), else its job's
    p90_ms: float
    peak_rss_mb: float | None
    size_bytes: int
    accuracy_metric: str | None
    accuracy: float | None
    run_id: int
    job_id: int  # the run's own job (its rounds repeat it)
    throughput: list = field(default_factory=list)  # the agent's rows: {batch, items_per_s, p50_ms} or {batch, error}
    accuracy_drop: float | None = None
    speedup_vs_baseline: float | None = None
    batch: int | None = None  # the batch size the throughput objective chose
    items_per_s: float | None = None
    e2e_p50_ms: float | None = None  # the whole pipeline on an image file, when the run measured it
    speedup_ci95: list[float] | None = None  # [low, high]: the 95% confidence interval of the speed-up
    rounds: int | None = None  # how many interleaved rounds p50 and p90 come from (None: the job alone)
    tied_with: list[str] = field(default_factory=list)  # "engine variant" of those the pick could not be told from
    # What the interval is computed from; not in the table or the JSON.
    median_ci95: tuple[float, float] | None = None  # of its job's median, from the job's raw samples
    round_p50_ms: list[float | None] = field(default_factory=list)  # each round's median in order; None: it failed

    def best_throughput(self, ceiling_ms: float | None) -> tuple[int, float] | None:
        """(batch, items/s) of the measured batch size with the most items/s under the ceiling."""
        rows = [r for r in self.throughput if r.get("items_per_s") and "error" not in r
                and (ceiling_ms is None or (r.get("p50_ms") is not None and r["p50_ms"] <= ceiling_ms))]
        best = max(rows, key=lambda r: r["items_per_s"], default=None)
        return (int(best["batch"]), float(best["items_per_s"])) if best else None

    def label(self) -> str:
        return f"{self.engine} {self.variant}"

    def is_baseline(self) -> bool:
        return self.engine == BASELINE_ENGINE and self.variant == BASELINE_LABEL


# Internal fields: what the interval is computed from, never shown.
_EVIDENCE = ("median_ci95", "round_p50_ms")


@dataclass
class Selection:
    model: str
    chip: str
    budget: float
    best: Candidate | None
    nearest: list[Candidate] = field(default_factory=list)  # shown when nothing meets the budget


def latest_candidates(session: Session) -> list[Candidate]:
    """The newest successful result per (model, chip, engine, configuration), newest model file only,
    with its interleaved rounds, and its samples' interval where a speed-up needs it.

    The chip is the one each job recorded when it ran, not what its board is declared as today.
    """
    latest: dict[tuple, Candidate] = {}
    for c in stored_candidates(session):
        latest[(c.model, c.chip, c.engine, c.variant)] = c
    candidates = list(latest.values())
    attach_rounds(session, candidates)
    attach_sample_intervals(session, candidates)
    return candidates


def stored_candidates(session: Session, run_id: int | None = None) -> list[Candidate]:
    """Every successful result of a run's own jobs (or of all runs), oldest first, newest model file only."""
    # Only the columns selection needs: raw samples and agent records stay in the database.
    query = (
        select(Model.name, Model.sha256, Job.chip, Board.name, Job.engine, Job.label, Variant.name,
               Result.precision, Job.options, Result.engine_version, Result.p50_ms, Result.p90_ms,
               Result.peak_rss_mb, Variant.size_bytes, Result.accuracy_metric, Result.accuracy,
               Job.run_id, Job.id, Result.throughput, Job.artifact,
               # JSON paths, not columns: results stored before e2e existed need no migration, and the
               # median's interval the agent computed from its samples is read without the samples.
               Result.raw["e2e"]["p50_ms"].as_float(), Result.raw[("sampling", "median_ci95", 0)].as_float(),
               Result.raw[("sampling", "median_ci95", 1)].as_float())
        .join(Result, Result.job_id == Job.id)
        .join(Board, Board.id == Job.board_id)
        .join(Variant, Variant.id == Job.variant_id)
        .join(Model, Model.id == Variant.model_id)
        # A tool that prints no median is stored, not ranked: p50 is what selection compares.
        .where(Job.status == "ok", Job.purpose == "measure", Result.p50_ms.is_not(None))
        .order_by(Job.id)
    )
    if run_id is not None:
        query = query.where(Job.run_id == run_id)
    else:  # a bisect measures old engine releases in throwaway environments: never a choice
        query = query.join(Run, Run.id == Job.run_id).where(Run.kind.in_(KINDS))
    rows = session.execute(query).all()
    newest_model = {row[0]: row[1] for row in rows}
    out = []
    for (model, sha, chip, board, engine, label, variant, precision, options, version, p50, p90, rss, size,
         metric, accuracy, run, job_id, throughput, artifact, e2e_p50, ci_low, ci_high) in rows:
        if newest_model[model] == sha:
            c = Candidate(model, chip, board, engine, label, variant, precision, options, version, p50, p90, rss,
                          size, metric, accuracy, run, job_id, throughput=throughput or [], e2e_p50_ms=e2e_p50,
                          median_ci95=(ci_low, ci_high) if ci_low and ci_high else None)
            if artifact:  # the engine loaded a converted file: that is what gets deployed
                c.size_bytes = artifact.get("size_bytes", c.size_bytes)
            out.append(c)
    return out


def attach_rounds(session: Session, candidates: list[Candidate]) -> None:
    """Each candidate's interleaved rounds (the round jobs repeating its job), in the order they ran;
    with two or more that succeeded, its p50 and p90 are their geometric means."""
    by_job = {c.job_id: c for c in candidates}
    found: dict[int, list[tuple[float, float | None] | None]] = {}
    for ids in _chunks(list(by_job)):
        rows = session.execute(
            select(Job.repeat_of, Job.status, Result.p50_ms, Result.p90_ms)
            .outerjoin(Result, Result.job_id == Job.id)
            .where(Job.purpose == "round", Job.repeat_of.in_(ids))
            .order_by(Job.id)
        ).all()
        for of, status, p50, p90 in rows:  # a failed round keeps its place: rounds pair by position
            assert of is not None  # selected by it
            found.setdefault(of, []).append((p50, p90) if status == "ok" and p50 else None)
    for job_id, measured in found.items():
        c = by_job[job_id]
        c.round_p50_ms = [m[0] if m else None for m in measured]
        ok = [m for m in measured if m]
        if len(ok) >= 2:
            c.rounds = len(ok)
            c.p50_ms = _geomean([p50 for p50, _ in ok])
            p90s = [p90 for _, p90 in ok if p90]
            c.p90_ms = _geomean(p90s) if len(p90s) == len(ok) else c.p90_ms


def attach_sample_intervals(session: Session, candidates: list[Candidate]) -> None:
    """The interval of each job's median, from its raw samples, for the candidates whose speed-up is
    not paired in rounds and for their baseline (only in a group with a baseline), where the result
    does not say it already (one stored before the agent computed it)."""
    wanted = {c.job_id: c for group in _groups(candidates).values() for c in _need_samples(group)
              if c.median_ci95 is None}
    if not wanted:
        return
    from agent.measure import median_ci95

    for ids in _chunks(list(wanted)):
        for job_id, samples in session.execute(select(Result.job_id, Result.samples_ms)
                                               .where(Result.job_id.in_(ids))):
            if samples:  # a native tool's summary has none
                wanted[job_id].median_ci95 = median_ci95(samples)


def _need_samples(group: list[Candidate]) -> list[Candidate]:
    baseline = _baseline(group)
    if baseline is None:
        return []  # no speed-up, so no interval
    unpaired = [c for c in group if c is not baseline and _paired_rounds(baseline, c) is None]
    return [baseline, *unpaired] if unpaired else []


def _chunks(ids: list[int]) -> Iterable[list[int]]:
    for i in range(0, len(ids), CHUNK):
        yield ids[i:i + CHUNK]


def _groups(candidates: Iterable[Candidate]) -> dict[tuple[str, str], list[Candidate]]:
    groups: dict[tuple[str, str], list[Candidate]] = {}
    for c in candidates:
        groups.setdefault((c.model, c.chip), []).append(c)
    return groups


def _baseline(group: Sequence[Candidate]) -> Candidate | None:
    return next((c for c in group if c.is_baseline()), None)


BUDGET_SLACK = 1e-12  # a drop of exactly the budget is within it, whatever the float rounding


def accuracy_reference(configs: Iterable[tuple[str, str, float | None]]) -> float | None:
    """The accuracy drops are measured from, among (engine, label, accuracy) of one model on one
    chip or board: ONNX Runtime's fp32, else the best fp32 figure of any engine, else None."""
    found = [(engine, label, accuracy) for engine, label, accuracy in configs if accuracy is not None]
    baseline = next((a for e, lbl, a in found if e == BASELINE_ENGINE and lbl == BASELINE_LABEL), None)
    return baseline if baseline is not None else max(
        (a for _, lbl, a in found if lbl == BASELINE_LABEL), default=None)


def within_budget(group: Sequence[Candidate], budget: float) -> list[Candidate]:
    """Set each candidate's accuracy drop against the group's reference (``accuracy_reference``);
    the candidates within ``budget``."""
    reference = accuracy_reference((c.engine, c.variant, c.accuracy) for c in group)
    for c in group:
        c.accuracy_drop = None if reference is None or c.accuracy is None else reference - c.accuracy
    return [c for c in group if c.accuracy_drop is not None and c.accuracy_drop <= budget + BUDGET_SLACK]


def speedup(baseline: Candidate | None, c: Candidate) -> tuple[float | None, list[float] | None]:
    """The speed-up of ``c`` against ``baseline`` and its 95% interval (module docstring): paired within
    interleaved rounds where both have them, else the ratio of the two jobs' medians."""
    if baseline is None or c.p50_ms <= 0:
        return None, None
    if c is baseline:
        return 1.0, [1.0, 1.0]
    logs = _paired_rounds(baseline, c)
    if logs is not None:
        from scipy.special import stdtrit  # the t quantile; scipy.stats would double `select`'s start-up

        mean = sum(logs) / len(logs)
        sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / (len(logs) - 1))
        half = float(stdtrit(len(logs) - 1, 0.975)) * sd / math.sqrt(len(logs))
        return math.exp(mean), [math.exp(mean - half), math.exp(mean + half)]
    # Each side's best estimate: a baseline caught in a noisy minute during its job is known better
    # by its rounds, and a ratio against its job's median would rank the configurations that were
    # not finalists above the finalists measured against the rounds.
    ratio = baseline.p50_ms / c.p50_ms
    se_b, se_c = _estimate_log_se(baseline), _estimate_log_se(c)
    if se_b is None or se_c is None:
        return ratio, None
    half = Z95 * math.hypot(se_b, se_c)
    return ratio, [ratio * math.exp(-half), ratio * math.exp(half)]


def _estimate_log_se(c: Candidate) -> float | None:
    """The standard error of log(``c.p50_ms``) on the normal scale: from the spread of its rounds
    where p50 is their geometric mean (a t-interval's half-width over Z95, so few rounds count as
    the wider interval they give), else from its job's median interval; None without either."""
    ok = [x for x in c.round_p50_ms if x]
    if c.rounds and len(ok) >= 2:
        from scipy.special import stdtrit

        logs = [math.log(x) for x in ok]
        mean = sum(logs) / len(logs)
        sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / (len(logs) - 1))
        return float(stdtrit(len(logs) - 1, 0.975)) * sd / math.sqrt(len(logs)) / Z95
    return None if c.median_ci95 is None else _log_se(c.median_ci95)


def _paired_rounds(baseline: Candidate, c: Candidate) -> list[float] | None:
    """log(baseline / c) of each round both measured, when they were rounds of the same run on the same
    board and there are two or more; else None."""
    if c.run_id != baseline.run_id or c.board != baseline.board:
        return None
    logs = [math.log(b / x) for b, x in zip(baseline.round_p50_ms, c.round_p50_ms) if b and x]
    return logs if len(logs) >= 2 else None


def _log_se(interval: tuple[float, float]) -> float:
    """A 95% interval of a median read as a standard error of its logarithm."""
    low, high = interval
    return math.log(high / low) / (2 * Z95) if low > 0 else math.inf


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _overlap(a: list[float], b: list[float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def _tie_break(tied: list[Candidate]) -> Candidate:
    """The declared order among configurations that cannot be told apart (``tied``, fastest first):
    the higher accuracy; then the lower peak memory, where within MEMORY_TOLERANCE of the lowest
    counts as as low (a configuration's peak moves by a megabyte or so from one run to the next);
    then the smaller artifact; then the faster."""
    top = max(c.accuracy for c in tied if c.accuracy is not None)  # within budget: each has one
    pool = [c for c in tied if c.accuracy == top]
    peaks = [c.peak_rss_mb for c in pool if c.peak_rss_mb is not None]
    if peaks:
        pool = [c for c in pool if c.peak_rss_mb is not None and c.peak_rss_mb <= min(peaks) * (1 + MEMORY_TOLERANCE)]
    smallest = min(c.size_bytes for c in pool)
    return next(c for c in pool if c.size_bytes == smallest)


def _faster_first(c: Candidate) -> tuple:
    # The speed-up ranks where there is one: paired in rounds it is free of the drift a p50 carries.
    return (-(c.speedup_vs_baseline or 0.0), c.p50_ms, c.engine, c.variant)


def select_best(candidates: list[Candidate], budget: float, objective: str = "latency",
                latency_ceiling_ms: float | None = None) -> list[Selection]:
    out = []
    for (model, chip), group in sorted(_groups(candidates).items()):
        baseline = _baseline(group)
        eligible = within_budget(group, budget)
        for c in group:
            c.speedup_vs_baseline, c.speedup_ci95 = speedup(baseline, c)
            c.tied_with = []
        best: Candidate | None
        if objective == "throughput":
            for c in group:
                c.batch, c.items_per_s = c.best_throughput(latency_ceiling_ms) or (None, None)
            eligible = [c for c in eligible if c.items_per_s is not None]
            best = max(eligible, key=lambda c: c.items_per_s) if eligible else None  # type: ignore[arg-type,return-value]
        else:
            best = _pick(sorted(_contenders(baseline, eligible), key=_faster_first))
        nearest = [] if best else sorted(
            group, key=lambda c: (c.accuracy_drop is None, c.accuracy_drop or 0.0, c.p50_ms)
        )[:3]
        out.append(Selection(model, chip, budget, best, nearest))
    return out


def _contenders(baseline: Candidate | None, eligible: list[Candidate]) -> list[Candidate]:
    """Who may be chosen or tied (latency objective). Where the baseline's run measured finalists
    in rounds, the configurations of that run left out of the rounds may not: at the run's own jobs
    they were more than ``selection.finalist_margin`` slower than the best, and a ratio from jobs
    measured minutes apart (against a board that drifted, or met a busy minute) must not outrank
    the ratios paired in rounds. Configurations from other runs have no rounds to lose to."""
    if baseline is None:
        return eligible
    paired = {id(c) for c in eligible if c is not baseline and _paired_rounds(baseline, c) is not None}
    if not paired:
        return eligible
    return [c for c in eligible if c is baseline or id(c) in paired or c.run_id != baseline.run_id]


def _pick(ranked: list[Candidate]) -> Candidate | None:
    """The fastest, or by the tie-break one it is tied with; the others tied named in its ``tied_with``,
    fastest first. Tied: an interval that overlaps the fastest one's, unless it lies wholly below
    another tied one's (with a wide interval the fastest overlaps configurations that are shown to
    be slower than the baseline, say; those are not candidates for the tie-break)."""
    if not ranked:
        return None
    fastest = ranked[0]
    if fastest.speedup_ci95 is None:
        return fastest
    overlapping = [fastest, *(c for c in ranked[1:]
                              if c.speedup_ci95 and _overlap(c.speedup_ci95, fastest.speedup_ci95))]
    top = max(c.speedup_ci95[0] for c in overlapping if c.speedup_ci95)
    tied = [c for c in overlapping if c.speedup_ci95 and c.speedup_ci95[1] >= top]
    pick = _tie_break(tied)
    pick.tied_with = [c.label() for c in tied if c is not pick]
    return pick


def describe_rule(budget: float, objective: str, latency_ceiling_ms: float | None) -> str:
    """How the table was chosen, in words: "accuracy budget 0.01, most items/s with p50 <= 50 ms"."""
    if objective != "throughput":
        return (f"accuracy budget {budget:g}, lowest p50; speed-ups with 95% intervals; among those the fastest "
                "cannot be told from, higher accuracy, then lower peak memory, then smaller artifact")
    ceiling = f" with a batch p50 <= {latency_ceiling_ms:g} ms" if latency_ceiling_ms else ""
    return f"accuracy budget {budget:g}, most items/s{ceiling}"


def selections(session: Session, budget: float, objective: str = "latency",
               latency_ceiling_ms: float | None = None) -> list[Selection]:
    return select_best(latest_candidates(session), budget, objective, latency_ceiling_ms)


# --- output formats ---------------------------------------------------------------------

COLUMNS = ("model", "chip", "engine", "variant", "precision", "p50_ms", "e2e_p50_ms", "p90_ms", "peak_rss_mb",
           "size_mb", "accuracy_metric", "accuracy", "accuracy_drop", "speedup_vs_baseline", "rounds", "tied_with")
# The throughput objective's table also says which batch size and how many items per second.
_AFTER_P90 = COLUMNS.index("p90_ms") + 1
THROUGHPUT_COLUMNS = COLUMNS[:_AFTER_P90] + ("batch", "items_per_s") + COLUMNS[_AFTER_P90:]
# CSV keeps every cell one number: the interval in two columns after the speed-up.
_AFTER_SPEEDUP = COLUMNS.index("speedup_vs_baseline") + 1
CI_COLUMNS = ("speedup_ci95_low", "speedup_ci95_high")


def _row(sel: Selection, c: Candidate | None) -> dict:
    if c is None:
        return {"model": sel.model, "chip": sel.chip, "engine": None, "variant": None, "within_budget": False}
    fields = asdict(c)
    del fields["throughput"]  # every batch's figures: in the database and the dashboard, not the table
    row: dict = {}
    for key, value in fields.items():  # the end-to-end p50 next to the engine's own
        if key in _EVIDENCE:
            continue
        if key != "e2e_p50_ms":
            row[key] = value
        if key == "p50_ms":
            row["e2e_p50_ms"] = c.e2e_p50_ms
    row["size_mb"] = c.size_bytes / 1e6
    row["within_budget"] = sel.best is c
    return row


def as_records(sels: list[Selection]) -> list[dict]:
    records = []
    for s in sels:
        rec = _row(s, s.best)
        rec["budget"] = s.budget
        if s.best is None:
            rec["nearest"] = [_row(s, c) for c in s.nearest]
        records.append(rec)
    return records


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def speedup_text(c: Candidate) -> str:
    """"2.31 [2.20, 2.43]": the speed-up and its 95% interval, as the table prints it."""
    if c.speedup_vs_baseline is None:
        return "-"
    ci = c.speedup_ci95
    return f"{c.speedup_vs_baseline:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _cell(row: dict, key: str, c: Candidate) -> str:
    if key == "speedup_vs_baseline":
        return speedup_text(c)
    if key == "tied_with":
        return ", ".join(c.tied_with) or "-"
    return _fmt(row.get(key))


def render(sels: list[Selection], fmt: str) -> str:
    columns = THROUGHPUT_COLUMNS if any(s.best and s.best.items_per_s is not None for s in sels) else COLUMNS
    if fmt == "json":
        return json.dumps(as_records(sels), indent=2, default=str)
    if fmt == "csv":
        at = columns.index("speedup_vs_baseline") + 1
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=[*columns[:at], *CI_COLUMNS, *columns[at:], "within_budget"],
                                extrasaction="ignore")
        writer.writeheader()
        for rec in as_records(sels):
            ci = rec.get("speedup_ci95") or [None, None]
            writer.writerow({**rec, "speedup_ci95_low": ci[0], "speedup_ci95_high": ci[1],
                             "tied_with": "; ".join(rec.get("tied_with") or [])})
        return buf.getvalue()
    lines = []
    rows = []
    for s in sels:
        if s.best:
            row = _row(s, s.best)
            rows.append([_cell(row, k, s.best) for k in columns])
        else:
            lines.append(f"{s.model} on {s.chip}: nothing within the accuracy budget {s.budget:g}; nearest:")
            for c in s.nearest:
                e2e = f" (e2e {_fmt(c.e2e_p50_ms)} ms)" if c.e2e_p50_ms is not None else ""
                lines.append(f"  {c.engine} {c.variant}: drop {_fmt(c.accuracy_drop)}, p50 {_fmt(c.p50_ms)} ms{e2e}, "
                             f"speed-up {speedup_text(c)}")
    if not sels:
        return "no results yet: run `edgefarm run` first"
    notes = _notes(sels)
    if fmt == "md":
        head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
        table = head + "".join("| " + " | ".join(r) + " |\n" for r in rows)
        return table + "".join("\n" + line for line in [*notes, *lines])
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    fmt_line = "  ".join(f"{{:{w}}}" for w in widths)
    table = "\n".join([fmt_line.format(*columns), *(fmt_line.format(*r) for r in rows)])
    return table + "".join("\n" + line for line in [*notes, *lines])


def _notes(sels: list[Selection]) -> list[str]:
    """What the speed-up column's figures are, in one line under the table."""
    picked = [s.best for s in sels if s.best and s.best.speedup_vs_baseline is not None]
    if not picked:
        return []
    where = []
    if any(c.rounds for c in picked):
        where.append("with `rounds`, p50, p90 and speed-up from that many interleaved rounds with the baseline")
    if any(not c.rounds for c in picked):
        where.append("without, from the run's own jobs (that interval misses drift between the two jobs)")
    return [f"speed-up vs {BASELINE_ENGINE} {BASELINE_LABEL} [95% interval]; " + "; ".join(where)]
