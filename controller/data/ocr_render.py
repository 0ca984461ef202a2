"""Rendered text for the OCR datasets: text lines and pages with known strings and boxes.

Every sample is drawn from the generator ``rngs(i)`` the caller gives, so the caller decides
seeding and this module decides pixels. Images come out as uint8 CHW in BGR order, the order
PaddleOCR's cv2 pipeline trained its models on.
"""

from __future__ import annotations

import math
import string
from pathlib import Path
from typing import Any, Callable

import numpy as np

Rngs = Callable[[int], np.random.Generator]

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
# Only the faces Debian's fonts-dejavu-core ships, so a plain controller install has them all.
FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
)
# Glyphs no reader can tell apart without context (I/l/1, O/0) would cap exact match below
# what the model really does; every other ASCII letter and digit is drawn.
AMBIGUOUS = set("Il1O0")
ALPHABET = "".join(c for c in string.ascii_letters + string.digits if c not in AMBIGUOUS)

# PaddleOCR pads line images with 0 after normalization; 128 is the nearest uint8 (0.004).
LINE_PAD = 128

def _fonts() -> list[Path]:
    paths = [FONT_DIR / f for f in FONT_FILES]
    for path in paths:
        if not path.is_file():
            raise ValueError(f"font {path} not found: install Debian's fonts-dejavu-core (apt-get install fonts-dejavu-core)")
    return paths


def _font(path: Path, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(str(path), size)


def _text(rng: np.random.Generator, low: int, high: int) -> str:
    n = int(rng.integers(low, high + 1))
    return "".join(ALPHABET[i] for i in rng.integers(0, len(ALPHABET), size=n))


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A light, slightly tinted background and a dark ink: contrast varies, never vanishes."""
    bg = np.clip(rng.integers(160, 256) + rng.integers(-12, 13, size=3), 0, 255)
    fg = np.clip(rng.integers(0, 110) + rng.integers(-20, 21, size=3), 0, 255)
    return bg.astype(np.float32), fg.astype(np.float32)


def _text_alpha(text: str, font) -> tuple[np.ndarray, int, int, np.ndarray]:
    """Ink coverage [h, w] in 0..1 (columns ink-tight), the cap-top and baseline rows, ink rows.

    Line crops span cap top to baseline at least, so "acex" stays lower case-sized and the
    recognizer can tell o from O as it can in a real crop.
    """
    from PIL import Image, ImageDraw

    left, top, right, bottom = font.getbbox(text, anchor="ls")
    cap_top = font.getbbox("H", anchor="ls")[1]
    top = min(top, cap_top)
    bottom = max(bottom, 0)
    img = Image.new("L", (right - left + 4, bottom - top + 4), 0)
    ImageDraw.Draw(img).text((2 - left, 2 - top), text, font=font, fill=255, anchor="ls")
    alpha = np.asarray(img, dtype=np.float32) / 255.0
    cols = np.flatnonzero(alpha.max(axis=0) > 0)
    rows = np.flatnonzero(alpha.max(axis=1) > 0)
    return alpha[:, cols[0] : cols[-1] + 1], 2 - top + cap_top, 2 - top, rows


def _blend(bg: np.ndarray, fg: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return bg + (fg - bg) * alpha[..., None]


def _to_model(rgb: np.ndarray) -> np.ndarray:
    """HWC RGB float -> CHW BGR uint8: PaddleOCR models were trained on cv2's BGR images."""
    return np.ascontiguousarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8)[..., ::-1].transpose(2, 0, 1))


def _line_image(rng: np.random.Generator, text: str, fonts: list[Path], height: int, width: int, rotate: bool) -> np.ndarray:
    """One text line cropped like a detector box, resized to ``height`` and padded to ``width``."""
    from PIL import Image, ImageFilter

    # Small sizes are upscaled to the model height: soft glyphs, as in low-resolution crops.
    size = int(rng.integers(14, 49))
    font = _font(fonts[int(rng.integers(len(fonts)))], size)
    alpha, cap_top, baseline, rows = _text_alpha(text, font)
    alpha = alpha[min(cap_top, rows[0]) : max(baseline, rows[-1] + 1)]
    mx = rng.uniform(0.05, 0.35, size=2) * size
    my = rng.uniform(0.05, 0.3, size=2) * size
    canvas = np.zeros((alpha.shape[0] + int(my.sum()), alpha.shape[1] + int(mx.sum())), np.float32)
    canvas[int(my[0]) : int(my[0]) + alpha.shape[0], int(mx[0]) : int(mx[0]) + alpha.shape[1]] = alpha
    if rng.random() < 0.5:  # a crop is rarely perfectly level
        tilted = Image.fromarray(canvas).rotate(float(rng.uniform(-2.5, 2.5)), Image.Resampling.BILINEAR)
        canvas = np.asarray(tilted, dtype=np.float32)
    bg, fg = _colours(rng)
    if rng.random() < 0.15:
        bg, fg = fg, bg  # light text on a dark ground
    img = Image.fromarray(np.clip(np.rint(_blend(bg, fg, canvas)), 0, 255).astype(np.uint8))
    if rng.random() < 0.4:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.4))))
    if rotate:
        img = img.transpose(Image.Transpose.ROTATE_180)
    # PaddleOCR's resize_norm_img: keep the aspect ratio up to the model width, pad on the right.
    w = min(width, max(1, math.ceil(height * img.width / img.height)))
    line = np.asarray(img.resize((w, height), Image.Resampling.BILINEAR), dtype=np.float32)
    out = np.full((height, width, 3), LINE_PAD, np.float32)
    out[:, :w] = line
    return _to_model(out)


