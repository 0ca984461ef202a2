"""The regression rule on its own: a significant test AND an effect above the threshold."""

from __future__ import annotations

import numpy as np

from controller.config.spec import RegressionSpec
from controller.results.regression import Measured, compare, latency_change

RULES = RegressionSpec(latency_threshold=0.05, p_value=0.01, accuracy_threshold=0.01)


def samples(median: float, n: int = 200, seed: int = 0, spread: float = 0.03) -> list[float]:
    # Latency-like: a positive, right-skewed distribution around the median.
    rng = np.random.default_rng(seed)
    return list(median * rng.lognormal(0.0, spread, n))


def test_same_distribution_is_unchanged() -> None:
    verdict, rel, p = latency_change(samples(10, seed=1), samples(10, seed=2), RULES)
    assert verdict == "unchanged" and abs(rel) < 0.05


def test_ten_percent_slower_is_a_regression_and_faster_an_improvement() -> None:
    verdict, rel, p = latency_change(samples(10, seed=1), samples(11, seed=2), RULES)
    assert verdict == "regression" and p <= 0.01 and 0.08 < rel < 0.12
    verdict, rel, _ = latency_change(samples(11, seed=1), samples(10, seed=2), RULES)
    assert verdict == "improvement" and rel < -0.05


def test_significant_but_small_is_not_a_regression() -> None:
    # 2% slower with many samples: Mann-Whitney is sure, but the effect is under 5%.
    verdict, rel, p = latency_change(samples(10, 5000, 1, 0.01), samples(10.2, 5000, 2, 0.01), RULES)
    assert p < 1e-6 and verdict == "unchanged"


def test_large_but_not_significant_is_not_a_regression() -> None:
    # A 10% shift in the median of a handful of very noisy samples proves nothing.
    verdict, rel, p = latency_change(samples(10, 8, 1, 0.6), samples(11, 8, 2, 0.6), RULES)
    assert p > 0.01 and verdict == "unchanged"


def _m(p50: float, acc: float | None = 0.9, status: str = "ok", variant: str = "v1", seed: int = 0,
       chip: str = "rk3399") -> Measured:
    s = samples(p50, seed=seed) if status == "ok" else []
    return Measured(status, None if status == "ok" else "boom", chip, "m1", variant, "1.0", s, p50, acc, "accuracy")


def test_compare_covers_accuracy_failures_and_setup_changes() -> None:
    key = ("m", "b", "e", "fp32")
    before = {key: _m(10), ("m", "b", "e", "int8"): _m(5), ("m", "b", "e", "fp16"): _m(7), ("m", "b", "e", "old"): _m(1),
              ("m", "b", "e", "fp32@bf16"): _m(4)}
    after = {
        key: _m(10, acc=0.85, seed=9),                     # accuracy fell by 0.05
        ("m", "b", "e", "int8"): _m(5, status="failed"),   # used to run
        ("m", "b", "e", "fp16"): _m(7, variant="v2"),      # another artifact: not comparable
        ("m", "b", "e", "new"): _m(3),
        ("m", "b", "e", "fp32@bf16"): _m(4, chip="rk3588"),  # the board was declared another chip
    }
    changes = {(c.key[3], c.what): c for c in compare(before, after, RULES)}
    assert changes[("fp32", "accuracy")].verdict == "regression"
    assert changes[("fp32", "latency")].verdict == "unchanged"
    assert changes[("int8", "status")].verdict == "failing" and changes[("int8", "status")].bad
    assert changes[("fp16", "setup")].verdict == "not comparable"
    assert "variant artifact changed" in changes[("fp16", "setup")].note
    assert changes[("fp32@bf16", "setup")].note == "chip rk3399 -> rk3588"
    assert changes[("new", "status")].verdict == "new" and changes[("old", "status")].verdict == "gone"
