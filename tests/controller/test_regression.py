"""The regression rule on constructed histories: the band, no baseline yet, significance, the
threshold, confirmation, accuracy, causes named, and what happens after a confirmed regression."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import numpy as np
import pytest

from controller.config.spec import RegressionSpec
from controller.results.history import (
    PRIOR_RUNS,
    PRIOR_SPREAD,
    Band,
    Point,
    Setup,
    accepted,
    baseline,
    noise_band,
    what_changed,
)
from controller.results.regression import NO_CHANGE, judge, latency_rule

RULES = RegressionSpec(latency_threshold=0.05, p_value=0.01, accuracy_threshold=0.01, history=5, band=3.0, confirm=2)
KEY = ("det", "local", "onnxruntime", "fp32")
SETUP = Setup(model_sha256="m1", variant="fp32", variant_sha256="v1", recipe={"fusions": 3}, artifact_sha256=None,
              converter={}, engine_version="1.19.2", options={"threads": 2, "model_precision": "fp32"},
              chip="x86_64 EPYC", board={"os": "Linux-6.1", "python": "3.11.2"}, edgefarm_version="0.9.0",
              measure={"min_seconds": 1.0})


def samples(median: float, n: int = 300, seed: int = 0, spread: float = 0.03) -> list[float]:
    # Latency-like: a positive, right-skewed distribution around the median.
    rng = np.random.default_rng(seed)
    return list(median * rng.lognormal(0.0, spread, n))


def point(run: int, p50: float | None, verdict: str | None = None, status: str = "ok", accuracy: float | None = 0.9,
          setup: Setup = SETUP) -> Point:
    return Point(KEY, run, run * 10, "nightly", datetime(2026, 1, run), status, None if status == "ok" else "boom",
                 p50, p50, accuracy if status == "ok" else None, "accuracy", verdict, setup)


def history(*medians: float, verdicts: tuple[str | None, ...] = ()) -> tuple[list[Point], dict[int, list[float]]]:
    """Runs 1.. with these medians, returned newest first, with their samples."""
    points = [point(i + 1, m, verdicts[i] if i < len(verdicts) else None) for i, m in enumerate(medians)]
    return points[::-1], {p.job_id: samples(p.p50_ms or 0, seed=p.run_id) for p in points}


def night(run: int, p50: float, seed: int = 99, **kw: object) -> tuple[Point, list[float]]:
    return point(run, p50, **kw), samples(p50, seed=seed)  # type: ignore[arg-type]


# -- the band --------------------------------------------------------------------------------------

def test_the_band_is_the_wider_of_three_deviations_and_the_farthest_run() -> None:
    medians = [10.0, 10.6, 9.4, 10.3, 9.8]
    band = noise_band(medians, 3.0)
    assert band is not None and band.center == 10.0
    # The runs' variance, pooled with the prior's: 3% of the centre, worth two runs.
    pooled = (float(np.var(medians, ddof=1)) * 4 + PRIOR_RUNS * (PRIOR_SPREAD * 10.0) ** 2) / (4 + PRIOR_RUNS)
    assert band.half_width == pytest.approx(3 * pooled ** 0.5)
    # One far run and a narrow factor: the band still reaches that run.
    wide = noise_band([10.0, 10.0, 10.0, 11.0], 0.5)
    assert wide is not None and wide.center == 10.0 and wide.half_width == pytest.approx(1.0)
    assert wide.contains(11.0) and not wide.contains(11.01)
    assert noise_band([10.0], 3.0) is None


def test_two_runs_that_agree_by_chance_do_not_make_a_hair_thin_band() -> None:
    band = noise_band([5.25, 5.24], 3.0)
    assert band is not None and 0.06 < band.half_width / band.center < 0.08  # not 0.6%
    # Many runs as steady as that: their own spread takes over, down to about 3 x 3% x sqrt(2 / 11).
    steady = noise_band([5.25, 5.24, 5.25, 5.245, 5.25, 5.24, 5.25, 5.245, 5.25, 5.24, 5.25, 5.245], 3.0)
    assert steady is not None and steady.half_width / steady.center < 0.04


def test_fewer_than_two_runs_of_history_is_no_baseline_never_judged() -> None:
    for runs in ((), (10.0,)):
        points, s = history(*runs)
        tonight, t = night(len(runs) + 1, 30.0)  # three times slower: still not judged
        j = judge(tonight, points, {**s, tonight.job_id: t}, [], RULES)
        assert j.verdict == "no baseline" and not j.bad and j.findings == ()
        assert f"{len(runs)} run" in j.note and "2 needed" in j.note


def test_the_baseline_is_the_newest_good_runs_and_skips_confirmed_regressions_and_noise() -> None:
    points, _ = history(10, 10, 10, 13, 10, 10, 10, 10, verdicts=(None, None, None, "regression"))
    base = baseline(points, 5, 3.0)
    assert [p.run_id for p in base.points] == [8, 7, 6, 5, 3]  # run 4 was a confirmed regression
    # A night whose slowdown did not reproduce is no yardstick: it would widen the band for the nights after.
    noisy, _ = history(10, 10.1, 9.9, 16, 10, verdicts=(None, None, None, "noise", "unchanged"))
    base = baseline(noisy, 5, 3.0)
    assert [p.run_id for p in base.points] == [5, 3, 2, 1] and base.band is not None and base.band.high < 11
    failed = [point(9, None, status="failed"), *points]
    assert [p.run_id for p in baseline(failed, 5, 3.0).points] == [8, 7, 6, 5, 3]  # a failed run is no baseline


# -- the latency rule --------------------------------------------------------------------------------

def test_steady_nights_within_the_band_are_unchanged() -> None:
    # A 6% drift, significant with hundreds of samples, but the board's runs stray that far on their own.
    points, s = history(10.0, 10.6, 9.8, 10.4, 9.9)
    tonight, t = night(6, 10.65)
    j = judge(tonight, points, {**s, tonight.job_id: t}, [], RULES)
    lat = j.finding("latency")
    assert lat is not None and lat.p_value is not None and lat.p_value < 1e-6
    assert lat.change is not None and lat.change > 0.05
    assert lat.band is not None and lat.band.contains(10.65)
    assert j.verdict == "unchanged" and not j.bad


def test_significant_but_under_the_threshold_is_unchanged() -> None:
    # A narrow band (one deviation): 3% slower is outside it and significant, but small.
    points, s = history(10.0, 10.0, 10.01, 10.0, 9.99)
    base = baseline(points, 5, 1.0)
    pooled = [x for p in base.points for x in s[p.job_id]]
    lat = latency_rule(10.3, samples(10.3, seed=7, spread=0.005), base, pooled, RULES)
    assert lat.p_value is not None and lat.p_value < 1e-6 and lat.band is not None and not lat.band.contains(10.3)
    assert lat.verdict == "unchanged"


def test_large_but_not_significant_is_unchanged() -> None:
    points, _ = history(10.0, 10.0, 10.01, 10.0, 9.99)
    base = baseline(points, 5, 3.0)
    noisy = {p.job_id: samples(10.0, 6, p.run_id, 0.6) for p in base.points}
    pooled = [x for v in noisy.values() for x in v]
    lat = latency_rule(11.0, samples(11.0, 6, 5, 0.6), base, pooled, RULES)
    assert lat.p_value is not None and lat.p_value > 0.01 and lat.verdict == "unchanged"


def test_a_slowdown_is_pending_until_confirmed_by_every_rerun() -> None:
    points, s = history(10.0, 10.2, 9.9, 10.1, 10.0)
    tonight, t = night(6, 12.0)
    s[tonight.job_id] = t
    first = judge(tonight, points, s, [], RULES, final=False)
    assert first.verdict == "pending"
    rerun1, rerun2 = point(6, 11.9), point(6, 12.1)
    rerun1, rerun2 = replace(rerun1, job_id=61), replace(rerun2, job_id=62)
    s[61], s[62] = samples(11.9, seed=61), samples(12.1, seed=62)
    assert judge(tonight, points, s, [rerun1], RULES, final=False).verdict == "pending"
    j = judge(tonight, points, s, [rerun1, rerun2], RULES, final=False)
    assert j.verdict == "regression" and j.bad and [r.reproduced for r in j.reruns] == [True, True]
    assert j.cause == NO_CHANGE and j.since == 6
    assert j.line() == f"Regression in det / local / onnxruntime / fp32: +20.0% p50 (10 -> 12 ms), {NO_CHANGE}"


def test_a_slowdown_that_does_not_reproduce_is_noise() -> None:
    points, s = history(10.0, 10.2, 9.9, 10.1, 10.0)
    tonight, t = night(6, 12.0)
    s[tonight.job_id] = t
    quiet = replace(point(6, 10.0), job_id=61)
    s[61] = samples(10.0, seed=61)
    j = judge(tonight, points, s, [quiet], RULES, final=False)
    assert j.verdict == "noise" and not j.bad  # no second re-run is asked for
    assert j.line().startswith("Noise, not confirmed, in det / local / onnxruntime / fp32: +20.0% p50")
    assert "10 ms (not reproduced)" in j.line()
    broken = replace(point(6, None, status="failed"), job_id=62)
    assert judge(tonight, points, s, [broken], RULES).verdict == "noise"  # a re-run that failed reproduced nothing


def test_without_confirmations_a_slowdown_is_reported_at_once() -> None:
    points, s = history(10.0, 10.2, 9.9)
    tonight, t = night(4, 12.0)
    j = judge(tonight, points, {**s, tonight.job_id: t}, [], RULES.model_copy(update={"confirm": 0}), final=False)
    assert j.verdict == "regression"


def test_a_faster_night_is_an_improvement_and_not_confirmed() -> None:
    points, s = history(10.0, 10.2, 9.9, 10.1, 10.0)
    tonight, t = night(6, 8.0)
    j = judge(tonight, points, {**s, tonight.job_id: t}, [], RULES, final=False)
    assert j.verdict == "improvement" and not j.bad and j.reruns == ()


def test_a_native_summary_without_samples_is_judged_by_band_and_threshold() -> None:
    points, _ = history(10.0, 10.2, 9.9)
    tonight = point(4, 12.0)
    j = judge(tonight, points, {}, [], RULES.model_copy(update={"confirm": 0}))
    lat = j.finding("latency")
    assert j.verdict == "regression" and lat is not None and lat.p_value is None and "no raw samples" in lat.note


# -- causes, accuracy, failures ---------------------------------------------------------------------

def test_every_setup_change_is_named_and_judged() -> None:
    new = replace(SETUP, engine_version="1.20.0", options={**SETUP.options, "threads": 1}, chip="x86_64 EPYC2",
                  board={"os": "Linux-6.2", "python": "3.11.2"}, edgefarm_version="1.0.0",
                  measure={"min_seconds": 2.0})
    assert what_changed(SETUP, new) == [
        "engine 1.19.2 -> 1.20.0", "engine options threads 2 -> 1", "chip x86_64 EPYC -> x86_64 EPYC2",
        "board os Linux-6.1 -> Linux-6.2", "EdgeFarm 0.9.0 -> 1.0.0", "measure min_seconds 1.0 -> 2.0"]
    # A new model file makes new variants: named once, as the model.
    assert what_changed(SETUP, replace(SETUP, model_sha256="m2", variant_sha256="v2")) == ["model file changed"]
    assert what_changed(SETUP, replace(SETUP, variant_sha256="v2", recipe={"fusions": 4})) == [
        "variant fp32 recipe fusions 3 -> 4"]
    converted = replace(SETUP, artifact_sha256="a1", converter={"openvino": "2025.4.0"})
    assert what_changed(converted, replace(converted, artifact_sha256="a2", converter={"openvino": "2026.4.1"})) == [
        "converter openvino 2025.4.0 -> 2026.4.1"]
    assert what_changed(converted, replace(converted, artifact_sha256="a2")) == ["converted artifact changed"]
    assert what_changed(SETUP, SETUP) == []

    points, s = history(12.1, 12.0, 12.2, 12.1, 12.1)
    tonight, t = night(6, 13.9, setup=replace(SETUP, engine_version="1.20.0"))
    j = judge(tonight, points, {**s, tonight.job_id: t}, [], RULES.model_copy(update={"confirm": 0}))
    assert j.line() == ("Regression in det / local / onnxruntime / fp32: +14.9% p50 (12.1 -> 13.9 ms), "
                        "engine 1.19.2 -> 1.20.0")


def test_accuracy_drops_against_the_newest_good_run_across_model_versions() -> None:
    points, s = history(10.0, 10.1, 10.0)
    points[0] = replace(points[0], accuracy=0.93)  # the newest good run's figure is the reference
    tonight, t = night(4, 10.05, accuracy=0.9, setup=replace(SETUP, model_sha256="m2", variant_sha256="v2"))
    j = judge(tonight, points, {**s, tonight.job_id: t}, [], RULES)
    assert j.verdict == "accuracy-regression" and j.bad and j.reruns == ()
    assert j.line() == ("Accuracy regression in det / local / onnxruntime / fp32: -0.0300 accuracy (0.93 -> 0.9), "
                        "model file changed")
    within = judge(replace(tonight, accuracy=0.925), points, {**s, tonight.job_id: t}, [], RULES)
    assert within.verdict == "unchanged"
    # Slower as well (and confirmed): the accuracy is named first, the slowdown with it.
    slower, t2 = night(4, 12.0, accuracy=0.9, setup=replace(SETUP, model_sha256="m2", variant_sha256="v2"))
    both = judge(slower, points, {**s, slower.job_id: t2}, [], RULES.model_copy(update={"confirm": 0}))
    assert both.verdict == "accuracy-regression"
    assert both.line().endswith("model file changed; also slower: +20.0% p50 (10 -> 12 ms)")
    quiet = replace(point(4, 10.0), job_id=41)
    noise = judge(slower, points, {**s, slower.job_id: t2, 41: samples(10.0, seed=41)}, [quiet], RULES)
    assert noise.verdict == "accuracy-regression" and noise.finding("latency").verdict == "noise"  # type: ignore[union-attr]
    assert noise.line().endswith("model file changed; a slowdown of +20.0% p50 not confirmed")


def test_a_job_failing_where_it_ran_before_is_confirmed_then_reported() -> None:
    points, _ = history(10.0, 10.1)
    tonight = point(3, None, status="failed")
    assert judge(tonight, points, {}, [], RULES, final=False).verdict == "pending"
    again = [replace(point(3, None, status="failed"), job_id=31), replace(point(3, None, status="failed"), job_id=32)]
    j = judge(tonight, points, {}, again, RULES, final=False)
    assert j.verdict == "failing" and j.bad and j.line().startswith("Failing: det / local / onnxruntime / fp32: failed: boom")
    flaky = judge(tonight, points, {}, [replace(point(3, 10.0), job_id=31)], RULES)
    assert flaky.verdict == "noise" and "ran ok when measured again" in flaky.note
    assert judge(tonight, [], {}, [], RULES).verdict == "never ran"


# -- after a confirmed regression --------------------------------------------------------------------

def test_a_confirmed_regression_is_reported_each_night_naming_its_first_run() -> None:
    points, s = history(10.0, 10.1, 9.9, 12.0, 12.1, verdicts=(None, None, None, "regression", "regression"))
    tonight, t = night(6, 12.0)
    j = judge(tonight, points, {**s, tonight.job_id: t}, [], RULES.model_copy(update={"confirm": 0}))
    assert j.verdict == "regression" and j.since == 4 and j.baseline_runs == (3, 2, 1)
    assert j.line().endswith("; first seen in run 4")


def test_a_regression_confirmed_history_runs_in_a_row_becomes_the_level() -> None:
    rules = RULES.model_copy(update={"history": 3, "confirm": 0})
    points, s = history(10.0, 10.1, 9.9, 12.0, 12.1, 11.9, verdicts=(None, None, None, "regression", "regression",
                                                                        "regression"))
    assert accepted(points, 3) == {40, 50, 60}
    base = baseline(points, 3, 3.0)
    assert [p.run_id for p in base.points] == [6, 5, 4] and base.accepted_since == 4
    tonight, t = night(7, 12.05)
    j = judge(tonight, points, {**s, tonight.job_id: t}, [], rules)
    assert j.verdict == "unchanged" and "the level since run 4 is now the baseline" in j.note
    assert j.line().endswith("; the level since run 4 is now the baseline (a regression confirmed 3 runs in a row)")
    # The night after: still that level, and said no more.
    later = [replace(tonight, verdict="unchanged"), *points]
    j8 = judge(point(8, 12.0), later, {**s, 70: t, 80: samples(12.0, seed=8)}, [], rules)
    assert j8.verdict == "unchanged" and j8.note == "" and j8.baseline_runs == (7, 6, 5)


def test_band_bounds() -> None:
    band = Band(10.0, 0.5)
    assert (band.low, band.high) == (9.5, 10.5) and band.contains(10.5) and not band.contains(10.51)
