"""OpenVINO's ``benchmark_app``: the tool that ships with the openvino package.

Source: openvino/tools/benchmark (main.py, parameters.py, utils/statistics_report.py) in the
openvino wheel, 2026.4; the same tool as the C++ samples/cpp/benchmark_app.

- arguments: ``-m`` model (ONNX or IR), ``-d`` device, ``-niter`` iterations, ``-api sync``
  with ``-nireq 1 -nstreams 1`` so each iteration is one request's latency, ``-hint none``
  (the UI refuses ``-nthreads`` under a performance hint), ``-nthreads``, ``-shape [..]`` for
  the single input, ``-infer_precision`` (f32, bf16, f16; left out: the device's default);
- warm-up: exactly one "first inference", reported and kept out of the statistics;
- output (stdout): "Read model took X ms", "Compile model took X ms", "First inference took X
  ms", "Count: N iterations", then Median, Average, Min and Max latency in ms or us, the
  compiled model's INFERENCE_PRECISION_HINT and the "Build ....... VERSION" line.
"""

from __future__ import annotations

import re

from controller.boards.native import NativeBenchmark, NativeRun, NativeSummary, raw_tail, register

PRECISIONS = {"fp32": "f32", "f32": "f32", "bf16": "bf16", "fp16": "f16", "f16": "f16"}
_TYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
_TOOK = re.compile(r"(Read model|Compile model|First inference) took\s+([0-9.]+) ms")
_COUNT = re.compile(r"Count:\s+(\d+) iterations")
_STAT = re.compile(r"^\[ INFO \]\s+(Median|Average|Min|Max):\s+([0-9.]+) (ms|us)\s*$")
_PRECISION = re.compile(r"INFERENCE_PRECISION_HINT: <Type: '(\w+)'>")
_BUILD = re.compile(r"Build \.+ (\S+)")
_DEVICES = re.compile(r"Execution Devices:\s*\['([^']+)'")


@register
class BenchmarkApp(NativeBenchmark):
    """Backends: an OpenVINO device name ("CPU", the default, "GPU", "NPU")."""

    name = "benchmark_app"
    engine = "openvino"
    binary = "benchmark_app"
    model_suffixes = (".xml",)  # IR, as the controller converts it; the tool also reads .onnx
    fixed_warmup = 1
    percentile_method = "median of the iteration latencies"

    def argv(self, binary: str, models: list[str], run: NativeRun) -> list[str]:
        self.check_models(models)
        if run.warmup != self.fixed_warmup:
            raise ValueError("benchmark_app always runs exactly one first inference before measuring; ask for warmup=1")
        if run.cores is not None:
            raise ValueError("benchmark_app has no core-cluster option; pin the board with the inventory's cpus")
        argv = [binary, "-m", models[0], "-d", run.backend or "CPU", "-hint", "none", "-api", "sync",
                "-nireq", "1", "-nstreams", "1", "-niter", str(run.iterations)]
        if run.threads is not None:
            argv += ["-nthreads", str(run.threads)]
        if run.input_shape is not None:
            argv += ["-shape", "[" + ",".join(str(d) for d in run.input_shape) + "]"]
        if run.precision is not None:
            if run.precision not in PRECISIONS:
                raise ValueError(f"benchmark_app precisions are {', '.join(sorted(PRECISIONS))}; got {run.precision!r}")
            argv += ["-infer_precision", PRECISIONS[run.precision]]
        return argv

    def parse(self, stdout: str, model: str | None = None) -> NativeSummary:
        took = {name: float(ms) for name, ms in _TOOK.findall(stdout)}
        count = _COUNT.search(stdout)
        stats = {}
        for line in stdout.splitlines():
            match = _STAT.match(line.strip())
            if match:
                value = float(match.group(2))
                stats[match.group(1)] = value / 1000.0 if match.group(3) == "us" else value
        if count is None:
            self.fail("no 'Count: N iterations' line", stdout)
        missing = [k for k in ("Median", "Average", "Min", "Max") if k not in stats]
        if missing:
            self.fail(f"no latency {', '.join(missing)} line", stdout)
        precision = _PRECISION.search(stdout)
        build = _BUILD.search(stdout)
        devices = _DEVICES.search(stdout)
        load = [took[k] for k in ("Read model", "Compile model") if k in took]
        return NativeSummary(
            n=int(count.group(1)),
            mean_ms=stats["Average"], min_ms=stats["Min"], max_ms=stats["Max"], p50_ms=stats["Median"],
            init_ms=sum(load) if load else None,
            first_ms=took.get("First inference"),
            tool_version=build.group(1) if build else None,
            warmup=1 if "First inference" in took else None,
            device=devices.group(1) if devices else None,
            precision=_TYPE_NAMES.get(precision.group(1), precision.group(1)) if precision else None,
            raw_tail=raw_tail(stdout),
        )
