"""ncnn's ``benchncnn`` (benchmark/benchncnn.cpp), with a user model: ncnn from 2023-06 on.

Sources, at https://github.com/Tencent/ncnn/tree/a4d2ea1d4422c9e849f166fd7a4aefb52f942f6a/benchmark:

- arguments (benchncnn.cpp main, README.md): positional ``loop_count num_threads powersave
  gpu_device cooling_down``, then ``key=value`` items from the sixth argument on: ``param=`` a
  .param file and ``shape=[w,h,c]`` (parse_shape_list builds ncnn::Mat(w, h, c)). The key=value
  items came with https://github.com/Tencent/ncnn/pull/4782 (2023-06); before that benchncnn ran
  only its built-in models. powersave: 0 all cores, 1 little, 2 big; gpu_device -1 is the CPU;
  cooling_down 1 sleeps 10 s after loading each model;
- only the .param file is read: weights come from DataReaderFromEmpty (zeros), as the README says
  ("The large model binary files (ncnn bin) are not loaded"), so the .bin need not be pushed;
- warm-up: always g_warmup_loop_count runs, 8 on the CPU and 10 with a GPU; not an argument;
- output (stderr): ``loop_count = N`` ... ``gpu_device = N``, then per model
  ``"%20s  min = %7.2f  max = %7.2f  avg = %7.2f"`` in ms, the name being the param path as given.
"""

from __future__ import annotations

import re

from controller.boards.native import NativeBenchmark, NativeRun, NativeSummary, raw_tail, register

POWERSAVE = {"all": "0", "little": "1", "big": "2"}
CPU_WARMUP, GPU_WARMUP = 8, 10
# EdgeFarm cools boards down itself (the inventory's cooldown_s), the same way for every engine.
COOLING_DOWN = "0"

_ROW = re.compile(r"^(\S.*?)\s+min =\s*([-+0-9.eE]+)\s+max =\s*([-+0-9.eE]+)\s+avg =\s*([-+0-9.eE]+)$")
_SETTING = re.compile(r"^(loop_count|gpu_device) = (-?\d+)$")
_VULKAN = re.compile(r"^vulkan(?::(\d+))?$")


@register
class NcnnBenchmark(NativeBenchmark):
    """Backends: "cpu" (the default) or "vulkan", "vulkan:N" for GPU N."""

    name = "benchncnn"
    engine = "ncnn"
    binary = "benchncnn"
    model_suffixes = (".param",)
    fixed_warmup = CPU_WARMUP  # with a GPU backend it is GPU_WARMUP, and argv says so

    def argv(self, binary: str, models: list[str], run: NativeRun) -> list[str]:
        self.check_models(models)
        if run.threads is None or run.cores is None:
            raise ValueError("benchncnn takes num_threads and powersave by position before param=: set threads and "
                             "cores (its own powersave default changed from all cores to big cores in 2023)")
        if run.precision is not None:
            raise ValueError("benchncnn has no precision option: it turns fp16 and int8 storage and arithmetic on "
                             "wherever the device has them")
        gpu = _gpu_device(run.backend)
        warmup = CPU_WARMUP if gpu == "-1" else GPU_WARMUP
        if run.warmup != warmup:
            raise ValueError(f"benchncnn always warms up {warmup} times on this backend; ask for warmup={warmup}")
        return [binary, str(run.iterations), str(run.threads), POWERSAVE[run.cores], gpu, COOLING_DOWN,
                f"param={models[0]}", f"shape=[{','.join(str(d) for d in _whc(run.input_shape))}]"]

    def parse(self, stdout: str, model: str | None = None) -> NativeSummary:
        lines = [line.strip() for line in stdout.splitlines()]
        settings = {m.group(1): m.group(2) for m in map(_SETTING.match, lines) if m}
        if "loop_count" not in settings or int(settings["loop_count"]) < 1:
            self.fail("no 'loop_count = N' line", stdout)
        rows = [m.groups() for m in map(_ROW.match, lines) if m]
        if model is not None:
            rows = [row for row in rows if row[0] == model]
        if len(rows) != 1:
            self.fail(f"{len(rows)} result lines "
                      + (f"for {model!r}" if model is not None else "and no model named to choose one"), stdout)
        _, min_ms, max_ms, avg_ms = rows[0]
        gpu = settings.get("gpu_device")
        return NativeSummary(
            n=int(settings["loop_count"]),
            mean_ms=float(avg_ms),
            min_ms=float(min_ms),
            max_ms=float(max_ms),
            device=None if gpu is None else ("cpu" if gpu == "-1" else f"vulkan:{gpu}"),
            raw_tail=raw_tail(stdout),
        )


def _gpu_device(backend: str | None) -> str:
    """benchncnn's gpu_device argument: -1 (its default) for the CPU, else the Vulkan device index."""
    if backend is None or backend == "cpu":
        return "-1"
    match = _VULKAN.match(backend)
    if match is None:
        raise ValueError(f"benchncnn backends are cpu, vulkan and vulkan:N; got {backend!r}")
    return match.group(1) or "0"


def _whc(shape: tuple[int, ...] | None) -> tuple[int, int, int]:
    """An NCHW (batch 1) or CHW shape in the w,h,c order of benchncnn's shape=."""
    if shape is None:
        raise ValueError("benchncnn needs shape= for a param= model: set input_shape")
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 3:
        raise ValueError(f"benchncnn takes one image-like input, NCHW with batch 1 or CHW; got {list(shape)}")
    c, h, w = shape
    return w, h, c
