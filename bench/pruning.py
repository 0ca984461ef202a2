"""Benchmark: structured channel pruning, per model, before and after, measured side by side.

For each model: parameters, file size and MACs of the fp32 model, of the pruned model that
surgery alone keeps within the accuracy budget, and of the pruned model fine-tuned with
knowledge distillation (and the same pruned model fine-tuned on labels alone, without it);
the task metric of each on the *evaluation* samples (the sensitivity search only ever saw
calibration samples, training only its own rendered ones); and ONNX Runtime CPU latency of
each, one thread, taking turns run by run so that load on the machine hits them all alike.

    .venv/bin/python bench/pruning.py [--models digits cls rec det] [--budget 0.01]

Models: digits (the scikit-learn MLP the tests train, on the bundled digits), cls / rec / det
(the PaddleOCR models shipped in rapidocr-onnxruntime, on rendered lines and pages). rec and
det get the sensitivity report and surgery within the budget; fine-tuning them is measured as
seconds per training step (``--train rec`` trains rec anyway, by distillation alone).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CALIBRATION_SEED = 1_000_003  # as controller.build.compile renders calibration samples
TIMING_SAMPLES = 64
OCR = {
    "cls": {"kind": "ocr-cls", "shape": (1, 3, 48, 192), "eval": 200, "samples": 256,
            "options": {"target_params": 0.55, "target_flops": 0.35, "train_samples": 4000, "epochs": 4}},
    "rec": {"kind": "ocr-rec", "shape": (1, 3, 48, 320), "eval": 200, "samples": 64,
            "options": {"target_flops": 0.35, "train_samples": 1000, "epochs": 2, "finetune": "off",
                        "lr": 0.0003}},  # with --train rec: its best relative rate (docs/optimization.md)
    "det": {"kind": "ocr-det", "shape": (1, 3, 640, 640), "eval": 50, "samples": 16,
            "options": {"ratios": [0.25, 0.5], "finetune": "off"}},
}


def _digits(tmp: Path) -> dict[str, Path]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from controller.data.datasets import write_npz
    from controller.passes import PassInput, run_pass
    from tests.models import digits_mlp

    digits_mlp(tmp / "source.onnx")
    run_pass("fp32", PassInput(tmp / "source.onnx", None, None), tmp / "fp32.onnx")
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0)
    paths = {"fp32": tmp / "fp32.onnx"}
    for name, xs, ys in (("train", xtr, ytr), ("calibration", xte[:150], yte[:150]), ("eval", xte[150:], yte[150:])):
        paths[name] = tmp / f"{name}.npz"
        write_npz(paths[name], {"task": "cls", "count": len(xs), "inputs": {"pixels": {"normalize": None}},
                                 "params": {}}, {"input:pixels": xs, "label": ys.astype(np.int64)})
    return paths


def _ocr(which: str, tmp: Path, train_samples: int) -> dict[str, Path]:
    from controller.build.source import prepare
    from controller.passes import PassInput, run_pass
    from controller.passes.pruning.search import TRAIN_SEED_OFFSET
    from tests.models import ocr_model

    cfg = OCR[which]
    source = prepare(ocr_model(which), which, {"x": list(cfg["shape"])}, tmp / "source.onnx").path
    fp32 = tmp / "fp32.onnx"
    run_pass("fp32", PassInput(source, None, None), fp32)
    paths = {"fp32": fp32, "calibration": tmp / "calibration.npz", "eval": tmp / "eval.npz"}
    _render(which, fp32, 32, CALIBRATION_SEED, paths["calibration"])
    _render(which, fp32, cfg["eval"], 0, paths["eval"])
    if train_samples:
        paths["train"] = tmp / "train.npz"
        _render(which, fp32, train_samples, CALIBRATION_SEED + TRAIN_SEED_OFFSET, paths["train"])
    return paths


def _render(which: str, fp32: Path, samples: int, seed: int, out: Path) -> None:
    from controller.data.datasets import make_dataset

    cfg = OCR[which]
    make_dataset(cfg["kind"], {"x": (cfg["shape"], "float32")}, samples, seed, out, model_path=fp32)


def side_by_side_latency(models: dict[str, Any], dataset: Path, runs: int) -> dict[str, dict[str, float]]:
    """p50 and interquartile range (ms) of each model on one sample, ORT CPU, one thread, turn by turn."""
    import onnxruntime as ort

    from agent.dataset import load_dataset

    data = load_dataset(str(dataset))
    sessions, feeds = {}, {}
    for name, model in models.items():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        blob = str(model) if isinstance(model, Path) else model.SerializeToString()
        sessions[name] = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
        feeds[name] = {i.name: data.batch([0])[i.name] for i in sessions[name].get_inputs()}
        for _ in range(3):
            sessions[name].run(None, feeds[name])
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(runs):
        for name, session in sessions.items():
            t0 = time.perf_counter()
            session.run(None, feeds[name])
            times[name].append((time.perf_counter() - t0) * 1000.0)
    return {name: {"p50_ms": float(np.median(t)), "iqr_ms": float(np.subtract(*np.percentile(t, [75, 25])))}
            for name, t in times.items()}


def openvino_loads(model: Any, tmp: Path) -> bool:
    """Does OpenVINO read and compile the model for its CPU plugin?"""
    import onnx
    import openvino as ov

    path = model if isinstance(model, Path) else tmp / "ov-check.onnx"
    if not isinstance(model, Path):
        onnx.save(model, str(path))
    try:
        core = ov.Core()
        core.compile_model(core.read_model(str(path)), "CPU")
    except Exception:  # any refusal is the answer, printed as FAILS
        return False
    return True


def sample_seconds(teacher: Any, student: Any, train: Path, batch: int, seconds: float = 60.0) -> float:
    """Training seconds per sample (one thread) of ``student``, over about ``seconds`` of training."""
    from controller.passes.finetune.training import finetune
    from controller.passes.pruning.options import PruningOptions

    _, report = finetune(teacher, student, train, PruningOptions(epochs=1, max_seconds=seconds), batch=batch)
    return float(report["seconds_per_step"]) / batch


def bench_model(which: str, budget: float, tmp: Path, runs: int, train_ocr: set[str],
                override: dict[str, Any]) -> dict[str, Any]:
    import onnx

    from controller.data.evaluation import accuracy
    from controller.passes.finetune import FinetuneUnsupported
    from controller.passes.finetune.training import available, finetune
    from controller.passes.pruning.options import PruningOptions
    from controller.passes.pruning.search import TRAIN_SEED_OFFSET, prune
    from controller.passes.pruning.surgery import cost

    tmp.mkdir(parents=True, exist_ok=True)
    if which == "digits":
        paths = _digits(tmp)
        options: dict[str, Any] = {"round_to": 4, "target_params": 0.6, "epochs": 30, "lr": 1e-2, "ratios": [0.25, 0.5, 0.625, 0.75]}
    else:
        options = dict(OCR[which]["options"], samples=OCR[which]["samples"])
        if which in train_ocr:
            options["finetune"] = "auto"
        options.update(override)
        paths = _ocr(which, tmp, int(options["train_samples"]) if options.get("finetune", "auto") != "off" else 0)
    options.update(override, budget=budget)
    keep: dict[str, Any] = {}
    out = tmp / "pruned.onnx"
    t0 = time.perf_counter()
    report = prune(paths["fp32"], paths["calibration"], out, PruningOptions.model_validate(options),
                   train=paths.get("train"), keep=keep)
    seconds = time.perf_counter() - t0
    teacher = onnx.load(str(paths["fp32"]))
    models: dict[str, Any] = {"fp32": paths["fp32"], "pruned (surgery)": keep["surgery"]}
    extra: dict[str, Any] = {}
    if report["finetuned"]:
        models["pruned, no training"] = keep["untrained"]
        models["pruned + FT (KD)"] = out
        try:  # the same cut trained on labels alone, where the task has labels to train on
            no_kd, train_report = finetune(teacher, keep["untrained"], paths["train"],
                                           PruningOptions.model_validate(dict(options, distill=False)))
            models["pruned + FT (labels only)"] = no_kd
            extra["no_kd_train"] = train_report
        except FinetuneUnsupported as e:
            extra["no_kd_train"] = {"skipped": str(e)}
    elif which in ("rec", "det") and available():
        # What training would cost here: seconds per step on the pruned model.
        timing = tmp / "timing.npz"
        _render(which, paths["fp32"], TIMING_SAMPLES, CALIBRATION_SEED + TRAIN_SEED_OFFSET, timing)
        extra["train_sample_seconds"] = sample_seconds(teacher, keep["surgery"], timing, 16 if which == "rec" else 4)

    rows = []
    fp32_acc = None
    for name, model in models.items():
        proto = onnx.load(str(model)) if isinstance(model, Path) else model
        c = cost(proto)
        acc = accuracy(model, paths["eval"])
        fp32_acc = acc if fp32_acc is None else fp32_acc
        rows.append({"variant": name, "params": c["params"], "bytes": len(proto.SerializeToString()),
                     "macs": c["macs"], "accuracy": acc, "drop": fp32_acc - acc,
                     "openvino_loads": openvino_loads(model, tmp)})
    lat = side_by_side_latency(models, paths["eval"], runs)
    for row in rows:
        row.update(lat[row["variant"]])
    return {"model": which, "options": options, "rows": rows, "report": report, "prune_seconds": seconds, **extra}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["digits", "cls", "rec", "det"],
                    choices=["digits", "cls", "rec", "det"])
    ap.add_argument("--budget", type=float, default=0.01)
    ap.add_argument("--runs", type=int, default=200, help="latency runs per model, taken in turns")
    ap.add_argument("--train", nargs="*", default=[], choices=["rec", "det"], help="fine-tune these too")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    ap.add_argument("--options", action="append", default=[], metavar="MODEL=JSON",
                    help='override pruning options of a model, e.g. cls=\'{"target_flops": 0.5}\'')
    ap.add_argument("--show", type=Path, help="print the tables of an earlier run's results.json and stop")
    args = ap.parse_args()
    if args.show:
        for res in json.loads(args.show.read_text()):
            _print(res, res["report"]["budget"])
        return 0

    overrides: dict[str, dict[str, Any]] = {}
    for item in args.options:
        name, _, text = item.partition("=")
        if name not in ("digits", *OCR):
            raise SystemExit(f"--options: unknown model {name!r}")
        overrides[name] = json.loads(text)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = args.out / f"pruning-{stamp}"
    results = []
    for which in args.models:
        started = time.perf_counter()
        res = bench_model(which, args.budget, work / which, args.runs if which != "det" else max(20, args.runs // 10),
                          set(args.train), overrides.get(which, {}))
        res["seconds"] = time.perf_counter() - started
        results.append(res)
        _print(res, args.budget)
    (work / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"\nfull reports: {work / 'results.json'}")
    return 0


def _print(res: dict[str, Any], budget: float) -> None:
    rep = res["report"]
    targets = "".join(f", {k.replace('_', ' ')} {rep[k]:g}" for k in ("target_flops", "target_params")
                      if rep.get(k) is not None)
    print(f"\n== {res['model']}: budget {budget:g}{targets}, sensitivity on {rep['samples']} calibration samples, "
          f"accuracy on evaluation samples; prune {res['prune_seconds']:.0f} s "
          f"(sensitivity {rep['seconds']['sensitivity']:.0f} s), whole model {res['seconds']:.0f} s ==")
    print(f"{'variant':<27} {'params':>9} {'KB':>8} {'MACs':>8} {'accuracy':>8} {'drop':>7} "
          f"{'p50 ms':>8} {'iqr':>7} {'size x':>7} {'MACs -%':>7} {'OpenVINO':>8}")
    base = res["rows"][0]
    for r in res["rows"]:
        print(f"{r['variant']:<27} {r['params']:>9} {r['bytes'] / 1024:8.1f} {_si(r['macs']):>8} "
              f"{r['accuracy']:8.4f} {r['drop']:+7.4f} {r['p50_ms']:8.4g} {r['iqr_ms']:7.3g} "
              f"{base['bytes'] / r['bytes']:7.2f} {100 * (1 - r['macs'] / base['macs']):7.1f} "
              f"{'loads' if r['openvino_loads'] else 'FAILS':>8}")
    ft = rep.get("finetune") or {}
    for a in ft.get("attempts", []):
        t = a["train"]
        print(f"  fine-tune attempt: {a['steps']} greedy steps, MACs {_si(a['macs'])}, calibration drop "
              f"{a['drop']:+.4f}, {t['epochs']} epochs x {t['samples']} samples, batch {t['batch']}, in {t['seconds']:.0f} s")
    if "skipped" in res.get("no_kd_train", {}):
        print(f"  labels-only fine-tune: not possible, {res['no_kd_train']['skipped']}")
    elif "no_kd_train" in res:
        print(f"  labels-only fine-tune: {res['no_kd_train']['seconds']:.0f} s")
    if "train_sample_seconds" in res:
        s = res["train_sample_seconds"]
        print(f"  not fine-tuned here: {s:.2f} s per training sample (one thread): {s * 4000 * 4 / 3600:.1f} h "
              f"for 4 epochs of 4000 samples")
    print(f"  groups: {len(rep['sensitivity'])} measured, {len(rep['skipped'])} skipped: "
          + "; ".join(f"{', '.join(s['producers'][:2])} ({s['skipped'][0]})" for s in rep["skipped"][:6]))
    if rep["finetuned"] or rep["pruned"]:
        print("  pruned: " + ", ".join(f"{p['producers'][0]} {p['channels']}->{p['kept']}" for p in rep["pruned"]))


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


if __name__ == "__main__":
    raise SystemExit(main())
