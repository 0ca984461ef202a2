"""The deployment runtime on real models and a real engine: bundle folders written here by hand
(manifest, artifacts, the runtime zipapp), images rendered with known content, and the results
checked against that content: the orientation classifier, ddddocr's character detector and the
PaddleOCR pipeline; the zipapp's command line and its HTTP server as a user runs them; edited
bundles and unmet requirements refused in one line."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.runtime.bundle import Bundle, BundleError, bundle_id
from agent.runtime.golden import compare, iou
from agent.runtime.inputs import InputError
from agent.runtime.requirements import parse_version, satisfies
from controller.boards.agent_bundle import runtime_bytes
from controller.data import composed
from controller.data.datasets import DET_PARAMS, _charset
from controller.data.ocr_render import ALPHABET
from tests.models import character_detector, ocr_model, orientation_model

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
LINE = {"pad": 128, "color": "bgr", "scale": 1 / 255, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
        "layout": "nchw", "dtype": "float32"}
# Letters whose capital is their small letter drawn bigger (J descends like j in DejaVu Sans): no
# reader tells them apart on a lone line.
SAME_SHAPE = set("cCjJkKoOpPsSuUvVwWxXzZ")
OCR_ALPHABET = "".join(c for c in ALPHABET if c not in SAME_SHAPE)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ort_range() -> dict[str, str]:
    import onnxruntime

    version = onnxruntime.__version__
    major, minor = version.split(".")[:2]
    return {"measured": version, "min": f"{major}.{minor}", "below": f"{major}.{int(minor) + 1}"}


def write_bundle(out: Path, models: list[dict[str, Any]], pipeline: str | None = None,
                 golden: dict[str, bytes] | None = None, engine: dict[str, str] | None = None,
                 extra: dict[str, bytes] | None = None) -> Path:
    """A bundle folder as the contract lays it out: artifacts, bundle.pyz, golden inputs, ``extra``
    files (a task module), and a manifest whose files and bundle_id are right. Golden outputs are
    computed by the runtime itself."""
    out.mkdir(parents=True)
    (out / "bundle.pyz").write_bytes(runtime_bytes())
    for rel, data in (extra or {}).items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    entries = []
    for m in models:
        source = Path(m["path"])
        digest = _sha(source)
        rel = f"models/{m['name']}/{digest[:16]}{source.suffix}"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, out / rel)
        entries.append({
            "name": m["name"], "task": m["task"], "task_params": m.get("task_params", {}), "engine": "onnxruntime",
            "engine_version": _ort_range()["measured"], "variant": "fp32", "label": "fp32", "precision": "fp32",
            "options": {}, "artifact": {"file": rel, "sha256": digest, "size_bytes": source.stat().st_size},
            "inputs": [], "preprocess": m.get("preprocess"),
            "measured": {"board": "local", "run_id": 1, "job_id": 1, "p50_ms": 1.0, "p90_ms": 1.0,
                         "accuracy_metric": None, "accuracy": None, "e2e_p50_ms": None}})
    names = []
    for name, data in (golden or {}).items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
        names.append(name)
    manifest: dict[str, Any] = {
        "format": 1, "chip": "test-chip", "edgefarm_version": "test", "pipeline": pipeline,
        "requirements": {"python": ">=3.8", "numpy": ">=1.17", "image_decoder": "Pillow",
                         "engines": {"onnxruntime": engine or _ort_range()}},
        "models": entries, "golden": {"file": "golden.json", "inputs": names},
        "smoke": {"latency_factor": 3.0, "rounds": 2}}
    if golden:
        staged = dict(manifest, files={n: _sha(out / n) for n in names}, bundle_id="")
        with Bundle(str(out), staged) as runner:
            expected = {n: runner.predict([str(out / n)])[0] for n in names}
        (out / "golden.json").write_text(json.dumps({"outputs": expected}, indent=1, sort_keys=True))
    manifest["files"] = {p.relative_to(out).as_posix(): _sha(p)
                         for p in sorted(out.rglob("*")) if p.is_file() and p.name != "manifest.json"}
    manifest["bundle_id"] = bundle_id(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return out


def _png(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _orientation_model() -> dict[str, Any]:
    return {"name": "orientation", "path": orientation_model(), "task": "classification",
            "task_params": {"classes": ["0", "90", "180", "270"], "top_k": 4},
            "preprocess": {"resize_short": 256, "crop": [224, 224], "interpolation": "lanczos", "color": "bgr",
                           **IMAGENET}}


def _ocr_models() -> list[dict[str, Any]]:
    rec = ocr_model("rec")
    return [
        {"name": "ppocr-det", "path": ocr_model("det"), "task": "ocr-det", "task_params": dict(DET_PARAMS),
         "preprocess": {"resize": [640, 640], "color": "bgr", "scale": 1 / 255, "layout": "nchw", "dtype": "float32",
                        **IMAGENET}},
        {"name": "ppocr-cls", "path": ocr_model("cls"), "task": "ocr-cls", "task_params": {},
         "preprocess": dict(LINE, line=[192, 48])},
        {"name": "ppocr-rec", "path": rec, "task": "ocr-rec", "task_params": {"charset": _charset(rec).tolist()},
         "preprocess": dict(LINE, line=[320, 48])},
    ]


def render_page(seed: int) -> tuple[bytes, list[str], list[list[float]], int]:
    """An 800x600 page of 7 lines with known texts and boxes, in reading order: two share a row
    (left, then right), one is upside down (the direction classifier must turn it)."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    font = ImageFont.truetype(FONT, 32)
    paper, ink = (236, 233, 226), (25, 25, 25)
    img = Image.new("RGB", (800, 600), paper)
    draw = ImageDraw.Draw(img)
    # The right one of the shared row sits a little higher: only row grouping reads it second.
    places = [(40, 40), (40, 120), (460, 113), (60, 200), (40, 280), (40, 360), (80, 440)]
    flipped = 5
    texts, boxes = [], []
    for k, (x, y) in enumerate(places):
        text = "".join(rng.choice(list(OCR_ALPHABET), int(rng.integers(5, 10))))
        left, top, right, bottom = font.getbbox(text)
        if k == flipped:  # drawn on a tile turned half a turn: the ink box turns about its centre
            tile = Image.new("RGB", (right + 8, bottom + 8), paper)
            ImageDraw.Draw(tile).text((4, 4), text, fill=ink, font=font)
            img.paste(tile.rotate(180), (x, y))
            box = [x + 4, y + 4, x + 4 + right - left, y + 4 + bottom - top]
        else:
            draw.text((x, y), text, fill=ink, font=font)
            box = [x + left, y + top, x + right, y + bottom]
        texts.append(text)
        boxes.append([float(v) for v in box])
    return _png(img), texts, boxes, flipped


