"""Benchmark: what the offline fp32 fusions buy, per PaddleOCR model, unfused and fused side by side.

For each model the prepared source (unfused) and the fp32 variant (ONNX Runtime's basic level,
offline) are timed in one run, taking turns (ROUNDS rounds, each a burst of calls per model),
on one thread, with:

- ONNX Runtime at its default level (all): what the agent runs; ORT redoes the fusions itself;
- ONNX Runtime with optimisations disabled: what the offline fusions buy on their own, as on
  an engine that optimises nothing;
- OpenVINO CPU in f32 (the hint set: this CPU would run bf16 by default).

It prints node counts, the fusions applied (controller.passes.fusion.fusions) and the layers OpenVINO
executes with the fusions it made itself at load time.

    .venv/bin/python bench/fusion.py [--models det,rec,cls] [--rounds 7] [--burst 0.25]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {"det": "ppocr-det", "rec": "ppocr-rec", "cls": "ppocr-cls"}
ENGINES = {  # label -> (engine, options)
    "ort": ("onnxruntime", {"threads": 1}),
    "ort-noopt": ("onnxruntime", {"threads": 1, "graph_optimization": "disable"}),
    "openvino-f32": ("openvino", {"threads": 1, "precision": "fp32"}),
}


def main() -> int:
    from agent.dataset import load_dataset
    from agent.engines import get_engine
    from controller.build.source import prepare
    from controller.config.spec import load_spec
    from controller.data.datasets import make_dataset
    from controller.passes import PassInput, run_pass
    from controller.passes.fusion import engine_fusions, fusions

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=ROOT / "examples" / "ppocr.yaml")
    ap.add_argument("--models", default="det,rec,cls", help="comma-separated: det, rec, cls")
    ap.add_argument("--rounds", type=int, default=7, help="turns each (model, engine) pair takes")
    ap.add_argument("--burst", type=float, default=0.25, help="seconds of calls per turn (at least 3 calls)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = ap.parse_args()

    loaded = load_spec(args.spec)
    by_name = {m.name: m for m in loaded.spec.models}
    args.out.mkdir(parents=True, exist_ok=True)
    report_path = args.out / f"fusion-{time.strftime('%Y%m%d-%H%M%S')}.json"
    tmp = tempfile.TemporaryDirectory(prefix="edgefarm-fusion-")
    out = Path(tmp.name)
    started = time.perf_counter()
    rows, reports = [], {}
    for short in args.models.split(","):
        if short not in MODELS:
            ap.error(f"--models: unknown model {short!r}; expected some of {', '.join(MODELS)}")
        m = by_name[MODELS[short]]
        shapes = {name: spec.shape for name, spec in m.inputs.items()}
        source = prepare(m.resolve_path(loaded.base), m.name, shapes, out / f"{short}-source.onnx")
        fused = out / f"{short}-fp32.onnx"
        run_pass("fp32", PassInput(source.path, None, None), fused)
        report = fusions(source.path, fused)
        report["openvino"] = {"unfused": engine_fusions(source.path), "fused": engine_fusions(fused)}
        reports[short] = report

        data = out / f"{short}-input.npz"
        make_dataset(m.dataset.kind, {i.name: (i.shape, i.dtype) for i in source.inputs}, 1, m.dataset.seed,
                     data, model_path=source.path)
        feed = load_dataset(str(data)).batch([0])
        for label, (engine, options) in ENGINES.items():
            models = {"unfused": source.path, "fused": fused}
            engines = {}
            for which, path in models.items():
                e = get_engine(engine)
                e.load(str(path), dict(options))
                e.run(feed)  # warm-up
                engines[which] = e
            times: dict[str, list[float]] = {which: [] for which in models}
            for _ in range(args.rounds):
                for which, e in engines.items():
                    burst_end = time.perf_counter() + args.burst
                    calls = 0
                    while calls < 3 or time.perf_counter() < burst_end:
                        t = time.perf_counter()
                        e.run(feed)
                        times[which].append((time.perf_counter() - t) * 1e3)
                        calls += 1
            for e in engines.values():
                e.close()
            p50 = {which: statistics.median(v) for which, v in times.items()}
            low = {which: min(v) for which, v in times.items()}
            rows.append((m.name, label, report["nodes_before"], report["nodes_after"], p50["unfused"], p50["fused"],
                         low["unfused"], low["fused"], len(times["fused"])))
        print(f"{m.name}: done ({time.perf_counter() - started:.0f} s)", flush=True)

    print(f"\n== fp32 unfused (prepared source) vs fused (ORT basic, offline): ms, 1 thread, "
          f"{args.rounds} alternating rounds; min = fastest call, the least disturbed by other processes ==")
    print(f"{'model':<10} {'engine':<13} {'nodes':>10} {'p50 unfused':>11} {'fused':>9} {'change':>8} "
          f"{'min unfused':>11} {'fused':>9} {'change':>8} {'calls':>6}")
    for model, label, nb, na, pu, pf, lu, lf, n in rows:
        print(f"{model:<10} {label:<13} {f'{nb}->{na}':>10} {pu:11.3f} {pf:9.3f} {pf / pu - 1:+8.1%} "
              f"{lu:11.3f} {lf:9.3f} {lf / lu - 1:+8.1%} {n:6d}")
    for short, r in reports.items():
        print(f"\n{MODELS[short]}: applied {r['applied']}")
        print(f"  left as separate ops (for the engine): {r['left_for_engine']}")
        for which, ov in r["openvino"].items():
            print(f"  openvino, {which}: {ov['executed_layers']} executed layers (+{ov['reorders']} reorders), "
                  f"fused at load: {ov['fused_layers']}")
    report_path.write_text(json.dumps({"rows": rows, "reports": reports}, indent=2))
    tmp.cleanup()
    print(f"\nwall time {time.perf_counter() - started:.0f} s; written: {report_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
