"""Native benchmark tools: argv builders, parsers on published outputs, the result record, the registry.

Every sample under tests/data/native is a tool's output as its project or a user published it,
copied verbatim; the .source file beside it gives the address and which lines were taken. The
expected figures below were read off those files by eye, not produced by the parsers.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import controller.boards.native as native
from controller.boards.native import (
    NativeBenchmark,
    NativeOutputError,
    NativeRun,
    NativeSummary,
    native_benchmark,
    register,
    to_result,
)
from controller.boards.native.tflite import _stat_after

DATA = Path(__file__).resolve().parents[1] / "data" / "native"
HOSTILE_DIR = "/data/local/tmp/edge farm/$(reboot);'x'"


def sample(name: str) -> str:
    return (DATA / f"{name}.txt").read_text(encoding="utf-8")


def until(text: str, marker: str) -> str:
    """The output up to (not including) the first line holding ``marker``: a run cut short there."""
    lines = text.splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if marker in line)
    return "".join(lines[:cut])


def test_every_sample_names_its_source() -> None:
    samples = sorted(DATA.glob("*.txt"))
    assert len(samples) >= 8
    for path in samples:
        source = path.with_suffix(".source").read_text(encoding="utf-8")
        assert source.startswith(("url: https://github.com/", "url: https://pypi.org/")), path.name
    assert {p.name.split("-")[0] for p in samples} == {"paddlelite", "tflite", "ncnn", "mnn", "openvino"}


# --- Paddle Lite benchmark_bin ------------------------------------------------------------------

def test_paddlelite_reads_the_android_docs_output() -> None:
    s = native_benchmark("benchmark_bin").parse(sample("paddlelite-docs-android-arm"))
    assert (s.n, s.warmup) == (20, 10)
    assert (s.mean_ms, s.min_ms, s.max_ms) == (32.723, 32.577, 32.895)
    assert (s.init_ms, s.first_ms) == (15.305, 43.670)
    assert (s.tool_version, s.device, s.precision) == ("acf6614", "arm", None)
    assert (s.std_ms, s.p50_ms, s.peak_memory_mb) == (None, None, None)


def test_paddlelite_reads_a_single_run_and_checks_the_model() -> None:
    bench = native_benchmark("benchmark_bin")
    text = sample("paddlelite-docs-macos-x86")
    s = bench.parse(text, model="MobileNetV1/opt.nb")
    assert (s.n, s.warmup, s.tool_version, s.device) == (1, 0, "380d8d004", "x86")
    assert (s.init_ms, s.first_ms, s.min_ms, s.max_ms, s.mean_ms) == (11.410, 53.964, 53.964, 53.964, 53.964)
    with pytest.raises(NativeOutputError, match=r"benchmark_bin: the output is for 'MobileNetV1/opt.nb'"):
        bench.parse(text, model="/data/local/tmp/other.nb")


@pytest.mark.parametrize("marker, missing", [
    ("======= Perf Info =======", "init, first, min, max, avg"),
    ("avg   =", "avg"),
])
def test_paddlelite_output_cut_short_is_an_error(marker: str, missing: str) -> None:
    text = until(sample("paddlelite-docs-android-arm"), marker)
    with pytest.raises(NativeOutputError) as err:
        native_benchmark("benchmark_bin").parse(text)
    assert str(err.value).startswith(f"benchmark_bin: no {missing} in the 'Time(unit: ms):' block")
    assert "\n" not in str(err.value)


def test_paddlelite_argv() -> None:
    bench = native_benchmark("benchmark_bin")
    model = f"{HOSTILE_DIR}/ocr det.nb"
    run = NativeRun(warmup=10, iterations=20, threads=4, input_shape=[1, 3, 224, 224], cores="little",
                    backend="opencl,arm", precision="fp16")
    assert bench.argv("/data/local/tmp/benchmark_bin", [model], run) == [
        "/data/local/tmp/benchmark_bin",
        f"--optimized_model_file={model}",
        "--input_shape=1,3,224,224",
        "--warmup=10",
        "--repeats=20",
        "--backend=opencl,arm",
        "--threads=4",
        "--power_mode=1",
        "--gpu_precision=fp16",
    ]
    plain = NativeRun(warmup=0, iterations=1, input_shape=(1, 3, 8, 8), backend="arm")
    assert bench.argv("bb", ["m.nb"], plain) == ["bb", "--optimized_model_file=m.nb", "--input_shape=1,3,8,8",
                                                 "--warmup=0", "--repeats=1", "--backend=arm"]


@pytest.mark.parametrize("models, run, message", [
    (["m.nb"], NativeRun(warmup=1, iterations=1, input_shape=(1, 3, 8, 8)), "requires --backend"),
    (["m.nb"], NativeRun(warmup=1, iterations=1, backend="arm"), "requires --input_shape"),
    (["m.nb"], NativeRun(warmup=1, iterations=1, input_shape=(1, 3, 8, 8), backend="arm", precision="fp16"),
     "only for the OpenCL backends"),
    (["m.pdmodel"], NativeRun(warmup=1, iterations=1, input_shape=(1, 3, 8, 8), backend="arm"), "ending in .nb"),
])
def test_paddlelite_argv_refuses_what_the_tool_cannot_do(models: list[str], run: NativeRun, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        native_benchmark("benchmark_bin").argv("bb", models, run)


# --- TensorFlow Lite benchmark_model ------------------------------------------------------------

def test_tflite_reads_the_current_format() -> None:
    s = native_benchmark("benchmark_model").parse(sample("tflite-issue61946"),
                                                  model="./mobilenet_v1_1.0_224_quant.tflite")
    assert (s.n, s.warmup) == (50, 5)
    assert (s.mean_ms, s.min_ms, s.max_ms, s.std_ms) == (116.066, 111.222, 121.324, 1.906)
    assert (s.init_ms, s.first_ms) == (0.53, 124.02)
    assert (s.p50_ms, s.peak_memory_mb, s.device, s.tool_version) == (None, None, None, None)


def test_tflite_reads_the_2020_format() -> None:
    s = native_benchmark("benchmark_model").parse(sample("tflite-issue42507"),
                                                  model="/data/local/tmp/espcn_harmonic_2x_slim_w_cl.tflite")
    assert (s.n, s.warmup, s.init_ms, s.first_ms) == (50, 15, 0.855, 49.06)
    assert (s.mean_ms, s.min_ms, s.max_ms, s.std_ms) == (33.2094, 32.641, 34.005, 0.45)
    # "Peak memory footprint (MB): init=0 overall=12.8672" is a change of max RSS since the tool
    # started, not the peak: it is not reported as one.
    assert s.peak_memory_mb is None


def test_tflite_reads_all_same_warmup_scientific_notation_and_an_early_stop() -> None:
    # TF 2.2: one warm-up run printed as "count=1 curr=15908626"; 9 runs of 50 because the runs
    # passed the 150 s cap; the mean printed as 1.68505e+07.
    s = native_benchmark("benchmark_model").parse(sample("tflite-issue40183"), model="model.tflite")
    assert (s.n, s.warmup, s.first_ms, s.init_ms) == (9, 1, 15908.626, 48.019)
    assert (s.mean_ms, s.min_ms, s.max_ms, s.std_ms) == (16850.5, 16767.506, 17015.249, 69.772)


def test_tflite_reads_the_2019_format() -> None:
    s = native_benchmark("benchmark_model").parse(sample("tflite-yuenshome77"),
                                                  model="/data/local/tmp/tflite/tfmodel/mnasnet_1.0_224.tflite")
    assert (s.n, s.warmup, s.init_ms, s.first_ms) == (10, 4, 16.46, 271.332)
    assert (s.mean_ms, s.min_ms, s.max_ms, s.std_ms) == (108.787, 108.165, 109.337, 0.452)


def test_tflite_checks_the_graph() -> None:
    with pytest.raises(NativeOutputError, match=r"benchmark_model: the output is for 'model.tflite', not 'x.tflite'"):
        native_benchmark("benchmark_model").parse(sample("tflite-issue40183"), model="x.tflite")


@pytest.mark.parametrize("marker, message", [
    ("INFO: Running benchmark for at least 50", "1 of the 2 'Running benchmark for at least' headers"),
    ("INFO: count=50", "no 'count=' statistics line after the measured runs header"),
    ("INFO: Inference timings in us", "no 'Inference timings in us' summary line"),
])
def test_tflite_output_cut_short_is_an_error(marker: str, message: str) -> None:
    text = until(sample("tflite-issue61946"), marker)
    with pytest.raises(NativeOutputError, match=f"^benchmark_model: {message}"):
        native_benchmark("benchmark_model").parse(text)


def test_tflite_statistics_line_cut_mid_way_is_not_read_as_all_same() -> None:
    text = until(sample("tflite-issue61946"), "INFO: count=50") + "INFO: count=50 first=121183 curr=115199"
    with pytest.raises(NativeOutputError, match="no 'count=' statistics line after the measured runs header"):
        native_benchmark("benchmark_model").parse(text)


def test_tflite_statistics_with_percentiles() -> None:
    # No published output with percentiles could be attributed to a source, so these two lines are
    # built from the format in StatWithPercentiles::OutputToStream and Stat::OutputToStream
    # (xla/tsl/util/stats_calculator.h): they are not tool output.
    built = ["Running benchmark for at least 3 iterations",
             "count=3 first=900 curr=700 min=700 max=900 avg=800 std=81 p5=700 median=800 p95=900",
             "Running benchmark for at least 3 iterations",
             "count=3 curr=650(all same) p5=650 median=650 p95=650"]
    assert _stat_after(built, 0) == {"count": 3, "first": 900, "curr": 700, "min": 700, "max": 900, "avg": 800,
                                     "std": 81, "p5": 700, "median": 800, "p95": 900}
    same = _stat_after(built, 2)
    assert same is not None
    assert (same["first"], same["min"], same["max"], same["avg"], same["std"], same["median"]) == (
        650, 650, 650, 650, 0.0, 650)


def test_tflite_argv() -> None:
    bench = native_benchmark("benchmark_model")
    model = f"{HOSTILE_DIR}/mobile net.tflite"
    run = NativeRun(warmup=5, iterations=50, threads=4, backend="gpu")
    assert bench.argv("/data/local/tmp/benchmark_model", [model], run) == [
        "/data/local/tmp/benchmark_model",
        f"--graph={model}",
        "--warmup_runs=5",
        "--warmup_min_secs=0",
        "--num_runs=50",
        "--min_secs=0",
        "--num_threads=4",
        "--use_gpu=true",
    ]
    assert bench.argv("bm", ["m.tflite"], NativeRun(warmup=0, iterations=1, backend="cpu")) == [
        "bm", "--graph=m.tflite", "--warmup_runs=0", "--warmup_min_secs=0", "--num_runs=1", "--min_secs=0",
        "--use_xnnpack=false"]


@pytest.mark.parametrize("run, message", [
    (NativeRun(warmup=1, iterations=1, cores="big"), "no core-affinity flag"),
    (NativeRun(warmup=1, iterations=1, input_shape=(1, 224, 224, 3)), "own input shape"),
    (NativeRun(warmup=1, iterations=1, precision="fp16"), "no precision flag"),
    (NativeRun(warmup=1, iterations=1, backend="hexagon"), "backends are cpu, xnnpack, gpu, nnapi"),
])
def test_tflite_argv_refuses_what_the_tool_cannot_do(run: NativeRun, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        native_benchmark("benchmark_model").argv("bm", ["m.tflite"], run)


# --- ncnn benchncnn -----------------------------------------------------------------------------

def test_ncnn_takes_the_line_of_the_model_asked_for() -> None:
    bench = native_benchmark("benchncnn")
    text = sample("ncnn-readme-sd855-cpu")
    s = bench.parse(text, model="mobilenet_v2")
    assert (s.n, s.min_ms, s.max_ms, s.mean_ms, s.device) == (8, 4.64, 4.73, 4.68, "cpu")
    # "mobilenet" is also the start of mobilenet_v2, mobilenet_int8, mobilenet_ssd...: exact names only.
    s = bench.parse(text, model="mobilenet")
    assert (s.min_ms, s.max_ms, s.mean_ms) == (5.32, 5.42, 5.38)
    assert (s.std_ms, s.p50_ms, s.init_ms, s.first_ms, s.warmup) == (None, None, None, None, None)


def test_ncnn_reads_a_vulkan_run() -> None:
    s = native_benchmark("benchncnn").parse(sample("ncnn-readme-sd855-vulkan"), model="squeezenet")
    assert (s.n, s.min_ms, s.max_ms, s.mean_ms, s.device) == (8, 8.59, 9.51, 9.09, "vulkan:0")


def test_ncnn_reads_a_user_model_run() -> None:
    s = native_benchmark("benchncnn").parse(sample("ncnn-pr4782-param"), model="vgg16.param")
    assert (s.n, s.min_ms, s.max_ms, s.mean_ms, s.device) == (1, 28.64, 28.64, 28.64, "cpu")
    # One result line and no model named: that line.
    assert native_benchmark("benchncnn").parse(sample("ncnn-pr4782-param")).mean_ms == 28.64


@pytest.mark.parametrize("name, model, message", [
    ("ncnn-pr4782-noshape", "squeezenet.param",
     r"no 'loop_count = N' line; last output line: 'input tensor shape empty!'"),
    ("ncnn-readme-sd855-cpu", None, "35 result lines and no model named to choose one"),
    ("ncnn-readme-sd855-vulkan", "squeezenet_int8", "0 result lines for 'squeezenet_int8'"),
])
def test_ncnn_failures(name: str, model: str | None, message: str) -> None:
    with pytest.raises(NativeOutputError, match=f"^benchncnn: {message}"):
        native_benchmark("benchncnn").parse(sample(name), model=model)


def test_ncnn_output_cut_before_the_model_line_is_an_error() -> None:
    text = until(sample("ncnn-readme-sd855-cpu"), "resnet50  min")
    with pytest.raises(NativeOutputError, match="0 result lines for 'resnet50'; last output line: 'vgg16_int8"):
        native_benchmark("benchncnn").parse(text, model="resnet50")


def test_ncnn_argv() -> None:
    bench = native_benchmark("benchncnn")
    model = f"{HOSTILE_DIR}/rec model.param"
    run = NativeRun(warmup=8, iterations=64, threads=4, cores="big", input_shape=(1, 3, 48, 320))
    assert bench.argv("/data/local/tmp/benchncnn", [model], run) == [
        "/data/local/tmp/benchncnn", "64", "4", "2", "-1", "0", f"param={model}", "shape=[320,48,3]"]
    gpu = NativeRun(warmup=10, iterations=8, threads=1, cores="all", input_shape=(3, 227, 227), backend="vulkan:1")
    assert bench.argv("bn", ["m.param"], gpu) == ["bn", "8", "1", "0", "1", "0", "param=m.param", "shape=[227,227,3]"]


@pytest.mark.parametrize("run, message", [
    (NativeRun(warmup=5, iterations=4, threads=4, cores="big", input_shape=(1, 3, 8, 8)), "warms up 8 times"),
    (NativeRun(warmup=8, iterations=4, threads=4, cores="big", input_shape=(1, 3, 8, 8), backend="vulkan"),
     "warms up 10 times"),
    (NativeRun(warmup=8, iterations=4, cores="big", input_shape=(1, 3, 8, 8)), "set threads and cores"),
    (NativeRun(warmup=8, iterations=4, threads=4, input_shape=(1, 3, 8, 8)), "set threads and cores"),
    (NativeRun(warmup=8, iterations=4, threads=4, cores="big"), "set input_shape"),
    (NativeRun(warmup=8, iterations=4, threads=4, cores="big", input_shape=(2, 3, 8, 8)), "batch 1"),
    (NativeRun(warmup=8, iterations=4, threads=4, cores="big", input_shape=(1, 3, 8, 8), backend="opencl"),
     "cpu, vulkan and vulkan:N"),
])
def test_ncnn_argv_refuses_what_the_tool_cannot_do(run: NativeRun, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        native_benchmark("benchncnn").argv("bn", ["m.param"], run)


# --- MNN benchmark.out --------------------------------------------------------------------------

def test_mnn_reads_the_2020_format_at_the_model_asked_for() -> None:
    s = native_benchmark("mnn_benchmark").parse(sample("mnn-repo-result-2020-3-22-mate30pro"),
                                                model="/data/local/tmp/job/MobileNetV2_224.mnn")
    assert (s.n, s.warmup) == (50, None)
    assert (s.max_ms, s.min_ms, s.mean_ms) == (6.496, 4.821, 5.192)
    assert (s.device, s.precision) == ("cpu", "low")
    assert (s.std_ms, s.p50_ms, s.init_ms, s.first_ms) == (None, None, None, None)


def test_mnn_reads_the_warmup_and_the_2022_format() -> None:
    bench = native_benchmark("mnn_benchmark")
    s = bench.parse(sample("mnn-issue755-v0.2.2.3"), model="inception-v3.mnn")
    assert (s.n, s.warmup, s.max_ms, s.min_ms, s.mean_ms) == (20, 5, 102.379, 90.584, 92.163)
    s = bench.parse(sample("mnn-issue1984-v2.0.0"), model="SqueezeNetV1.0.mnn")
    assert (s.n, s.warmup, s.max_ms, s.min_ms, s.mean_ms, s.device) == (10, 5, 11.303, 10.009, 10.694, "cpu")


@pytest.mark.parametrize("text, model, message", [
    (until(sample("mnn-issue755-v0.2.2.3"), "[ - ] SqueezeNetV1.0.mnn"), "SqueezeNetV1.0.mnn",
     re.escape("0 result lines for 'SqueezeNetV1.0.mnn'; last output line: '[ - ] MobileNetV2_224.mnn")),
    (sample("mnn-issue755-v0.2.2.3"), None, "5 result lines and no model named to choose one"),
    (until(sample("mnn-issue755-v0.2.2.3"), "Benchmarking"), "inception-v3.mnn",
     r"no '--------> Benchmarking\.\.\. loop = N' line"),
])
def test_mnn_failures(text: str, model: str | None, message: str) -> None:
    with pytest.raises(NativeOutputError, match=f"^mnn_benchmark: {message}"):
        native_benchmark("mnn_benchmark").parse(text, model=model)


def test_mnn_argv() -> None:
    bench = native_benchmark("mnn_benchmark")
    model = f"{HOSTILE_DIR}/det model.mnn"
    run = NativeRun(warmup=5, iterations=50, threads=4, backend="vulkan", precision="low")
    assert bench.argv("/data/local/tmp/benchmark.out", [model], run) == [
        "/data/local/tmp/benchmark.out", HOSTILE_DIR, "50", "5", "7", "4", "2"]
    assert bench.argv("b.out", ["/d/m.mnn"], NativeRun(warmup=0, iterations=3)) == ["b.out", "/d", "3", "0"]
    assert bench.argv("b.out", ["m.mnn"], NativeRun(warmup=1, iterations=3, backend="cpu")) == [
        "b.out", ".", "3", "1", "0"]


@pytest.mark.parametrize("run, message", [
    (NativeRun(warmup=1, iterations=1, threads=4), "set forwardtype too"),
    (NativeRun(warmup=1, iterations=1, precision="low"), "set forwardtype, numberThread too"),
    (NativeRun(warmup=1, iterations=1, input_shape=(1, 3, 8, 8)), "takes none"),
    (NativeRun(warmup=1, iterations=1, cores="big"), "Power_High"),
    (NativeRun(warmup=1, iterations=1, backend="cpu", threads=1, precision="fp16"), "precisions are normal"),
])
def test_mnn_argv_refuses_what_the_tool_cannot_do(run: NativeRun, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        native_benchmark("mnn_benchmark").argv("b.out", ["/d/m.mnn"], run)


# --- the result record --------------------------------------------------------------------------

# The result keys the agent writes (agent/protocol.py).
AGENT_RESULT_KEYS = {"protocol", "job_id", "status", "failure", "fingerprint", "engine", "phases", "latency",
                     "throughput", "memory", "accuracy", "temperature_after_c"}


def test_to_result_leaves_none_where_the_tool_is_silent() -> None:
    bench = native_benchmark("benchncnn")
    summary = bench.parse(sample("ncnn-readme-sd855-cpu"), model="mobilenet_v2")
    record = to_result("job-7", bench, summary, engine_version="20240410")
    assert AGENT_RESULT_KEYS <= record.keys()
    assert (record["protocol"], record["job_id"], record["status"], record["failure"]) == (1, "job-7", "ok", None)
    assert record["engine"] == {"name": "ncnn", "version": "20240410", "precision": None, "device": "cpu"}
    assert record["phases"] == {"load_ms": None, "first_inference_ms": None}
    lat = record["latency"]
    assert (lat["mean"], lat["min"], lat["max"], lat["n"]) == (4.68, 4.64, 4.73, 8)
    assert (lat["p50"], lat["p90"], lat["p99"], lat["std"], lat["cv"], lat["percentile_method"]) == (
        None, None, None, None, None, None)
    assert (lat["samples_ms"], lat["source"]) == ([], "benchncnn summary")
    assert (record["accuracy"], record["throughput"], record["memory"]) == (None, [], {"peak_rss_mb": None})
    assert record["native"]["output_tail"].endswith("FastestDet  min =    3.28  max =    3.37  avg =    3.32\n")
    json.dumps(record)


def test_to_result_takes_phases_and_the_tool_version() -> None:
    bench = native_benchmark("benchmark_bin")
    summary = bench.parse(sample("paddlelite-docs-android-arm"))
    record = to_result("job-8", bench, summary, engine_version=None)
    assert record["engine"] == {"name": "paddlelite", "version": "acf6614", "precision": None, "device": "arm"}
    assert record["phases"] == {"load_ms": 15.305, "first_inference_ms": 43.670}
    assert (record["latency"]["warmup"], record["latency"]["source"]) == (10, "benchmark_bin summary")
    assert to_result("job-8", bench, summary, engine_version="2.13")["engine"]["version"] == "2.13"


def test_to_result_names_the_percentile_method_only_with_a_median() -> None:
    bench = native_benchmark("benchmark_model")
    with_median = NativeSummary(n=3, mean_ms=0.8, min_ms=0.7, max_ms=0.9, raw_tail="", p50_ms=0.8)
    assert to_result("j", bench, with_median, None)["latency"]["percentile_method"] == bench.percentile_method
    without = bench.parse(sample("tflite-issue61946"))
    assert to_result("j", bench, without, None)["latency"]["percentile_method"] is None


# --- run settings and registry ------------------------------------------------------------------

@pytest.mark.parametrize("fields", [
    {"warmup": -1, "iterations": 1}, {"warmup": 0, "iterations": 0}, {"warmup": 0, "iterations": 1, "threads": 0},
    {"warmup": 0, "iterations": 1, "cores": "middle"}, {"warmup": 0, "iterations": 1, "input_shape": [1, 0, 8]},
])
def test_native_run_refuses_impossible_settings(fields: dict) -> None:
    with pytest.raises(ValueError):
        NativeRun(**fields)


def test_native_run_keeps_a_list_shape_as_a_tuple() -> None:
    assert NativeRun(warmup=0, iterations=1, input_shape=[1, 3, 8, 8]).input_shape == (1, 3, 8, 8)


def test_registry_loads_each_tool_by_name() -> None:
    engines = {}
    for name in ("benchmark_bin", "benchmark_model", "benchncnn", "mnn_benchmark", "benchmark_app"):
        bench = native_benchmark(name)
        assert bench.name == name
        engines[bench.engine] = bench.model_suffixes
    assert engines == {"paddlelite": (".nb",), "tflite": (".tflite",), "ncnn": (".param",), "mnn": (".mnn",),
                       "openvino": (".xml",)}
    with pytest.raises(LookupError, match="unknown native benchmark 'benchncnn2'; known: benchmark_app"):
        native_benchmark("benchncnn2")


def test_registry_refuses_a_second_class_for_a_name() -> None:
    native_benchmark("benchncnn")

    class Other(NativeBenchmark):
        name = "benchncnn"
        engine = "ncnn"
        binary = "benchncnn"
        model_suffixes = (".param",)

        def argv(self, binary: str, models: list[str], run: NativeRun) -> list[str]:
            return [binary]

        def parse(self, stdout: str, model: str | None = None) -> NativeSummary:
            raise NativeOutputError(stdout)

    with pytest.raises(ValueError, match="'benchncnn' is already registered by controller.boards.native.ncnn:NcnnBench"):
        register(Other)
    Other.name = "benchmark_model"  # reserved for the built-in, loaded or not
    with pytest.raises(ValueError, match="'benchmark_model' is .* controller.boards.native.tflite:TfLiteBenchmark"):
        register(Other)
    Other.name = "other_tool"
    register(Other)
    try:
        assert isinstance(native_benchmark("other_tool"), Other)
    finally:
        native.NATIVE_TOOLS.unregister("other_tool")


def test_importing_the_package_imports_no_tool_module() -> None:
    code = ("import sys, controller.boards.native; "
            "print(sorted(m for m in sys.modules if m.startswith('controller.boards.native.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"


# --- OpenVINO benchmark_app ---------------------------------------------------------------------

def test_benchmark_app_reads_its_output_in_microseconds() -> None:
    s = native_benchmark("benchmark_app").parse(sample("openvino-benchmark_app-2026.4.1"))
    assert (s.n, s.p50_ms, s.mean_ms, s.min_ms, s.max_ms) == (64, 0.5551, 0.60368, 0.4705, 1.8818)
    assert (s.init_ms, s.first_ms, s.warmup) == (pytest.approx(14.84 + 131.96), 2.81, 1)
    assert (s.precision, s.device, s.tool_version) == ("fp32", "CPU", "2026.4.1-22982-e213a147257-releases/2026/4")


def test_benchmark_app_output_cut_short_is_an_error() -> None:
    with pytest.raises(NativeOutputError, match="benchmark_app: no latency Average, Min, Max line"):
        native_benchmark("benchmark_app").parse(until(sample("openvino-benchmark_app-2026.4.1"), "Average:"))


def test_benchmark_app_argv_and_refusals() -> None:
    bench = native_benchmark("benchmark_app")
    run = NativeRun(warmup=1, iterations=50, threads=2, input_shape=[1, 3, 48, 192], precision="fp16")
    assert bench.argv("/data/local/tmp/bin/ba", ["/tmp/m o'del.xml"], run) == [
        "/data/local/tmp/bin/ba", "-m", "/tmp/m o'del.xml", "-d", "CPU", "-hint", "none", "-api", "sync",
        "-nireq", "1", "-nstreams", "1", "-niter", "50", "-nthreads", "2", "-shape", "[1,3,48,192]",
        "-infer_precision", "f16"]
    with pytest.raises(ValueError, match="exactly one first inference"):
        bench.argv("ba", ["m.xml"], NativeRun(warmup=5, iterations=50))
    with pytest.raises(ValueError, match="precisions are"):
        bench.argv("ba", ["m.xml"], NativeRun(warmup=1, iterations=5, precision="int4"))


def test_benchmark_app_runs_for_real_and_its_output_is_read(tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys

    import openvino as ov

    from tests.models import ocr_model

    binary = shutil.which("benchmark_app", path=str(Path(sys.executable).parent))
    assert binary, "the openvino wheel installs benchmark_app next to the interpreter"
    ir = tmp_path / "cls.xml"
    ov.save_model(ov.Core().read_model(str(ocr_model("cls"))), str(ir), compress_to_fp16=False)
    bench = native_benchmark("benchmark_app")
    argv = bench.argv(binary, [str(ir)],
                      NativeRun(warmup=1, iterations=20, threads=1, input_shape=(1, 3, 48, 192), precision="fp32"))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    s = bench.parse(done.stdout + done.stderr)
    assert s.n == 20 and s.precision == "fp32" and 0 < s.min_ms <= s.p50_ms <= s.max_ms
