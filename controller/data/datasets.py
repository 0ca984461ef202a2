"""Accuracy datasets: labelled OCR data rendered with Pillow, and seeded tensors for any model.

Every file follows the "Dataset file" layout of ``agent/protocol.py``: images are stored as
uint8 NCHW in the model's channel order (BGR, as PaddleOCR's cv2 pipeline feeds them) with the
model's ``preprocess`` declaration (``agent.tasks.preprocess``: geometry, colour order,
normalization, layout), the same one a user's image dataset carries, so the bundler and the end
to end measurement read one declaration per model; a 200-sample set stays a few megabytes. Sample ``i`` is drawn from its
own generator seeded with ``(seed, kind, i)``: a smaller set is the prefix of a bigger one,
and the same seed gives the same bytes (the zip members carry a fixed timestamp).

Kinds and what they need:

- ``ocr-det``: one float input [1, 3, H, W]; 1..4 text lines per image, boxes in input pixels.
- ``ocr-rec``: one float input [1, 3, H, W] and ``model_path`` (the charset is in its metadata).
- ``ocr-cls``: one float input [1, 3, H, W]; half of the lines rotated 180 degrees (label 1).
- ``seeded``: any inputs and ``model_path``; reference outputs of the fp32 model on CPU.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from controller.data import ocr_render

DATASET_VERSION = 3  # bump on any change to rendering or layout: the controller caches on it
KINDS = ("ocr-det", "ocr-rec", "ocr-cls", "seeded")
TASK_OF_KIND = {"ocr-det": "ocr-det", "ocr-rec": "ocr-rec", "ocr-cls": "ocr-cls", "seeded": "raw"}

DET_NORMALIZE = {"scale": 1.0 / 255.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
LINE_NORMALIZE = {"scale": 1.0 / 255.0, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
LINE_PAD = ocr_render.LINE_PAD  # what PaddleOCR pads a text line with (0 once normalized)
DET_PARAMS = {"thresh": 0.3, "box_thresh": 0.6, "unclip_ratio": 1.5, "min_size": 3, "iou": 0.5}

_KIND_SALT = {kind: n for n, kind in enumerate(KINDS)}
_ONNX_FLOAT = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64"}


def make_dataset(
    kind: str,
    inputs: dict[str, tuple[tuple[int, ...], str]],
    samples: int,
    seed: int,
    out_path: Path,
    *,
    model_path: Path | None = None,
) -> dict:
    """Render (or draw) ``samples`` samples of ``kind``, write the .npz and return its meta."""
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {', '.join(KINDS)}")
    if samples < 1:
        raise ValueError(f"a dataset needs at least 1 sample, got {samples}")
    params: dict[str, Any]
    if kind == "seeded":
        arrays, input_meta, params = _seeded(inputs, samples, seed, model_path)
    else:
        name, (height, width) = _image_input(kind, inputs)
        if kind == "ocr-det":
            images, labels = ocr_render.det_set(samples, _rngs(seed, kind), height, width)
            params = dict(DET_PARAMS)
        elif kind == "ocr-rec":
            if model_path is None:
                raise ValueError("ocr-rec needs model_path: the charset is in the model's metadata")
            images, labels = ocr_render.rec_set(samples, _rngs(seed, kind), height, width, _charset(Path(model_path)))
            params = {}
        else:
            images, labels = ocr_render.cls_set(samples, _rngs(seed, kind), height, width)
            params = {}
        arrays = {f"input:{name}": images, **labels}
        input_meta = {name: {"preprocess": ocr_preprocess(kind, width, height)}}
    meta = {
        "task": TASK_OF_KIND[kind],
        "count": samples,
        "inputs": input_meta,
        "params": params,
        "source": {"kind": kind, "seed": seed, "dataset_version": DATASET_VERSION, "made_with": _made_with(kind)},
    }
    write_npz(Path(out_path), meta, arrays)
    return meta


def ocr_preprocess(kind: str, width: int, height: int) -> dict[str, Any]:
    """The preprocessing declaration of an OCR model whose input is [1, 3, height, width]: a page
    stretched to the input (the detector), or a text line to the input height, ratio kept, padded
    on the right (the recognizer and the direction classifier: PaddleOCR's resize_norm_img); BGR,
    normalized, NCHW float32, as PaddleOCR's cv2 pipeline feeds them."""
    common = {"color": "bgr", "layout": "nchw", "dtype": "float32"}
    if kind == "ocr-det":
        return {"resize": [width, height], **DET_NORMALIZE, **common}
    if kind in ("ocr-rec", "ocr-cls"):
        return {"line": [width, height], "pad": LINE_PAD, **LINE_NORMALIZE, **common}
    raise ValueError(f"{kind!r} is not an OCR dataset kind")


def stored_image(meta: dict[str, Any], name: str, image: np.ndarray) -> np.ndarray:
    """One stored sample of image input ``name`` (uint8, in the model's layout and colour order as
    its declaration says; a v2 OCR file's ``normalize`` entry meant NCHW BGR) -> RGB uint8 [H, W, 3]."""
    spec = (meta.get("inputs") or {}).get(name) or {}
    decl = spec.get("preprocess")
    layout, color = (decl.get("layout", "nchw"), decl.get("color", "rgb")) if decl else ("nchw", "bgr")
    image = np.asarray(image)
    if image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(f"input {name!r} is not a uint8 image ({image.dtype} {list(image.shape)})")
    if layout == "nchw":
        image = image.transpose(1, 2, 0)
    if color == "bgr":
        image = image[:, :, ::-1]
    return np.ascontiguousarray(image)


def rendered(dataset: Path) -> bool:
    """Was ``dataset`` made by controller.data.datasets (so more samples like it can be made)?"""
    with np.load(dataset, allow_pickle=False) as npz:
        source = json.loads(str(npz["__meta__"])).get("source") or {}
    return source.get("kind") in KINDS and "seed" in source  # not "files": the user's images are all there is


def extend_dataset(dataset: Path, samples: int, model: Path, out: Path, seed_offset: int = 0) -> Path:
    """The dataset ``dataset`` was rendered as (same kind), with ``samples`` samples and its seed
    plus ``seed_offset``: offset 0 extends the set itself (a smaller set is a prefix of a bigger)."""
    import onnx

    with np.load(dataset, allow_pickle=False) as npz:
        meta = json.loads(str(npz["__meta__"]))
    source = meta.get("source") or {}
    if "kind" not in source or "seed" not in source:
        raise ValueError(f"{dataset} does not say how it was made (no source kind and seed)")
    if seed_offset == 0 and samples <= int(meta["count"]):
        return dataset
    proto = onnx.load(str(model), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    inputs = {}
    for v in proto.graph.input:
        if v.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in v.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)
        inputs[v.name] = (tuple([1, *dims[1:]]), str(np.dtype(dtype)))
    make_dataset(source["kind"], inputs, samples, int(source["seed"]) + seed_offset, out, model_path=model)
    return out


def count(dataset: Path) -> int:
    """How many samples a dataset file holds (read from its metadata, no array loaded)."""
    with np.load(dataset, allow_pickle=False) as npz:
        return int(json.loads(str(npz["__meta__"]))["count"])


def sample_bytes(dataset: Path) -> int:
    """Bytes of one sample's stored inputs."""
    with np.load(dataset, allow_pickle=False) as npz:
        return max(1, sum(npz[k].nbytes // max(len(npz[k]), 1) for k in npz.files if k.startswith("input:")))


def _rngs(seed: int, kind: str) -> Callable[[int], np.random.Generator]:
    """Sample i's own generator: a smaller set is the prefix of a bigger one."""
    return lambda i: np.random.default_rng((seed, _KIND_SALT[kind], i))


def write_subset(dataset_path: Path, count: int, out_path: Path) -> None:
    """Write the first ``count`` samples of a dataset, inputs only (a job's measurement inputs)."""
    with np.load(dataset_path, allow_pickle=False) as data:
        meta = json.loads(str(data["__meta__"]))
        if not 1 <= count <= meta["count"]:
            raise ValueError(f"subset of {count} samples asked from {dataset_path}, which has {meta['count']}")
        arrays = {key: data[key][:count] for key in data.files if key.startswith("input:")}
    write_npz(Path(out_path), {**meta, "count": count}, arrays)


def _made_with(kind: str) -> str:
    """The libraries whose versions decide the bytes (glyph rasters, reference outputs)."""
    if kind == "seeded":
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"
    import PIL
    from PIL import features

    return f"Pillow {PIL.__version__}, FreeType {features.version('freetype2')}"


# --- files ---------------------------------------------------------------------------------


def write_npz(path: Path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed, but byte-identical for identical data (fixed member timestamps)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    members = {"__meta__": np.array(json.dumps(meta, sort_keys=True)), **arrays}
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for key, value in members.items():
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(value), allow_pickle=False)
            with zf.open(info, "w", force_zip64=True) as fh:
                fh.write(buf.getbuffer())
    os.replace(tmp, path)  # a killed run never leaves a half file under the cached name


# --- inputs and models ---------------------------------------------------------------------


def check_inputs(kind: str, inputs: dict[str, tuple[tuple[int, ...], str]], model_path: Path | None = None) -> None:
    """Raise ValueError when ``kind`` cannot be rendered for these model inputs (and, given the
    model, for the model: an ocr-rec model must carry the charset its lines are rendered in), so
    that a dataset that does not fit is refused before anything is built or stored."""
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {', '.join(KINDS)}")
    if kind != "seeded":
        _image_input(kind, inputs)
    if kind == "ocr-rec" and model_path is not None:
        _charset(Path(model_path))


def _image_input(kind: str, inputs: dict[str, tuple[tuple[int, ...], str]]) -> tuple[str, tuple[int, int]]:
    """The one [1, 3, H, W] float input an OCR kind renders into, or a ValueError saying why not."""
    if len(inputs) != 1:
        raise ValueError(f"{kind} renders one image input, the model has {len(inputs)}: {sorted(inputs)}")
    (name, (shape, dtype)), = inputs.items()
    shape = tuple(shape)
    if len(shape) != 4 or shape[0] != 1 or shape[1] != 3 or not _is_float(dtype):
        raise ValueError(f"{kind} needs one 4-D float input [1, 3, H, W]; {name!r} is {dtype} {list(shape)}")
    # Smaller images cannot hold a line of the rendered sizes.
    low = (128, 128) if kind == "ocr-det" else (16, 32)
    if not all(isinstance(d, (int, np.integer)) and d >= m for d, m in zip(shape[2:], low)):
        raise ValueError(f"{kind} needs a fixed height >= {low[0]} and width >= {low[1]} for {name!r}, got {list(shape)}")
    return name, (int(shape[2]), int(shape[3]))


def _is_float(dtype: str) -> bool:
    return str(dtype) in _ONNX_FLOAT or np.dtype(_numpy_dtype(dtype)).kind == "f"


def _numpy_dtype(dtype: str) -> np.dtype:
    try:
        return np.dtype(_ONNX_FLOAT.get(str(dtype), str(dtype).replace("tensor(", "").rstrip(")")))
    except TypeError:
        raise ValueError(f"unknown input dtype {dtype!r}") from None


def _charset(model_path: Path) -> np.ndarray:
    """The CTC charset of a PaddleOCR rec model: metadata "character", plus the space class."""
    import onnx

    if not model_path.is_file():
        raise ValueError(f"rec model not found: {model_path}")
    model = onnx.load(str(model_path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if "character" not in props:
        raise ValueError("the model has no 'character' metadata (the charset ocr-rec renders its lines in): "
                         "not a PaddleOCR rec model")
    chars = props["character"].split("\n")
    outputs = model.graph.output
    classes = outputs[0].type.tensor_type.shape.dim[-1].dim_value if outputs and outputs[0].type.tensor_type.shape.dim else 0
    # PaddleOCR's use_space_char adds " " as the last class: blank + chars + space.
    if classes in (0, len(chars) + 2):
        chars.append(" ")
    missing = [c for c in ocr_render.ALPHABET if c not in chars]
    if missing:
        raise ValueError(f"the model's charset lacks {''.join(missing)!r}: cannot render ASCII lines for it")
    return np.array(chars)


def _seeded(
    inputs: dict[str, tuple[tuple[int, ...], str]], samples: int, seed: int, model_path: Path | None
) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    """Seeded random inputs and the fp32 source model's outputs on them (onnxruntime CPU)."""
    import onnxruntime as ort

    if model_path is None or not Path(model_path).is_file():
        raise ValueError(f"seeded needs the source model to compute reference outputs, got {model_path}")
    if not inputs:
        raise ValueError("seeded needs at least one input")
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    if sorted(names) != sorted(inputs):
        raise ValueError(f"inputs {sorted(inputs)} do not match the model's {sorted(names)}")
    dtypes = {}
    for name, (shape, dtype) in inputs.items():
        if not shape or shape[0] != 1 or not all(isinstance(d, (int, np.integer)) and d > 0 for d in shape):
            raise ValueError(f"seeded needs a fixed shape with batch 1 for {name!r}, got {list(shape)}")
        dtypes[name] = _numpy_dtype(dtype)
    drawn: dict[str, list[np.ndarray]] = {name: [] for name in inputs}
    for i in range(samples):
        rng = np.random.default_rng((seed, _KIND_SALT["seeded"], i))
        for name, (shape, _) in inputs.items():
            drawn[name].append(_random_tensor(rng, tuple(shape), dtypes[name]))
    arrays = {f"input:{name}": np.concatenate(values) for name, values in drawn.items()}
    # Fed as the model declares its inputs (the same values either way: see _random_tensor).
    feed_types = {i.name: _numpy_dtype(i.type) for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    results: list[list[np.ndarray]] = [[] for _ in outputs]
    for i in range(samples):
        feed = {n: arrays[f"input:{n}"][i : i + 1].astype(feed_types[n]) for n in inputs}
        for k, value in enumerate(session.run(outputs, feed)):
            results[k].append(np.asarray(value, dtype=np.float32))
    for name, values in zip(outputs, results):
        arrays[f"reference:{name}"] = np.stack(values)  # [N, *output shape at batch 1]
    input_meta = {name: {"normalize": None} for name in inputs}
    return arrays, input_meta, {"outputs": outputs}


def _random_tensor(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if dtype.kind == "f":
        # Stored as float32 (the contract), but exactly the values a float16 model is fed.
        return rng.standard_normal(shape).astype(dtype).astype(np.float32)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(dtype)
    if dtype.kind in "iu":
        return rng.integers(0, 10, size=shape).astype(dtype)  # small: safe as ids or indices
    raise ValueError(f"seeded cannot draw inputs of dtype {dtype}")
