"""Nightly's rule: each benchmark judged against its own history, what changed named, a slowdown
confirmed before it is reported.

A night's latency is judged against the benchmark's baseline (``controller.results.history``: the
newest ``regression.history`` good runs and their noise band). A change is called only when all
three hold:

- it is significant: a Mann-Whitney U test of the night's raw samples against the baseline runs'
  samples pooled gives p <= ``p_value`` (a native tool's summary has no samples: the other two
  decide alone);
- it is large: the night's median differs from the band's centre by more than
  ``latency_threshold`` of it;
- it is outside the noise band: farther from the centre than the baseline's own runs strayed.

Samples within one run say nothing about how runs drift from one another, so with hundreds of
them the test alone calls every few percent of drift significant; the band, learned from the
runs themselves, is what keeps a steady board from crying wolf. A slowdown that passes all three
is a suspect, measured again the same night up to ``confirm`` times (``controller.run.confirm``)
and judged each time by the same rule against the same baseline; it is reported only if every
re-run reproduces it, else it is "noise": shown, not failed. A job that fails where its benchmark
ran before is confirmed the same way. A faster night is an improvement, reported and not confirmed.

Accuracy is deterministic on a given setup, so it is judged without confirmation: a drop of more
than ``accuracy_threshold`` (absolute) from the newest good run's figure on the same metric.

Every change is judged, whatever changed in between (model file, variant, converter, engine,
options, board, EdgeFarm), and the line that reports it names what did
(``history.what_changed`` against the newest baseline run), or says nothing in the setup did.
With fewer than two runs of history there is no band: "no baseline", never judged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

from sqlalchemy.orm import Session

from controller.config.spec import RegressionSpec
from controller.results.history import (
    CONFIRMED,
    Band,
    Baseline,
    Key,
    Point,
    bad_since,
    baseline,
    histories,
    pooled_samples,
    repeats_of,
    run_points,
    what_changed,
)
from controller.results.store import Job, Run

NO_CHANGE = "no setup change (board or environment)"

# A benchmark's verdict, from the worst finding down: what jobs.verdict keeps.
# ("pending": a suspect waiting for its confirmations; never kept.)
ORDER = ("failing", "accuracy-regression", "regression", "noise", "improvement", "unchanged", "no baseline",
         "never ran", "gone")

# How many of the spec's runs before a night are read to judge it: the baseline needs few, but
# a failure or a regression is followed back to where it began, and a benchmark that has not run
# ok in this many runs is "never ran" again. Bounded, so a year of nightlies is not read each night.
LOOKBACK = 100

# What a confirmation of a slowdown measures: the latency alone (accuracy was judged on the night's own job).
LATENCY_ONLY = {"accuracy": False, "e2e": False, "batch_sizes": []}


@dataclass(frozen=True)
class Finding:
    """One thing judged about a benchmark's night: its latency, its accuracy, or that it failed."""

    what: str  # latency | accuracy | status
    verdict: str  # regression | improvement | unchanged | noise | failing
    before: float | None = None  # the band's centre (ms), or the reference run's accuracy
    after: float | None = None  # the night's median (ms) or accuracy
    change: float | None = None  # relative for latency, absolute for accuracy
    p_value: float | None = None
    band: Band | None = None
    note: str = ""


@dataclass(frozen=True)
class Rerun:
    """A confirmation job: what it measured and whether it reproduced the suspect."""

    job_id: int
    reproduced: bool
    figure: float | None  # ms; None when it failed
    note: str = ""

    def shown(self) -> str:
        what = f"{self.figure:.3g} ms" if self.figure is not None else self.note or "failed"
        return f"{what} ({'reproduced' if self.reproduced else 'not reproduced'})"


