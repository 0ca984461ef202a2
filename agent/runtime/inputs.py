"""What a caller gives the runtime: image files or their bytes, or ``.npz`` files of input tensors.

A caller's input that cannot be read is an ``InputError`` naming it (the file, or "input N" for
bytes), the one kind of failure a caller fixes by sending something else: the CLI exits 2 on it
and the server answers 400.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Dict, Union

if TYPE_CHECKING:  # numpy is imported where it is used: `check` must run, and say so, without it
    import numpy as np

Source = Union[str, bytes, bytearray, memoryview]


class InputError(ValueError):
    """An input the runtime cannot read; the message names it."""


def describe(source: Source, index: int) -> str:
    """How an error names an input: its path, or its position for bytes."""
    return str(source) if isinstance(source, str) else "input %d" % (index + 1)


def _read(source: Source, index: int) -> bytes:
    if not isinstance(source, str):
        return bytes(source)
    try:
        with open(source, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise InputError("%s: no such file" % source) from None
    except IsADirectoryError:
        raise InputError("%s: a directory, not an image" % source) from None
    except OSError as exc:
        raise InputError("%s: cannot be read (%s)" % (source, exc.strerror or exc)) from None


def decode(source: Source, index: int = 0) -> np.ndarray:
    """An image (path or bytes) -> RGB uint8 [H, W, 3], upright as its EXIF orientation says."""
    from agent.tasks.preprocess import decode_image

    data = _read(source, index)
    if not data:
        raise InputError("%s: empty, not an image" % describe(source, index))
    try:
        image = decode_image(data)
    except ImportError:
        raise InputError("no image decoder: pip install Pillow") from None
    except Exception as exc:  # Pillow raises several types for bad bytes; each is the input's fault
        why = "not a format Pillow reads" if type(exc).__name__ == "UnidentifiedImageError" else (
            str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        raise InputError("%s: not an image this runtime can decode (%s)" % (describe(source, index), why)) from None
    if image.ndim != 3 or min(image.shape[:2]) < 1:
        raise InputError("%s: an image without pixels" % describe(source, index))
    return image


def load_tensors(source: Source, index: int = 0) -> Dict[str, np.ndarray]:
    """An ``.npz`` of named input tensors (path or bytes) -> {name: array}."""
    import numpy as np

    data = _read(source, index)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {str(k): np.asarray(npz[k]) for k in npz.files}
    except Exception as exc:  # not a zip, a pickled object array...: the input's fault
        raise InputError("%s: not an .npz file of input tensors (%s)" % (describe(source, index), exc)) from None
