"""Benchmark: int8 calibration choices per PaddleOCR model: accuracy, latency and size against fp32.

For each model: the fused fp32 variant (controller.passes.fp32) is quantized with the
int8 pass's own function (controller.passes.int8.quantize: ONNX Runtime static QDQ, U8S8) for
every calibration method x per-channel setting x calibration sample count, on calibration
samples rendered with the evaluation seed + CALIBRATION_SEED_OFFSET (never an evaluation
sample). Every variant is evaluated on the rendered evaluation samples (the spec's seed) with
the task's metric (agent.metrics), and timed on one thread with ONNX Runtime and OpenVINO
(f32 hint: the CPU's default would be bf16) — all variants of a model taking turns, so that
load from other processes hits them alike. Then the per-op time of fp32 and one int8 variant
on each engine says where int8 time goes.

The defaults should take about 12 minutes on 2 quiet cores (an estimate from per-step times);
a run with the recognizer at 16 and 32 samples took 30 minutes while other jobs held most of
the machine. The detector's calibration (entropy and percentile histograms of 640x640
activations) is most of it.

    .venv/bin/python bench/quantization.py [--models det,rec,cls] [--samples 16,32,128]
        [--methods minmax,entropy,percentile] [--per-channel on,off] [--eval-samples N]

Writes bench/out/quantization-<time>.md and .json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {"det": "ppocr-det", "rec": "ppocr-rec", "cls": "ppocr-cls"}
# Per-model defaults: on a quiet 2-core machine the detector costs ~11 s (min-max) to ~90 s
# (percentile) per 16 calibration samples, the recognizer a third of that, the classifier little.
DEFAULT_SAMPLES = {"det": [16], "rec": [32], "cls": [16, 32, 128]}
DEFAULT_EVAL = {"det": 32, "rec": 100, "cls": 200}
ENGINES = {"ort": ("onnxruntime", {"threads": 1}),
           "openvino": ("openvino", {"threads": 1, "precision": "fp32"})}
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
INT8_ORT_OPS = ("QLinear", "ConvInteger", "MatMulInteger", "QGemm", "DynamicQuantize")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=ROOT / "examples" / "ppocr.yaml")
    ap.add_argument("--models", default="det,rec,cls", help="comma-separated: det, rec, cls")
    ap.add_argument("--methods", default="minmax,entropy,percentile")
    ap.add_argument("--per-channel", default="on,off", help="on, off or both")
    ap.add_argument("--samples", default=None,
                    help="calibration sample counts for every model, e.g. 16,32,128 "
                         f"(default per model: {DEFAULT_SAMPLES})")
    ap.add_argument("--eval-samples", type=int, default=None, help=f"default per model: {DEFAULT_EVAL}")
    ap.add_argument("--op-types", default=None,
                    help="quantize only these op types, e.g. Conv,MatMul,Gemm (default: every op type ORT "
                         "quantizes, as the int8 recipe does)")
    ap.add_argument("--rounds", type=int, default=5, help="latency: turns each variant takes")
    ap.add_argument("--burst", type=float, default=0.2, help="latency: seconds of calls per turn (at least 2)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = ap.parse_args()

    methods = args.methods.split(",")
    if bad := [m for m in methods if m not in ("minmax", "entropy", "percentile")]:
        ap.error(f"--methods: unknown method {bad[0]!r}")
    flags = {"on": True, "off": False}
    if bad := [p for p in args.per_channel.split(",") if p not in flags]:
        ap.error(f"--per-channel: expected on and/or off, got {bad[0]!r}")
    per_channel = [flags[p] for p in args.per_channel.split(",")]
    shorts = args.models.split(",")
    if bad := [s for s in shorts if s not in MODELS]:
        ap.error(f"--models: unknown model {bad[0]!r}; expected some of {', '.join(MODELS)}")

    logging.getLogger().setLevel(logging.ERROR)  # ORT's quantizer warns about pre-processing
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cpu = cpu_facts()
    print(f"CPU: {cpu['model']}, {os.cpu_count()} cores, int8-relevant flags: {', '.join(cpu['flags']) or 'none'}; "
          f"load average at start {os.getloadavg()[0]:.1f}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="edgefarm-quant-") as tmp:
        for short in shorts:
            samples = [int(s) for s in args.samples.split(",")] if args.samples else DEFAULT_SAMPLES[short]
            n_eval = args.eval_samples or DEFAULT_EVAL[short]
            results.append(bench_model(args, short, methods, per_channel, samples, n_eval, Path(tmp) / short,
                                       args.op_types.split(",") if args.op_types else None))
            print(f"{MODELS[short]}: done at {time.perf_counter() - started:.0f} s", flush=True)
    wall = time.perf_counter() - started

    md = render(results, cpu, wall, " ".join(sys.argv[1:]))
    print("\n" + md)
    (args.out / f"quantization-{stamp}.md").write_text(md)
    (args.out / f"quantization-{stamp}.json").write_text(json.dumps(
        {"cpu": cpu, "wall_seconds": wall, "argv": sys.argv[1:], "models": results}, indent=2))
    print(f"written: {args.out / f'quantization-{stamp}.md'} and .json; wall time {wall:.0f} s")
    return 0


def bench_model(args: argparse.Namespace, short: str, methods: list[str], per_channel: list[bool],
                samples: list[int], n_eval: int, work: Path, op_types: list[str] | None) -> dict[str, Any]:
    from agent.dataset import load_dataset
    from agent.engines import get_engine
    from agent.tasks import evaluator_for
    from controller.build.compile import CALIBRATION_SEED_OFFSET
    from controller.build.source import prepare
    from controller.config.spec import load_spec
    from controller.data.datasets import make_dataset
    from controller.passes import PassInput, run_pass
    from controller.passes.int8 import Int8Options, quantize

    loaded = load_spec(args.spec)
    m = next(x for x in loaded.spec.models if x.name == MODELS[short])
    q = loaded.spec.quantization
    work.mkdir(parents=True)
    source = prepare(m.resolve_path(loaded.base), m.name, {n: s.shape for n, s in m.inputs.items()},
                     work / "source.onnx")
    fp32 = work / "fp32.onnx"
    run_pass("fp32", PassInput(source.path, None, None), fp32)
    shapes = {i.name: (i.shape, i.dtype) for i in source.inputs}
    make_dataset(m.dataset.kind, shapes, n_eval, m.dataset.seed, work / "eval.npz", model_path=source.path)
    data = load_dataset(str(work / "eval.npz"))

    variants: list[dict[str, Any]] = [{"name": "fp32", "path": fp32, "size": fp32.stat().st_size}]
    for count in samples:
        calibration = work / f"calibration-{count}.npz"
        make_dataset(m.dataset.kind, shapes, count, m.dataset.seed + CALIBRATION_SEED_OFFSET, calibration,
                     model_path=source.path)
        for method in methods:
            for pc in per_channel:
                name = f"{method}/{'pc' if pc else 'pt'}/{count}"
                out = work / f"int8-{method}-{int(pc)}-{count}.onnx"
                t = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):  # ORT prints its calibration steps
                    quantize(fp32, out, calibration, Int8Options(calibration=method, per_channel=pc), [], op_types)
                spent = time.perf_counter() - t
                print(f"  {m.name} {name}: quantized in {spent:.1f} s", flush=True)
                variants.append({"name": name, "method": method, "per_channel": pc, "samples": count, "path": out,
                                 "size": out.stat().st_size, "quantize_s": spent,
                                 "spec": (method, pc, count) == (q.calibration, q.per_channel, q.samples)
                                 and op_types is None})
    fp32_size = variants[0]["size"]
    for v in variants:
        v["size_ratio"] = fp32_size / v["size"]

    feed = data.batch([0])
    for label, (engine, options) in ENGINES.items():
        loaded_engines = {}
        for v in variants:
            e = get_engine(engine)
            e.load(str(v["path"]), dict(options))
            ev = evaluator_for(data)
            for i in range(data.count):
                ev.add(i, e.run(data.batch([i])))
            res = ev.result()
            v[f"{label}_metric"], v[f"{label}_accuracy"] = res["metric"], res["value"]
            loaded_engines[v["name"]] = e
        times: dict[str, list[float]] = {name: [] for name in loaded_engines}
        for _ in range(args.rounds):  # every variant takes a turn per round: load drift hits all
            for name, e in loaded_engines.items():
                end, calls = time.perf_counter() + args.burst, 0
                while calls < 2 or time.perf_counter() < end:
                    t = time.perf_counter()
                    e.run(feed)
                    times[name].append((time.perf_counter() - t) * 1e3)
                    calls += 1
        for v in variants:
            v[f"{label}_p50_ms"] = statistics.median(times[v["name"]])
            v[f"{label}_min_ms"] = min(times[v["name"]])
            v[f"{label}_calls"] = len(times[v["name"]])
            loaded_engines[v["name"]].close()
        print(f"  {m.name}: {label} accuracy and latency done", flush=True)

    base = variants[0]
    for v in variants:
        for label in ENGINES:
            v[f"{label}_drop"] = base[f"{label}_accuracy"] - v[f"{label}_accuracy"]
            v[f"{label}_speedup"] = base[f"{label}_p50_ms"] / v[f"{label}_p50_ms"]
            v[f"{label}_speedup_min"] = base[f"{label}_min_ms"] / v[f"{label}_min_ms"]
    # Where the time goes: fp32 against the spec's int8 configuration (else the first one).
    probe = next((v for v in variants if v.get("spec")), variants[1] if len(variants) > 1 else None)
    profile = {}
    if probe is not None:
        profile = {"int8_variant": probe["name"],
                   "ort": {"fp32": ort_op_times(fp32, feed), "int8": ort_op_times(probe["path"], feed)},
                   "openvino": {"fp32": ov_layer_times(fp32, feed), "int8": ov_layer_times(probe["path"], feed)}}
    for v in variants:
        v["path"] = v["path"].name
    return {"model": m.name, "input": list(source.inputs[0].shape), "eval_samples": data.count, "op_types": op_types,
            "calibration_samples": samples, "variants": variants, "profile": profile}


# --- where the time goes --------------------------------------------------------------------


def ort_op_times(path: Path, feed: dict[str, Any], runs: int = 15) -> dict[str, Any]:
    """ONNX Runtime's own profile (1 thread, default optimisation): ms per inference (median
    over runs) by the op type of the kernels it runs, after its rewrites (QDQ Conv -> QLinearConv).
    The profiler's own cost per node inflates totals of small models."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "p")
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        session.run(None, feed)  # warm-up: dropped below with the first run's events
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                   if e.get("cat") == "Session" and e.get("name") == "model_run")[1:]  # not the warm-up
    per_run: list[Counter[str]] = [Counter() for _ in spans]
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            for k, (start, end) in enumerate(spans):
                if start <= e["ts"] <= end:
                    per_run[k][e["args"]["op_name"]] += e["dur"] / 1e3
    per_op = _median_per_key(per_run)
    total = sum(per_op.values())
    int8 = sum(t for op, t in per_op.items() if op.startswith(INT8_ORT_OPS))
    qdq = sum(t for op, t in per_op.items() if op in ("QuantizeLinear", "DequantizeLinear"))
    return {"total_ms": total, "int8_ms": int8, "qdq_ms": qdq, "float_ms": total - int8 - qdq,
            "top": {op: round(t, 3) for op, t in per_op.most_common(8)}}