@dataclass(frozen=True)
class Judged:
    """A benchmark's night, judged."""

    key: Key
    verdict: str  # one of ORDER
    run_id: int
    job_id: int | None = None
    findings: tuple[Finding, ...] = ()
    causes: tuple[str, ...] = ()  # what changed since the newest baseline run
    baseline_runs: tuple[int, ...] = ()
    since: int | None = None  # for a reported regression or failure: the run where it first appeared
    reruns: tuple[Rerun, ...] = ()
    note: str = ""

    @property
    def bad(self) -> bool:
        return self.verdict in CONFIRMED

    @property
    def cause(self) -> str:
        return ", ".join(self.causes) or NO_CHANGE

    @property
    def name(self) -> str:
        return " / ".join(self.key)

    def finding(self, what: str) -> Finding | None:
        return next((f for f in self.findings if f.what == what), None)

    def line(self) -> str:
        """The report's line, e.g. ``Regression in ppocr-det / local / onnxruntime / fp32: +14.8% p50
        (12.1 -> 13.9 ms), engine 1.19.2 -> 1.20.0``."""
        lat, acc = self.finding("latency"), self.finding("accuracy")
        since = f"; first seen in run {self.since}" if self.since is not None and self.since != self.run_id else ""
        if self.verdict == "failing":
            return f"Failing: {self.name}: {self.note}, {self.cause}{since}"
        if self.verdict == "accuracy-regression" and acc:
            slower = (f"; also slower: {_latency(lat)}" if lat and lat.verdict == "regression" else
                      f"; a slowdown of {lat.change or 0:+.1%} p50 not confirmed" if lat and lat.verdict == "noise" else "")
            return f"Accuracy regression in {self.name}: {_accuracy(acc)}, {self.cause}{slower}{since}"
        if self.verdict == "regression" and lat:
            return f"Regression in {self.name}: {_latency(lat)}, {self.cause}{since}"
        if self.verdict == "noise":
            reruns = ", ".join(r.shown() for r in self.reruns) or "none"
            what = _latency(lat) if lat and lat.change is not None else self.note
            return f"Noise, not confirmed, in {self.name}: {what}; re-runs: {reruns}"
        if self.verdict == "improvement":
            better = [_latency(lat)] if lat and lat.verdict == "improvement" else []
            better += [_accuracy(acc)] if acc and acc.verdict == "improvement" else []
            return f"Improvement in {self.name}: {'; '.join(better)}, {self.cause}"
        if self.verdict == "unchanged" and lat and lat.band:
            return (f"Unchanged: {self.name}: p50 {lat.after:.3g} ms (band {lat.band.low:.3g} - "
                    f"{lat.band.high:.3g} ms){_cause_if_any(self)}" + (f"; {self.note}" if self.note else ""))
        return f"{self.verdict.capitalize()}: {self.name}: {self.note}"


def _latency(f: Finding) -> str:
    return f"{f.change or 0:+.1%} p50 ({f.before:.3g} -> {f.after:.3g} ms)"


def _accuracy(f: Finding) -> str:
    return f"{f.change or 0:+.4f} {f.note} ({f.before:.4g} -> {f.after:.4g})"


def _cause_if_any(j: Judged) -> str:
    return f", {j.cause}" if j.causes else ""


# -- the rules, pure ------------------------------------------------------------------------------

def latency_rule(figure: float, samples: Sequence[float], base: Baseline, base_samples: Sequence[float],
                 rules: RegressionSpec) -> Finding:
    """The night's median ``figure`` against a baseline with a band: regression, improvement or unchanged."""
    band = base.band
    assert band is not None, "judged without a baseline"
    rel = (figure - band.center) / band.center if band.center > 0 else 0.0
    p = None
    if samples and base_samples:
        from scipy.stats import mannwhitneyu

        p = float(mannwhitneyu(samples, base_samples, alternative="two-sided").pvalue)
    significant = p is None or p <= rules.p_value
    called = significant and abs(rel) > rules.latency_threshold and not band.contains(figure)
    verdict = ("regression" if rel > 0 else "improvement") if called else "unchanged"
    note = "" if p is not None else "no raw samples: judged by the band and the threshold"
    return Finding("latency", verdict, band.center, figure, rel, p, band, note)


