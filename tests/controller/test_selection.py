"""Selection by objective (lowest latency, or most items/s under a latency ceiling), the 95% interval
of every speed-up, ties and the tie-break, on constructed figures."""

from __future__ import annotations

import math

import numpy as np
import pytest

from controller.results.selection import Candidate, render, select_best


def _candidate(engine: str, variant: str, p50: float, accuracy: float, throughput: list[dict]) -> Candidate:
    return Candidate(model="m", chip="c", board="b", engine=engine, variant=variant, artifact=variant,
                     precision="fp32", engine_options={}, engine_version="1", p50_ms=p50, p90_ms=p50,
                     peak_rss_mb=None, size_bytes=1000, accuracy_metric="accuracy", accuracy=accuracy,
                     run_id=1, job_id=1, throughput=throughput)


def _group() -> list[Candidate]:
    return [
        # The baseline: fast at batch 1, scales badly.
        _candidate("onnxruntime", "fp32", 10.0, 0.90, [
            {"batch": 1, "items_per_s": 100.0, "p50_ms": 10.0}, {"batch": 8, "items_per_s": 150.0, "p50_ms": 53.0}]),
        # Slower at batch 1, best items/s at batch 8, but that batch takes 80 ms.
        _candidate("openvino", "fp32", 12.0, 0.90, [
            {"batch": 1, "items_per_s": 83.0, "p50_ms": 12.0}, {"batch": 4, "items_per_s": 140.0, "p50_ms": 28.6},
            {"batch": 8, "items_per_s": 200.0, "p50_ms": 80.0}]),
        # Fastest of all, but loses too much accuracy.
        _candidate("ncnn", "int8", 5.0, 0.80, [{"batch": 1, "items_per_s": 400.0, "p50_ms": 5.0}]),
        # A fixed batch: only batch 1 measured, the others are errors.
        _candidate("mnn", "fp32", 11.0, 0.90, [
            {"batch": 1, "items_per_s": 91.0, "p50_ms": 11.0}, {"batch": 8, "error": "the model's batch dimension is fixed at 1"}]),
    ]


def test_latency_objective_picks_the_lowest_p50_within_budget() -> None:
    (sel,) = select_best(_group(), 0.01)
    assert (sel.best.engine, sel.best.variant) == ("onnxruntime", "fp32")
    assert sel.best.items_per_s is None


def test_throughput_objective_picks_the_most_items_per_second() -> None:
    (sel,) = select_best(_group(), 0.01, "throughput")
    assert (sel.best.engine, sel.best.batch, sel.best.items_per_s) == ("openvino", 8, 200.0)
    assert "items_per_s" in render([sel], "table").splitlines()[0]


def test_a_latency_ceiling_rules_out_batches_that_take_too_long() -> None:
    (sel,) = select_best(_group(), 0.01, "throughput", latency_ceiling_ms=60.0)
    assert (sel.best.engine, sel.best.batch) == ("onnxruntime", 8)  # 150/s at 53 ms beats 140/s at 28.6 ms
    (sel,) = select_best(_group(), 0.01, "throughput", latency_ceiling_ms=20.0)
    assert (sel.best.engine, sel.best.batch) == ("onnxruntime", 1)  # only batch 1 fits: 100 > 91 > 83
    (sel,) = select_best(_group(), 0.01, "throughput", latency_ceiling_ms=1.0)
    assert sel.best is None  # nothing is that fast


# --- intervals, ties and the tie-break ---------------------------------------------------------


def _timed(engine: str, variant: str, p50: float, accuracy: float = 0.9, *, peak: float | None = 100.0,
           size: int = 1000, rounds: list[float | None] | None = None, median_ci95: tuple[float, float] | None = None,
           run_id: int = 1) -> Candidate:
    c = _candidate(engine, variant, p50, accuracy, [])
    c.peak_rss_mb, c.size_bytes, c.run_id, c.median_ci95 = peak, size, run_id, median_ci95
    c.round_p50_ms = list(rounds or [])
    return c


def _t_interval(logs: list[float]) -> tuple[float, float, float]:
    """The speed-up and its 95% interval computed here independently: numpy's mean and sample sd, scipy's t."""
    from scipy.stats import t

    a = np.asarray(logs)
    half = t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / np.sqrt(len(a))
    return float(np.exp(a.mean())), float(np.exp(a.mean() - half)), float(np.exp(a.mean() + half))


