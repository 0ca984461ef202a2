"""A model's task, preprocessing and postprocessing as the spec (or ``edgefarm run`` flags) declare
them, validated at the boundary; the agent's task code (``agent.tasks``) runs what they say.

The same keys in YAML and on the command line (``--preprocess KEY=VALUE``): sizes as ``WxH`` (or
one number for a square, or a ``[W, H]`` list), numbers lists as ``A,B,C`` (or a list), a scale as a
number or ``1/255``. ``resolve_task`` fills what the spec leaves out from what the model says of
itself (Ultralytics exports carry ``imgsz``, ``names`` and ``task`` in their ONNX metadata) and
refuses, in one line, a declaration that does not fit the model.
"""

from __future__ import annotations

import ast
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from controller.validation import Strict

BUILTIN_TASKS = ("classification", "detection", "ocr-det", "ocr-rec", "ocr-cls", "raw")
Size = tuple[int, int]


def _size(value: Any) -> Any:
    """``224``, ``"224"``, ``"320x240"``, ``[320, 240]`` -> (W, H)."""
    if isinstance(value, bool):
        raise ValueError("a size is WxH or one number")
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, str):
        parts = value.lower().replace(" ", "").split("x")
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"a size is WxH or one number, got {value!r}") from None
        return (nums[0], nums[0]) if len(nums) == 1 else tuple(nums)
    return value


def _numbers(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return [float(v) for v in value.split(",")]
        except ValueError:
            raise ValueError(f"expected numbers A,B,C, got {value!r}") from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)]
    return value


class PreprocessSpec(Strict):
    """How an image becomes the model's input (``agent.tasks.preprocess``); geometry in this order."""

    resize_short: int | None = Field(None, ge=1, le=8192, description="shorter side to N pixels, ratio kept")
    resize: Size | None = Field(None, description="stretch to W x H")
    letterbox: Size | None = Field(None, description="fit in W x H keeping the ratio, padded with `pad`")
    crop: Size | None = Field(None, description="centre crop to W x H (one number: a square)")
    line: Size | None = Field(
        None, description="a text line: to height H keeping the ratio, at most W wide, padded on the right with "
        "`pad` up to W (PaddleOCR's recognizer input); alone, without the other sizes")
    pad: int = Field(114, ge=0, le=255, description="letterbox or line padding grey level")
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos"] = "bilinear"
    scale: float = Field(1.0 / 255.0, gt=0, description="pixel values are multiplied by this first")
    mean: list[float] = Field(default_factory=lambda: [0.0, 0.0, 0.0], description="subtracted per channel after scale")
    std: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0], description="divided by per channel last")
    color: Literal["rgb", "bgr"] = "rgb"
    layout: Literal["nchw", "nhwc"] = "nchw"
    dtype: Literal["float32", "float16", "uint8"] = Field(
        "float32", description="the input's element type; uint8 feeds the resized pixels unchanged")

    @field_validator("resize", "letterbox", "crop", "line", mode="before")
    @classmethod
    def _size_forms(cls, value: Any) -> Any:
        return _size(value)

    @field_validator("mean", "std", mode="before")
    @classmethod
    def _number_forms(cls, value: Any) -> Any:
        return _numbers(value)

    @field_validator("resize", "letterbox", "crop", "line")
    @classmethod
    def _positive(cls, size: Size | None) -> Size | None:
        if size is not None and (len(size) != 2 or min(size) < 1 or max(size) > 8192):
            raise ValueError("a size is W x H, each 1..8192")
        return size

    @field_validator("scale", mode="before")
    @classmethod
    def _fraction(cls, value: Any) -> Any:
        if isinstance(value, str) and "/" in value:
            num, _, den = value.partition("/")
            try:
                return float(num) / float(den)
            except (ValueError, ZeroDivisionError):
                raise ValueError(f"expected a number or A/B, got {value!r}") from None
        return value

    @field_validator("mean", "std")
    @classmethod
    def _three(cls, values: list[float]) -> list[float]:
        if len(values) == 1:
            values = values * 3
        if len(values) != 3:
            raise ValueError(f"give 1 or 3 numbers (one per colour channel), got {len(values)}")
        return values

    @model_validator(mode="after")
    def _consistent(self) -> "PreprocessSpec":
        if any(s == 0 for s in self.std):
            raise ValueError("std must not be 0")
        if self.letterbox and (self.resize or self.resize_short):
            raise ValueError("letterbox already resizes: give letterbox, or resize/resize_short (+ crop), not both")
        if self.resize and self.resize_short:
            raise ValueError("give resize (stretch) or resize_short (ratio kept), not both")
        if self.line and (self.resize or self.resize_short or self.letterbox or self.crop):
            raise ValueError("line is a whole geometry of its own: give line, or resize/resize_short/letterbox/crop, "
                             "not both")
        return self

    def has_geometry(self) -> bool:
        return any((self.resize, self.resize_short, self.letterbox, self.crop, self.line))

    def output_size(self) -> Size | None:
        """(W, H) every image ends up at, or None where it depends on the image (resize_short alone)."""
        for size in (self.line, self.crop, self.letterbox, self.resize):
            if size:
                return size
        return None