def accuracy_rule(accuracy: float | None, metric: str | None, base: Baseline, rules: RegressionSpec) -> Finding | None:
    """The night's accuracy against the newest baseline run with a figure on the same metric."""
    ref = next((p for p in base.points if p.accuracy is not None and p.metric == metric), None)
    if accuracy is None or ref is None or ref.accuracy is None:
        return None
    diff = accuracy - ref.accuracy
    verdict = ("regression" if diff < -rules.accuracy_threshold else
               "improvement" if diff > rules.accuracy_threshold else "unchanged")
    return Finding("accuracy", verdict, ref.accuracy, accuracy, diff, note=metric or "accuracy")


def judge(night: Point, history: Sequence[Point], samples: Mapping[int, Sequence[float]],
          reruns: Sequence[Point], rules: RegressionSpec, final: bool = True) -> Judged:
    """One benchmark's night. ``history``: its earlier runs, newest first, failed ones included;
    ``samples``: raw samples by job id (the night's, its re-runs' and the baseline's); ``reruns``:
    its confirmation jobs so far. Until every confirmation wanted has run the verdict of a suspect
    is "pending" (unless ``final``: then what ran decides, and a suspect that could not be measured
    again is reported as found)."""
    base = baseline(history, rules.history, rules.band)
    ran_before = [p for p in history if p.ok]
    head = Judged(night.key, "pending", night.run_id, night.job_id,
                  causes=tuple(what_changed(base.newest.setup, night.setup)) if base.newest else (),
                  baseline_runs=tuple(p.run_id for p in base.points))
    if not night.ok:
        if not ran_before:
            return replace(head, verdict="never ran", note=f"failed: {night.message}")
        done = [Rerun(r.job_id, not r.ok, r.figure, f"failed: {r.message}" if not r.ok else "") for r in reruns]
        verdict = _confirmed("failing", done, rules.confirm, final)
        note = f"failed: {night.message}" + ("; ran ok when measured again" if verdict == "noise" else "")
        return replace(head, verdict=verdict, findings=(Finding("status", verdict, note=night.message or ""),),
                       reruns=tuple(done), since=_since(verdict, history, night), note=note)
    figure = night.figure
    if base.band is None or figure is None:
        runs = len(ran_before)
        return replace(head, verdict="no baseline",
                       note=f"p50 {_ms(figure)}; {runs} run{'s' * (runs != 1)} of history, 2 needed")
    base_samples = [s for p in base.points for s in samples.get(p.job_id, ())]
    latency = latency_rule(figure, samples.get(night.job_id, ()), base, base_samples, rules)
    done = []
    outcome = latency.verdict
    if latency.verdict == "regression":
        for r in reruns:
            again = (latency_rule(r.figure, samples.get(r.job_id, ()), base, base_samples, rules)
                     if r.ok and r.figure is not None else None)
            done.append(Rerun(r.job_id, again is not None and again.verdict == "regression", r.figure,
                              "" if r.ok else f"failed: {r.message}"))
        outcome = _confirmed("regression", done, rules.confirm, final)
        if outcome == "noise":
            latency = replace(latency, verdict="noise")
    accuracy = accuracy_rule(night.accuracy, night.metric, base, rules)
    verdicts = [outcome]
    if accuracy:
        verdicts.append("accuracy-regression" if accuracy.verdict == "regression" else accuracy.verdict)
    verdict = "pending" if outcome == "pending" else min(verdicts, key=ORDER.index)
    # The first night judged against a level accepted after a run of confirmed regressions says so, once.
    newest = ran_before[0]
    note = (f"the level since run {base.accepted_since} is now the baseline (a regression confirmed "
            f"{rules.history} runs in a row)" if base.accepted_since is not None and newest.verdict in CONFIRMED
            and newest is base.newest else "")
    return replace(head, verdict=verdict, findings=(latency,) + ((accuracy,) if accuracy else ()),
                   reruns=tuple(done), since=_since(verdict, history, night), note=note)