def test_rounds_pair_the_ratio_so_drift_between_rounds_cancels() -> None:
    # The board slows down by half in round 3 and by a quarter in round 5, for both alike: each
    # round's ratio stays near 2, while the run's own jobs caught the baseline in a noisy minute.
    drift = [1.0, 1.02, 1.5, 0.98, 1.25]
    base_rounds = [2.0 * d for d in drift]
    fast_rounds = [d * r for d, r in zip(drift, (1.0, 0.99, 1.01, 1.0, 1.02))]
    base = _timed("onnxruntime", "fp32", 3.1, rounds=base_rounds, median_ci95=(3.0, 3.2))
    fast = _timed("openvino", "fp16", 1.0, rounds=fast_rounds, median_ci95=(0.98, 1.02))
    (sel,) = select_best([base, fast], 0.01)
    assert sel.best is fast
    speedup, low, high = _t_interval([math.log(b / f) for b, f in zip(base_rounds, fast_rounds)])
    assert fast.speedup_vs_baseline == pytest.approx(speedup) and fast.speedup_ci95 == pytest.approx([low, high])
    got_low, got_high = fast.speedup_ci95  # selection's own interval, not the one computed above
    assert 1.95 < got_low < 2.0 < got_high < 2.05  # the drift is gone; the job ratio (3.1) is far outside
    assert base.speedup_vs_baseline == 1.0 and base.speedup_ci95 == [1.0, 1.0]


def test_a_failed_round_is_left_out_of_the_pairs_and_other_runs_do_not_pair() -> None:
    base = _timed("onnxruntime", "fp32", 2.0, rounds=[2.0, None, 2.2, 2.1], median_ci95=(1.9, 2.1))
    fast = _timed("openvino", "fp32", 1.0, rounds=[1.0, 1.1, None, 1.0], median_ci95=(0.9, 1.1))
    select_best([base, fast], 0.01)
    assert fast.speedup_vs_baseline == pytest.approx(math.sqrt(2.0 * 2.1))  # rounds 1 and 4 only
    other_run = _timed("openvino", "fp32", 1.0, rounds=[1.0, 1.1, 1.0, 1.0], median_ci95=(0.9, 1.1), run_id=2)
    select_best([base, other_run], 0.01)
    assert other_run.speedup_vs_baseline == pytest.approx(2.0)  # the two p50s, not paired


def test_a_configuration_left_out_of_the_rounds_is_compared_with_the_baselines_rounds() -> None:
    # The baseline's own job met a noisy minute (3.4 ms; its rounds say 2.0). The finalist, measured
    # in rounds against it, is 2x; a configuration outside the finalists' margin (job median 1.2 ms
    # against the finalist's 1.0) must not look 2.8x faster against the baseline's noisy job and win.
    base_rounds, fin_rounds = [2.0, 2.05, 1.95, 2.0, 2.02], [1.0, 1.02, 0.98, 1.0, 1.01]
    base = _timed("onnxruntime", "fp32", 3.4, rounds=base_rounds, median_ci95=(3.3, 3.5))
    finalist = _timed("openvino", "fp32", 1.0, rounds=fin_rounds, median_ci95=(0.99, 1.01))
    left_out = _timed("openvino", "fp16", 1.2, median_ci95=(1.18, 1.22))
    for c in (base, finalist):  # as attach_rounds loads them: p50 is the rounds' geometric mean
        c.rounds, c.p50_ms = 5, math.exp(np.mean(np.log(c.round_p50_ms)))
    (sel,) = select_best([base, finalist, left_out], 0.01)
    assert sel.best is finalist and sel.best.tied_with == []
    assert left_out.speedup_vs_baseline == pytest.approx(base.p50_ms / 1.2)  # about 1.67, not 3.4 / 1.2
    low, high = left_out.speedup_ci95
    assert low < left_out.speedup_vs_baseline < high < finalist.speedup_ci95[0]


