"""``edgefarm bundle``: from the selection table to a self-contained deployment bundle.

For each model the bundle carries the artifact exactly as the farm measured it (found in the
controller's cache by its sha256), the job's engine options, the task and preprocessing of the
evaluation data it was scored on, the runtime (``bundle.pyz``, the agent as a zipapp), golden inputs
taken from that evaluation data, and the outputs the bundle itself gives on them here (golden.json),
which the deployer's smoke test compares a board's against. Everything is decided by stored rows and
cached files, so the same database and cache give the same bundle, and the same bundle id.

The bundle is built in a temporary folder beside ``--out`` and renamed into place (or archived)
only once sealed: a failure leaves nothing behind.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from agent.protocol import sha256_file
from controller.build.cache import Cache
from controller.data import datasets
from controller.deploy import manifest as mf
from controller.deploy.choice import Chosen, choose
from controller.errors import UserError
from controller.workspace import cache_dir, paddle_python

GOLDEN_COUNT = 3
OCR_TASKS = ("ocr-det", "ocr-rec", "ocr-cls")
PREDICT_TIMEOUT_S = 600


# --- the command --------------------------------------------------------------------------------


def bundle_command(args: argparse.Namespace) -> int:
    from controller.results.database import open_db

    out = Path(args.out)
    _check_flags(args, out)
    started = time.monotonic()
    with open_db(args.db, create=False)() as session:
        chosen = choose(session, args.chip, list(args.model), args.budget, args.engine, args.variant)
    manifest = build_bundle(chosen, args.chip, out, warn=lambda line: print(f"edgefarm: warning: {line}",
                                                                            file=sys.stderr))
    print(summary(manifest, out, time.monotonic() - started))
    return 0


def _check_flags(args: argparse.Namespace, out: Path) -> None:
    if (args.engine is None) != (args.variant is None):
        given, missing = ("--engine", "--variant") if args.engine is not None else ("--variant", "--engine")
        raise UserError(f"{given} needs {missing}: together they name the configuration to bundle instead of the "
                        "selection's")
    if args.engine is not None and len(args.model) != 1:
        raise UserError(f"--engine {args.engine} --variant {args.variant} overrides the selection for one model; "
                        f"{len(args.model)} --model were given ({', '.join(args.model)})")
    twice = sorted({m for m in args.model if args.model.count(m) > 1})
    if twice:
        raise UserError(f"--model {twice[0]} is given twice")
    if os.path.lexists(out):
        raise UserError(f"--out {out} exists already; bundle never overwrites: name a new folder or .tar.gz file")
    parent = out.absolute().parent
    if not parent.is_dir():
        raise UserError(f"--out {out}: the folder {parent} does not exist")


# --- building ------------------------------------------------------------------------------------


def build_bundle(chosen: list[Chosen], chip: str, out: Path, *, cache: Cache | None = None,
                 warn: Callable[[str], None] = print) -> mf.Manifest:
    """Write the bundle of ``chosen`` at ``out`` (a new folder, or a .tar.gz file) and return its
    manifest; nothing is left at ``out`` or beside it when this raises."""
    cache = cache or Cache(cache_dir())
    out = Path(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.absolute().parent))
    try:
        folder = tmp / "bundle"
        folder.mkdir()
        manifest = _fill(folder, chosen, chip, cache, warn)
        if _is_archive(out):
            part = tmp / out.name
            mf.write_archive(folder, part)
            try:
                os.link(part, out)  # unlike a rename, never replaces a file that appeared at --out meanwhile
            except FileExistsError:
                raise UserError(f"--out {out} appeared while the bundle was being built; it is left as it is") from None
            except OSError:  # a file system without hard links
                os.replace(part, out)
        else:
            folder.chmod(0o755)
            os.rename(folder, out)
        return manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _is_archive(out: Path) -> bool:
    return out.name.endswith((".tar.gz", ".tgz"))


def _fill(folder: Path, chosen: list[Chosen], chip: str, cache: Cache, warn: Callable[[str], None]) -> mf.Manifest:
    from controller.boards.agent_bundle import runtime_bytes

    artifacts = {ch.candidate.model: _artifact(ch, cache) for ch in chosen}  # the measured files first: the
    evaluation = {ch.candidate.model: _dataset(ch, cache) for ch in chosen}    # likelier miss on another machine
    entries = [_model_entry(folder, ch, artifacts[ch.candidate.model], evaluation[ch.candidate.model], cache)
               for ch in chosen]
    (folder / "bundle.pyz").write_bytes(runtime_bytes())
    (folder / "bundle.pyz").chmod(0o755)
    pipeline = pipeline_of([e["task"] for e in entries])
    golden_inputs = _write_golden_inputs(folder, chosen, entries, evaluation, pipeline)
    body: dict[str, Any] = {
        "format": mf.FORMAT,
        "chip": chip,
        "edgefarm_version": importlib.metadata.version("edgefarm"),
        "pipeline": pipeline,
        "requirements": _requirements(entries),
        "models": entries,
        "golden": {"file": "golden.json", "inputs": golden_inputs},
        "smoke": mf.Smoke().model_dump(),
    }
    # Unsealed (no files, no id) so that the runtime can read it to compute the expected outputs.
    (folder / mf.MANIFEST).write_text(mf.render({**body, "files": {}, "bundle_id": "0" * 16}))
    before = set(mf.tree(folder))
    expected = _expected_outputs(folder, entries, golden_inputs, warn)
    # What running it wrote (a packed artifact's unpack folder, a task module's bytecode) is not the bundle's.
    for rel in sorted(set(mf.tree(folder)) - before, reverse=True):
        path = folder / rel
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    if expected is None:
        body["golden"]["file"] = None
    else:
        (folder / "golden.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    return mf.seal(folder, body)


def pipeline_of(tasks: list[str]) -> str | None:
    """"ocr" for an OCR detector and recognizer (and at most one direction classifier), else None."""
    ocr = sorted(tasks)
    if ocr in (["ocr-det", "ocr-rec"], ["ocr-cls", "ocr-det", "ocr-rec"]):
        return "ocr"
    return None


def _dataset(ch: Chosen, cache: Cache) -> Any:
    """The evaluation dataset the run scored this model on (agent.dataset.Dataset)."""
    from agent.dataset import DatasetError, load_dataset

    c = ch.candidate
    if not ch.dataset_sha256:
        raise UserError(f"run {c.run_id} does not say which data {c.model} was scored on (a run of an older "
                        "EdgeFarm); run `edgefarm run` again for it")
    path = cache.find(ch.dataset_sha256)
    if path is None:
        raise UserError(f"the evaluation data {ch.dataset_sha256[:16]} of {c.model} (run {c.run_id}) is not in the "
                        f"cache at {cache.root}; run `edgefarm run` for it on this machine")
    try:
        return load_dataset(str(path))
    except (DatasetError, ValueError, OSError) as exc:
        raise UserError(f"the evaluation data of {c.model} in the cache ({path}) cannot be read: {exc}") from None


def _artifact(ch: Chosen, cache: Cache) -> Path:
    c = ch.candidate
    found = cache.find(ch.artifact_sha256, ch.artifact_size)
    if found is None:
        raise UserError(f"the artifact {ch.artifact_sha256[:16]} of {c.model} {c.engine} {c.variant} (run {c.run_id}) "
                        f"is not in the cache at {cache.root}; run `edgefarm run` for it on this machine")
    return found


def _model_entry(folder: Path, ch: Chosen, found: Path, data: Any, cache: Cache) -> dict[str, Any]:
    c = ch.candidate
    rel = f"models/{c.model}/{ch.artifact_sha256[:16]}{found.suffix}"
    (folder / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(found, folder / rel)
    (folder / rel).chmod(0o644)
    from agent.tasks.base import ALIASES

    task = ALIASES.get(ch.task, ch.task)
    params = dict(data.params)
    name = data.input_names[0] if data.input_names else None
    # Every image dataset declares its preprocessing; OCR data rendered before it did (a run of an
    # earlier EdgeFarm) is declared here as it was rendered.
    preprocess: dict[str, Any] | None = ((data.meta.get("inputs") or {}).get(name) or {}).get("preprocess")
    if task == "ocr-rec":
        params["charset"] = [str(s) for s in data.labels["charset"].tolist()]
    if preprocess is None and task in OCR_TASKS:
        preprocess = ocr_preprocess(task, _shape(ch.inputs, name))
    elif preprocess is None and task != "raw":
        raise UserError(f"the evaluation data of {c.model} (run {c.run_id}) declares no preprocessing for "
                        f"input {name!r}; run `edgefarm run` for it again with this EdgeFarm")
    if task == "custom":
        module = _task_module(ch, params.get("module_sha256"), Cache(cache.root))
        target = folder / "models" / c.model / "task.py"
        shutil.copyfile(module, target)
        target.chmod(0o644)
        params["module_path"] = f"models/{c.model}/task.py"
    return {
        "name": c.model, "task": task, "task_params": params,
        "engine": c.engine, "engine_version": c.engine_version, "variant": c.artifact, "label": c.variant,
        "precision": c.precision, "options": c.engine_options,
        "artifact": {"file": rel, "sha256": ch.artifact_sha256, "size_bytes": ch.artifact_size},
        "inputs": ch.inputs, "preprocess": preprocess,
        "measured": {"board": c.board, "run_id": c.run_id, "job_id": c.job_id, "p50_ms": c.p50_ms,
                     "p90_ms": c.p90_ms, "accuracy_metric": c.accuracy_metric, "accuracy": c.accuracy,
                     "e2e_p50_ms": c.e2e_p50_ms},
    }


def _shape(inputs: list[dict[str, Any]], name: str | None) -> list[Any]:
    spec = next((i for i in inputs if i["name"] == name), inputs[0])
    return list(spec["shape"])


def ocr_preprocess(task: str, shape: list[Any]) -> dict[str, Any]:
    """The declaration of an OCR model's input [1, 3, H, W], as its datasets are rendered."""
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[2:]):
        raise UserError(f"an {task} model takes one [1, 3, H, W] input of a fixed size; this one is {shape}")
    return datasets.ocr_preprocess(task, width=int(shape[3]), height=int(shape[2]))


