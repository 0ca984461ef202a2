"""OpenVINO IR conversion on the real PaddleOCR cls model: what the IR keeps, and that the agent
runs the packed IR like the ONNX file it came from."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from agent.artifacts import unpack_model
from agent.dataset import load_dataset
from agent.engines.openvino import OpenVinoEngine
from agent.job import run_job
from controller.build.source import prepare
from controller.convert import ConversionError, ConvertInput
from controller.convert.openvino import OpenVinoConverter
from controller.data.datasets import make_dataset
from controller.passes import PassInput, run_pass
from tests.models import ocr_model

SHAPE = {"x": ((1, 3, 48, 192), "float32")}
PRECISION = {"fp32": "fp32", "fp16": "fp16", "int8": "int8"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The cls model's fp32, fp16 and int8 variants, each converted to IR, and labelled data."""
    d = tmp_path_factory.mktemp("openvino-ir")
    src = prepare(ocr_model("cls"), "cls", {"x": [1, 3, 48, 192]}, d / "source.onnx").path
    run_pass("fp32", PassInput(src, None, None), d / "fp32.onnx")
    run_pass("fp16", PassInput(src, d / "fp32.onnx", None), d / "fp16.onnx")
    make_dataset("ocr-cls", SHAPE, 8, 1_000_003, d / "calibration.npz")
    run_pass("int8", PassInput(src, d / "fp32.onnx", d / "calibration.npz"), d / "int8.onnx", {"calibration": "minmax"})
    make_dataset("ocr-cls", SHAPE, 48, 0, d / "eval.npz")
    paths = {"dir": d, "eval": d / "eval.npz"}
    converter = OpenVinoConverter()
    for variant in PRECISION:
        out = d / f"{variant}.tar"
        meta = converter.convert(ConvertInput(variant, PRECISION[variant], d / f"{variant}.onnx", d / "fp32.onnx",
                                              None, converter.default_target("aarch64")), out)
        (d / f"{variant}.json").write_text(json.dumps(meta))
        paths[variant], paths[f"{variant}.onnx"] = out, d / f"{variant}.onnx"
    return paths


def meta(cls: dict[str, Path], variant: str) -> dict:
    return json.loads((cls["dir"] / f"{variant}.json").read_text())


def load(path: Path) -> OpenVinoEngine:
    engine = OpenVinoEngine()
    engine.load(str(path), {"threads": 1, "precision": "fp32"})
    return engine


def test_the_ir_keeps_each_variants_weights(cls: dict[str, Path]) -> None:
    fp32, fp16, int8 = meta(cls, "fp32"), meta(cls, "fp16"), meta(cls, "int8")
    # save_model would halve fp32 weights by default: they must stay fp32.
    assert set(fp32["weights"]) == {"f32"} and fp32["weights"]["f32"] > 50
    assert fp32["compress_to_fp16"] is False and fp32["fake_quantize"] == 0
    assert fp16["weights"].get("f16", 0) > 50 and "f32" not in fp16["weights"]
    assert int8["weights"].get("i8", 0) > 30 and int8["fake_quantize"] > 30
    assert fp32["frontend"] == fp16["frontend"] == "convert_model" and int8["frontend"] == "read_model"
    assert fp16["files"]["model.bin"] < 0.6 * fp32["files"]["model.bin"]
    for m in (fp32, fp16, int8):
        assert m["inputs"] == ["x"] and m["target"] == "any"
        assert m["outputs"] == [o.name for o in onnx.load(str(cls["fp32.onnx"])).graph.output]


def test_the_tar_holds_the_xml_first_and_its_bin_beside_it(cls: dict[str, Path], tmp_path: Path) -> None:
    packed = tmp_path / "model.tar"
    shutil.copyfile(cls["fp32"], packed)
    first = Path(unpack_model(str(packed)))
    assert first.name == "model.xml" and (first.parent / "model.bin").is_file()
    assert sorted(p.name for p in first.parent.iterdir()) == ["model.bin", "model.xml"]


@pytest.mark.parametrize("variant", list(PRECISION))
def test_the_ir_gives_the_outputs_of_the_onnx_it_came_from(cls: dict[str, Path], tmp_path: Path, variant: str) -> None:
    packed = tmp_path / f"{variant}.tar"
    shutil.copyfile(cls[variant], packed)
    ir, direct = load(Path(unpack_model(str(packed)))), load(cls[f"{variant}.onnx"])
    try:
        assert ir.input_names() == direct.input_names() == ["x"]
        assert ir.input_shapes() == direct.input_shapes()
        data = load_dataset(str(cls["eval"]))
        for i in range(8):
            got, want = ir.run(data.batch([i])), direct.run(data.batch([i]))
            assert len(got) == len(want) == 1
            # The same graph either way; int8 may round a few values one step apart.
            atol = 2e-2 if variant == "int8" else 1e-5
            np.testing.assert_allclose(got[0], want[0], rtol=0, atol=atol)
            assert got[0].argmax(-1).tolist() == want[0].argmax(-1).tolist()
    finally:
        ir.close()
        direct.close()