def test_a_configuration_left_out_of_the_rounds_neither_wins_nor_ties_against_the_finalists() -> None:
    # The board got busier after the run's own jobs: its rounds are twice as slow as its jobs. The
    # finalist's paired speed-up is 1.9; a configuration left out of the rounds (its job was more
    # than the margin slower than the finalist's) looks 2.2x against the baseline's slow rounds.
    base_rounds, fin_rounds = [90.0, 110.0, 100.0, 95.0, 105.0], [47.0, 58.0, 53.0, 50.0, 55.0]
    base = _timed("onnxruntime", "fp32", 100.0, rounds=base_rounds, median_ci95=(98.0, 102.0))
    finalist = _timed("openvino", "fp16", 36.0, peak=300.0, rounds=fin_rounds, median_ci95=(35.5, 36.5))
    left_out = _timed("ncnn", "fp16", 45.8, peak=100.0, median_ci95=(44.0, 47.0))  # less memory: it would win a tie
    for c in (base, finalist):
        c.rounds, c.p50_ms = 5, math.exp(np.mean(np.log(c.round_p50_ms)))
    (sel,) = select_best([base, finalist, left_out], 0.01)
    assert left_out.speedup_vs_baseline > finalist.speedup_vs_baseline  # unpaired, against the slow rounds
    assert sel.best is finalist and sel.best.tied_with == []
    # Measured in another run, it has no rounds to lose to: it competes on its ratio.
    other_run = _timed("ncnn", "fp16", 45.8, peak=100.0, median_ci95=(44.0, 47.0), run_id=2)
    (sel,) = select_best([base, finalist, other_run], 0.01)
    assert sel.best is other_run


def test_without_rounds_the_interval_comes_from_each_jobs_samples() -> None:
    from agent.measure import median_ci95

    rng = np.random.default_rng(0)
    intervals = []
    for n in (64, 4096):
        base_samples = rng.lognormal(math.log(2.0), 0.1, n)
        fast_samples = rng.lognormal(math.log(1.0), 0.1, n)
        base = _timed("onnxruntime", "fp32", float(np.median(base_samples)), median_ci95=median_ci95(base_samples))
        fast = _timed("openvino", "fp32", float(np.median(fast_samples)), median_ci95=median_ci95(fast_samples))
        select_best([base, fast], 0.01)
        low, high = fast.speedup_ci95
        assert fast.speedup_vs_baseline == pytest.approx(base.p50_ms / fast.p50_ms)
        assert low < 2.0 < high and low < fast.speedup_vs_baseline < high
        intervals.append(high - low)
    assert intervals[1] < intervals[0] / 4  # 64 times the samples: about an eighth of the width
    # A native tool's summary has no samples: a speed-up, no interval, no ties.
    base = _timed("onnxruntime", "fp32", 2.0)
    fast = _timed("openvino", "fp32", 1.0)
    (sel,) = select_best([base, fast], 0.01)
    assert fast.speedup_vs_baseline == 2.0 and fast.speedup_ci95 is None and sel.best.tied_with == []


def _tied_group(**fast_kwargs: object) -> list[Candidate]:
    rounds = [2.0, 2.1, 1.9, 2.0, 2.05]
    return [
        _timed("onnxruntime", "fp32", 2.0, 0.90, peak=60.0, rounds=rounds),
        # The fastest, and one that cannot be told from it (0.99 to 1.03 of its p50 round by round).
        _timed("openvino", "fp32", 1.0, 0.90, rounds=[1.0, 1.0, 1.0, 1.0, 1.0], **fast_kwargs),  # type: ignore[arg-type]
        _timed("openvino", "fp16", 1.01, 0.90, size=500, rounds=[0.99, 1.03, 1.0, 1.01, 1.02]),
        # Clearly slower than both, and the most accurate: not tied, so not chosen.
        _timed("openvino", "int8", 1.6, 0.91, size=250, rounds=[1.6, 1.62, 1.58, 1.6, 1.61]),
    ]


def test_a_configuration_whose_interval_overlaps_the_fastest_is_tied_and_the_tie_break_decides() -> None:
    # Same accuracy, peaks within 5%: the smaller artifact wins among the two that are tied.
    group = _tied_group(peak=103.0)
    (sel,) = select_best(group, 0.05)
    assert (sel.best.engine, sel.best.variant) == ("openvino", "fp16")
    assert sel.best.tied_with == ["openvino fp32"]
    assert sel.best.rounds is None  # the unit test's candidates were not loaded from a database
    # Higher accuracy first: the fastest keeps it even with the larger artifact.
    group = _tied_group(peak=103.0)
    group[1].accuracy = 0.905
    (sel,) = select_best(group, 0.05)
    assert (sel.best.variant, sel.best.tied_with) == ("fp32", ["openvino fp16"])
    # Then the lower peak memory, once it is more than 5% lower.
    group = _tied_group(peak=90.0)
    (sel,) = select_best(group, 0.05)
    assert (sel.best.variant, sel.best.tied_with) == ("fp32", ["openvino fp16"])
    # Deterministic: the same figures in another order pick the same.
    (again,) = select_best(list(reversed(_tied_group(peak=103.0))), 0.05)
    assert (again.best.variant, again.best.tied_with) == ("fp16", ["openvino fp32"])


