"""The measurement loop and its statistics. The loop is driven by a tiny callable here (the
loop is what is under test); real engines are measured in test_job.py."""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest

from agent.measure import latency_stats, measure_latency, measure_throughput, memory_mb


def test_stops_on_min_iterations_when_time_is_already_met() -> None:
    calls = []
    stats = measure_latency(calls.append, warmup=3, min_iterations=100, min_seconds=0.0, max_seconds=30.0)
    assert stats["n"] == 100
    assert len(calls) == 103  # warm-up calls are made but not timed
    assert calls[:3] == [0, 1, 2] and calls[3:] == list(range(100))
    assert stats["stopped_by"] == "target"


def test_keeps_going_until_min_seconds_after_min_iterations() -> None:
    stats = measure_latency(lambda i: time.sleep(0.002), warmup=0, min_iterations=5,
                            min_seconds=0.15, max_seconds=30.0)
    assert stats["elapsed_s"] >= 0.15
    assert stats["n"] > 5  # five 2 ms sleeps cannot fill 150 ms
    assert sum(stats["samples_ms"]) / 1000.0 >= 0.15 * 0.9
    assert stats["stopped_by"] == "target"


def test_max_seconds_cuts_the_run_and_says_so() -> None:
    stats = measure_latency(lambda i: time.sleep(0.01), warmup=0, min_iterations=10_000,
                            min_seconds=100.0, max_seconds=0.1)
    assert stats["stopped_by"] == "max_seconds"
    assert 1 <= stats["n"] < 10_000
    assert stats["elapsed_s"] < 1.0


def test_the_engines_own_timing_is_summarised_beside_the_calls() -> None:
    told = iter(range(1, 1000))
    stats = measure_latency(lambda i: None, warmup=2, min_iterations=9, min_seconds=0.0,
                            inner=lambda: float(next(told)))
    # read once per timed call, never for the warm-up: 1..9
    assert stats["engine"] == {"p50": 5.0, "mean": 5.0, "min": 1.0, "max": 9.0, "n": 9}


def test_no_engine_timing_when_the_engine_does_not_say() -> None:
    stats = measure_latency(lambda i: None, warmup=0, min_iterations=5, min_seconds=0.0, inner=lambda: None)
    assert stats["n"] == 5 and "engine" not in stats


def test_min_iterations_must_be_positive() -> None:
    with pytest.raises(ValueError):
        measure_latency(lambda i: None, warmup=0, min_iterations=0, min_seconds=0.0)


def test_stats_match_independent_computation() -> None:
    samples = list(np.random.default_rng(3).lognormal(0.0, 0.5, size=257))
    stats = latency_stats(samples)
    assert stats["samples_ms"] == pytest.approx(samples)  # raw, untrimmed, in order
    assert stats["n"] == len(samples)
    assert stats["p50"] == pytest.approx(statistics.median(samples))
    ordered = sorted(samples)
    # linear method: rank (n - 1) * q between the two neighbouring order statistics
    rank = (len(samples) - 1) * 0.9
    lo = int(rank)
    assert stats["p90"] == pytest.approx(ordered[lo] + (ordered[lo + 1] - ordered[lo]) * (rank - lo))
    assert stats["std"] == pytest.approx(statistics.stdev(samples))
    assert stats["mean"] == pytest.approx(statistics.fmean(samples))
    assert stats["cv"] == pytest.approx(stats["std"] / stats["mean"])
    assert stats["min"] == min(samples) and stats["max"] == max(samples)
    assert stats["min"] <= stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"]
    assert stats["percentile_method"] == "linear"


def test_throughput_runs_at_least_eight_times_and_records_refused_batches() -> None:
    seen = []

    def run(batch: dict) -> None:
        if len(batch["x"]) == 3:
            raise RuntimeError("Got invalid dimensions for input: x\nmore detail")
        seen.append(len(batch["x"]))

    rows = measure_throughput(run, lambda b: {"x": np.zeros((b, 2), np.float32)},
                              batch_sizes=[1, 3, 2], seconds=0.0)
    assert [r["batch"] for r in rows] == [1, 3, 2]
    assert rows[0]["n"] >= 8 and rows[2]["n"] >= 8
    assert rows[1]["error"] == "RuntimeError: Got invalid dimensions for input: x"
    assert seen.count(2) == rows[2]["n"] + 1  # one untimed warm-up run per batch size
    assert rows[2]["items_per_s"] > 0


def test_throughput_skips_batches_a_fixed_batch_model_cannot_take() -> None:
    ran = []
    rows = measure_throughput(lambda batch: ran.append(1), lambda b: {"x": np.zeros((b,))},
                              batch_sizes=[1, 4], seconds=0.0, fixed_batch=1)
    assert "error" not in rows[0] and rows[0]["n"] >= 8
    assert rows[1] == {"batch": 4, "error": "the model's batch dimension is fixed at 1"}
    assert len(ran) == rows[0]["n"] + 1


def test_memory_grows_with_an_allocation() -> None:
    before = memory_mb()
    block = np.ones(64 * 1024 * 1024 // 8)  # 64 MB, touched
    after = memory_mb()
    assert after["rss_mb"] - before["rss_mb"] > 48
    assert after["peak_rss_mb"] >= after["rss_mb"]
    del block
