"""Benchmark: ncnn int8 against ncnn fp32 per PaddleOCR model, by calibration method and layer set.

For each model the fused fp32 variant is converted by EdgeFarm's ncnn converter as fp32, and as
int8 for every calibration method (minmax, entropy, percentile) and quantized layer set
(Convolution alone, the default; Convolution, ConvolutionDepthWise and InnerProduct), calibrated
on 32 rendered samples of the calibration seed (never an evaluation sample). The agent's ncnn
engine runs each: the task metric on the rendered evaluation samples, and latency on one sample
with one thread, every variant of a model taking turns run by run so that load on the machine
hits them alike. Size is the .bin's.

    .venv/bin/python bench/ncnn_int8.py [--models det rec cls] [--methods minmax entropy percentile]

About 3 minutes on 2 cores. Writes bench/out/ncnn-int8-<time>/results.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CALIBRATION_SEED = 1_000_003  # as controller.build.compile renders calibration samples
CALIBRATION_SAMPLES = 32      # the example spec's quantization.samples
MODELS = {"det": ("ocr-det", (1, 3, 640, 640), 50, 20), "rec": ("ocr-rec", (1, 3, 48, 320), 200, 100),
          "cls": ("ocr-cls", (1, 3, 48, 192), 200, 200)}  # kind, input shape, evaluation samples, timing runs
LAYER_SETS = {"conv": ["Convolution"], "all": ["Convolution", "ConvolutionDepthWise", "InnerProduct"]}


def bench_model(which: str, methods: list[str], work: Path) -> list[dict[str, Any]]:
    from agent.artifacts import unpack_model
    from agent.dataset import load_dataset
    from agent.engines import get_engine
    from agent.tasks import evaluator_for
    from controller.build.source import prepare
    from controller.convert import ConvertInput, converter_for
    from controller.data.datasets import make_dataset
    from controller.passes import PassInput, run_pass
    from tests.models import ocr_model

    kind, shape, eval_samples, runs = MODELS[which]
    work.mkdir(parents=True, exist_ok=True)
    source = prepare(ocr_model(which), which, {"x": list(shape)}, work / "source.onnx").path
    fp32 = work / "fp32.onnx"
    run_pass("fp32", PassInput(source, None, None), fp32)
    calibration, evaluation = work / "calibration.npz", work / "eval.npz"
    make_dataset(kind, {"x": (shape, "float32")}, CALIBRATION_SAMPLES, CALIBRATION_SEED, calibration, model_path=fp32)
    make_dataset(kind, {"x": (shape, "float32")}, eval_samples, 0, evaluation, model_path=fp32)

    converter = converter_for("ncnn")
    assert converter is not None
    configs: dict[str, tuple[str, dict[str, Any]]] = {"fp32": ("fp32", {})}
    for method in methods:
        for name, layers in LAYER_SETS.items():
            configs[f"int8 {method} {name}"] = ("int8", {"calibration": method, "ncnn_layers": layers})
    rows, engines = [], {}
    for name, (precision, options) in configs.items():
        tar = work / (name.replace(" ", "-") + ".tar")
        started = time.perf_counter()
        meta = converter.convert(ConvertInput(precision, precision, fp32, fp32,
                                              calibration if precision == "int8" else None, "cpu", options), tar)
        engine = get_engine("ncnn")
        engine.load(unpack_model(str(tar)), {"threads": 1})
        with tarfile.open(tar) as t:
            size = t.getmember("model.bin").size
        rows.append({"model": which, "variant": name, "bytes": size, "convert_s": time.perf_counter() - started,
                     "int8_layers": meta.get("int8_layers", 0)})
        engines[name] = engine
    data = load_dataset(str(evaluation))
    for row in rows:
        evaluator = evaluator_for(data)
        for i in range(data.count):
            evaluator.add(i, engines[row["variant"]].run(data.batch([i])))
        row["accuracy"] = float(evaluator.result()["value"])
    x = data.batch([0])
    times: dict[str, list[float]] = {name: [] for name in engines}
    for engine in engines.values():
        for _ in range(3):
            engine.run(x)
    for _ in range(runs):
        for name, engine in engines.items():
            t0 = time.perf_counter()
            engine.run(x)
            times[name].append((time.perf_counter() - t0) * 1000.0)
    for row in rows:
        row["p50_ms"] = float(np.median(times[row["variant"]]))
        engines[row["variant"]].close()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--methods", nargs="+", default=["minmax", "entropy", "percentile"],
                    choices=["minmax", "entropy", "percentile"])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = ap.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = args.out / f"ncnn-int8-{stamp}"
    rows = [row for which in args.models for row in bench_model(which, args.methods, work / which)]
    print(f"ncnn int8 against fp32: one thread, p50 of one sample taking turns; calibration on "
          f"{CALIBRATION_SAMPLES} samples; 'conv' = Convolution int8, 'all' = + ConvolutionDepthWise, InnerProduct")
    print(f"{'model':<5} {'variant':<25} {'int8 layers':>11} {'KB':>8} {'size x':>6} {'accuracy':>8} {'drop':>7} "
          f"{'p50 ms':>8} {'speed-up':>8}")
    for which in args.models:
        base = next(r for r in rows if r["model"] == which and r["variant"] == "fp32")
        for r in (r for r in rows if r["model"] == which):
            print(f"{which:<5} {r['variant']:<25} {r['int8_layers']:>11} {r['bytes'] / 1024:8.0f} "
                  f"{base['bytes'] / r['bytes']:6.2f} {r['accuracy']:8.4f} {r['accuracy'] - base['accuracy']:+7.4f} "
                  f"{r['p50_ms']:8.3g} {base['p50_ms'] / r['p50_ms']:7.2f}x")
    (work / "results.json").write_text(json.dumps(rows, indent=1))
    print(f"\nresults: {work / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