def _confirmed(suspect: str, reruns: Sequence[Rerun], wanted: int, final: bool) -> str:
    """``suspect`` once every wanted re-run reproduced it, "noise" as soon as one did not, else
    "pending" (or, when ``final``, ``suspect``: the re-runs that could not run do not clear it)."""
    if not all(r.reproduced for r in reruns):
        return "noise"
    if len(reruns) >= wanted or final:
        return suspect
    return "pending"


def _since(verdict: str, history: Sequence[Point], night: Point) -> int | None:
    if verdict not in CONFIRMED:
        return None
    return bad_since(history) or night.run_id


def _ms(value: float | None) -> str:
    return f"{value:.3g} ms" if value is not None else "-"


# -- a night from the database --------------------------------------------------------------------

def judge_run(session: Session, run: Run, rules: RegressionSpec, final: bool = True) -> list[Judged]:
    """Every benchmark of ``run`` judged against its history in the spec's earlier finished runs,
    and those measured in the previous run but not in this one ("gone")."""
    night = run_points(session, run.id)
    reruns = repeats_of(session, run.id)
    history = histories(session, run.spec_name, before_run=run.id, failed=True, last_runs=LOOKBACK)
    wanted: set[int] = set()
    for p in night:
        wanted.add(p.job_id)
        wanted.update(r.job_id for r in reruns.get(p.job_id, []))
        wanted.update(q.job_id for q in baseline(history.get(p.key, []), rules.history, rules.band).points)
    samples = pooled_samples(session, wanted)
    judged = [judge(p, history.get(p.key, []), samples, reruns.get(p.job_id, []), rules, final) for p in night]
    return judged + _gone(run, night, history)


def _gone(run: Run, night: Sequence[Point], history: Mapping[Key, Sequence[Point]]) -> list[Judged]:
    """Benchmarks of the previous finished run that this one did not measure."""
    previous = max((p.run_id for points in history.values() for p in points), default=None)
    measured = {p.key for p in night}
    skipped: dict[str, str] = dict((run.summary or {}).get("skipped") or {})
    out = []
    for key, points in sorted(history.items()):
        if key in measured or points[0].run_id != previous:
            continue
        why = f"board {key[1]} skipped: {skipped[key[1]]}" if key[1] in skipped else "no longer in the spec"
        out.append(Judged(key, "gone", run.id, note=f"measured in run {previous}, not in this one ({why})"))
    return out


def to_confirm(session: Session, run: Run, rules: RegressionSpec) -> list[tuple[int, dict[str, Any]]]:
    """The night's suspects that want another confirmation: (job id, measure settings for it). A
    slowdown is measured again for its latency only; a failure as it ran, so that it can recur."""
    if rules.confirm == 0:
        return []
    out = []
    for j in judge_run(session, run, rules, final=False):
        if j.verdict == "pending" and j.job_id is not None:
            out.append((j.job_id, {} if j.finding("status") else dict(LATENCY_ONLY)))
    return out


def record(session: Session, judged: Sequence[Judged]) -> None:
    """Keep each verdict with its job (jobs.verdict), and with each confirmation whether it reproduced."""
    for j in judged:
        if j.job_id is not None:
            job = session.get(Job, j.job_id)
            assert job is not None
            job.verdict = j.verdict
        for r in j.reruns:
            rerun = session.get(Job, r.job_id)
            assert rerun is not None
            rerun.verdict = "reproduced" if r.reproduced else "not reproduced"


def summary(judged: Sequence[Judged]) -> dict[str, int]:
    """How many benchmarks got each verdict."""
    counts: dict[str, int] = {}
    for j in judged:
        counts[j.verdict] = counts.get(j.verdict, 0) + 1
    return counts
