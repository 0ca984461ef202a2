"""Benchmark: the agent's latency against OpenVINO's own benchmark_app, same models, same settings.

Two boards on this machine measure the three PaddleOCR models with OpenVINO in fp32 on two
threads: one through the agent, one through benchmark_app (a native tool, as on a board
without Python). They take turns, ROUNDS times each, so the run-to-run spread of each is
printed beside the agent-to-tool difference: a difference inside the spread is not one.

    .venv/bin/python bench/tool_agreement.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
THREADS = 2
ROUNDS = 3


def main() -> int:
    from sqlalchemy import select

    from controller.cli import main as edgefarm
    from controller.results.database import open_db
    from controller.results.store import Job

    out = ROOT / "bench" / "out" / f"tool-agreement-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True)
    benchmark_app = str(Path(sys.executable).parent / "benchmark_app")
    (out / "inventory.yaml").write_text(yaml.safe_dump({"boards": [
        {"name": "agent", "workdir": str(out / "agent"), "threads": THREADS},
        {"name": "tool", "workdir": str(out / "tool"), "threads": THREADS,
         "native": {"openvino": {"tool": "benchmark_app", "binary": benchmark_app}}},
    ]}))
    spec = yaml.safe_load((ROOT / "examples" / "ppocr.yaml").read_text())
    for model in spec["models"]:
        model["dataset"]["samples"] = 16  # latency is the question here, not accuracy
    spec["variants"] = ["fp32"]
    spec["engines"] = [{"name": "openvino", "options": {"precision": "fp32"}}]
    spec["measure"] = {"warmup": 1, "min_iterations": 200, "min_seconds": 0, "batch_sizes": [1],
                       "throughput_seconds": 0.1}
    url = f"sqlite:///{out / 'bench.db'}"
    for order, board in enumerate(("agent", "tool") * ROUNDS):
        spec["name"], spec["boards"] = f"tool-agreement-{order}", [board]
        path = out / f"spec-{order}.yaml"
        path.write_text(yaml.safe_dump(spec))
        if edgefarm(["run", str(path), "--inventory", str(out / "inventory.yaml"), "--db", url]):
            return 1

    with open_db(url)() as db:
        # (model, column) -> p50 of each run; the agent's runs give two columns: the whole call
        # from Python, and the runtime's own timing of it (InferRequest.latency), which is
        # what benchmark_app reports.
        p50: dict[tuple[str, str], list[float]] = {}
        for job in db.scalars(select(Job).order_by(Job.run_id)):
            if job.result is None:
                continue
            model = job.variant.model.name
            if job.board.name == "tool":
                p50.setdefault((model, "tool"), []).append(job.result.p50_ms)
            else:
                p50.setdefault((model, "call"), []).append(job.result.p50_ms)
                p50.setdefault((model, "engine"), []).append(job.result.raw["engine_latency"]["p50"])
    print(f"\n== OpenVINO fp32, {THREADS} threads, {spec['measure']['min_iterations']} iterations a run, "
          f"{ROUNDS} runs each: median p50 ms [lowest-highest] ==")
    print(f"{'model':<11} {'agent, whole call':>24} {'agent, runtime timing':>24} {'benchmark_app':>24} "
          f"{'tool vs call':>13} {'tool vs runtime':>16}")

    def cell(runs: list[float]) -> str:
        runs = sorted(runs)
        return f"{statistics.median(runs):9.3f} [{runs[0]:.3f}-{runs[-1]:.3f}]"

    for model in sorted({m for m, _ in p50}):
        call, engine, tool = (statistics.median(p50[model, c]) for c in ("call", "engine", "tool"))
        print(f"{model:<11} {cell(p50[model, 'call']):>24} {cell(p50[model, 'engine']):>24} "
              f"{cell(p50[model, 'tool']):>24} {tool / call - 1:+13.1%} {tool / engine - 1:+16.1%}")
    print("\nBoth compile the model for the shape they are fed. The whole call adds what Python does"
          "\naround infer(): binding the input array and copying the outputs out.")
    print(f"database: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
