"""MNN's ``benchmark.out`` (benchmark/benchmark.cpp), MNN from 2020-03 on (the warm-up argument).

Sources, at https://github.com/alibaba/MNN/tree/4d40bdbd7efb73a58383bb5da867a6f41eb1776e:

- arguments (benchmark/benchmark.cpp main, docs/tools/benchmark.md): positional ``models_folder
  [loop_count] [warmup] [forwardtype] [numberThread] [precision] ...``; each one needs all before
  it. forwardtype is an MNNForwardType (include/MNN/MNNForwardType.h: 0 CPU, 1 Metal, 2 CUDA,
  3 OpenCL, 4 Auto, 5 NN, 6 OpenGL, 7 Vulkan); precision a BackendConfig::PrecisionMode (0 Normal,
  1 High, 2 Low, 3 Low_BF16); numberThread is the CPU thread count or, on a GPU, MNN's GPU mode.
  The power mode is always Power_High and the input shape is the model's own (the resize code is
  commented out), so neither is an argument;
- models: findModelFiles benchmarks *every* file in the folder, so the model must sit alone in its
  own directory on the device;
- output (stdout): ``Forward type: **CPU** thread=4** precision=2`` (plain ``Forward type: CPU
  thread=4 precision=2 ...`` since 2023-07), ``--------> Benchmarking... loop = N, warmup = W``
  (no warmup before 2020-03), then per model displayStats' ``[ - ] <file name> max = X ms
  min = Y ms avg = Z ms`` (``Xms`` with no space before 2021-04), over the ``loop`` timed runs.
"""

from __future__ import annotations

import posixpath
import re

from controller.boards.native import NativeBenchmark, NativeRun, NativeSummary, raw_tail, register

FORWARD_TYPES = {"cpu": "0", "metal": "1", "cuda": "2", "opencl": "3", "auto": "4", "nn": "5",
                 "opengl": "6", "vulkan": "7"}
PRECISIONS = {"normal": "0", "high": "1", "low": "2", "low_bf16": "3"}
PRECISION_NAMES = {number: name for name, number in PRECISIONS.items()}

_LOOP = re.compile(r"Benchmarking\.\.\. loop = (\d+)(?:, warmup = (\d+))?")
_FORWARD = re.compile(r"Forward type: \**(\S+?)\** thread=\d+\**\s+precision=(\d+)")
_ROW = re.compile(r"^\[ - \] (.+?)\s+max =\s*([-+0-9.eE]+)\s*ms\s+min =\s*([-+0-9.eE]+)\s*ms"
                  r"\s+avg =\s*([-+0-9.eE]+)\s*ms$")


@register
class MnnBenchmark(NativeBenchmark):
    """Backends are the forward types above by name; precisions normal, high, low, low_bf16."""

    name = "mnn_benchmark"
    engine = "mnn"
    binary = "benchmark.out"
    model_suffixes = (".mnn",)

    def argv(self, binary: str, models: list[str], run: NativeRun) -> list[str]:
        self.check_models(models)
        if run.input_shape is not None:
            raise ValueError("benchmark.out runs the input shape stored in the .mnn file; it takes none")
        if run.cores is not None:
            raise ValueError("benchmark.out always asks for BackendConfig::Power_High and takes no core choice")
        if run.backend is not None and run.backend not in FORWARD_TYPES:
            raise ValueError(f"benchmark.out backends are {', '.join(FORWARD_TYPES)}; got {run.backend!r}")
        if run.precision is not None and run.precision not in PRECISIONS:
            raise ValueError(f"benchmark.out precisions are {', '.join(PRECISIONS)}; got {run.precision!r}")
        positional = [
            ("loop_count", str(run.iterations)),
            ("warmup", str(run.warmup)),
            ("forwardtype", None if run.backend is None else FORWARD_TYPES[run.backend]),
            ("numberThread", None if run.threads is None else str(run.threads)),
            ("precision", None if run.precision is None else PRECISIONS[run.precision]),
        ]
        while positional[-1][1] is None:  # the tool's defaults hold for what is left off the end
            positional.pop()
        gaps = [name for name, value in positional if value is None]
        if gaps:
            raise ValueError(f"benchmark.out takes its arguments by position: set {', '.join(gaps)} too "
                             f"(backend for forwardtype, threads for numberThread)")
        return [binary, posixpath.dirname(models[0]) or ".", *(value for _, value in positional if value)]

    def parse(self, stdout: str, model: str | None = None) -> NativeSummary:
        loop = _LOOP.search(stdout)
        if loop is None or int(loop.group(1)) < 1:
            self.fail("no '--------> Benchmarking... loop = N' line", stdout)
        rows = [m.groups() for m in map(_ROW.match, (line.strip() for line in stdout.splitlines())) if m]
        if model is not None:
            rows = [row for row in rows if row[0] == posixpath.basename(model)]
        if len(rows) != 1:
            self.fail(f"{len(rows)} result lines "
                      + (f"for {posixpath.basename(model)!r}" if model is not None
                         else "and no model named to choose one"), stdout)
        _, max_ms, min_ms, avg_ms = rows[0]
        forward = _FORWARD.search(stdout)
        return NativeSummary(
            n=int(loop.group(1)),
            mean_ms=float(avg_ms),
            min_ms=float(min_ms),
            max_ms=float(max_ms),
            warmup=None if loop.group(2) is None else int(loop.group(2)),
            device=None if forward is None else forward.group(1).lower(),
            precision=None if forward is None else PRECISION_NAMES.get(forward.group(2)),
            raw_tail=raw_tail(stdout),
        )
