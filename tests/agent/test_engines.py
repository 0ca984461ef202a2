"""The engine registry and the two built-in engines on the real PaddleOCR cls model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import List

import numpy as np
import pytest

import agent.engines as registry
from agent.engines import EngineError, UnknownEngine, get_engine, probe_engines, register
from agent.engines.base import Engine
from tests.agent.conftest import CLS_NORMALIZE, REPO, cls_images, cls_model_path, fixed_batch_model, write_job


def _cls_input(count: int = 2) -> np.ndarray:
    x = cls_images(count, seed=7).astype(np.float32) * CLS_NORMALIZE["scale"]
    return (x - 0.5) / 0.5


class _FakeEngine(Engine):
    """Registered only to exercise the registry; never loads a model."""

    @classmethod
    def version(cls) -> str:
        return "0"

    def load(self, model_path, options):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def run(self, inputs):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def precision(self) -> str:
        return "fp32"

    def device(self) -> str:
        return "none"

    def input_names(self) -> List[str]:
        return []

    def input_shapes(self):  # type: ignore[no-untyped-def]
        return {}


def test_register_refuses_a_duplicate_name() -> None:
    name = "fake-duplicate-test"
    try:
        register(name)(type("FakeA", (_FakeEngine,), {}))
        with pytest.raises(ValueError, match="already registered"):
            register(name)(type("FakeB", (_FakeEngine,), {}))
        assert registry.engine_class(name).__name__ == "FakeA"
    finally:
        registry.ENGINES.unregister(name)


def test_register_refuses_a_built_in_name_for_another_class() -> None:
    with pytest.raises(ValueError, match="openvino"):
        register("openvino")(type("FakeOpenVino", (_FakeEngine,), {}))
    assert registry.engine_class("openvino").__module__ == "agent.engines.openvino"


def test_unknown_engine_lists_the_known_ones() -> None:
    with pytest.raises(UnknownEngine) as info:
        get_engine("tensorrt-not-here")
    message = str(info.value)
    assert "tensorrt-not-here" in message
    for name in registry.known_engines():
        assert name in message
    assert {"onnxruntime", "openvino"} <= set(registry.known_engines())


def test_probe_reports_both_engines_with_their_library_versions() -> None:
    import onnxruntime
    import openvino

    report = probe_engines()
    assert report["onnxruntime"]["available"] and report["onnxruntime"]["version"] == onnxruntime.__version__
    assert report["openvino"]["available"] and report["openvino"]["version"] == openvino.get_version()
    assert report["onnxruntime"]["providers"] == onnxruntime.get_available_providers()
    hint = openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    assert report["openvino"]["default_precision"] == {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}[hint]
    assert report["openvino"]["default_precision"] in report["openvino"]["precisions"]
    assert "fp32" in report["openvino"]["precisions"]


def test_both_engines_compute_the_same_fp32_outputs() -> None:
    x = _cls_input(3)
    outputs = {}
    for name, options in (("onnxruntime", {"threads": 1}), ("openvino", {"precision": "fp32", "threads": 1})):
        with get_engine(name) as engine:
            engine.load(str(cls_model_path()), options)
            assert engine.input_names() == ["x"]
            assert engine.input_shapes()["x"][:2] == [None, 3]
            assert engine.precision() == "fp32" and engine.device() == "CPU"
            outputs[name] = engine.run({"x": x})
    assert len(outputs["onnxruntime"]) == 1 and outputs["onnxruntime"][0].shape == (3, 2)
    # softmax rows of a classifier: sum to one, and both engines agree
    np.testing.assert_allclose(outputs["onnxruntime"][0].sum(axis=1), 1.0, rtol=1e-4)
    np.testing.assert_allclose(outputs["onnxruntime"][0], outputs["openvino"][0], atol=1e-4)


def test_openvino_outputs_are_not_overwritten_by_the_next_run() -> None:
    x = _cls_input(2)
    with get_engine("openvino") as engine:
        engine.load(str(cls_model_path()), {"precision": "fp32"})
        first = engine.run({"x": x[:1]})[0].copy()
        kept = engine.run({"x": x[:1]})[0]
        engine.run({"x": -x[1:]})
        np.testing.assert_array_equal(kept, first)


def test_openvino_compiles_the_shapes_it_is_fed_and_stays_right() -> None:
    from agent.engines.openvino import STATIC_SHAPES_MAX

    x = _cls_input(STATIC_SHAPES_MAX + 2)
    with get_engine("onnxruntime") as ort:
        ort.load(str(cls_model_path()), {})
        expected = ort.run({"x": x})[0]
    for static in (True, False):
        with get_engine("openvino") as engine:
            engine.load(str(cls_model_path()), {"precision": "fp32", "static_shapes": static})
            # one batch size more than get a static compile: the last runs dynamically
            for batch in range(1, STATIC_SHAPES_MAX + 2):
                out = engine.run({"x": x[:batch]})[0]
                np.testing.assert_allclose(out, expected[:batch], atol=1e-4)
                compiled = engine._last.get_compiled_model().inputs[0].get_partial_shape()
                assert compiled.is_static == (static and batch <= STATIC_SHAPES_MAX), (static, batch)
                assert 0 < engine.last_latency_ms() < 10_000
            assert engine.input_shapes()["x"][0] is None  # the model's own shape, still dynamic


def test_onnxruntime_reports_the_precision_the_controller_tells() -> None:
    with get_engine("onnxruntime") as engine:
        engine.load(str(cls_model_path()), {"model_precision": "int8"})
        assert engine.precision() == "int8"


def test_onnxruntime_refuses_a_dropped_provider() -> None:
    engine = get_engine("onnxruntime")
    with pytest.raises(EngineError, match="dropped the requested provider.*CUDAExecutionProvider"):
        engine.load(str(cls_model_path()), {"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]})


def test_engines_refuse_a_file_format_they_do_not_read(tmp_path: Path) -> None:
    path = tmp_path / "model.tflite"
    path.write_bytes(b"not a model")
    for name in ("onnxruntime", "openvino"):
        with pytest.raises(EngineError, match="reads"):
            get_engine(name).load(str(path), {})


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_a_fixed_batch_model_reports_its_batch(tmp_path: Path, name: str) -> None:
    model = fixed_batch_model(tmp_path / "fixed.onnx")
    with get_engine(name) as engine:
        engine.load(str(model), {})
        assert engine.input_shapes() == {"x": [1, 4]}
        out = engine.run({"x": np.array([[-1.0, 2.0, -3.0, 4.0]], np.float32)})
        np.testing.assert_array_equal(out[0], [[0.0, 2.0, 0.0, 4.0]])


def test_a_missing_library_is_a_clear_state_not_a_crash(tmp_path: Path) -> None:
    """A board without OpenVINO: probe says why, ONNX Runtime still works, a job fails at load."""
    code = r'''
import json, sys
class NoOpenVino:
    def find_spec(self, name, path=None, target=None):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("No module named 'openvino' (hidden by the test)")
        return None
sys.meta_path.insert(0, NoOpenVino())
from agent.engines import get_engine, probe_engines
from agent.job import run_job
job = json.load(open(sys.argv[1]))
job["engine"]["name"] = "openvino"
print(json.dumps({"probe": probe_engines(), "job": run_job(job, sys.argv[2])}))
'''
    job_file = write_job(tmp_path / "job", "onnxruntime")
    proc = subprocess.run([sys.executable, "-c", code, str(job_file), str(job_file.parent)],
                          cwd=str(REPO), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    openvino = report["probe"]["openvino"]
    assert openvino["available"] is False and openvino["version"] is None
    assert "openvino cannot be imported" in openvino["reason"]
    assert report["probe"]["onnxruntime"]["available"] is True
    failure = report["job"]["failure"]
    assert failure["stage"] == "load" and "EngineUnavailable: openvino cannot be imported" in failure["message"]
