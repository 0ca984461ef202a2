"""Board health: a golden job before a run, and quarantine for a board that keeps failing it.

The golden job is a tiny real model whose correct outputs are known: it runs through the same
path as every measurement (push, sha256 check, engine load, inference, agreement with the
reference), in a second or two. A board that fails it is skipped for the run, and after
``quarantine_after`` failures in a row it is quarantined, so one flaky board cannot spoil
every nightly run until someone looks at it (``edgefarm boards`` shows it; ``--release`` ends it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.protocol import JobRecord, MeasureSettings, ResultRecord, make_job
from controller.build.cache import Cache, key_of
from controller.results.store import Board as BoardRow
from controller.results.store import now

# Engines that run the golden ONNX model, best first; a board with none of them is judged
# by its probe alone.
GOLDEN_ENGINES = ("onnxruntime", "openvino")
GOLDEN_VERSION = 1
# Agreement with the reference below this means the board computes wrong numbers.
MIN_AGREEMENT = 0.999
MEASURE: MeasureSettings = {"warmup": 1, "min_iterations": 8, "min_seconds": 0.0, "max_seconds": 10.0,
           "batch_sizes": [], "throughput_seconds": 0.0}
TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Golden:
    model: Path
    dataset: Path

    def files(self) -> dict[str, tuple[Path, str]]:
        from agent.protocol import sha256_file

        return {"model": (self.model, sha256_file(str(self.model))),
                "dataset": (self.dataset, sha256_file(str(self.dataset)))}


def golden(cache: Cache) -> Golden:
    """The golden model (dense + ReLU, fixed weights) and its reference outputs, cached."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from controller.data.datasets import make_dataset

    key = key_of(what="golden", version=GOLDEN_VERSION)
    model = cache.path("golden", key, ".onnx")
    dataset = cache.path("golden", key, ".npz")
    if not (model.is_file() and dataset.is_file()):
        rng = np.random.default_rng(20261124)
        weight = numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w")
        bias = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["z"]),
             helper.make_node("Relu", ["z"], ["y"])],
            "edgefarm_golden",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
            initializer=[weight, bias],
        )
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
        model.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(proto, str(model))
        make_dataset("seeded", {"x": ((1, 16), "tensor(float)")}, 8, 7, dataset, model_path=model)
    return Golden(model, dataset)


def golden_job(board_name: str, engine: str) -> JobRecord:
    return make_job(f"health-{board_name}", engine, {}, MEASURE)


def engine_for(probe: dict[str, Any], allowed: list[str] | None) -> str | None:
    found = probe.get("engines", {})
    for name in GOLDEN_ENGINES:
        info = found.get(name, {})
        # The golden job goes through the agent: an engine measured by a native tool does not count.
        if info.get("available") and not info.get("native") and (allowed is None or name in allowed):
            return name
    return None


def verdict(result: ResultRecord) -> str | None:
    """Why the golden job failed, or None when the board is healthy."""
    if result.get("status") != "ok":
        failure = result.get("failure") or {}
        return f"golden job failed at {failure.get('stage')}: {failure.get('message')}"
    agreement = (result.get("accuracy") or {}).get("value")
    if agreement is None or agreement < MIN_AGREEMENT:
        return f"golden job computed wrong outputs (agreement {agreement}, needs {MIN_AGREEMENT})"
    return None


def record(row: BoardRow, problem: str | None, quarantine_after: int) -> bool:
    """Count a health check on the board's row; True when this check quarantines it."""
    if problem is None:
        row.health_failures = 0
        return False
    row.health_failures = (row.health_failures or 0) + 1
    if row.health_failures >= quarantine_after and row.quarantined_at is None:
        row.quarantined_at = now()
        row.quarantine_reason = f"{row.health_failures} failed health checks in a row; last: {problem}"
        return True
    return False


def release(row: BoardRow) -> None:
    row.quarantined_at = None
    row.quarantine_reason = None
    row.health_failures = 0
