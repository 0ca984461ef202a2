"""What a run checks of its user's input before it writes anything (``controller.run.execute``).

The spec, the inventory and the models are checked where they are read (``controller.config``,
``controller.build.source``); these are the checks that need more than one of them: the run a
``--resume`` names against the spec given, and each model's dataset against its model.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from controller.build.cache import Cache
from controller.build.source import Prepared
from controller.build.task_data import TaskData, build_datasets
from controller.config.spec import LoadedSpec, Spec
from controller.errors import ModelError, UserError
from controller.results import recording


def check_resumable(db_url: str | None, run_id: int, spec: Spec) -> None:
    """Refuse now (``UserError``) a ``--resume`` that cannot be: no such database or run, a run made
    from another spec, a run that finished. Nothing is written, nothing is made."""
    from controller.results.database import describe, exists, open_db

    if not exists(db_url):
        raise UserError(f"--resume {run_id}: there is no run {run_id}: the database {describe(db_url)} does not exist")
    with open_db(db_url, create=False)() as db:
        recording.resumed_run(db, run_id, spec)
        db.rollback()  # a check only: the run is marked running when its jobs are written


def check_datasets(loaded: LoadedSpec, prepared: dict[str, Prepared], cache: Cache) -> dict[str, TaskData]:
    """Make the first sample of every model's dataset, here and now: a dataset that cannot be made
    for its model (seeded inputs ONNX Runtime cannot run the model on, a model without inputs) is
    the user's to fix, and is refused before Ray starts and before any row is written. The whole
    sets are made later as Ray tasks, and what fails there is refused too
    (``controller.build.compile.build_all``), still before the run's row exists.

    The user's own files are read, checked, decoded and split in full here (cached by content):
    every image must decode and every label fit, so all of it is checked before anything is
    written. Returns those datasets by model name."""
    import onnxruntime

    from controller.data.datasets import make_dataset

    user_data: dict[str, TaskData] = {}
    calibration = loaded.spec.quantization.samples
    # ONNX Runtime logs a failing model to stderr itself; the one line the user gets is ours.
    onnxruntime.set_default_logger_severity(4)
    try:
        for m in loaded.spec.models:
            p = prepared[m.name]
            if m.dataset.kind == "files":
                user_data[m.name] = build_datasets(loaded, m, p, cache, calibration)
                continue
            shapes = {i.name: (i.shape, i.dtype) for i in p.inputs}
            with tempfile.TemporaryDirectory(prefix="edgefarm-check-") as tmp:
                try:
                    make_dataset(m.dataset.kind, shapes, 1, m.dataset.seed, Path(tmp) / "first.npz", model_path=p.path)
                except Exception as exc:  # noqa: BLE001 - whatever the data code or ONNX Runtime raised for this model
                    # The model is named as the user wrote it, not as the cache's prepared copy.
                    said = _said(exc).replace(str(p.path), str(m.resolve_path(loaded.base)))
                    raise ModelError(f"{loaded.source}: model {m.name}: dataset {m.dataset.kind}: {said}") from exc
    finally:
        onnxruntime.set_default_logger_severity(2)  # its default: warnings
    return user_data


def _said(exc: Exception) -> str:
    """The data code's own message (a ValueError, written for the user), else the library's last
    line, without the C++ source location and signature ONNX Runtime puts before its reason."""
    lines = str(exc).strip().splitlines()
    if type(exc) is ValueError and lines:
        return lines[0]
    reason = re.sub(r"/onnxruntime_src/\S+:\d+ (?:[^()]*?\(.*?\) )?", "", lines[-1] if lines else "")
    said = f"{type(exc).__name__}: {reason}"
    return said if len(said) <= 400 else said[:397] + "..."
