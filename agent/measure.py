"""Latency, throughput and memory measurement, by the rules in DESIGN.md.

Warm up, then time until BOTH a sample count and a duration are reached (or a hard cap),
keep every raw sample, never trim, and say which percentile method was used.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

PERCENTILE_METHOD = "linear"  # numpy's default in every release, so old boards agree
THROUGHPUT_MIN_ITERATIONS = 8

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


def measure_latency(
    run: Callable[[int], Any],
    warmup: int,
    min_iterations: int,
    min_seconds: float,
    max_seconds: Optional[float] = None,
    clock: Clock = time.perf_counter,
    inner: Optional[Callable[[], Optional[float]]] = None,
) -> Dict[str, Any]:
    """Time ``run(i)`` after ``warmup`` untimed calls; stop on count AND time, or at max_seconds.

    Returns :func:`latency_stats` plus "warmup", "elapsed_s" and "stopped_by"
    ("target" when both minimums were met, "max_seconds" when the cap cut the run short).
    ``inner`` reads the engine's own timing of the call just made (ms, or None); when it gives
    one for every call, "engine" holds their p50/mean/min/max, so the Python call's share of
    the latency is known.
    """
    if min_iterations < 1:
        raise ValueError("min_iterations must be >= 1, not %r" % min_iterations)
    for i in range(max(int(warmup), 0)):
        run(i)
    samples: List[float] = []
    engine_samples: List[Optional[float]] = []
    stopped_by = "target"
    start = clock()
    i = 0
    while True:
        t0 = clock()
        run(i)
        t1 = clock()
        samples.append((t1 - t0) * 1000.0)
        if inner is not None:
            engine_samples.append(inner())
        i += 1
        elapsed = t1 - start
        if i >= min_iterations and elapsed >= min_seconds:
            break
        if max_seconds is not None and elapsed >= max_seconds:
            stopped_by = "max_seconds"
            break
    stats = latency_stats(samples)
    stats.update({"warmup": int(warmup), "elapsed_s": clock() - start, "stopped_by": stopped_by})
    if engine_samples and None not in engine_samples:
        timed = latency_stats([float(v) for v in engine_samples])  # type: ignore[arg-type]
        stats["engine"] = {k: timed[k] for k in ("p50", "mean", "min", "max", "n")}
    return stats


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
