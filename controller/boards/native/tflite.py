"""TensorFlow Lite's ``benchmark_model`` (tensorflow/lite/tools/benchmark).

Sources in https://github.com/tensorflow/tensorflow:

- flags: tensorflow/lite/tools/benchmark/README.md and benchmark_model.cc (--num_runs, --min_secs,
  --max_secs, --num_threads, --warmup_runs, --warmup_min_secs), benchmark_tflite_model.cc
  (--graph), tensorflow/lite/tools/delegates/*_delegate_provider.cc (--use_xnnpack, --use_gpu,
  --use_nnapi);
- runs: BenchmarkModel::Run in benchmark_model.cc runs "at least num_runs iterations and at least
  min_secs seconds but terminate if exceeding max_secs", warm-up first, and prints one statistics
  line per phase after its "Running benchmark for at least ..." header;
- statistics line: Stat::OutputToStream (tensorflow/core/util/stats_calculator.h, now
  xla/tsl/util/stats_calculator.h): ``count=N first= curr= min= max= avg= std=`` in microseconds,
  std being the population standard deviation; ``count=N curr=X`` (plus "(all same)" when N > 1)
  when every run took the same time; newer releases use StatWithPercentiles, which appends
  ``p5= median= p95=``, the median being element n*50/100 of the sorted runs;
- summary: "Average inference timings in us: Warmup: ..., Init: ..., no stats: ..." (seen in 2019
  builds), "... Init: ..., Inference: ..." (TF 2.2), then "Inference timings in us: Init: ...,
  First inference: ..., Warmup (avg): ..., Inference (avg): ..." (BenchmarkLoggingListener::
  OnBenchmarkEnd in benchmark_model.cc, seen from August 2020). Init is the model-loading time,
  the first inference is the first warm-up run (the warm-up line's ``first``).

The tool logs to stderr, with an "INFO: " prefix in recent releases.
"""

from __future__ import annotations

import re

from controller.boards.native import NativeBenchmark, NativeRun, NativeSummary, raw_tail, register

BACKEND_FLAGS = {
    # Recent builds apply XNNPACK by default; the README says an explicit false restores the
    # original CPU kernels.
    "cpu": "--use_xnnpack=false",
    "xnnpack": "--use_xnnpack=true",
    "gpu": "--use_gpu=true",
    "nnapi": "--use_nnapi=true",
}
US_PER_MS = 1000.0

_PREFIX = r"^(?:INFO: )?"
_HEADER = re.compile(_PREFIX + r"Running benchmark for at least \d+ iterations")
_STAT = re.compile(_PREFIX + r"count=\d+")
_PAIR = re.compile(r"(\w+)=([-+0-9.eE]+)")
_SUMMARY = re.compile(r"(?:Average inference timings|Inference timings) in us: .*\bInit: ([-+0-9.eE]+)")
_GRAPH = re.compile(_PREFIX + r"Graph: \[(.*)\]$")
_APPLIED = re.compile(r"Explicitly applied (\w+) delegate, and the model graph will be (completely|partially) executed")


