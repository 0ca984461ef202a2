"""Image preprocessing as a model declares it: geometry, colour order, normalization, layout, dtype.

One declaration (a plain dict, validated on the controller by ``controller.config.task``) drives
the calibration images, the evaluation images and, later, the deployment bundle, so every one of
them sees exactly the same pixels. It is applied in two steps, because the controller decodes and
resizes a dataset once and ships compact uint8 images:

- ``geometry(image, decl)``: a decoded RGB image [H, W, 3] uint8 -> the uint8 image in the model's
  input size, colour order and layout, and the affine map back to the original pixels
  ``(sx, sy, tx, ty)``: ``input_x = original_x * sx + tx`` (and likewise y), which detection uses
  to put boxes back on the original image;
- ``to_tensor(images, decl)``: those uint8 images (a batch) -> the tensor the model is fed:
  ``(x * scale - mean[c]) / std[c]`` in ``dtype``, or the bytes unchanged for a uint8 input.

Geometry steps, in this order, each optional: ``resize_short`` (shorter side to N, ratio kept),
``resize`` [W, H] (stretch), ``letterbox`` [W, H] (ratio kept, padded with ``pad``), ``crop``
[W, H] (centre). Or, alone, ``line`` [W, H]: a text line to height H, ratio kept, at most W wide,
padded on the right with ``pad`` up to W (PaddleOCR's resize_norm_img, what its recognizer and
direction classifier were trained on). Standard library + numpy, and Pillow for resampling and
decoding (imported where used).
"""

from __future__ import annotations

import io
import math
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np

Geometry = Tuple[float, float, float, float]  # sx, sy, tx, ty: input = original * s + t

DEFAULTS: Dict[str, Any] = {
    "resize": None, "resize_short": None, "letterbox": None, "crop": None, "line": None, "pad": 114,
    "interpolation": "bilinear", "scale": 1.0 / 255.0, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
    "color": "rgb", "layout": "nchw", "dtype": "float32",
}
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")


def complete(decl: Dict[str, Any]) -> Dict[str, Any]:
    """The declaration with every key, defaults filled in."""
    out = dict(DEFAULTS)
    out.update({k: v for k, v in decl.items() if v is not None or k in ("mean", "std")})
    return out


def output_size(width: int, height: int, decl: Dict[str, Any]) -> Tuple[int, int]:
    """The (width, height) an image of this size has after the geometry steps."""
    d = complete(decl)
    w, h = width, height
    if d["resize_short"]:
        w, h = _short_side(w, h, int(d["resize_short"]))
    if d["resize"]:
        w, h = int(d["resize"][0]), int(d["resize"][1])
    if d["letterbox"]:
        w, h = int(d["letterbox"][0]), int(d["letterbox"][1])
    if d["crop"]:
        w, h = int(d["crop"][0]), int(d["crop"][1])
    if d["line"]:
        w, h = int(d["line"][0]), int(d["line"][1])
    return w, h


def geometry(image: np.ndarray, decl: Dict[str, Any]) -> Tuple[np.ndarray, Geometry]:
    """An RGB uint8 image [H, W, 3] -> (uint8 image in the model's size, colour and layout, map)."""
    from PIL import Image

    d = complete(decl)
    resample = getattr(Image, d["interpolation"].upper())
    img = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    sx = sy = 1.0
    tx = ty = 0.0

    def resize(w: int, h: int) -> None:
        nonlocal img, sx, sy, tx, ty
        fx, fy = w / img.width, h / img.height
        img = img.resize((w, h), resample)
        sx, sy, tx, ty = sx * fx, sy * fy, tx * fx, ty * fy

    if d["resize_short"]:
        resize(*_short_side(img.width, img.height, int(d["resize_short"])))
    if d["resize"]:
        resize(int(d["resize"][0]), int(d["resize"][1]))
    if d["letterbox"]:
        w, h = int(d["letterbox"][0]), int(d["letterbox"][1])
        r = min(w / img.width, h / img.height)
        nw, nh = max(1, int(round(img.width * r))), max(1, int(round(img.height * r)))
        resize(nw, nh)
        left, top = (w - nw) // 2, (h - nh) // 2
        canvas = Image.new("RGB", (w, h), (int(d["pad"]),) * 3)
        canvas.paste(img, (left, top))
        img = canvas
        tx, ty = tx + left, ty + top
    if d["crop"]:
        w, h = int(d["crop"][0]), int(d["crop"][1])
        left, top = (img.width - w) // 2, (img.height - h) // 2
        img = img.crop((left, top, left + w, top + h))  # pads with black where the image is smaller
        tx, ty = tx - left, ty - top
    if d["line"]:
        w, h = int(d["line"][0]), int(d["line"][1])
        # The ratio is kept up to the full width: a longer line is squeezed, never cut.
        resize(min(w, max(1, int(math.ceil(h * img.width / img.height)))), h)
        if img.width < w:
            canvas = Image.new("RGB", (w, h), (int(d["pad"]),) * 3)
            canvas.paste(img, (0, 0))
            img = canvas
    out = np.asarray(img, dtype=np.uint8)
    if d["color"] == "bgr":
        out = out[:, :, ::-1]
    if d["layout"] == "nchw":
        out = out.transpose(2, 0, 1)
    return np.ascontiguousarray(out), (sx, sy, tx, ty)


def to_tensor(images: np.ndarray, decl: Dict[str, Any]) -> np.ndarray:
    """A batch of ``geometry`` outputs [N, ...] uint8 -> the model's input tensor."""
    d = complete(decl)
    x = np.asarray(images)
    dtype = np.dtype(d["dtype"])
    if dtype.kind in "iu":
        return np.ascontiguousarray(x, dtype=dtype)
    axis = 1 if d["layout"] == "nchw" else x.ndim - 1
    shape = [1] * x.ndim
    shape[axis] = -1
    y = x.astype(np.float32) * np.float32(d["scale"])
    y -= np.asarray(d["mean"], dtype=np.float32).reshape(shape)
    y /= np.asarray(d["std"], dtype=np.float32).reshape(shape)
    return np.ascontiguousarray(y, dtype=dtype)


def to_original(boxes: np.ndarray, geo: Sequence[float], width: int, height: int) -> np.ndarray:
    """Boxes [K, 4] (x0, y0, x1, y1) in input pixels -> original image pixels, clipped to it."""
    sx, sy, tx, ty = (float(v) for v in geo)
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    out[:, [0, 2]] = (out[:, [0, 2]] - tx) / sx
    out[:, [1, 3]] = (out[:, [1, 3]] - ty) / sy
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out


def decode_image(source: Union[str, bytes, bytearray, memoryview]) -> np.ndarray:
    """A JPEG or PNG file, or its bytes -> RGB uint8 [H, W, 3], upright as its EXIF orientation says."""
    from PIL import Image, ImageOps

    opened = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else source
    with Image.open(opened) as img:
        img.load()
        return np.asarray(ImageOps.exif_transpose(img).convert("RGB"), dtype=np.uint8)


def input_shape(size: Tuple[int, int], decl: Dict[str, Any]) -> List[int]:
    """The model input shape [1, C, H, W] or [1, H, W, C] these images make."""
    w, h = size
    return [1, 3, h, w] if complete(decl)["layout"] == "nchw" else [1, h, w, 3]


def _short_side(w: int, h: int, n: int) -> Tuple[int, int]:
    if w <= h:
        return n, max(1, int(round(h * n / w)))
    return max(1, int(round(w * n / h))), n