class PostprocessSpec(Strict):
    """How outputs become predictions: the classifier's top-k, the detector's decoder and thresholds."""

    top_k: int = Field(5, ge=1, le=1000, description="classification: classes reported per image")
    decoder: Literal["yolo", "ssd"] | None = Field(
        None, description="detection: one tensor of candidates (yolo) or boxes/scores/classes outputs (ssd); "
        "default: yolo for one output, ssd for more")
    score: float = Field(0.25, ge=0, le=1, description="detection: lowest score kept")
    iou: float = Field(0.45, gt=0, le=1, description="detection: NMS IoU threshold")
    max_detections: int = Field(100, ge=1, le=10000, description="detection: boxes kept per image")
    objectness: Literal["auto", True, False] = Field(
        "auto", description="yolo: candidates carry an objectness score (YOLOv5) or not (YOLOv8/v11)")
    strides: list[int] | None = Field(
        None, description="yolo: a raw YOLOX head without its decode, e.g. [8, 16, 32]: decoded on these grids")
    @field_validator("strides", mode="before")
    @classmethod
    def _stride_forms(cls, value: Any) -> Any:
        return [int(v) for v in _numbers(value)] if isinstance(value, str) else value

    box: Literal["cxcywh", "xyxy", "xywh", "yxyx"] | None = Field(
        None, description="box coordinates order; default cxcywh for yolo, yxyx for ssd")
    normalized: Literal["auto", True, False] = Field("auto", description="boxes in [0, 1] of the input size")
    class_offset: int = Field(0, ge=0, le=1, description="ssd: 1 when class 0 is the background")
    outputs: dict[Literal["boxes", "scores", "classes", "count"], str] = Field(
        default_factory=dict, description="ssd: the output names, where their names do not say")
    nms: bool = Field(False, description="ssd with one score per box: run NMS here too")
    metric: Literal["mAP50", "mAP50-95"] = Field("mAP50", description="detection: the primary metric")


def parse_pairs(flags: list[str], flag: str) -> dict[str, str]:
    """``["resize=224x224", "color=bgr"]`` -> a dict; a ValueError names the bad flag."""
    out: dict[str, str] = {}
    for item in flags:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE such as resize=224x224")
        if key in out:
            raise ValueError(f"{flag} {item!r}: {key} given twice")
        out[key] = value.strip()
    return out


def model_metadata(model: Any) -> dict[str, Any]:
    """What an ONNX model says of its own task: Ultralytics exports carry ``task`` (detect,
    classify), ``imgsz`` and ``names``; the result holds ``task``, ``size`` and ``classes`` where known."""
    props = {p.key: p.value for p in model.metadata_props}
    out: dict[str, Any] = {}
    task = {"detect": "detection", "classify": "classification"}.get(props.get("task", ""))
    if task:
        out["task"] = task
    for key, parse in (("imgsz", "size"), ("names", "classes")):
        if key not in props:
            continue
        try:
            value = ast.literal_eval(props[key])
        except (ValueError, SyntaxError):
            continue
        if parse == "size" and isinstance(value, (list, tuple)) and len(value) == 2:
            out["size"] = (int(value[1]), int(value[0]))  # imgsz is [h, w]
        elif parse == "size" and isinstance(value, int):
            out["size"] = (value, value)
        elif parse == "classes" and isinstance(value, dict):
            out["classes"] = [str(value[k]) for k in sorted(value)]
    return out


def metadata_preprocess(meta: dict[str, Any]) -> dict[str, Any]:
    """The preprocessing an Ultralytics export was trained with, where its metadata says enough."""
    if "size" not in meta:
        return {}
    if meta.get("task") == "detection":
        return {"letterbox": meta["size"]}
    if meta.get("task") == "classification":
        return {"resize_short": min(meta["size"]), "crop": meta["size"]}
    return {}
