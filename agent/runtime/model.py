"""One model of a bundle loaded in its engine: decoded images (or input tensors) in, the task's
JSON-able results out, each with the milliseconds its preprocessing, inference and
postprocessing took.

The preprocessing is the declaration the farm measured with (``agent.tasks.preprocess``) and the
postprocessing the task's own (``agent.tasks``), so a result is what the accuracy run scored.
Images go through the engine together, up to ``MAX_BATCH`` per call, when the model's batch
dimension is dynamic; a batched call's time is shared equally by its images.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

STAGES = ("decode", "preprocess", "infer", "postprocess")
# Enough to amortise a call, few enough that a batch of page-sized tensors stays small in memory.
MAX_BATCH = 16

Timing = Dict[str, Any]  # the stages in ms, and where useful "models": {name: {stage: ms}}


def new_timing() -> Timing:
    return {k: 0.0 for k in STAGES}


def finish_timing(timing: Timing) -> Dict[str, Any]:
    """The stage times rounded, with their total (extra keys, e.g. per-model detail, kept)."""
    out: Dict[str, Any] = {k: round(float(timing.get(k, 0.0)), 3) for k in STAGES}
    out["total"] = round(sum(float(timing.get(k, 0.0)) for k in STAGES), 3)
    for key, value in timing.items():
        if key not in out:
            out[key] = value
    return out


def elapsed_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def corners(box: Sequence[float]) -> List[List[float]]:
    """(x0, y0, x1, y1) -> its four corners, clockwise from the top left, as PaddleOCR gives boxes."""
    x0, y0, x1, y1 = (round(float(v), 1) for v in box)
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def _unpacked(path: str) -> str:
    """The file the engine loads: a packed artifact (.tar) is unpacked beside it, or, in a folder
    this process may not write (a read-only release), in a temporary one."""
    from agent.artifacts import unpack_model

    try:
        return unpack_model(path)
    except PermissionError:
        copy = os.path.join(tempfile.mkdtemp(prefix="edgefarm-bundle-"), os.path.basename(path))
        shutil.copyfile(path, copy)
        return unpack_model(copy)


class LoadedModel:
    """A bundle's model (one entry of ``manifest["models"]``), loaded by ``load``."""

    def __init__(self, directory: str, spec: Dict[str, Any]) -> None:
        self.directory = directory
        self.spec = spec
        self.name = str(spec["name"])
        self.task_name = str(spec["task"])
        self.decl: Optional[Dict[str, Any]] = spec.get("preprocess")
        self.engine: Any = None
        self.task: Any = None
        self.input_name = ""
        self.dynamic_batch = False
        self._custom_preprocess: Optional[Callable[[np.ndarray], Any]] = None

    @property
    def takes_images(self) -> bool:
        """Image in (every task but raw), or an .npz of input tensors (raw)."""
        return self.task_name != "raw"

    def load(self) -> None:
        if self.engine is not None:
            return
        from agent.engines import get_engine
        from agent.tasks import get_task

        params = dict(self.spec.get("task_params") or {})
        if self.task_name == "custom" and params.get("module_path"):
            params["module_path"] = os.path.join(self.directory, str(params["module_path"]))
        self.task = get_task(self.task_name, params)
        if self.task_name == "custom":
            self._custom_preprocess = getattr(self.task.module, "preprocess", None)
        if self.takes_images and self.decl is None and self._custom_preprocess is None:
            raise ValueError("model %s: an image task without a preprocess declaration in manifest.json" % self.name)
        engine = get_engine(str(self.spec["engine"]))
        engine.load(_unpacked(os.path.join(self.directory, str(self.spec["artifact"]["file"]))),
                    dict(self.spec.get("options") or {}))
        names = engine.input_names()
        if self.takes_images and len(names) != 1:
            engine.close()
            raise ValueError("model %s has %d inputs (%s); an image task feeds one"
                             % (self.name, len(names), ", ".join(names)))
        self.input_name = names[0]
        first = engine.input_shapes().get(self.input_name) or []
        self.dynamic_batch = bool(first) and first[0] is None
        self.engine = engine

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        self.engine = None

    # Images -------------------------------------------------------------------------------------

    def run_images(self, images: List[np.ndarray]) -> List[Dict[str, Any]]:
        """Decoded RGB images [H, W, 3] -> one result each, with "timing_ms" (decode left at 0)."""
        from agent.tasks.preprocess import geometry

        timings = [new_timing() for _ in images]
        prepared: List[Tuple[np.ndarray, Any]] = []
        for i, image in enumerate(images):
            start = time.perf_counter()
            if self._custom_preprocess is not None:
                prepared.append((np.asarray(self._custom_preprocess(image)), None))
            else:
                assert self.decl is not None
                prepared.append(geometry(image, self.decl))
            timings[i]["preprocess"] += elapsed_ms(start)
        outputs = self._infer([x for x, _ in prepared], timings, tensors=self._custom_preprocess is not None)
        results = []
        for i, image in enumerate(images):
            start = time.perf_counter()
            result = self._postprocess(outputs[i], image.shape[1], image.shape[0], prepared[i][1])
            timings[i]["postprocess"] += elapsed_ms(start)
            result["timing_ms"] = timings[i]
            results.append(result)
        return results

    def _infer(self, items: List[np.ndarray], timings: List[Timing], tensors: bool) -> List[List[np.ndarray]]:
        """Each item's outputs, batching items of one shape where the batch is dynamic."""
        from agent.tasks.preprocess import to_tensor

        out: List[List[np.ndarray]] = [[] for _ in items]
        groups: Dict[Tuple[Any, ...], List[int]] = {}
        for i, x in enumerate(items):
            groups.setdefault((x.shape, str(x.dtype)), []).append(i)
        size = MAX_BATCH if self.dynamic_batch else 1
        chunks = [idx[k:k + size] for idx in groups.values() for k in range(0, len(idx), size)]
        while chunks:
            chunk = chunks.pop(0)
            start = time.perf_counter()
            if tensors:  # a custom preprocess gives the input at batch 1 already
                batch = np.concatenate([items[i] for i in chunk]) if len(chunk) > 1 else items[chunk[0]]
            else:
                assert self.decl is not None
                batch = to_tensor(np.stack([items[i] for i in chunk]), self.decl)
            pre = elapsed_ms(start)
            start = time.perf_counter()
            outputs = self.engine.run({self.input_name: batch})
            infer = elapsed_ms(start)
            n = len(chunk)
            if n > 1 and any(np.ndim(o) == 0 or np.shape(o)[0] != n for o in outputs):
                # An output without the batch on its first axis cannot be split: one at a time.
                self.dynamic_batch = False
                chunks[:0] = [[i] for i in chunk]
                continue
            for j, i in enumerate(chunk):
                out[i] = [np.asarray(o)[j:j + 1] for o in outputs] if n > 1 else list(outputs)
                timings[i]["preprocess"] += pre / n
                timings[i]["infer"] += infer / n
        return out

    def _postprocess(self, outputs: List[np.ndarray], width: int, height: int, geo: Any) -> Dict[str, Any]:
        sample: Dict[str, Any] = {"width": width, "height": height, "size": (width, height)}
        if geo is not None:
            sample["geometry"] = geo
        result = self.task.postprocess(outputs, sample)
        if self.task_name == "ocr-det":  # DB boxes come in input pixels: put them on the image
            from agent.tasks.preprocess import to_original

            boxes = np.asarray(result["boxes"], dtype=np.float64).reshape(-1, 4)
            if geo is not None:
                boxes = to_original(boxes, geo, width, height)
            return {"boxes": [corners(b) for b in boxes.tolist()]}
        return result if isinstance(result, dict) else {"prediction": result}

    # Tensors (raw) ------------------------------------------------------------------------------

    def run_tensors(self, feeds: List[Dict[str, np.ndarray]], names: List[str]) -> List[Dict[str, Any]]:
        """Input tensors by name (one .npz each) -> a summary of each output: name, shape, mean, max."""
        wanted = self.engine.input_names()
        params = self.task.params
        out_names = [str(n) for n in (params.get("output_names") or params.get("outputs") or [])]
        results = []
        for feed, what in zip(feeds, names):
            missing = [n for n in wanted if n not in feed]
            if missing:
                from agent.runtime.inputs import InputError

                raise InputError("%s: the model's input(s) %s are not in it (it has %s)"
                                 % (what, ", ".join(missing), ", ".join(sorted(feed)) or "nothing"))
            timing = new_timing()
            start = time.perf_counter()
            outputs = self.engine.run({n: feed[n] for n in wanted})
            timing["infer"] = elapsed_ms(start)
            start = time.perf_counter()
            summary = []
            for k, o in enumerate(outputs):
                a = np.asarray(o, dtype=np.float64)
                summary.append({"name": out_names[k] if k < len(out_names) else "output%d" % k,
                                "shape": [int(d) for d in np.shape(o)],
                                "mean": float(a.mean()) if a.size else 0.0, "max": float(a.max()) if a.size else 0.0})
            timing["postprocess"] = elapsed_ms(start)
            results.append({"outputs": summary, "timing_ms": timing})
        return results
