"""Paddle Lite's ``benchmark_bin`` (lite/api/tools/benchmark, Paddle-Lite v2.10 and later).

Sources, at https://github.com/PaddlePaddle/Paddle-Lite/tree/3d329c954c82d3e189e2d3ab35a5558d35e7202a:

- flags: lite/api/tools/benchmark/utils/flags.cc and flags.h (names, defaults, and the meaning of
  --power_mode: 0 big cluster, 1 little cluster, 2 all cores, 3 no bind);
- required flags: CheckFlagsValid in benchmark.h (a model, --backend and --input_shape);
- output: Run in benchmark.cc prints "benchmark_bin version", "warmup", "repeats", "backend", then
  "Time(unit: ms):" with init, first, min, max, avg. PerfData in benchmark.h takes min, max and avg
  over the last ``repeats`` runs only, and ``first`` is the very first run (a warm-up run when
  --warmup > 0); init is the time to create the predictor;
- usage and sample outputs: docs/performance/benchmark_tools.md.

The older tool of the same name (lite/api/benchmark.cc, before v2.10) takes other flags and prints
only an average to the console; it is not supported.
"""

from __future__ import annotations

import re

from controller.boards.native import NativeBenchmark, NativeRun, NativeSummary, raw_tail, register

POWER_MODES = {"big": "0", "little": "1", "all": "2"}
# --backend values from backend_msg in flags.h and the comparisons in benchmark.cc; the NNAdapter
# backends also need device names and are not offered here.
BACKENDS = ("arm", "x86", "opencl,arm", "opencl,x86", "opencl", "x86_opencl")
# benchmark.cc echoes "gpu precision" for exactly these backends.
OPENCL_BACKENDS = frozenset(("opencl,arm", "opencl,x86", "opencl", "x86_opencl"))
GPU_PRECISIONS = ("fp32", "fp16")
TIMES = ("init", "first", "min", "max", "avg")

_TIME = re.compile(r"^(\w+)\s*=\s*([-+0-9.eE]+)\s*$")


@register
class PaddleLiteBenchmark(NativeBenchmark):
    """Runs an optimized ``.nb`` model (what Paddle Lite's opt tool writes)."""

    name = "benchmark_bin"
    engine = "paddlelite"
    binary = "benchmark_bin"
    model_suffixes = (".nb",)

    def argv(self, binary: str, models: list[str], run: NativeRun) -> list[str]:
        self.check_models(models)
        if run.backend not in BACKENDS:
            raise ValueError(f"benchmark_bin requires --backend, one of {', '.join(BACKENDS)}; got {run.backend!r}")
        if run.input_shape is None:
            raise ValueError("benchmark_bin requires --input_shape: set input_shape")
        argv = [
            binary,
            f"--optimized_model_file={models[0]}",
            f"--input_shape={','.join(str(d) for d in run.input_shape)}",
            f"--warmup={run.warmup}",
            f"--repeats={run.iterations}",
            f"--backend={run.backend}",
        ]
        if run.threads is not None:
            argv.append(f"--threads={run.threads}")
        if run.cores is not None:
            argv.append(f"--power_mode={POWER_MODES[run.cores]}")
        if run.precision is not None:
            # --cpu_precision only matters when benchmark_bin converts a Paddle model itself; an
            # .nb file's CPU precision was fixed when opt wrote it.
            if run.backend not in OPENCL_BACKENDS or run.precision not in GPU_PRECISIONS:
                raise ValueError(
                    f"benchmark_bin sets a precision only for the OpenCL backends (--gpu_precision "
                    f"{'/'.join(GPU_PRECISIONS)}); got precision={run.precision!r} with backend={run.backend!r}"
                )
            argv.append(f"--gpu_precision={run.precision}")
        return argv

    def parse(self, stdout: str, model: str | None = None) -> NativeSummary:
        times = self._times(stdout)
        missing = [key for key in TIMES if key not in times]
        if missing:
            self.fail(f"no {', '.join(missing)} in the 'Time(unit: ms):' block of the Perf Info", stdout)
        repeats = _field(stdout, "repeats")
        if repeats is None or not repeats.isdigit() or int(repeats) < 1:
            self.fail("no 'repeats: N' line in the Runtime Info", stdout)
        reported = _field(stdout, "optimized_model_file")
        if model is not None and reported is not None and reported != model:
            self.fail(f"the output is for {reported!r}, not {model!r}", stdout)
        warmup = _field(stdout, "warmup")
        return NativeSummary(
            n=int(repeats),
            mean_ms=times["avg"],
            min_ms=times["min"],
            max_ms=times["max"],
            init_ms=times["init"],
            first_ms=times["first"],
            tool_version=_field(stdout, "benchmark_bin version") or None,
            warmup=int(warmup) if warmup is not None and warmup.isdigit() else None,
            device=_field(stdout, "backend") or None,
            precision=_field(stdout, "gpu precision") or None,
            raw_tail=raw_tail(stdout),
        )

    @staticmethod
    def _times(output: str) -> dict[str, float]:
        """The ``key = value`` lines right under "Time(unit: ms):".

        Only that block: with --enable_memory_profile, 2021-2022 releases print a second "init" and
        "avg" under "Memory Usage(unit: MB):".
        """
        lines = [line.strip() for line in output.splitlines()]
        if "Time(unit: ms):" not in lines:
            return {}
        times: dict[str, float] = {}
        for line in lines[lines.index("Time(unit: ms):") + 1:]:
            match = _TIME.match(line)
            if match is None:
                break
            times[match.group(1)] = float(match.group(2))
        return times


def _field(output: str, key: str) -> str | None:
    """The value of the first ``key: value`` line (the Runtime, Model and Backend Info blocks)."""
    match = re.search(rf"^{re.escape(key)}:[ \t]*(.*?)\s*$", output, re.MULTILINE)
    return None if match is None else match.group(1)