def _job(workdir: Path, model: Path, data: Path, name: str) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    for path in (model, data):
        shutil.copyfile(path, workdir / path.name)
    return {
        "protocol": 1, "job_id": name,
        "engine": {"name": "openvino", "options": {"threads": 1, "precision": "fp32", "model_precision": "fp32"}},
        "artifacts": {"model": {"file": model.name, "sha256": sha256(model)},
                      "inputs": {"file": data.name, "sha256": sha256(data)},
                      "dataset": {"file": data.name, "sha256": sha256(data)}},
        "measure": {"warmup": 2, "min_iterations": 64, "min_seconds": 0.2, "max_seconds": 20.0,
                    "batch_sizes": [1, 4], "throughput_seconds": 0.2},
    }


def test_a_job_runs_the_packed_ir_like_the_onnx_file(cls: dict[str, Path], tmp_path: Path) -> None:
    ir = run_job(_job(tmp_path / "ir", cls["fp32"], cls["eval"], "ir"), str(tmp_path / "ir"))
    onnx_job = run_job(_job(tmp_path / "onnx", cls["fp32.onnx"], cls["eval"], "onnx"), str(tmp_path / "onnx"))
    assert ir["status"] == "ok", ir["failure"]
    assert onnx_job["status"] == "ok", onnx_job["failure"]
    assert (tmp_path / "ir" / "fp32.tar.d" / "model.xml").is_file()
    assert ir["engine"]["precision"] == "fp32" and ir["engine"]["device"] == "CPU"
    assert ir["accuracy"]["samples"] == 48
    assert ir["accuracy"]["value"] == onnx_job["accuracy"]["value"] > 0.8
    assert ir["latency"]["n"] >= 64 and ir["phases"]["load_ms"] > 0
    assert [row["batch"] for row in ir["throughput"]] == [1, 4]  # the batch stays dynamic in the IR
    assert all("error" not in row for row in ir["throughput"])


def test_the_same_onnx_gives_the_same_bytes(cls: dict[str, Path], tmp_path: Path) -> None:
    # OpenVINO numbers the nodes it makes from a process-wide counter: only a fresh process per
    # conversion gives equal files, and the board's cache works by hash.
    converter = OpenVinoConverter()
    again = tmp_path / "again.tar"
    converter.convert(ConvertInput("fp32", "fp32", cls["fp32.onnx"], cls["fp32.onnx"], None, "any"), again)
    assert sha256(again) == sha256(cls["fp32"])


@pytest.mark.parametrize("target", ["GPU", "CPU", "NPU"])
def test_a_device_as_target_is_refused_with_the_option_to_use(cls: dict[str, Path], tmp_path: Path, target: str) -> None:
    with pytest.raises(ConversionError, match=r"device-independent.*engine option 'device'"):
        OpenVinoConverter().convert(
            ConvertInput("fp32", "fp32", cls["fp32.onnx"], cls["fp32.onnx"], None, target), tmp_path / "x.tar")
    assert not (tmp_path / "x.tar").exists()


def test_an_op_openvino_does_not_know_fails_with_its_name(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"], domain="com.example")], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)])
    onnx.save(model, str(tmp_path / "unknown.onnx"))
    with pytest.raises(ConversionError) as err:
        OpenVinoConverter().convert(ConvertInput("fp32", "fp32", tmp_path / "unknown.onnx", tmp_path / "unknown.onnx",
                                                 None, "any"), tmp_path / "x.tar")
    message = str(err.value)
    assert "\n" not in message and "com.example.NoSuchOp" in message and "OpConversionFailure" in message


def test_the_registry_finds_the_converter_without_importing_it() -> None:
    import subprocess
    import sys

    code = ("import sys; from controller.convert import converted_engines, converter_for; "
            "assert 'controller.convert.openvino' not in sys.modules; assert 'openvino' in converted_engines(); "
            "c = converter_for('openvino'); print(type(c).__name__, c.suffix, c.default_target('x86_64'))")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["OpenVinoConverter", ".tar", "any"]


@pytest.mark.slow
def test_the_recognizers_int8_ir_computes_what_its_onnx_computes(tmp_path: Path) -> None:
    """convert_model's offline transformations made OpenVINO run this QDQ model differently
    (exact match 0.57 -> 0.22 on these samples); the int8 IR must match the ONNX file."""
    src = prepare(ocr_model("rec"), "rec", {"x": [1, 3, 48, 320]}, tmp_path / "source.onnx").path
    run_pass("fp32", PassInput(src, None, None), tmp_path / "fp32.onnx")
    shape = {"x": ((1, 3, 48, 320), "float32")}
    make_dataset("ocr-rec", shape, 8, 1_000_003, tmp_path / "calibration.npz", model_path=src)
    make_dataset("ocr-rec", shape, 40, 0, tmp_path / "eval.npz", model_path=src)
    int8 = tmp_path / "int8.onnx"
    run_pass("int8", PassInput(src, tmp_path / "fp32.onnx", tmp_path / "calibration.npz"), int8, {"calibration": "minmax"})
    packed = tmp_path / "int8.tar"
    OpenVinoConverter().convert(ConvertInput("int8", "int8", int8, tmp_path / "fp32.onnx", tmp_path / "calibration.npz",
                                             "any"), packed)
    ir, direct = load(Path(unpack_model(str(packed)))), load(int8)
    try:
        data = load_dataset(str(tmp_path / "eval.npz"))
        agree = [np.mean(ir.run(data.batch([i]))[0].argmax(-1) == direct.run(data.batch([i]))[0].argmax(-1))
                 for i in range(data.count)]
    finally:
        ir.close()
        direct.close()
    assert np.mean(agree) >= 0.99, np.mean(agree)
