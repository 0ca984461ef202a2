"""Paddle Lite: the controller's converter (ONNX -> x2paddle -> opt -> .nb) and the agent's
engine, on the real PaddleOCR models, checked against ONNX Runtime on rendered samples.

The engine runs where Paddle Lite installs (the Paddle tool interpreter, Python 3.10), in a
subprocess, as a board would run the agent; the tests skip when that interpreter is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from controller.convert import ConversionError, ConvertInput, converter_for
from controller.convert.paddlelite import sanitize_names
from controller.workspace import paddle_python
from tests.agent.conftest import cls_model_path, sha256

REPO = Path(__file__).resolve().parents[2]
MODELS = {  # name -> (file in rapidocr_onnxruntime/models, input shape, dataset kind)
    "cls": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", [1, 3, 48, 192], "ocr-cls"),
    "rec": ("ch_PP-OCRv4_rec_infer.onnx", [1, 3, 48, 320], "ocr-rec"),
    "det": ("ch_PP-OCRv4_det_infer.onnx", [1, 3, 640, 640], "ocr-det"),
}
SAMPLES = 8


@pytest.fixture(scope="module")
def paddle_tool() -> Path:
    python = paddle_python()
    if not python.is_file():
        pytest.skip(f"the Paddle tool interpreter {python} is missing (scripts/setup.sh makes .venv-paddle)")
    return python


def _run_in_paddle(python: Path, code: str, *args: str, timeout: float = 300.0) -> str:
    """Run ``code`` in the Paddle interpreter with the repository importable, as the agent is on a board."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([str(python), "-c", code, *args], cwd=str(REPO), env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


_ENGINE_RUN = """
import json, sys
import numpy as np
from agent.engines import get_engine
model, inputs, out, threads = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
engine = get_engine("paddlelite")
engine.load(model, {"threads": int(threads), "model_precision": "fp32"})
with np.load(inputs) as data:
    feeds = {k: data[k] for k in data.files}
names = engine.input_names()
count = len(feeds[names[0]])
outs = [engine.run({n: feeds[n][i:i + 1] for n in names}) for i in range(count)]
np.savez(out, **{"out%d" % k: np.concatenate([o[k] for o in outs]) for k in range(len(outs[0]))})
print(json.dumps({"names": names, "shapes": engine.input_shapes(), "precision": engine.precision(),
                  "device": engine.device(), "version": engine.version()}))
"""


def _engine_outputs(python: Path, nb: Path, feeds: dict[str, np.ndarray], work: Path,
                    threads: int = 1) -> tuple[list[np.ndarray], dict[str, Any]]:
    np.savez(work / "feeds.npz", **feeds)
    facts = json.loads(_run_in_paddle(python, _ENGINE_RUN, str(nb), str(work / "feeds.npz"),
                                      str(work / "outs.npz"), str(threads)).strip().splitlines()[-1])
    with np.load(work / "outs.npz") as data:
        return [data["out%d" % k] for k in range(len(data.files))], facts