@register
class TfLiteBenchmark(NativeBenchmark):
    """Runs a ``.tflite`` model for exactly the runs asked (min_secs is set to 0).

    The tool still stops at its max_secs cap (150 s by default), so ``n`` can be below the runs
    asked for a slow model; the summary reports the count the tool printed.
    """

    name = "benchmark_model"
    engine = "tflite"
    binary = "benchmark_model"
    model_suffixes = (".tflite",)
    percentile_method = "benchmark_model: element n*50/100 of the sorted runs, no interpolation"

    def argv(self, binary: str, models: list[str], run: NativeRun) -> list[str]:
        self.check_models(models)
        if run.input_shape is not None:
            raise ValueError("benchmark_model runs the .tflite file's own input shape: its --input_layer_shape "
                             "also needs the input names (--input_layer), which a NativeRun does not carry")
        if run.cores is not None:
            raise ValueError("benchmark_model has no core-affinity flag (its README pins cores with taskset)")
        if run.precision is not None:
            raise ValueError("benchmark_model has no precision flag: the GPU delegate's gpu_precision_loss_allowed "
                             "only allows lower precision, it does not set one")
        if run.backend is not None and run.backend not in BACKEND_FLAGS:
            raise ValueError(f"benchmark_model backends are {', '.join(BACKEND_FLAGS)}; got {run.backend!r}")
        # min_secs and warmup_min_secs default to 1 and 0.5 s, which would add runs beyond those asked.
        argv = [
            binary,
            f"--graph={models[0]}",
            f"--warmup_runs={run.warmup}",
            "--warmup_min_secs=0",
            f"--num_runs={run.iterations}",
            "--min_secs=0",
        ]
        if run.threads is not None:
            argv.append(f"--num_threads={run.threads}")
        if run.backend is not None:
            argv.append(BACKEND_FLAGS[run.backend])
        return argv

    def parse(self, stdout: str, model: str | None = None) -> NativeSummary:
        lines = [line.strip() for line in stdout.splitlines()]
        headers = [i for i, line in enumerate(lines) if _HEADER.match(line)]
        if len(headers) < 2:
            self.fail(f"{len(headers)} of the 2 'Running benchmark for at least' headers (warm-up, measured runs)",
                      stdout)
        warm = _stat_after(lines, headers[-2])
        measured = _stat_after(lines, headers[-1])
        if warm is None or measured is None:
            self.fail("no 'count=' statistics line after the "
                      f"{'warm-up' if warm is None else 'measured runs'} header", stdout)
        summary = next((m for m in map(_SUMMARY.search, lines[headers[-1]:]) if m), None)
        if summary is None:
            self.fail("no 'Inference timings in us' summary line after the measured runs", stdout)
        if measured["count"] < 1:
            self.fail("the measured runs' statistics line counts 0 runs", stdout)
        graph = next((m.group(1) for m in map(_GRAPH.match, lines) if m), None)
        if model is not None and graph is not None and graph != model:
            self.fail(f"the output is for {graph!r}, not {model!r}", stdout)
        median = measured.get("median")
        return NativeSummary(
            n=int(measured["count"]),
            mean_ms=measured["avg"] / US_PER_MS,
            min_ms=measured["min"] / US_PER_MS,
            max_ms=measured["max"] / US_PER_MS,
            std_ms=measured["std"] / US_PER_MS,
            p50_ms=None if median is None else median / US_PER_MS,
            init_ms=float(summary.group(1)) / US_PER_MS,
            first_ms=warm["first"] / US_PER_MS if warm["count"] >= 1 else None,
            warmup=int(warm["count"]),
            device=_device(lines),
            raw_tail=raw_tail(stdout),
        )


def _stat_after(lines: list[str], header: int) -> dict[str, float] | None:
    """The statistics line of the phase whose header is at ``header``, as numbers.

    When every run took the same time the tool prints only ``count`` and ``curr`` (with "(all same)"
    after it when count > 1); then the first, min, max and mean are that time and the deviation is
    0, which is what the tool is saying. A line cut short is None, not a guess.
    """
    for line in lines[header + 1:]:
        if _HEADER.match(line):
            return None
        if _STAT.match(line):
            stat = {key: float(value) for key, value in _PAIR.findall(line)}
            all_same = "first" not in stat and "curr" in stat and (stat["count"] == 1 or "(all same)" in line)
            if all_same:
                stat.update(first=stat["curr"], min=stat["curr"], max=stat["curr"], avg=stat["curr"], std=0.0)
            if stat["count"] >= 1 and not {"first", "min", "max", "avg", "std"} <= stat.keys():
                return None
            return stat
    return None


def _device(lines: list[str]) -> str | None:
    """The delegates the tool says it applied; "+cpu" when only part of the graph went to one."""
    applied = [m.group(1).lower() + ("" if m.group(2) == "completely" else "+cpu")
               for m in map(_APPLIED.search, lines) if m]
    return ",".join(applied) or None