def _task_module(ch: Chosen, sha256: str | None, cache: Cache) -> Path:
    """The user's task module the run measured: by its sha256, in the cache or where the run's spec names it."""
    c = ch.candidate
    if not sha256:
        raise UserError(f"the evaluation data of {c.model} (run {c.run_id}) does not name its task module's sha256")
    found = cache.find(sha256)
    if found is not None:
        return found
    base = Path(ch.spec_base or ".")
    for m in ch.spec.get("models") or []:
        task = str(m.get("task") or "") if isinstance(m, dict) else ""
        if m.get("name") == c.model and task.endswith(".py"):
            path = Path(task).expanduser()
            path = path if path.is_absolute() else base / path
            if path.is_file() and sha256_file(path) == sha256:
                return path
            raise UserError(f"the task module of {c.model} (run {c.run_id}), {path}, "
                            + ("has changed since the run" if path.is_file() else "is not there any more")
                            + f"; the run measured the one of sha256 {sha256[:16]}: restore it, or run again")
    raise UserError(f"the task module {sha256[:16]} of {c.model} (run {c.run_id}) is neither in the cache nor named "
                    "by the run's spec")


def _requirements(entries: list[dict[str, Any]]) -> dict[str, Any]:
    engines: dict[str, dict[str, str]] = {}
    for e in entries:
        req = version_range(e["engine_version"])
        have = engines.get(e["engine"])
        if have is not None and (have["min"], have["below"]) != (req["min"], req["below"]):
            raise UserError(f"the models use {e['engine']} {have['measured']} and {req['measured']}: one bundle runs "
                            "one version of an engine; bundle them separately")
        engines.setdefault(e["engine"], req)
    images = any(e["preprocess"] is not None or e["task"] == "custom" for e in entries)
    return {"python": ">=3.8", "numpy": ">=1.17", "image_decoder": "Pillow" if images else None, "engines": engines}