# --- bundles, built once ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    page, _, _, _ = render_page(1)
    return {
        "orientation": write_bundle(root / "orientation", [_orientation_model()]),
        "characters": write_bundle(root / "characters", [{
            "name": "characters", "path": character_detector(), "task": "detection",
            "task_params": {"decoder": "yolo", "strides": [8, 16, 32], "classes": ["character"],
                            "input_size": [416, 416], "score": 0.25, "iou": 0.45},
            "preprocess": {"letterbox": [416, 416], "color": "bgr", "scale": 1, "mean": [0, 0, 0], "std": [1, 1, 1]}}]),
        "ocr": write_bundle(root / "ocr", _ocr_models(), pipeline="ocr", golden={"golden/0.png": page}),
    }


@pytest.fixture(scope="module")
def ocr(bundles: dict[str, Path]) -> Any:
    with Bundle.open(bundles["ocr"]) as b:
        b.load()
        yield b


def _copy(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / bundle.name))


# --- (a) classification ----------------------------------------------------------------------------

def test_the_orientation_classifier_names_each_rotation_of_a_page(bundles: dict[str, Path]) -> None:
    with Bundle.open(bundles["orientation"]) as b:
        assert b.check() == []
        for seed in (0, 1):
            upright = composed.page(np.random.default_rng(seed))
            angles = composed.ORIENTATION_LABELS
            results = b.predict([_png(upright.rotate(-int(a), expand=True)) for a in angles])
            assert [r["top"][0]["label"] for r in results] == angles
            for r in results:
                assert abs(sum(t["score"] for t in r["top"]) - 1.0) < 1e-3  # all four classes, probabilities
                assert set(r["timing_ms"]) >= {"decode", "preprocess", "infer", "postprocess", "total"}
                stages = sum(r["timing_ms"][k] for k in ("decode", "preprocess", "infer", "postprocess"))
                assert r["timing_ms"]["total"] == pytest.approx(stages, abs=0.01) and r["timing_ms"]["infer"] > 0


