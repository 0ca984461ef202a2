"""agent.metrics: hand-made cases, and the real fp32 PaddleOCR models on rendered data."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import onnxruntime as ort
import pytest

import agent.metrics as metrics
from agent.dataset import Dataset, load_dataset
from agent.metrics import components, ctc_greedy_decode, db_boxes, edit_distance, iou, match
from agent.tasks import evaluator_for
from controller.data import datasets
from tests.models import ocr_model

SAMPLES = 40
SEED = 0
# fp32 scores on these 40 samples (seed 0) are in the report; thresholds sit a little below.
MODELS = {
    "ocr-det": ("ch_PP-OCRv4_det_infer.onnx", (1, 3, 640, 640), 0.95),
    "ocr-rec": ("ch_PP-OCRv4_rec_infer.onnx", (1, 3, 48, 320), 0.85),
    "ocr-cls": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", (1, 3, 48, 192), 0.95),
}

Outputs = list  # one list of model outputs per sample


@pytest.fixture(scope="module")
def models() -> Path:
    return ocr_model("cls").parent


@pytest.fixture(scope="module")
def run(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Dataset, Outputs]]:
    """Render a kind's set, read it with the agent's reader, run the real fp32 model once."""
    cache: dict = {}

    def get(kind: str) -> tuple[Dataset, Outputs]:
        if kind not in cache:
            name, shape, _ = MODELS[kind]
            path = tmp_path_factory.mktemp(kind) / "data.npz"
            datasets.make_dataset(kind, {"x": (shape, "float32")}, SAMPLES, SEED, path, model_path=models / name)
            ds = load_dataset(str(path))
            session = ort.InferenceSession(str(models / name), providers=["CPUExecutionProvider"])
            cache[kind] = (ds, [session.run(None, ds.batch([i])) for i in range(ds.count)])
        return cache[kind]

    return get


def evaluate(ds: Dataset, outputs: Outputs, order=None) -> dict:
    """Feed sample ``order[i]``'s outputs as sample i's (the identity when order is None)."""
    ev = evaluator_for(ds)
    for i in range(ds.count):
        ev.add(i, outputs[i if order is None else order[i]])
    result = ev.result()
    json.dumps(result)  # the agent writes it into result.json: plain Python numbers only
    assert result["value"] == result["metrics"][result["metric"]] and result["samples"] == ds.count
    return result


def shuffled(n: int) -> list[int]:
    return np.random.default_rng(1).permutation(n).tolist()


# --- the module runs on boards ------------------------------------------------------------------


def test_metrics_is_python38_and_numpy_only() -> None:
    source = Path(metrics.__file__).read_text(encoding="utf-8")
    tree = ast.parse(source, feature_version=(3, 8))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "abc", "typing", "numpy"}


# --- hand-made cases ----------------------------------------------------------------------------


def test_ctc_greedy_decode() -> None:
    charset = ["a", "b", "c", " "]
    path = [0, 1, 1, 0, 1, 2, 2, 0, 0, 4, 3, 3, 0, 9]  # blank splits repeats; 9 is beyond the charset
    probs = np.eye(10)[path][None]  # [1, T, C] as the model gives it
    assert ctc_greedy_decode(probs, charset) == "aab c"
    assert ctc_greedy_decode(np.eye(10)[[0, 0, 0]], charset) == ""
    assert ctc_greedy_decode(np.eye(10)[[3, 3, 3]], charset) == "c"


@pytest.mark.parametrize("a,b,d", [("", "", 0), ("abc", "", 3), ("", "ab", 2), ("kitten", "sitting", 3),
                                   ("flaw", "lawn", 2), ("abc", "abc", 0), ("ab", "ba", 2)])
def test_edit_distance(a: str, b: str, d: int) -> None:
    assert edit_distance(a, b) == d == edit_distance(b, a)


def test_components_match_scipy_8_connectivity() -> None:
    from scipy import ndimage  # a controller dependency: an independent labeller to check against

    rng = np.random.default_rng(0)
    for density in (0.1, 0.3, 0.5, 0.6, 0.8):
        mask = rng.random((67, 91)) < density
        row, start, end, label = components(mask)
        ours = np.full(mask.shape, -1)
        for r, s, e, k in zip(row, start, end, label):
            ours[r, s:e] = k
        assert ((ours >= 0) == mask).all()
        ref, n = ndimage.label(mask, structure=np.ones((3, 3)))
        assert label.max() + 1 == n
        assert len(set(zip(ours[mask].tolist(), ref[mask].tolist()))) == n  # the same partition
    diagonal = np.eye(5, dtype=bool)
    assert components(diagonal)[3].max() == 0  # corner-touching pixels are one component
    assert components(np.zeros((4, 4), bool))[0].size == 0


def test_db_boxes_threshold_score_unclip_and_size() -> None:
    prob = np.zeros((200, 300))
    prob[100:120, 50:250] = 0.9  # text: 200 x 20
    prob[10:30, 10:60] = 0.5  # above thresh 0.3, but mean score 0.5 < box_thresh 0.6
    prob[160:162, 10:100] = 0.95  # 2 px high: smaller than min_size 3
    prob[180:200, 280:300] = 0.9  # at the border: the unclipped box is clipped to the map
    boxes = sorted(db_boxes(prob))
    assert len(boxes) == 2
    d = 200 * 20 * 1.5 / (2 * (200 + 20))
    assert boxes[0] == pytest.approx((50 - d, 100 - d, 250 + d, 120 + d))
    d = 20 * 20 * 1.5 / 80
    assert boxes[1] == pytest.approx((280 - d, 180 - d, 300, 200))
    assert db_boxes(np.zeros((64, 64))) == []


def test_iou_and_one_to_one_matching() -> None:
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0
    truth = [(0, 0, 100, 20), (0, 50, 100, 70)]
    assert match([(2, 1, 99, 21), (0, 0, 100, 20)], truth) == 1  # two boxes, one line: one match
    assert match([(0, 0, 100, 20), (0, 48, 100, 72)], truth) == 2
    assert match([(0, 0, 40, 20)], truth) == 0  # IoU 0.4 < 0.5
    assert match([], truth) == 0 and match(truth, []) == 0


def test_agreement_hand_made() -> None:
    rng = np.random.default_rng(0)
    ref_cls = rng.standard_normal((6, 1, 4)).astype(np.float32)
    ref_map = rng.standard_normal((6, 1, 3, 3)).astype(np.float32)
    ds = SimpleNamespace(task="agreement", params={"outputs": ["cls", "map"]},
                         labels={"reference:map": ref_map, "reference:cls": ref_cls})
    ev = evaluator_for(ds)
    for i in range(6):
        ev.add(i, [ref_cls[i], ref_map[i]])
    result = ev.result()
    assert result["value"] == 1.0 and result["metrics"]["max_abs_diff"] == 0.0
    assert result["metrics"]["outputs"]["cls"]["top1"] == 1.0
    assert result["metrics"]["outputs"]["map"]["cosine"] == pytest.approx(1.0)

    ev = evaluator_for(ds)
    for i in range(6):  # class scores reversed, map negated on half the samples, zeroed on one
        m = -ref_map[i] if i % 2 else ref_map[i]
        ev.add(i, [ref_cls[i][:, ::-1], np.zeros_like(m) if i == 0 else m])
    out = ev.result()["metrics"]
    assert out["outputs"]["map"]["cosine"] == pytest.approx((0 - 1 + 1 - 1 + 1 - 1) / 6)
    assert out["outputs"]["cls"]["top1"] == 0.0 and out["agreement"] == pytest.approx(-1 / 12)
    want = max(np.abs(ref_cls[..., ::-1] - ref_cls).max(), np.abs(ref_map[0]).max(), 2 * np.abs(ref_map[1::2]).max())
    assert out["max_abs_diff"] == pytest.approx(float(want))
    with pytest.raises(ValueError, match="reference has 2"):
        evaluator_for(ds).add(0, [ref_cls[0]])


def test_evaluator_for_refuses_what_it_cannot_score() -> None:
    with pytest.raises(ValueError, match="unknown task 'seg'; known: classification, detection"):
        evaluator_for(SimpleNamespace(task="seg", params={}, labels={}))
    with pytest.raises(ValueError, match="'text'"):
        evaluator_for(SimpleNamespace(task="rec", params={}, labels={"charset": np.array(["a"])}))
    ev = evaluator_for(SimpleNamespace(task="cls", params={}, labels={"label": np.array([0, 1])}))
    ev.add(0, [np.array([[0.9, 0.1]])])
    with pytest.raises(ValueError, match="twice"):
        ev.add(0, [np.array([[0.9, 0.1]])])


# --- real models on rendered data ---------------------------------------------------------------


def test_det_real_model(run) -> None:
    ds, outputs = run("ocr-det")
    result = evaluate(ds, outputs)
    m = result["metrics"]
    assert result["metric"] == "hmean" and m["hmean"] >= MODELS["ocr-det"][2], m
    assert m["precision"] >= 0.9 and m["recall"] >= 0.9 and m["ground_truth"] == len(ds.labels["boxes"])
    zeroed = [[np.zeros_like(o[0])] for o in outputs]
    m = evaluate(ds, zeroed)["metrics"]
    assert m["hmean"] == 0.0 and m["predicted"] == 0
    assert evaluate(ds, outputs, shuffled(ds.count))["value"] < 0.3


def test_rec_real_model(run) -> None:
    ds, outputs = run("ocr-rec")
    result = evaluate(ds, outputs)
    m = result["metrics"]
    assert result["metric"] == "exact_match" and m["exact_match"] >= MODELS["ocr-rec"][2], m
    assert m["char_accuracy"] >= 0.95
    m = evaluate(ds, outputs, shuffled(ds.count))["metrics"]
    assert m["exact_match"] < 0.1 and m["char_accuracy"] < 0.3


def test_cls_real_model(run) -> None:
    ds, outputs = run("ocr-cls")
    result = evaluate(ds, outputs)
    assert result["metric"] == "accuracy" and result["value"] >= MODELS["ocr-cls"][2], result
    flipped = [[o[0][:, ::-1]] for o in outputs]  # the model's answer for the other orientation
    assert evaluate(ds, flipped)["value"] <= 1 - MODELS["ocr-cls"][2]
    assert evaluate(ds, outputs, shuffled(ds.count))["value"] < 0.75


def test_seeded_real_model_agrees_with_itself(models: Path, tmp_path: Path) -> None:
    model = models / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    path = tmp_path / "seeded.npz"
    datasets.make_dataset("seeded", {"x": ((1, 3, 48, 192), "float32")}, 8, SEED, path, model_path=model)
    ds = load_dataset(str(path))
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    outputs = [session.run(None, ds.batch([i])) for i in range(ds.count)]
    result = evaluate(ds, outputs)
    assert result["value"] == 1.0 and result["metrics"]["max_abs_diff"] < 1e-5
    assert evaluate(ds, [[o[0][:, ::-1]] for o in outputs])["value"] == 0.0
