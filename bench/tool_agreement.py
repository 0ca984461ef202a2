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
    from controller.store import Job, open_db

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
        p50: dict[tuple[str, str], list[float]] = {}
        for job in db.scalars(select(Job).order_by(Job.run_id)):
            if job.result is not None:
                p50.setdefault((job.variant.model.name, job.board.name), []).append(job.result.p50_ms)
    print(f"\n== OpenVINO fp32, {THREADS} threads, {spec['measure']['min_iterations']} iterations a run, "
          f"{ROUNDS} runs each: median p50 ms [lowest-highest] ==")
    print(f"{'model':<11} {'agent':>24} {'benchmark_app':>24} {'tool vs agent':>14}")
    for model in sorted({m for m, _ in p50}):
        agent, tool = sorted(p50[model, "agent"]), sorted(p50[model, "tool"])
        a, t = statistics.median(agent), statistics.median(tool)
        print(f"{model:<11} {a:9.3f} [{agent[0]:.3f}-{agent[-1]:.3f}] {t:9.3f} [{tool[0]:.3f}-{tool[-1]:.3f}] "
              f"{t / a - 1:+13.1%}")
    print("\nThe agent times each run() call from Python, input copy included; benchmark_app times the"
          "\ninference request alone on a tensor it filled once.")
    print(f"database: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
