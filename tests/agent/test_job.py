"""Jobs end to end: the agent zipapp runs in a subprocess on the real cls model, as the
controller runs it on a board, and its result file is checked against the protocol."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.engines import probe_engines
from agent.job import run_job
from tests.agent.conftest import cls_model_path, fixed_batch_model, run_bundle, sha256, write_job, write_npz

RESULT_KEYS = {"protocol", "job_id", "status", "failure", "fingerprint", "engine", "phases", "latency",
               "throughput", "memory", "accuracy", "temperature_after_c"}


def _library_version(name: str) -> str:
    if name == "onnxruntime":
        import onnxruntime

        return onnxruntime.__version__
    import openvino

    return openvino.get_version()


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_a_job_runs_end_to_end_through_the_zipapp(tmp_path: Path, agent_bundle: Path, engine: str) -> None:
    job_file = write_job(tmp_path / "job", engine, {"threads": 1})
    result = run_bundle(agent_bundle, job_file)
    assert result["status"] == "ok", result["failure"]
    assert RESULT_KEYS <= set(result)
    assert result["job_id"] == json.loads(job_file.read_text())["job_id"]
    assert result["engine"]["name"] == engine
    assert result["engine"]["version"] == _library_version(engine)
    assert result["engine"]["device"] == "CPU"

    lat = result["latency"]
    assert lat["n"] == len(lat["samples_ms"]) >= 64
    assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"]
    assert lat["p50"] == pytest.approx(float(np.median(lat["samples_ms"])))
    assert sum(lat["samples_ms"]) / 1000.0 >= 0.3 * 0.9  # min_seconds 0.3 of timed runs, nearly
    assert lat["percentile_method"] == "linear" and lat["stopped_by"] == "target"
    if engine == "openvino":  # the runtime's own timing of each call sits inside the call's
        assert lat["engine"]["n"] == lat["n"] and 0 < lat["engine"]["min"] <= lat["engine"]["p50"] < lat["p50"]
    else:  # ONNX Runtime keeps no per-call timing
        assert "engine" not in lat

    assert [row["batch"] for row in result["throughput"]] == [1, 4]
    for row in result["throughput"]:
        assert row["n"] >= 8 and row["items_per_s"] > 0 and row["p50_ms"] > 0
    assert result["phases"]["load_ms"] > 0 and result["phases"]["first_inference_ms"] > 0
    mem = result["memory"]
    assert mem["peak_rss_mb"] >= mem["rss_before_load_mb"] > 0
    assert result["fingerprint"]["cores"] == os.cpu_count()
    assert result["accuracy"] is None


def test_openvino_reports_the_precision_it_computes_in(tmp_path: Path, agent_bundle: Path) -> None:
    fp32 = run_bundle(agent_bundle, write_job(tmp_path / "fp32", "openvino", {"precision": "fp32"}))
    default = run_bundle(agent_bundle, write_job(tmp_path / "default", "openvino", {}))
    assert fp32["status"] == default["status"] == "ok"
    assert fp32["engine"]["precision"] == "fp32"
    # With no hint OpenVINO uses the device's default: bf16 on a CPU with AVX512_BF16.
    assert default["engine"]["precision"] == probe_engines()["openvino"]["default_precision"]


def test_a_provider_onnxruntime_drops_fails_the_load(tmp_path: Path, agent_bundle: Path) -> None:
    job = write_job(tmp_path / "cuda", "onnxruntime", {"providers": ["CUDAExecutionProvider"]})
    result = run_bundle(agent_bundle, job)
    assert result["status"] == "failed"
    assert result["failure"]["stage"] == "load"
    assert "dropped the requested provider(s) CUDAExecutionProvider" in result["failure"]["message"]
    assert "EngineError" in result["failure"]["stderr_tail"]
    assert result["latency"] is None


def test_a_wrong_sha256_fails_verify_before_any_engine_loads(tmp_path: Path, agent_bundle: Path) -> None:
    wrong = "0" * 64
    job = write_job(tmp_path / "sha", "openvino", sha_override={"model": wrong})
    result = run_bundle(agent_bundle, job)
    assert result["status"] == "failed" and result["failure"]["stage"] == "verify"
    message = result["failure"]["message"]
    assert "model.onnx" in message and wrong in message and sha256(job.parent / "model.onnx") in message
    assert "load_ms" not in result["phases"] and result["engine"]["version"] is None


def test_a_missing_artifact_fails_verify(tmp_path: Path) -> None:
    job_file = write_job(tmp_path / "missing", "onnxruntime")
    (job_file.parent / "inputs.npz").unlink()
    result = run_job(json.loads(job_file.read_text()), str(job_file.parent))
    assert result["failure"]["stage"] == "verify"
    assert "inputs.npz is missing" in result["failure"]["message"]


def test_an_unknown_engine_fails_naming_the_known_ones(tmp_path: Path, agent_bundle: Path) -> None:
    result = run_bundle(agent_bundle, write_job(tmp_path / "unknown", "tensorrt"))
    assert result["status"] == "failed" and result["failure"]["stage"] == "load"
    message = result["failure"]["message"]
    assert "'tensorrt'" in message and "onnxruntime" in message and "openvino" in message


def test_a_bad_job_file_still_gives_a_failed_result(tmp_path: Path, agent_bundle: Path) -> None:
    job_file = write_job(tmp_path / "badproto", "onnxruntime")
    job = json.loads(job_file.read_text())
    job["protocol"] = 99
    job_file.write_text(json.dumps(job))
    result = run_bundle(agent_bundle, job_file)  # asserts exit code 0
    assert result["status"] == "failed" and result["failure"]["stage"] == "agent"
    assert "99" in result["failure"]["message"] and result["job_id"] == job["job_id"]


def test_an_unwritable_result_exits_non_zero(tmp_path: Path, agent_bundle: Path) -> None:
    job_file = write_job(tmp_path / "noout", "onnxruntime", measure={"warmup": 0, "min_iterations": 1,
                                                                     "min_seconds": 0.0, "batch_sizes": []})
    proc = subprocess.run([sys.executable, str(agent_bundle), "run", job_file.name,
                           "--out", "no-such-dir/result.json"],
                          cwd=str(job_file.parent), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "cannot write result" in proc.stderr


def test_a_fixed_batch_model_records_the_batch_it_cannot_take(tmp_path: Path) -> None:
    model = fixed_batch_model(tmp_path / "fixed.onnx")
    inputs = write_npz(tmp_path / "inputs.npz", "agreement",
                       {"x": np.random.default_rng(0).normal(size=(3, 1, 4))[:, 0, :]}, {})
    job = {
        "protocol": 1, "job_id": "fixed", "engine": {"name": "onnxruntime", "options": {}},
        "artifacts": {"model": {"file": model.name, "sha256": sha256(model)},
                      "inputs": {"file": inputs.name, "sha256": sha256(inputs)}, "dataset": None},
        "measure": {"warmup": 1, "min_iterations": 16, "min_seconds": 0.0, "max_seconds": 10.0,
                    "batch_sizes": [1, 4], "throughput_seconds": 0.0},
    }
    result = run_job(job, str(tmp_path))
    assert result["status"] == "ok", result["failure"]
    assert result["latency"]["n"] == 16
    assert result["throughput"][0]["batch"] == 1 and result["throughput"][0]["n"] >= 8
    assert result["throughput"][1] == {"batch": 4, "error": "the model's batch dimension is fixed at 1"}


def test_model_inputs_missing_from_the_inputs_file_fail_the_measure_stage(tmp_path: Path) -> None:
    job_file = write_job(tmp_path / "names", "onnxruntime")
    inputs = write_npz(job_file.parent / "inputs.npz", "cls", {"image": np.zeros((2, 3, 48, 192), np.uint8)},
                       {"image": None})
    job = json.loads(job_file.read_text())
    job["artifacts"]["inputs"]["sha256"] = sha256(inputs)
    result = run_job(job, str(job_file.parent))
    assert result["failure"]["stage"] == "measure"
    assert "model input(s) x not in the measurement inputs file (it has image)" in result["failure"]["message"]
    assert result["phases"]["load_ms"] > 0


def test_accuracy_feeds_every_dataset_sample_to_the_evaluator(tmp_path: Path) -> None:
    pytest.importorskip("agent.metrics", reason="agent/metrics.py has not landed yet")
    import onnxruntime

    images = np.random.default_rng(11).integers(0, 256, size=(12, 3, 48, 192), dtype=np.uint8)
    labels = np.array([0, 1] * 6, dtype=np.int64)
    norm = {"scale": 1 / 255.0, "mean": [0.5] * 3, "std": [0.5] * 3}
    (tmp_path / "data").mkdir()
    dataset = write_npz(tmp_path / "data" / "dataset.npz", "cls", {"x": images}, {"x": norm}, {"label": labels})
    job_file = write_job(tmp_path / "data", "onnxruntime", dataset=dataset)
    result = run_job(json.loads(job_file.read_text()), str(job_file.parent))
    assert result["status"] == "ok", result["failure"]
    acc = result["accuracy"]
    assert acc["samples"] == 12
    # the same figure, computed here straight from ONNX Runtime's outputs
    session = onnxruntime.InferenceSession(str(cls_model_path()), providers=["CPUExecutionProvider"])
    x = (images.astype(np.float32) / 255.0 - 0.5) / 0.5
    predicted = session.run(None, {"x": x})[0].argmax(axis=1)
    assert acc["value"] == pytest.approx(float((predicted == labels).mean()))
    assert result["phases"]["accuracy_ms"] > 0


def test_accuracy_on_rendered_text_through_the_zipapp(tmp_path: Path, agent_bundle: Path) -> None:
    datasets = pytest.importorskip("controller.data.datasets")
    import onnxruntime

    workdir = tmp_path / "rendered"
    dataset = workdir / "dataset.npz"
    datasets.make_dataset("ocr-cls", {"x": ((1, 3, 48, 192), "float32")}, 24, 5, dataset)
    job_file = write_job(workdir, "openvino", {"precision": "fp32"}, dataset=dataset)
    result = run_bundle(agent_bundle, job_file)
    assert result["status"] == "ok", result["failure"]
    acc = result["accuracy"]
    assert acc["metric"] == "accuracy" and acc["samples"] == 24
    with np.load(dataset, allow_pickle=False) as data:
        images, labels = data["input:x"], data["label"]
    session = onnxruntime.InferenceSession(str(cls_model_path()), providers=["CPUExecutionProvider"])
    predicted = session.run(None, {"x": (images.astype(np.float32) / 255.0 - 0.5) / 0.5})[0].argmax(axis=1)
    assert acc["value"] == pytest.approx(float((predicted == labels).mean()))
    # The real classifier reads rendered upright/180-degree lines; a broken input path would not.
    assert acc["value"] >= 0.9
