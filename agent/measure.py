"""Latency, throughput and memory measurement, by the rules in DESIGN.md.

Warm up, then time until BOTH a sample count and a duration are reached (or a hard cap),
keep every raw sample, never trim, and say which percentile method was used. With a precision,
sampling goes on past the two minimums until the median is known that well (its 95% interval,
read off the samples' own order statistics, so no distribution is assumed), at the latest at the
cap; with a ceiling, a median already above it at the two minimums stops sampling there.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

PERCENTILE_METHOD = "linear"  # numpy's default in every release, so old boards agree
THROUGHPUT_MIN_ITERATIONS = 8
CI95_Z = 1.96
# The stopping rules look at the samples again after every 1/16th more of them: a partial sort of
# the samples so far, between two timed calls, about a hundred times in 25,000 samples.
CHECK_GROWTH = 16

Clock = Callable[[], float]


def latency_stats(samples_ms: Sequence[float]) -> Dict[str, Any]:
    """p50/p90/p99, mean, std (ddof=1), min, max, n, cv of raw samples in ms; nothing trimmed."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no latency samples")
    # No method= argument: numpy < 1.22 calls it interpolation=, and linear is the default.
    p50, p90, p99 = (float(v) for v in np.percentile(a, [50.0, 90.0, 99.0]))
    mean = float(a.mean())
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return {
        "samples_ms": [float(v) for v in a],
        "p50": p50, "p90": p90, "p99": p99,
        "mean": mean, "std": std,
        "min": float(a.min()), "max": float(a.max()),
        "n": int(a.size),
        "cv": std / mean if mean > 0 else None,
        "percentile_method": PERCENTILE_METHOD,
    }


def median_ci95(samples_ms: Sequence[float]) -> Tuple[float, float]:
    """The distribution-free 95% confidence interval of the median: the order statistics at ranks
    n/2 -/+ 1.96 sqrt(n)/2 (the binomial count of samples below the median, normally
    approximated), widened to whole ranks and kept within the samples."""
    a = np.asarray(samples_ms, dtype=np.float64)
    n = int(a.size)
    if n == 0:
        raise ValueError("no latency samples")
    half = CI95_Z * math.sqrt(n) / 2.0
    low = min(max(int(math.floor(n / 2.0 - half)), 1), n)  # 1-based ranks
    high = max(min(int(math.ceil(n / 2.0 + half + 1.0)), n), 1)
    ordered = np.partition(a, [low - 1, high - 1])
    return float(ordered[low - 1]), float(ordered[high - 1])


def relative_half_width(low: float, high: float, median: float) -> Optional[float]:
    """Half the interval's width as a fraction of the median (None for a median of 0)."""
    return (high - low) / 2.0 / median if median > 0 else None


