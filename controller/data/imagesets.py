"""The user's own labelled images: read, checked, decoded and preprocessed once, split, cached.

Three forms are read:

- classification, an image folder: one sub-folder per class (the sorted sub-folder names are the
  class order, torchvision's ImageFolder convention, unless a labels file gives it);
- classification, a CSV file with a header holding ``path`` and ``label`` (paths relative to the
  CSV's folder);
- detection, a COCO JSON file (``images``, ``annotations``, ``categories``) and its image folder.

JPEG and PNG of any size. Everything that does not fit (an empty folder, a class folder with no
images, a CSV without its column, an image that will not decode, an annotation naming a missing
image, a box outside its image, more or fewer classes than the model scores) is a ``DataError``:
one line naming the file and what is wrong, raised before any run row is written.

The images are split with a seeded permutation: the first ``calibration`` samples calibrate int8,
the next ``samples`` at most are the evaluation set, so the two never overlap. Both are written as
dataset files (``agent.protocol``): uint8 images in the model's size, colour order and layout, the
declaration that makes them tensors, and the labels. They are cached by a content hash of every
image file, the labels, the declaration and the split, so a second run decodes nothing.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from controller.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
IMAGESET_VERSION = 1  # bump on any change to how files become arrays: the cache keys on it


class DataError(UserError):
    """A dataset that does not fit the model or is not what its form says."""


@dataclass
class ImageSet:
    """What was read: per sample its file and label (a class index, or its COCO image), the class names."""

    source: Path
    task: str
    files: list[Path]
    classes: list[str]
    labels: list[int] = field(default_factory=list)  # classification: class index per file
    label_text: list[str] = field(default_factory=list)  # a user task: the label as written
    coco: dict[str, Any] = field(default_factory=dict)  # detection: image records by file index, annotations
    category_ids: list[int] = field(default_factory=list)  # detection: COCO category id of each class index


@dataclass
class Split:
    evaluation: Path
    calibration: Path | None
    meta: dict[str, Any]  # what the run records: seed, counts, content hash


# --- reading --------------------------------------------------------------------------------

def read(path: Path, task: str, images: Path | None = None, labels: Path | None = None) -> ImageSet:
    """Read the dataset at ``path`` for ``task`` (classification, detection, or a user's own)."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if task == "detection":
        if path.suffix.lower() != ".json" or not path.is_file():
            raise DataError(f"{path}: a detection dataset is a COCO JSON file (with its image folder)")
        return _read_coco(path, images or _coco_images(path))
    if path.is_dir():
        found = _read_folder(path)
    elif path.suffix.lower() == ".csv":
        found = _read_csv(path)
    else:
        raise DataError(f"{path}: a classification dataset is a folder with one sub-folder per class, "
                        "or a CSV file of path,label")
    files, text = found
    if task != "classification":  # a user's own task scores the label text itself
        return ImageSet(path, task, files, sorted(set(text)), label_text=text)
    classes = _read_labels(labels) if labels else sorted(set(text))
    unknown = sorted(set(text) - set(classes))
    if unknown:
        raise DataError(f"{labels}: class {unknown[0]!r} of {path} is not in the labels file "
                        f"({len(unknown)} class{'es' if len(unknown) > 1 else ''} missing)")
    index = {c: i for i, c in enumerate(classes)}
    return ImageSet(path, task, files, classes, labels=[index[t] for t in text], label_text=text)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read_folder(path: Path) -> tuple[list[Path], list[str]]:
    classes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        loose = _images_in(path)
        lie = f"{len(loose)} image{'s lie' if len(loose) > 1 else ' lies'} loose"
        raise DataError(f"{path}: no class sub-folders" + (f" ({lie} in it: put each "
                        "class's images in a sub-folder named after the class)" if loose else " and no images"))
    files: list[Path] = []
    text: list[str] = []
    for folder in classes:
        found = _images_in(folder)
        if not found:
            raise DataError(f"{folder}: class folder {folder.name!r} has no JPEG or PNG images")
        files += found
        text += [folder.name] * len(found)
    return files, text


def _read_csv(path: Path) -> tuple[list[Path], list[str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read it as a UTF-8 CSV file: {exc}") from None
    if not rows:
        raise DataError(f"{path}: empty file; expected a header line path,label and one line per image")
    header = [h.strip().lower() for h in rows[0]]
    for column in ("path", "label"):
        if column not in header:
            raise DataError(f"{path}: no {column!r} column in the header {rows[0]!r}; expected path,label")
    ip, il = header.index("path"), header.index("label")
    files: list[Path] = []
    text: list[str] = []
    for n, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(ip, il):
            raise DataError(f"{path}: line {n} has {len(row)} fields, the header {len(header)}")
        image, label = row[ip].strip(), row[il].strip()
        if not label:
            raise DataError(f"{path}: line {n}: empty label for {image!r}")
        file = (path.parent / image) if not Path(image).is_absolute() else Path(image)
        if not file.is_file():
            raise DataError(f"{path}: line {n}: image {image!r} does not exist")
        files.append(file)
        text.append(label)
    if not files:
        raise DataError(f"{path}: no images listed (only the header)")
    return files, text


def _read_labels(path: Path) -> list[str]:
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the labels file: {exc}") from None
    names = [line for line in lines if line]
    if not names:
        raise DataError(f"{path}: the labels file names no class (one class name per line)")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"{path}: class {twice[0]!r} is named twice")
    return names


def _coco_images(path: Path) -> Path:
    """The image folder of a COCO file not told otherwise: its own folder, or ``images/`` beside it."""
    try:
        first = json.loads(path.read_text(encoding="utf-8-sig"))["images"][0]["file_name"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, IndexError, TypeError):
        return path.parent  # _read_coco says what is wrong with the file
    beside = path.parent / "images"
    return beside if not (path.parent / str(first)).is_file() and (beside / str(first)).is_file() else path.parent


def _read_coco(path: Path, folder: Path) -> ImageSet:
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: not a JSON file: {exc}") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}: a COCO file is a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise DataError(f"{path}: no {key!r} list; a COCO file has images, annotations and categories")
    if not doc["images"]:
        raise DataError(f"{path}: 'images' is empty")
    if not doc["categories"]:
        raise DataError(f"{path}: 'categories' is empty")
    try:
        categories = sorted(doc["categories"], key=lambda c: int(c["id"]))
        category_ids = [int(c["id"]) for c in categories]
        classes = [str(c["name"]) for c in categories]
        images = {int(im["id"]): im for im in doc["images"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: a category needs an id and a name, an image an id: {type(exc).__name__} {exc}") from None
    files: list[Path] = []
    order: dict[int, int] = {}
    for image_id, im in images.items():
        name = im.get("file_name")
        if not isinstance(name, str) or not name:
            raise DataError(f"{path}: image {image_id} has no file_name")
        file = folder / name
        if not file.is_file():
            raise DataError(f"{path}: image {image_id}: file {name!r} does not exist in {folder}")
        for key in ("width", "height"):
            if not isinstance(im.get(key), int) or im[key] < 1:
                raise DataError(f"{path}: image {image_id}: {key} {im.get(key)!r} is not a positive whole number")
        order[image_id] = len(files)
        files.append(file)
    known = set(category_ids)
    for ann in doc["annotations"]:
        aid = ann.get("id", "?")
        if ann.get("image_id") not in images:
            raise DataError(f"{path}: annotation {aid} names image {ann.get('image_id')!r}, which is not in 'images'")
        if ann.get("category_id") not in known:
            raise DataError(f"{path}: annotation {aid} names category {ann.get('category_id')!r}, "
                            "which is not in 'categories'")
        box = ann.get("bbox")
        im = images[ann["image_id"]]
        if (not isinstance(box, list) or len(box) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
            raise DataError(f"{path}: annotation {aid}: bbox {box!r} is not [x, y, width, height]")
        x, y, w, h = box
        # Half a pixel of slack: exporters round box edges to the pixel grid.
        if w <= 0 or h <= 0 or x < -0.5 or y < -0.5 or x + w > im["width"] + 0.5 or y + h > im["height"] + 0.5:
            raise DataError(f"{path}: annotation {aid}: box {box} lies outside image {ann['image_id']} "
                            f"({im['width']}x{im['height']})")
    return ImageSet(path, "detection", files, classes, category_ids=category_ids,
                    coco={"images": [images[i] for i in order], "annotations": doc["annotations"]})


# --- checking against the model ---------------------------------------------------------------

def check_fits(data: ImageSet, outputs: list[list[int | None]], params: dict[str, Any]) -> None:
    """Refuse a dataset whose class count the model's output contradicts."""
    n = len(data.classes)
    if data.task == "detection" and params.get("decoder") == "yolo" and len(outputs) == 1:
        dims = [d for d in outputs[0][1:] if isinstance(d, int)]
        # One candidate axis and one of box values + (objectness) + class scores: 4 + C or 5 + C.
        if len(dims) == 2 and not {4 + n, 5 + n} & set(dims):
            raise DataError(f"{data.source}: {n} categories ({_few(data.classes)}), but the model's output "
                            f"{outputs[0]} holds no row of 4 + {n} or 5 + {n} values: wrong number of classes")
    if data.task == "classification" and outputs and outputs[0] and isinstance(outputs[0][-1], int):
        scores = outputs[0][-1]
        if scores != n:
            raise DataError(f"{data.source}: {n} classes ({_few(data.classes)}), but the model scores {scores}: "
                            "wrong number of classes")


def _few(names: list[str]) -> str:
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


# --- decoding, preprocessing, splitting -------------------------------------------------------

def content_hash(data: ImageSet) -> str:
    """sha256 over every file's bytes and relative name, the labels and the annotations."""
    digest = hashlib.sha256()
    for file in data.files:
        digest.update(str(file.relative_to(data.source.parent) if file.is_relative_to(data.source.parent)
                          else file).encode())
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    digest.update(json.dumps([data.classes, data.labels, data.label_text, data.coco], sort_keys=True,
                             default=str).encode())
    return digest.hexdigest()


def split(count: int, calibration: int, samples: int, seed: int) -> tuple[list[int], list[int]]:
    """(calibration indices, evaluation indices): a seeded permutation, never overlapping. At
    most half the images calibrate, so a small set still has an evaluation split."""
    if count < 2:
        raise ValueError("at least 2 images are needed: one to calibrate, one to evaluate")
    order = np.random.default_rng(seed).permutation(count).tolist()
    n_cal = min(calibration, count // 2)
    return sorted(order[:n_cal]), sorted(order[n_cal:n_cal + samples])


def decode(file: Path) -> np.ndarray:
    from PIL import UnidentifiedImageError

    from agent.tasks.preprocess import decode_image

    try:
        return decode_image(str(file))
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DataError(f"{file}: cannot decode the image: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def write_split(data: ImageSet, indices: list[int], decl: dict[str, Any], input_name: str, task_params: dict[str, Any],
                out: Path, source: dict[str, Any], preprocess_fn: Any = None) -> None:
    """Decode and preprocess the images ``indices`` and write them, with their labels, as one dataset file."""
    from agent.tasks.preprocess import geometry
    from controller.data.datasets import write_npz

    images: list[np.ndarray] = []
    geos: list[Any] = []
    sizes: list[tuple[int, int]] = []
    for i in indices:
        image = decode(data.files[i])
        h, w = image.shape[:2]
        if data.task == "detection":
            want = data.coco["images"][i]
            if (want["width"], want["height"]) != (w, h):
                raise DataError(f"{data.files[i]}: the image is {w}x{h}, the COCO file says {want['width']}x{want['height']}")
        if preprocess_fn is not None:  # a user's own task preprocesses itself
            arr, geo = np.asarray(preprocess_fn(image)), (1.0, 1.0, 0.0, 0.0)
            arr = arr[0] if arr.ndim >= 1 and arr.shape[0] == 1 else arr
        else:
            arr, geo = geometry(image, decl)
        if images and arr.shape != images[0].shape:
            raise DataError(f"{data.files[i]}: preprocessed to {list(arr.shape)}, other images to "
                            f"{list(images[0].shape)}: declare a fixed size (resize, letterbox or crop)")
        images.append(arr)
        geos.append(geo)
        sizes.append((w, h))
    arrays: dict[str, np.ndarray] = {f"input:{input_name}": np.stack(images)}
    if data.task == "classification":
        arrays["label"] = np.asarray([data.labels[i] for i in indices], dtype=np.int64)
    elif data.task == "detection":
        arrays.update(_detection_labels(data, indices))
        arrays["geometry"] = np.asarray(geos, dtype=np.float64)
        arrays["image_size"] = np.asarray(sizes, dtype=np.int64)
    else:
        arrays["label_text"] = np.asarray([data.label_text[i] for i in indices], dtype=np.str_)
    input_meta = {input_name: {"normalize": None} if preprocess_fn is not None else {"preprocess": decl}}
    meta = {"task": "custom" if data.task not in ("classification", "detection") else data.task,
            "count": len(indices), "inputs": input_meta, "params": task_params, "source": source}
    write_npz(out, meta, arrays)


def _detection_labels(data: ImageSet, indices: list[int]) -> dict[str, np.ndarray]:
    """Ground truth in original pixels: (sample, x0, y0, x1, y1, class), with COCO's own ids and flags."""
    position = {int(data.coco["images"][i]["id"]): k for k, i in enumerate(indices)}
    cls = {cid: k for k, cid in enumerate(data.category_ids)}
    rows, crowd, area = [], [], []
    for ann in data.coco["annotations"]:
        k = position.get(int(ann["image_id"]))
        if k is None:
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        rows.append([k, x, y, x + w, y + h, cls[ann["category_id"]]])
        crowd.append(int(ann.get("iscrowd", 0)))
        area.append(float(ann.get("area", w * h)))
    return {"boxes": np.asarray(rows, dtype=np.float64).reshape(-1, 6),
            "iscrowd": np.asarray(crowd, dtype=np.int64), "area": np.asarray(area, dtype=np.float64),
            "image_id": np.asarray([int(data.coco["images"][i]["id"]) for i in indices], dtype=np.int64),
            "category_id": np.asarray(data.category_ids, dtype=np.int64)}