def ov_layer_times(path: Path, feed: dict[str, Any], runs: int = 15) -> dict[str, Any]:
    """OpenVINO's per-layer counters (1 thread, f32 hint): ms per inference by layer type and
    kernel ("brgconv_avx512_1x1_I8" is an int8 convolution; "ref_" a reference kernel)."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": 1,
                                                          "INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": True})
    request = compiled.create_infer_request()
    request.infer(feed)
    per_run: list[Counter[str]] = []
    for _ in range(runs):
        request.infer(feed)
        per_run.append(Counter())
        for p in request.get_profiling_info():
            if str(p.status).endswith("EXECUTED"):
                per_run[-1][f"{p.node_type}:{p.exec_type}"] += p.real_time.total_seconds() * 1e3
    per_layer = _median_per_key(per_run)
    total = sum(per_layer.values())
    gemm = ("Convolution:", "GroupConvolution:", "Deconvolution:", "FullyConnected:", "MatMul:")
    int8 = sum(t for k, t in per_layer.items() if k.startswith(gemm) and k.upper().endswith(("_I8", "_U8")))
    requant = sum(t for k, t in per_layer.items() if k.startswith(("FakeQuantize:", "Convert:")))
    return {"total_ms": total, "int8_conv_ms": int8, "quantize_convert_ms": requant,
            "top": {k: round(t, 3) for k, t in per_layer.most_common(8)}}


def _median_per_key(runs: list[Counter[str]]) -> Counter[str]:
    """Per key, the median over runs: one run slowed by another process does not count."""
    keys = set().union(*runs) if runs else set()
    return Counter({k: statistics.median(r.get(k, 0.0) for r in runs) for k in keys})


def cpu_facts() -> dict[str, Any]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return {"model": model, "flags": [f for f in CPU_FLAGS if f in flags]}


# --- report ---------------------------------------------------------------------------------


def render(results: list[dict[str, Any]], cpu: dict[str, Any], wall: float, argv: str) -> str:
    lines = [f"# int8 calibration comparison ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"`bench/quantization.py {argv}`".replace(" `", "`"), "",
             f"CPU {cpu['model']}, {os.cpu_count()} cores; flags: {', '.join(cpu['flags'])}. "
             f"Wall time {wall:.0f} s. Latency: p50 of single-thread calls, all variants of a model "
             "taking turns; other processes shared the machine, so figures are noisy.", "",
             "Config: method / pc (per-channel weights) or pt (per-tensor) / calibration samples; "
             "(spec) marks examples/ppocr.yaml's choice. Drop: fp32 accuracy minus this one's (absolute). "
             "x fp32: fp32 p50 / this p50, or fp32 min / this min (above 1 = faster; the fastest call is "
             "the least disturbed by other processes). Size: fp32 bytes / these bytes (target 3.8x)."]
    for r in results:
        metric = r["variants"][0]["ort_metric"]
        only = f", quantizing only {','.join(r['op_types'])}" if r.get("op_types") else ""
        lines += ["", f"## {r['model']} (input {'x'.join(map(str, r['input']))}, {r['eval_samples']} evaluation "
                  f"samples, metric {metric}{only})", "",
                  "| config | ORT acc | drop | OV acc | drop | ORT p50 ms | x fp32 | ORT min | x fp32 "
                  "| OV p50 ms | x fp32 | OV min | x fp32 | MB | size x | quantize s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for v in r["variants"]:
            name = v["name"] + (" (spec)" if v.get("spec") else "")
            lines.append(
                f"| {name} | {v['ort_accuracy']:.4f} | {v['ort_drop']:+.4f} | {v['openvino_accuracy']:.4f} "
                f"| {v['openvino_drop']:+.4f} | {v['ort_p50_ms']:.3f} | {v['ort_speedup']:.2f} "
                f"| {v['ort_min_ms']:.3f} | {v['ort_speedup_min']:.2f} "
                f"| {v['openvino_p50_ms']:.3f} | {v['openvino_speedup']:.2f} "
                f"| {v['openvino_min_ms']:.3f} | {v['openvino_speedup_min']:.2f} | {v['size'] / 1e6:.2f} "
                f"| {v['size_ratio']:.2f} | {v.get('quantize_s', 0):.1f} |")
        p = r["profile"]
        if p:
            lines += ["", f"Where the time goes (fp32 vs int8 {p['int8_variant']}, ms per inference, engines' "
                      "own profilers):", ""]
            for which in ("fp32", "int8"):
                o = p["ort"][which]
                lines.append(f"- ORT {which}: total {o['total_ms']:.2f}, int8 kernels {o['int8_ms']:.2f}, "
                             f"Q/DQ {o['qdq_ms']:.2f}, float {o['float_ms']:.2f}; top {_top(o['top'])}")
            for which in ("fp32", "int8"):
                o = p["openvino"][which]
                lines.append(f"- OpenVINO {which}: total {o['total_ms']:.2f}, int8 conv/FC {o['int8_conv_ms']:.2f}, "
                             f"FakeQuantize+Convert {o['quantize_convert_ms']:.2f}; top {_top(o['top'])}")
    return "\n".join(lines) + "\n"


def _top(top: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in top.items())


if __name__ == "__main__":
    sys.exit(main())