# --- (g) batching ----------------------------------------------------------------------------------

def test_images_batched_through_a_dynamic_batch_give_what_they_give_one_at_a_time(bundles: dict[str, Path]) -> None:
    pages = [_png(composed.page(np.random.default_rng(s)).rotate(-90 * s, expand=True)) for s in range(3)]
    with Bundle.open(bundles["orientation"]) as b:
        b.load()
        model = b._models[0]  # type: ignore[index]
        assert model.dynamic_batch
        calls: list[tuple[int, ...]] = []
        run = model.engine.run

        def counted(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            calls.append(next(iter(feeds.values())).shape)
            return run(feeds)

        model.engine.run = counted
        together = b.predict(pages)
        assert [c[0] for c in calls] == [3]  # one engine call for the three images
        calls.clear()
        alone = [b.predict([p])[0] for p in pages]
        assert [c[0] for c in calls] == [1, 1, 1]
    for t, a in zip(together, alone):
        assert [x["label"] for x in t["top"]] == [x["label"] for x in a["top"]]
        assert np.allclose([x["score"] for x in t["top"]], [x["score"] for x in a["top"]], atol=1e-4)


# --- (b) detection ---------------------------------------------------------------------------------

def test_the_character_detector_finds_each_character_in_original_pixels(bundles: dict[str, Path]) -> None:
    with Bundle.open(bundles["characters"]) as b:
        assert not b._models and b.check() == []
        for seed in range(3):
            img, truth, _text = composed.characters_image(np.random.default_rng(seed))
            (result,) = b.predict([_png(img)])
            boxes = [o["box"] for o in result["objects"]]
            assert len(boxes) == len(truth)
            assert {o["label"] for o in result["objects"]} == {"character"}
            for x, y, w, h in truth:  # the image is not 416 square: only a right map back lands here
                assert max(iou([x, y, x + w, y + h], box) for box in boxes) >= 0.5, (seed, [x, y, w, h], boxes)


# --- (c) the OCR pipeline --------------------------------------------------------------------------

def test_the_ocr_pipeline_reads_a_rendered_page_in_reading_order(ocr: Bundle) -> None:
    for seed in (2, 3):
        page, texts, boxes, flipped = render_page(seed)
        (result,) = ocr.predict([page])
        read = [line["text"] for line in result["lines"]]
        exact = [read.index(t) for t in texts if t in read]
        assert len(exact) >= len(texts) - 1, (texts, read)
        assert exact == sorted(exact), (texts, read)  # reading order: rows down, then left to right
        assert texts[flipped] in read, (texts[flipped], read)  # read only once turned the right way up
        for line in result["lines"]:
            if line["text"] in texts:
                truth = boxes[texts.index(line["text"])]
                xs, ys = [p[0] for p in line["box"]], [p[1] for p in line["box"]]
                assert len(line["box"]) == 4 and iou(truth, [min(xs), min(ys), max(xs), max(ys)]) >= 0.5
            assert 0.5 <= line["score"] <= 1.0
        timing = result["timing_ms"]
        assert set(timing["models"]) == {"ppocr-det", "ppocr-cls", "ppocr-rec"}
        assert timing["infer"] == pytest.approx(sum(m["infer"] for m in timing["models"].values()), rel=1e-3)


def test_an_ocr_detector_alone_gives_four_corner_boxes_on_the_page(tmp_path: Path) -> None:
    det = _ocr_models()[0]
    page, texts, truth, _ = render_page(4)
    with Bundle.open(write_bundle(tmp_path / "det", [det])) as b:
        (result,) = b.predict([page])
    boxes = [[min(p[0] for p in c), min(p[1] for p in c), max(p[0] for p in c), max(p[1] for p in c)]
             for c in result["boxes"]]
    assert len(boxes) == len(texts)
    for t in truth:  # the page is 800x600, the detector's input 640x640: boxes mapped back
        assert max(iou(t, b) for b in boxes) >= 0.5


# --- (d) the zipapp's command line and server ------------------------------------------------------

def _pyz(bundle: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    # Run from elsewhere with a clean path: the zipapp must carry all the code it needs.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, str(bundle / "bundle.pyz"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=str(bundle.parent), env=env)


def test_predict_from_the_zipapp_reads_the_page_and_refuses_a_bad_image(bundles: dict[str, Path], tmp_path: Path,
                                                                          ocr: Bundle) -> None:
    page, texts, _, _ = render_page(5)
    (tmp_path / "page.png").write_bytes(page)
    (tmp_path / "notes.png").write_text("not an image")
    done = _pyz(bundles["ocr"], "predict", str(tmp_path / "page.png"), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert [ln["text"] for ln in result["lines"]] == [ln["text"] for ln in ocr.predict([page])[0]["lines"]]
    assert sum(t in [ln["text"] for ln in result["lines"]] for t in texts) >= len(texts) - 1
    text = _pyz(bundles["ocr"], "predict", str(tmp_path / "page.png"))
    assert text.returncode == 0 and text.stdout.count("\n") == 1 and texts[0] in text.stdout
    for bad, says in (("notes.png", "not an image"), ("missing.png", "no such file")):
        done = _pyz(bundles["ocr"], "predict", str(tmp_path / bad))
        assert done.returncode == 2
        assert done.stderr.count("\n") == 1 and bad in done.stderr and says in done.stderr
        assert "Traceback" not in done.stderr


def test_serve_answers_a_real_http_client_and_stops_on_sigterm(bundles: dict[str, Path], ocr: Bundle) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen([sys.executable, str(bundles["ocr"] / "bundle.pyz"), "serve", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.fullmatch(r"serving bundle ([0-9a-f]{16}) on (http://127\.0\.0\.1:\d+)\n", line)
        assert m, line
        url = m.group(2)
        with urllib.request.urlopen(url + "/healthz", timeout=30) as r:
            health = json.loads(r.read())
        assert health == {"status": "ok", "bundle_id": m.group(1), "models": ["ppocr-det", "ppocr-cls", "ppocr-rec"]}
        page, texts, _, _ = render_page(6)
        request = urllib.request.Request(url + "/predict", data=page, method="POST")
        with urllib.request.urlopen(request, timeout=60) as r:
            result = json.loads(r.read())
        assert [ln["text"] for ln in result["lines"]] == [ln["text"] for ln in ocr.predict([page])[0]["lines"]]
        assert result["timing_ms"]["total"] > 0
        with pytest.raises(urllib.error.HTTPError) as bad:
            urllib.request.urlopen(urllib.request.Request(url + "/predict", data=b"GIF? no", method="POST"), timeout=30)
        assert bad.value.code == 400 and "not an image" in json.loads(bad.value.read())["error"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_smoke_runs_the_golden_inputs_and_matches_the_golden_outputs(bundles: dict[str, Path]) -> None:
    done = _pyz(bundles["ocr"], "smoke", "--rounds", "2")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    manifest = json.loads((bundles["ocr"] / "manifest.json").read_text())
    golden = json.loads((bundles["ocr"] / "golden.json").read_text())
    assert report["bundle_id"] == manifest["bundle_id"] and set(report["outputs"]) == {"golden/0.png"}
    assert compare(manifest, golden, report) == []
    latency = report["latency_ms"]
    assert set(latency["per_model_infer_p50"]) == {"ppocr-det", "ppocr-cls", "ppocr-rec"}
    assert 0 < latency["infer_p50"] <= latency["total_p50"]
    # And the comparison can fail: a line read differently is named.
    wrong = json.loads(json.dumps(golden))
    wrong["outputs"]["golden/0.png"]["lines"][0]["text"] += "Q"
    (difference,) = compare(manifest, wrong, report)
    assert difference.startswith("golden/0.png: lines")


# --- (e) an edited bundle ---------------------------------------------------------------------------

def test_an_edited_bundle_is_refused_in_one_line_naming_the_file(bundles: dict[str, Path], tmp_path: Path) -> None:
    copy = _copy(bundles["orientation"], tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    artifact = manifest["models"][0]["artifact"]["file"]
    Bundle.open(copy)  # intact
    data = bytearray((copy / artifact).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / artifact).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=re.escape(f"{artifact} does not match its sha256 in manifest.json")):
        Bundle.open(copy)
    page = tmp_path / "page.png"
    page.write_bytes(_png(composed.page(np.random.default_rng(0))))
    for args in (("predict", str(page)), ("check",)):
        done = _pyz(copy, *args)
        assert done.returncode == 1
        out = done.stderr if args[0] == "predict" else done.stdout
        assert out.count("\n") == 1 and artifact in out and "Traceback" not in done.stderr
    smoke = _pyz(copy, "smoke")
    assert smoke.returncode == 1 and artifact in json.loads(smoke.stdout)["error"]


def test_unlisted_files_and_an_edited_manifest_are_refused(bundles: dict[str, Path], tmp_path: Path) -> None:
    copy = _copy(bundles["orientation"], tmp_path)
    artifact = json.loads((copy / "manifest.json").read_text())["models"][0]["artifact"]["file"]
    (copy / (artifact + ".d")).mkdir()  # an unpack folder the runtime makes is not an edit
    (copy / (artifact + ".d") / "model.bin").write_bytes(b"x")
    Bundle.open(copy)
    (copy / "models" / "extra.py").write_text("print('hi')\n")
    with pytest.raises(BundleError, match=r"models/extra\.py is in the bundle folder but not in manifest\.json"):
        Bundle.open(copy)
    (copy / "models" / "extra.py").unlink()
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["models"][0]["options"] = {"threads": 64}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="bundle_id .* does not match its content"):
        Bundle.open(copy)
    Bundle.open(copy, verify=False)  # what verify=False is for: reading a manifest


# --- (f) requirements -------------------------------------------------------------------------------

def test_an_engine_outside_the_measured_range_is_one_line_with_the_pip_command(tmp_path: Path) -> None:
    import onnxruntime

    old = {"measured": "1.2.3", "min": "1.2", "below": "1.3"}
    path = write_bundle(tmp_path / "old", [_orientation_model()], engine=old)
    problems = Bundle.open(path).check()
    assert problems == [f"onnxruntime {onnxruntime.__version__} is installed, the bundle was measured with 1.2.3: "
                        "pip install 'onnxruntime>=1.2,<1.3'"]
    done = _pyz(path, "check", "--json")
    assert done.returncode == 1 and json.loads(done.stdout)["problems"] == problems
    predict = _pyz(path, "predict", str(path / "manifest.json"))
    assert predict.returncode == 1 and "pip install 'onnxruntime>=1.2,<1.3'" in predict.stderr
    assert _pyz(write_bundle(tmp_path / "ok", [_orientation_model()]), "check").returncode == 0


def test_a_python_without_numpy_pillow_or_the_engine_is_told_what_to_install(bundles: dict[str, Path]) -> None:
    # -S: no site-packages, the bare standard library a fresh board has
    done = subprocess.run([sys.executable, "-S", str(bundles["ocr"] / "bundle.pyz"), "check"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "numpy is not installed: pip install 'numpy>=1.17'"
    assert lines[1] == "no image decoder: pip install Pillow"
    assert lines[2].startswith("onnxruntime is not installed") and lines[2].endswith(
        "pip install 'onnxruntime%s,<%s'" % (">=" + _ort_range()["min"], _ort_range()["below"]))
    assert len(lines) == 3


def test_versions_compare_as_dotted_integers() -> None:
    assert parse_version("2024.4.0-16579-c3152d32c9c-releases/2024/4") == (2024, 4, 0)
    assert satisfies((1, 100), ">=1.20") and not satisfies((1, 3), ">=1.20")  # not as strings
    assert satisfies((1, 20, 1), ">=1.20,<1.21") and not satisfies((1, 21), ">=1.20,<1.21")
    assert satisfies((3, 8), ">=3.8") and not satisfies((3, 7, 9), ">=3.8")


# --- raw models and golden tolerance ----------------------------------------------------------------

def _doubler(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["y"])], "double",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(np.array(2.0, np.float32), "two")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_raw_model_reads_npz_tensors_and_summarises_its_outputs(tmp_path: Path) -> None:
    path = write_bundle(tmp_path / "raw", [{"name": "double", "path": _doubler(tmp_path / "double.onnx"),
                                            "task": "raw", "task_params": {"output_names": ["y"]}}])
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    buf = io.BytesIO()
    np.savez(buf, x=x)
    with Bundle.open(path) as b:
        (result,) = b.predict([buf.getvalue()])
        assert result["outputs"] == [{"name": "y", "shape": [3, 4], "mean": float(2 * x.mean()), "max": 22.0}]
        wrong = io.BytesIO()
        np.savez(wrong, z=x)
        with pytest.raises(InputError, match="input 1: the model's input"):
            b.predict([wrong.getvalue()])
    manifest = json.loads((path / "manifest.json").read_text())
    near = {"outputs": [dict(result["outputs"][0], mean=11.0 * 1.005)]}
    far = {"outputs": [dict(result["outputs"][0], mean=11.0 * 1.05)]}
    assert compare(manifest, {"a": result}, {"a": near}) == []
    assert compare(manifest, {"a": result}, {"a": far}) != []


def test_golden_tolerances_by_task(bundles: dict[str, Path]) -> None:
    manifests = {k: json.loads((p / "manifest.json").read_text()) for k, p in bundles.items()}
    img, _, _ = composed.characters_image(np.random.default_rng(7))
    with Bundle.open(bundles["characters"]) as b:
        (found,) = b.predict([_png(img)])
    shifted = json.loads(json.dumps(found))
    for o in shifted["objects"]:
        o["box"] = [o["box"][0] + 1, o["box"][1], o["box"][2] + 1, o["box"][3]]  # a pixel: same detections
    assert compare(manifests["characters"], {"x": found}, {"x": shifted}) == []
    moved = json.loads(json.dumps(found))
    w = moved["objects"][0]["box"][2] - moved["objects"][0]["box"][0]
    moved["objects"][0]["box"][0] += w / 2
    moved["objects"][0]["box"][2] += w / 2
    assert len(compare(manifests["characters"], {"x": found}, {"x": moved})) == 2  # not found, and not expected
    assert compare(manifests["characters"], {"x": found}, {}) == ["x: no output"]
    top = {"top": [{"label": "90", "index": 1, "score": 0.9}, {"label": "0", "index": 0, "score": 0.1}]}
    assert compare(manifests["orientation"], {"x": top}, {"x": {"top": [dict(top["top"][0], score=0.87)]}}) == []
    assert compare(manifests["orientation"], {"x": top}, {"x": {"top": [dict(top["top"][0], score=0.8)]}}) != []
    assert compare(manifests["orientation"], {"x": top}, {"x": {"top": top["top"][::-1]}}) != []


def test_a_bundle_of_unrelated_models_answers_for_each_under_its_name(bundles: dict[str, Path], tmp_path: Path) -> None:
    characters = json.loads((bundles["characters"] / "manifest.json").read_text())["models"][0]
    both = write_bundle(tmp_path / "both", [_orientation_model(), {
        "name": "characters", "path": character_detector(), "task": "detection",
        "task_params": characters["task_params"], "preprocess": characters["preprocess"]}])
    img, truth, _ = composed.characters_image(np.random.default_rng(11))
    with Bundle.open(both) as b:
        (result,) = b.predict([_png(img)])
    assert set(result["models"]) == {"orientation", "characters"}
    assert len(result["models"]["characters"]["objects"]) == len(truth)
    assert result["models"]["orientation"]["top"][0]["label"] in composed.ORIENTATION_LABELS
    inner = sum(r["timing_ms"]["infer"] for r in result["models"].values())
    assert result["timing_ms"]["infer"] == pytest.approx(inner, abs=0.01)
    assert set(result["timing_ms"]["models"]) == {"orientation", "characters"}


def test_a_users_own_task_module_runs_from_the_bundle(tmp_path: Path) -> None:
    module = (b"import numpy as np\nMETRIC = 'hits'\n"
              b"def postprocess(outputs):\n    return {'angle': [0, 90, 180, 270][int(np.argmax(outputs[0]))]}\n"
              b"def metric(predictions, labels):\n    return {'hits': 0.0}\n")
    spec = dict(_orientation_model(), task="custom", task_params={"module_path": "models/orientation/task.py"})
    bundle = write_bundle(tmp_path / "custom", [spec], extra={"models/orientation/task.py": module})
    upright = composed.page(np.random.default_rng(4))
    with Bundle.open(bundle) as b:
        results = b.predict([_png(upright.rotate(-a, expand=True)) for a in (0, 180)])
    assert [r["angle"] for r in results] == [0, 180]
    Bundle.open(bundle)  # its bytecode cache, if Python wrote one, is not an edit
