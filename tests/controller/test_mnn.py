"""MNN: the controller's converter and the agent's engine on the real PaddleOCR models, checked
against ONNX Runtime on rendered OCR data, and a converted model run as a job."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("MNN")

from agent.dataset import load_dataset  # noqa: E402
from agent.engines import EngineError, EngineUnavailable, get_engine, probe_engines  # noqa: E402
from agent.job import run_job  # noqa: E402
from agent.tasks import evaluator_for  # noqa: E402
from controller.build.source import prepare  # noqa: E402
from controller.convert import ConversionError, ConvertInput, converted_engines, converter_for  # noqa: E402
from controller.data.datasets import make_dataset  # noqa: E402
from controller.passes import PassInput, run_pass  # noqa: E402
from tests.models import ocr_model  # noqa: E402

SHAPES = {"cls": [1, 3, 48, 192], "rec": [1, 3, 48, 320], "det": [1, 3, 640, 640]}
KINDS = {"cls": "ocr-cls", "rec": "ocr-rec", "det": "ocr-det"}


def build(which: str, d: Path, samples: int, calibration: int) -> dict[str, Path]:
    """What the controller makes before converting: the prepared source, the fused fp32 variant,
    an evaluation set and a calibration set rendered with another seed."""
    src = prepare(ocr_model(which), which, {"x": SHAPES[which]}, d / f"{which}.source.onnx")
    fp32 = d / f"{which}.fp32.onnx"
    run_pass("fp32", PassInput(src.path, None, None), fp32)
    inputs = {i.name: (i.shape, i.dtype) for i in src.inputs}
    make_dataset(KINDS[which], inputs, samples, 0, d / f"{which}.eval.npz", model_path=src.path)
    make_dataset(KINDS[which], inputs, calibration, 1, d / f"{which}.calib.npz", model_path=src.path)
    return {"fp32": fp32, "eval": d / f"{which}.eval.npz", "calib": d / f"{which}.calib.npz", "dir": d}


def convert(files: dict[str, Path], variant: str, precision: str, options: dict[str, Any] | None = None,
            target: str = "cpu") -> tuple[Path, dict[str, Any]]:
    converter = converter_for("mnn")
    assert converter is not None
    out = files["dir"] / f"{files['fp32'].stem}.{variant}.mnn"
    meta = converter.convert(ConvertInput(variant, precision, files["fp32"], files["fp32"], files["calib"], target,
                                          options or {}), out)
    json.dumps(meta)  # the run stores it as JSON
    return out, meta


def outputs(engine_name: str, model: Path, data: Any, indices: list[int], options: dict[str, Any]) -> list[np.ndarray]:
    if engine_name == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        return [session.run(None, data.batch([i]))[0] for i in indices]
    engine = get_engine("mnn")
    engine.load(str(model), options)
    try:
        return [engine.run(data.batch([i]))[0] for i in indices]
    finally:
        engine.close()


def accuracy(data: Any, outs: list[np.ndarray]) -> float:
    evaluator = evaluator_for(data)
    for i, out in enumerate(outs):
        evaluator.add(i, [out])
    return float(evaluator.result()["value"])


@pytest.fixture(scope="module")
def cls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    files: dict[str, Any] = build("cls", tmp_path_factory.mktemp("mnn"), samples=40, calibration=8)
    files["data"] = load_dataset(str(files["eval"]))
    files["reference"] = outputs("onnxruntime", files["fp32"], files["data"], list(range(40)), {})
    files["fp32.mnn"], files["fp32.meta"] = convert(files, "fp32", "fp32")
    return files


def test_mnn_is_a_converted_engine() -> None:
    assert "mnn" in converted_engines()
    converter = converter_for("mnn")
    assert converter is not None and converter.suffix == ".mnn" and converter.default_target("aarch64") == "cpu"
    import MNN

    assert converter.tool_versions() == {"mnn": MNN.version()}


def test_fp32_matches_onnxruntime_on_rendered_text(cls: dict[str, Any]) -> None:
    meta = cls["fp32.meta"]
    assert meta["weights"] == meta["compute"] == "fp32" and meta["size_bytes"] == cls["fp32.mnn"].stat().st_size
    engine = get_engine("mnn")
    engine.load(str(cls["fp32.mnn"]), {"threads": 1, "model_precision": "fp32"})
    assert engine.input_names() == ["x"]
    assert engine.input_shapes() == {"x": [None, 3, 48, 192]}  # the ONNX batch is dynamic
    assert (engine.precision(), engine.device()) == ("fp32", "CPU")
    data = cls["data"]
    mnn = [engine.run(data.batch([i]))[0] for i in range(data.count)]
    diff = max(float(np.abs(m - r).max()) for m, r in zip(mnn, cls["reference"]))
    assert diff < 1e-4, diff
    # Any batch: four samples at once give the four single answers.
    four = engine.run(data.batch([0, 1, 2, 3]))[0]
    assert four.shape == (4, 2) and np.abs(four - np.concatenate(mnn[:4])).max() < 1e-5
    engine.close()
    assert accuracy(data, mnn) == accuracy(data, cls["reference"]) > 0.8


def test_fp16_stores_half_weights_and_computes_in_fp32_here(cls: dict[str, Any]) -> None:
    model, meta = convert(cls, "fp16", "fp16")
    assert meta["weights"] == "fp16" and meta["source"] == "fp32"
    assert model.stat().st_size < 0.6 * cls["fp32.mnn"].stat().st_size
    engine = get_engine("mnn")
    engine.load(str(model), {"threads": 1, "precision": "low", "model_precision": "fp16"})
    fp16_arith = probe_engines()["mnn"].get("cpu_features", {}).get("fp16")
    assert engine.precision() == ("fp16" if fp16_arith else "fp32")
    engine.close()
    mnn = outputs("mnn", model, cls["data"], list(range(cls["data"].count)), {"threads": 1})
    diff = max(float(np.abs(m - r).max()) for m, r in zip(mnn, cls["reference"]))
    assert 0 < diff < 0.05, diff  # rounded weights: close, not equal
    assert abs(accuracy(cls["data"], mnn) - accuracy(cls["data"], cls["reference"])) <= 0.05


def test_int8_is_calibrated_on_the_samples_and_computes_in_int8(cls: dict[str, Any]) -> None:
    model, meta = convert(cls, "int8", "int8", {"calibration": "entropy"})
    assert meta["compute"] == "int8" and meta["calibration_samples"] == 8
    assert meta["feature_method"] == "KL" and meta["quantization"] == "full (mnnquant)"
    engine = get_engine("mnn")
    engine.load(str(model), {"threads": 1, "model_precision": "int8"})
    assert engine.precision() == "int8"
    data = cls["data"]
    mnn = [engine.run(data.batch([i]))[0] for i in range(data.count)]
    engine.close()
    diff = max(float(np.abs(m - r).max()) for m, r in zip(mnn, cls["reference"]))
    assert diff > 1e-3  # quantized activations really change the answer...
    assert accuracy(data, mnn) >= accuracy(data, cls["reference"]) - 0.2  # ...but not into noise

    # Other calibration samples give other activation ranges: the samples are really read.
    first = model.read_bytes()
    other = dict(cls, calib=cls["dir"] / "other.npz")
    make_dataset("ocr-cls", {"x": ((1, 3, 48, 192), "float32")}, 8, 7, other["calib"])
    again, _ = convert(other, "int8", "int8", {"calibration": "entropy"})
    assert again.read_bytes() != first


def test_int8_mixed_keeps_in_float_what_the_onnx_variant_keeps_in_float(cls: dict[str, Any]) -> None:
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from controller.passes.int8 import CalibrationReader

    convs = [n for n in onnx.load(str(cls["fp32"])).graph.node if n.op_type == "Conv"]
    kept = convs[0]  # the first convolution, as the mixed-precision search often leaves it
    mixed = cls["dir"] / "mixed.onnx"
    quantize_static(str(cls["fp32"]), str(mixed), CalibrationReader(cls["calib"]), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=[kept.name])
    converter = converter_for("mnn")
    assert converter is not None
    out = cls["dir"] / "mixed.mnn"
    meta = converter.convert(ConvertInput("int8-mixed", "int8", mixed, cls["fp32"], cls["calib"], "cpu"), out)
    assert meta["kept_float"] == {kept.output[0]: "float in the variant's ONNX"}
    assert out.read_bytes() != convert(cls, "int8", "int8")[0].read_bytes()


def test_weights_too_small_for_mnn_int8_scales_stay_float(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from controller.convert.mnn import _unquantizable_ops

    def conv(name: str, peaks: list[float]) -> tuple[Any, Any]:
        w = np.stack([np.full((2, 1, 1), p, np.float32) for p in peaks])  # [out=len(peaks), in=2, 1, 1]
        return (helper.make_node("Conv", ["x", name + ".w"], [name + ".out"], name=name),
                numpy_helper.from_array(w, name + ".w"))

    small, dead, fine = conv("small", [5e-5, 0.3]), conv("dead", [1e-9, 0.3]), conv("fine", [0.01, 0.3])
    bias = numpy_helper.from_array(np.zeros((1, 2, 1, 1), np.float32), "b")
    nodes = [small[0], helper.make_node("Add", ["small.out", "b"], ["small.biased"]), dead[0], fine[0],
             helper.make_node("Concat", ["small.biased", "dead.out", "fine.out"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 4, 4])],
                              [small[1], dead[1], fine[1], bias])
    path = tmp_path / "convs.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    # MNN names a convolution after its bias Add once it fuses them: both names are listed.
    assert set(_unquantizable_ops(path)) == {"small.out", "small.biased"}


def test_weight_only_int8_says_it_computes_in_fp32(cls: dict[str, Any]) -> None:
    model, meta = convert(cls, "int8", "int8", {"mnn_int8": "weights"})
    assert (meta["weights"], meta["compute"], meta["quantization"]) == ("int8", "fp32", "weights only")
    assert model.stat().st_size < 0.5 * cls["fp32.mnn"].stat().st_size
    engine = get_engine("mnn")
    engine.load(str(model), {"model_precision": "int8"})  # the variant is int8, the compute is not
    assert engine.precision() == "fp32"
    engine.close()


def test_a_converted_model_runs_as_a_job(cls: dict[str, Any], tmp_path: Path) -> None:
    def sha(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    model = tmp_path / "model.mnn"
    model.write_bytes(cls["fp32.mnn"].read_bytes())
    dataset = tmp_path / "dataset.npz"
    dataset.write_bytes(cls["eval"].read_bytes())
    job = {
        "protocol": 1, "job_id": "mnn-cls", "engine": {"name": "mnn", "options": {"threads": 1, "model_precision": "fp32"}},
        "artifacts": {"model": {"file": model.name, "sha256": sha(model)},
                      "inputs": {"file": dataset.name, "sha256": sha(dataset)},
                      "dataset": {"file": dataset.name, "sha256": sha(dataset)}},
        "measure": {"warmup": 2, "min_iterations": 32, "min_seconds": 0.1, "max_seconds": 20.0,
                    "batch_sizes": [1, 2], "throughput_seconds": 0.1},
    }
    result = run_job(job, str(tmp_path))
    assert result["status"] == "ok", result["failure"]
    import MNN

    assert result["engine"] == {"name": "mnn", "version": MNN.version(), "precision": "fp32", "device": "CPU"}
    assert result["latency"]["n"] >= 32 and result["latency"]["p50"] > 0
    assert [row["batch"] for row in result["throughput"]] == [1, 2]
    assert all(row.get("items_per_s", 0) > 0 for row in result["throughput"]), result["throughput"]
    assert result["accuracy"]["metric"] == "accuracy"
    assert result["accuracy"]["value"] == pytest.approx(accuracy(cls["data"], cls["reference"]))


def test_a_conversion_failure_is_one_line_naming_the_model(cls: dict[str, Any]) -> None:
    import onnx
    from onnx import TensorProto, helper

    # A valid ONNX model with an operator MNNConvert does not know: the tool's own complaint.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Frobnicate", ["x"], ["y"], domain="edgefarm.test")], "g", [x], [y])
    unknown = cls["dir"] / "unknown-op.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                       helper.make_opsetid("edgefarm.test", 1)]), str(unknown))
    converter = converter_for("mnn")
    assert converter is not None
    with pytest.raises(ConversionError) as info:
        converter.convert(ConvertInput("fp32", "fp32", unknown, unknown, None, "cpu"), cls["dir"] / "unknown.mnn")
    message = str(info.value)
    assert "\n" not in message and message.startswith("MNNConvert failed on unknown-op.onnx:"), message
    assert "Frobnicate" in message, message

    broken = cls["dir"] / "broken.onnx"
    broken.write_bytes(cls["fp32"].read_bytes()[:5000])
    with pytest.raises(ConversionError) as info:
        converter.convert(ConvertInput("fp16", "fp16", broken, broken, None, "cpu"), cls["dir"] / "broken.mnn")
    message = str(info.value)
    assert "\n" not in message and "broken.onnx" in message, message
    with pytest.raises(ConversionError, match="'npu' is not one of cpu"):
        converter.convert(ConvertInput("fp32", "fp32", cls["fp32"], cls["fp32"], None, "npu"), cls["dir"] / "x.mnn")
    with pytest.raises(ConversionError, match="needs calibration samples"):
        converter.convert(ConvertInput("int8", "int8", cls["fp32"], cls["fp32"], None, "cpu"), cls["dir"] / "x.mnn")


def test_the_engine_refuses_what_it_cannot_do(cls: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    engine = get_engine("mnn")
    with pytest.raises(EngineError, match="reads .mnn files"):
        engine.load(str(cls["fp32"]), {})
    with pytest.raises(EngineError, match="precision 'bf16'"):
        engine.load(str(cls["fp32.mnn"]), {"precision": "bf16"})
    import MNN

    probe = MNN.Interpreter(str(cls["fp32.mnn"]))
    has_opencl = probe.getSessionInfo(probe.createSession({"backend": "OPENCL"}), 2) == 3
    if not has_opencl:  # MNN itself would quietly run on the CPU
        with pytest.raises(EngineError, match="no OPENCL backend"):
            engine.load(str(cls["fp32.mnn"]), {"target": "opencl"})

    import agent.engines.mnn as mnn_engine

    monkeypatch.setattr(mnn_engine, "_state", {})
    monkeypatch.setitem(sys.modules, "MNN", None)  # import MNN now raises ImportError
    with pytest.raises(EngineUnavailable, match="MNN cannot be imported"):
        mnn_engine.MnnEngine.version()


@pytest.mark.slow
@pytest.mark.parametrize("which, tolerance", [("rec", 1e-3), ("det", 1e-2)])
def test_rec_and_det_match_onnxruntime(which: str, tolerance: float, tmp_path: Path) -> None:
    files = build(which, tmp_path, samples=6, calibration=1)
    model, _ = convert(files, "fp32", "fp32")
    data = load_dataset(str(files["eval"]))
    reference = outputs("onnxruntime", files["fp32"], data, list(range(data.count)), {})
    mnn = outputs("mnn", model, data, list(range(data.count)), {"threads": 2})
    assert max(float(np.abs(m - r).max()) for m, r in zip(mnn, reference)) < tolerance
    assert accuracy(data, mnn) == accuracy(data, reference)
