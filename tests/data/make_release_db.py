"""Make ``tests/data/release-bf4204a.db``: a results database as the release at commit bf4204a wrote it.

That release created its tables with ``create_all`` and had no schema revisions (no
``alembic_version`` table). ``tests/controller/test_migrations.py`` upgrades a copy of this file
and checks that every row stays. The rows go in through that release's own ORM, so the file holds
exactly what its code wrote: column types, JSON encoding, datetimes, the WAL journal mode.

To make it again (from the repository root; the worktree is only needed while it runs):

    git worktree add --detach /tmp/release bf4204a
    PYTHONPATH=/tmp/release .venv/bin/python tests/data/make_release_db.py tests/data/release-bf4204a.db
    git worktree remove /tmp/release

The rows are fixed (seeded samples, fixed times), so the test's expectations never change.
"""

from __future__ import annotations

import random
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

RELEASE = "bf4204a"


def _latency(rng: random.Random, center: float, n: int) -> dict[str, Any]:
    samples = sorted(round(rng.gauss(center, center * 0.04), 6) for _ in range(n))
    rng.shuffle(samples)  # stored in measurement order, as the agent sends them
    ordered = sorted(samples)
    mean = sum(samples) / n
    std = (sum((s - mean) ** 2 for s in samples) / (n - 1)) ** 0.5

    def pct(q: float) -> float:
        k = (n - 1) * q
        lo = int(k)
        return ordered[lo] + (ordered[min(lo + 1, n - 1)] - ordered[lo]) * (k - lo)

    return dict(p50_ms=pct(0.5), p90_ms=pct(0.9), p99_ms=pct(0.99), mean_ms=mean, std_ms=std,
                min_ms=ordered[0], max_ms=ordered[-1], n=n, cv=std / mean, samples_ms=samples)


