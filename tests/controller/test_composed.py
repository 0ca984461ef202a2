"""The composed labelled data: deterministic, valid in the forms a user brings, labels right."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from controller.data import composed


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_and_a_bigger_set_starts_with_a_smaller(tmp_path: Path) -> None:
    a = composed.characters_coco(tmp_path / "a", 4, seed=5).parent
    b = composed.characters_coco(tmp_path / "b", 4, seed=5).parent
    c = composed.characters_coco(tmp_path / "c", 6, seed=5).parent
    d = composed.characters_coco(tmp_path / "d", 4, seed=6).parent
    assert _digest(a) == _digest(b) != _digest(d)
    assert (a / "images" / "chars-0003.jpg").read_bytes() == (c / "images" / "chars-0003.jpg").read_bytes()


def test_coco_file_is_valid_for_pycocotools_and_boxes_lie_in_their_images(tmp_path: Path) -> None:
    from PIL import Image
    from pycocotools.coco import COCO

    path = composed.characters_coco(tmp_path, 10, seed=0)
    coco = COCO(str(path))
    assert len(coco.getImgIds()) == 10 and coco.getCatIds() == [1]
    doc = json.loads(path.read_text())
    assert {Path(i["file_name"]).suffix for i in doc["images"]} == {".png", ".jpg"}
    for im in doc["images"]:
        with Image.open(tmp_path / "images" / im["file_name"]) as img:
            assert img.size == (im["width"], im["height"])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=im["id"]))
        assert 2 <= len(anns) <= 6
        for ann in anns:
            x, y, w, h = ann["bbox"]
            assert w > 4 and h > 4 and x >= 0 and y >= 0 and x + w <= im["width"] and y + h <= im["height"]
        # Never overlapping: no two boxes share a pixel.
        boxes = [a["bbox"] for a in anns]
        for k, (x, y, w, h) in enumerate(boxes):
            for bx, by, bw, bh in boxes[k + 1:]:
                assert x + w <= bx or bx + bw <= x or y + h <= by or by + bh <= y, (im["file_name"], boxes)


def test_a_characters_box_is_its_ink_and_the_ink_is_the_size_drawn() -> None:
    import numpy as np

    for k, ch in enumerate("AgW7x"):
        mask = composed._glyph(np.random.default_rng(k), ch, 40)
        ink = np.asarray(mask) > 0
        # Every edge row and column of the crop holds ink: the box is as tight as the glyph.
        assert ink[0].any() and ink[-1].any() and ink[:, 0].any() and ink[:, -1].any(), ch
        assert abs(mask.height - 40) <= 2, (ch, mask.size)  # an "x" is as tall as an "X"


def test_the_command_line_needs_one_folder(capsys) -> None:
    assert composed.main([]) == 2 and "usage" in capsys.readouterr().err


def test_orientation_folder_rotates_the_same_page_into_each_class(tmp_path: Path) -> None:
    from PIL import Image

    folder = composed.orientation_folder(tmp_path / "o", 2, seed=0)
    assert sorted(p.name for p in folder.iterdir()) == sorted(composed.ORIENTATION_LABELS)
    with Image.open(folder / "0" / "page-0000.png") as up, Image.open(folder / "90" / "page-0000.png") as right, \
            Image.open(folder / "180" / "page-0000.png") as down:
        assert right.size == (up.height, up.width) and down.size == up.size
        # 90 is a quarter turn clockwise: PIL's rotate(-90); its inverse brings the page back.
        assert right.rotate(90, expand=True).tobytes() == up.tobytes()
        assert down.rotate(180).tobytes() == up.tobytes()
    labels = composed.write_labels(tmp_path / "labels.txt", composed.ORIENTATION_LABELS)
    assert labels.read_text().split() == ["0", "90", "180", "270"]
