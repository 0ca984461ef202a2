"""The ncnn engine end to end on the real PaddleOCR cls model: pnnx conversion (fp32, fp16, and
int8 calibrated by EdgeFarm) on the controller, the .tar the board unpacks, NcnnEngine outputs
against ONNX Runtime on rendered text, a job run by the agent, and the ways a conversion fails."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ncnn")
pytest.importorskip("pnnx")

from agent.artifacts import unpack_model  # noqa: E402
from agent.dataset import Dataset, load_dataset  # noqa: E402
from agent.engines import EngineError, get_engine  # noqa: E402
from agent.job import run_job  # noqa: E402
from agent.tasks import evaluator_for  # noqa: E402
from controller.convert import ConversionError, ConvertInput, converter_for, ncnn_int8  # noqa: E402
from controller.convert import ncnn as ncnn_convert  # noqa: E402
from tests.models import ocr_model  # noqa: E402

CLS_SHAPE = (1, 3, 48, 192)
SAMPLES = 16


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ncnn")


@pytest.fixture(scope="module")
def cls_fp32(work: Path) -> Path:
    """The cls model as the project compiles it: prepared (batch 1 shape), then fused fp32."""
    from controller.build.source import prepare
    from controller.passes import PassInput, run_pass

    prepared = prepare(ocr_model("cls"), "ppocr-cls", {"x": list(CLS_SHAPE)}, work / "source.onnx")
    run_pass("fp32", PassInput(prepared.path, None, None), work / "fp32.onnx")
    return work / "fp32.onnx"


@pytest.fixture(scope="module")
def cls_data(work: Path) -> Path:
    """Rendered text lines, half of them upside down (labels known)."""
    from controller.data.datasets import make_dataset

    path = work / "cls.npz"
    make_dataset("ocr-cls", {"x": (CLS_SHAPE, "float32")}, SAMPLES, 0, path)
    return path


@pytest.fixture(scope="module")
def converted(work: Path, cls_fp32: Path) -> tuple[Path, dict[str, Any]]:
    out = work / "cls-fp32.tar"
    meta = converter_for("ncnn").convert(ConvertInput("fp32", "fp32", cls_fp32, cls_fp32, None, "cpu"), out)
    return out, meta


@pytest.fixture(scope="module")
def reference(cls_fp32: Path, cls_data: Path) -> list[np.ndarray]:
    """ONNX Runtime's outputs of the fused fp32 model, one per sample."""
    ort = get_engine("onnxruntime")
    ort.load(str(cls_fp32), {"threads": 1})
    data = load_dataset(str(cls_data))
    return [ort.run(data.batch([i]))[0] for i in range(data.count)]


def _outputs(engine: Any, data: Dataset) -> list[np.ndarray]:
    return [engine.run(data.batch([i]))[0] for i in range(data.count)]


def _engine(tar: Path, options: dict[str, Any]) -> Any:
    engine = get_engine("ncnn")
    engine.load(unpack_model(str(tar)), options)
    return engine


def test_the_converter_is_registered_for_ncnn() -> None:
    converter = converter_for("ncnn")
    assert type(converter).__name__ == "NcnnConverter" and converter.suffix == ".tar"
    assert converter.targets == ("cpu", "vulkan") and converter.default_target("aarch64") == "cpu"
    import importlib.metadata

    assert converter.tool_versions() == {"pnnx": importlib.metadata.version("pnnx"),
                                         "ncnn": importlib.metadata.version("ncnn")}


def test_the_tar_holds_param_first_then_bin_and_names(converted: tuple[Path, dict[str, Any]]) -> None:
    tar, meta = converted
    with tarfile.open(tar) as t:
        assert t.getnames() == ["model.param", "model.bin", "model.names.json"]
        names = json.loads(t.extractfile("model.names.json").read())  # type: ignore[union-attr]
        param = t.extractfile("model.param").read().decode()  # type: ignore[union-attr]
    assert param.splitlines()[0] == "7767517"
    assert names["inputs"] == [{"name": "x", "blob": "in0", "shape": list(CLS_SHAPE)}]
    assert names["outputs"] == [{"name": "save_infer_model/scale_0.tmp_1", "blob": "out0", "shape": [1, 2]}]
    assert meta["route"] == "pnnx" and meta["precision"] == "fp32" and meta["weights"] == "fp32"
    assert meta["inputs"] == {"x": "in0"} and meta["layers"] > 100


