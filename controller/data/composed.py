"""Labelled images composed by construction, written as a user's own files.

The examples, tests and benchmarks of the classification and detection tasks need labelled data
for real packaged models, and no dataset can be downloaded. These are composed so that every
label is known exactly, and written in the forms a user brings (a class folder, a COCO file), so
that they go through the very reader and checks a user's data goes through:

- ``orientation_folder``: pages of text lines in the DejaVu faces, rotated by 0, 90, 180 or 270
  degrees clockwise, one sub-folder per angle (the classes of RapidAI's orientation classifier);
- ``characters_coco``: letters and digits drawn apart on gradient or noisy backgrounds, with the
  tight boxes of their ink as COCO annotations (the one class of ddddocr's character detector).

Sample ``i`` draws from its own generator seeded with ``(seed, salt, i)``: the same seed gives the
same bytes, and a bigger set starts with a smaller one. PNG and JPEG alternate; sizes vary, and
none is a model's input size, so the declared resize, crop or letterbox does real work.

    python -m controller.data.composed OUT_DIR
"""

from __future__ import annotations

import json
import math
import string
import sys
from pathlib import Path
from typing import Any

import numpy as np

from controller.data.ocr_render import _font, _fonts

ORIENTATION_LABELS = ["0", "90", "180", "270"]  # the orientation classifier's output order
WORDS = ("edge farm model board engine latency accuracy deploy chip variant int8 fused measure nightly "
         "report table select bundle image label train data camera frame queue the of and to a in for "
         "is on with by at from run runs each every one two three first last kernel memory power").split()
# Every letter and digit but the one-stroke ones: an ink box a few pixels wide falls under IoU 0.5
# with any box a pixel or two wider on each side, so it would test the metric, not the detector.
CHARACTERS = "".join(c for c in string.ascii_letters + string.digits if c not in "Iijl")
# ddddocr's detector finds characters whose ink is about 24..44 pixels tall at its 416 input
# (measured: it finds few under 18, and on a crowded sheet fewer and fewer past 45), so ink
# heights are drawn in that band after the letterbox's scaling, and within 24..64 pixels in
# the image itself.
INPUT_SIZE = 416
INPUT_GLYPH = (24, 44)
GLYPH = (24, 64)
_SALT = {"orientation": 11, "characters": 12}


def _rng(kind: str, seed: int, i: int) -> np.random.Generator:
    return np.random.default_rng((seed, _SALT[kind], i))


def _save(img, path: Path, i: int, rng: np.random.Generator) -> Path:  # img: PIL.Image
    """PNG for even samples, JPEG (quality 75..95) for odd ones: a user's folder holds both."""
    path = path.with_suffix(".png" if i % 2 == 0 else ".jpg")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        img.save(path, quality=int(rng.integers(75, 96)))
    else:
        img.save(path, optimize=False)
    return path


def _noisy(img, rng: np.random.Generator, sigma: float):  # PIL.Image -> PIL.Image
    from PIL import Image

    noise = rng.normal(0, sigma, (img.height, img.width, 1))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