def _ort_outputs(model: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    count = len(next(iter(feeds.values())))
    runs = [session.run(None, {k: v[i:i + 1] for k, v in feeds.items()}) for i in range(count)]
    return [np.concatenate([r[k] for r in runs]) for k in range(len(runs[0]))]


def _unpack(tar: Path) -> Path:
    """The converted artifact unpacked as the agent does; returns the .nb (the first member)."""
    target = tar.with_suffix(".d")
    with tarfile.open(tar) as archive:
        names = archive.getnames()
        archive.extractall(target)
    assert names[0] == "model.nb" and names[1:] == ["model.nb.json"]
    return target / names[0]


def _prepared(name: str, work: Path) -> tuple[Path, Path]:
    """The model as a run makes it: shapes fixed (batch left dynamic), fp32 fused; and rendered samples."""
    from controller.build.source import prepare
    from controller.data.datasets import make_dataset
    from controller.passes import PassInput, run_pass

    file, shape, kind = MODELS[name]
    source = prepare(cls_model_path().parent / file, name, {"x": shape}, work / f"{name}.src.onnx")
    fp32 = work / f"{name}.fp32.onnx"
    run_pass("fp32", PassInput(source.path, None, None), fp32)
    dataset = work / f"{name}.npz"
    make_dataset(kind, {"x": (tuple(shape), "float32")}, SAMPLES, 0, dataset, model_path=source.path)
    return fp32, dataset


def _feeds(dataset: Path) -> dict[str, np.ndarray]:
    from agent.dataset import load_dataset

    data = load_dataset(str(dataset))
    batch = data.batch(list(range(data.count)))
    return {n: batch[n] for n in data.input_names}


def _convert(model: Path, out: Path, precision: str = "fp32", target: str = "x86",
             calibration: Path | None = None, variant: str | None = None,
             options: dict[str, Any] | None = None) -> dict[str, Any]:
    converter = converter_for("paddlelite")
    assert converter is not None
    return converter.convert(ConvertInput(variant or precision, precision, model, model, calibration, target,
                                          options or {}), out)


@pytest.fixture(scope="module")
def cls_converted(paddle_tool: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("paddle-cls")
    fp32, dataset = _prepared("cls", work)
    tar = work / "cls.tar"
    meta = _convert(fp32, tar)
    return {"work": work, "fp32": fp32, "dataset": dataset, "tar": tar, "meta": meta, "nb": _unpack(tar)}


# --- name sanitizing (controller only) -----------------------------------------------------------

def _model_with_bad_names(path: Path) -> Path:
    """x -> Conv('w@0') -> 'conv@1' -> Relu -> 'out.b/1'; Sigmoid(conv@1) -> 'out@a', outputs in that order."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w@0")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "conv.b/0")
    nodes = [
        helper.make_node("Conv", ["x", "w@0", "conv.b/0"], ["conv@1"], name="Conv@0", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv@1"], ["out.b/1"], name="relu.0"),
        helper.make_node("Sigmoid", ["conv@1"], ["out@a"], name=""),
    ]
    graph = helper.make_graph(
        nodes, "bad-names",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("out.b/1", TensorProto.FLOAT, ["batch", 4, 8, 8]),
         helper.make_tensor_value_info("out@a", TensorProto.FLOAT, ["batch", 4, 8, 8])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_sanitize_names_makes_every_name_safe_and_keeps_inputs_and_output_order(tmp_path: Path) -> None:
    source = _model_with_bad_names(tmp_path / "bad.onnx")
    model = onnx.load(str(source))
    renamed = sanitize_names(model)
    onnx.checker.check_model(model)
    names = {v for n in model.graph.node for v in (*n.input, *n.output, n.name)}
    names |= {t.name for t in model.graph.initializer}
    assert all(n.replace("_", "").isalnum() and not n[0].isdigit() for n in names), names
    assert [i.name for i in model.graph.input] == ["x"] and "x" not in renamed
    assert [o.name for o in model.graph.output] == [renamed["out.b/1"], renamed["out@a"]]
    assert len(set(renamed.values())) == len(renamed)  # no two names merged
    clean = tmp_path / "clean.onnx"
    onnx.save(model, str(clean))
    x = {"x": np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    for before, after in zip(_ort_outputs(source, x), _ort_outputs(clean, x)):
        np.testing.assert_array_equal(before, after)


def test_sanitized_names_never_collide_with_existing_ones() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a.b"]), helper.make_node("Neg", ["a.b"], ["a_b"]),
         helper.make_node("Add", ["a.b", "a_b"], ["y"])],
        "collide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)
    renamed = sanitize_names(model)
    assert renamed == {"a.b": "a_b_1"}
    assert [list(n.input) for n in model.graph.node] == [["x"], ["a_b_1"], ["a_b_1", "a_b"]]


# --- converter + engine on real models ----------------------------------------------------------

def test_cls_converts_and_paddle_lite_matches_onnxruntime(paddle_tool: Path, cls_converted: dict[str, Any]) -> None:
    meta = cls_converted["meta"]
    assert meta["target"] == "x86" and meta["precision"] == "fp32"
    assert meta["inputs"] == [{"name": "x", "shape": [1, 3, 48, 192]}]
    assert meta["kernels"].get("x86/fp32", 0) > 50  # the convolutions really run in x86 kernels
    assert meta["renamed_values"] > 0  # the cls model's '@' names reached x2paddle renamed
    feeds = _feeds(cls_converted["dataset"])
    want = _ort_outputs(cls_converted["fp32"], feeds)
    got, facts = _engine_outputs(paddle_tool, cls_converted["nb"], feeds, cls_converted["work"])
    assert facts["names"] == ["x"] and facts["shapes"] == {"x": [1, 3, 48, 192]}
    assert facts["precision"] == "fp32" and facts["device"] == "CPU"
    assert facts["version"] == converter_for("paddlelite").tool_versions()["paddlelite"]
    assert len(got) == len(want) == 1 and got[0].shape == want[0].shape == (SAMPLES, 2)
    assert float(np.abs(got[0] - want[0]).max()) < 1e-4
    assert (got[0].argmax(1) == want[0].argmax(1)).all()


def test_bad_names_and_output_order_survive_conversion(paddle_tool: Path, tmp_path: Path) -> None:
    source = _model_with_bad_names(tmp_path / "bad.onnx")
    meta = _convert(source, tmp_path / "bad.tar")
    assert meta["onnx_outputs"] == ["out.b/1", "out@a"] and meta["inputs"][0]["shape"] == [1, 3, 8, 8]
    x = {"x": np.random.default_rng(2).standard_normal((3, 3, 8, 8)).astype(np.float32)}
    want = _ort_outputs(source, x)
    got, _ = _engine_outputs(paddle_tool, _unpack(tmp_path / "bad.tar"), x, tmp_path)
    assert want[0].min() >= 0.0 and want[1].min() > 0.0  # relu, then sigmoid: told apart by order
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-5)


def test_a_wrong_batch_is_refused_instead_of_aborting_paddle_lite(paddle_tool: Path, cls_converted: dict[str, Any]) -> None:
    code = """
import sys, numpy as np
from agent.engines import get_engine
engine = get_engine("paddlelite")
engine.load(sys.argv[1], {})
try:
    engine.run({"x": np.zeros((4, 3, 48, 192), np.float32)})
except Exception as exc:
    print(type(exc).__name__, exc)
"""
    out = _run_in_paddle(paddle_tool, code, str(cls_converted["nb"]))
    assert "EngineError paddlelite model input 'x' is fixed at 1x3x48x192, got 4x3x48x192" in out


# --- failures -----------------------------------------------------------------------------------

def test_an_op_x2paddle_cannot_map_is_a_one_line_conversion_error(paddle_tool: Path, tmp_path: Path) -> None:
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "scale")
    zero = numpy_helper.from_array(np.array(0, np.uint8), "zero")
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"])],
        "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], initializer=[scale, zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "qdq.onnx"))
    with pytest.raises(ConversionError) as info:
        _convert(tmp_path / "qdq.onnx", tmp_path / "qdq.tar")
    message = str(info.value)
    assert "\n" not in message
    assert "x2paddle cannot convert ONNX op(s) DequantizeLinear, QuantizeLinear" in message
    assert not (tmp_path / "qdq.tar").exists()


def test_precisions_paddle_lite_cannot_make_here_are_refused(paddle_tool: Path, cls_converted: dict[str, Any],
                                                             tmp_path: Path) -> None:
    fp32 = cls_converted["fp32"]
    with pytest.raises(ConversionError, match="no fp16 kernels for target 'x86'"):
        _convert(fp32, tmp_path / "a.tar", precision="fp16")
    with pytest.raises(ConversionError, match="x86 int8 kernels crash"):
        _convert(fp32, tmp_path / "b.tar", precision="int8", calibration=cls_converted["dataset"])
    with pytest.raises(ConversionError, match="'int8-mixed' has no Paddle Lite counterpart"):
        _convert(fp32, tmp_path / "c.tar", precision="int8", target="arm", variant="int8-mixed")
    with pytest.raises(ConversionError, match="target 'cuda' is not one of x86, arm, opencl"):
        _convert(fp32, tmp_path / "d.tar", target="cuda")


@pytest.mark.slow
def test_fp16_for_arm_is_refused_when_opt_ignores_it(paddle_tool: Path, cls_converted: dict[str, Any],
                                                     tmp_path: Path) -> None:
    # The pip wheel's opt accepts enable_fp16 and writes fp32 ARM kernels: that .nb is no fp16 model.
    with pytest.raises(ConversionError, match=r"made no fp16 kernel for valid_targets 'arm' \(kernels: arm/fp32"):
        _convert(cls_converted["fp32"], tmp_path / "fp16.tar", precision="fp16", target="arm")


def test_a_missing_tool_interpreter_says_what_to_set_up(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGEFARM_PADDLE_PYTHON", str(tmp_path / "no-python"))
    converter = converter_for("paddlelite")
    assert converter is not None
    with pytest.raises(ConversionError, match=r"Paddle tool interpreter not found .*no-python.*run scripts/setup.sh"):
        converter.tool_versions()


def test_default_targets_follow_the_board_arch() -> None:
    converter = converter_for("paddlelite")
    assert converter is not None
    assert converter.suffix == ".tar"
    assert [converter.default_target(a) for a in ("x86_64", "aarch64", "armv7l", "arm64")] == ["x86", "arm", "arm", "arm"]


# --- the agent's job runner ---------------------------------------------------------------------

def test_a_paddle_lite_job_runs_through_run_job(paddle_tool: Path, cls_converted: dict[str, Any], tmp_path: Path) -> None:
    from controller.data.datasets import write_subset

    job_dir = tmp_path / "job"
    job_dir.mkdir()
    model = job_dir / "cls-fp32-paddlelite.tar"
    model.write_bytes(cls_converted["tar"].read_bytes())
    inputs = job_dir / "inputs.npz"
    write_subset(cls_converted["dataset"], 4, inputs)
    dataset = job_dir / "dataset.npz"
    dataset.write_bytes(cls_converted["dataset"].read_bytes())
    job = {
        "protocol": 1, "job_id": "test-paddlelite",
        "engine": {"name": "paddlelite", "options": {"threads": 1, "model_precision": "fp32"}},
        "artifacts": {name: {"file": path.name, "sha256": sha256(path)}
                      for name, path in (("model", model), ("inputs", inputs), ("dataset", dataset))},
        "measure": {"warmup": 2, "min_iterations": 16, "min_seconds": 0.2, "max_seconds": 20.0,
                    "batch_sizes": [1, 4], "throughput_seconds": 0.2},
    }
    (job_dir / "job.json").write_text(json.dumps(job))
    code = """
import json, sys
from agent.job import run_job
print(json.dumps(run_job(json.load(open(sys.argv[1])), sys.argv[2])))
"""
    result = json.loads(_run_in_paddle(paddle_tool, code, str(job_dir / "job.json"), str(job_dir)).strip().splitlines()[-1])
    assert result["status"] == "ok", result["failure"]
    assert result["engine"] == {"name": "paddlelite", "version": cls_converted["meta"]["tools"]["paddlelite"],
                                "precision": "fp32", "device": "CPU"}
    assert result["latency"]["n"] >= 16 and result["latency"]["p50"] > 0
    rows = {row["batch"]: row for row in result["throughput"]}
    assert rows[1]["items_per_s"] > 0
    assert rows[4] == {"batch": 4, "error": "the model's batch dimension is fixed at 1"}
    # Rendered lines, half upside down: the same accuracy as ONNX Runtime's on the same samples.
    from agent.dataset import load_dataset

    labels = load_dataset(str(dataset)).labels["label"].reshape(-1)
    ort_accuracy = float((_ort_outputs(cls_converted["fp32"], _feeds(dataset))[0].argmax(1) == labels).mean())
    assert result["accuracy"]["metric"] == "accuracy" and result["accuracy"]["samples"] == SAMPLES
    assert result["accuracy"]["value"] == pytest.approx(ort_accuracy)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rec", "det"])
def test_rec_and_det_match_onnxruntime(paddle_tool: Path, tmp_path: Path, name: str) -> None:
    fp32, dataset = _prepared(name, tmp_path)
    meta = _convert(fp32, tmp_path / f"{name}.tar")
    assert meta["inputs"] == [{"name": "x", "shape": MODELS[name][1]}]
    feeds = _feeds(dataset)
    want = _ort_outputs(fp32, feeds)
    got, _ = _engine_outputs(paddle_tool, _unpack(tmp_path / f"{name}.tar"), feeds, tmp_path)
    assert got[0].shape == want[0].shape
    assert float(np.abs(got[0] - want[0]).max()) < 1e-3
    if name == "rec":  # the decoded characters: argmax per time step
        assert (got[0].argmax(-1) == want[0].argmax(-1)).mean() > 0.999
    else:  # the text mask the boxes come from
        assert ((got[0] > 0.3) == (want[0] > 0.3)).mean() > 0.9999


@pytest.mark.slow
def test_int8_for_arm_is_paddle_post_training_quantization(paddle_tool: Path, cls_converted: dict[str, Any],
                                                           tmp_path: Path) -> None:
    meta = _convert(cls_converted["fp32"], tmp_path / "int8.tar", precision="int8", target="arm",
                    calibration=cls_converted["dataset"], options={"calibration": "entropy"})
    assert meta["precision"] == "int8" and meta["source"] == "fp32" and meta["target"] == "arm"
    assert meta["ptq_algo"] == "hist"
    assert meta["kernels"].get("arm/int8", 0) >= 53  # the 42 convolutions, 11 depthwise ones and more
    sidecar = json.loads(_unpack(tmp_path / "int8.tar").with_name("model.nb.json").read_text())
    assert sidecar["precision"] == "int8" and sidecar["inputs"] == [{"name": "x", "shape": [1, 3, 48, 192]}]


def test_a_paddle_crash_report_gives_the_line_before_it() -> None:
    from controller.convert.paddlelite import tool_message

    output = "\n".join([
        "Exporting inference model from python code ('/tmp/x2paddle_code.py')... ",
        "Wrong target 'bogus_npu' found, please check the command flag 'valid_targets'",
        "--------------------------------------", "C++ Traceback (most recent call last):",
        "--------------------------------------", "0   paddle::lite_api::OptBase::SetValidPlaces(std::string const&)",
        "Error Message Summary:", "FatalError: `Process abort signal` is detected by the operating system.",
    ])
    assert tool_message(output, -6) == ("Wrong target 'bogus_npu' found, please check the command flag "
                                        "'valid_targets' (killed by signal 6)")
    assert tool_message("noise\nerror: x2paddle cannot convert ONNX op(s) Foo\n", 2) == "x2paddle cannot convert ONNX op(s) Foo"
    assert tool_message("[F 11/24 reshape_op.cc:270 ValidateShape] Check failed: 2!==8\nSignal\n", -6) == \
        "Check failed: 2!==8 (killed by signal 6)"