def test_the_baseline_is_tied_when_the_fastest_interval_holds_one() -> None:
    # A speed-up of 1.1 that the rounds cannot tell from 1: the baseline, with less memory, is chosen.
    base = _timed("onnxruntime", "fp32", 1.1, peak=60.0, rounds=[1.1, 1.0, 1.3, 1.0, 1.2])
    other = _timed("openvino", "fp32", 1.0, rounds=[1.0, 1.05, 1.0, 1.02, 1.0])
    (sel,) = select_best([base, other], 0.01)
    assert other.speedup_ci95[0] < 1.0 < other.speedup_ci95[1]
    assert sel.best is base and base.tied_with == ["openvino fp32"]


def test_the_table_json_and_csv_carry_the_interval_rounds_and_ties() -> None:
    import csv
    import io
    import json

    group = _tied_group(peak=103.0)
    group[2].rounds = 5  # as latest_candidates sets it for a finalist measured in rounds
    sels = select_best(group, 0.05)
    best = sels[0].best
    low, high = best.speedup_ci95
    table = render(sels, "table")
    header, row = table.splitlines()[:2]
    assert header.split()[-3:] == ["speedup_vs_baseline", "rounds", "tied_with"]
    assert f"{best.speedup_vs_baseline:.2f} [{low:.2f}, {high:.2f}]" in row and row.split()[-3:] == ["5", "openvino", "fp32"]
    assert "interleaved rounds" in table.splitlines()[2]
    (rec,) = json.loads(render(sels, "json"))
    assert rec["speedup_ci95"] == pytest.approx([low, high]) and rec["tied_with"] == ["openvino fp32"]
    assert rec["rounds"] == 5 and not {"median_ci95", "round_p50_ms"} & set(rec)
    (line,) = csv.DictReader(io.StringIO(render(sels, "csv")))
    assert float(line["speedup_vs_baseline"]) == pytest.approx(best.speedup_vs_baseline)
    assert (float(line["speedup_ci95_low"]), float(line["speedup_ci95_high"])) == pytest.approx((low, high))
    assert line["tied_with"] == "openvino fp32"
    md = render(sels, "md")
    assert "| speedup_vs_baseline | rounds | tied_with |" in md and f"[{low:.2f}, {high:.2f}]" in md


def test_the_throughput_objective_keeps_the_latency_interval_and_names_no_ties() -> None:
    group = _tied_group(peak=103.0)
    for c, items in zip(group, (100.0, 190.0, 200.0, 150.0)):
        c.throughput = [{"batch": 4, "items_per_s": items, "p50_ms": 4 * c.p50_ms}]
    (sel,) = select_best(group, 0.05, "throughput")
    assert (sel.best.variant, sel.best.items_per_s, sel.best.tied_with) == ("fp16", 200.0, [])
    assert sel.best.speedup_ci95 is not None  # the batch-1 latency speed-up's, as the column says


def test_what_is_shown_slower_than_a_tied_configuration_is_not_tied() -> None:
    # A noisy fastest overlaps everything; the small fp16 artifact is shown slower than the
    # baseline (its interval is wholly below 1), so the tie-break does not get to choose it.
    base = _timed("onnxruntime", "fp32", 1.0, peak=70.0, size=600, rounds=[1.0, 1.0, 1.0, 1.0, 1.0])
    noisy = _timed("openvino", "fp32", 0.8, peak=130.0, size=600, rounds=[0.3, 1.4, 0.4, 1.3, 0.5])
    slower = _timed("onnxruntime", "fp16", 1.4, peak=72.0, size=300, rounds=[1.4, 1.45, 1.35, 1.4, 1.42])
    (sel,) = select_best([base, noisy, slower], 0.01)
    assert noisy.speedup_ci95[0] < slower.speedup_ci95[1] < 1.0 < noisy.speedup_ci95[1]
    assert sel.best is base and base.tied_with == ["openvino fp32"]