def measure_latency(
    run: Callable[[int], Any],
    warmup: int,
    min_iterations: int,
    min_seconds: float,
    max_seconds: Optional[float] = None,
    clock: Clock = time.perf_counter,
    inner: Optional[Callable[[], Optional[float]]] = None,
    precision: Optional[float] = None,
    stop_above_ms: Optional[float] = None,
) -> Dict[str, Any]:
    """Time ``run(i)`` after ``warmup`` untimed calls, until a stopping rule says enough.

    Without ``precision``: at min_iterations AND min_seconds ("stopped_by": "target"). With it:
    past those two minimums, as soon as the 95% interval of the median is within +/- precision
    of it ("precision"). Either way at max_seconds at the latest ("max_seconds"). With
    ``stop_above_ms``: once both minimums are reached, a median above it stops sampling there
    ("slower"): the caller measures nothing more of a configuration that cannot be chosen. The
    time minimum counts here too, so a fast configuration is not judged on the few milliseconds
    its first samples take, which one busy moment of the board can fill.

    Returns :func:`latency_stats` plus "warmup", "elapsed_s", "stopped_by", "median_ci95" [low,
    high] and "precision" (the half-width reached, relative to the median).
    ``inner`` reads the engine's own timing of the call just made (ms, or None); when it gives
    one for every call, "engine" holds their p50/mean/min/max, so the Python call's share of
    the latency is known.
    """
    if min_iterations < 1:
        raise ValueError("min_iterations must be >= 1, not %r" % min_iterations)
    if precision is not None and max_seconds is None:
        raise ValueError("a precision target needs max_seconds: a median may never get that precise")
    for i in range(max(int(warmup), 0)):
        run(i)
    samples: List[float] = []
    engine_samples: List[Optional[float]] = []
    stopped_by = ""
    next_check = min_iterations
    start = clock()
    i = 0
    while not stopped_by:
        t0 = clock()
        run(i)
        t1 = clock()
        samples.append((t1 - t0) * 1000.0)
        if inner is not None:
            engine_samples.append(inner())
        i += 1
        elapsed = t1 - start
        minimums = i >= min_iterations and elapsed >= min_seconds
        if minimums and i >= next_check and (stop_above_ms is not None or precision is not None):
            next_check = i + max(i // CHECK_GROWTH, 1)
            stopped_by = _stop_rule(samples, precision, stop_above_ms)
        if not stopped_by and minimums and precision is None:
            stopped_by = "target"
        if not stopped_by and max_seconds is not None and elapsed >= max_seconds:
            stopped_by = "max_seconds"
    stats = latency_stats(samples)
    low, high = median_ci95(samples)
    stats.update({"warmup": int(warmup), "elapsed_s": clock() - start, "stopped_by": stopped_by,
                  "median_ci95": [low, high], "precision": relative_half_width(low, high, stats["p50"])})
    if engine_samples and None not in engine_samples:
        timed = latency_stats([float(v) for v in engine_samples])  # type: ignore[arg-type]
        stats["engine"] = {k: timed[k] for k in ("p50", "mean", "min", "max", "n")}
    return stats


def _stop_rule(samples: List[float], precision: Optional[float], stop_above_ms: Optional[float]) -> str:
    """"slower", "precision", or "" (go on), for the samples taken so far (both minimums reached)."""
    median = float(np.median(samples))
    if stop_above_ms is not None and median > stop_above_ms:
        return "slower"
    if precision is not None:
        reached = relative_half_width(*median_ci95(samples), median)
        if reached is not None and reached <= precision:
            return "precision"
    return ""


def measure_throughput(
    run: Callable[[Dict[str, np.ndarray]], Any],
    make_batch: Callable[[int], Dict[str, np.ndarray]],
    batch_sizes: Sequence[int],
    seconds: float,
    max_seconds: Optional[float] = None,
    fixed_batch: Optional[int] = None,
    warmup: int = 1,
    clock: Clock = time.perf_counter,
) -> List[Dict[str, Any]]:
    """Items/s per batch size: at least 8 runs and ``seconds`` each, after ``warmup`` runs.

    A batch size the model cannot take (``fixed_batch`` differs, or the engine refuses it) is
    recorded as {"batch", "error"}: one model with a fixed batch is data, not a failed job.
    """
    rows: List[Dict[str, Any]] = []
    for b in batch_sizes:
        b = int(b)
        if fixed_batch is not None and b != fixed_batch:
            rows.append({"batch": b, "error": "the model's batch dimension is fixed at %d" % fixed_batch})
            continue
        try:
            rows.append(_throughput_one(run, make_batch(b), b, seconds, max_seconds, warmup, clock))
        except Exception as exc:  # the engine refused this shape: record it, go on
            rows.append({"batch": b, "error": one_line(exc)})
    return rows


def _throughput_one(
    run: Callable[[Dict[str, np.ndarray]], Any],
    batch: Dict[str, np.ndarray],
    b: int,
    seconds: float,
    max_seconds: Optional[float],
    warmup: int,
    clock: Clock,
) -> Dict[str, Any]:
    for _ in range(max(int(warmup), 1)):  # a new shape may reallocate or recompile: not timed
        run(batch)
    samples: List[float] = []
    row: Dict[str, Any] = {"batch": b}
    start = clock()
    while True:
        t0 = clock()
        run(batch)
        t1 = clock()
        samples.append(t1 - t0)
        elapsed = t1 - start
        if len(samples) >= THROUGHPUT_MIN_ITERATIONS and elapsed >= seconds:
            break
        if max_seconds is not None and elapsed >= max_seconds:
            row["stopped_by"] = "max_seconds"
            break
    a = np.asarray(samples, dtype=np.float64)
    row.update({
        "items_per_s": float(b * a.size / a.sum()),
        "p50_ms": float(np.percentile(a, 50.0) * 1000.0),
        "n": int(a.size),
    })
    return row


def one_line(exc: BaseException, limit: int = 400) -> str:
    """``Type: first line of the message``, short enough for a table cell."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if len(lines) > 1 and first.endswith(":"):
        # A header such as OpenVINO's "Exception from src/...cpp:117:": the reason is last.
        first = "%s %s" % (first, lines[-1])
    line = "%s: %s" % (type(exc).__name__, first) if first else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def memory_mb() -> Dict[str, Optional[float]]:
    """{"rss_mb", "peak_rss_mb"} of this process: /proc/self/status, else getrusage (peak only)."""
    found: Dict[str, Optional[float]] = {"rss_mb": None, "peak_rss_mb": None}
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    kb = float(value.split()[0])  # the kernel always reports kB
                    found["rss_mb" if key == "VmRSS" else "peak_rss_mb"] = kb / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    if found["peak_rss_mb"] is None:
        try:
            import resource  # not on Windows

            peak = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
            # macOS reports bytes, Linux and the BSDs kB.
            found["peak_rss_mb"] = peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0
        except (ImportError, OSError, ValueError):
            pass
    return found
