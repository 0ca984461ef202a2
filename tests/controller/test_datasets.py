"""controller.data.datasets: real rendering with Debian's DejaVu fonts, real PaddleOCR models."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from agent.dataset import load_dataset
from agent.tasks import evaluator_for
from controller.data import datasets, ocr_render
from tests.models import ocr_model

DET = {"x": ((1, 3, 640, 640), "float32")}
REC = {"x": ((1, 3, 48, 320), "float32")}
CLS = {"x": ((1, 3, 48, 192), "float32")}


@pytest.fixture(scope="module")
def models() -> Path:
    return ocr_model("cls").parent


@pytest.fixture(scope="module")
def rec_model(models: Path) -> Path:
    return models / "ch_PP-OCRv4_rec_infer.onnx"


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _meta(path: Path) -> dict:
    return json.loads(str(_arrays(path)["__meta__"]))


def test_kinds_map_to_registered_tasks() -> None:
    from agent.tasks import task_names

    assert set(datasets.KINDS) == set(datasets.TASK_OF_KIND)
    assert set(datasets.TASK_OF_KIND.values()) <= set(task_names())
    assert isinstance(datasets.DATASET_VERSION, int)


def test_det_layout_and_boxes(tmp_path: Path) -> None:
    meta = datasets.make_dataset("ocr-det", DET, 12, 3, tmp_path / "det.npz")
    arrays = _arrays(tmp_path / "det.npz")
    assert meta == _meta(tmp_path / "det.npz")
    assert meta["task"] == "ocr-det" and meta["count"] == 12
    decl = meta["inputs"]["x"]["preprocess"]
    assert decl["mean"] == [0.485, 0.456, 0.406] and decl["resize"] == [640, 640] and decl["color"] == "bgr"
    assert meta["params"]["thresh"] == 0.3 and meta["params"]["box_thresh"] == 0.6
    x, boxes = arrays["input:x"], arrays["boxes"]
    assert x.dtype == np.uint8 and x.shape == (12, 3, 640, 640)
    assert boxes.dtype == np.float32 and boxes.shape[1] == 5
    per_image = np.bincount(boxes[:, 0].astype(int), minlength=12)
    assert per_image.min() >= 1 and per_image.max() <= 4 and len(set(per_image.tolist())) > 1
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= 640).all() and (boxes[:, 4] <= 640).all()
    assert (boxes[:, 3] > boxes[:, 1]).all() and (boxes[:, 4] > boxes[:, 2]).all()
    for i in range(12):  # boxes of one image never overlap
        b = boxes[boxes[:, 0] == i, 1:]
        for j in range(len(b)):
            for k in range(j + 1, len(b)):
                assert min(b[j, 2], b[k, 2]) <= max(b[j, 0], b[k, 0]) or min(b[j, 3], b[k, 3]) <= max(b[j, 1], b[k, 1])
    # The ink is inside the boxes: outside them the page is background or a non-text shape.
    for i in range(12):
        img = x[i].astype(int).sum(axis=0)
        page = np.median(img)
        for b in boxes[boxes[:, 0] == i, 1:].astype(int):
            assert img[b[1] : b[3], b[0] : b[2]].min() < page - 90  # dark ink on a light page


def test_rec_layout_and_charset(tmp_path: Path, rec_model: Path) -> None:
    meta = datasets.make_dataset("ocr-rec", REC, 30, 1, tmp_path / "rec.npz", model_path=rec_model)
    arrays = _arrays(tmp_path / "rec.npz")
    assert meta["task"] == "ocr-rec" and arrays["input:x"].shape == (30, 3, 48, 320)
    charset = arrays["charset"].tolist()
    assert len(charset) == 6624 and charset[-1] == " "  # model chars + PaddleOCR's space class
    texts = arrays["text"].tolist()
    assert all(3 <= len(t) <= 12 and set(t) <= set(ocr_render.ALPHABET) for t in texts)
    assert len(set(texts)) == 30 and len({len(t) for t in texts}) > 4
    # Right of the text the line is padded with the value PaddleOCR pads with (0 normalized).
    short = int(np.argmin([len(t) for t in texts]))
    assert (arrays["input:x"][short, :, :, -8:] == ocr_render.LINE_PAD).all()


def test_cls_half_rotated(tmp_path: Path) -> None:
    datasets.make_dataset("ocr-cls", CLS, 21, 0, tmp_path / "cls.npz")
    label = _arrays(tmp_path / "cls.npz")["label"]
    assert label.dtype == np.int64 and label.tolist() == [i % 2 for i in range(21)]


@pytest.mark.parametrize("kind,inputs", [("ocr-det", DET), ("ocr-rec", REC), ("ocr-cls", CLS)])
def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path, rec_model: Path, kind: str, inputs) -> None:
    paths = [tmp_path / f"{n}.npz" for n in range(3)]
    for path, seed in zip(paths, (7, 7, 8)):
        datasets.make_dataset(kind, inputs, 6, seed, path, model_path=rec_model)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    a, c = _arrays(paths[0]), _arrays(paths[2])
    assert not np.array_equal(a["input:x"], c["input:x"])
    # Sample i has its own generator: a small set is the prefix of a bigger one.
    datasets.make_dataset(kind, inputs, 9, 7, tmp_path / "big.npz", model_path=rec_model)
    assert np.array_equal(_arrays(tmp_path / "big.npz")["input:x"][:6], a["input:x"])


def test_bytes_do_not_depend_on_the_clock(tmp_path: Path) -> None:
    datasets.make_dataset("ocr-cls", CLS, 2, 0, tmp_path / "a.npz")
    time.sleep(2.1)  # zip timestamps have a 2 s resolution
    datasets.make_dataset("ocr-cls", CLS, 2, 0, tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_images_are_stored_bgr() -> None:
    rgb = np.array([[[10.0, 20.0, 30.0]]])  # one pixel, HWC RGB
    assert ocr_render._to_model(rgb)[:, 0, 0].tolist() == [30, 20, 10]  # PaddleOCR reads cv2's BGR


def test_det_200_samples_stay_small(tmp_path: Path) -> None:
    datasets.make_dataset("ocr-det", DET, 200, 0, tmp_path / "det.npz")
    size = (tmp_path / "det.npz").stat().st_size
    assert size < 10e6, f"{size / 1e6:.1f} MB"  # brief: well under 30 MB
    assert load_dataset(str(tmp_path / "det.npz")).count == 200


def test_write_subset_keeps_inputs_only(tmp_path: Path, rec_model: Path) -> None:
    datasets.make_dataset("ocr-rec", REC, 10, 2, tmp_path / "rec.npz", model_path=rec_model)
    datasets.write_subset(tmp_path / "rec.npz", 4, tmp_path / "inputs.npz")
    full, sub = _arrays(tmp_path / "rec.npz"), _arrays(tmp_path / "inputs.npz")
    assert set(sub) == {"__meta__", "input:x"}
    assert np.array_equal(sub["input:x"], full["input:x"][:4])
    meta = _meta(tmp_path / "inputs.npz")
    assert meta["count"] == 4 and meta["inputs"] == _meta(tmp_path / "rec.npz")["inputs"]
    reader = load_dataset(str(tmp_path / "inputs.npz"), require_task=False)
    assert reader.batch([0, 3])["x"].shape == (2, 3, 48, 320) and reader.labels == {}
    with pytest.raises(ValueError, match="11 samples"):
        datasets.write_subset(tmp_path / "rec.npz", 11, tmp_path / "bad.npz")


def _tiny_model(path: Path) -> Path:
    """a [1,2,4] float, ids [1,3] int64 -> logits [1,2,5], pooled [1,5], total [1,1]."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 5], np.linspace(-1, 1, 20).tolist())
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("MatMul", ["a", "w"], ["logits"]),
        helper.make_node("ReduceMean", ["logits"], ["pooled"], axes=[1], keepdims=0),
        helper.make_node("Cast", ["ids"], ["idsf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["idsf", "axes"], ["total"], keepdims=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 2, 4]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 3])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("logits", "pooled", "total")],
        [w, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_seeded_reference_outputs(tmp_path: Path) -> None:
    model = _tiny_model(tmp_path / "tiny.onnx")
    inputs = {"a": ((1, 2, 4), "float32"), "ids": ((1, 3), "int64")}
    meta = datasets.make_dataset("seeded", inputs, 16, 5, tmp_path / "s.npz", model_path=model)
    assert meta["task"] == "raw" and meta["params"]["outputs"] == ["logits", "pooled", "total"]
    arrays = _arrays(tmp_path / "s.npz")
    a, ids = arrays["input:a"], arrays["input:ids"]
    assert a.dtype == np.float32 and a.shape == (16, 2, 4) and abs(a.mean()) < 0.5 and 0.5 < a.std() < 1.5
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 10
    assert arrays["reference:logits"].shape == (16, 1, 2, 5)
    assert arrays["reference:total"].shape == (16, 1, 1)
    np.testing.assert_allclose(arrays["reference:total"][:, 0, 0], ids.sum(axis=1))
    np.testing.assert_allclose(arrays["reference:logits"][:, 0], a @ np.linspace(-1, 1, 20).reshape(4, 5), rtol=1e-5)

    # The reference agrees 1.0 with the model run again through the agent's reader ...
    ds = load_dataset(str(tmp_path / "s.npz"))
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    ev = evaluator_for(ds)
    for i in range(ds.count):
        ev.add(i, session.run(None, ds.batch([i])))
    assert ev.result()["value"] == pytest.approx(1.0)
    # ... and not with outputs of the wrong samples.
    ev = evaluator_for(ds)
    for i in range(ds.count):
        ev.add(i, session.run(None, ds.batch([(i + 1) % ds.count])))
    assert ev.result()["value"] < 0.8


def test_seeded_float16_inputs_are_what_the_model_gets(tmp_path: Path) -> None:
    model = _tiny_model(tmp_path / "tiny.onnx")
    inputs = {"a": ((1, 2, 4), "float16"), "ids": ((1, 3), "int64")}
    datasets.make_dataset("seeded", inputs, 4, 0, tmp_path / "s.npz", model_path=model)
    a = _arrays(tmp_path / "s.npz")["input:a"]
    assert a.dtype == np.float32 and np.array_equal(a, a.astype(np.float16).astype(np.float32))


def test_errors_say_why(tmp_path: Path, rec_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "x.npz"
    with pytest.raises(ValueError, match="unknown dataset kind 'ocr-table'"):
        datasets.make_dataset("ocr-table", DET, 4, 0, out)
    with pytest.raises(ValueError, match="4-D float input"):
        datasets.make_dataset("ocr-det", {"x": ((1, 1, 640, 640), "float32")}, 4, 0, out)
    with pytest.raises(ValueError, match="4-D float input"):
        datasets.make_dataset("ocr-det", {"x": ((1, 3, 640, 640), "int64")}, 4, 0, out)
    with pytest.raises(ValueError, match="4-D float input"):
        datasets.make_dataset("ocr-cls", {"x": ((1, 48, 192), "float32")}, 4, 0, out)
    with pytest.raises(ValueError, match="one image input"):
        datasets.make_dataset("ocr-det", {**DET, "y": ((1, 3, 640, 640), "float32")}, 4, 0, out)
    with pytest.raises(ValueError, match="height >= 128"):
        datasets.make_dataset("ocr-det", {"x": ((1, 3, 64, 640), "float32")}, 4, 0, out)
    with pytest.raises(ValueError, match="model_path"):
        datasets.make_dataset("ocr-rec", REC, 4, 0, out)
    with pytest.raises(ValueError, match="no 'character' metadata"):
        datasets.make_dataset("ocr-rec", REC, 4, 0, out, model_path=rec_model.with_name("ch_ppocr_mobile_v2.0_cls_infer.onnx"))
    with pytest.raises(ValueError, match="do not match"):
        datasets.make_dataset("seeded", {"y": ((1, 3), "float32")}, 4, 0, out, model_path=_tiny_model(tmp_path / "t.onnx"))
    with pytest.raises(ValueError, match="at least 1 sample"):
        datasets.make_dataset("ocr-cls", CLS, 0, 0, out)
    monkeypatch.setattr(ocr_render, "FONT_DIR", tmp_path / "no-fonts")
    with pytest.raises(ValueError, match="fonts-dejavu-core"):
        datasets.make_dataset("ocr-cls", CLS, 4, 0, out)
    assert not out.exists()