def page(rng: np.random.Generator):  # -> PIL.Image
    """An upright page: maybe a bold heading, then paragraphs of words wrapped at the right margin,
    maybe a grey figure block among them.

    Portrait or landscape, face, size, margins, line spacing and ink vary; the paper is a light
    tint, skewed a little as a scan is, with some noise. No page is nearly empty: a blank page
    has no orientation."""
    from PIL import Image, ImageDraw

    faces = _fonts()
    w, h = int(rng.integers(360, 720)), int(rng.integers(360, 720))
    shade = int(rng.integers(215, 256))
    paper = (shade, shade - int(rng.integers(0, 10)), shade - int(rng.integers(0, 25)))
    img = Image.new("RGB", (w, h), paper)
    draw = ImageDraw.Draw(img)
    size = int(rng.integers(14, 28))
    font = _font(faces[int(rng.integers(len(faces)))], size)
    left, right, top = (int(v) for v in rng.integers(16, 56, 3))
    ink = (int(rng.integers(0, 90)),) * 3
    y = top
    if rng.random() < 0.5:
        heading = _font(faces[1], int(size * rng.uniform(1.3, 1.8)))  # DejaVuSans-Bold
        draw.text((left, y), " ".join(rng.choice(WORDS, int(rng.integers(2, 5)))).title(), fill=ink, font=heading)
        y += int(heading.size * 1.8)
    figure = int(rng.integers(y, h)) if rng.random() < 0.3 else h  # where a figure goes, if one does
    spacing = rng.uniform(1.3, 1.9)
    while y < h - top - size:
        if y >= figure:
            tall = int(rng.integers(3, 7) * size)
            tone = int(rng.integers(120, 200))
            draw.rectangle((left, y, w - right - int(rng.integers(0, w // 3)), min(y + tall, h - top)), fill=(tone,) * 3)
            y, figure = y + tall + size, h
            continue
        line, indent = "", left + (int(size * 1.5) if rng.random() < 0.2 else 0)
        for word in rng.choice(WORDS, 30):
            longer = f"{line} {word}" if line else str(word).capitalize()
            if indent + font.getlength(longer) > w - right:
                break
            line = longer
        if rng.random() < 0.15:  # a paragraph's last line stops short, and a gap follows
            draw.text((indent, y), " ".join(line.split()[: int(rng.integers(2, 5))]) + ".", fill=ink, font=font)
            y += int(size * spacing * 2)
            continue
        draw.text((indent, y), line, fill=ink, font=font)
        y += int(size * spacing)
    img = img.rotate(float(rng.uniform(-2, 2)), Image.Resampling.BICUBIC, fillcolor=paper)
    return _noisy(img, rng, float(rng.uniform(1.5, 6.0)))


def orientation_folder(out: Path, per_class: int, seed: int) -> Path:
    """``out/<angle>/page-<i>.png|jpg``: the same pages at each of the four angles, turned
    clockwise (PIL's ``rotate(-angle, expand=True)``)."""
    for i in range(per_class):
        rng = _rng("orientation", seed, i)
        upright = page(rng)
        for angle in ORIENTATION_LABELS:
            _save(upright.rotate(-int(angle), expand=True), out / angle / f"page-{i:04d}", i, rng)
    return out


def write_labels(path: Path, labels: list[str]) -> Path:
    """A labels file, one class name a line, in the model's output order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{name}\n" for name in labels))
    return path


def _background(rng: np.random.Generator, w: int, h: int):  # -> PIL.Image
    """A light gradient between two colours in a random direction, or light blotches of two
    colours. Noise comes later, over the characters too, as a camera's would."""
    from PIL import Image

    a, b = rng.integers(150, 256, 3), rng.integers(150, 256, 3)
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:h, 0:w]
        t = (xx * math.cos(angle) + yy * math.sin(angle)) / math.hypot(w, h) + 0.5
        base = a * (1 - t[..., None]) + b * t[..., None]
    else:
        blotches = Image.fromarray(rng.integers(0, 256, (h // 24 + 2, w // 24 + 2), dtype=np.uint8))
        t = np.asarray(blotches.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float64)[..., None] / 255.0
        base = a * (1 - t) + b * t
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def _ink(rng: np.random.Generator, background: np.ndarray) -> tuple[int, int, int]:
    """A dark or saturated colour at least 90 levels of luminance under the background's."""
    luma = np.array([0.299, 0.587, 0.114])
    limit = float(background @ luma) - 90
    while True:
        colour = rng.integers(0, 200, 3)
        if colour @ luma <= limit:
            r, g, b = (int(v) for v in colour)
            return r, g, b


def _glyph(rng: np.random.Generator, ch: str, height: int):  # -> PIL "L" mask cropped to its ink
    """The character's coverage mask, its ink ``height`` pixels tall (so an "x" is drawn with a
    bigger font than an "X"), turned up to 12 degrees and cropped to the ink it drew:
    ``textbbox`` would include the side bearings and the line's ascent."""
    from PIL import Image, ImageDraw

    path = _fonts()[int(rng.integers(len(_fonts())))]
    turn = float(rng.uniform(-12, 12))

    def draw(size: int):
        mask = Image.new("L", (size * 3, size * 3), 0)
        ImageDraw.Draw(mask).text((size * 3 // 2,) * 2, ch, fill=255, font=_font(path, size), anchor="mm")
        mask = mask.rotate(turn, Image.Resampling.BICUBIC)
        box = mask.getbbox()
        assert box is not None, f"{ch!r} drew no ink"
        return mask.crop(box)

    trial = draw(height)
    return draw(max(8, round(height * height / trial.height)))


def characters_image(rng: np.random.Generator):  # -> (PIL.Image, list of [x, y, w, h], str)
    """2..6 characters at random places, apart from each other, with their ink boxes and text.

    Ink heights follow the image's size so that after the letterbox to the detector's input they
    are the size it finds (``INPUT_GLYPH``)."""
    from PIL import Image

    w, h = int(rng.integers(300, 641)), int(rng.integers(180, 481))
    scale = INPUT_SIZE / max(w, h)
    low = max(GLYPH[0], math.ceil(INPUT_GLYPH[0] / scale))
    high = max(low, min(GLYPH[1], math.floor(INPUT_GLYPH[1] / scale)))
    img = _background(rng, w, h)
    backdrop = np.asarray(img, dtype=np.float64).reshape(-1, 3).mean(axis=0)
    boxes: list[list[int]] = []
    text = ""
    for _ in range(int(rng.integers(2, 7))):
        ch = CHARACTERS[int(rng.integers(len(CHARACTERS)))]
        mask = _glyph(rng, ch, int(rng.integers(low, high + 1)))
        gw, gh = mask.size
        gap = max(gw, gh) // 2  # the detector's boxes are wider than the ink: keep them apart
        for _attempt in range(40):
            x, y = int(rng.integers(4, w - gw - 4)), int(rng.integers(4, h - gh - 4))
            if all(x + gw + gap <= bx or bx + bw + gap <= x or y + gh + gap <= by or by + bh + gap <= y
                   for bx, by, bw, bh in boxes):
                img.paste(Image.new("RGB", mask.size, _ink(rng, backdrop)), (x, y), mask)
                boxes.append([x, y, gw, gh])
                text += ch
                break
    return _noisy(img, rng, float(rng.uniform(2, 7))), boxes, text


def characters_coco(out: Path, images: int, seed: int) -> Path:
    """``out/images/*.png|jpg`` and ``out/annotations.json`` (COCO, one category: character)."""
    records: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i in range(images):
        rng = _rng("characters", seed, i)
        img, boxes, _text = characters_image(rng)
        path = _save(img, out / "images" / f"chars-{i:04d}", i, rng)
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
    boxes = len(json.loads(coco.read_text())["annotations"])
    print(f"{folder}: 240 pages, 60 in each of the class folders {', '.join(ORIENTATION_LABELS)}")
    print(f"{labels}: the class names in the classifier's output order")
    print(f"{coco}: 120 images in {coco.parent / 'images'}, {boxes} character boxes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
