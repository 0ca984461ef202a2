"""Reader of the dataset / measurement-inputs ``.npz`` format described in agent.protocol.

The file is read once, whole, with ``allow_pickle=False``: an NpzFile would decompress an
array again on every access, and the accuracy loop asks for one sample at a time.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from agent.protocol import INPUT_PREFIX, META_KEY
from agent.tasks.base import known_task, task_names
from agent.tasks.preprocess import to_tensor


class DatasetError(ValueError):
    """A dataset file that does not follow the protocol's layout."""


class Dataset:
    """Inputs, labels and meta of one dataset file; ``batch`` builds model-ready tensors."""

    def __init__(self, path: str, meta: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> None:
        self.path = path
        self.meta = meta
        self.task: str = str(meta.get("task"))
        self.params: Dict[str, Any] = dict(meta.get("params") or {})
        specs: Dict[str, Any] = dict(meta.get("inputs") or {})
        # Inputs in the order the meta lists them, then any input array it forgot to list.
        names = list(specs)
        names += sorted(k[len(INPUT_PREFIX):] for k in arrays
                        if k.startswith(INPUT_PREFIX) and k[len(INPUT_PREFIX):] not in specs)
        self.input_names: List[str] = names
        self._inputs: Dict[str, np.ndarray] = {}
        self._normalize: Dict[str, Optional[Dict[str, Any]]] = {}
        self._preprocess: Dict[str, Optional[Dict[str, Any]]] = {}
        for name in names:
            key = INPUT_PREFIX + name
            if key not in arrays:
                raise DatasetError("%s: meta lists input %r but the file has no %r" % (path, name, key))
            self._inputs[name] = arrays[key]
            spec = specs.get(name) or {}
            self._normalize[name] = spec.get("normalize")
            self._preprocess[name] = spec.get("preprocess")
        self.labels: Dict[str, np.ndarray] = {
            k: v for k, v in arrays.items() if k != META_KEY and not k.startswith(INPUT_PREFIX)
        }
        self.count: int = int(meta.get("count", self._first_len()))
        for name, array in self._inputs.items():
            if array.ndim == 0 or array.shape[0] != self.count:
                raise DatasetError(
                    "%s: input %r has shape %s, but count is %d"
                    % (path, name, list(array.shape), self.count)
                )

    def _first_len(self) -> int:
        for array in self._inputs.values():
            return int(array.shape[0]) if array.ndim else 0
        return 0

    def __len__(self) -> int:
        return self.count

    def raw(self, name: str) -> np.ndarray:
        """The stored array of input ``name``, before normalization."""
        return self._inputs[name]

    def batch(self, indices: Sequence[int]) -> Dict[str, np.ndarray]:
        """Model-ready tensors for the samples ``indices``, stacked along axis 0."""
        idx = np.asarray(list(indices), dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.count):
            raise IndexError("%s: sample index out of range 0..%d" % (self.path, self.count - 1))
        out: Dict[str, np.ndarray] = {}
        for name in self.input_names:
            decl = self._preprocess[name]
            if decl is not None:  # images the controller preprocessed: normalized, laid out, typed as declared
                out[name] = to_tensor(self._inputs[name][idx], decl)
            else:
                out[name] = _to_tensor(self._inputs[name][idx], self._normalize[name], name)
        return out


def _to_tensor(x: np.ndarray, normalize: Optional[Dict[str, Any]], name: str) -> np.ndarray:
    """(x * scale - mean[c]) / std[c] over channel axis 1 when asked; else float32 or int64."""
    if normalize:
        channels = x.shape[1] if x.ndim > 1 else 1
        scale = float(normalize.get("scale", 1.0))
        mean = np.asarray(normalize.get("mean", [0.0] * channels), dtype=np.float32)
        std = np.asarray(normalize.get("std", [1.0] * channels), dtype=np.float32)
        if mean.size not in (1, channels) or std.size not in (1, channels):
            raise DatasetError(
                "input %r has %d channels but normalize has %d means and %d stds"
                % (name, channels, mean.size, std.size)
            )
        shape = [1, -1] + [1] * max(x.ndim - 2, 0)
        y = x.astype(np.float32) * np.float32(scale)
        y -= mean.reshape(shape)
        y /= std.reshape(shape)
        return np.ascontiguousarray(y, dtype=np.float32)
    if np.issubdtype(x.dtype, np.integer):
        return np.ascontiguousarray(x, dtype=np.int64)
    return np.ascontiguousarray(x, dtype=np.float32)


def load_dataset(path: str, require_task: bool = True) -> Dataset:
    """Read a dataset .npz; raises DatasetError when it does not follow the protocol.

    ``require_task=False`` reads a measurement-inputs file, whose task does not matter.
    """
    with np.load(path, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    if META_KEY not in arrays:
        raise DatasetError("%s is not a dataset file: it has no %r array" % (path, META_KEY))
    try:
        meta = json.loads(str(arrays[META_KEY][()]))
    except ValueError as exc:
        raise DatasetError("%s: %s is not JSON: %s" % (path, META_KEY, exc)) from exc
    if not isinstance(meta, dict):
        raise DatasetError("%s: %s must hold a JSON object" % (path, META_KEY))
    if require_task and not known_task(str(meta.get("task"))):
        raise DatasetError(
            "%s: task %r is not one of %s" % (path, meta.get("task"), ", ".join(task_names()))
        )
    return Dataset(path, meta, arrays)