def test_conversion_is_deterministic(converted: tuple[Path, dict[str, Any]], cls_fp32: Path, tmp_path: Path) -> None:
    tar, _ = converted
    again = tmp_path / "again.tar"
    converter_for("ncnn").convert(ConvertInput("fp32", "fp32", cls_fp32, cls_fp32, None, "cpu"), again)
    assert hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(tar.read_bytes()).digest()


def test_fp32_matches_onnxruntime_on_rendered_text(converted: tuple[Path, dict[str, Any]], cls_data: Path,
                                                   reference: list[np.ndarray]) -> None:
    engine = _engine(converted[0], {"threads": 1, "model_precision": "fp32"})
    assert engine.input_names() == ["x"] and engine.input_shapes() == {"x": list(CLS_SHAPE)}
    assert (engine.precision(), engine.device()) == ("fp32", "CPU")
    outputs = _outputs(engine, load_dataset(str(cls_data)))
    assert [o.shape for o in outputs] == [r.shape for r in reference]
    # fp32 really: ncnn's default Option (fp16 storage on) gives differences of 1e-5 here.
    assert max(float(np.abs(o - r).max()) for o, r in zip(outputs, reference)) < 2e-6
    engine.close()
    engine.close()  # twice is fine


def test_fp16_is_ncnns_own_at_load(work: Path, cls_fp32: Path, cls_data: Path, reference: list[np.ndarray]) -> None:
    out = work / "cls-fp16.tar"
    # The fp16 ONNX variant is not read: a wrong path there proves it.
    meta = converter_for("ncnn").convert(
        ConvertInput("fp16", "fp16", work / "no-such-fp16.onnx", cls_fp32, None, "cpu"), out)
    assert meta["source"] == "fp32" and meta["runtime_fp16"] is True and meta["weights"] == "fp32"
    engine = _engine(out, {"threads": 1, "model_precision": "fp16"})
    probe = type(engine).probe()
    assert engine.precision() == ("fp16" if probe["fp16_storage"] else "fp32")
    outputs = _outputs(engine, load_dataset(str(cls_data)))
    worst = max(float(np.abs(o - r).max()) for o, r in zip(outputs, reference))
    assert worst < 1e-2
    if probe["fp16_storage"]:
        assert worst > 2e-6  # the fp16 switches changed what was computed
    # The same files with precision fp32 asked for compute in fp32.
    fp32 = _engine(out, {"threads": 1, "model_precision": "fp16", "precision": "fp32"})
    assert fp32.precision() == "fp32"


def test_the_batch_is_fixed_at_one(converted: tuple[Path, dict[str, Any]], cls_data: Path) -> None:
    engine = _engine(converted[0], {"threads": 1})
    with pytest.raises(EngineError, match=r"batch fixed at 1.*\[2, 3, 48, 192\]"):
        engine.run(load_dataset(str(cls_data)).batch([0, 1]))


def test_vulkan_without_a_device_is_refused(converted: tuple[Path, dict[str, Any]]) -> None:
    if get_engine("ncnn").probe()["vulkan_devices"] > 0:
        pytest.skip("this machine has a Vulkan device")
    with pytest.raises(EngineError, match="no Vulkan device"):
        _engine(converted[0], {"target": "vulkan"})