def rec_set(samples: int, rngs: Rngs, height: int, width: int, charset: np.ndarray):
    fonts = _fonts()
    images, texts = [], []
    for i in range(samples):
        rng = rngs(i)
        text = _text(rng, 3, 12)
        images.append(_line_image(rng, text, fonts, height, width, rotate=False))
        texts.append(text)
    return np.stack(images), {"text": np.array(texts), "charset": charset}


def cls_set(samples: int, rngs: Rngs, height: int, width: int):
    fonts = _fonts()
    images, labels = [], []
    for i in range(samples):
        rng = rngs(i)
        label = i % 2  # exactly half rotated, whatever the count
        images.append(_line_image(rng, _text(rng, 3, 12), fonts, height, width, rotate=bool(label)))
        labels.append(label)
    return np.stack(images), {"label": np.array(labels, dtype=np.int64)}


def det_set(samples: int, rngs: Rngs, height: int, width: int):
    from PIL import Image, ImageDraw, ImageFilter

    fonts = _fonts()
    scale = min(height, width) / 640
    images: list[Any] = []
    boxes: list[Any] = []
    for i in range(samples):
        rng = rngs(i)
        bg, fg = _colours(rng)
        # A plain background (no per-pixel noise) keeps 200 images at 640x640 a few MB.
        page = Image.new("RGB", (width, height), tuple(int(c) for c in bg))
        occupied = _distractors(rng, ImageDraw.Draw(page), width, height)
        canvas = np.asarray(page, dtype=np.float32).copy()
        placed: list[tuple[int, int, int, int]] = []
        for _ in range(int(rng.integers(1, 5))):
            size = max(12, int(rng.integers(18, 61) * scale))
            font = _font(fonts[int(rng.integers(len(fonts)))], size)
            alpha, _, _, rows = _text_alpha(_text(rng, 3, 14), font)
            alpha = alpha[rows[0] : rows[-1] + 1]
            h, w = alpha.shape
            if w + 8 > width or h + 8 > height:
                continue
            gap = max(6, size // 2)  # lines closer than this would merge in the DB map
            for _attempt in range(30):
                x, y = int(rng.integers(4, width - w - 3)), int(rng.integers(4, height - h - 3))
                if all(x + w + gap <= a or a2 + gap <= x or y + h + gap <= b or b2 + gap <= y for a, b, a2, b2 in placed + occupied):
                    canvas[y : y + h, x : x + w] = _blend(canvas[y : y + h, x : x + w], fg, alpha)
                    placed.append((x, y, x + w, y + h))
                    break
        # Labels are the ink box plus the few pixels of margin annotators (and DB's unclip) leave.
        pad = max(1, round(3 * scale))
        placed = [(x0 - pad, y0 - pad, x1 + pad, y1 + pad) for x0, y0, x1, y1 in placed]
        img = canvas
        if rng.random() < 0.3:
            blurred = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8))
            img = np.asarray(blurred.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.8)))), np.float32)
        images.append(_to_model(img))
        boxes.extend((i, *box) for box in placed)
    return np.stack(images), {"boxes": np.array(boxes, dtype=np.float32).reshape(-1, 5)}


def _distractors(rng: np.random.Generator, draw, width: int, height: int) -> list[tuple[int, int, int, int]]:
    """0..2 shapes that are not text (frames, discs, rules), so precision means something."""
    shapes = []
    for _ in range(int(rng.integers(0, 3))):
        w, h = int(rng.integers(width // 10, width // 3)), int(rng.integers(height // 10, height // 3))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        tone = tuple(int(c) for c in rng.integers(90, 200, size=3))
        kind = int(rng.integers(3))
        if kind == 0:
            draw.rectangle((x, y, x + w, y + h), outline=tone, width=int(rng.integers(2, 5)))
        elif kind == 1:
            draw.ellipse((x, y, x + w, y + h), fill=tone)
        else:
            h = int(rng.integers(2, 4))
            draw.rectangle((x, y, x + w, y + h), fill=tone)
        shapes.append((x, y, x + w + 1, y + h + 1))
    return shapes
