"""Labelled images composed by construction, written as a user's own files.

The examples, tests and benchmarks of the classification and detection tasks need labelled data
for real packaged models, and no dataset can be downloaded. These are composed so that every
label is known exactly, and written in the forms a user brings (a class folder, a COCO file), so
that they go through the very reader and checks a user's data goes through:

- ``orientation_folder``: text pages rendered with the DejaVu font, rotated by 0, 90, 180 or 270
  degrees clockwise, one sub-folder per angle (the classes of RapidAI's orientation classifier);
- ``characters_coco``: letters and digits drawn on varied backgrounds, with their ink boxes as
  COCO annotations (the class of ddddocr's character detector).

Sample ``i`` draws from its own generator seeded with ``(seed, salt, i)``: the same seed gives the
same bytes, and a bigger set starts with a smaller one. PNG and JPEG alternate; sizes vary.

    python -m controller.data.composed OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ORIENTATION_LABELS = ["0", "90", "180", "270"]  # the orientation classifier's output order
FONTS = "/usr/share/fonts/truetype/dejavu/"
WORDS = ("edge farm model board engine latency accuracy deploy chip variant int8 fused measure "
         "nightly report table select bundle image label train data camera frame queue").split()
CHARACTERS = "ABCDEFGHJKLMNPRSTUVWXYZ23456789"
_SALT = {"orientation": 11, "characters": 12}


def _font(size: int, bold: bool = False):  # -> ImageFont.FreeTypeFont
    from PIL import ImageFont

    return ImageFont.truetype(FONTS + ("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"), size)


def _rng(kind: str, seed: int, i: int) -> np.random.Generator:
    return np.random.default_rng((seed, _SALT[kind], i))


def _save(img, path: Path, i: int) -> Path:  # img: PIL.Image
    """PNG for even samples, JPEG for odd ones: a user's folder holds both."""
    path = path.with_suffix(".png" if i % 2 == 0 else ".jpg")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        img.save(path, quality=90)
    else:
        img.save(path, optimize=False)
    return path


def page(rng: np.random.Generator):  # -> PIL.Image
    """An upright page of text lines: portrait or landscape, margins and font size varied."""
    from PIL import Image, ImageDraw

    w, h = int(rng.integers(360, 720)), int(rng.integers(360, 720))
    shade = int(rng.integers(225, 256))
    img = Image.new("RGB", (w, h), (shade, shade, int(rng.integers(215, 256))))
    draw = ImageDraw.Draw(img)
    size = int(rng.integers(16, 28))
    font = _font(size)
    margin = int(rng.integers(16, 48))
    y = margin
    while y < h - margin - size:
        words = " ".join(rng.choice(WORDS, int(rng.integers(3, 9))))
        ink = int(rng.integers(0, 80))
        draw.text((margin + int(rng.integers(0, 20)), y), words.capitalize(), fill=(ink, ink, ink), font=font)
        y += int(size * rng.uniform(1.3, 1.9))
    noise = rng.normal(0, 4, (h, w, 1))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


def orientation_folder(out: Path, per_class: int, seed: int) -> Path:
    """``out/<angle>/page-<i>.png|jpg``: the same pages at each of the four angles."""
    for i in range(per_class):
        upright = page(_rng("orientation", seed, i))
        for angle in ORIENTATION_LABELS:
            _save(upright.rotate(-int(angle), expand=True), out / angle / f"page-{i:04d}", i)
    return out


def write_labels(path: Path, labels: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{name}\n" for name in labels))
    return path


def _background(rng: np.random.Generator, w: int, h: int):  # -> PIL.Image
    """A left-to-right gradient between two light colours, with noise."""
    from PIL import Image

    a, b = rng.integers(150, 256, 3), rng.integers(150, 256, 3)
    t = np.linspace(0.0, 1.0, w)[None, :, None]
    grad = a * (1 - t) + b * t + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(grad, 0, 255).astype(np.uint8))


def characters_image(rng: np.random.Generator):  # -> (PIL.Image, list of [x, y, w, h])
    """2..6 characters side by side, never overlapping, with their tight ink boxes."""
    from PIL import Image, ImageDraw

    w, h = int(rng.integers(240, 420)), int(rng.integers(110, 200))
    img = _background(rng, w, h)
    boxes = []
    x = int(rng.integers(8, 24))
    for _ in range(int(rng.integers(2, 7))):
        size = int(rng.integers(30, 64))
        font = _font(size, bold=bool(rng.integers(0, 2)))
        ch = CHARACTERS[int(rng.integers(0, len(CHARACTERS)))]
        # The ink of the glyph alone, from its own mask: textbbox includes side bearings.
        mask = Image.new("L", (size * 2, size * 2), 0)
        ImageDraw.Draw(mask).text((size // 2, size // 4), ch, fill=255, font=font)
        ink_box = mask.getbbox()
        assert ink_box is not None, f"{ch!r} drew no ink"
        left, top, right, bottom = ink_box
        gw, gh = right - left, bottom - top
        if x + gw + 8 > w:
            break
        y = int(rng.integers(6, max(7, h - gh - 6)))
        ink = tuple(int(v) for v in rng.integers(0, 90, 3))
        glyph = Image.new("RGB", mask.size, ink)
        img.paste(glyph, (x - left, y - top), mask)
        boxes.append([x, y, gw, gh])
        x += gw + int(rng.integers(10, 30))
    return img, boxes


def characters_coco(out: Path, images: int, seed: int) -> Path:
    """``out/images/*.png|jpg`` and ``out/annotations.json`` (COCO, one category: character)."""
    records: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i in range(images):
        img, boxes = characters_image(_rng("characters", seed, i))
        path = _save(img, out / "images" / f"chars-{i:04d}", i)
        records.append({"id": i + 1, "file_name": path.name, "width": img.width, "height": img.height})
        for x, y, bw, bh in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1,
                                "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})
    doc = {"images": records, "annotations": annotations, "categories": [{"id": 1, "name": "character"}]}
    target = out / "annotations.json"
    target.write_text(json.dumps(doc, indent=1))
    return target


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m controller.data.composed OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    folder = orientation_folder(out / "orientation", 60, seed=0)
    labels = write_labels(out / "orientation-labels.txt", ORIENTATION_LABELS)
    coco = characters_coco(out / "characters", 120, seed=0)
    print(f"{folder}: 240 pages in 4 class folders; {labels}; {coco}: 120 images")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