def test_a_param_without_its_names_file_is_refused(converted: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    param = Path(unpack_model(str(converted[0])))
    bare = tmp_path / "model.param"
    shutil.copyfile(param, bare)
    with pytest.raises(EngineError, match="model.names.json"):
        get_engine("ncnn").load(str(bare), {})


def test_a_job_runs_the_tar_through_the_agent(converted: tuple[Path, dict[str, Any]], cls_data: Path,
                                              reference: list[np.ndarray], tmp_path: Path) -> None:
    from controller.data.datasets import write_subset

    shutil.copyfile(converted[0], tmp_path / "model.tar")
    shutil.copyfile(cls_data, tmp_path / "dataset.npz")
    write_subset(cls_data, 4, tmp_path / "inputs.npz")

    def artifact(name: str) -> dict[str, str]:
        return {"file": name, "sha256": hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()}

    job = {
        "protocol": 1, "job_id": "ncnn-cls",
        "engine": {"name": "ncnn", "options": {"threads": 1, "model_precision": "fp32"}},
        "artifacts": {"model": artifact("model.tar"), "inputs": artifact("inputs.npz"),
                      "dataset": artifact("dataset.npz")},
        "measure": {"warmup": 2, "min_iterations": 16, "min_seconds": 0.1, "max_seconds": 10.0,
                    "batch_sizes": [1, 4], "throughput_seconds": 0.1},
    }
    result = run_job(job, str(tmp_path))
    assert result["status"] == "ok", result["failure"]
    assert result["engine"]["name"] == "ncnn" and result["engine"]["precision"] == "fp32"
    assert result["engine"]["device"] == "CPU" and result["latency"]["n"] >= 16
    ok, fixed = result["throughput"]
    assert ok["batch"] == 1 and ok["items_per_s"] > 0
    assert fixed == {"batch": 4, "error": "the model's batch dimension is fixed at 1"}
    # The agent's accuracy equals what ONNX Runtime's outputs score on the same samples.
    data = load_dataset(str(cls_data))
    evaluator = evaluator_for(data)
    for i, ref in enumerate(reference):
        evaluator.add(i, [ref])
    assert result["accuracy"]["value"] == evaluator.result()["value"]
    assert result["accuracy"]["samples"] == SAMPLES


@pytest.fixture(scope="module")
def int8(work: Path, cls_fp32: Path, cls_data: Path) -> tuple[Path, dict[str, Any]]:
    out = work / "cls-int8.tar"
    meta = converter_for("ncnn").convert(
        ConvertInput("int8", "int8", cls_fp32, cls_fp32, cls_data, "cpu", {"calibration": "minmax"}), out)
    return out, meta


def _members(tar: Path) -> dict[str, bytes]:
    with tarfile.open(tar) as t:
        return {name: t.extractfile(name).read() for name in t.getnames()}  # type: ignore[union-attr]


def test_int8_writes_int8_weights_and_scales_for_every_convolution(
        converted: tuple[Path, dict[str, Any]], int8: tuple[Path, dict[str, Any]]) -> None:
    fp32, q = _members(converted[0]), _members(int8[0])
    meta = int8[1]
    _, layers = ncnn_int8.read_param_text(fp32["model.param"].decode())
    _, quantized = ncnn_int8.read_param_text(q["model.param"].decode())
    assert [(a.type, a.name) for a in layers] == [(b.type, b.name) for b in quantized]
    convolutions = [b for b in quantized if b.type == "Convolution"]
    assert convolutions and all(b.params.get(8) == "1" for b in convolutions)
    assert all(8 not in b.params for b in quantized if b.type != "Convolution")  # the default: convolutions only
    assert meta["int8_layers"] == len(convolutions) and meta["kept_float"] == {}
    assert (meta["precision"], meta["calibration"], meta["calibration_samples"]) == ("int8", "minmax", SAMPLES)
    assert json.loads(q["model.names.json"])["precision"] == "int8"
    # Each convolution's float32 weights became int8 (padded to 4 bytes), followed by one float
    # scale per output channel and one for the input; every other byte is as it was.
    saved = sum(3 * b.int(6) - (-b.int(6) % 4) - 4 * b.int(0) - 4 for b in convolutions)
    assert len(fp32["model.bin"]) - len(q["model.bin"]) == saved


def test_int8_runs_in_ncnn_and_keeps_the_classifier(int8: tuple[Path, dict[str, Any]], cls_data: Path,
                                                    reference: list[np.ndarray],
                                                    converted: tuple[Path, dict[str, Any]]) -> None:
    engine = _engine(int8[0], {"threads": 1})
    assert engine.precision() == "int8"
    outputs = _outputs(engine, load_dataset(str(cls_data)))
    worst = max(float(np.abs(o - r).max()) for o, r in zip(outputs, reference))
    assert 1e-4 < worst < 0.2  # int8 changed what was computed, and not by much
    agree = sum(int(o.argmax() == r.argmax()) for o, r in zip(outputs, reference))
    assert agree >= SAMPLES - 1
    # Its int8 weights cannot be computed in float, nor a float model in int8.
    with pytest.raises(EngineError, match=r"is int8: it cannot compute in fp32"):
        _engine(int8[0], {"precision": "fp32"})
    with pytest.raises(EngineError, match=r"is fp32: it cannot compute in int8"):
        _engine(converted[0], {"model_precision": "int8"})


def test_kl_clips_a_lone_outlier() -> None:
    hist = np.zeros(ncnn_int8.HISTOGRAM_BINS)
    rng = np.random.default_rng(0)
    bulk = np.abs(rng.normal(0, 50, 100_000)).astype(int)
    np.add.at(hist, np.minimum(bulk, 2000), 1)
    hist[-1] += 1  # one value at the top of the range
    threshold = ncnn_int8.kl_threshold(hist, 1.0)
    assert 100 < threshold < 400  # about the bulk's 2..8 sigma, far below the outlier at 2048


def test_int8_mixed_keeps_the_variants_float_layers_float(work: Path, cls_fp32: Path, cls_data: Path) -> None:
    from controller.passes.int8 import Int8Options, quantize

    mixed = work / "mixed.onnx"
    # The first convolution and the first SE block's squeeze (ncnn makes it an InnerProduct) stay float.
    quantize(cls_fp32, mixed, cls_data, Int8Options(calibration="minmax"), ["Conv@0", "Conv@3"])
    meta = converter_for("ncnn").convert(ConvertInput(
        "int8-mixed", "int8", mixed, cls_fp32, cls_data, "cpu",
        {"calibration": "minmax", "ncnn_layers": ["Convolution", "InnerProduct"]}), work / "mixed.tar")
    assert meta["float_onnx_nodes"] == 2
    assert sorted(meta["kept_float"].values()) == [f"float in the int8-mixed ONNX variant (node {n})"
                                                   for n in ("Conv@0", "Conv@3")]
    _, layers = ncnn_int8.read_param_text(_members(work / "mixed.tar")["model.param"].decode())
    kinds = {b.name: b.type for b in layers}
    assert sorted(kinds[n] for n in meta["kept_float"]) == ["Convolution", "InnerProduct"]
    assert all((8 in b.params) == (b.name not in meta["kept_float"])
               for b in layers if b.type in ("Convolution", "InnerProduct"))


def test_int8_refuses_what_it_cannot_read(converted: tuple[Path, dict[str, Any]], cls_fp32: Path,
                                          cls_data: Path, tmp_path: Path) -> None:
    members = _members(converted[0])
    _, layers = ncnn_int8.read_param_text(members["model.param"].decode())
    with pytest.raises(ConversionError, match=r"^ncnn int8: the \.bin has 8 bytes no known layer reads"):
        ncnn_int8.split_weights(layers, members["model.bin"] + bytes(8))
    with pytest.raises(ConversionError, match=r"ends inside layer"):
        ncnn_int8.split_weights(layers, members["model.bin"][:-8])
    for options, message in (({"calibration": "kl"}, "calibration 'kl' is not one of minmax, entropy, percentile"),
                             ({"ncnn_layers": ["Gemm"]}, r"ncnn_layers \['Gemm'\] must name some of")):
        with pytest.raises(ConversionError, match=message) as err:
            converter_for("ncnn").convert(ConvertInput("int8", "int8", cls_fp32, cls_fp32, cls_data, "cpu", options),
                                          tmp_path / "int8.tar")
        assert "\n" not in str(err.value)
    with pytest.raises(ConversionError, match="needs calibration samples"):
        converter_for("ncnn").convert(ConvertInput("int8", "int8", cls_fp32, cls_fp32, None, "cpu"),
                                      tmp_path / "int8.tar")
    assert not (tmp_path / "int8.tar").exists()


def test_an_op_ncnn_lacks_fails_conversion(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])
    graph = helper.make_graph([helper.make_node("Hardmax", ["x"], ["h"], axis=-1),
                               helper.make_node("Relu", ["h"], ["y"])], "hardmax", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "hardmax.onnx"))
    src = tmp_path / "hardmax.onnx"
    with pytest.raises(ConversionError) as err:
        converter_for("ncnn").convert(ConvertInput("fp32", "fp32", src, src, None, "cpu"), tmp_path / "out.tar")
    assert "\n" not in str(err.value) and "ncnn has no layer for Hardmax" in str(err.value)


def test_pnnx_failure_and_unreadable_models_are_one_line(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx model")
    with pytest.raises(ConversionError, match=r"^pnnx failed \(exit code \d+\): \S") as err:
        ncnn_convert._run([str(ncnn_convert.pnnx_executable()), str(garbage), "inputshape=[1,3,8,8]"], tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(ConversionError, match="cannot read garbage.onnx as ONNX") as err:
        converter_for("ncnn").convert(ConvertInput("fp32", "fp32", garbage, garbage, None, "cpu"), tmp_path / "o.tar")
    assert "\n" not in str(err.value)
    with pytest.raises(ConversionError, match="ncnn target 'opencl' is not one of cpu, vulkan"):
        converter_for("ncnn").convert(ConvertInput("fp32", "fp32", garbage, garbage, None, "opencl"), tmp_path / "o.tar")