def main(out: Path) -> None:
    try:
        from controller import store  # type: ignore[attr-defined]  # the release's flat layout: controller/store.py
    except ImportError:
        sys.exit(f"controller.store not found: run with PYTHONPATH pointing at a checkout of {RELEASE}")
    print(f"writing {out} with {store.__file__}")

    out.unlink(missing_ok=True)
    url = f"sqlite:///{out}"
    sessions = store.open_db(url)
    rng = random.Random(7)
    t0 = datetime(2025, 3, 4, 2, 0, 0)
    fingerprint = {"arch": "x86_64", "cpu_model": "AMD EPYC 7B13", "cores": 8, "governor": "performance",
                   "temperature_c": 41.5, "os": "Linux 6.1.0-18-amd64", "python": "3.11.7",
                   "engine_version": "1.18.1"}
    with sessions() as db:
        spec = {"name": "ppocr-nightly", "models": [{"name": "ppocr-det", "path": "models/det.onnx"},
                                                    {"name": "ppocr-cls", "path": "models/cls.onnx"}],
                "variants": ["fp32", "fp16", "int8"], "engines": ["onnxruntime", "openvino"],
                "boards": ["local", "rk3588-a"], "selection": {"budget": 0.01, "objective": "latency"}}
        runs = [
            store.Run(spec_name="ppocr-nightly", spec_sha256="a1" * 32, spec=spec, spec_base="/srv/edgefarm/specs",
                      kind="nightly", status="done", verdict="pass",
                      summary={"ok": 5, "failed": 1, "skipped": {}, "resumed": 0, "previous_run": None,
                               "changes": []},
                      started_at=t0, finished_at=t0 + timedelta(minutes=41)),
            store.Run(spec_name="ppocr-nightly", spec_sha256="a1" * 32, spec=spec, spec_base="/srv/edgefarm/specs",
                      kind="nightly", status="done", verdict="regression",
                      summary={"ok": 4, "failed": 2, "skipped": {"rk3588-a": "unreachable: timed out"},
                               "resumed": 0, "previous_run": 1,
                               "changes": [{"key": "ppocr-det/int8/openvino", "p50_ratio": 1.31, "bad": True}]},
                      started_at=t0 + timedelta(days=1), finished_at=t0 + timedelta(days=1, minutes=39)),
            # Interrupted: no finish time, no summary, a pending job left behind.
            store.Run(spec_name="adhoc «cls» ✓", spec_sha256="b2" * 32, spec={"name": "adhoc", "models": []},
                      spec_base=None, kind="run", status="interrupted", started_at=t0 + timedelta(days=2)),
        ]
        boards = [
            store.Board(name="local", chip="x86_64 AMD EPYC 7B13", transport="local", fingerprint=fingerprint,
                        engines={"onnxruntime": "1.18.1", "openvino": "2024.4.0"}, last_seen=t0 + timedelta(days=2)),
            store.Board(name="rk3588-a", chip="rk3588", transport="ssh",
                        fingerprint={"arch": "aarch64", "cpu_model": "Cortex-A76", "cores": 8},
                        engines={"onnxruntime": "1.17.3"}, last_seen=t0,
                        last_error="unreachable: ssh 10.231.4.17:22 timed out after 10 s",
                        health_failures=3, quarantined_at=t0 + timedelta(days=1, minutes=2),
                        quarantine_reason="golden job failed 3 times in a row: p50 4.8x the reference"),
            store.Board(name="pi4-b", chip="auto", transport="adb"),  # seen in an inventory, never probed
        ]
        models = [
            store.Model(name="ppocr-det", sha256="d" * 64, source="models/det.onnx", task="ocr-det",
                        inputs=[{"name": "x", "shape": [1, 3, 640, 640], "dtype": "float32"}]),
            store.Model(name="ppocr-cls", sha256="c" * 64, source="models/cls.onnx", task="ocr-cls",
                        inputs=[{"name": "x", "shape": [1, 3, 48, 192], "dtype": "float32"}]),
        ]
        db.add_all(runs + boards + models)
        db.flush()
        det, cls = models
        variants = {
            ("det", "fp32"): store.Variant(model_id=det.id, name="fp32", sha256="e0" * 32, size_bytes=2_377_917,
                                           recipe={"applied": {"conv+bn": 42, "constant-folding": 3},
                                                   "nodes": {"before": 377, "after": 293},
                                                   "left_for_engine": ["conv+relu"]}),
            ("det", "int8"): store.Variant(model_id=det.id, name="int8", sha256="e1" * 32, size_bytes=912_004,
                                           recipe={"format": "QDQ", "calibration": {"samples": 64, "seed": 0},
                                                   "per_channel": True, "float_nodes": []}),
            ("cls", "fp32"): store.Variant(model_id=cls.id, name="fp32", sha256="e2" * 32, size_bytes=583_211,
                                           recipe={"applied": {"conv+bn": 12}}),
            ("cls", "fp16"): store.Variant(model_id=cls.id, name="fp16", sha256="", size_bytes=0,
                                           recipe={"error": "convert: float16 conversion refused: Resize op"}),
        }
        db.add_all(variants.values())
        db.flush()
        local, rk, _ = boards

        def job(run: Any, board: Any, variant: Any, engine: str, label: str, status: str, day: int,
                **extra: Any) -> Any:
            return store.Job(run_id=run.id, board_id=board.id, variant_id=variant.id, engine=engine,
                             options={"threads": 4} if engine == "onnxruntime" else {"hint": "latency"},
                             label=label, status=status,
                             finished_at=None if status == "pending" else t0 + timedelta(days=day, minutes=5),
                             **{"attempts": 0 if status == "pending" else 1, **extra})

        ir = {"sha256": "f0" * 32, "size_bytes": 4_721_002, "target": "x86_64",
              "conversion": {"tool": "openvino.convert_model", "version": "2024.4.0", "seconds": 3.2}}
        ok_jobs = [
            job(runs[0], local, variants[("det", "fp32")], "onnxruntime", "fp32", "ok", 0),
            job(runs[0], local, variants[("det", "fp32")], "openvino", "fp32@bf16", "ok", 0, artifact=ir),
            job(runs[0], local, variants[("det", "int8")], "onnxruntime", "int8", "ok", 0),
            job(runs[0], local, variants[("cls", "fp32")], "onnxruntime", "fp32", "ok", 0),
            job(runs[1], local, variants[("det", "fp32")], "onnxruntime", "fp32", "ok", 1),
        ]
        failed_jobs = [
            job(runs[0], rk, variants[("det", "int8")], "onnxruntime", "int8", "failed", 0, stage="measure",
                message="RuntimeError: [ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code",
                stderr_tail="Traceback (most recent call last):\n  File \"agent/run.py\", line 88\n"
                            "RuntimeError: ... Non-zero status code returned while running QLinearConv\n"),
            job(runs[1], local, variants[("cls", "fp16")], "onnxruntime", "fp16", "failed", 1, stage="convert",
                message="float16 conversion refused: Resize op"),
            job(runs[1], rk, variants[("det", "fp32")], "openvino", "fp32", "failed", 1, stage="transport",
                message="unreachable: timed out", attempts=3),
        ]
        pending = [job(runs[2], local, variants[("cls", "fp32")], "onnxruntime", "fp32", "pending", 2)]
        db.add_all(ok_jobs + failed_jobs + pending)
        db.flush()

        for i, j in enumerate(ok_jobs):
            center = [18.4, 11.9, 9.7, 1.35, 18.9][i]
            lat = _latency(rng, center, 64 + 16 * i)
            accuracy = {"metric": "hmean", "value": 0.8123 - 0.01 * i, "precision": 0.84, "recall": 0.786,
                        "samples": 200}
            if i == 3:
                accuracy = {"metric": "accuracy", "value": 0.995, "samples": 200}
            db.add(store.Result(
                job_id=j.id, engine_version="2024.4.0" if j.engine == "openvino" else "1.18.1",
                precision="bf16" if j.label.endswith("@bf16") else j.label.split("@")[0],
                load_ms=round(rng.uniform(40, 400), 3), first_inference_ms=round(rng.uniform(20, 60), 3),
                throughput=[{"batch": b, "items_per_s": round(1000 / center * b ** 0.8, 4), "p50_ms": center * b ** 0.2}
                            for b in (1, 4, 8)],
                peak_rss_mb=None if i == 4 else round(rng.uniform(180, 420), 1),
                accuracy_metric=accuracy["metric"], accuracy=accuracy["value"], accuracy_detail=accuracy,
                fingerprint=fingerprint,
                raw={"status": "ok", "engine": {"name": j.engine, "version": "1.18.1"},
                     "phases": {"load_ms": 120.5}, "latency_source": "agent",
                     **({"engine_latency": {"p50": center * 0.93, "mean": center * 0.95}} if j.engine == "openvino" else {}),
                     "notes": ["warm-up 10 iterations", "識別 texts rendered with seed 0"]},
                **lat,
            ))
        db.commit()
    sessions.kw["bind"].dispose()  # the last connection closes: SQLite folds the WAL file back in
    print(f"{out}: {out.stat().st_size} bytes")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
