"""Shared pieces of the agent tests: the real PaddleOCR cls model, hand-built dataset files,
job files, and the agent zipapp run in a subprocess like the controller runs it."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

REPO = Path(__file__).resolve().parents[2]
CLS_INPUT_SHAPE = (3, 48, 192)
# PaddleOCR's cls preprocessing: x / 255, then (x - 0.5) / 0.5.
CLS_NORMALIZE = {"scale": 1.0 / 255.0, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


def cls_model_path() -> Path:
    # Found, not imported: rapidocr_onnxruntime is installed --no-deps and its import needs cv2.
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("rapidocr_onnxruntime (which ships the PaddleOCR models) is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
    if not path.is_file():
        pytest.skip("%s is missing" % path)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cls_images(count: int, seed: int = 0) -> np.ndarray:
    """Seeded uint8 NCHW images of the cls model's input size."""
    return np.random.default_rng(seed).integers(0, 256, size=(count,) + CLS_INPUT_SHAPE, dtype=np.uint8)


def write_npz(path: Path, task: str, inputs: Dict[str, np.ndarray], normalize: Dict[str, Any],
              labels: Optional[Dict[str, np.ndarray]] = None, params: Optional[Dict[str, Any]] = None) -> Path:
    """A dataset file laid out as agent.protocol describes it."""
    count = len(next(iter(inputs.values())))
    meta = {
        "task": task, "count": count,
        "inputs": {name: {"normalize": normalize.get(name)} for name in inputs},
        "params": params or {},
    }
    arrays: Dict[str, np.ndarray] = {"__meta__": np.array(json.dumps(meta))}
    arrays.update({"input:" + k: v for k, v in inputs.items()})
    arrays.update(labels or {})
    np.savez_compressed(path, **arrays)
    return path


def write_job(workdir: Path, engine: str, options: Optional[Dict[str, Any]] = None,
              measure: Optional[Dict[str, Any]] = None, dataset: Optional[Path] = None,
              sha_override: Optional[Dict[str, str]] = None, inputs_count: int = 4) -> Path:
    """A job dir holding the cls model, seeded inputs and job.json; returns the job file."""
    workdir.mkdir(parents=True, exist_ok=True)
    model = workdir / "model.onnx"
    shutil.copyfile(cls_model_path(), model)
    inputs = write_npz(workdir / "inputs.npz", "cls", {"x": cls_images(inputs_count)}, {"x": CLS_NORMALIZE})
    artifacts: Dict[str, Any] = {
        "model": {"file": model.name, "sha256": sha256(model)},
        "inputs": {"file": inputs.name, "sha256": sha256(inputs)},
        "dataset": None,
    }
    if dataset is not None:
        artifacts["dataset"] = {"file": dataset.name, "sha256": sha256(dataset)}
    for name, digest in (sha_override or {}).items():
        artifacts[name]["sha256"] = digest
    job = {
        "protocol": 1,
        "job_id": "test-%s-%s" % (workdir.name, engine),
        "engine": {"name": engine, "options": options or {}},
        "artifacts": artifacts,
        "measure": measure or {"warmup": 2, "min_iterations": 64, "min_seconds": 0.3,
                               "max_seconds": 20.0, "batch_sizes": [1, 4], "throughput_seconds": 0.2},
    }
    path = workdir / "job.json"
    path.write_text(json.dumps(job, indent=1))
    return path


def fixed_batch_model(path: Path) -> Path:
    """y = relu(x) with x fixed at [1, 4]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "fixed", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def agent_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from controller.boards.agent_bundle import build_agent_bundle

    return build_agent_bundle(tmp_path_factory.mktemp("bundle"))


def run_bundle(bundle: Path, job_file: Path, timeout: float = 180.0) -> Dict[str, Any]:
    """Run the zipapp on a job in a subprocess, cwd = the job dir, as a transport would."""
    out = job_file.parent / "result.json"
    proc = subprocess.run(
        [sys.executable, str(bundle), "run", job_file.name, "--out", out.name],
        cwd=str(job_file.parent), capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())