def version_range(measured: str) -> dict[str, str]:
    """The same major.minor as measured: "1.20.1" -> min "1.20", below "1.21"."""
    found = re.match(r"\s*v?(\d+)\.(\d+)", measured)
    if not found:
        raise UserError(f"engine version {measured!r} is not MAJOR.MINOR[...]: the bundle cannot say which "
                        "versions run it")
    major, minor = int(found.group(1)), int(found.group(2))
    return {"measured": measured, "min": f"{major}.{minor}", "below": f"{major}.{minor + 1}"}


# --- golden inputs and expected outputs ----------------------------------------------------------


def _write_golden_inputs(folder: Path, chosen: list[Chosen], entries: list[dict[str, Any]], evaluation: dict[str, Any],
                         pipeline: str | None) -> list[str]:
    """3 samples of the evaluation data: the detector's pages for the OCR pipeline, else the first model's."""
    if pipeline == "ocr":
        entry = next(e for e in entries if e["task"] == "ocr-det")
    else:
        entry = entries[0]
    data = evaluation[entry["name"]]
    (folder / "golden").mkdir()
    names = []
    for k in range(min(GOLDEN_COUNT, len(data))):
        if entry["preprocess"] is None and entry["task"] != "custom":
            rel = f"golden/{k}.npz"
            _write_npz(folder / rel, {n: np.asarray(v) for n, v in data.batch([k]).items()})
        else:
            rel = f"golden/{k}.png"
            name = data.input_names[0]
            _write_png(folder / rel, _image(data, name, k))
        names.append(rel)
    return names


