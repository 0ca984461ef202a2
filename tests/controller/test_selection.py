"""Selection by objective: lowest latency, or most items/s under a latency ceiling."""

from __future__ import annotations

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
