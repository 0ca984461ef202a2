"""The ``line`` geometry (PaddleOCR's resize_norm_img) and decoding images from bytes."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from pydantic import ValidationError

from agent.tasks.preprocess import decode_image, geometry, output_size, to_tensor
from controller.config.task import PreprocessSpec

LINE = {"line": [320, 48], "pad": 128, "color": "bgr", "scale": 1 / 255, "mean": [0.5] * 3, "std": [0.5] * 3}


def _image(w: int, h: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_a_short_line_keeps_its_ratio_and_is_padded_on_the_right() -> None:
    from PIL import Image

    img = _image(100, 20)
    out, geo = geometry(img, LINE)
    assert out.shape == (3, 48, 320)
    width = math.ceil(48 * 100 / 20)  # 240
    # The same pixels as PaddleOCR's recipe: resize to the height, ratio kept, then pad.
    resized = np.asarray(Image.fromarray(img).resize((width, 48), Image.Resampling.BILINEAR))
    assert np.array_equal(out[:, :, :width], resized[:, :, ::-1].transpose(2, 0, 1))
    assert (out[:, :, width:] == 128).all()
    assert geo == pytest.approx((width / 100, 48 / 20, 0.0, 0.0))
    tensor = to_tensor(out[None], LINE)
    assert tensor.shape == (1, 3, 48, 320) and np.allclose(tensor[..., width:], (128 / 255 - 0.5) / 0.5, atol=1e-6)


def test_a_long_line_is_squeezed_to_the_width_not_cut() -> None:
    out, geo = geometry(_image(1000, 20), dict(LINE, color="rgb", layout="nhwc"))
    assert out.shape == (48, 320, 3)
    assert geo[0] == pytest.approx(0.32) and geo[1] == pytest.approx(2.4)
    assert (out[:, -1] != 128).any()  # the last column is the line's, not padding


def test_output_size_of_a_line_and_its_declaration() -> None:
    assert output_size(37, 11, LINE) == (320, 48)
    spec = PreprocessSpec.model_validate({"line": "320x48", "pad": 128})
    assert spec.line == (320, 48) and spec.has_geometry() and spec.output_size() == (320, 48)
    for other in ({"resize": 224}, {"letterbox": 416}, {"crop": 224}, {"resize_short": 256}):
        with pytest.raises(ValidationError, match="line is a whole geometry of its own"):
            PreprocessSpec.model_validate({"line": [320, 48], **other})
    with pytest.raises(ValidationError, match="a size is W x H"):
        PreprocessSpec.model_validate({"line": [0, 48]})


def test_decode_image_reads_bytes_and_applies_exif_orientation(tmp_path: object) -> None:
    from PIL import Image

    img = Image.fromarray(_image(60, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: the viewer turns it 90 degrees clockwise
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    decoded = decode_image(buf.getvalue())
    assert decoded.shape == (60, 20, 3) and decoded.dtype == np.uint8
    assert np.array_equal(decode_image(bytearray(buf.getvalue())), decoded)
    path = tmp_path / "sideways.jpg"  # type: ignore[operator]
    path.write_bytes(buf.getvalue())
    assert np.array_equal(decode_image(str(path)), decoded)