def _image(data: Any, name: str, index: int) -> np.ndarray:
    try:
        return datasets.stored_image(data.meta, name, data.raw(name)[index])
    except ValueError as exc:
        raise UserError(f"{data.path}: {exc}") from None


def _write_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(rgb, "RGB").save(path, format="PNG")  # no time or text chunks: the same pixels, the same bytes


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """The model's inputs at batch 1, by input name, with fixed member times (the same tensors, the same
    bytes); not the dataset layout: a golden tensor file is what a user would feed ``predict``."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            zf.writestr(info, buf.getvalue())


def _expected_outputs(folder: Path, entries: list[dict[str, Any]], inputs: list[str],
                      warn: Callable[[str], None]) -> dict[str, Any] | None:
    """The bundle's own outputs on its golden inputs, computed here with the same artifacts and runtime;
    None (with a warning) when no interpreter of this machine has the bundle's engines."""
    from agent.engines import EngineUnavailable, get_engine

    engines = sorted({e["engine"] for e in entries})
    missing = []
    for name in engines:
        try:
            get_engine(name).version()
        except EngineUnavailable:
            missing.append(name)
    results = _predict_here(folder, inputs) if not missing else _predict_with(paddle_python(), folder, inputs)
    if results is None:
        warn(f"{', '.join(missing)} cannot run on this machine, so the bundle has no expected outputs: its smoke "
             "test will check latency and well-formed outputs only")
        return None
    return {rel: _without_timing(r) for rel, r in zip(inputs, results)}


def _predict_here(folder: Path, inputs: list[str]) -> list[Any]:
    from agent.runtime.bundle import Bundle

    bundle = Bundle.open(str(folder), verify=False)
    try:
        bundle.load()
        return list(bundle.predict([str(folder / rel) for rel in inputs]))
    finally:
        bundle.close()


def _predict_with(python: Path | None, folder: Path, inputs: list[str]) -> list[Any] | None:
    """The bundle run by another interpreter (the Paddle tools' one), or None when it cannot."""
    if python is None or not Path(python).is_file():
        return None
    proc = subprocess.run([str(python), str(folder / "bundle.pyz"), "predict", "--json", *inputs], cwd=folder,
                          capture_output=True, text=True, timeout=PREDICT_TIMEOUT_S)
    if proc.returncode != 0:
        return None
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        return None
    return out if isinstance(out, list) else [out]


def _without_timing(result: Any) -> Any:
    """A result without its timing figures, at any depth (a bundle of several models nests results)."""
    if isinstance(result, dict):
        return {k: _without_timing(v) for k, v in result.items() if k != "timing_ms"}
    if isinstance(result, list):
        return [_without_timing(v) for v in result]
    return result


# --- the summary ---------------------------------------------------------------------------------


def summary(manifest: mf.Manifest, out: Path, seconds: float) -> str:
    size = out.stat().st_size if out.is_file() else sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    lines = [f"bundle {manifest.bundle_id} for {manifest.chip}"
             + (f" (pipeline {manifest.pipeline})" if manifest.pipeline else "")
             + f": {out} ({size / 1e6:.1f} MB, built in {seconds:.1f} s)"]
    for m in manifest.models:
        acc = "-" if m.measured.accuracy is None else f"{m.measured.accuracy:.4g}"
        lines.append(f"  {m.name}: {m.engine} {m.label} ({m.engine_version}), p50 {m.measured.p50_ms:.4g} ms, "
                     f"{m.measured.accuracy_metric or 'accuracy'} {acc} (run {m.measured.run_id}, "
                     f"job {m.measured.job_id})")
    if manifest.golden.file is None:
        lines.append("  no expected outputs: the smoke test will check latency and well-formed outputs only")
    sample = "IMAGE" if manifest.requirements.image_decoder else "INPUT.npz"
    if out.is_file():
        lines.append(f"next: mkdir DIR && tar -xzf {out} -C DIR && python3 DIR/bundle.pyz predict {sample}")
    else:
        lines.append(f"next: python3 {out / 'bundle.pyz'} predict {sample}")
    lines.append(f"      edgefarm deploy {out} --board NAME")
    return "\n".join(lines)
