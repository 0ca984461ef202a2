"""The images a job's end-to-end measurement decodes: a few evaluation images of the model's task,
as image files, packed in one tar (the job's ``images`` artifact, see ``agent.protocol``).

An engine benchmark feeds tensors already in the model's size; an application starts from a file.
So the files here are what an application would get:

- a user's own dataset: the first evaluation files of the split, the original files themselves
  (their real size and format: decoding a 12-megapixel JPEG is exactly what an engine benchmark
  leaves out);
- a rendered OCR dataset: the first evaluation samples as PNG, the stored uint8 images with their
  layout and colour order undone (an ocr-det page is the model's 640x640 input size);
- seeded tensors (a raw model): none, there is no image to decode.

The tar is deterministic (sorted members, mtime 0, mode 0644, no owner) and cached by what
decides its bytes, so a second run pushes nothing new to a board.
"""

from __future__ import annotations

import io
import tarfile
from functools import partial
from pathlib import Path
from typing import Any, Callable

from controller.build.cache import Cache, key_of
from controller.build.task_data import TaskData
from controller.config.spec import LoadedSpec, ModelSpec
from controller.data import imagesets

E2E_IMAGES = 8  # enough variety for a median, few enough to push with every model
IMAGES_VERSION = 1  # bump on any change to which files are chosen or how they are packed
RENDERED_TASKS = ("ocr-det", "ocr-rec", "ocr-cls")


def images_artifact(loaded: LoadedSpec, m: ModelSpec, task: str, dataset: Path, dataset_sha256: str,
                    user: TaskData | None, cache: Cache) -> tuple[Path, dict[str, Any]] | None:
    """(path, meta) of model ``m``'s images tar in the cache, made on a miss; None when its task
    takes no image (seeded tensors)."""
    if user is not None:
        key = key_of(kind="e2e-images", v=IMAGES_VERSION, n=E2E_IMAGES, split=user.split)
        make: Callable[[], list[tuple[str, bytes]]] = partial(user_files, loaded, m, user.split)
    elif task in RENDERED_TASKS:
        import PIL

        key = key_of(kind="e2e-images", v=IMAGES_VERSION, n=E2E_IMAGES, dataset=dataset_sha256,
                     pillow=PIL.__version__)
        make = partial(rendered_files, dataset)
    else:
        return None
    hit = cache.lookup("e2e-images", key, ".tar")
    if hit is not None:
        return hit
    members = make()  # read only on a miss
    meta = {"images": [{"name": name, "bytes": len(data)} for name, data in members]}
    return cache.store("e2e-images", key, ".tar", pack(members), meta), meta


def user_files(loaded: LoadedSpec, m: ModelSpec, split: dict[str, Any]) -> list[tuple[str, bytes]]:
    """The first evaluation files of ``m``'s own dataset, as ``controller.build.task_data`` split it
    (same reading, same seeded split), under plain names that keep their order and suffix."""
    labels = None
    if m.labels is not None:
        labels = Path(m.labels).expanduser()
        labels = labels if labels.is_absolute() else loaded.base / labels
    images = m.dataset.resolve(loaded.base, "images") if m.dataset.images else None
    task = m.task_name if not m.task_name.endswith(".py") else "custom"
    data = imagesets.read(m.dataset.resolve(loaded.base, "path"), task, images, labels)
    # The split's own calibration count: split() takes at most that many, so it is the same split.
    _cal, evaluation = imagesets.split(len(data.files), int(split["calibration"]), m.dataset.samples,
                                       int(split["seed"]))
    files = [data.files[i] for i in evaluation[:E2E_IMAGES]]
    return [(f"{k:02d}{f.suffix.lower()}", f.read_bytes()) for k, f in enumerate(files)]


def rendered_files(dataset: Path) -> list[tuple[str, bytes]]:
    """The first samples of a rendered dataset as PNG files of the stored pixels."""
    import json

    import numpy as np
    from PIL import Image

    from controller.data.datasets import stored_image

    with np.load(dataset, allow_pickle=False) as npz:
        meta = json.loads(str(npz["__meta__"]))
        name = next(iter(meta.get("inputs") or {}))
        stored = npz[f"input:{name}"][:E2E_IMAGES]
    out = []
    for k, image in enumerate(stored):
        buf = io.BytesIO()
        Image.fromarray(stored_image(meta, name, image), "RGB").save(buf, format="PNG")
        out.append((f"{k:02d}.png", buf.getvalue()))
    return out


def pack(members: list[tuple[str, bytes]]) -> bytes:
    """A tar of plain members, the same bytes for the same files: sorted, mtime 0, mode 0644, no owner."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in sorted(members):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
