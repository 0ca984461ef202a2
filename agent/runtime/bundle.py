"""A bundle folder: its manifest checked, its requirements checked, its models loaded and run.

::

    b = Bundle.open(directory, verify=True)  # BundleError (one line naming the file) if edited
    problems = b.check()                     # unmet requirements, one line each; [] = ok
    b.load()                                 # every model in its engine (idempotent)
    results = b.predict(["page.png"])        # one JSON-able result per input
    b.close()

Verification recomputes the bundle id (the sha256 of the manifest's canonical JSON without the
id) and every file's sha256; a file in the folder that the manifest does not list is refused too,
except what the runtime itself writes there (a packed artifact's ``<file>.d`` unpack folder, a
custom task module's ``__pycache__``). Standard library only until ``load``: ``open`` and
``check`` work on a board that lacks numpy, and say so.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Dict, List, Optional, Sequence

from agent.protocol import sha256_file

MANIFEST = "manifest.json"
FORMAT = 1
PIPELINES = ("ocr",)


class BundleError(Exception):
    """The bundle cannot be used as it is (edited, damaged, incomplete); one line naming why."""


def bundle_id(manifest: Dict[str, Any]) -> str:
    """The id a manifest's content gives it: sha256 of its canonical JSON without ``bundle_id``
    (sorted keys, no spaces, ASCII), first 16 hex digits."""
    body = {k: v for k, v in manifest.items() if k != "bundle_id"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _safe_relative(name: str) -> bool:
    parts = name.split("/")
    return bool(name) and not name.startswith("/") and "\\" not in name and all(p not in ("", ".", "..") for p in parts)


def _read_manifest(directory: str) -> Dict[str, Any]:
    path = os.path.join(directory, MANIFEST)
    if not os.path.isdir(directory):
        raise BundleError("%s: no such bundle folder" % directory)
    try:
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except FileNotFoundError:
        raise BundleError("%s: no manifest.json: not a bundle folder" % directory) from None
    except (OSError, ValueError) as exc:
        raise BundleError("%s: unreadable (%s)" % (path, exc)) from None
    if not isinstance(manifest, dict):
        raise BundleError("%s: not a JSON object" % path)
    if manifest.get("format") != FORMAT:
        raise BundleError("%s: format %r; this runtime reads format %d bundles" % (path, manifest.get("format"), FORMAT))
    models = manifest.get("models")
    if not isinstance(models, list) or not models:
        raise BundleError("%s: no models" % path)
    for i, m in enumerate(models):
        missing = [k for k in ("name", "task", "engine", "artifact") if not isinstance(m, dict) or k not in m]
        if missing:
            raise BundleError("%s: models[%d] lacks %s" % (path, i, ", ".join(missing)))
        if not isinstance(m["artifact"], dict) or not m["artifact"].get("file"):
            raise BundleError("%s: models[%d] (%s): artifact names no file" % (path, i, m["name"]))
    if manifest.get("pipeline") not in (None,) + PIPELINES:
        raise BundleError("%s: unknown pipeline %r; known: %s" % (path, manifest.get("pipeline"), ", ".join(PIPELINES)))
    if not isinstance(manifest.get("files"), dict):
        raise BundleError("%s: no files table" % path)
    return manifest


class Bundle:
    """One bundle folder. Models are loaded on ``load`` (or the first ``predict``)."""

    def __init__(self, directory: str, manifest: Dict[str, Any]) -> None:
        self.directory = os.path.abspath(directory)
        self.manifest = manifest
        self._models: Optional[List[Any]] = None  # LoadedModel, once loaded
        self._pipeline: Any = None

    @classmethod
    def open(cls, directory: "str | os.PathLike[str]", verify: bool = True) -> "Bundle":
        bundle = cls(str(directory), _read_manifest(str(directory)))
        if verify:
            bundle.verify()
        return bundle

    @property
    def id(self) -> str:
        return str(self.manifest.get("bundle_id") or "")

    @property
    def model_specs(self) -> List[Dict[str, Any]]:
        return list(self.manifest["models"])

    @property
    def pipeline(self) -> Optional[str]:
        return self.manifest.get("pipeline")

    # Verification -------------------------------------------------------------------------------

    def verify(self) -> None:
        """The id matches the content and every file its sha256; nothing else in the folder."""
        actual = bundle_id(self.manifest)
        if self.id != actual:
            raise BundleError("manifest.json: its bundle_id %r does not match its content (%s): the manifest was edited"
                              % (self.id, actual))
        files: Dict[str, str] = self.manifest["files"]
        for name in sorted(files):
            if not _safe_relative(name) or name == MANIFEST:
                raise BundleError("manifest.json: files lists %r, not a file inside the bundle" % name)
        for i, m in enumerate(self.model_specs):
            art = m["artifact"]
            if art["file"] not in files or (art.get("sha256") and files[art["file"]] != art["sha256"]):
                raise BundleError("manifest.json: model %s's artifact %s is not among its files with that sha256"
                                  % (m["name"], art["file"]))
        for name in sorted(files):
            path = os.path.join(self.directory, *name.split("/"))
            if not os.path.isfile(path):
                raise BundleError("%s is missing from the bundle" % name)
            if sha256_file(path) != str(files[name]).lower():
                raise BundleError("%s does not match its sha256 in manifest.json: the bundle was edited or damaged" % name)
        extra = self._unlisted()
        if extra:
            raise BundleError("%s is in the bundle folder but not in manifest.json: the bundle was edited%s"
                              % (extra[0], " (and %d more)" % (len(extra) - 1) if len(extra) > 1 else ""))

    def _unlisted(self) -> List[str]:
        """Files in the folder the manifest does not list, less what the runtime writes itself."""
        listed = set(self.manifest["files"]) | {MANIFEST}
        artifacts = [m["artifact"]["file"] for m in self.model_specs]
        modules = [os.path.dirname(str((m.get("task_params") or {}).get("module_path") or ""))
                   for m in self.model_specs if m["task"] == "custom"]
        out = []
        for root, dirs, names in os.walk(self.directory):
            rel_root = os.path.relpath(root, self.directory).replace(os.sep, "/")
            rel_root = "" if rel_root == "." else rel_root + "/"
            for d in list(dirs):
                rel = rel_root + d
                # agent.artifacts.unpack_model's folder (and its in-progress form), a task's bytecode cache
                if any(rel == a + ".d" or (rel.startswith(a + ".d.") and rel.endswith(".part")) for a in artifacts) \
                        or (d == "__pycache__" and rel_root.rstrip("/") in modules):
                    dirs.remove(d)
            out += [rel_root + n for n in names if rel_root + n not in listed]
        return sorted(out)

    # Requirements -------------------------------------------------------------------------------

    def check(self) -> List[str]:
        """Unmet requirements, one line each naming it and how to install it; [] = ok."""
        from agent.runtime.requirements import unmet

        engines = sorted({str(m["engine"]) for m in self.model_specs})
        images = any(m["task"] != "raw" for m in self.model_specs)
        return unmet(dict(self.manifest.get("requirements") or {}), engines, images)

    # Running ------------------------------------------------------------------------------------

    def load(self) -> None:
        """Load every model in its engine; a failure is a BundleError naming the model."""
        if self._models is not None:
            return
        from agent.runtime.model import LoadedModel

        models = [LoadedModel(self.directory, spec) for spec in self.model_specs]
        try:
            for m in models:
                try:
                    m.load()
                except Exception as exc:
                    raise BundleError("model %s (%s on %s): cannot be loaded: %s"
                                      % (m.name, m.task_name, m.spec["engine"], _one_line(exc))) from exc
            if self.pipeline == "ocr":
                self._pipeline = self._ocr(models)
        except BaseException:
            for m in models:
                m.close()
            raise
        self._models = models

    @staticmethod
    def _ocr(models: List[Any]) -> Any:
        from agent.runtime.pipeline import OcrPipeline

        by_task = {m.task_name: m for m in models}
        missing = [t for t in ("ocr-det", "ocr-rec") if t not in by_task]
        if missing:
            raise BundleError("manifest.json: an ocr pipeline needs an ocr-det and an ocr-rec model; it lacks %s"
                              % ", ".join(missing))
        return OcrPipeline(by_task["ocr-det"], by_task["ocr-rec"], by_task.get("ocr-cls"))

    def predict(self, images: Sequence[Any]) -> List[Dict[str, Any]]:
        """One JSON-able result per input (an image's path or bytes; an .npz for a raw model).
        An input that cannot be read is an ``agent.runtime.inputs.InputError`` naming it."""
        from agent.runtime.inputs import decode, describe, load_tensors
        from agent.runtime.model import finish_timing, new_timing

        self.load()
        assert self._models is not None
        sources = list(images)
        if not sources:
            return []
        timings = [new_timing() for _ in sources]
        pages: Optional[List[Any]] = None
        tensors: Optional[List[Any]] = None
        if any(m.takes_images for m in self._models):
            pages = []
            for i, src in enumerate(sources):
                start = time.perf_counter()
                pages.append(decode(src, i))
                timings[i]["decode"] += (time.perf_counter() - start) * 1000.0
        if any(not m.takes_images for m in self._models):
            tensors = []
            for i, src in enumerate(sources):
                start = time.perf_counter()
                tensors.append(load_tensors(src, i))
                timings[i]["decode"] += (time.perf_counter() - start) * 1000.0
        names = [describe(s, i) for i, s in enumerate(sources)]

        def run(model: Any) -> List[Dict[str, Any]]:
            if model.takes_images:
                return model.run_images(pages)
            return model.run_tensors(tensors, names)

        if self._pipeline is not None:
            results = self._pipeline.run(pages)
        elif len(self._models) == 1:
            results = run(self._models[0])
            for r in results:
                r["timing_ms"]["models"] = {self._models[0].name: {k: round(v, 3) for k, v in r["timing_ms"].items()}}
        else:  # unrelated models: each one's result under its name, the times summed
            per = {m.name: run(m) for m in self._models}
            results = []
            for i in range(len(sources)):
                inner = {name: rs[i] for name, rs in per.items()}
                timing = new_timing()
                for r in inner.values():
                    for k in timing:
                        timing[k] += float(r["timing_ms"].get(k, 0.0))
                    r["timing_ms"] = finish_timing(r["timing_ms"])
                timing["models"] = {name: {k: v for k, v in r["timing_ms"].items()} for name, r in inner.items()}
                results.append({"models": inner, "timing_ms": timing})
        for result, timing in zip(results, timings):
            result["timing_ms"]["decode"] = timing["decode"]
            result["timing_ms"] = finish_timing(result["timing_ms"])
        return results

    def close(self) -> None:
        for m in self._models or []:
            m.close()
        self._models = None
        self._pipeline = None

    def __enter__(self) -> "Bundle":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
