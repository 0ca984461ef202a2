"""Adaptive stopping: the median's distribution-free interval, sampling until it is precise enough
(or the cap), a ceiling that stops a clearly slower configuration at the minimum count, and the
job stages that follow (or not). The rules run on given durations through a replay clock, so the
sample each call takes is known; the job stages run the real classifier on ONNX Runtime."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, List

import numpy as np
import pytest

import agent.measure
from agent.job import run_job
from agent.measure import measure_latency, median_ci95
from controller.boards.result_check import check_result
from controller.build.e2e_images import pack, rendered_files
from controller.data import datasets
from tests.agent.conftest import sha256, write_job


class Replay:
    """A clock that only the calls move: call i takes ``durations_ms[i]``."""

    def __init__(self, durations_ms: List[float]) -> None:
        self.durations_ms = durations_ms
        self.now = 0.0
        self.calls = 0

    def clock(self) -> float:
        return self.now

    def run(self, i: int) -> None:
        self.now += self.durations_ms[self.calls] / 1000.0
        self.calls += 1


# 1/1024 s and 3/1024 s: sums of them are exact in binary, so a time limit falls on a known sample.
ONE, THREE = 1000.0 / 1024.0, 3000.0 / 1024.0


def _measure(durations_ms: List[float], **settings: object) -> dict:
    replay = Replay(durations_ms)
    keys = {"warmup": 0, "min_iterations": 64, "min_seconds": 0.0, "max_seconds": 1e9, **settings}
    return measure_latency(replay.run, clock=replay.clock, **keys)  # type: ignore[arg-type]


def _precise(samples: List[float], precision: float) -> bool:
    """The rule, written out independently: the order statistics around rank n/2 within +/- precision."""
    ordered = sorted(samples)
    n = len(ordered)
    low = ordered[max(math.floor(n / 2 - 0.98 * math.sqrt(n)), 1) - 1]
    high = ordered[min(math.ceil(n / 2 + 0.98 * math.sqrt(n) + 1), n) - 1]
    return (high - low) / 2 <= precision * float(np.median(ordered))


def test_the_median_interval_covers_the_true_median_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(1)
    for n in (64, 301):
        hits = 0
        for _ in range(2000):
            low, high = median_ci95(list(rng.exponential(1.0, size=n)))  # skewed, like latencies
            hits += low <= math.log(2.0) <= high
        assert 0.93 <= hits / 2000 <= 0.985, (n, hits)


def test_the_median_interval_is_the_order_statistics_around_the_middle() -> None:
    samples = [float(v) for v in range(1, 65)][::-1]  # 64 ranks, given out of order
    assert median_ci95(samples) == (24.0, 41.0)  # 32 -/+ 1.96 * 8 / 2, whole ranks outward
    assert median_ci95([5.0]) == (5.0, 5.0)
    assert median_ci95([3.0, 1.0, 2.0]) == (1.0, 3.0)  # too few for 95%: the whole range


def test_precision_stops_once_the_median_is_known_that_well() -> None:
    durations = list(np.random.default_rng(2).lognormal(np.log(10.0), 0.15, size=20_000))
    stats = _measure(durations, precision=0.02)
    n = stats["n"]
    assert stats["stopped_by"] == "precision" and n > 64  # 64 samples of a 15% spread are not enough
    assert stats["precision"] <= 0.02 and _precise(durations[:n], 0.02)
    # Looked at after 64 samples, then after every 1/16th more: it stops at the first look that was enough.
    looks = [64]
    while looks[-1] < n:
        looks.append(looks[-1] + looks[-1] // 16)
    assert n == looks[-1] and [k for k in looks if _precise(durations[:k], 0.02)] == [n]
    low, high = stats["median_ci95"]
    assert low <= stats["p50"] <= high and (high - low) / 2 / stats["p50"] == pytest.approx(stats["precision"])


def test_a_steady_configuration_stops_at_the_minimums() -> None:
    durations = list(np.random.default_rng(3).lognormal(np.log(10.0), 0.01, size=1000))
    stats = _measure(durations, precision=0.02, min_seconds=1.0)
    # 1% spread: 64 samples already know the median to 2%; the one second is what it waits for.
    assert stats["stopped_by"] == "precision"
    assert stats["n"] == 1 + int(np.searchsorted(np.cumsum(durations) / 1000.0, 1.0))


def test_a_median_that_never_gets_precise_stops_at_max_seconds() -> None:
    durations = [ONE, THREE] * 50_000  # half and half: the middle ranks straddle the gap for ever
    stats = _measure(durations, precision=0.02, max_seconds=5.0)
    assert (stats["stopped_by"], stats["n"], stats["elapsed_s"]) == ("max_seconds", 2560, 5.0)
    assert stats["precision"] == 0.5


def test_without_precision_the_two_minimums_stop_it_and_the_interval_is_still_recorded() -> None:
    durations = list(np.random.default_rng(4).lognormal(np.log(10.0), 0.3, size=1000))
    stats = _measure(durations, min_seconds=0.0)
    assert stats["stopped_by"] == "target" and stats["n"] == 64
    assert stats["median_ci95"] == pytest.approx(median_ci95(durations[:64])) and stats["precision"] > 0.02


def test_a_median_above_the_ceiling_stops_at_the_minimums() -> None:
    stats = _measure([100.0] * 1000, precision=0.02, min_seconds=2.0, stop_above_ms=50.0)
    assert (stats["stopped_by"], stats["n"]) == ("slower", 64)  # 6.4 s: the count is the later minimum
    # 1/64 s each: two seconds are the later minimum, and it is judged only then.
    stats = _measure([15.625] * 1000, precision=0.02, min_seconds=2.0, stop_above_ms=10.0)
    assert (stats["stopped_by"], stats["n"]) == ("slower", 128)
    fast = _measure([15.625] * 1000, min_seconds=2.0, stop_above_ms=50.0)
    assert fast["stopped_by"] == "target" and fast["n"] == 128


def test_a_median_that_climbs_above_the_ceiling_later_stops_then() -> None:
    # The board got busy after the minimum count: the median passes the ceiling past 128 samples.
    durations = list(np.random.default_rng(5).lognormal(np.log(10.0), 0.2, size=64)) + [100.0] * 1000
    stats = _measure(durations, precision=0.001, stop_above_ms=50.0)
    assert stats["stopped_by"] == "slower" and 128 < stats["n"] <= 128 + 128 // 16 + 1


def test_the_rules_look_at_the_samples_on_a_geometric_schedule_not_at_every_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    looks: List[int] = []
    rule: Callable[..., str] = agent.measure._stop_rule

    def counted(samples: List[float], *args: object) -> str:
        looks.append(len(samples))
        return rule(samples, *args)

    monkeypatch.setattr(agent.measure, "_stop_rule", counted)
    stats = _measure([ONE, THREE] * 50_000, precision=0.02, stop_above_ms=10.0, max_seconds=50.0)
    assert stats["n"] == 25_600 and looks[0] == 64
    # Each look 1/16th further on: about a hundred looks in 25,600 samples, each a sort between two calls.
    assert len(looks) <= math.log(25_600 / 64) / math.log(1 + 1 / 16) + 3


def test_a_precision_needs_a_cap() -> None:
    with pytest.raises(ValueError, match="max_seconds"):
        _measure([1.0] * 100, precision=0.02, max_seconds=None)


# --- the job's stages ---------------------------------------------------------------------


def _checked(result: dict) -> dict:
    """The result as the controller takes it: through its schema check, JSON and back."""
    record = json.loads(json.dumps(result))
    checked = check_result(record, record["job_id"])
    assert checked["status"] == "ok", checked["failure"]
    return dict(checked)


@pytest.fixture(scope="module")
def cls_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cls-data") / "dataset.npz"
    datasets.make_dataset("ocr-cls", {"x": ((1, 3, 48, 192), "float32")}, 8, 0, path)
    return path


MEASURE = {"warmup": 2, "min_iterations": 64, "min_seconds": 0.1, "max_seconds": 20.0,
           "batch_sizes": [1, 2], "throughput_seconds": 0.1}


def _job(workdir: Path, cls_data: Path, **measure: object) -> dict:
    """The real classifier on ONNX Runtime, with its rendered dataset and two of its lines as images."""
    dataset = workdir / "dataset.npz"
    dataset.write_bytes(cls_data.read_bytes())
    job = json.loads(write_job(workdir, "onnxruntime", {"threads": 1}, measure={**MEASURE, **measure},
                               dataset=dataset).read_text())
    (workdir / "images.tar").write_bytes(pack(rendered_files(cls_data)[:2]))
    job["artifacts"]["images"] = {"file": "images.tar", "sha256": sha256(workdir / "images.tar")}
    return job


def test_a_slower_configuration_measures_nothing_after_its_latency(tmp_path: Path, cls_data: Path) -> None:
    result = _checked(run_job(_job(tmp_path, cls_data, precision=0.02, stop_above_ms=0.001, min_seconds=0.0),
                              str(tmp_path)))
    lat = result["latency"]
    assert (lat["stopped_by"], lat["n"]) == ("slower", 64)
    assert result["accuracy"] is None and result["throughput"] == [] and "e2e" not in result
    assert "accuracy_ms" not in result["phases"] and result["memory"]["peak_rss_mb"] > 0
    (note,) = result["notes"]
    assert note.startswith("stopped at 64 samples: median %.4g ms is above the 0.001 ms limit" % lat["p50"])
    assert note.endswith("accuracy, throughput and e2e not measured")


def test_a_full_job_with_precision_has_every_figure(tmp_path: Path, cls_data: Path) -> None:
    result = _checked(run_job(_job(tmp_path, cls_data, precision=0.05, stop_above_ms=1000.0), str(tmp_path)))
    lat = result["latency"]
    assert lat["stopped_by"] in ("precision", "max_seconds") and lat["n"] >= 64
    assert lat["stopped_by"] == "max_seconds" or lat["precision"] <= 0.05
    assert result["accuracy"]["samples"] == 8 and [t["batch"] for t in result["throughput"]] == [1, 2]
    assert result["e2e"]["n"] >= 64 and "notes" not in result


def test_accuracy_e2e_and_throughput_can_each_be_left_out(tmp_path: Path, cls_data: Path) -> None:
    result = _checked(run_job(_job(tmp_path, cls_data, accuracy=False, e2e=False, batch_sizes=[]), str(tmp_path)))
    assert result["latency"]["stopped_by"] == "target" and result["latency"]["n"] >= 64
    assert result["accuracy"] is None and "accuracy_ms" not in result["phases"]
    assert result["throughput"] == [] and "e2e" not in result
