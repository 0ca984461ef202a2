"""Benchmark: what engine selection buys, per model, measured side by side in one run.

Runs a spec (default: examples/ppocr.yaml, 200 labelled samples per model) on its boards
into a fresh database, then prints for every (model, chip) each configuration's p50 latency,
accuracy and size, and the selected configuration's speed-up against ONNX Runtime fp32 at
default settings with its accuracy drop.

    .venv/bin/python bench/selection.py [--spec examples/ppocr.yaml] [--budget 0.01]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    from controller.cli import main as edgefarm
    from controller.results.database import open_db
    from controller.results.selection import latest_candidates, select_best

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=ROOT / "examples" / "ppocr.yaml")
    ap.add_argument("--budget", type=float, default=None, help="default: the spec's own")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = ap.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    db = args.out / f"selection-{time.strftime('%Y%m%d-%H%M%S')}.db"
    url = f"sqlite:///{db}"
    started = time.perf_counter()
    code = edgefarm(["run", str(args.spec), "--db", url])
    if code:
        return code
    elapsed = time.perf_counter() - started

    from controller.config.spec import load_spec

    budget = args.budget if args.budget is not None else load_spec(args.spec).spec.selection.budget
    with open_db(url)() as session:
        candidates = latest_candidates(session)
    chosen = select_best(candidates, budget)

    print(f"\n== all configurations (database {db}) ==")
    print(f"{'model':<11} {'chip':<18} {'engine':<12} {'config':<10} {'prec':<5} {'p50 ms':>8} {'speed-up':>8} "
          f"{'metric':<12} {'accuracy':>8} {'drop':>8} {'size MB':>8}")
    for c in sorted(candidates, key=lambda c: (c.model, c.chip, c.p50_ms)):
        print(f"{c.model:<11} {c.chip[:18]:<18} {c.engine:<12} {c.variant:<10} {c.precision:<5} {c.p50_ms:8.2f} "
              f"{_x(c.speedup_vs_baseline):>8} {c.accuracy_metric or '-':<12} {_f(c.accuracy):>8} "
              f"{_f(c.accuracy_drop):>8} {c.size_bytes / 1e6:8.2f}")

    print(f"\n== selected per (model, chip), accuracy budget {budget:g} ==")
    for s in chosen:
        if s.best is None:
            print(f"{s.model:<11} {s.chip}: nothing within the budget")
            continue
        b = s.best
        print(f"{s.model:<11} {s.chip}: {b.engine} {b.variant} ({b.precision}) p50 {b.p50_ms:.2f} ms, "
              f"speed-up {_x(b.speedup_vs_baseline)} vs onnxruntime fp32 defaults, "
              f"{b.accuracy_metric} {_f(b.accuracy)} (drop {_f(b.accuracy_drop)})")
    print(f"\nwhole run: {elapsed:.0f} s")
    return 0


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


if __name__ == "__main__":
    sys.exit(main())
